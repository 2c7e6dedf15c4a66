//! Operator-facing reads of the store: walking every case (reload,
//! counting at start-up) and the head of the outbox (metrics).
//!
//! These live beside `store` (they read its trees) but are not part of the
//! request path: nothing here is called per request.

use chrono::{DateTime, Utc};

use crate::domain::Status;

use super::{Result, SledStore, ms_of, seal};
use crate::domain::{CaseRecord, OutboxEntry};

impl SledStore {
    /// Every stored case, in key order: one pass over the cases tree.
    pub fn scan_cases(&self) -> impl Iterator<Item = Result<CaseRecord>> + '_ {
        // A case erased while the walk runs (its key already destroyed) is
        // simply not there any more.
        self.cases.iter().filter_map(|item| match item {
            Ok((k, v)) => self.read_if_live(&k, &v).transpose(),
            Err(e) => Some(Err(e.into())),
        })
    }

    /// The status of every stored case: one pass over the cases tree that
    /// reads only the status field of each record.
    pub fn scan_case_statuses(&self) -> impl Iterator<Item = Result<Status>> + '_ {
        self.cases.iter().filter_map(|item| match item {
            // A case erased while the walk runs is not there any more.
            Ok((k, v)) => match self.keyring.open_value(&v) {
                Ok(plain) => Some(super::codec::decode_status(&k, &plain)),
                Err(super::SealError::MissingKey) => None,
                Err(e) => Some(Err(e.into())),
            },
            Err(e) => Some(Err(e.into())),
        })
    }

    /// When the earliest outbox entry is (or was) due, if any.
    pub fn outbox_head(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.outbox_due.first()?.and_then(|(k, _)| ms_of(&k)))
    }
}

/// The backup file's first bytes; the format version follows.
const MAGIC: &[u8] = b"TIDINGS-BACKUP\n";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a tidings backup, or a damaged one: {0}")]
    Format(String),
    #[error("storage: {0}")]
    Seal(#[from] super::SealError),
}

/// What a backup holds: entries per tree, and the file's checksum.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupSummary {
    pub format: u32,
    pub trees: std::collections::BTreeMap<String, u64>,
    pub entries: u64,
    /// Values left sealed under destroyed keys (pieces of erased cases),
    /// not copied.
    #[serde(default)]
    pub shredded: u64,
    pub sha256: String,
}

/// Writes through to `inner` and hashes what passes.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W: std::io::Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use sha2::Digest;
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }

    fn put_chunk(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| std::io::Error::other("a stored value is over 4 GiB"))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }
}

/// Writes the backup format: the header, each tree's name and entries
/// (values in clear), the entry count, the checksum. Any backend's backup
/// is written through it, so `restore` makes a sled store of any of them.
pub(crate) struct BackupWriter<W: std::io::Write> {
    w: Hashing<W>,
    summary: BackupSummary,
    current: Option<String>,
}

impl<W: std::io::Write> BackupWriter<W> {
    pub(crate) fn start(out: W) -> std::result::Result<Self, BackupError> {
        use sha2::Digest;
        let mut w = Hashing {
            inner: out,
            hash: sha2::Sha256::new(),
        };
        w.put(MAGIC)?;
        w.put(&FORMAT.to_be_bytes())?;
        Ok(Self {
            w,
            summary: BackupSummary {
                format: FORMAT,
                ..BackupSummary::default()
            },
            current: None,
        })
    }

    /// Starts the tree `name`; the entries that follow are its.
    pub(crate) fn tree(&mut self, name: &[u8]) -> std::result::Result<(), BackupError> {
        self.w.put(b"T")?;
        self.w.put_chunk(name)?;
        let name = String::from_utf8_lossy(name).into_owned();
        self.summary.trees.insert(name.clone(), 0);
        self.current = Some(name);
        Ok(())
    }

    pub(crate) fn entry(&mut self, k: &[u8], v: &[u8]) -> std::result::Result<(), BackupError> {
        let Some(tree) = &self.current else {
            return Err(BackupError::Format("an entry before its tree".into()));
        };
        self.w.put(b"E")?;
        self.w.put_chunk(k)?;
        self.w.put_chunk(v)?;
        *self.summary.trees.entry(tree.clone()).or_default() += 1;
        self.summary.entries += 1;
        Ok(())
    }

    /// Counts a value left out because its key was destroyed.
    pub(crate) fn shredded(&mut self) {
        self.summary.shredded += 1;
    }

    pub(crate) fn finish(mut self) -> std::result::Result<BackupSummary, BackupError> {
        use sha2::Digest;
        self.w.put(b"Z")?;
        self.w.put(&self.summary.entries.to_be_bytes())?;
        let digest = self.w.hash.finalize();
        self.w.inner.write_all(&digest)?;
        self.w.inner.flush()?;
        self.summary.sha256 = hex::encode(digest);
        Ok(self.summary)
    }
}

impl SledStore {
    /// Writes a consistent copy of every tree to `out`. The caller keeps
    /// writers out meanwhile (the service holds every lock stripe), so the
    /// copy is a single point in time.
    pub async fn backup(
        &self,
        out: impl std::io::Write,
    ) -> std::result::Result<BackupSummary, BackupError> {
        self.flush()
            .await
            .map_err(|e| BackupError::Io(std::io::Error::other(e.to_string())))?;
        self.write_backup(out)
    }

    fn write_backup(
        &self,
        out: impl std::io::Write,
    ) -> std::result::Result<BackupSummary, BackupError> {
        let mut w = BackupWriter::start(out)?;
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            // Only these trees hold sealed values. The others are copied
            // as they are: a generated key in `meta` is 32 random bytes,
            // and one in 256 begins like a sealed value.
            let sealed = [&b"cases"[..], b"outbox", b"idempotency"].contains(&&*name);
            w.tree(&name)?;
            for item in tree.iter() {
                let (k, v) = item?;
                // The backup holds values in the clear (it is a file of its
                // own, not tied to this store's keyring); restore seals
                // them again under keys of the new store.
                let plain = if !sealed {
                    std::borrow::Cow::Borrowed(&v[..])
                } else {
                    match self.keyring.open_value(&v) {
                        Ok(plain) => plain,
                        // Sealed under a destroyed key: what is left of an
                        // erased case, unreadable by design; not copied.
                        Err(super::SealError::MissingKey) => {
                            w.shredded();
                            continue;
                        }
                        Err(e) => {
                            return Err(BackupError::Format(format!(
                                "a stored value does not open: {e}"
                            )));
                        }
                    }
                };
                w.entry(&k, &plain)?;
            }
        }
        w.finish()
    }

    /// Creates a database in `dir` (which must not hold one) from a backup.
    /// The whole file is read and its checksum verified before anything is
    /// written.
    pub fn restore(
        dir: &std::path::Path,
        bytes: &[u8],
    ) -> std::result::Result<BackupSummary, BackupError> {
        let parsed = parse_backup(bytes)?;
        let db = super::open_when_released(&sled::Config::new().path(dir))?;
        let keyring = seal::Keyring::open(dir)?;
        // Values come back sealed under their case's new key, as if written
        // now: a case's key for its record and its outbox entries, a key of
        // its own for a stored API answer (the store retires it when the
        // case's erasure removes the answer).
        let tree = |name: &str| parsed.trees.iter().find(|(n, _)| *n == name.as_bytes());
        let cases = tree("cases").map_or(&[][..], |(_, e)| e.as_slice());
        let mut case_keys = std::collections::HashMap::new();
        for ((k, _), key) in cases.iter().zip(keyring.create(cases.len())?) {
            case_keys.insert(k.to_vec(), key);
        }
        let outbox = tree("outbox").map_or(&[][..], |(_, e)| e.as_slice());
        let case_of = |v: &[u8]| {
            super::decode::<OutboxEntry>(b"outbox", v)
                .ok()
                .map(|e| e.case.bytes())
        };
        let homeless = outbox
            .iter()
            .filter(|(_, v)| case_of(v).is_none_or(|c| !case_keys.contains_key(&c)))
            .count();
        let idem = tree("idempotency").map_or(0, |(_, e)| e.len());
        let mut own = keyring.create(homeless + idem)?.into_iter();
        for (name, entries) in &parsed.trees {
            let tree = db.open_tree(name)?;
            let mut batch = sled::Batch::default();
            for (k, v) in entries {
                let key = match *name {
                    b"cases" => case_keys.get(*k).cloned(),
                    b"outbox" => case_of(v)
                        .and_then(|c| case_keys.get(&c).cloned())
                        .or_else(|| own.next()),
                    b"idempotency" => own.next(),
                    _ => None,
                };
                match key {
                    Some(key) => batch.insert(*k, seal::Keyring::seal(&key, v)),
                    None => batch.insert(*k, *v),
                }
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        Ok(parsed.summary)
    }
}

/// Takes one length-prefixed chunk off the front of `rest`.
fn chunk<'a>(rest: &mut &'a [u8]) -> std::result::Result<&'a [u8], BackupError> {
    let bad = || BackupError::Format("truncated".into());
    let (len, tail) = rest.split_at_checked(4).ok_or_else(bad)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| bad())?) as usize;
    let (value, tail) = tail.split_at_checked(len).ok_or_else(bad)?;
    *rest = tail;
    Ok(value)
}

/// Checks a backup file whole (header, structure, checksum) and says
/// what it holds, without writing anything.
pub fn verify_backup(bytes: &[u8]) -> std::result::Result<BackupSummary, BackupError> {
    parse_backup(bytes).map(|p| p.summary)
}

pub(crate) type TreeDump<'a> = (&'a [u8], Vec<(&'a [u8], &'a [u8])>);

/// A backup read whole and checked: each tree's entries (values in clear).
pub(crate) struct ParsedBackup<'a> {
    pub(crate) trees: Vec<TreeDump<'a>>,
    pub(crate) summary: BackupSummary,
}

pub(crate) fn parse_backup(bytes: &[u8]) -> std::result::Result<ParsedBackup<'_>, BackupError> {
    use sha2::Digest;
    let bad = |m: &str| BackupError::Format(m.to_owned());
    let body_len = bytes
        .len()
        .checked_sub(32)
        .ok_or_else(|| bad("too short"))?;
    let (body, digest) = bytes.split_at(body_len);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err(bad("checksum mismatch"));
    }
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| bad("no header"))?;
    let (version, mut rest) = rest.split_at_checked(4).ok_or_else(|| bad("no version"))?;
    let version = u32::from_be_bytes(version.try_into().map_err(|_| bad("no version"))?);
    if version != FORMAT {
        return Err(bad(&format!("format {version} is not {FORMAT}")));
    }
    let mut trees: Vec<TreeDump<'_>> = Vec::new();
    let mut summary = BackupSummary {
        format: FORMAT,
        sha256: hex::encode(digest),
        ..BackupSummary::default()
    };
    loop {
        let (&tag, tail) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        rest = tail;
        match tag {
            b'T' => {
                let name = chunk(&mut rest)?;
                trees.push((name, Vec::new()));
            }
            b'E' => {
                let k = chunk(&mut rest)?;
                let v = chunk(&mut rest)?;
                let (_, entries) = trees.last_mut().ok_or_else(|| bad("entry before tree"))?;
                entries.push((k, v));
            }
            b'Z' => {
                let count: [u8; 8] = rest.try_into().map_err(|_| bad("bad trailer"))?;
                summary.entries = u64::from_be_bytes(count);
                break;
            }
            _ => return Err(bad("unknown record")),
        }
    }
    let total: usize = trees.iter().map(|(_, e)| e.len()).sum();
    if total as u64 != summary.entries {
        return Err(bad("entry count mismatch"));
    }
    for (name, entries) in &trees {
        summary.trees.insert(
            String::from_utf8_lossy(name).into_owned(),
            entries.len() as u64,
        );
    }
    Ok(ParsedBackup { trees, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backup_restores_every_tree_and_a_damaged_one_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&tmp.path().join("a")).expect("open");
        store
            .cases
            .insert(b"helpdesk\0C-1", b"{}".as_slice())
            .expect("insert");
        store
            .outbox
            .insert(b"id", b"entry".as_slice())
            .expect("insert");
        let mut bytes = Vec::new();
        let made = store.backup(&mut bytes).await.expect("backup");
        // Two records, and the two keys the store generated for itself
        // (the contact salt and the unsubscribe key), which must travel too.
        assert_eq!(made.entries, 4);

        let summary = SledStore::restore(&tmp.path().join("b"), &bytes).expect("restore");
        assert_eq!(summary.sha256, made.sha256);
        assert_eq!(summary.trees.get("cases"), Some(&1));
        let restored = SledStore::open(&tmp.path().join("b")).expect("open");
        // Restored values are sealed again, under the new store's keys.
        for (tree, key, plain) in [
            (&restored.outbox, &b"id"[..], &b"entry"[..]),
            (&restored.cases, &b"helpdesk\0C-1"[..], &b"{}"[..]),
        ] {
            let raw = tree.get(key).expect("get").expect("present");
            assert_ne!(raw.as_ref(), plain);
            assert_eq!(
                restored.keyring.open_value(&raw).expect("opens").as_ref(),
                plain
            );
        }

        let mut damaged = bytes.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 1;
        assert!(matches!(
            SledStore::restore(&tmp.path().join("c"), &damaged),
            Err(BackupError::Format(_))
        ));
    }

    #[tokio::test]
    async fn a_generated_key_that_begins_like_a_sealed_value_is_backed_up_as_it_is() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a");
        // The contact salt is random: one store in 256 gets one whose
        // first byte is the sealed-value version byte.
        let mut salt = [7u8; 32];
        salt[0] = 1;
        assert!(seal::key_id(&salt).is_some(), "it looks sealed");
        {
            let db =
                super::super::open_when_released(&sled::Config::new().path(&dir)).expect("sled");
            let meta = db.open_tree("meta").expect("meta");
            meta.insert("contact_salt", &salt).expect("insert");
            db.flush().expect("flush");
        }
        let store = SledStore::open(&dir).expect("open");
        assert_eq!(store.contact_salt(), salt);
        let mut bytes = Vec::new();
        store.backup(&mut bytes).await.expect("backup");
        SledStore::restore(&tmp.path().join("b"), &bytes).expect("restore");
        let restored = SledStore::open(&tmp.path().join("b")).expect("open");
        assert_eq!(restored.contact_salt(), salt, "the salt travels unchanged");
    }
}
