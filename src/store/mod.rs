//! The storage interface: every operation the daemon needs of durable
//! state, as one trait (`Storage`), and its sled implementation
//! (`SledStore`). The conformance suite (`tests/store_conformance.rs`)
//! is written against the trait, so a second backend passes the same
//! tests by adding one line there.
//!
//! What the interface promises:
//! - `commit_many` applies changes to one or several cases atomically: the
//!   record, its schedule index entry (moved by the store itself, from the
//!   stored record's due instant to the new one), the outbox entries it
//!   creates or removes, and the idempotency records it holds.
//! - `flush` returns once everything committed before it is durable.
//!   `GroupCommit` makes the durable changes of concurrent writers one
//!   transaction and one flush.
//! - Erasure destroys what the store keeps of a case, and the keys that
//!   sealed its values once the erasure is durable.
//!
//! Callers serialise their changes to a case themselves (the service's
//! lock stripes); the store does not lock cases.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    Case, CaseKey, CaseRecord, Channel, Contact, DeliveredMark, IdempotentResponse, OptOut,
    OptOutVia, OutboxEntry, Status,
};

mod codec;
mod group;
mod postgres;
mod sealing;
mod sled;

pub use self::group::GroupCommit;
pub use self::postgres::{LoadError, PgStore, PgStoreConfig, migrate as migrate_postgres};
pub use self::sealing::SealError;
pub use self::sled::{BackupError, BackupSummary, SledStore, verify_backup};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("storage: corrupt record under {key}: {err}")]
    Corrupt { key: String, err: serde_json::Error },
    #[error("storage: record version {found} is newer than this binary understands")]
    Version { found: u32 },
    #[error(
        "storage: the disk holding the store is nearly full ({free_mib} MiB free, {reserve_mib} MiB kept in reserve)"
    )]
    Full { free_mib: u64, reserve_mib: u64 },
    #[error("storage: {0}")]
    Seal(#[from] SealError),
    #[error("storage: PostgreSQL: {0}")]
    Postgres(String),
    /// Another replica changed the case since it was read: the change is
    /// decided again on what is stored now (`Service::change` does).
    #[error("storage: the case changed under this change (another replica wrote it)")]
    Conflict,
    /// Another replica took over an outbox entry this one had claimed (its
    /// lease ran out): what this one did with it is not recorded.
    #[error("storage: another replica took this message over (the lease ran out)")]
    Fenced,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A future the storage interface returns (flushes are asynchronous).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One atomic change around a case: what a writer decided, as the store
/// applies it. The store moves the case's schedule index entry itself.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// The case as it should be after the change; `None` leaves it as it
    /// is (unless `erase`).
    pub record: Option<CaseRecord>,
    /// Erase the case (with its index entries): its key is shredded once
    /// the erasure is flushed. With `record` too, the case is stored again
    /// under a fresh key (shred, then store).
    pub erase: bool,
    pub outbox_put: Vec<OutboxEntry>,
    /// Outbox entries to drop: id and the `next_attempt_at` they are indexed under.
    pub outbox_remove: Vec<(Uuid, DateTime<Utc>)>,
    pub idempotency: Option<(String, IdempotentResponse)>,
    pub idempotency_remove: Vec<String>,
    /// A provider's acceptance of a message (see `Storage::mark_delivered`).
    pub delivered: Option<(Uuid, DeliveredMark)>,
    /// When the daemon last sent to a recipient (see `Storage::set_last_sent`).
    pub last_sent: Option<(Contact, DateTime<Utc>)>,
    /// The revision of the stored case this change was decided on (see
    /// `Storage::get_versioned`; 0: no case was stored). A store shared by
    /// replicas refuses the change (`StoreError::Conflict`) if the case
    /// moved on meanwhile; `None` writes regardless.
    pub expect: Option<u64>,
    /// The outbox entry whose attempt this change files (its delivered
    /// mark, its retry, its settlement). A store shared by replicas refuses
    /// the change (`StoreError::Fenced`) when another replica took the
    /// entry over, and does not put back an entry cancelled meanwhile.
    pub settles: Option<Uuid>,
}

impl Commit {
    /// Stores `record` with a resend a late failure planned (its history
    /// entry, and its outbox entry when it rendered); returns the commit and
    /// the resend's channel.
    pub fn record_with_resend(
        mut record: CaseRecord,
        resend: Option<(crate::domain::MessageRecord, Option<OutboxEntry>)>,
    ) -> (Self, Option<crate::domain::Channel>) {
        let mut commit = Self::default();
        let channel = resend.map(|(msg, entry)| {
            let channel = msg.channel;
            record.messages.push(msg);
            commit.outbox_put.extend(entry);
            channel
        });
        commit.record = Some(record);
        (commit, channel)
    }

    /// Stores `record` as it is now.
    pub fn record(record: CaseRecord) -> Self {
        Self {
            record: Some(record),
            ..Self::default()
        }
    }

    /// Whether the change writes anything at all.
    pub fn is_empty(&self) -> bool {
        self.record.is_none()
            && !self.erase
            && self.outbox_put.is_empty()
            && self.outbox_remove.is_empty()
            && self.idempotency.is_none()
            && self.idempotency_remove.is_empty()
            && self.delivered.is_none()
            && self.last_sent.is_none()
    }
}

/// Who asks for room on the disk: intake stops first, so the writes that
/// record sends and opt-outs always find some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// New cases and events from ticket systems: the whole reserve.
    Intake,
    /// Planning and delivery records, opt-outs: a quarter of it.
    Internal,
}

/// Logs a full-disk refusal, at most once a minute.
pub fn warn_full(err: &StoreError) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(error = %err, "refusing writes until space is freed on the store's disk");
    }
}

/// A case as stored (if it is) and its revision.
pub type Versioned = (Option<CaseRecord>, u64);

/// Due cases claimed (each with the instant its index entry holds) and
/// when to look again.
pub type DueCases = (Vec<(DateTime<Utc>, CaseKey)>, Option<DateTime<Utc>>);

/// Everything the daemon keeps durably.
pub trait Storage: std::fmt::Debug + Send + Sync {
    // Cases.

    /// One case as stored.
    fn get(&self, key: &CaseKey) -> Result<Option<CaseRecord>>;
    /// One case as stored, with its revision (0 when there is none): a
    /// commit naming it in `Commit::expect` lands only on that revision.
    /// A store only one daemon writes (sled) has no revisions and says 0.
    fn get_versioned(&self, key: &CaseKey) -> Result<(Option<CaseRecord>, u64)> {
        Ok((self.get(key)?, 0))
    }
    /// As `get_versioned`, awaited rather than blocking a thread: for a
    /// store whose reads wait on the network. `None`: the store reads at
    /// once (sled), and the caller calls `get_versioned`.
    fn get_versioned_async<'a>(
        &'a self,
        key: &'a CaseKey,
    ) -> Option<BoxFuture<'a, Result<Versioned>>> {
        let _ = key;
        None
    }
    /// Applies changes to several cases in one transaction.
    fn commit_many(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()>;
    /// Applies one change atomically.
    fn commit(&self, key: &CaseKey, commit: &Commit) -> Result<()> {
        self.commit_many(&[(key, commit)])
    }
    /// Waits until everything committed so far is durable.
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    /// How many `commit_many` calls the group commit may have under way
    /// at once: 1 for a store whose commits run one at a time whatever
    /// the callers (sled's transactions share one lock), more for a
    /// database server, whose transactions run side by side.
    fn parallel_commits(&self) -> usize {
        1
    }
    /// Applies a small change at once, in a transaction of its own,
    /// awaited rather than on a blocking thread: for a store that keeps
    /// the change safe from this process's crash when it returns (a
    /// database server; on PostgreSQL it reaches disk shortly after, so
    /// only a change whose loss in the server's own crash is harmless
    /// belongs here: a delivered mark, whose loss means a resend). `None`:
    /// the store shares its flushes, and the caller goes through the group
    /// commit.
    fn commit_now<'a>(
        &'a self,
        changes: &'a [(&'a CaseKey, &'a Commit)],
    ) -> Option<BoxFuture<'a, Result<()>>> {
        let _ = changes;
        None
    }
    /// Refuses a write when the disk is nearly full (`StoreError::Full`).
    fn room(&self, writer: Writer) -> Result<()>;
    /// Every stored case, in key order.
    fn scan_cases(&self) -> Box<dyn Iterator<Item = Result<CaseRecord>> + Send + '_>;
    /// The status of every stored case (cheaper than `scan_cases`).
    fn scan_case_statuses(&self) -> Box<dyn Iterator<Item = Result<Status>> + Send + '_>;

    // The schedule index.

    /// Calls `wake` whenever work may have fallen due that another process
    /// sharing the store committed (a replica's new schedule or outbox
    /// entry). A store nobody else writes has nothing to report.
    fn watch(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }
    /// The earliest scheduled case, if any.
    fn next_due_case(&self) -> Result<Option<(DateTime<Utc>, CaseKey)>>;
    /// The cases due at `now` this daemon may take (at most `limit`, none
    /// of `busy`, the ones it is planning already), earliest first; a store
    /// shared by replicas leases each to this one for a while, so that the
    /// others pass them by until its record is written again. Also when to
    /// look next: `now` when more are due than were taken, else the
    /// instant of the next entry, if any.
    fn claim_due_cases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<CaseKey>,
    ) -> Result<DueCases>;
    /// Drops one schedule index entry (one that outlived its case).
    fn remove_schedule_entry(&self, at: DateTime<Utc>, key: &CaseKey) -> Result<()>;

    // The outbox.

    /// Entries due at `now`, earliest first, at most `limit`, skipping
    /// `busy` ones; and when the next one not taken is due. A store shared
    /// by replicas leases what it returns to this daemon (others skip it
    /// until the lease runs out) under a fencing number that increases on
    /// every claim; a later commit about the entry from a replica whose
    /// lease was taken over is refused (`StoreError::Fenced`).
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<Uuid>,
    ) -> Result<(Vec<OutboxEntry>, Option<DateTime<Utc>>)>;
    fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>>;
    /// Messages waiting in the outbox, as of one instant: an entry a commit
    /// replaces (a retry moved later, an update superseded) is counted
    /// once, whenever the count is read.
    fn outbox_len(&self) -> usize;
    /// When the earliest outbox entry is (or was) due.
    fn outbox_head(&self) -> Result<Option<DateTime<Utc>>>;

    // Delivered marks: a provider's acceptance, recorded the moment it
    // arrives and durable when this returns.

    fn mark_delivered(
        &self,
        id: Uuid,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> BoxFuture<'_, Result<()>>;
    fn delivered_mark(&self, id: Uuid) -> Result<Option<DeliveredMark>>;

    // Contacts: recipients keyed under the store's salt, never in clear.

    fn contact(&self, channel: Channel, address: &str) -> Contact;
    /// The contacts of a case's customer.
    fn contacts_of(&self, case: &Case) -> Vec<Contact>;
    /// The cases whose customer is `contact`.
    fn cases_of(&self, contact: Contact) -> Result<Vec<CaseKey>>;
    fn contact_salt(&self) -> [u8; 32];
    fn generated_unsubscribe_key(&self) -> [u8; 32];

    // Consent and pacing.

    fn opt_out(&self, contact: Contact, via: OptOutVia, now: DateTime<Utc>) -> Result<()>;
    /// Lifts an opt-out; whether there was one.
    fn opt_in(&self, contact: Contact) -> Result<bool>;
    fn opted_out(&self, contact: Contact) -> Result<Option<OptOut>>;
    /// Takes the right to send to `contact` now if the last send was at
    /// least `gap` ago; otherwise the first instant it may.
    fn claim_send(
        &self,
        contact: Contact,
        gap: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>>;
    /// Moves the contact's last send on to `at`; never back.
    fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()>;
    /// Records that `contact` wrote to us at `at` (a WhatsApp message opens
    /// the 24-hour window); an earlier instant never replaces a later one.
    fn note_inbound(&self, contact: Contact, at: DateTime<Utc>) -> Result<()>;
    /// When `contact` last wrote to us, if ever.
    fn last_inbound(&self, contact: Contact) -> Result<Option<DateTime<Utc>>>;

    // Idempotency.

    fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>>;
    /// Drops records older than `before`, and any whose case was erased;
    /// how many went. (A replay after a day is no longer promised.)
    fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<usize>;

    // Backup.

    /// Writes a consistent copy of everything to `out`. The caller keeps
    /// writers out for its duration.
    fn backup<'a>(
        &'a self,
        out: &'a mut (dyn std::io::Write + Send),
    ) -> BoxFuture<'a, std::result::Result<BackupSummary, BackupError>>;
}
