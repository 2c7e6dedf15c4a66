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
//!   (and, under `link::link_contact`, the case of one short page link)
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

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use uuid::Uuid;

use crate::domain::{Case, Channel, OptOutVia};
use crate::domain::{
    CaseKey, CaseRecord, Contact, DeliveredMark, IdempotentResponse, OptOut, OutboxEntry,
    contact_of,
};

mod ops;
mod seal;
use super::sealing::SealError;
pub use ops::{BackupError, BackupSummary, verify_backup};
pub(crate) use ops::{BackupWriter, parse_backup};

use super::codec::{self, decode, encode, idempotency_key_bytes};
use super::{Commit, Result, StoreError, Writer};
use seal::{KEY_LEN, KeyId, Keyring};

pub(crate) fn ms_key(t: DateTime<Utc>, suffix: &[u8]) -> Vec<u8> {
    // Offset so instants before 1970 still sort as unsigned big-endian.
    let ms = (t.timestamp_millis() as i128 - i128::from(i64::MIN)) as u64;
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&ms.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Moves `contact`'s instant in `tree` on to `at`; a later one stays.
fn advance(tree: &sled::Tree, contact: Contact, at: DateTime<Utc>) -> Result<()> {
    tree.fetch_and_update(contact.0, |old| {
        Some(match old {
            Some(was) if ms_of(was).is_some_and(|was| was > at) => was.to_vec(),
            _ => ms_key(at, &[]),
        })
    })?;
    Ok(())
}

pub(crate) fn ms_of(key: &[u8]) -> Option<DateTime<Utc>> {
    let raw = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let ms = (i128::from(raw) + i128::from(i64::MIN)) as i64;
    DateTime::from_timestamp_millis(ms)
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct SledStore {
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
    /// When each contact last wrote to us (WhatsApp's window), by contact.
    inbound: sled::Tree,
    salt: [u8; 32],
    unsubscribe_key: [u8; 32],
    dir: std::path::PathBuf,
    /// Free space kept on the store's disk (see `SledStore::room`).
    reserve: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The disk's free space as last measured, and when (ms since
    /// `opened`): `room` asks the file system at most every `FREE_SPACE_TTL`.
    free_space: std::sync::Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicI64)>,
    keyring: std::sync::Arc<Keyring>,
    flushes: std::sync::Arc<Flushes>,
    /// When this handle was opened (a monotonic origin for `free_space`).
    opened: std::time::Instant,
    /// Entries in the outbox, counted at open and moved by each commit
    /// (a walk of the tree is not a snapshot: an entry replaced while it
    /// runs can be counted twice).
    outbox_count: std::sync::Arc<std::sync::atomic::AtomicI64>,
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

/// sled's page cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// How long a measurement of the disk's free space stands.
const FREE_SPACE_TTL_MS: i64 = 250;

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
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

/// How long an open waits for a handle this process has just dropped: sled's
/// IO threads can hold the database's lock file for a moment after the last
/// handle goes. Another process holding it is still refused, only later.
const LOCK_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens `config`'s database, retrying while its lock is held (see
/// [`LOCK_RELEASE`]).
pub(crate) fn open_when_released(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. One process per database.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            // sled's default page cache is 1 GiB; the working set (the
            // schedule head, the outbox head, the cases being changed) is
            // small, and the rest is read from the OS page cache.
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(500));
        let db = open_when_released(&config)?;
        let meta = db.open_tree("meta")?;
        let salt = generated_key(&meta, "contact_salt")?;
        let unsubscribe_key = generated_key(&meta, "unsubscribe_key")?;
        let keyring = Keyring::open(dir)?;
        let outbox = db.open_tree("outbox")?;
        let outbox_count = i64::try_from(outbox.len()).unwrap_or(i64::MAX);
        Ok(Self {
            outbox_count: std::sync::Arc::new(outbox_count.into()),
            keyring: std::sync::Arc::new(keyring),
            flushes: std::sync::Arc::default(),
            opened: std::time::Instant::now(),
            recipients: db.open_tree("recipients")?,
            delivered: db.open_tree("delivered")?,
            optouts: db.open_tree("optouts")?,
            contacts: db.open_tree("contacts")?,
            inbound: db.open_tree("inbound")?,
            salt,
            unsubscribe_key,
            cases: db.open_tree("cases")?,
            schedule: db.open_tree("schedule")?,
            outbox,
            outbox_due: db.open_tree("outbox_due")?,
            idempotency: db.open_tree("idempotency")?,
            dir: dir.to_owned(),
            reserve: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
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
        let now = i64::try_from(self.opened.elapsed().as_millis()).unwrap_or(i64::MAX);
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

    pub fn opt_out(&self, contact: Contact, via: OptOutVia, now: DateTime<Utc>) -> Result<()> {
        let v = encode(&OptOut { at: now, via });
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

    /// Moves `contact`'s last send on to `at`; a later one (the next
    /// send's claim) stays.
    pub fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        advance(&self.contacts, contact, at)
    }

    pub fn note_inbound(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        advance(&self.inbound, contact, at)
    }

    pub fn last_inbound(&self, contact: Contact) -> Result<Option<DateTime<Utc>>> {
        Ok(self.inbound.get(contact.0)?.as_deref().and_then(ms_of))
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

    /// The recipients a case record is indexed under: the customer and
    /// everyone in CC.
    pub fn contacts_of(&self, case: &Case) -> Vec<Contact> {
        codec::contacts_of(&self.salt, case)
    }

    /// Everything a case record is indexed under: its recipients and the
    /// entry its short page link (`/s/{code}`) is found by.
    fn indexed_under(&self, case: &Case) -> Vec<Contact> {
        codec::indexed_under(&self.salt, case)
    }

    fn link_entry(&self, key: &CaseKey, created_at: DateTime<Utc>) -> Contact {
        codec::link_entry(&self.salt, key, created_at)
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
                    .map(|r| self.indexed_under(&r.case))
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
        // A case named twice in one batch keeps the key the earlier change
        // left it with, so every value of it is shredded together.
        let mut in_batch: std::collections::HashMap<Vec<u8>, Option<KeyId>> =
            std::collections::HashMap::new();
        for p in &mut prepared {
            let current = match in_batch.get(&p.case_key) {
                Some(earlier) => *earlier,
                None => self
                    .cases
                    .get(&p.case_key)?
                    .as_deref()
                    .and_then(seal::key_id),
            };
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
            let after = match key {
                Some((id, _)) => Some(id),
                None if p.erase => None,
                None => current,
            };
            in_batch.insert(p.case_key.clone(), after);
            if let Some(key) = key {
                p.seal(&key);
            }
        }
        let own_keys: std::cell::RefCell<Vec<KeyId>> = std::cell::RefCell::default();
        // How this transaction moves the outbox's size (set again on a retry).
        let outbox_delta = std::cell::Cell::new(0i64);
        let result = (
            &self.cases,
            &self.schedule,
            &self.outbox,
            &self.outbox_due,
            &self.idempotency,
            &self.recipients,
            &self.delivered,
            &self.contacts,
        )
            .transaction(
                |(
                    cases,
                    schedule,
                    outbox_t,
                    outbox_due,
                    idempotency,
                    recipients,
                    delivered,
                    contacts,
                )| {
                    own_keys.borrow_mut().clear();
                    outbox_delta.set(0);
                    for ((p, (_, commit)), case_id) in prepared.iter().zip(changes).zip(&case_ids) {
                        let case_key = &p.case_key;
                        if let Some((id, mark)) = &commit.delivered {
                            delivered.insert(id.as_bytes().as_slice(), encode(mark))?;
                        }
                        // A later claim (the next send's) is never moved back.
                        if let Some((contact, at)) = &commit.last_sent
                            && contacts
                                .get(contact.0.as_slice())?
                                .as_deref()
                                .and_then(ms_of)
                                .is_none_or(|was| was <= *at)
                        {
                            contacts.insert(contact.0.as_slice(), ms_key(*at, &[]))?;
                        }
                        // The schedule index and the recipient index follow
                        // the record: the stored one's entries go first.
                        if (p.record.is_some() || p.erase)
                            && let Some(old) = cases.get(case_key.as_slice())?
                        {
                            let (contacts, due) = self.stored_index(case_key, &old);
                            if let Some(due) = due {
                                schedule.remove(ms_key(due, case_key))?;
                            }
                            for c in contacts {
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
                            if outbox_t.remove(id.as_bytes().as_slice())?.is_some() {
                                outbox_delta.set(outbox_delta.get() - 1);
                            }
                            outbox_due.remove(ms_key(*at, id.as_bytes()))?;
                            delivered.remove(id.as_bytes().as_slice())?;
                        }
                        for (id, bytes, due_key) in &p.outbox {
                            if outbox_t.insert(id.as_slice(), bytes.as_slice())?.is_none() {
                                outbox_delta.set(outbox_delta.get() + 1);
                            }
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
                self.outbox_moved(outbox_delta.get());
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

    /// The index entries of a stored record (its customer's contacts and
    /// its schedule instant), read without decoding its history.
    fn stored_index(&self, case_key: &[u8], bytes: &[u8]) -> (Vec<Contact>, Option<DateTime<Utc>>) {
        #[derive(Deserialize)]
        struct Slim {
            case: SlimCase,
            schedule: SlimSchedule,
        }
        #[derive(Deserialize)]
        struct SlimCase {
            customer: SlimCustomer,
            created_at: DateTime<Utc>,
            #[serde(default)]
            cc: Vec<SlimCustomer>,
        }
        #[derive(Deserialize)]
        struct SlimCustomer {
            email: Option<String>,
            phone: Option<String>,
        }
        #[derive(Deserialize)]
        struct SlimSchedule {
            due_at: Option<DateTime<Utc>>,
        }
        let Ok(plain) = self.keyring.open_value(bytes) else {
            return (Vec::new(), None);
        };
        let Ok(slim) = serde_json::from_slice::<Slim>(&plain) else {
            return (Vec::new(), None);
        };
        let mut contacts = Vec::new();
        for c in std::iter::once(slim.case.customer).chain(slim.case.cc) {
            contacts.extend(c.email.iter().map(|e| self.contact(Channel::Email, e)));
            contacts.extend(c.phone.iter().map(|p| self.contact(Channel::Sms, p)));
        }
        contacts.extend(
            CaseKey::from_bytes(case_key).map(|k| self.link_entry(&k, slim.case.created_at)),
        );
        contacts.sort_by_key(|c: &Contact| c.0);
        contacts.dedup();
        (contacts, slim.schedule.due_at)
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

    /// The cases due at `now` (at most `limit`, none of `busy`), earliest
    /// first, and when to look next (see `Storage::claim_due_cases`).
    pub fn due_cases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<CaseKey>,
    ) -> Result<super::DueCases> {
        let mut out: Vec<(DateTime<Utc>, CaseKey)> = Vec::new();
        for item in self.schedule.iter() {
            let (k, _) = item?;
            let (Some(at), Some(key)) = (ms_of(&k), CaseKey::from_bytes(&k[8..])) else {
                self.schedule.remove(&k)?;
                continue;
            };
            if at > now {
                return Ok((out, Some(at)));
            }
            if busy.contains(&key) || out.iter().any(|(_, k)| *k == key) {
                continue;
            }
            if out.len() >= limit {
                return Ok((out, Some(now)));
            }
            out.push((at, key));
        }
        Ok((out, None))
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
                        if self.outbox.remove(id.as_bytes())?.is_some() {
                            self.outbox_moved(-1);
                        }
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

    /// An outbox entry; `None` also for one whose case was erased (its key
    /// destroyed) while it was on its way out.
    pub fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>> {
        match self.outbox.get(id.as_bytes())? {
            Some(b) => self.read_if_live(id.as_bytes(), &b),
            None => Ok(None),
        }
    }

    /// Messages waiting in the outbox (the outbox tree holds only unsent
    /// messages).
    pub fn outbox_len(&self) -> usize {
        let n = self.outbox_count.load(std::sync::atomic::Ordering::Relaxed);
        usize::try_from(n).unwrap_or(0)
    }

    fn outbox_moved(&self, by: i64) {
        if by != 0 {
            self.outbox_count
                .fetch_add(by, std::sync::atomic::Ordering::Relaxed);
        }
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

impl super::Storage for SledStore {
    fn get(&self, key: &CaseKey) -> Result<Option<CaseRecord>> {
        SledStore::get(self, key)
    }
    fn commit_many(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()> {
        SledStore::commit_many(self, changes)
    }
    fn flush(&self) -> super::BoxFuture<'_, Result<()>> {
        Box::pin(SledStore::flush(self))
    }
    fn room(&self, writer: Writer) -> Result<()> {
        SledStore::room(self, writer)
    }
    fn scan_cases(&self) -> Box<dyn Iterator<Item = Result<CaseRecord>> + Send + '_> {
        Box::new(SledStore::scan_cases(self))
    }
    fn scan_case_statuses(
        &self,
    ) -> Box<dyn Iterator<Item = Result<crate::domain::Status>> + Send + '_> {
        Box::new(SledStore::scan_case_statuses(self))
    }
    fn next_due_case(&self) -> Result<Option<(DateTime<Utc>, CaseKey)>> {
        SledStore::next_due_case(self)
    }
    fn claim_due_cases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<CaseKey>,
    ) -> Result<super::DueCases> {
        self.due_cases(now, limit, busy)
    }
    fn remove_schedule_entry(&self, at: DateTime<Utc>, key: &CaseKey) -> Result<()> {
        SledStore::remove_schedule_entry(self, at, key)
    }
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<Uuid>,
    ) -> Result<(Vec<OutboxEntry>, Option<DateTime<Utc>>)> {
        SledStore::due_outbox(self, now, limit, busy)
    }
    fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>> {
        SledStore::outbox_entry(self, id)
    }
    fn outbox_len(&self) -> usize {
        SledStore::outbox_len(self)
    }
    fn outbox_head(&self) -> Result<Option<DateTime<Utc>>> {
        SledStore::outbox_head(self)
    }
    fn mark_delivered(
        &self,
        id: Uuid,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> super::BoxFuture<'_, Result<()>> {
        Box::pin(SledStore::mark_delivered(self, id, provider_id, at))
    }
    fn delivered_mark(&self, id: Uuid) -> Result<Option<DeliveredMark>> {
        SledStore::delivered_mark(self, id)
    }
    fn contact(&self, channel: Channel, address: &str) -> Contact {
        SledStore::contact(self, channel, address)
    }
    fn contacts_of(&self, case: &Case) -> Vec<Contact> {
        SledStore::contacts_of(self, case)
    }
    fn cases_of(&self, contact: Contact) -> Result<Vec<CaseKey>> {
        SledStore::cases_of(self, contact)
    }
    fn contact_salt(&self) -> [u8; 32] {
        SledStore::contact_salt(self)
    }
    fn generated_unsubscribe_key(&self) -> [u8; 32] {
        SledStore::generated_unsubscribe_key(self)
    }
    fn opt_out(&self, contact: Contact, via: OptOutVia, now: DateTime<Utc>) -> Result<()> {
        SledStore::opt_out(self, contact, via, now)
    }
    fn opt_in(&self, contact: Contact) -> Result<bool> {
        SledStore::opt_in(self, contact)
    }
    fn opted_out(&self, contact: Contact) -> Result<Option<OptOut>> {
        SledStore::opted_out(self, contact)
    }
    fn claim_send(
        &self,
        contact: Contact,
        gap: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        SledStore::claim_send(self, contact, gap, now)
    }
    fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        SledStore::set_last_sent(self, contact, at)
    }

    fn note_inbound(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        SledStore::note_inbound(self, contact, at)
    }

    fn last_inbound(&self, contact: Contact) -> Result<Option<DateTime<Utc>>> {
        SledStore::last_inbound(self, contact)
    }
    fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        SledStore::idempotent_response(self, key)
    }
    fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<usize> {
        SledStore::prune_idempotency(self, before)
    }
    fn backup<'a>(
        &'a self,
        out: &'a mut (dyn std::io::Write + Send),
    ) -> super::BoxFuture<'a, std::result::Result<BackupSummary, BackupError>> {
        Box::pin(SledStore::backup(self, out))
    }
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
        let store = SledStore::open(tmp.path()).expect("open");
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
            let store = SledStore::open(tmp.path()).expect("open");
            // A key whose case write never landed (a crash in between).
            store.keyring.create(1).expect("create")[0].0
        };
        let store = SledStore::open(tmp.path()).expect("reopen");
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
        // The orphan, and the spares made with it.
        assert_eq!(store.sweep_keys().expect("sweep"), 1 + seal::SPARE_BATCH);
        assert!(store.keyring.key(&orphan).is_none());
        assert!(store.keyring.key(&in_flight).is_some());
        assert!(store.idempotent_response("k").expect("read").is_some());
    }

    #[tokio::test]
    async fn a_case_is_sealed_under_its_own_key_and_erasure_destroys_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(tmp.path()).expect("open");
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
