//! Decisions, as pure functions: rule matching, schedule maths, rendering,
//! planning and the delivery outcome. The clock and ids are passed in; no
//! I/O besides loading rule and template files at build time.

pub mod pace;
pub mod page;
pub mod plan;
pub mod promises;
pub mod render;
pub mod rules;
pub mod schedule;
pub mod settle;
pub mod supersede;
pub mod whatsapp;
