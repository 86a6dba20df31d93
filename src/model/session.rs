//! Streaming sessions: the state a model carries from one request of a session to the next
//! (recurrent state, audio context), kept in bounded memory.
//!
//! At most `max_sessions` sessions live at once, each dropped after `idle_ttl_secs` without a
//! request; a new session beyond the cap evicts the least recently used. The ids of evicted sessions
//! are remembered (as many as `max_sessions`), so a client whose session was dropped is told so
//! instead of silently getting answers from a fresh state.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tract_core::prelude::Tensor;

use super::manifest::SessionDecl;

/// Longest session id accepted, so that ids cannot be used to grow memory.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// What one session carries between requests.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// The state inputs' values, in `[session] state` order.
    pub tensors: Vec<Tensor>,
    /// Audio samples preceding the next chunk (audio pre-processing with `context`).
    pub context: Vec<f32>,
}

/// Why a request's session started from a fresh state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The session continues from its previous request.
    Continued,
    /// First request of this session id.
    New,
    /// The session existed and was dropped after `idle_ttl_secs` without requests.
    EvictedIdle,
    /// The session existed and was dropped to make room (`max_sessions`).
    EvictedCapacity,
}

impl Start {
    /// The reply's `session_evicted` parameter, when there is one.
    pub fn eviction(self) -> Option<&'static str> {
        match self {
            Start::EvictedIdle => Some("idle_ttl"),
            Start::EvictedCapacity => Some("max_sessions"),
            Start::Continued | Start::New => None,
        }
    }
}

struct Entry {
    state: SessionState,
    last_used: Instant,
}

#[derive(Default)]
struct Sessions {
    live: HashMap<String, Entry>,
    /// Evicted ids and why, oldest first, at most `max_sessions` of them.
    evicted: HashMap<String, Start>,
    evicted_order: VecDeque<String>,
    last_sweep: Option<Instant>,
}

/// The sessions of one model.
pub struct SessionStore {
    ttl: Duration,
    max: usize,
    sessions: Mutex<Sessions>,
}

impl SessionStore {
    pub fn new(decl: &SessionDecl) -> SessionStore {
        SessionStore {
            ttl: Duration::from_secs(decl.idle_ttl_secs),
            max: decl.max_sessions,
            sessions: Mutex::new(Sessions::default()),
        }
    }

    /// Takes a session's state out of the store for one request (put it back with [`put`]);
    /// `None` when the request starts a fresh state, and why.
    ///
    /// [`put`]: SessionStore::put
    pub fn take(&self, id: &str) -> (Option<SessionState>, Start) {
        let mut sessions = self.lock();
        if let Some(entry) = sessions.live.remove(id) {
            if entry.last_used.elapsed() <= self.ttl {
                return (Some(entry.state), Start::Continued);
            }
            return (None, Start::EvictedIdle);
        }
        match sessions.evicted.remove(id) {
            Some(why) => {
                sessions.evicted_order.retain(|e| e != id);
                (None, why)
            }
            None => (None, Start::New),
        }
    }

    /// Stores a session's state after its request, evicting idle sessions and, when the store is
    /// full, the least recently used one.
    pub fn put(&self, id: String, state: SessionState) {
        let mut sessions = self.lock();
        let now = Instant::now();
        let sweep_due =
            sessions.last_sweep.is_none_or(|t| now.duration_since(t) >= self.ttl.min(Duration::from_secs(1)));
        if sweep_due {
            sessions.last_sweep = Some(now);
            let idle: Vec<String> = sessions
                .live
                .iter()
                .filter(|(_, e)| now.duration_since(e.last_used) > self.ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for key in idle {
                sessions.live.remove(&key);
                self.remember(&mut sessions, key, Start::EvictedIdle);
            }
        }
        if !sessions.live.contains_key(&id) && sessions.live.len() >= self.max {
            let oldest = sessions.live.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone());
            if let Some(key) = oldest {
                sessions.live.remove(&key);
                self.remember(&mut sessions, key, Start::EvictedCapacity);
            }
        }
        sessions.live.insert(id, Entry { state, last_used: now });
    }

    /// Live sessions, for the stats.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, sessions: &mut Sessions, id: String, why: Start) {
        if sessions.evicted.insert(id.clone(), why).is_none() {
            sessions.evicted_order.push_back(id);
        }
        while sessions.evicted_order.len() > self.max {
            if let Some(old) = sessions.evicted_order.pop_front() {
                sessions.evicted.remove(&old);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // A panic while holding the lock cannot leave the maps half-updated in a harmful way: at
        // worst one session is missing, and its next request starts fresh.
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize, ttl: u64) -> SessionStore {
        SessionStore::new(&SessionDecl { state: vec![], idle_ttl_secs: ttl, max_sessions: max })
    }

    fn state(v: f32) -> SessionState {
        SessionState { tensors: vec![Tensor::from(v)], context: vec![] }
    }

    #[test]
    fn a_session_continues_from_its_last_state() {
        let s = store(4, 60);
        assert_eq!(s.take("a").1, Start::New);
        s.put("a".into(), state(1.0));
        let (got, start) = s.take("a");
        assert_eq!(start, Start::Continued);
        assert_eq!(got.unwrap().tensors[0], Tensor::from(1.0f32));
    }

    #[test]
    fn the_least_recently_used_session_is_evicted_at_the_cap_and_told_so() {
        let s = store(2, 60);
        for id in ["a", "b"] {
            s.put(id.into(), state(0.0));
            std::thread::sleep(Duration::from_millis(2));
        }
        let (a, _) = s.take("a");
        s.put("a".into(), a.unwrap());
        s.put("c".into(), state(0.0));
        assert_eq!(s.len(), 2);
        assert_eq!(s.take("b").1, Start::EvictedCapacity);
        assert_eq!(s.take("b").1, Start::New, "an eviction is reported once");
        assert_eq!(s.take("a").1, Start::Continued);
    }

    #[test]
    fn idle_sessions_expire() {
        let s = store(10, 1);
        s.put("a".into(), state(0.0));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(s.take("a").1, Start::EvictedIdle);
    }

    #[test]
    fn memory_stays_bounded_by_the_cap() {
        let s = store(100, 60);
        for i in 0..10_000 {
            s.put(format!("s{i}"), state(0.0));
        }
        let sessions = s.lock();
        assert_eq!(sessions.live.len(), 100);
        assert_eq!(sessions.evicted.len(), 100);
        assert_eq!(sessions.evicted_order.len(), 100);
    }
}
