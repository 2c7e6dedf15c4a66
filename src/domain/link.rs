//! Signed links to a customer's own case page (`/c/{token}`) and the
//! form tokens on it.
//!
//! A page token names one case: its source and id, a stamp of the case's
//! creation instant (so a case erased and created again under the same id
//! does not open with an old link) and the day the link was issued. It
//! carries no address, phone number or name. A 16-byte tag
//! (HMAC-SHA256 over a purpose label and the payload) comes first; the
//! whole is unpadded base64url. Links are signed with the current key;
//! any of the keys given (the current one, and the previous one during a
//! rotation) opens them. Checks compare in constant time and fail closed.
//! No keys are held here and no I/O is done.
//!
//! An SMS has no room for a full token, so it carries a short code
//! (`/s/{code}`, eleven characters): a MAC of the case under the store's
//! contact salt. The code names nothing by itself; the store indexes each
//! case under the code's `link_contact`, so the code finds its case, and
//! the case, recomputing its code, confirms it. Erasing the case removes
//! the index entry with its other contacts.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{CaseId, CaseKey, Contact};

type HmacSha256 = Hmac<Sha256>;

const TAG_LEN: usize = 16;
const VERSION: u8 = 1;
/// Separates page tags from any other MAC made with the same key.
const PAGE_LABEL: &[u8] = b"case-page:";
const FORM_LABEL: &[u8] = b"case-page-form:";
const SHORT_LABEL: &[u8] = b"case-page-short:";
const SHORT_INDEX_LABEL: &[u8] = b"case-page-short-index:";
/// Bytes of MAC in a short code (64 bits: eleven base64url characters).
const SHORT_LEN: usize = 8;
/// A token longer than this is refused before it is decoded (a source
/// and a 128-character id fit well within it).
pub const MAX_TOKEN_LEN: usize = 512;

/// What a page token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageLink {
    pub case: CaseKey,
    /// `case_stamp` of the case the link was made for.
    pub stamp: u32,
    /// The day (since the Unix epoch) the link was issued.
    pub issued_day: u32,
}

impl PageLink {
    /// The link for `case` (created at `created_at`), issued at `now`.
    pub fn new(case: CaseKey, created_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        Self {
            case,
            stamp: case_stamp(created_at),
            issued_day: day_of(now),
        }
    }

    /// The instant the link was issued (the start of its day).
    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(i64::from(self.issued_day) * 86_400, 0).unwrap_or_default()
    }
}

/// Days since the Unix epoch.
fn day_of(t: DateTime<Utc>) -> u32 {
    u32::try_from(t.timestamp().div_euclid(86_400)).unwrap_or(0)
}

/// Four bytes that tell one life of a case id from another.
pub fn case_stamp(created_at: DateTime<Utc>) -> u32 {
    let d = Sha256::digest(created_at.timestamp_micros().to_be_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn tag(key: &[u8], label: &[u8], payload: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(payload);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

fn payload(link: &PageLink) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + link.case.source.len() + 1 + link.case.id.as_ref().len());
    p.push(VERSION);
    p.extend_from_slice(&link.issued_day.to_be_bytes());
    p.extend_from_slice(&link.stamp.to_be_bytes());
    p.extend_from_slice(&link.case.bytes());
    p
}

/// The URL-safe token for `link`, signed with `key`.
pub fn page_token(key: &[u8], link: &PageLink) -> String {
    let p = payload(link);
    let mut raw = Vec::with_capacity(TAG_LEN + p.len());
    raw.extend_from_slice(&tag(key, PAGE_LABEL, &p));
    raw.extend_from_slice(&p);
    URL_SAFE_NO_PAD.encode(raw)
}

/// What `token` says when it is a well-formed page token whose tag
/// verifies under one of `keys`; `None` for anything else. Every key is
/// tried, whichever matches, so the time taken does not tell which.
pub fn open_page_token(keys: &[&[u8]], token: &str) -> Option<PageLink> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() < TAG_LEN + 9 + 3 {
        return None;
    }
    let (given, p) = raw.split_at(TAG_LEN);
    let mut ok = subtle::Choice::from(0);
    for key in keys.iter().filter(|k| !k.is_empty()) {
        ok |= tag(key, PAGE_LABEL, p).ct_eq(given);
    }
    if !bool::from(ok) || p[0] != VERSION {
        return None;
    }
    let issued_day = u32::from_be_bytes(p[1..5].try_into().ok()?);
    let stamp = u32::from_be_bytes(p[5..9].try_into().ok()?);
    let case = CaseKey::from_bytes(&p[9..])?;
    Some(PageLink {
        case,
        stamp,
        issued_day,
    })
}

/// The hidden field every form on the page carries: a tag over the page
/// token, so a form posted anywhere but from the page itself is refused.
pub fn form_token(key: &[u8], page_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(tag(key, FORM_LABEL, page_token.as_bytes()))
}

/// Whether `given` is the form token of `page_token` under one of `keys`.
pub fn verify_form_token(keys: &[&[u8]], page_token: &str, given: &str) -> bool {
    let mut ok = subtle::Choice::from(0);
    for key in keys.iter().filter(|k| !k.is_empty()) {
        ok |= form_token(key, page_token)
            .as_bytes()
            .ct_eq(given.as_bytes());
    }
    ok.into()
}

/// The short code of the case `case` created with `stamp`: eleven
/// URL-safe characters, unguessable without the store's contact salt.
pub fn short_code(salt: &[u8; 32], case: &CaseKey, stamp: u32) -> String {
    let mut p = stamp.to_be_bytes().to_vec();
    p.extend_from_slice(&case.bytes());
    URL_SAFE_NO_PAD.encode(&tag(salt, SHORT_LABEL, &p)[..SHORT_LEN])
}

/// Whether `code` has the shape of a short code (checked before any
/// lookup, so junk costs nothing).
pub fn is_short_code(code: &str) -> bool {
    code.len() == URL_SAFE_NO_PAD.encode([0u8; SHORT_LEN]).len()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The key the store indexes a case under for its short code.
pub fn link_contact(salt: &[u8; 32], code: &str) -> Contact {
    let mut mac = HmacSha256::new_from_slice(salt).expect("HMAC accepts keys of any length");
    mac.update(SHORT_INDEX_LABEL);
    mac.update(code.as_bytes());
    Contact(mac.finalize().into_bytes().into())
}

/// Whether `code` is the short code of `case` created with `stamp`,
/// compared in constant time.
pub fn short_code_matches(salt: &[u8; 32], case: &CaseKey, stamp: u32, code: &str) -> bool {
    short_code(salt, case, stamp)
        .as_bytes()
        .ct_eq(code.as_bytes())
        .into()
}

/// A case key as a page link names it (for tests and tools).
pub fn case_key(source: &str, id: &str) -> Option<CaseKey> {
    Some(CaseKey::new(source, id.parse::<CaseId>().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"a page key of thirty-two bytes!!";
    const OLD: &[u8] = b"the previous page key, rotated out";

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    fn link() -> PageLink {
        PageLink::new(
            case_key("helpdesk", "CASE-1").expect("key"),
            t("2026-03-02T10:00:00Z"),
            t("2026-03-05T17:30:00Z"),
        )
    }

    #[test]
    fn a_token_round_trips_and_carries_no_personal_data() {
        let token = page_token(KEY, &link());
        assert!(token.len() < 60, "{} characters: {token}", token.len());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let opened = open_page_token(&[KEY], &token).expect("opens");
        assert_eq!(opened, link());
        assert_eq!(opened.issued_at(), t("2026-03-05T00:00:00Z"));
    }

    #[test]
    fn the_previous_key_opens_links_during_a_rotation() {
        let old = page_token(OLD, &link());
        assert_eq!(open_page_token(&[KEY, OLD], &old), Some(link()));
        assert_eq!(open_page_token(&[KEY], &old), None);
        assert_eq!(open_page_token(&[KEY, b""], &old), None);
    }

    #[test]
    fn forged_truncated_and_other_source_tokens_fail() {
        let token = page_token(KEY, &link());
        let raw = URL_SAFE_NO_PAD.decode(&token).expect("decodes");
        for i in [0, 15, 16, 20, raw.len() - 1] {
            let mut f = raw.clone();
            f[i] ^= 1;
            assert_eq!(open_page_token(&[KEY], &URL_SAFE_NO_PAD.encode(&f)), None);
        }
        for cut in [1, 10, token.len() / 2, token.len() - 1] {
            assert_eq!(open_page_token(&[KEY], &token[..cut]), None, "{cut}");
        }
        // The same case id under another source, with the tag kept.
        let mut other = raw.clone();
        let at = other.len() - "helpdesk\0CASE-1".len();
        other[at..at + 8].copy_from_slice(b"billing_");
        assert_eq!(
            open_page_token(&[KEY], &URL_SAFE_NO_PAD.encode(&other)),
            None
        );
        assert_eq!(open_page_token(&[KEY], &"A".repeat(600)), None);
        assert_eq!(open_page_token(&[], &token), None);
    }

    #[test]
    fn a_case_created_again_has_another_stamp() {
        assert_ne!(
            case_stamp(t("2026-03-02T10:00:00Z")),
            case_stamp(t("2026-03-02T10:00:01Z"))
        );
    }

    #[test]
    fn form_tokens_belong_to_their_page() {
        let a = page_token(KEY, &link());
        let f = form_token(KEY, &a);
        assert!(verify_form_token(&[OLD, KEY], &a, &f));
        assert!(!verify_form_token(&[KEY], "another", &f));
        assert!(!verify_form_token(&[KEY], &a, ""));
        assert!(!verify_form_token(&[OLD], &a, &f));
    }

    #[test]
    fn short_codes_are_short_stable_and_tied_to_the_case_and_salt() {
        let salt = [7u8; 32];
        let key = case_key("helpdesk", "CASE-1").expect("key");
        let code = short_code(&salt, &key, 42);
        assert_eq!(code.len(), 11, "{code}");
        assert!(is_short_code(&code));
        assert_eq!(code, short_code(&salt, &key, 42));
        assert!(short_code_matches(&salt, &key, 42, &code));
        // Another life of the case, another case, another salt: another code.
        assert!(!short_code_matches(&salt, &key, 43, &code));
        let other = case_key("billing", "CASE-1").expect("key");
        assert!(!short_code_matches(&salt, &other, 42, &code));
        assert_ne!(code, short_code(&[8u8; 32], &key, 42));
        // The index key names the code, not the case.
        assert_eq!(link_contact(&salt, &code), link_contact(&salt, &code));
        assert_ne!(
            link_contact(&salt, &code),
            link_contact(&salt, &short_code(&salt, &other, 42))
        );
        for junk in ["", "short", "AAAAAAAAAAAA", "AAAAAAAAAA/", "AAAAAAAAAA="] {
            assert!(!is_short_code(junk), "{junk}");
        }
    }

    proptest! {
        #[test]
        fn opening_arbitrary_input_never_panics(s in any::<String>()) {
            let _ = open_page_token(&[KEY], &s);
        }

        #[test]
        fn every_case_round_trips(id in "[A-Za-z0-9._:-]{1,128}", source in "[a-z]{1,20}") {
            prop_assume!(!id.bytes().all(|b| b == b'.'));
            let l = PageLink::new(case_key(&source, &id).expect("key"), t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"));
            prop_assert_eq!(open_page_token(&[KEY], &page_token(KEY, &l)), Some(l));
        }
    }
}
