//! The one place that reads the wall clock and makes fresh ids.
//!
//! Everything else takes a `Clock` (and the engine an `Ids`) from its
//! caller, so tests run planning, delivery decisions and the workers on a
//! `ManualClock` and get the same ids every run (`SeqIds`). The tidy test
//! rejects `Utc::now`, `SystemTime::now` and `now_v7` anywhere but here.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Tells the time.
pub trait Clock: Debug + Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Makes message and update ids.
pub trait Ids: Debug + Send + Sync {
    fn next_id(&self) -> Uuid;
}

/// The shared handles the daemon passes around.
pub type SharedClock = Arc<dyn Clock>;
pub type SharedIds = Arc<dyn Ids>;

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The wall clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn at(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(start),
        })
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Time-ordered random ids (UUIDv7): message ids sort by creation.
#[derive(Debug, Clone, Copy, Default)]
pub struct V7Ids;

impl Ids for V7Ids {
    fn next_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Fresh random ids, shared.
pub fn v7_ids() -> SharedIds {
    Arc::new(V7Ids)
}

/// Ids 1, 2, 3, … (as UUIDs): the same every run, for tests.
#[derive(Debug, Default)]
pub struct SeqIds {
    next: AtomicU64,
}

impl Ids for SeqIds {
    fn next_id(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        Uuid::from_u64_pair(0, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        let clock = ManualClock::at(t0);
        assert_eq!(clock.now(), t0);
        clock.advance(chrono::Duration::seconds(90));
        assert_eq!(clock.now(), t0 + chrono::Duration::seconds(90));
        clock.set(t0);
        assert_eq!(clock.now(), t0);
    }

    #[test]
    fn sequential_ids_are_distinct_and_repeatable() {
        let ids = SeqIds::default();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert_eq!(SeqIds::default().next_id(), a);
        assert!(V7Ids.next_id() < V7Ids.next_id() || cfg!(miri));
    }
}
