//! Streaming sessions: the state a model carries from one request of a session to the next
//! (recurrent state, audio context), kept in bounded memory.
//!
//! A session belongs to the client that started it: it is keyed by its owner (the request's reply
//! topic, the one client identity MQTT shows the daemon) and its id, so another client sending the
//! same id gets a session of its own instead of continuing or resetting this one.
//!
//! At most `max_sessions` sessions live at once, each dropped after `idle_ttl_secs` without a
//! request. A new session beyond the cap evicts the least recently used session *of the owner
//! holding the most*: a client opening thousands of sessions evicts its own, not everyone's. The
//! keys of evicted sessions are remembered (as many as `max_sessions`), so a client whose session
//! was dropped is told so instead of silently getting answers from a fresh state.

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

/// A session's identity: who started it and the id it gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub owner: String,
    pub id: String,
}

struct Entry {
    state: SessionState,
    last_used: Instant,
}

#[derive(Default)]
struct Sessions {
    live: HashMap<SessionKey, Entry>,
    /// Live sessions per owner.
    owned: HashMap<String, usize>,
    /// Evicted keys and why, oldest first, at most `max_sessions` of them.
    evicted: HashMap<SessionKey, Start>,
    evicted_order: VecDeque<SessionKey>,
    last_sweep: Option<Instant>,
}

impl Sessions {
    fn insert(&mut self, key: SessionKey, entry: Entry) {
        if self.live.insert(key.clone(), entry).is_none() {
            *self.owned.entry(key.owner).or_default() += 1;
        }
    }

    fn remove(&mut self, key: &SessionKey) -> Option<Entry> {
        let entry = self.live.remove(key)?;
        if let Some(count) = self.owned.get_mut(&key.owner) {
            *count -= 1;
            if *count == 0 {
                self.owned.remove(&key.owner);
            }
        }
        Some(entry)
    }

    /// The session to evict for room: the least recently used one of the owner with the most.
    fn victim(&self) -> Option<SessionKey> {
        let (owner, _) = self.owned.iter().max_by_key(|(_, &n)| n)?;
        let owned = self.live.iter().filter(|(k, _)| &k.owner == owner);
        owned.min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone())
    }
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
    pub fn take(&self, key: &SessionKey) -> (Option<SessionState>, Start) {
        let mut sessions = self.lock();
        if let Some(entry) = sessions.remove(key) {
            if entry.last_used.elapsed() <= self.ttl {
                return (Some(entry.state), Start::Continued);
            }
            return (None, Start::EvictedIdle);
        }
        match sessions.evicted.remove(key) {
            Some(why) => {
                sessions.evicted_order.retain(|e| e != key);
                (None, why)
            }
            None => (None, Start::New),
        }
    }

    /// Stores a session's state after its request, evicting idle sessions and, when the store is
    /// full, the least recently used one of the owner holding the most.
    pub fn put(&self, key: SessionKey, state: SessionState) {
        let mut sessions = self.lock();
        let now = Instant::now();
        let sweep_due =
            sessions.last_sweep.is_none_or(|t| now.duration_since(t) >= self.ttl.min(Duration::from_secs(1)));
        if sweep_due {
            sessions.last_sweep = Some(now);
            let idle: Vec<SessionKey> = sessions
                .live
                .iter()
                .filter(|(_, e)| now.duration_since(e.last_used) > self.ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for idle in idle {
                sessions.remove(&idle);
                self.remember(&mut sessions, idle, Start::EvictedIdle);
            }
        }
        if !sessions.live.contains_key(&key) && sessions.live.len() >= self.max {
            if let Some(victim) = sessions.victim() {
                sessions.remove(&victim);
                self.remember(&mut sessions, victim, Start::EvictedCapacity);
            }
        }
        sessions.insert(key, Entry { state, last_used: now });
    }

    /// Live sessions, for the stats.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    fn remember(&self, sessions: &mut Sessions, key: SessionKey, why: Start) {
        if sessions.evicted.insert(key.clone(), why).is_none() {
            sessions.evicted_order.push_back(key);
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

    fn key(id: &str) -> SessionKey {
        owned("me", id)
    }

    fn owned(owner: &str, id: &str) -> SessionKey {
        SessionKey { owner: owner.into(), id: id.into() }
    }

    fn state(v: f32) -> SessionState {
        SessionState { tensors: vec![Tensor::from(v)], context: vec![] }
    }

    #[test]
    fn a_session_continues_from_its_last_state() {
        let s = store(4, 60);
        assert_eq!(s.take(&key("a")).1, Start::New);
        s.put(key("a"), state(1.0));
        let (got, start) = s.take(&key("a"));
        assert_eq!(start, Start::Continued);
        assert_eq!(got.unwrap().tensors[0], Tensor::from(1.0f32));
    }

    #[test]
    fn the_least_recently_used_session_is_evicted_at_the_cap_and_told_so() {
        let s = store(2, 60);
        for id in ["a", "b"] {
            s.put(key(id), state(0.0));
            std::thread::sleep(Duration::from_millis(2));
        }
        let (a, _) = s.take(&key("a"));
        s.put(key("a"), a.unwrap());
        s.put(key("c"), state(0.0));
        assert_eq!(s.len(), 2);
        assert_eq!(s.take(&key("b")).1, Start::EvictedCapacity);
        assert_eq!(s.take(&key("b")).1, Start::New, "an eviction is reported once");
        assert_eq!(s.take(&key("a")).1, Start::Continued);
    }

    #[test]
    fn idle_sessions_expire() {
        let s = store(10, 1);
        s.put(key("a"), state(0.0));
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(s.take(&key("a")).1, Start::EvictedIdle);
    }

    #[test]
    fn memory_stays_bounded_by_the_cap() {
        let s = store(100, 60);
        for i in 0..10_000 {
            s.put(key(&format!("s{i}")), state(0.0));
        }
        let sessions = s.lock();
        assert_eq!(sessions.live.len(), 100);
        assert_eq!(sessions.evicted.len(), 100);
        assert_eq!(sessions.evicted_order.len(), 100);
    }

    #[test]
    fn a_session_belongs_to_its_owner() {
        let s = store(10, 60);
        s.put(owned("alice/replies", "mic"), state(1.0));
        assert_eq!(s.take(&owned("mallory/replies", "mic")).1, Start::New, "another client's id is its own");
        assert_eq!(s.take(&owned("alice/replies", "mic")).1, Start::Continued);
    }

    #[test]
    fn a_client_opening_many_sessions_evicts_its_own_not_everyones() {
        let s = store(100, 60);
        for id in ["a", "b", "c"] {
            s.put(owned("alice", id), state(0.0));
        }
        for i in 0..10_000 {
            s.put(owned("mallory", &format!("s{i}")), state(0.0));
        }
        assert_eq!(s.len(), 100);
        for id in ["a", "b", "c"] {
            assert_eq!(s.take(&owned("alice", id)).1, Start::Continued, "{id}");
        }
        assert_eq!(s.take(&owned("mallory", "s9999")).1, Start::Continued, "its newest live on");
    }
}
