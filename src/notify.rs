//! sd_notify: tells systemd when baton is ready, reloading, stopping, and its one-line state.
//!
//! Without `NOTIFY_SOCKET` (not under systemd, or not `Type=notify`) every call is a no-op.

use sd_notify::NotifyState;
use std::sync::Mutex;

#[derive(Default)]
pub struct Notifier {
    last_status: Mutex<String>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Notifier {
    fn send(&self, states: &[NotifyState]) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    /// READY=1: the first generation is up, or a reload ended.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// RELOADING=1 with MONOTONIC_USEC, as systemd 253+ requires.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// STOPPING=1, once: later calls do nothing.
    pub fn stopping(&self) {
        if !self
            .stopping
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.send(&[NotifyState::Stopping]);
        }
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// STATUS=, sent only when the line changed.
    pub fn status(&self, line: &str) {
        let mut last = self.last_status.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            *last = line.to_owned();
            drop(last);
            self.send(&[NotifyState::Status(line)]);
        }
    }
}
