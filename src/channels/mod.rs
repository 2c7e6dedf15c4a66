//! Channels: turn a rendered message into a delivery attempt.
//!
//! A channel takes a `Message` (recipient, rendered content, message id,
//! headers) and returns an `Outcome`; it knows nothing of rules, schedules,
//! config files or storage. What an outcome means for the message (retry,
//! give up, fall back) is `engine::settle`.

pub mod email;
pub mod sms;
pub mod smtp;

pub use crate::domain::Outcome;
