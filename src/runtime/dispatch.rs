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
use crate::channels::sms::Texter;
use crate::config::DeliveryConfig;
use crate::domain::Channel;
use crate::service::Service;
use crate::store::{CaseKey, CaseRecord, Commit, DeliveryStatus, OutboxEntry, StoreError};

/// Everything the delivery loop needs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub svc: Service,
    pub mailer: Mailer,
    pub texter: Texter,
    pub delivery: DeliveryConfig,
    /// The least time between two messages to one recipient, per channel.
    pub email_gap: Duration,
    pub sms_gap: Duration,
}

/// Why a message was not handed to its provider this time.
enum Gate {
    /// Send now.
    Open,
    /// Not before this instant (quiet hours, minimum gap).
    Later(DateTime<Utc>, &'static str),
    /// Never: the recipient opted out (how).
    OptedOut(String),
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
            // Without room to record an outcome, nothing is sent.
            let due = self
                .svc
                .store
                .room(crate::store::Writer::Internal)
                .and_then(|()| {
                    let in_flight = busy.lock().unwrap_or_else(PoisonError::into_inner);
                    self.svc.store.due_outbox(now, free, &in_flight)
                });
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
                Err(e @ StoreError::Full { .. }) => {
                    crate::store::warn_full(&e);
                    Duration::from_secs(5)
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
        // A run that stopped right after the provider accepted this message
        // left a mark: finish its record, never send it again.
        match self.svc.store.delivered_mark(entry.id) {
            Ok(Some(mark)) => {
                let outcome = Outcome::Sent {
                    provider_id: mark.provider_id,
                };
                if let Err(e) = self.record(&entry, &outcome, false).await {
                    tracing::error!(error = %e, msg_id = %entry.id, "recording a delivery outcome failed");
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, msg_id = %entry.id, "reading the delivery marks failed");
                return;
            }
        }
        let result = match self.gate(&entry) {
            Ok(Gate::Open) => {
                let outcome = match entry.channel {
                    Channel::Email => self.mailer.send(&entry).await,
                    Channel::Sms => self.texter.send(&entry).await,
                };
                // The provider has it: say so on disk first (one small
                // write), then update the histories.
                if let Outcome::Sent { provider_id } = &outcome
                    && let Err(e) = self
                        .svc
                        .store
                        .mark_delivered(entry.id, provider_id.clone(), Utc::now())
                        .await
                {
                    tracing::error!(error = %e, msg_id = %entry.id, "marking a message delivered failed");
                }
                self.record(&entry, &outcome, false).await
            }
            Ok(Gate::Later(at, why)) => self.defer(&entry, at, why).await,
            Ok(Gate::OptedOut(via)) => {
                let outcome = Outcome::permanent(format!("recipient opted out ({via})"));
                self.record(&entry, &outcome, true).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, msg_id = %entry.id, "recording a delivery outcome failed");
        }
    }

    /// Consent, quiet hours and the minimum gap, checked just before a send
    /// (an opt-out may have arrived after the message was planned).
    fn gate(&self, entry: &OutboxEntry) -> Result<Gate, StoreError> {
        if entry.internal {
            return Ok(Gate::Open);
        }
        let store = &self.svc.store;
        let contact = store.contact(entry.channel, &entry.to);
        if let Some(o) = store.opted_out(contact)? {
            return Ok(Gate::OptedOut(o.via));
        }
        let now = Utc::now();
        if let (Some(q), Some(tz)) = (
            self.svc.engine.load().channel_quiet(entry.channel).copied(),
            entry.tz,
        ) && q.contains(now, tz)
        {
            return Ok(Gate::Later(q.first_allowed(now, tz), "quiet hours"));
        }
        let gap = match entry.channel {
            Channel::Email => self.email_gap,
            Channel::Sms => self.sms_gap,
        };
        if !gap.is_zero() {
            let gap = chrono::Duration::from_std(gap).unwrap_or(chrono::Duration::MAX);
            if let Err(next) = store.claim_send(contact, gap, now)? {
                return Ok(Gate::Later(next, "minimum gap"));
            }
        }
        Ok(Gate::Open)
    }

    /// Puts an entry back for later without counting an attempt.
    async fn defer(
        &self,
        entry: &OutboxEntry,
        at: DateTime<Utc>,
        why: &'static str,
    ) -> Result<(), StoreError> {
        let store = &self.svc.store;
        let _guards = store.lock_many(entry.cases()).await;
        if store.outbox_entry(entry.id)?.is_none() {
            return Ok(()); // cancelled meanwhile
        }
        store.commit(
            &entry.case,
            &Commit {
                outbox_put: vec![OutboxEntry {
                    next_attempt_at: at,
                    ..entry.clone()
                }],
                outbox_remove: vec![(entry.id, entry.next_attempt_at)],
                ..Commit::default()
            },
        )?;
        tracing::debug!(msg_id = %entry.id, until = %at, why, "message held back");
        Ok(())
    }

    async fn record(
        &self,
        entry: &OutboxEntry,
        outcome: &Outcome,
        opted_out: bool,
    ) -> Result<(), StoreError> {
        let store = &self.svc.store;
        let _guards = store.lock_many(entry.cases()).await;
        let now = Utc::now();
        let attempts = entry.attempts + u32::from(!opted_out);
        let mut records: Vec<CaseRecord> = Vec::new();
        for key in entry.cases() {
            // A case erased while we were sending simply drops out.
            if let Some(r) = store.get(key)? {
                records.push(r);
            }
        }
        let old_due: Vec<_> = records.iter().map(|r| r.schedule.due_at).collect();
        let mut next: Option<DateTime<Utc>> = None;
        let mut failed = false;
        for record in &mut records {
            let Some(msg) = record.message_mut(entry.id) else {
                continue;
            };
            msg.attempts = attempts;
            match outcome {
                Outcome::Sent { provider_id } => {
                    msg.status = DeliveryStatus::Sent;
                    msg.sent_at = Some(now);
                    msg.error = None;
                    msg.provider_id.clone_from(provider_id);
                }
                Outcome::Permanent { reason, .. } => {
                    msg.status = if opted_out {
                        DeliveryStatus::Cancelled
                    } else {
                        DeliveryStatus::Failed
                    };
                    msg.error = Some(reason.clone());
                    failed = true;
                }
                Outcome::Transient { reason, .. } if attempts >= self.delivery.max_attempts => {
                    msg.status = DeliveryStatus::Failed;
                    msg.error = Some(format!("gave up after {attempts} attempts: {reason}"));
                    failed = true;
                }
                Outcome::Transient {
                    reason,
                    retry_after,
                } => {
                    msg.error = Some(reason.clone());
                    let mut delay = backoff(&self.delivery, attempts, rand::rng().random());
                    if let Some(asked) = retry_after {
                        delay = delay.max(*asked);
                    }
                    next = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
                }
            }
        }
        if let Some(r) = records.iter().find(|r| r.key() == entry.case) {
            crate::metrics::delivery(r, entry);
        }
        let mut outbox_put: Vec<OutboxEntry> = next
            .map(|at| OutboxEntry {
                attempts,
                next_attempt_at: at,
                ..entry.clone()
            })
            .into_iter()
            .collect();
        let mut fallback_to = None;
        if failed
            && !entry.internal
            && let Some((channel, msg, fallback)) = self.fallback(entry, &records, now)
        {
            for r in &mut records {
                r.messages.push(msg.clone());
            }
            outbox_put.extend(fallback);
            fallback_to = Some(channel);
        }
        if let Outcome::Permanent { opt_out: true, .. } = outcome {
            store.opt_out(store.contact(entry.channel, &entry.to), "provider", now)?;
        }
        let removal = vec![(entry.id, entry.next_attempt_at)];
        if records.is_empty() {
            // Every case it was for has been erased: just drop the entry.
            store.commit(
                &entry.case,
                &Commit {
                    outbox_remove: removal,
                    ..Commit::default()
                },
            )?;
        } else {
            let mut commits: Vec<(CaseKey, Commit)> = records
                .into_iter()
                .zip(old_due)
                .map(|(r, old_due)| {
                    let key = r.key();
                    let commit = Commit {
                        record: Some(r),
                        old_due,
                        ..Commit::default()
                    };
                    (key, commit)
                })
                .collect();
            commits[0].1.outbox_put = outbox_put;
            commits[0].1.outbox_remove = removal;
            let changes: Vec<(&CaseKey, &Commit)> = commits.iter().map(|(k, c)| (k, c)).collect();
            store.commit_many(&changes)?;
        }
        if matches!(outcome, Outcome::Sent { .. }) && !entry.internal {
            store.set_last_sent(store.contact(entry.channel, &entry.to), now)?;
        }
        // The provider has the message: make our record of it durable now,
        // so a crash after this point cannot send it again.
        store.flush().await?;
        if fallback_to.is_some() {
            self.svc.wake_dispatcher.notify_one();
        }
        let channel = entry.channel.as_str();
        match outcome {
            Outcome::Sent { .. } => {
                tracing::info!(case = %entry.case, msg_id = %entry.id, channel, attempts, covers = entry.also.len() + 1, "message sent")
            }
            Outcome::Transient { reason, .. } if next.is_some() => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, channel, attempts, reason = %reason, retry_at = ?next, "delivery failed, will retry")
            }
            Outcome::Transient { reason, .. } | Outcome::Permanent { reason, .. } => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, channel, attempts, reason = %reason, fallback = fallback_to.map(Channel::as_str), "message not delivered")
            }
        }
        Ok(())
    }

    /// For an update that could not be delivered on `entry`'s channel: the
    /// next channel the customer allows, unless the same update already
    /// went (or is going) out on another channel.
    fn fallback(
        &self,
        entry: &OutboxEntry,
        records: &[CaseRecord],
        now: DateTime<Utc>,
    ) -> Option<(Channel, crate::store::MessageRecord, Option<OutboxEntry>)> {
        let primary = records.iter().find(|r| r.key() == entry.case)?;
        let update = entry.update?;
        let siblings = primary
            .messages
            .iter()
            .filter(|m| m.update == Some(update) && m.id != entry.id);
        let mut tried = vec![entry.channel];
        for m in siblings {
            if matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Pending) {
                return None;
            }
            tried.push(m.channel);
        }
        let channel = self.svc.engine.load().next_channel(&primary.case, &tried)?;
        let mut refs: Vec<&CaseRecord> = vec![primary];
        refs.extend(records.iter().filter(|r| r.key() != entry.case));
        let (msg, out) = self.svc.engine.load().fallback(&refs, entry, channel, now);
        Some((channel, msg, out))
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
