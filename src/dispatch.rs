//! The dispatcher: takes due entries from the outbox, hands them to their
//! channel, and records the outcome on the case's history.
//!
//! Entries leave the outbox only after the provider accepted them (or
//! failed them for good), so a crash mid-send means one resend with the
//! same `Message-ID`, never a lost message.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::channels::Outcome;
use crate::channels::email::Mailer;
use crate::config::DeliveryConfig;
use crate::service::Service;
use crate::store::{Commit, DeliveryStatus, OutboxEntry, StoreError};

/// Everything the delivery loop needs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub svc: Service,
    pub mailer: Mailer,
    pub delivery: DeliveryConfig,
}

/// The delay before attempt `attempts + 1`: exponential from `initial`,
/// capped at `max`, with jitter so a failing peer is not hit in lockstep.
pub fn backoff(cfg: &DeliveryConfig, attempts: u32, jitter: f64) -> Duration {
    let exp = cfg
        .backoff_initial
        .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(30)));
    let base = exp.min(cfg.backoff_max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

impl Dispatcher {
    /// Runs until `cancel` fires, then waits up to `grace` for sends in
    /// flight; whatever is left stays in the outbox for the next start.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let busy: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let permits = Arc::new(Semaphore::new(self.delivery.concurrency));
        let tracker = TaskTracker::new();
        loop {
            let now = Utc::now();
            let free = permits.available_permits().max(1);
            let due = {
                let in_flight = busy.lock().unwrap_or_else(PoisonError::into_inner);
                self.svc.store.due_outbox(now, free, &in_flight)
            };
            let wait = match due {
                Ok((batch, next)) => {
                    for entry in batch {
                        let permit = tokio::select! {
                            () = cancel.cancelled() => break,
                            p = permits.clone().acquire_owned() => p,
                        };
                        let Ok(permit) = permit else { break };
                        if let Ok(mut b) = busy.lock() {
                            b.insert(entry.id);
                        }
                        let this = self.clone();
                        let busy = busy.clone();
                        tracker.spawn(async move {
                            let id = entry.id;
                            this.attempt(entry).await;
                            if let Ok(mut b) = busy.lock() {
                                b.remove(&id);
                            }
                            drop(permit);
                            this.svc.wake_dispatcher.notify_one();
                        });
                    }
                    next.map_or(Duration::from_secs(3600), |at| {
                        (at - Utc::now()).to_std().unwrap_or_default()
                    })
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed; retrying in 1s");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.svc.wake_dispatcher.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                "sends still in flight at the shutdown deadline; they stay in the outbox"
            );
        }
    }

    async fn attempt(&self, entry: OutboxEntry) {
        let outcome = self.mailer.send(&entry).await;
        if let Err(e) = self.record(&entry, &outcome).await {
            tracing::error!(error = %e, msg_id = %entry.id, "recording a delivery outcome failed");
        }
    }

    async fn record(&self, entry: &OutboxEntry, outcome: &Outcome) -> Result<(), StoreError> {
        let store = &self.svc.store;
        let _guard = store.lock(&entry.case).await;
        let now = Utc::now();
        let attempts = entry.attempts + 1;
        let Some(mut record) = store.get(&entry.case)? else {
            // The case was erased while we were sending.
            store.commit(
                &entry.case,
                &Commit {
                    outbox_remove: vec![(entry.id, entry.next_attempt_at)],
                    ..Commit::default()
                },
            )?;
            return Ok(());
        };
        let old_due = record.schedule.due_at;
        let mut next: Option<DateTime<Utc>> = None;
        if let Some(msg) = record.message_mut(entry.id) {
            msg.attempts = attempts;
            match outcome {
                Outcome::Sent => {
                    msg.status = DeliveryStatus::Sent;
                    msg.sent_at = Some(now);
                    msg.error = None;
                }
                Outcome::Permanent(reason) => {
                    msg.status = DeliveryStatus::Failed;
                    msg.error = Some(reason.clone());
                }
                Outcome::Transient(reason) if attempts >= self.delivery.max_attempts => {
                    msg.status = DeliveryStatus::Failed;
                    msg.error = Some(format!("gave up after {attempts} attempts: {reason}"));
                }
                Outcome::Transient(reason) => {
                    msg.error = Some(reason.clone());
                    let delay = backoff(&self.delivery, attempts, rand::rng().random());
                    next = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
                }
            }
        }
        crate::metrics::delivery(&record, entry);
        let outbox_put = next
            .map(|at| OutboxEntry {
                attempts,
                next_attempt_at: at,
                ..entry.clone()
            })
            .into_iter()
            .collect();
        store.commit(
            &entry.case,
            &Commit {
                record: Some(record),
                old_due,
                outbox_put,
                outbox_remove: vec![(entry.id, entry.next_attempt_at)],
                ..Commit::default()
            },
        )?;
        // The provider has the message: make our record of it durable now,
        // so a crash after this point cannot send it again.
        store.flush().await?;
        match outcome {
            Outcome::Sent => {
                tracing::info!(case = %entry.case, msg_id = %entry.id, channel = entry.channel.as_str(), attempts, "message sent")
            }
            Outcome::Transient(reason) => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, attempts, reason = %reason, retry_at = ?next, "delivery failed, will retry")
            }
            Outcome::Permanent(reason) => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, attempts, reason = %reason, "delivery failed permanently")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let cfg = DeliveryConfig {
            max_attempts: 10,
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            concurrency: 1,
        };
        assert_eq!(backoff(&cfg, 1, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&cfg, 3, 1.0), Duration::from_secs(120));
        assert_eq!(backoff(&cfg, 20, 1.0), Duration::from_secs(3600));
        assert_eq!(backoff(&cfg, 1, 0.0), Duration::from_secs(15));
    }
}
