//! Channels: turn a rendered message into a delivery attempt.
//!
//! A channel takes an outbox entry and returns an `Outcome`; it knows
//! nothing of rules, schedules or storage. Retry policy lives in `dispatch`
//! and is one `match` on the outcome.

pub mod email;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message.
    Sent,
    /// Worth trying again later: 4xx, connection loss, timeouts.
    Transient(String),
    /// Trying again will not help: 5xx, an invalid recipient.
    Permanent(String),
}
