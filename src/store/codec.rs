//! How every backend writes what it keeps: versioned JSON, idempotency
//! keys hashed, and the entries a case record is indexed under (its
//! customer's contacts and its short page link), keyed under the store's
//! salt so no index holds an address in clear.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{Case, CaseKey, Channel, Contact, RECORD_VERSION, contact_of};

use super::{Result, StoreError};

/// A stored value read back; refuses a record version newer than this
/// binary's.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T> {
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

/// The status of a stored case record, read without its history.
pub(crate) fn decode_status(key: &[u8], bytes: &[u8]) -> Result<crate::domain::Status> {
    #[derive(Deserialize)]
    struct Only {
        case: OnlyCase,
    }
    #[derive(Deserialize)]
    struct OnlyCase {
        status: crate::domain::Status,
    }
    decode::<Only>(key, bytes).map(|o| o.case.status)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| unreachable!("records always serialize: {e}"))
}

/// Idempotency keys are hashed: a client's key may hold anything.
pub(crate) fn idempotency_key_bytes(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The recipients of a case (its customer and everyone in CC), keyed
/// under `salt`, each once.
pub(crate) fn contacts_of(salt: &[u8; 32], case: &Case) -> Vec<Contact> {
    let mut out = Vec::new();
    for (_, c) in case.recipients() {
        out.extend(
            c.email
                .iter()
                .map(|e| contact_of(salt, Channel::Email, e.as_ref())),
        );
        out.extend(
            c.phone
                .iter()
                .map(|p| contact_of(salt, Channel::Sms, p.as_ref())),
        );
    }
    out.sort_by_key(|c| c.0);
    out.dedup();
    out
}

/// The entry a case's short page link (`/s/{code}`) is found by.
pub(crate) fn link_entry(salt: &[u8; 32], key: &CaseKey, created_at: DateTime<Utc>) -> Contact {
    let code =
        crate::domain::link::short_code(salt, key, crate::domain::link::case_stamp(created_at));
    crate::domain::link::link_contact(salt, &code)
}

/// Everything a case record is indexed under: its recipients and its
/// short link's entry.
pub(crate) fn indexed_under(salt: &[u8; 32], case: &Case) -> Vec<Contact> {
    let mut all = contacts_of(salt, case);
    all.push(link_entry(
        salt,
        &CaseKey::new(&case.source, case.id.clone()),
        case.created_at,
    ));
    all
}
