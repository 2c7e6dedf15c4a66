//! tidings: keeps customers informed while their support case takes days
//! or weeks to resolve.
//!
//! The flow runs one way: `api` → `service` (plans with `plan`, commits to
//! `store`) → `scheduler` → outbox → `dispatch` → `channels`.
//! See ARCHITECTURE.md for the map.

pub mod admin;
pub mod api;
pub mod backup;
pub mod channels;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod dispatch;
pub mod domain;
pub mod metrics;
pub mod plan;
pub mod redact;
pub mod reload;
pub mod render;
pub mod rules;
pub mod schedule;
pub mod scheduler;
pub mod segments;
pub mod serve;
pub mod service;
pub mod signature;
pub mod store;
pub mod tools;
