//! What a delivery attempt means for its message: sent, tried again after
//! a delay, failed for good (and whether to fall back to another channel),
//! or cancelled because the recipient opted out.
//!
//! A pure function of the attempt count, the provider's answer, the policy,
//! the time and a jitter draw: the dispatcher records what `settle` says.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{DeliveryStatus, MessageRecord, Outcome};

/// How hard delivery tries (`delivery:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Sends in flight at once.
    pub concurrency: usize,
}

/// What to do with a message after one attempt (or a refusal to attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// The provider accepted it.
    Sent { provider_id: Option<String> },
    /// Try again at `at`; the attempt is counted.
    Retry { at: DateTime<Utc>, reason: String },
    /// Failed for good: permanent, or out of attempts. The update falls
    /// back to the recipient's next allowed channel.
    Failed { reason: String },
    /// Never sent: the recipient opted out on this channel. The update
    /// falls back too; `provider` when the provider reported the opt-out
    /// (so the store must record it).
    OptedOut { reason: String, provider: bool },
    /// Not sent: a newer update replaced it (its promise has passed).
    Superseded { reason: String },
}

impl Settlement {
    /// Whether the same update should go out on another channel.
    pub fn falls_back(&self) -> bool {
        matches!(self, Self::Failed { .. } | Self::OptedOut { .. })
    }

    /// The message's status once this is recorded.
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Self::Sent { .. } => DeliveryStatus::Sent,
            Self::Retry { .. } => DeliveryStatus::Pending,
            // The provider refused the attempt: it failed (and the opt-out
            // is recorded beside it).
            Self::Failed { .. } | Self::OptedOut { provider: true, .. } => DeliveryStatus::Failed,
            Self::OptedOut {
                provider: false, ..
            }
            | Self::Superseded { .. } => DeliveryStatus::Cancelled,
        }
    }

    /// Files the settlement on a message of the history.
    pub fn apply(&self, msg: &mut MessageRecord, attempts: u32, now: DateTime<Utc>) {
        msg.attempts = attempts;
        msg.status = self.status();
        match self {
            Self::Sent { provider_id } => {
                msg.sent_at = Some(now);
                msg.error = None;
                msg.provider_id.clone_from(provider_id);
            }
            Self::Retry { reason, .. }
            | Self::Failed { reason }
            | Self::OptedOut { reason, .. }
            | Self::Superseded { reason } => msg.error = Some(reason.clone()),
        }
    }
}

/// What became of an outbox entry this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// It was handed to the provider, which answered this.
    Attempt(Outcome),
    /// The recipient opted out on this channel (how); nothing was sent.
    OptedOut(String),
    /// A progress update whose promise passed before it could go out.
    Stale,
    /// A message to someone in CC who is no longer on the case (removed,
    /// or their address on this channel changed since it was planned).
    Departed,
}

impl Report {
    /// Whether this counts as a delivery attempt.
    pub fn counts(&self) -> bool {
        matches!(self, Self::Attempt(_))
    }
}

/// Why a message to someone no longer on the case was not sent.
pub const DEPARTED: &str = "no longer on the case";

/// Settles a report: `attempts` as it was before this one.
pub fn settle_report(
    report: &Report,
    attempts_before: u32,
    policy: &DeliveryPolicy,
    now: DateTime<Utc>,
    jitter: f64,
) -> Settlement {
    let attempts = attempts_before + u32::from(report.counts());
    match report {
        Report::Attempt(outcome) => settle(outcome, attempts, false, policy, now, jitter),
        Report::OptedOut(via) => settle(
            &Outcome::permanent(format!("recipient opted out ({via})")),
            attempts,
            true,
            policy,
            now,
            jitter,
        ),
        Report::Stale => Settlement::Superseded {
            reason: crate::engine::supersede::SUPERSEDED.to_owned(),
        },
        Report::Departed => Settlement::Superseded {
            reason: DEPARTED.to_owned(),
        },
    }
}

/// The delay before attempt `attempts + 1`: exponential from `initial`,
/// capped at `max`, with jitter (`0.0..=1.0`) so a failing peer is not hit
/// in lockstep.
pub fn backoff(policy: &DeliveryPolicy, attempts: u32, jitter: f64) -> Duration {
    let exp = policy
        .backoff_initial
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(30)));
    let base = exp.min(policy.backoff_max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Settles an attempt. `attempts` counts this one (an opt-out found before
/// sending is not an attempt: pass the count as it was).
pub fn settle(
    outcome: &Outcome,
    attempts: u32,
    opted_out_before_send: bool,
    policy: &DeliveryPolicy,
    now: DateTime<Utc>,
    jitter: f64,
) -> Settlement {
    match outcome {
        Outcome::Sent { provider_id } => Settlement::Sent {
            provider_id: provider_id.clone(),
        },
        Outcome::Permanent { reason, .. } if opted_out_before_send => Settlement::OptedOut {
            reason: reason.clone(),
            provider: false,
        },
        Outcome::Permanent {
            reason,
            opt_out: true,
        } => Settlement::OptedOut {
            reason: reason.clone(),
            provider: true,
        },
        Outcome::Permanent { reason, .. } => Settlement::Failed {
            reason: reason.clone(),
        },
        Outcome::Transient { reason, .. } if attempts >= policy.max_attempts => {
            Settlement::Failed {
                reason: format!("gave up after {attempts} attempts: {reason}"),
            }
        }
        Outcome::Transient {
            reason,
            retry_after,
        } => {
            let mut delay = backoff(policy, attempts, jitter);
            if let Some(asked) = retry_after {
                delay = delay.max(*asked);
            }
            Settlement::Retry {
                at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                reason: reason.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: 3,
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            concurrency: 1,
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("valid")
    }

    fn secs(n: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(n)
    }

    fn transient(retry_after: Option<u64>) -> Outcome {
        Outcome::Transient {
            reason: "451 try later".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut p = policy();
        p.max_attempts = 10;
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_secs(120));
        assert_eq!(backoff(&p, 20, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_secs(15));
        assert_eq!(backoff(&p, 0, 1.0), Duration::from_secs(30));
        assert_eq!(
            backoff(&p, 1, 7.0),
            Duration::from_secs(30),
            "jitter clamps"
        );
    }

    /// Every answer a provider can give, at each attempt, and what follows.
    #[test]
    fn settle_table() {
        let p = policy();
        let sent = Outcome::Sent {
            provider_id: Some("SM1".into()),
        };
        let perm = Outcome::permanent("550 no such user");
        let stop = Outcome::Permanent {
            reason: "Twilio 21610".into(),
            opt_out: true,
        };
        let cases: Vec<(&str, Outcome, u32, bool, Settlement)> = vec![
            (
                "accepted",
                sent.clone(),
                1,
                false,
                Settlement::Sent {
                    provider_id: Some("SM1".into()),
                },
            ),
            (
                "first transient: retry after the initial backoff",
                transient(None),
                1,
                false,
                Settlement::Retry {
                    at: secs(30),
                    reason: "451 try later".into(),
                },
            ),
            (
                "second transient: the delay doubles",
                transient(None),
                2,
                false,
                Settlement::Retry {
                    at: secs(60),
                    reason: "451 try later".into(),
                },
            ),
            (
                "Retry-After longer than the backoff wins",
                transient(Some(600)),
                1,
                false,
                Settlement::Retry {
                    at: secs(600),
                    reason: "451 try later".into(),
                },
            ),
            (
                "Retry-After shorter than the backoff does not shorten it",
                transient(Some(5)),
                1,
                false,
                Settlement::Retry {
                    at: secs(30),
                    reason: "451 try later".into(),
                },
            ),
            (
                "out of attempts: give up",
                transient(None),
                3,
                false,
                Settlement::Failed {
                    reason: "gave up after 3 attempts: 451 try later".into(),
                },
            ),
            (
                "permanent at once",
                perm.clone(),
                1,
                false,
                Settlement::Failed {
                    reason: "550 no such user".into(),
                },
            ),
            (
                "the provider says the recipient unsubscribed",
                stop,
                1,
                false,
                Settlement::OptedOut {
                    reason: "Twilio 21610".into(),
                    provider: true,
                },
            ),
            (
                "opted out before the send",
                Outcome::permanent("recipient opted out (sms_stop)"),
                0,
                true,
                Settlement::OptedOut {
                    reason: "recipient opted out (sms_stop)".into(),
                    provider: false,
                },
            ),
        ];
        for (what, outcome, attempts, opted_out, want) in cases {
            assert_eq!(
                settle(&outcome, attempts, opted_out, &p, t0(), 1.0),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn reports_settle_like_their_outcomes() {
        let p = policy();
        assert_eq!(
            settle_report(&Report::Attempt(Outcome::sent()), 0, &p, t0(), 1.0),
            Settlement::Sent { provider_id: None }
        );
        assert_eq!(
            settle_report(&Report::Attempt(transient(None)), 2, &p, t0(), 1.0),
            Settlement::Failed {
                reason: "gave up after 3 attempts: 451 try later".into()
            },
            "the third attempt was the last"
        );
        assert_eq!(
            settle_report(&Report::OptedOut("sms_stop".into()), 1, &p, t0(), 1.0),
            Settlement::OptedOut {
                reason: "recipient opted out (sms_stop)".into(),
                provider: false
            }
        );
        assert!(matches!(
            settle_report(&Report::Stale, 0, &p, t0(), 1.0),
            Settlement::Superseded { .. }
        ));
        assert!(!Report::Stale.counts() && !Report::OptedOut(String::new()).counts());
        // Someone taken off the case: not sent, not failed, no fallback.
        assert!(!Report::Departed.counts());
        assert!(matches!(
            settle_report(&Report::Departed, 0, &p, t0(), 1.0),
            Settlement::Superseded { reason } if reason == DEPARTED
        ));
    }

    #[test]
    fn a_settlement_says_whether_the_update_falls_back() {
        let failed = Settlement::Failed { reason: "x".into() };
        let opted = Settlement::OptedOut {
            reason: "x".into(),
            provider: false,
        };
        let retry = Settlement::Retry {
            at: t0(),
            reason: "x".into(),
        };
        let sent = Settlement::Sent { provider_id: None };
        assert!(failed.falls_back() && opted.falls_back());
        assert!(!retry.falls_back() && !sent.falls_back());
        let stale = Settlement::Superseded { reason: "x".into() };
        assert!(!stale.falls_back());
        assert_eq!(stale.status(), DeliveryStatus::Cancelled);
        assert_eq!(opted.status(), DeliveryStatus::Cancelled);
        let refused = Settlement::OptedOut {
            reason: "x".into(),
            provider: true,
        };
        assert_eq!(refused.status(), DeliveryStatus::Failed);
        assert_eq!(retry.status(), DeliveryStatus::Pending);
    }

    #[test]
    fn applying_a_settlement_files_it_on_the_message() {
        let mut msg: MessageRecord = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001",
            "kind": "progress", "template": "progress", "rule": null,
            "channel": "sms", "status": "pending", "attempts": 0,
            "due_at": "2027-01-15T08:00:00Z", "sent_at": null,
            "promised_next_update_at": null, "error": "earlier try failed"
        }))
        .expect("a message record");
        Settlement::Retry {
            at: secs(30),
            reason: "timeout".into(),
        }
        .apply(&mut msg, 1, t0());
        assert_eq!(
            (msg.status, msg.attempts, msg.error.as_deref()),
            (DeliveryStatus::Pending, 1, Some("timeout"))
        );
        Settlement::Sent {
            provider_id: Some("SM9".into()),
        }
        .apply(&mut msg, 2, secs(40));
        assert_eq!(msg.status, DeliveryStatus::Sent);
        assert_eq!(msg.sent_at, Some(secs(40)));
        assert_eq!(msg.error, None);
        assert_eq!(msg.provider_id.as_deref(), Some("SM9"));
        Settlement::Failed {
            reason: "550".into(),
        }
        .apply(&mut msg, 3, secs(50));
        assert_eq!(
            (msg.status, msg.error.as_deref()),
            (DeliveryStatus::Failed, Some("550"))
        );
    }
}
