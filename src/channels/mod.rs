//! Channels: turn a rendered message into a delivery attempt.
//!
//! A channel takes an outbox entry and returns an `Outcome`; it knows
//! nothing of rules, schedules or storage. Retry policy lives in `dispatch`
//! and is one `match` on the outcome.

use std::time::Duration;

pub mod email;
pub mod sms;
pub mod smtp;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message; its id for it, when it gives one.
    Sent { provider_id: Option<String> },
    /// Worth trying again later: 4xx, connection loss, timeouts, 429.
    /// `retry_after` is the provider's own request, when it made one.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: 5xx, an invalid recipient. `opt_out`
    /// when the provider says the recipient unsubscribed.
    Permanent { reason: String, opt_out: bool },
}

impl Outcome {
    pub fn sent() -> Self {
        Self::Sent { provider_id: None }
    }

    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            opt_out: false,
        }
    }
}
