//! tidings: keeps customers informed while their support case takes days
//! or weeks to resolve.
//!
//! The layers, lowest first (ARCHITECTURE.md has the table the tidy test
//! enforces): `domain` (validated types, stored records, the clock) ←
//! `engine` (rules, schedule, render, plan, settle: pure) ← `store` (the
//! storage interface and its sled implementation) ← `service` (the one
//! write path) ← `runtime` (scheduler, dispatcher, reload, supervision) ←
//! `http` (case API, webhooks, admin) ← `daemon`. `channels` take a
//! rendered message and return an outcome; `config` reads the file.

pub mod channels;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod service;
pub mod store;
