//! systemd integration for `Type=notify` units: readiness only once the models are loaded and the
//! broker is connected, a human-readable status, `STOPPING=1`, and a watchdog that pings only
//! while the daemon makes progress, so that systemd restarts a wedged daemon instead of trusting a
//! timer. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Reports a status line (`systemctl status` shows it).
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Startup is complete.
pub fn ready(text: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// Shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The daemon is healthy: reset the watchdog timer.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to check health and ping: half of `WATCHDOG_USEC`, when the watchdog is on for this
/// process (`WATCHDOG_PID` unset or ours, as sd_watchdog_enabled(3) has it).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
