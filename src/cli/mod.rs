//! Commands besides `serve`: `preview`, `simulate`, `backup`, `restore`,
//! `import`, `audit`, `bounce`.

pub mod audit;
pub mod backup;
pub mod bounce;
pub mod import;
pub mod tools;

use crate::config::Config;
use crate::domain::clock::{Clock, SystemClock, v7_ids};
use crate::domain::{Diagnostic, Diagnostics};
pub use crate::engine::plan::Engine;

/// The engine the offline tools plan with: the daemon's own, built from
/// the same config, rules and templates.
pub fn engine(config: &Config) -> Result<Engine, Diagnostics> {
    crate::runtime::build::build_engine(config, v7_ids(), SystemClock.now())
}

/// `tidings check`: warnings when valid, every problem when not.
pub fn check(config: &Config) -> Result<Vec<Diagnostic>, Diagnostics> {
    crate::runtime::build::check(config, v7_ids(), SystemClock.now()).map(|(_, w)| w)
}

/// Now, for the tools that start from the present.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    SystemClock.now()
}

/// The wall clock, for the tools that change the store.
pub fn clock() -> crate::domain::clock::SharedClock {
    crate::domain::clock::system()
}
