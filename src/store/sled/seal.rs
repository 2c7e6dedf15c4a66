//! Crypto-shredding: what makes `DELETE` erase for real in a log-structured
//! store.
//!
//! sled never overwrites in place: a removed or replaced value stays in old
//! log segments until sled happens to reuse them, so removing a case from
//! the `cases` tree leaves its email address, phone number and notes on
//! disk. Instead, every value of the trees that hold personal data
//! (`cases`, `outbox`, `idempotency`) is sealed (ChaCha20-Poly1305) under
//! the key of the case it belongs to, made when the case is first stored.
//! The keys live outside sled, in a small file of fixed 64-byte slots
//! (`tidings.keys` beside sled's own files) that *is* overwritten in place.
//! When a case is erased, its key is zeroed and synced once sled has
//! flushed the erasure: every copy of the case, of its messages and of its
//! stored API answers left in sled's log, including earlier versions (an
//! address replaced long ago), is then ciphertext nobody can open.
//!
//! Order matters for crash safety: a key is on disk (synced) before any
//! sled write that uses it, and is destroyed only after the sled change
//! that stopped using it is durable. A key left behind by a crash between
//! the two is an orphan; `Store::sweep_keys`, run in the background after
//! start-up, zeroes every key from before the open that no stored value
//! names.
//!
//! Values written before sealing existed (plain JSON, starting with `{`)
//! are still read, and sealed on their next write.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use crate::store::sealing::{self, ID_LEN};
pub use crate::store::sealing::{KEY_LEN, KeyId, SealError, key_id};

/// The keyring file, inside sled's directory so it moves with the store.
pub const KEYRING_FILE: &str = "tidings.keys";

/// A slot: the key's id, the key, zero padding. All zeros is a free slot.
const SLOT: usize = 64;

struct Slots {
    file: File,
    /// Every key by its id. The ids are random (made here), so a fast
    /// hash serves; at a million cases the map's fill is most of a start.
    keys: HashMap<KeyId, (u64, [u8; KEY_LEN]), foldhash::fast::RandomState>,
    free: Vec<u64>,
    next: u64,
    /// Keys whose values are gone from sled's view; zeroed after the next
    /// flush makes that durable.
    retired: Vec<KeyId>,
    /// The keys the ring held when it was opened: the only ones that can
    /// be orphans of a crash (see `keep_only`).
    at_open: Vec<KeyId>,
    /// Keys already written and synced but not handed out yet (their slot,
    /// id and key): a new case takes one without a sync of its own. Spares
    /// left by a stop or a crash are orphans at the next open, and swept.
    spare: Vec<(u64, KeyId, [u8; KEY_LEN])>,
}

/// Keys made (and synced) at once when no spare is left: one `fdatasync`
/// per this many new cases instead of one per case.
pub(crate) const SPARE_BATCH: usize = 256;

/// The per-case keys, in a file of fixed slots overwritten in place.
pub struct Keyring {
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    /// Opens (or creates) the keyring in sled's directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, SealError> {
        // Readable by the daemon's user alone, whatever the umask.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(KEYRING_FILE))?;
        let len = file.metadata()?.len();
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0)?;
        let mut keys = HashMap::with_capacity_and_hasher(bytes.len() / SLOT, Default::default());
        let mut free = Vec::new();
        let mut next = 0;
        for (i, slot) in bytes.chunks_exact(SLOT).enumerate() {
            let at = i as u64;
            next = at + 1;
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(&slot[..ID_LEN]);
            if id == [0; ID_LEN] {
                free.push(at);
            } else {
                let mut key = [0u8; KEY_LEN];
                key.copy_from_slice(&slot[ID_LEN..ID_LEN + KEY_LEN]);
                keys.insert(id, (at, key));
            }
        }
        Ok(Self {
            slots: Mutex::new(Slots {
                file,
                at_open: keys.keys().copied().collect(),
                keys,
                free,
                next,
                retired: Vec::new(),
                spare: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding the lock leaves the slots consistent (each
        // write is one slot), so a poisoned lock is still usable.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands out `n` fresh keys, each on disk (synced) before it is
    /// returned. Keys are made in batches of [`SPARE_BATCH`] with one sync;
    /// the rest wait as spares for the next callers.
    pub fn create(&self, n: usize) -> Result<Vec<(KeyId, [u8; KEY_LEN])>, SealError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut s = self.lock();
        if s.spare.len() < n {
            let wanted = n - s.spare.len() + SPARE_BATCH;
            let mut made = Vec::with_capacity(wanted);
            for _ in 0..wanted {
                let mut id: KeyId = rand::random();
                while id == [0; ID_LEN]
                    || s.keys.contains_key(&id)
                    || s.spare.iter().chain(&made).any(|(_, i, _)| *i == id)
                {
                    id = rand::random();
                }
                let key: [u8; KEY_LEN] = rand::random();
                let at = match s.free.pop() {
                    Some(at) => at,
                    None => {
                        s.next += 1;
                        s.next - 1
                    }
                };
                let mut slot = [0u8; SLOT];
                slot[..ID_LEN].copy_from_slice(&id);
                slot[ID_LEN..ID_LEN + KEY_LEN].copy_from_slice(&key);
                if let Err(e) = s.file.write_all_at(&slot, at * SLOT as u64) {
                    // The slots written so far are not synced: give them
                    // back, so none is handed out before it is on disk.
                    s.free.push(at);
                    let taken: Vec<u64> = made.iter().map(|(at, _, _)| *at).collect();
                    s.free.extend(taken);
                    return Err(e.into());
                }
                made.push((at, id, key));
            }
            if let Err(e) = s.file.sync_data() {
                let taken: Vec<u64> = made.iter().map(|(at, _, _)| *at).collect();
                s.free.extend(taken);
                return Err(e.into());
            }
            s.spare.extend(made);
        }
        let from = s.spare.len() - n;
        let taken: Vec<_> = s.spare.drain(from..).collect();
        let mut out = Vec::with_capacity(n);
        for (at, id, key) in taken {
            s.keys.insert(id, (at, key));
            out.push((id, key));
        }
        Ok(out)
    }

    pub fn key(&self, id: &KeyId) -> Option<[u8; KEY_LEN]> {
        self.lock().keys.get(id).map(|(_, k)| *k)
    }

    /// Marks keys for destruction after the next flush (or gives back
    /// those taken for a flush that failed).
    pub fn retire(&self, ids: impl IntoIterator<Item = KeyId>) {
        self.lock().retired.extend(ids);
    }

    /// The keys retired so far, to destroy once a flush that started after
    /// this call has completed.
    pub fn take_retired(&self) -> Vec<KeyId> {
        std::mem::take(&mut self.lock().retired)
    }

    /// Zeroes the slots of `ids` and syncs.
    pub fn destroy(&self, ids: &[KeyId]) -> Result<(), SealError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut s = self.lock();
        let zero = [0u8; SLOT];
        for id in ids {
            if let Some((at, _)) = s.keys.remove(id) {
                s.file.write_all_at(&zero, at * SLOT as u64)?;
                s.free.push(at);
            }
        }
        s.file.sync_data()?;
        Ok(())
    }

    /// Destroys every key the ring held when it was opened that is not in
    /// `live`; returns how many went. Keys made since are left alone: one
    /// may belong to a write still under way. Once only.
    pub fn keep_only(&self, live: &HashSet<KeyId>) -> Result<usize, SealError> {
        let orphans: Vec<KeyId> = {
            let mut s = self.lock();
            let at_open = std::mem::take(&mut s.at_open);
            at_open
                .into_iter()
                .filter(|id| s.keys.contains_key(id) && !live.contains(id))
                .collect()
        };
        self.destroy(&orphans)?;
        Ok(orphans.len())
    }

    /// How many keys the ring holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().keys.len()
    }

    /// Seals `plain` under the key `(id, key)`.
    pub fn seal(key: &(KeyId, [u8; KEY_LEN]), plain: &[u8]) -> Vec<u8> {
        sealing::seal(key, plain)
    }

    /// The plaintext of a stored value: sealed values are opened, plain
    /// JSON (written before sealing) passes through.
    pub fn open_value<'a>(
        &self,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, SealError> {
        sealing::open(stored, |id| self.key(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_until_their_key_is_destroyed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::open(dir.path()).expect("open");
        let keys = ring.create(2).expect("create");
        let plain = br#"{"email":"canary@example.org"}"#;
        let sealed = Keyring::seal(&keys[0], plain);
        assert!(!sealed.windows(7).any(|w| w == b"canary@"));
        assert_eq!(ring.open_value(&sealed).expect("open").as_ref(), plain);
        // Plain JSON passes through.
        assert_eq!(ring.open_value(plain).expect("plain").as_ref(), plain);

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEYRING_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the keyring is private");

        // The ring survives a reopen (with the spares synced beside the two
        // handed out); a destroyed key is gone from the file.
        drop(ring);
        let ring = Keyring::open(dir.path()).expect("reopen");
        assert_eq!(ring.len(), 2 + SPARE_BATCH);
        ring.destroy(&[keys[0].0]).expect("destroy");
        assert!(matches!(
            ring.open_value(&sealed),
            Err(SealError::MissingKey)
        ));
        let file = std::fs::read(dir.path().join(KEYRING_FILE)).expect("read");
        assert!(!file.windows(KEY_LEN).any(|w| w == keys[0].1));
        assert!(file.windows(KEY_LEN).any(|w| w == keys[1].1));

        // Spares left by the last close are orphans and go; their slots
        // and the destroyed key's take the next batch.
        let live: HashSet<KeyId> = [keys[1].0].into();
        assert_eq!(ring.keep_only(&live).expect("gc"), SPARE_BATCH);
        let again = ring.create(1).expect("create");
        assert_eq!(
            file.len(),
            std::fs::read(dir.path().join(KEYRING_FILE))
                .expect("read")
                .len()
        );
        assert_eq!(ring.len(), 2, "keys[1] and the one just handed out");
        assert!(ring.key(&again[0].0).is_some());
    }
}
