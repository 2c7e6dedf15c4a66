//! Sealing, shared by every backend: each value that holds personal data
//! (a case record, an outbox entry, a stored API answer) is sealed
//! (ChaCha20-Poly1305) under the key of the case it belongs to, so
//! destroying the key makes every copy of the value unreadable, wherever
//! the backend's files or logs still hold one.
//!
//! A sealed value is `version (1) ++ key id (16) ++ nonce (12) ++
//! ciphertext ++ tag`; the key id is also the AEAD's associated data.
//! Where the keys live is the backend's business (sled: a file of slots,
//! `sled/seal.rs`; PostgreSQL: the `case_keys` table).

use std::borrow::Cow;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const VERSION: u8 = 1;
pub const ID_LEN: usize = 16;
pub const KEY_LEN: usize = 32;
const HEADER: usize = 1 + ID_LEN + NONCE_LEN;

pub type KeyId = [u8; ID_LEN];

/// A case's key: its id (named by every value sealed under it) and the key.
pub type CaseSecret = (KeyId, [u8; KEY_LEN]);

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("keyring I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "a sealed value names a key that is not in the keyring (erased, or the keyring was lost)"
    )]
    MissingKey,
    #[error("a sealed value does not open with its key (damaged)")]
    Damaged,
}

/// A fresh random key (its id never all zeros, which marks a free slot).
pub fn fresh_key() -> CaseSecret {
    let mut id: KeyId = rand::random();
    while id == [0; ID_LEN] {
        id = rand::random();
    }
    (id, rand::random())
}

fn aead(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is a ChaCha20 key")),
    )
}

/// Seals `plain` under the key `(id, key)`.
pub fn seal((id, key): &CaseSecret, plain: &[u8]) -> Vec<u8> {
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let mut out = Vec::with_capacity(HEADER + plain.len() + CHACHA20_POLY1305.tag_len());
    out.push(VERSION);
    out.extend_from_slice(id);
    out.extend_from_slice(&nonce_bytes);
    let mut body = plain.to_vec();
    aead(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(id),
            &mut body,
        )
        .unwrap_or_else(|_| unreachable!("sealing fails only past 256 GiB"));
    out.extend_from_slice(&body);
    out
}

/// The plaintext of a stored value: a sealed value is opened with the key
/// `key_of` finds for the id it names; plain JSON (written before sealing
/// existed) passes through.
pub fn open<'a>(
    stored: &'a [u8],
    key_of: impl FnOnce(&KeyId) -> Option<[u8; KEY_LEN]>,
) -> Result<Cow<'a, [u8]>, SealError> {
    let Some(id) = key_id(stored) else {
        return Ok(Cow::Borrowed(stored));
    };
    let key = key_of(&id).ok_or(SealError::MissingKey)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&stored[1 + ID_LEN..HEADER]);
    let mut body = stored[HEADER..].to_vec();
    let plain_len = aead(&key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&id),
            &mut body,
        )
        .map_err(|_| SealError::Damaged)?
        .len();
    body.truncate(plain_len);
    Ok(Cow::Owned(body))
}

/// The key a stored value is sealed under; `None` for a plain value.
pub fn key_id(stored: &[u8]) -> Option<KeyId> {
    if stored.len() < HEADER || stored[0] != VERSION {
        return None;
    }
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&stored[1..=ID_LEN]);
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_value_does_not_open() {
        let key = fresh_key();
        let mut sealed = seal(&key, b"{}");
        assert_eq!(
            open(&sealed, |_| Some(key.1)).expect("opens").as_ref(),
            b"{}"
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(matches!(
            open(&sealed, |_| Some(key.1)),
            Err(SealError::Damaged)
        ));
        assert!(matches!(
            open(&sealed, |_| None),
            Err(SealError::MissingKey)
        ));
    }
}
