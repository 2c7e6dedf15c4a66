//! The write path: what the API asks for, planned and committed durably.
//!
//! Each operation locks the case, reads it, lets `plan` decide, commits the
//! result and the outbox in one transaction, waits for the flush, then
//! wakes the scheduler and the dispatcher. Nothing here sends.

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::domain::{CaseId, CaseInput, Defaults, EventInput, FieldError};
use crate::engine::plan::{Engine, Planned};
use crate::store::{
    CaseKey, CaseRecord, Commit, DeliveryStatus, IdempotentResponse, Store, StoreError, Writer,
};

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

/// Shared handles of the running daemon.
#[derive(Debug, Clone)]
pub struct Service {
    pub store: Store,
    /// Swapped whole on reload; each operation plans with one snapshot.
    pub engine: Arc<ArcSwap<Engine>>,
    pub defaults: Defaults,
    pub wake_scheduler: Arc<Notify>,
    pub wake_dispatcher: Arc<Notify>,
    /// One customer's updates due within this window go out as a digest.
    pub digest_window: std::time::Duration,
}

/// Builds the stored response for an idempotent request from its result.
pub type Respond<'a> = &'a (dyn Fn(&CaseRecord, bool) -> (u16, serde_json::Value) + Sync);

impl Service {
    pub fn new(store: Store, engine: Arc<Engine>, defaults: Defaults) -> Self {
        Self {
            store,
            engine: Arc::new(ArcSwap::new(engine)),
            defaults,
            wake_scheduler: Arc::new(Notify::new()),
            wake_dispatcher: Arc::new(Notify::new()),
            digest_window: std::time::Duration::ZERO,
        }
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

    async fn apply(
        &self,
        key: &CaseKey,
        old_due: Option<DateTime<Utc>>,
        planned: Planned,
        created: bool,
        idem: Option<&Idempotency>,
        respond: Respond<'_>,
    ) -> Result<CaseRecord, ServiceError> {
        let Some(mut record) = planned.record else {
            return Err(ServiceError::NotFound);
        };
        let now = record.updated_at;
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
            old_due,
            outbox_put: planned.outbox,
            idempotency,
            ..Commit::default()
        };
        self.store.commit(key, &commit)?;
        self.store.flush().await?;
        if !commit.outbox_put.is_empty() {
            self.wake_dispatcher.notify_one();
        }
        self.wake_scheduler.notify_one();
        Ok(record)
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
        self.store.room(Writer::Intake)?;
        let key = CaseKey::new(source, id.clone());
        let _guard = self.store.lock(&key).await;
        if let Some(r) = self.replay(idem)? {
            return Ok(Reply::Replayed(r));
        }
        let now = Utc::now();
        let existing = self.store.get(&key)?;
        let (created_at, note) = existing.as_ref().map_or((now, None), |r| {
            (r.case.created_at, r.case.latest_note.clone())
        });
        let case = input.into_case(id, source, &self.defaults, created_at, note)?;
        let created = existing.is_none();
        let old_due = existing.as_ref().and_then(|r| r.schedule.due_at);
        let before = existing.as_ref().map(|r| r.case.status);
        let planned = self.engine.load().upsert(existing, case, now);
        let record = self
            .apply(&key, old_due, planned, created, idem, respond)
            .await?;
        crate::metrics::case_status(before, Some(record.case.status));
        tracing::info!(case = %key, created, status = record.case.status.as_str(), "case stored");
        Ok(Reply::Done((record, created)))
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
        self.store.room(Writer::Intake)?;
        let key = CaseKey::new(source, id);
        let _guard = self.store.lock(&key).await;
        if let Some(r) = self.replay(idem)? {
            return Ok(Reply::Replayed(r));
        }
        let event = input.validate()?;
        let record = self.store.get(&key)?.ok_or(ServiceError::NotFound)?;
        let now = Utc::now();
        let old_due = record.schedule.due_at;
        let kind = event.kind();
        let before = Some(record.case.status);
        let planned = self.engine.load().event(record, event, now);
        let record = self
            .apply(&key, old_due, planned, false, idem, respond)
            .await?;
        crate::metrics::case_status(before, Some(record.case.status));
        tracing::info!(case = %key, event = kind, "event applied");
        Ok(Reply::Done(record))
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
        // The cases that share a pending digest with this one, locked too.
        let peers = match self.store.get(&key)? {
            Some(r) => self.digest_peers(&r)?,
            None => return Err(ServiceError::NotFound),
        };
        let _guards = self
            .store
            .lock_many(std::iter::once(&key).chain(peers.iter()))
            .await;
        let record = self.store.get(&key)?.ok_or(ServiceError::NotFound)?;
        let mut outbox_remove = Vec::new();
        let mut digests = Vec::new();
        for m in &record.messages {
            if m.status == DeliveryStatus::Pending
                && let Some(entry) = self.store.outbox_entry(m.id)?
            {
                outbox_remove.push((entry.id, entry.next_attempt_at));
                if !m.covers.is_empty() {
                    digests.push(entry.id);
                }
            }
        }
        let cancelled = outbox_remove.len();
        let mut others = Vec::new();
        for k in peers.iter().filter(|k| **k != key) {
            let Some(mut r) = self.store.get(k)? else {
                continue;
            };
            let mut touched = false;
            for m in r.messages.iter_mut().filter(|m| digests.contains(&m.id)) {
                m.status = DeliveryStatus::Cancelled;
                m.error = Some("digest cancelled: a case it covered was erased".into());
                touched = true;
            }
            if touched {
                let old_due = r.schedule.due_at;
                others.push((
                    k.clone(),
                    Commit {
                        record: Some(r),
                        old_due,
                        ..Commit::default()
                    },
                ));
            }
        }
        let erase = Commit {
            record: None,
            erase: true,
            old_due: record.schedule.due_at,
            outbox_remove,
            idempotency_remove: record.idempotency_keys.clone(),
            ..Commit::default()
        };
        let mut changes: Vec<(&CaseKey, &Commit)> = vec![(&key, &erase)];
        changes.extend(others.iter().map(|(k, c)| (k, c)));
        self.store.commit_many(&changes)?;
        self.store.flush().await?;
        crate::metrics::case_status(Some(record.case.status), None);
        tracing::info!(case = %key, cancelled, "case erased");
        Ok(())
    }
}
