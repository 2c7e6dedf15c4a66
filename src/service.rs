//! The one write path: every change to a case goes through
//! `Service::change`, whoever makes it (the API, the scheduler, the
//! dispatcher, the webhooks, a reload).
//!
//! `change` takes the cases' locks (and, for an idempotent request, the
//! lock of its key), reads the records as stored, hands them and the time
//! to the caller's decision, commits what the decision returns in one
//! transaction, waits for the flush when asked, and wakes the scheduler
//! and the dispatcher. The store moves the schedule index entries itself.
//! Nothing here sends.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

mod page;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::domain::clock::SharedClock;
use crate::domain::{
    CaseId, CaseInput, CaseKey, CaseRecord, Defaults, DeliveryStatus, EventInput, FieldError,
    IdempotentResponse,
};
use crate::engine::plan::{Engine, Planned};
use crate::store::{BackupError, BackupSummary, Commit, GroupCommit, Storage, StoreError, Writer};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("case not found")]
    NotFound,
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("the Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request's idempotency: the (scoped) key and a hash of the request.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_sha256: String,
}

/// What an operation answers: a replayed response or a fresh result.
#[derive(Debug)]
pub enum Reply<T> {
    Replayed(IdempotentResponse),
    Done(T),
}

/// Builds the stored response for an idempotent request from its result.
pub type Respond<'a> = &'a (dyn Fn(&CaseRecord, bool) -> (u16, serde_json::Value) + Sync);

/// What a change locks, who makes it, and how durable it must be before
/// `change` returns.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The cases it reads and writes, in the order the decision sees them.
    pub keys: &'a [CaseKey],
    pub writer: Writer,
    /// Wait for the flush (a 2xx, a recorded send); otherwise the caller
    /// flushes later (a reload's walk flushes once at the end).
    pub durable: bool,
    /// An idempotency key to hold while deciding: two requests with the
    /// same key on different cases must not both be fresh.
    pub idempotency: Option<&'a str>,
}

impl<'a> Scope<'a> {
    /// A durable change by intake.
    pub fn intake(keys: &'a [CaseKey]) -> Self {
        Self {
            keys,
            writer: Writer::Intake,
            durable: true,
            idempotency: None,
        }
    }

    /// A durable change by the daemon itself (planning, delivery, consent).
    pub fn internal(keys: &'a [CaseKey]) -> Self {
        Self {
            writer: Writer::Internal,
            ..Self::intake(keys)
        }
    }
}

/// A decision: one commit per key of the scope (in its order; an empty
/// commit leaves a case alone), and what the caller gets back.
pub type Decision<T> = Result<(Vec<Commit>, T), ServiceError>;

/// Lock stripes: changes to one case (and uses of one idempotency key)
/// are serialised; a backup holds them all.
#[derive(Debug)]
struct Locks(Box<[Mutex<()>]>);

const LOCK_STRIPES: usize = 1024;

/// How many times a change is decided again after another replica wrote
/// one of its cases meanwhile, before the conflict is reported.
const MAX_CONFLICTS: u32 = 16;

impl Locks {
    fn new() -> Self {
        Self((0..LOCK_STRIPES).map(|_| Mutex::new(())).collect())
    }

    fn stripe(item: &impl Hash) -> usize {
        let mut h = DefaultHasher::new();
        item.hash(&mut h);
        (h.finish() as usize) % LOCK_STRIPES
    }

    /// Takes stripes in a fixed order, so two callers never wait on each other.
    async fn take(&self, mut stripes: Vec<usize>) -> Vec<MutexGuard<'_, ()>> {
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.0[s].lock().await);
        }
        guards
    }
}

/// Shared handles of the running daemon.
#[derive(Debug, Clone)]
pub struct Service {
    pub store: Arc<dyn Storage>,
    /// Swapped whole on reload; each operation plans with one snapshot.
    pub engine: Arc<ArcSwap<Engine>>,
    pub clock: SharedClock,
    pub defaults: Defaults,
    pub wake_scheduler: Arc<Notify>,
    pub wake_dispatcher: Arc<Notify>,
    /// One customer's updates due within this window go out as a digest.
    pub digest_window: std::time::Duration,
    locks: Arc<Locks>,
    group: Arc<GroupCommit>,
}

impl Service {
    pub fn new(
        store: Arc<dyn Storage>,
        engine: Arc<Engine>,
        clock: SharedClock,
        defaults: Defaults,
    ) -> Self {
        Self {
            group: Arc::new(GroupCommit::new(store.clone())),
            store,
            engine: Arc::new(ArcSwap::new(engine)),
            clock,
            defaults,
            wake_scheduler: Arc::new(Notify::new()),
            wake_dispatcher: Arc::new(Notify::new()),
            digest_window: std::time::Duration::ZERO,
            locks: Arc::new(Locks::new()),
        }
    }

    /// The time, as this daemon's clock tells it.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The one write path: locks `scope`, reads its cases, lets `decide`
    /// say what changes (given the records as stored and the time), commits
    /// that in one transaction, flushes when the scope is durable, and
    /// wakes the workers.
    pub async fn change<T>(
        &self,
        scope: Scope<'_>,
        mut decide: impl FnMut(Vec<Option<CaseRecord>>, DateTime<Utc>) -> Decision<T>,
    ) -> Result<T, ServiceError> {
        self.store.room(scope.writer)?;
        let mut stripes: Vec<usize> = scope.keys.iter().map(Locks::stripe).collect();
        stripes.extend(scope.idempotency.map(|k| Locks::stripe(&k)));
        let _guards = self.locks.take(stripes).await;
        // Another replica may write one of the cases between our read and
        // our commit: the store refuses it then, and the change is decided
        // again on what is stored now.
        let mut attempt = 0;
        loop {
            match self.change_once(&scope, &mut decide).await {
                Err(ServiceError::Store(StoreError::Conflict)) if attempt < MAX_CONFLICTS => {
                    attempt += 1;
                    crate::metrics::store_conflict();
                }
                other => return other,
            }
        }
    }

    /// One read, decision and commit of `change` (the locks held).
    async fn change_once<T>(
        &self,
        scope: &Scope<'_>,
        decide: &mut impl FnMut(Vec<Option<CaseRecord>>, DateTime<Utc>) -> Decision<T>,
    ) -> Result<T, ServiceError> {
        let mut records = Vec::with_capacity(scope.keys.len());
        let mut revisions = Vec::with_capacity(scope.keys.len());
        for key in scope.keys {
            let (record, revision) = match self.store.get_versioned_async(key) {
                Some(read) => read.await?,
                None => self.store.get_versioned(key)?,
            };
            records.push(record);
            revisions.push(revision);
        }
        let old_due: Vec<Option<DateTime<Utc>>> = records
            .iter()
            .map(|r| r.as_ref().and_then(|r| r.schedule.due_at))
            .collect();
        let settled: Vec<Vec<uuid::Uuid>> = records
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(crate::engine::promises::settled_ids)
                    .unwrap_or_default()
            })
            .collect();
        let now = self.clock.now();
        let (mut commits, value) = decide(records, now)?;
        for (c, revision) in commits.iter_mut().zip(&revisions) {
            if c.record.is_some() || c.erase {
                c.expect = Some(*revision);
            }
        }
        // Only a moved due instant is news to the scheduler (a recorded
        // send, say, is not).
        let rescheduled = commits.iter().zip(&old_due).any(|(c, old)| {
            c.erase || c.record.as_ref().is_some_and(|r| r.schedule.due_at != *old)
        });
        debug_assert_eq!(commits.len(), scope.keys.len(), "one commit per key");
        let changes: Vec<(&CaseKey, &Commit)> = scope
            .keys
            .iter()
            .zip(&commits)
            .filter(|(_, c)| !c.is_empty())
            .collect();
        if changes.is_empty() {
            return Ok(value);
        }
        let queued = changes.iter().any(|(_, c)| !c.outbox_put.is_empty());
        let promises: Vec<_> = (commits.iter().zip(&settled))
            .filter_map(|(c, before)| c.record.as_ref().map(|r| (r, before)))
            .flat_map(|(r, before)| {
                crate::engine::promises::newly_settled(before, r)
                    .into_iter()
                    .map(|(rule, o)| (r.case.source.clone(), rule, o))
            })
            .collect();
        if scope.durable {
            // With every other writer's changes waiting meanwhile: one
            // transaction, one flush.
            let owned = scope.keys.iter().cloned().zip(commits).collect();
            self.group.commit(owned).await?;
        } else {
            self.store.commit_many(&changes)?;
        }
        for (source, rule, outcome) in promises {
            crate::metrics::promise(&source, &rule, outcome);
        }
        if queued {
            self.wake_dispatcher.notify_one();
        }
        if rescheduled {
            self.wake_scheduler.notify_one();
        }
        Ok(value)
    }

    /// Applies changes that need no case's lock (a delivered mark) and
    /// returns once they are durable, grouped with other writers' changes.
    pub async fn commit_durable(&self, changes: Vec<(CaseKey, Commit)>) -> Result<(), StoreError> {
        self.group.commit(changes).await
    }

    /// As `commit_durable`, for a small change that must be on file as
    /// soon as it can (a provider's acceptance): on a store that offers
    /// `Storage::commit_now`, in a transaction of its own rather than
    /// behind the group's current batch.
    pub async fn commit_urgent(&self, changes: Vec<(CaseKey, Commit)>) -> Result<(), StoreError> {
        {
            let refs: Vec<(&CaseKey, &Commit)> = changes.iter().map(|(k, c)| (k, c)).collect();
            if let Some(now) = self.store.commit_now(&refs) {
                return now.await;
            }
        }
        self.group.commit(changes).await
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }

    /// A consistent copy of the store: every writer waits meanwhile.
    pub async fn backup(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<BackupSummary, BackupError> {
        let _all = self.locks.take((0..LOCK_STRIPES).collect()).await;
        self.store.backup(out).await
    }

    fn replay(
        &self,
        idem: Option<&Idempotency>,
    ) -> Result<Option<IdempotentResponse>, ServiceError> {
        let Some(idem) = idem else { return Ok(None) };
        match self.store.idempotent_response(&idem.key)? {
            Some(r) if r.request_sha256 == idem.request_sha256 => Ok(Some(r)),
            Some(_) => Err(ServiceError::IdempotencyConflict),
            None => Ok(None),
        }
    }

    /// The commit for a planned change to an API request, with the answer
    /// stored under its idempotency key.
    fn commit_planned(
        planned: Planned,
        created: bool,
        idem: Option<&Idempotency>,
        respond: Respond<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Commit, CaseRecord), ServiceError> {
        let Some(mut record) = planned.record else {
            return Err(ServiceError::NotFound);
        };
        let idempotency = idem.map(|i| {
            record.idempotency_keys.push(i.key.clone());
            let (status, body) = respond(&record, created);
            (
                i.key.clone(),
                IdempotentResponse {
                    request_sha256: i.request_sha256.clone(),
                    status,
                    body,
                    at: now,
                },
            )
        });
        let commit = Commit {
            record: Some(record.clone()),
            outbox_put: planned.outbox,
            idempotency,
            ..Commit::default()
        };
        Ok((commit, record))
    }

    fn intake_scope<'a>(keys: &'a [CaseKey], idem: Option<&'a Idempotency>) -> Scope<'a> {
        Scope {
            idempotency: idem.map(|i| i.key.as_str()),
            ..Scope::intake(keys)
        }
    }

    /// `PUT /v1/cases/{id}`: returns the record and whether it was new.
    pub async fn put_case(
        &self,
        source: &str,
        id: CaseId,
        input: CaseInput,
        idem: Option<&Idempotency>,
        respond: Respond<'_>,
    ) -> Result<Reply<(CaseRecord, bool)>, ServiceError> {
        let keys = [CaseKey::new(source, id.clone())];
        let reply = self
            .change(Self::intake_scope(&keys, idem), |records, now| {
                if let Some(r) = self.replay(idem)? {
                    return Ok((vec![Commit::default()], Reply::Replayed(r)));
                }
                let existing = records.into_iter().next().flatten();
                let (created_at, note) = existing.as_ref().map_or((now, None), |r| {
                    (r.case.created_at, r.case.latest_note.clone())
                });
                let case = input.clone().into_case(
                    id.clone(),
                    source,
                    &self.defaults,
                    created_at,
                    note,
                )?;
                let created = existing.is_none();
                let before = existing.as_ref().map(|r| r.case.status);
                let before_len = existing.as_ref().map_or(0, |r| r.messages.len());
                let planned = self.engine.load().upsert(existing, case, now);
                if let Some(r) = &planned.record {
                    report_render_failures(&keys[0], before_len, r);
                }
                let (commit, record) = Self::commit_planned(planned, created, idem, respond, now)?;
                Ok((vec![commit], Reply::Done((record, created, before))))
            })
            .await?;
        Ok(match reply {
            Reply::Replayed(r) => Reply::Replayed(r),
            Reply::Done((record, created, before)) => {
                crate::metrics::case_status(before, Some(record.case.status));
                tracing::info!(case = %keys[0], created, status = record.case.status.as_str(), "case stored");
                Reply::Done((record, created))
            }
        })
    }

    /// `POST /v1/cases/{id}/events`.
    pub async fn post_event(
        &self,
        source: &str,
        id: CaseId,
        input: EventInput,
        idem: Option<&Idempotency>,
        respond: Respond<'_>,
    ) -> Result<Reply<CaseRecord>, ServiceError> {
        let keys = [CaseKey::new(source, id)];
        let reply = self
            .change(Self::intake_scope(&keys, idem), |records, now| {
                if let Some(r) = self.replay(idem)? {
                    return Ok((vec![Commit::default()], Reply::Replayed(r)));
                }
                let event = input.clone().validate()?;
                let record = records
                    .into_iter()
                    .next()
                    .flatten()
                    .ok_or(ServiceError::NotFound)?;
                let kind = event.kind();
                let before = record.case.status;
                let before_len = record.messages.len();
                let planned = self.engine.load().event(record, event, now);
                if let Some(r) = &planned.record {
                    report_render_failures(&keys[0], before_len, r);
                }
                let (commit, record) = Self::commit_planned(planned, false, idem, respond, now)?;
                Ok((vec![commit], Reply::Done((record, kind, before))))
            })
            .await?;
        Ok(match reply {
            Reply::Replayed(r) => Reply::Replayed(r),
            Reply::Done((record, kind, before)) => {
                crate::metrics::case_status(Some(before), Some(record.case.status));
                tracing::info!(case = %keys[0], event = kind, "event applied");
                Reply::Done(record)
            }
        })
    }

    /// Every case covered by a pending digest in `record`'s history.
    fn digest_peers(&self, record: &CaseRecord) -> Result<Vec<CaseKey>, ServiceError> {
        let mut out = Vec::new();
        for m in &record.messages {
            if m.status == DeliveryStatus::Pending
                && !m.covers.is_empty()
                && let Some(entry) = self.store.outbox_entry(m.id)?
            {
                out.extend(entry.cases().cloned());
            }
        }
        Ok(out)
    }

    pub fn get_case(&self, source: &str, id: CaseId) -> Result<CaseRecord, ServiceError> {
        self.store
            .get(&CaseKey::new(source, id))?
            .ok_or(ServiceError::NotFound)
    }

    /// `DELETE /v1/cases/{id}`: erases the case, its history, its pending
    /// messages and the idempotency records that hold its data. A pending
    /// digest that covers the case is cancelled for every case it covers:
    /// it carries the erased case's details.
    pub async fn delete_case(&self, source: &str, id: CaseId) -> Result<(), ServiceError> {
        let key = CaseKey::new(source, id);
        // The cases that share a pending digest with this one, locked too
        // (read before the lock; the decision reads the outbox again).
        let peers = match self.store.get(&key)? {
            Some(r) => self.digest_peers(&r)?,
            None => return Err(ServiceError::NotFound),
        };
        let mut keys = vec![key.clone()];
        keys.extend(peers.into_iter().filter(|k| *k != key));
        keys.dedup();
        let (status, cancelled) = self
            .change(Scope::intake(&keys), |mut records, now| {
                let record = records[0].take().ok_or(ServiceError::NotFound)?;
                let mut erase = Commit {
                    erase: true,
                    idempotency_remove: record.idempotency_keys.clone(),
                    ..Commit::default()
                };
                let mut digests = Vec::new();
                for m in &record.messages {
                    if m.status == DeliveryStatus::Pending
                        && let Some(entry) = self.store.outbox_entry(m.id)?
                    {
                        erase.outbox_remove.push((entry.id, entry.next_attempt_at));
                        if !m.covers.is_empty() {
                            digests.push(entry.id);
                        }
                    }
                }
                let cancelled = erase.outbox_remove.len();
                let mut commits = vec![erase];
                for r in records.into_iter().skip(1) {
                    commits.push(r.map_or_else(Commit::default, |mut r| {
                        let mut cancelled_at = None;
                        for m in r.messages.iter_mut().filter(|m| digests.contains(&m.id)) {
                            m.status = DeliveryStatus::Cancelled;
                            m.error = Some("digest cancelled: a case it covered was erased".into());
                            cancelled_at = Some(m.due_at);
                        }
                        if let Some(digest_at) = cancelled_at {
                            crate::engine::supersede::owe_update(&mut r, digest_at, now);
                            Commit::record(r)
                        } else {
                            Commit::default()
                        }
                    }));
                }
                Ok((commits, (record.case.status, cancelled)))
            })
            .await?;
        crate::metrics::case_status(Some(status), None);
        tracing::info!(case = %key, cancelled, "case erased");
        Ok(())
    }
}

/// Logs and counts the messages planning added to `record` (after the
/// first `before`) whose template failed to render: they are filed as
/// failed and never reach the outbox, so this is where an operator hears
/// of them.
pub fn report_render_failures(key: &CaseKey, before: usize, record: &CaseRecord) {
    for m in record.messages.iter().skip(before) {
        if m.status == DeliveryStatus::Failed && m.attempts == 0 && m.sent_at.is_none() {
            crate::metrics::render_failure(&m.template);
            tracing::error!(case = %key, msg_id = %m.id, template = %m.template, error = m.error.as_deref().unwrap_or(""), "a message could not be rendered");
        }
    }
}
