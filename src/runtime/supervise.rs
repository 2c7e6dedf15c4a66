//! Supervision: the workers' heartbeats, the systemd watchdog, and the
//! rule that a worker which stops (a panic, an unexpected return) stops
//! the daemon.
//!
//! Each worker turns its loop at least every `Heartbeat::PERIOD` and beats
//! each time. The watchdog ping goes to systemd only while every worker's
//! last beat is fresh, so a worker stuck or dead lets `WatchdogSec=` fire;
//! a worker that ends turns `/readyz` to 503 and the daemon exits non-zero
//! for `Restart=` to bring it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A worker's sign of life.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    name: &'static str,
    origin: Instant,
    /// Milliseconds since `origin` at the last beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// The longest a worker waits between two turns of its loop.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// How old a beat may be and still count as fresh.
    pub const STALE: Duration = Duration::from_secs(5);

    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            origin: Instant::now(),
            last: Arc::default(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.origin.elapsed();
        now.saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    pub fn is_fresh(&self) -> bool {
        self.age() < Self::STALE
    }
}

/// Whether every worker beat recently: the condition for a watchdog ping.
pub fn all_fresh(beats: &[Heartbeat]) -> bool {
    beats.iter().all(Heartbeat::is_fresh)
}

/// The test-only fault hook: `TIDINGS_TEST_FAULT=scheduler-panic-after=MS`
/// makes the scheduler panic once that long after start, so the
/// supervision suite can watch the daemon notice. Unset in production.
pub fn injected_panic(worker: &str) -> Option<Instant> {
    let spec = std::env::var("TIDINGS_TEST_FAULT").ok()?;
    let ms = spec
        .strip_prefix(worker)?
        .strip_prefix("-panic-after=")?
        .parse::<u64>()
        .ok()?;
    Some(Instant::now() + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_is_fresh_until_it_is_stale() {
        let hb = Heartbeat::new("scheduler");
        hb.beat();
        assert!(hb.is_fresh());
        assert!(all_fresh(std::slice::from_ref(&hb)));
        assert_eq!(hb.name(), "scheduler");
        // A beat from before the origin can't be made; a stale one is
        // simulated by moving the origin back.
        let old = Heartbeat {
            origin: Instant::now()
                .checked_sub(Duration::from_secs(60))
                .expect("uptime"),
            ..Heartbeat::new("dispatcher")
        };
        assert!(!old.is_fresh());
        assert!(!all_fresh(&[hb, old]));
    }
}
