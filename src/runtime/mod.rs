//! The long-running workers: the scheduler, the dispatcher, reload, and
//! their supervision.

pub mod build;
pub mod dispatch;
pub mod reload;
pub mod scheduler;
pub mod supervise;
