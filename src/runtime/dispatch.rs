//! The dispatcher: takes due entries from the outbox, hands them to their
//! channel, and records the outcome on the case's history.
//!
//! Entries leave the outbox only after the provider accepted them (or
//! failed them for good), so a crash mid-send means one resend with the
//! same `Message-ID`, never a lost message.

use std::collections::{HashMap, HashSet};
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
use crate::domain::{
    CaseKey, CaseRecord, Channel, DeliveryStatus, Message, MessageRecord, OptOutVia, OutboxEntry,
};
use crate::engine::pace::{Recipient, choose, recipient};
use crate::engine::plan::Engine;
use crate::engine::settle::{DeliveryPolicy, Report, Settlement, settle_report};
use crate::runtime::supervise::Heartbeat;
use crate::service::{Scope, Service, ServiceError};
use crate::store::{Commit, StoreError};

mod gate;

/// Everything the delivery loop needs.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub svc: Service,
    pub mailer: Mailer,
    pub texter: Texter,
    /// WhatsApp's sender, when the `whatsapp:` section is configured.
    pub whatsapp: Option<Texter>,
    pub delivery: DeliveryPolicy,
    /// The least time between two messages to one recipient, per channel.
    pub email_gap: Duration,
    pub sms_gap: Duration,
    pub whatsapp_gap: Duration,
}

/// What the delivery loop is doing per recipient: the entries in flight or
/// waiting (not to be fetched again), the recipients with a send under way
/// on a paced channel, and the entries waiting for each.
#[derive(Debug, Default)]
struct Pacing {
    busy: HashSet<Uuid>,
    in_flight: HashSet<Recipient>,
    held: HashMap<Recipient, Vec<Uuid>>,
}

impl Pacing {
    /// `entry`'s attempt is over (or never began): its recipient's waiting
    /// entries may be fetched again.
    fn finished(&mut self, entry: &OutboxEntry) {
        self.busy.remove(&entry.id);
        let who = recipient(entry);
        self.in_flight.remove(&who);
        for id in self.held.remove(&who).unwrap_or_default() {
            self.busy.remove(&id);
        }
    }
}

/// Outcomes filed after their send, per send in flight.
const FILING_PER_SEND: usize = 4;

/// How long a sent message's filing is retried while the store cannot
/// write, before it is left to the outbox (and sent again, with the same
/// `Message-ID`, once the store is back).
const FILING_PATIENCE: Duration = Duration::from_secs(300);

/// A send's place among the sends in flight, handed on once the provider
/// has answered (for a place among the outcomes being filed).
struct Slot {
    permit: tokio::sync::OwnedSemaphorePermit,
    filing: Arc<Semaphore>,
}

impl Slot {
    /// The provider answered: trade the send's place for a filing one
    /// (waiting while too many outcomes are being filed), and let the
    /// delivery loop start another send.
    async fn sent(&mut self, wake: &tokio::sync::Notify) {
        if let Ok(filing) = self.filing.clone().acquire_owned().await {
            self.permit = filing;
            wake.notify_one();
        }
    }
}

/// Why a message was not handed to its provider this time.
enum Gate {
    /// Send this now (for WhatsApp: the free-form body or the approved
    /// template, whichever the window allows).
    Open(Box<Message>),
    /// Not before this instant (quiet hours, minimum gap).
    Later(DateTime<Utc>, &'static str),
    /// Never: the recipient opted out, or the update went stale.
    Closed(Report),
}

impl Dispatcher {
    /// Runs until `cancel` fires, then waits up to `grace` for sends in
    /// flight; whatever is left stays in the outbox for the next start.
    pub async fn run(self, cancel: CancellationToken, grace: Duration, heartbeat: Heartbeat) {
        let pacing: Arc<Mutex<Pacing>> = Arc::default();
        let permits = Arc::new(Semaphore::new(self.delivery.concurrency));
        // Outcomes being filed after their send, at most this many: a send
        // hands its slot on as soon as the provider has answered, so the
        // connections keep busy while the records wait for a group commit.
        let filing = Arc::new(Semaphore::new(self.delivery.concurrency * FILING_PER_SEND));
        let tracker = TaskTracker::new();
        let paced = |c: Channel| !self.gap(c).is_zero();
        loop {
            heartbeat.beat();
            let now = self.svc.now();
            let free = permits.available_permits().max(1);
            // Without room to record an outcome, nothing is sent.
            let due = self
                .svc
                .store
                .room(crate::store::Writer::Internal)
                .and_then(|()| {
                    let p = pacing.lock().unwrap_or_else(PoisonError::into_inner);
                    self.svc.store.due_outbox(now, free, &p.busy)
                });
            let wait = match due {
                Ok((batch, next)) => {
                    let go = {
                        let mut p = pacing.lock().unwrap_or_else(PoisonError::into_inner);
                        let (go, held) = choose(batch, paced, &p.in_flight);
                        for e in held {
                            p.busy.insert(e.id);
                            p.held.entry(recipient(&e)).or_default().push(e.id);
                        }
                        for e in &go {
                            p.busy.insert(e.id);
                            if paced(e.channel) && !e.internal {
                                p.in_flight.insert(recipient(e));
                            }
                        }
                        go
                    };
                    let mut go = go.into_iter();
                    while let Some(entry) = go.next() {
                        let permit = tokio::select! {
                            () = cancel.cancelled() => None,
                            p = permits.clone().acquire_owned() => p.ok(),
                        };
                        let Some(permit) = permit else {
                            // Not started: let them be picked again.
                            let mut p = pacing.lock().unwrap_or_else(PoisonError::into_inner);
                            for e in std::iter::once(entry).chain(go.by_ref()) {
                                p.finished(&e);
                            }
                            break;
                        };
                        let this = self.clone();
                        let pacing = pacing.clone();
                        let slot = Slot {
                            permit,
                            filing: filing.clone(),
                        };
                        tracker.spawn(async move {
                            let done = entry.clone();
                            this.attempt(entry, slot).await;
                            pacing
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .finished(&done);
                            this.svc.wake_dispatcher.notify_one();
                        });
                    }
                    next.map_or(Duration::from_secs(3600), |at| {
                        (at - self.svc.now()).to_std().unwrap_or_default()
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
                () = tokio::time::sleep(wait.min(Heartbeat::PERIOD)) => {}
            }
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                "sends still in flight at the shutdown deadline; they stay in the outbox"
            );
        }
    }

    /// The least time between two messages to one recipient on `channel`.
    fn gap(&self, channel: Channel) -> Duration {
        match channel {
            Channel::Email => self.email_gap,
            Channel::Sms => self.sms_gap,
            Channel::WhatsApp => self.whatsapp_gap,
        }
    }

    async fn attempt(&self, entry: OutboxEntry, mut slot: Slot) {
        // A run that stopped right after the provider accepted this message
        // left a mark: finish its record, never send it again.
        match self.svc.store.delivered_mark(entry.id) {
            Ok(Some(mark)) => {
                let outcome = Outcome::Sent {
                    provider_id: mark.provider_id,
                };
                if let Err(e) = self
                    .record_at(&entry, Report::Attempt(outcome), Some(mark.at))
                    .await
                {
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
            Ok(Gate::Open(message)) => {
                let outcome = match entry.channel {
                    Channel::Email => self.mailer.send(&message).await,
                    Channel::Sms => self.texter.send(&message).await,
                    Channel::WhatsApp => match &self.whatsapp {
                        Some(w) => w.send(&message).await,
                        None => Outcome::permanent("whatsapp is not configured"),
                    },
                };
                // The instant the provider answered: the message's `sent_at`
                // and the recipient's last send, however late it is filed.
                let accepted = self.svc.now();
                let answered = std::time::Instant::now();
                // The delivered mark at once, while this send waits for a
                // place among the outcomes being filed: until it is on
                // disk, a crash sends the message again.
                let mark = async {
                    match &outcome {
                        Outcome::Sent { provider_id } => {
                            let marked = self
                                .mark_delivered(&entry, provider_id.clone(), accepted)
                                .await;
                            if marked.is_ok() {
                                crate::metrics::delivered_mark(answered.elapsed());
                            }
                            Some(marked)
                        }
                        _ => None,
                    }
                };
                let (marked, ()) = tokio::join!(mark, slot.sent(&self.svc.wake_dispatcher));
                match (marked, &outcome) {
                    (Some(Err(e @ StoreError::Fenced)), _) => Err(e.into()),
                    (Some(first), Outcome::Sent { provider_id }) => {
                        self.file_sent(
                            &entry,
                            provider_id.clone(),
                            outcome.clone(),
                            accepted,
                            first.is_ok(),
                        )
                        .await
                    }
                    _ => self.record(&entry, Report::Attempt(outcome)).await,
                }
            }
            Ok(Gate::Later(at, why)) => self.defer(&entry, at, why).await,
            Ok(Gate::Closed(report)) => self.record(&entry, report).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => {}
            Err(ServiceError::Store(StoreError::Fenced)) => {
                crate::metrics::lease_lost();
                tracing::warn!(msg_id = %entry.id, "another replica took this message over (its lease ran out); its outcome here is not recorded");
            }
            Err(e) => {
                tracing::error!(error = %e, msg_id = %entry.id, "recording a delivery outcome failed");
            }
        }
    }

    /// Files a message the provider accepted: the delivered mark on disk
    /// first (unless `marked` already), then the histories. While the
    /// store cannot write (a database outage), both are tried again with
    /// backoff, for up to `FILING_PATIENCE`, the entry held meanwhile:
    /// letting it go back to the outbox would send it again.
    async fn file_sent(
        &self,
        entry: &OutboxEntry,
        provider_id: Option<String>,
        outcome: Outcome,
        accepted: DateTime<Utc>,
        mut marked: bool,
    ) -> Result<(), ServiceError> {
        let give_up = tokio::time::Instant::now() + FILING_PATIENCE;
        let mut wait = Duration::from_millis(250);
        loop {
            let result = if marked {
                self.record_at(entry, Report::Attempt(outcome.clone()), Some(accepted))
                    .await
            } else {
                self.mark_delivered(entry, provider_id.clone(), accepted)
                    .await
                    .map_err(ServiceError::from)
            };
            match result {
                Ok(()) if marked => return Ok(()),
                Ok(()) => marked = true,
                // Another replica took the message over: what it does with
                // it stands, not what this one did.
                Err(e @ ServiceError::Store(StoreError::Fenced)) => return Err(e),
                Err(e) if tokio::time::Instant::now() + wait < give_up => {
                    tracing::warn!(error = %e, msg_id = %entry.id, "filing a sent message failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Records, durably, that the provider accepted `entry` (the mark a
    /// restart finds if it stops before the history is updated).
    async fn mark_delivered(
        &self,
        entry: &OutboxEntry,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mark = crate::domain::DeliveredMark { at, provider_id };
        // The next send to this recipient waits `min_gap` from `at`, noted
        // with the mark (one write: the sooner it is durable, the smaller
        // the window in which a crash sends the message again).
        let commit = Commit {
            delivered: Some((entry.id, mark)),
            last_sent: (!entry.internal)
                .then(|| (self.svc.store.contact(entry.channel, &entry.to), at)),
            settles: Some(entry.id),
            ..Commit::default()
        };
        self.svc
            .commit_urgent(vec![(entry.case.clone(), commit)])
            .await
    }

    /// Puts an entry back for later without counting an attempt.
    async fn defer(
        &self,
        entry: &OutboxEntry,
        at: DateTime<Utc>,
        why: &'static str,
    ) -> Result<(), ServiceError> {
        let keys: Vec<CaseKey> = entry.cases().cloned().collect();
        let scope = Scope {
            durable: false,
            ..Scope::internal(&keys)
        };
        let store = &self.svc.store;
        self.svc
            .change(scope, |_, _| {
                let mut commits: Vec<Commit> = keys.iter().map(|_| Commit::default()).collect();
                // Cancelled meanwhile: nothing to hold back.
                if store.outbox_entry(entry.id)?.is_some() {
                    commits[0].outbox_put = vec![OutboxEntry {
                        next_attempt_at: at,
                        ..entry.clone()
                    }];
                    commits[0].outbox_remove = vec![(entry.id, entry.next_attempt_at)];
                    commits[0].settles = Some(entry.id);
                }
                Ok((commits, ()))
            })
            .await?;
        tracing::debug!(msg_id = %entry.id, until = %at, why, "message held back");
        Ok(())
    }

    /// Files an attempt's outcome: settles it (`engine::settle`), records
    /// it on every history the message belongs to, puts a retry back in
    /// the outbox or plans the fallback, and makes all of it durable.
    async fn record(&self, entry: &OutboxEntry, report: Report) -> Result<(), ServiceError> {
        self.record_at(entry, report, None).await
    }

    /// As `record`, for a message a provider accepted at `accepted` (its
    /// `sent_at`, the instant its promise is settled at, and the
    /// recipient's last send), when that is known.
    async fn record_at(
        &self,
        entry: &OutboxEntry,
        report: Report,
        accepted: Option<DateTime<Utc>>,
    ) -> Result<(), ServiceError> {
        let keys: Vec<CaseKey> = entry.cases().cloned().collect();
        let attempts = entry.attempts + u32::from(report.counts());
        let jitter: f64 = rand::rng().random();
        let store = &self.svc.store;
        let (verdict, fallback_to) = self
            .svc
            .change(Scope::internal(&keys), |records, now| {
                let verdict = settle_report(&report, entry.attempts, &self.delivery, now, jitter);
                // A retry of an entry cancelled while it was being tried (a
                // newer update superseded it) is not put back: the message
                // stays cancelled.
                let withdrawn = matches!(verdict, Settlement::Retry { .. })
                    && store.outbox_entry(entry.id)?.is_none();
                // A case erased while we were sending simply drops out.
                let mut live: Vec<(usize, CaseRecord)> = records
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.map(|r| (i, r)))
                    .collect();
                for (_, record) in &mut live {
                    if let Some(msg) = record.message_mut(entry.id)
                        && !withdrawn
                    {
                        verdict.apply(msg, attempts, accepted.unwrap_or(now));
                    }
                    if let Settlement::Sent { .. } = verdict {
                        crate::engine::promises::settle_on_delivery(
                            record,
                            entry.id,
                            accepted.unwrap_or(now),
                        );
                    }
                }
                if let Some((_, r)) = live.iter().find(|(_, r)| r.key() == entry.case) {
                    crate::metrics::delivery(r, entry);
                }
                let mut outbox_put: Vec<OutboxEntry> = match &verdict {
                    // Every case it was for has been erased, or the entry
                    // was cancelled meanwhile: just drop it.
                    _ if live.is_empty() || withdrawn => Vec::new(),
                    Settlement::Retry { at, .. } => vec![OutboxEntry {
                        attempts,
                        next_attempt_at: *at,
                        ..entry.clone()
                    }],
                    _ => Vec::new(),
                };
                let mut fallback_to = None;
                let fell_back = if verdict.falls_back() && !entry.internal {
                    let records: Vec<&CaseRecord> = live.iter().map(|(_, r)| r).collect();
                    self.fallback(entry, &records, now)
                } else {
                    None
                };
                if let Some((channel, msg, fallback)) = fell_back {
                    for (_, r) in &mut live {
                        r.messages.push(msg.clone());
                    }
                    outbox_put.extend(fallback);
                    fallback_to = Some(channel);
                }
                if let Settlement::OptedOut { provider: true, .. } = verdict {
                    store.opt_out(
                        store.contact(entry.channel, &entry.to),
                        OptOutVia::Provider,
                        now,
                    )?;
                }
                let mut commits: Vec<Commit> = keys.iter().map(|_| Commit::default()).collect();
                if let Settlement::Sent { .. } = verdict
                    && !entry.internal
                {
                    commits[0].last_sent = Some((
                        store.contact(entry.channel, &entry.to),
                        accepted.unwrap_or(now),
                    ));
                }
                for (i, r) in live {
                    commits[i] = Commit::record(r);
                }
                // The outbox moves with the message's own case (or alone,
                // when every case it was for has been erased).
                commits[0].outbox_put = outbox_put;
                commits[0].outbox_remove = vec![(entry.id, entry.next_attempt_at)];
                commits[0].settles = Some(entry.id);
                Ok((commits, (verdict, fallback_to)))
            })
            .await?;
        let channel = entry.channel.as_str();
        match &verdict {
            Settlement::Sent { .. } => {
                tracing::info!(case = %entry.case, msg_id = %entry.id, channel, attempts, covers = entry.also.len() + 1, "message sent")
            }
            Settlement::Retry { at, reason } => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, channel, attempts, reason = %reason, retry_at = %at, "delivery failed, will retry")
            }
            Settlement::Superseded { reason } => {
                tracing::info!(case = %entry.case, msg_id = %entry.id, channel, reason = %reason, "message not sent")
            }
            Settlement::Failed { reason } | Settlement::OptedOut { reason, .. } => {
                tracing::warn!(case = %entry.case, msg_id = %entry.id, channel, attempts, reason = %reason, fallback = fallback_to.map(Channel::as_str), "message not delivered")
            }
        }
        Ok(())
    }
    /// For an update that could not be delivered on `entry`'s channel: the
    /// next channel its recipient (the customer or a CC) allows, unless the same update already
    /// went (or is going) out on another channel.
    fn fallback(
        &self,
        entry: &OutboxEntry,
        records: &[&CaseRecord],
        now: DateTime<Utc>,
    ) -> Option<(Channel, MessageRecord, Option<OutboxEntry>)> {
        let primary = *records.iter().find(|r| r.key() == entry.case)?;
        let update = entry.update?;
        if !Engine::still_reaches(&primary.case, entry.recipient, entry.channel, &entry.to) {
            return None;
        }
        // The same update to the same person (the customer or one CC).
        let siblings = primary.messages.iter().filter(|m| {
            m.update == Some(update) && m.id != entry.id && m.recipient == entry.recipient
        });
        let mut tried = vec![entry.channel];
        for m in siblings {
            if matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Pending) {
                return None;
            }
            tried.push(m.channel);
        }
        let channel =
            self.svc
                .engine
                .load()
                .next_channel_for(&primary.case, entry.recipient, &tried)?;
        let mut refs: Vec<&CaseRecord> = vec![primary];
        refs.extend(records.iter().copied().filter(|r| r.key() != entry.case));
        let (msg, out) = self.svc.engine.load().fallback(&refs, entry, channel, now);
        Some((channel, msg, out))
    }
}
