//! Durable state in sled: cases with their message history, the schedule
//! index, the outbox, idempotency records.
//!
//! This is the only module that knows sled. Its interface is narrow on
//! purpose (get a case, commit a change atomically, walk what is due,
//! flush) so another backend can stand behind it. Every change that
//! advances a case's schedule writes the outbox in the same transaction.
//!
//! Trees:
//! - `cases`: `source \0 id` → `CaseRecord` (JSON, versioned)
//! - `schedule`: `due_ms (BE) ++ case key` → `()`, ordered by due instant
//! - `outbox`: message id → `OutboxEntry`
//! - `outbox_due`: `next_attempt_ms (BE) ++ message id` → `()`
//! - `idempotency`: `sha256(source, key)` → `IdempotentResponse`
//! - `recipients`: `contact ++ case key` → `()`, the cases of one recipient
//! - `optouts`: `contact` → `OptOut`; kept when cases are erased
//! - `contacts`: `contact` → when we last sent to it (ms, BE)
//! - `delivered`: message id → `DeliveredMark`, written and flushed the
//!   moment a provider accepts a message, before the (slower) history
//!   update; a restart that finds one finishes the record instead of
//!   sending again
//! - `meta`: generated keys (the contact salt, the unsubscribe key)
//!
//! A `contact` is an HMAC of the channel and the normalised address under a
//! salt generated once per store: opt-outs and indexes never hold an email
//! address or phone number in clear.
//!
//! The values of `cases`, `outbox` and `idempotency` are sealed under their
//! case's key, kept outside sled (`seal`): erasing a case destroys its key,
//! so the copies sled's log keeps are unreadable.

use std::hash::{Hash, Hasher};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use uuid::Uuid;

use hmac::{Hmac, Mac};

use crate::domain::{Case, CaseId, Channel};
use crate::engine::render::EmailContent;

mod ops;
mod seal;
pub use ops::{BackupError, BackupSummary, verify_backup};
pub use seal::SealError;
use seal::{KEY_LEN, KeyId, Keyring};

pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Identifies a case across sources: a token only ever sees its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CaseKey {
    pub source: String,
    pub id: CaseId,
}

impl CaseKey {
    pub fn new(source: &str, id: CaseId) -> Self {
        Self {
            source: source.to_owned(),
            id,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.source.len() + 1 + self.id.as_ref().len());
        k.extend_from_slice(self.source.as_bytes());
        k.push(0);
        k.extend_from_slice(self.id.as_ref().as_bytes());
        k
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let nul = b.iter().position(|x| *x == 0)?;
        let source = std::str::from_utf8(&b[..nul]).ok()?;
        let id = std::str::from_utf8(&b[nul + 1..]).ok()?.parse().ok()?;
        Some(Self::new(source, id))
    }
}

impl std::fmt::Display for CaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.id)
    }
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Failed,
    Cancelled,
}

/// One message in a case's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: Uuid,
    /// What caused it: `created`, `progress`, `resolved`, `note`, `status`, `escalation`.
    pub kind: String,
    pub template: String,
    pub rule: Option<String>,
    pub channel: Channel,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub promised_next_update_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Internal escalations go to an operator, not to the customer.
    #[serde(default)]
    pub internal: bool,
    /// The messages of one update (one per channel, and fallbacks) share it.
    #[serde(default)]
    pub update: Option<Uuid>,
    /// The failed message of the same update this one replaces.
    #[serde(default)]
    pub fallback_for: Option<Uuid>,
    /// For a digest: the ids of all the cases it covered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<String>,
    /// The provider's id for the message (Twilio's message SID).
    #[serde(default)]
    pub provider_id: Option<String>,
    /// The provider's last delivery report (queued, sent, delivered, …).
    #[serde(default)]
    pub provider_status: Option<String>,
}

/// Schedule bookkeeping for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The last customer-facing message or public agent reply.
    pub last_contact_at: DateTime<Utc>,
    /// When the next progress update goes out, if one is planned.
    pub next_update_at: Option<DateTime<Utc>>,
    /// When the scheduler looks at the case next (the index key).
    pub due_at: Option<DateTime<Utc>>,
    /// The rule that matched last, and how many updates it sent in a row.
    pub rule: Option<String>,
    pub rule_updates: u32,
    pub escalated: bool,
    pub resolution_sent: bool,
}

/// A case with everything tidings keeps about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub v: u32,
    pub case: Case,
    pub updated_at: DateTime<Utc>,
    pub schedule: ScheduleState,
    pub messages: Vec<MessageRecord>,
    /// Idempotency records that hold this case's data, erased with it.
    #[serde(default)]
    pub idempotency_keys: Vec<String>,
}

impl CaseRecord {
    pub fn key(&self) -> CaseKey {
        CaseKey::new(&self.case.source, self.case.id.clone())
    }

    pub fn message_mut(&mut self, id: Uuid) -> Option<&mut MessageRecord> {
        self.messages.iter_mut().find(|m| m.id == id)
    }
}

/// A message waiting to be sent, already rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub v: u32,
    pub id: Uuid,
    pub case: CaseKey,
    pub channel: Channel,
    pub to_name: String,
    pub to: String,
    pub content: EmailContent,
    /// Stable across retries and restarts, so a resend is recognisable.
    pub message_id: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// A digest also covers these cases; their histories hold the message too.
    #[serde(default)]
    pub also: Vec<CaseKey>,
    /// The recipient's zone, for quiet hours at send time.
    #[serde(default)]
    pub tz: Option<chrono_tz::Tz>,
    /// What the message was made from, so a fallback can render it again
    /// for another channel.
    #[serde(default)]
    pub update: Option<Uuid>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub promised: Option<DateTime<Utc>>,
    /// Internal messages (escalations) skip consent, quiet hours and gaps.
    #[serde(default)]
    pub internal: bool,
    /// The recipient's one-click opt-out link (email).
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
}

impl OutboxEntry {
    /// Every case this message belongs to.
    pub fn cases(&self) -> impl Iterator<Item = &CaseKey> {
        std::iter::once(&self.case).chain(self.also.iter())
    }
}

/// A provider accepted the message (see the `delivered` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMark {
    pub at: DateTime<Utc>,
    pub provider_id: Option<String>,
}

/// A recipient who asked not to hear from us on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub at: DateTime<Utc>,
    /// `sms_stop`, `unsubscribe_link`, `provider` (e.g. Twilio 21610).
    pub via: String,
}

/// A recipient on one channel, as the store knows it: keyed, not in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contact(pub [u8; 32]);

/// A stored answer for a retried request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub request_sha256: String,
    pub status: u16,
    pub body: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// One atomic change around a case.
#[derive(Debug, Default)]
pub struct Commit {
    /// The case as it should be after the change; `None` leaves it as it
    /// is (unless `erase`).
    pub record: Option<CaseRecord>,
    /// Erase the case (with its index entries).
    pub erase: bool,
    /// The schedule instant the stored record had, to remove its index key.
    pub old_due: Option<DateTime<Utc>>,
    pub outbox_put: Vec<OutboxEntry>,
    /// Outbox entries to drop: id and the `next_attempt_at` they are indexed under.
    pub outbox_remove: Vec<(Uuid, DateTime<Utc>)>,
    pub idempotency: Option<(String, IdempotentResponse)>,
    pub idempotency_remove: Vec<String>,
}

fn ms_key(t: DateTime<Utc>, suffix: &[u8]) -> Vec<u8> {
    // Offset so instants before 1970 still sort as unsigned big-endian.
    let ms = (t.timestamp_millis() as i128 - i128::from(i64::MIN)) as u64;
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

fn ms_of(key: &[u8]) -> Option<DateTime<Utc>> {
    let raw = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let ms = (i128::from(raw) + i128::from(i64::MIN)) as i64;
    DateTime::from_timestamp_millis(ms)
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Versioned {
        #[serde(default)]
        v: u32,
    }
    if let Ok(Versioned { v }) = serde_json::from_slice::<Versioned>(bytes)
        && v > RECORD_VERSION
    {
        return Err(StoreError::Version { found: v });
    }
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        err,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| unreachable!("records always serialize: {e}"))
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    cases: sled::Tree,
    schedule: sled::Tree,
    outbox: sled::Tree,
    outbox_due: sled::Tree,
    idempotency: sled::Tree,
    recipients: sled::Tree,
    delivered: sled::Tree,
    optouts: sled::Tree,
    contacts: sled::Tree,
    salt: [u8; 32],
    unsubscribe_key: [u8; 32],
    locks: std::sync::Arc<[tokio::sync::Mutex<()>]>,
    dir: std::path::PathBuf,
    /// Free space kept on the store's disk (see `Store::room`).
    reserve: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The disk's free space as last measured, and when (ms since the
    /// epoch): `room` asks the file system at most every `FREE_SPACE_TTL`.
    free_space: std::sync::Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicI64)>,
    keyring: std::sync::Arc<Keyring>,
    flushes: std::sync::Arc<Flushes>,
}

/// Group commit: one flush at a time (sled 0.34's `flush_async` can
/// deadlock when called concurrently, spacejam/sled#1308), and a caller
/// whose writes a flush already covered does not wait for another.
#[derive(Debug, Default)]
struct Flushes {
    /// Taken by each caller after its writes.
    requested: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is durable.
    done: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
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
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let now = Utc::now().timestamp();
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now - last >= 60
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(error = %err, "refusing writes until space is freed on the store's disk");
    }
}

/// How long a measurement of the disk's free space stands.
const FREE_SPACE_TTL_MS: i64 = 250;

/// 64 MiB: sled must never meet a full disk (it cannot recover from one).
pub const DEFAULT_RESERVE: u64 = 64 * 1024 * 1024;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

const LOCK_STRIPES: usize = 64;

fn stripe_of(key: &CaseKey) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % LOCK_STRIPES
}

/// A recipient on `channel`, keyed under `salt`: an HMAC of the channel and
/// the normalised address.
pub fn contact_of(salt: &[u8; 32], channel: Channel, address: &str) -> Contact {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(salt)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(channel.as_str().as_bytes());
    mac.update(b":");
    mac.update(address.trim().to_lowercase().as_bytes());
    Contact(mac.finalize().into_bytes().into())
}

/// A random key made on first use and kept in the `meta` tree.
fn generated_key(meta: &sled::Tree, name: &str) -> Result<[u8; 32]> {
    if let Some(v) = meta.get(name)?
        && let Ok(k) = <[u8; 32]>::try_from(v.as_ref())
    {
        return Ok(k);
    }
    let fresh: [u8; 32] = rand::random();
    // Another opener may have raced us: whichever key landed first wins.
    let _ = meta.compare_and_swap(name, None as Option<&[u8]>, Some(&fresh[..]))?;
    let v = meta.get(name)?.ok_or_else(|| {
        StoreError::Sled(sled::Error::Unsupported(format!(
            "meta key {name} vanished"
        )))
    })?;
    <[u8; 32]>::try_from(v.as_ref()).map_err(|_| {
        StoreError::Sled(sled::Error::Unsupported(format!(
            "meta key {name} is not 32 bytes"
        )))
    })
}

impl Store {
    /// Opens (or creates) the database in `dir`. One process per database.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(500))
            .open()?;
        let meta = db.open_tree("meta")?;
        let salt = generated_key(&meta, "contact_salt")?;
        let unsubscribe_key = generated_key(&meta, "unsubscribe_key")?;
        let keyring = Keyring::open(dir)?;
        Ok(Self {
            keyring: std::sync::Arc::new(keyring),
            flushes: std::sync::Arc::default(),
            recipients: db.open_tree("recipients")?,
            delivered: db.open_tree("delivered")?,
            optouts: db.open_tree("optouts")?,
            contacts: db.open_tree("contacts")?,
            salt,
            unsubscribe_key,
            cases: db.open_tree("cases")?,
            schedule: db.open_tree("schedule")?,
            outbox: db.open_tree("outbox")?,
            outbox_due: db.open_tree("outbox_due")?,
            idempotency: db.open_tree("idempotency")?,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            dir: dir.to_owned(),
            reserve: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_RESERVE)),
            free_space: std::sync::Arc::default(),
            db,
        })
    }

    /// Destroys the keys a crash left behind (made for a case whose first
    /// write never landed, or retired by an erasure whose flush did not
    /// finish): those the ring held at open that no stored value names.
    /// One pass over the sealed trees, so the daemon runs it in the
    /// background after start-up; returns how many went.
    pub fn sweep_keys(&self) -> Result<usize> {
        let mut live = std::collections::HashSet::new();
        for tree in [&self.cases, &self.outbox, &self.idempotency] {
            for item in tree.iter() {
                let (_, v) = item?;
                live.extend(seal::key_id(&v));
            }
        }
        Ok(self.keyring.keep_only(&live)?)
    }

    /// Sets the free space to keep on the store's disk.
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `writer` may write: sled cannot recover from a full disk (a
    /// write that meets one can lose earlier data), so writes stop while
    /// free space is below the reserve: intake at the reserve, planning and
    /// delivery records at a quarter of it.
    pub fn room(&self, writer: Writer) -> Result<()> {
        let reserve = self.reserve.load(std::sync::atomic::Ordering::Relaxed);
        let need = match writer {
            Writer::Intake => reserve,
            Writer::Internal => reserve / 4,
        };
        let Some(free) = self.free_space(reserve) else {
            return Ok(()); // cannot tell: let the write try
        };
        if free >= need {
            return Ok(());
        }
        Err(StoreError::Full {
            free_mib: free / (1024 * 1024),
            reserve_mib: reserve / (1024 * 1024),
        })
    }

    /// Free space on the store's disk. Every request, scheduling step and
    /// dispatch round asks: while the disk has plenty (twice the reserve),
    /// a measurement stands for `FREE_SPACE_TTL_MS`, far less than it
    /// takes to write the reserve; near it, each call measures, so refusal
    /// and recovery are immediate.
    fn free_space(&self, reserve: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let (free, at) = &*self.free_space;
        let now = Utc::now().timestamp_millis();
        let last = free.load(Relaxed);
        if now - at.load(Relaxed) < FREE_SPACE_TTL_MS && last >= reserve.saturating_mul(2) {
            return Some(last);
        }
        let measured = fs4::available_space(&self.dir).ok()?;
        free.store(measured, Relaxed);
        at.store(now, Relaxed);
        Some(measured)
    }

    /// The recipient `address` on `channel`, keyed under this store's salt.
    pub fn contact(&self, channel: Channel, address: &str) -> Contact {
        contact_of(&self.salt, channel, address)
    }

    /// The salt contacts are keyed under.
    pub fn contact_salt(&self) -> [u8; 32] {
        self.salt
    }

    /// The key for unsubscribe links when the config sets none.
    pub fn generated_unsubscribe_key(&self) -> [u8; 32] {
        self.unsubscribe_key
    }

    pub fn opt_out(&self, contact: Contact, via: &str, now: DateTime<Utc>) -> Result<()> {
        let v = encode(&OptOut {
            at: now,
            via: via.to_owned(),
        });
        self.optouts.insert(contact.0, v)?;
        Ok(())
    }

    /// Removes an opt-out; true if there was one.
    pub fn opt_in(&self, contact: Contact) -> Result<bool> {
        Ok(self.optouts.remove(contact.0)?.is_some())
    }

    pub fn opted_out(&self, contact: Contact) -> Result<Option<OptOut>> {
        self.optouts
            .get(contact.0)?
            .map(|v| decode(&contact.0, &v))
            .transpose()
    }

    /// Records, durably, that a provider accepted message `id`. The mark
    /// goes when the outbox entry does.
    pub async fn mark_delivered(
        &self,
        id: Uuid,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.delivered
            .insert(id.as_bytes(), encode(&DeliveredMark { at, provider_id }))?;
        self.flush().await
    }

    pub fn delivered_mark(&self, id: Uuid) -> Result<Option<DeliveredMark>> {
        self.delivered
            .get(id.as_bytes())?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    /// Claims the next send to `contact` when the last one is at least
    /// `gap` old (the claim counts as the last send, so messages racing for
    /// one recipient go one per gap); otherwise when it may go.
    pub fn claim_send(
        &self,
        contact: Contact,
        gap: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        loop {
            let current = self.contacts.get(contact.0)?;
            if let Some(last) = current.as_deref().and_then(ms_of) {
                let next = last + gap;
                if next > now {
                    return Ok(Err(next));
                }
            }
            let claimed =
                self.contacts
                    .compare_and_swap(contact.0, current, Some(ms_key(now, &[])))?;
            if claimed.is_ok() {
                return Ok(Ok(()));
            }
        }
    }

    pub fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        self.contacts.insert(contact.0, ms_key(at, &[]))?;
        Ok(())
    }

    /// The cases (other than erased ones) that have `contact` as a recipient.
    pub fn cases_of(&self, contact: Contact) -> Result<Vec<CaseKey>> {
        let mut out = Vec::new();
        for item in self.recipients.scan_prefix(contact.0) {
            let (k, _) = item?;
            if let Some(key) = k.get(32..).and_then(CaseKey::from_bytes) {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// The recipients a case record is indexed under.
    pub fn contacts_of(&self, case: &Case) -> Vec<Contact> {
        let c = &case.customer;
        c.email
            .iter()
            .map(|e| self.contact(Channel::Email, e.as_ref()))
            .chain(
                c.phone
                    .iter()
                    .map(|p| self.contact(Channel::Sms, p.as_ref())),
            )
            .collect()
    }

    /// Serialises changes to one case (reads, plans and commits happen
    /// under this lock; sends do not).
    pub async fn lock(&self, key: &CaseKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks[stripe_of(key)].lock().await
    }

    /// Locks several cases at once, in a fixed order so two callers can
    /// never wait on each other.
    pub async fn lock_many<'a>(
        &'a self,
        keys: impl IntoIterator<Item = &CaseKey>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(stripe_of).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.locks[s].lock().await);
        }
        guards
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let f = &self.flushes;
        let ticket = f.requested.fetch_add(1, SeqCst) + 1;
        let _running = f.running.lock().await;
        if f.done.load(SeqCst) >= ticket {
            // A flush that began after our writes has finished.
            return Ok(());
        }
        // This flush covers every ticket taken so far. Keys retired before
        // it belong to cases whose erasure it makes durable: only then may
        // they go.
        let covers = f.requested.load(SeqCst);
        let retired = self.keyring.take_retired();
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| sled::Error::ReportableBug(format!("the flush task failed: {e}")));
        if let Err(e) = flushed.and_then(|r| r) {
            self.keyring.retire(retired);
            return Err(e.into());
        }
        f.done.store(covers, SeqCst);
        self.keyring.destroy(&retired)?;
        Ok(())
    }

    /// Decodes a stored value of any tree, opening it if it is sealed.
    fn read<T: for<'de> Deserialize<'de>>(&self, key: &[u8], stored: &[u8]) -> Result<T> {
        let plain = self.keyring.open_value(stored)?;
        decode(key, &plain)
    }

    /// As `read`, but `None` for a value whose case was erased (its key
    /// destroyed) while the value was still on its way out: an outbox
    /// entry in flight, a stored answer.
    fn read_if_live<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Option<T>> {
        match self.read(key, stored) {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Seal(SealError::MissingKey)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn get(&self, key: &CaseKey) -> Result<Option<CaseRecord>> {
        let k = key.bytes();
        self.cases.get(&k)?.map(|v| self.read(&k, &v)).transpose()
    }

    /// Applies a change atomically: the case, its schedule index entry, the
    /// outbox and the idempotency record move together or not at all.
    pub fn commit(&self, key: &CaseKey, commit: &Commit) -> Result<()> {
        self.commit_many(&[(key, commit)])
    }

    /// Applies changes to several cases (a digest) in one transaction.
    pub fn commit_many(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()> {
        struct Prepared {
            case_key: Vec<u8>,
            record: Option<Vec<u8>>,
            erase: bool,
            new_due: Option<DateTime<Utc>>,
            contacts: Vec<Contact>,
            outbox: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
            idem: Option<(Vec<u8>, Vec<u8>)>,
        }
        impl Prepared {
            /// Every value the change writes, sealed under `key`.
            fn seal(&mut self, key: &(KeyId, [u8; KEY_LEN])) {
                if let Some(v) = self.record.as_mut() {
                    *v = Keyring::seal(key, v);
                }
                for o in &mut self.outbox {
                    o.1 = Keyring::seal(key, &o.1);
                }
                if let Some(i) = self.idem.as_mut() {
                    i.1 = Keyring::seal(key, &i.1);
                }
            }
        }
        let mut prepared: Vec<Prepared> = changes
            .iter()
            .map(|(key, commit)| Prepared {
                case_key: key.bytes(),
                record: commit.record.as_ref().map(encode),
                erase: commit.erase,
                new_due: commit.record.as_ref().and_then(|r| r.schedule.due_at),
                contacts: commit
                    .record
                    .as_ref()
                    .map(|r| self.contacts_of(&r.case))
                    .unwrap_or_default(),
                outbox: commit
                    .outbox_put
                    .iter()
                    .map(|e| {
                        (
                            e.id.as_bytes().to_vec(),
                            encode(e),
                            ms_key(e.next_attempt_at, e.id.as_bytes()),
                        )
                    })
                    .collect(),
                idem: commit
                    .idempotency
                    .as_ref()
                    .map(|(k, v)| (idempotency_key_bytes(k), encode(v))),
            })
            .collect();
        // Seal every value under its case's key; a case stored for the
        // first time gets one (synced before sled sees a value using it).
        // Callers hold the cases' locks, so the stored headers are current.
        let mut retire = Vec::new();
        let mut fresh_ids = Vec::new();
        // Each change's case key, as the transaction leaves it.
        let mut case_ids: Vec<Option<KeyId>> = Vec::with_capacity(changes.len());
        for p in &mut prepared {
            let current = self
                .cases
                .get(&p.case_key)?
                .as_deref()
                .and_then(seal::key_id);
            if p.erase {
                retire.extend(current);
            }
            let writes = p.record.is_some() || !p.outbox.is_empty() || p.idem.is_some();
            let key = match current {
                _ if !writes => None,
                Some(id) if !p.erase => {
                    Some((id, self.keyring.key(&id).ok_or(SealError::MissingKey)?))
                }
                _ => {
                    let key = self.keyring.create(1)?.pop();
                    fresh_ids.extend(key.map(|(id, _)| id));
                    key
                }
            };
            case_ids.push(key.map(|(id, _)| id));
            if let Some(key) = key {
                p.seal(&key);
            }
        }
        let own_keys: std::cell::RefCell<Vec<KeyId>> = std::cell::RefCell::default();
        let result = (
            &self.cases,
            &self.schedule,
            &self.outbox,
            &self.outbox_due,
            &self.idempotency,
            &self.recipients,
            &self.delivered,
        )
            .transaction(
                |(cases, schedule, outbox_t, outbox_due, idempotency, recipients, delivered)| {
                    own_keys.borrow_mut().clear();
                    for ((p, (_, commit)), case_id) in prepared.iter().zip(changes).zip(&case_ids) {
                        let case_key = &p.case_key;
                        if let Some(old) = commit.old_due {
                            schedule.remove(ms_key(old, case_key))?;
                        }
                        // The recipient index follows the customer's addresses.
                        if (p.record.is_some() || p.erase)
                            && let Some(old) = cases.get(case_key.as_slice())?
                        {
                            for c in self.stored_contacts(&old) {
                                recipients.remove([&c.0[..], case_key].concat())?;
                            }
                        }
                        match &p.record {
                            None if !p.erase => {}
                            Some(bytes) => {
                                cases.insert(case_key.as_slice(), bytes.as_slice())?;
                                if let Some(due) = p.new_due {
                                    schedule.insert(ms_key(due, case_key), &[][..])?;
                                }
                                for c in &p.contacts {
                                    recipients.insert([&c.0[..], case_key].concat(), &[][..])?;
                                }
                            }
                            None => {
                                cases.remove(case_key.as_slice())?;
                            }
                        }
                        for (id, at) in &commit.outbox_remove {
                            outbox_t.remove(id.as_bytes().as_slice())?;
                            outbox_due.remove(ms_key(*at, id.as_bytes()))?;
                            delivered.remove(id.as_bytes().as_slice())?;
                        }
                        for (id, bytes, due_key) in &p.outbox {
                            outbox_t.insert(id.as_slice(), bytes.as_slice())?;
                            outbox_due.insert(due_key.as_slice(), &[][..])?;
                        }
                        if let Some((k, v)) = &p.idem {
                            idempotency.insert(k.as_slice(), v.as_slice())?;
                        }
                        for k in &commit.idempotency_remove {
                            // A restored answer has a key of its own.
                            let old = idempotency.remove(idempotency_key_bytes(k))?;
                            if let Some(id) = old.as_deref().and_then(seal::key_id)
                                && Some(id) != *case_id
                                && !retire.contains(&id)
                            {
                                own_keys.borrow_mut().push(id);
                            }
                        }
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                },
            );
        match result {
            Ok(()) => {
                self.keyring.retire(retire);
                self.keyring.retire(own_keys.take());
                Ok(())
            }
            Err(TransactionError::Storage(e)) => {
                self.keyring.retire(fresh_ids);
                Err(e.into())
            }
            Err(TransactionError::Abort(())) => unreachable!("the transaction never aborts"),
        }
    }

    /// The contacts of a stored record, read without decoding its history.
    fn stored_contacts(&self, bytes: &[u8]) -> Vec<Contact> {
        #[derive(Deserialize)]
        struct Slim {
            case: SlimCase,
        }
        #[derive(Deserialize)]
        struct SlimCase {
            customer: SlimCustomer,
        }
        #[derive(Deserialize)]
        struct SlimCustomer {
            email: Option<String>,
            phone: Option<String>,
        }
        let Ok(plain) = self.keyring.open_value(bytes) else {
            return Vec::new();
        };
        let Ok(slim) = serde_json::from_slice::<Slim>(&plain) else {
            return Vec::new();
        };
        let c = slim.case.customer;
        c.email
            .iter()
            .map(|e| self.contact(Channel::Email, e))
            .chain(c.phone.iter().map(|p| self.contact(Channel::Sms, p)))
            .collect()
    }

    /// The earliest scheduled case, if any.
    pub fn next_due_case(&self) -> Result<Option<(DateTime<Utc>, CaseKey)>> {
        for item in self.schedule.iter() {
            let (k, _) = item?;
            let (Some(at), Some(key)) = (ms_of(&k), CaseKey::from_bytes(&k[8..])) else {
                // A key we cannot read is dropped rather than blocking the queue.
                self.schedule.remove(&k)?;
                continue;
            };
            return Ok(Some((at, key)));
        }
        Ok(None)
    }

    /// Drops one schedule index entry (one that outlived its case).
    pub fn remove_schedule_entry(&self, at: DateTime<Utc>, key: &CaseKey) -> Result<()> {
        self.schedule.remove(ms_key(at, &key.bytes()))?;
        Ok(())
    }

    /// Outbox entries due at `now`, earliest first, skipping `busy` ones.
    pub fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<Uuid>,
    ) -> Result<(Vec<OutboxEntry>, Option<DateTime<Utc>>)> {
        let mut out = Vec::new();
        for item in self.outbox_due.iter() {
            let (k, _) = item?;
            let Some(at) = ms_of(&k) else { continue };
            let Some(id) = k.get(8..).and_then(|b| Uuid::from_slice(b).ok()) else {
                continue;
            };
            if busy.contains(&id) {
                continue;
            }
            if at > now || out.len() >= limit {
                return Ok((out, Some(at)));
            }
            match self.outbox.get(id.as_bytes())? {
                Some(bytes) => match self.read_if_live(id.as_bytes(), &bytes)? {
                    Some(entry) => out.push(entry),
                    // Its case was erased: nothing is left to send.
                    None => {
                        self.outbox.remove(id.as_bytes())?;
                        self.outbox_due.remove(&k)?;
                    }
                },
                None => {
                    self.outbox_due.remove(&k)?;
                }
            }
        }
        Ok((out, None))
    }

    pub fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>> {
        self.outbox
            .get(id.as_bytes())?
            .map(|b| self.read(id.as_bytes(), &b))
            .transpose()
    }

    /// Messages waiting in the outbox (a walk of the outbox tree, which
    /// holds only unsent messages).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        let k = idempotency_key_bytes(key);
        match self.idempotency.get(&k)? {
            Some(v) => self.read_if_live(&k, &v),
            None => Ok(None),
        }
    }

    /// Drops idempotency records older than `before` that no case refers
    /// to any more; returns how many went.
    pub fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut n = 0;
        for item in self.idempotency.iter() {
            let (k, v) = item?;
            // An answer whose case was erased goes too.
            let old = match self.read_if_live::<IdempotentResponse>(&k, &v) {
                Ok(r) => r.is_none_or(|r| r.at < before),
                Err(_) => false,
            };
            if old {
                self.idempotency.remove(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Idempotency keys are hashed: a client's key may hold anything.
fn idempotency_key_bytes(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_sort_by_time() {
        let a = ms_key(DateTime::from_timestamp(-5, 0).expect("valid"), b"x");
        let b = ms_key(DateTime::from_timestamp(5, 0).expect("valid"), b"a");
        assert!(a < b);
        assert_eq!(ms_of(&b), DateTime::from_timestamp(5, 0));
    }

    #[test]
    fn case_keys_round_trip() {
        let k = CaseKey::new("helpdesk", "C-1".parse().expect("valid"));
        assert_eq!(CaseKey::from_bytes(&k.bytes()), Some(k));
    }

    #[test]
    fn a_commit_without_a_record_leaves_the_case_unless_it_erases() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let key = CaseKey::new("helpdesk", "C-1".parse().expect("valid"));
        store
            .cases
            .insert(key.bytes(), b"{}".as_slice())
            .expect("insert");
        // An outbox-only change (a held-back message) keeps the case.
        store.commit(&key, &Commit::default()).expect("commit");
        assert!(store.cases.get(key.bytes()).expect("get").is_some());
        store
            .commit(
                &key,
                &Commit {
                    erase: true,
                    ..Commit::default()
                },
            )
            .expect("commit");
        assert!(store.cases.get(key.bytes()).expect("get").is_none());
    }

    #[test]
    fn the_sweep_destroys_orphans_from_before_the_open_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let orphan = {
            let store = Store::open(tmp.path()).expect("open");
            // A key whose case write never landed (a crash in between).
            store.keyring.create(1).expect("create")[0].0
        };
        let store = Store::open(tmp.path()).expect("reopen");
        let key = CaseKey::new("helpdesk", "C-1".parse().expect("valid"));
        let commit = Commit {
            idempotency: Some((
                "k".into(),
                IdempotentResponse {
                    request_sha256: String::new(),
                    status: 201,
                    body: serde_json::json!({}),
                    at: Utc::now(),
                },
            )),
            ..Commit::default()
        };
        store.commit(&key, &commit).expect("commit");
        // Made after the open, not yet used by any value.
        let in_flight = store.keyring.create(1).expect("create")[0].0;
        assert_eq!(store.sweep_keys().expect("sweep"), 1);
        assert!(store.keyring.key(&orphan).is_none());
        assert!(store.keyring.key(&in_flight).is_some());
        assert!(store.idempotent_response("k").expect("read").is_some());
    }

    #[tokio::test]
    async fn a_case_is_sealed_under_its_own_key_and_erasure_destroys_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let answer = |body: &str| IdempotentResponse {
            request_sha256: String::new(),
            status: 201,
            body: serde_json::json!({ "email": body }),
            at: Utc::now(),
        };
        let keys: Vec<CaseKey> = ["C-1", "C-2"]
            .iter()
            .map(|id| CaseKey::new("helpdesk", id.parse().expect("valid")))
            .collect();
        for (n, key) in keys.iter().enumerate() {
            let commit = Commit {
                idempotency: Some((format!("k{n}"), answer("canary@example.org"))),
                ..Commit::default()
            };
            store.commit(key, &commit).expect("commit");
        }
        let raw = store
            .idempotency
            .get(idempotency_key_bytes("k0"))
            .expect("get")
            .expect("stored");
        assert!(!raw.windows(7).any(|w| w == b"canary@"), "sealed");
        assert!(store.idempotent_response("k0").expect("read").is_some());

        // Erasing C-1 (its answer goes with it) destroys only its key, and
        // only once the erasure is flushed. A stand-in record under the
        // key makes it C-1's.
        let id0 = seal::key_id(&raw).expect("sealed value names its key");
        store
            .cases
            .insert(keys[0].bytes(), raw.clone())
            .expect("insert");
        let erase = Commit {
            erase: true,
            idempotency_remove: vec!["k0".into()],
            ..Commit::default()
        };
        store.commit(&keys[0], &erase).expect("erase");
        assert!(store.keyring.key(&id0).is_some(), "kept until the flush");
        store.flush().await.expect("flush");
        assert!(store.keyring.key(&id0).is_none(), "destroyed");
        assert!(matches!(
            store.keyring.open_value(&raw),
            Err(SealError::MissingKey)
        ));
        assert!(store.idempotent_response("k0").expect("read").is_none());
        assert!(store.idempotent_response("k1").expect("read").is_some());
    }
}
