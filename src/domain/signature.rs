//! Request and link signing: Twilio's webhook signature and the signed
//! tokens in unsubscribe links.
//!
//! Twilio signs each webhook with `X-Twilio-Signature`: base64 of
//! HMAC-SHA1, keyed with the account's auth token, over the full URL
//! followed by every POST parameter's name and value, sorted by name, with
//! no separators. Unsubscribe tokens name an opt-out subject by its 32-byte
//! hash, never by the address itself, followed by a 16-byte tag
//! (truncated HMAC-SHA256 over a purpose label and the hash), all in
//! unpadded base64url so the token can sit in a URL path. Every check
//! compares in constant time and fails closed on malformed input. This
//! module holds no keys and does no I/O: callers pass the secrets in.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Bytes of the subject hash an unsubscribe token carries.
const SUBJECT_HASH_LEN: usize = 32;
/// Bytes of HMAC-SHA256 kept in an unsubscribe token.
const TAG_LEN: usize = 16;
/// Characters of an unsubscribe token: 48 bytes in unpadded base64.
const TOKEN_LEN: usize = (SUBJECT_HASH_LEN + TAG_LEN) * 4 / 3;
/// Separates unsubscribe tags from any other MAC made with the same key.
const UNSUBSCRIBE_LABEL: &[u8] = b"unsubscribe:";

/// The `X-Twilio-Signature` Twilio sends with a webhook to `url` carrying
/// the form parameters `params`: base64(HMAC-SHA1(auth_token, url ++ each
/// name ++ value, sorted by name)). `url` is the full URL Twilio called,
/// query string included. Repeated names are ordered by value.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac =
        HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` (the request's `X-Twilio-Signature`) is the signature
/// of this request under `auth_token`, compared in constant time. A
/// missing, empty or malformed header is never valid.
pub fn verify_twilio(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> bool {
    let Some(header) = header.filter(|h| !h.is_empty()) else {
        return false;
    };
    let expected = twilio_signature(auth_token, url, params);
    // Lengths differ only for malformed headers; the length of a valid
    // signature is public (28 characters).
    expected.as_bytes().ct_eq(header.as_bytes()).into()
}

fn unsubscribe_tag(key: &[u8], subject_hash: &[u8; SUBJECT_HASH_LEN]) -> [u8; TAG_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(UNSUBSCRIBE_LABEL);
    mac.update(subject_hash);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// A URL-safe token for an unsubscribe link naming the subject whose hash
/// is `subject_hash`: unpadded base64url of the hash followed by the first
/// 16 bytes of HMAC-SHA256(key, "unsubscribe:" ++ hash). 64 characters.
pub fn unsubscribe_token(key: &[u8], subject_hash: &[u8; SUBJECT_HASH_LEN]) -> String {
    let mut raw = [0u8; SUBJECT_HASH_LEN + TAG_LEN];
    raw[..SUBJECT_HASH_LEN].copy_from_slice(subject_hash);
    raw[SUBJECT_HASH_LEN..].copy_from_slice(&unsubscribe_tag(key, subject_hash));
    URL_SAFE_NO_PAD.encode(raw)
}

/// The subject hash named by `token` when it is a well-formed unsubscribe
/// token whose tag verifies under `key` (compared in constant time);
/// `None` for anything else.
pub fn open_unsubscribe_token(key: &[u8], token: &str) -> Option<[u8; SUBJECT_HASH_LEN]> {
    // Checked before decoding so that an oversized input costs nothing.
    if token.len() != TOKEN_LEN {
        return None;
    }
    let mut raw = [0u8; SUBJECT_HASH_LEN + TAG_LEN];
    let written = URL_SAFE_NO_PAD.decode_slice(token, &mut raw).ok()?;
    if written != raw.len() {
        return None;
    }
    let (hash, tag) = raw.split_at(SUBJECT_HASH_LEN);
    let hash: [u8; SUBJECT_HASH_LEN] = hash.try_into().ok()?;
    let expected = unsubscribe_tag(key, &hash);
    bool::from(expected.ct_eq(tag)).then_some(hash)
}

const BOUNCE_LABEL: &[u8] = b"bounce:";
/// Bytes of the tag in a bounce token.
const BOUNCE_TAG_LEN: usize = 10;
/// Hex characters in a bounce token: the message id and the tag.
const BOUNCE_TOKEN_LEN: usize = (16 + BOUNCE_TAG_LEN) * 2;

fn bounce_tag(key: &[u8], id: &[u8; 16]) -> [u8; BOUNCE_TAG_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(BOUNCE_LABEL);
    mac.update(id);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; BOUNCE_TAG_LEN];
    tag.copy_from_slice(&full[..BOUNCE_TAG_LEN]);
    tag
}

/// The token of a VERP envelope sender (`bounces+TOKEN@domain`) for the
/// message `id`: lower-case hex of the id followed by the first 10 bytes of
/// HMAC-SHA256(key, "bounce:" ++ id). 52 characters, so a short prefix
/// keeps the local part within 64; hex, because mail systems may change
/// the case of a local part.
pub fn bounce_token(key: &[u8], id: &[u8; 16]) -> String {
    let mut raw = [0u8; 16 + BOUNCE_TAG_LEN];
    raw[..16].copy_from_slice(id);
    raw[16..].copy_from_slice(&bounce_tag(key, id));
    hex::encode(raw)
}

/// The message id named by a bounce token whose tag verifies under `key`
/// (in constant time; any case); `None` for anything else.
pub fn open_bounce_token(key: &[u8], token: &str) -> Option<[u8; 16]> {
    if token.len() != BOUNCE_TOKEN_LEN {
        return None;
    }
    let raw = hex::decode(token.to_ascii_lowercase()).ok()?;
    let (id, tag) = raw.split_at(16);
    let id: [u8; 16] = id.try_into().ok()?;
    bool::from(bounce_tag(key, &id).ct_eq(tag)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // The worked example in Twilio's "Validating requests are coming from
    // Twilio": https://www.twilio.com/docs/usage/security#validating-requests
    // (auth token 12345, a <Gather> POST to this URL). The current page uses
    // +14158675310 as the caller; earlier revisions of the page (and the
    // helper libraries' validation guides) used +14158675309. Both
    // published signatures are checked.
    const DOC_TOKEN: &str = "12345";
    const DOC_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn doc_params(caller: &str) -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", caller),
            ("Digits", "1234"),
            ("From", caller),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn twilio_documented_example() {
        let params = doc_params("+14158675310");
        let expected = "GvWf1cFY/Q7PnoempGyD5oXAezc=";
        assert_eq!(twilio_signature(DOC_TOKEN, DOC_URL, &params), expected);
        assert!(verify_twilio(DOC_TOKEN, DOC_URL, &params, Some(expected)));

        let params = doc_params("+14158675309");
        let expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(twilio_signature(DOC_TOKEN, DOC_URL, &params), expected);
        assert!(verify_twilio(DOC_TOKEN, DOC_URL, &params, Some(expected)));
    }

    #[test]
    fn parameter_order_does_not_matter() {
        let mut params = doc_params("+14158675310");
        params.reverse();
        assert_eq!(
            twilio_signature(DOC_TOKEN, DOC_URL, &params),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        params.swap(1, 3);
        assert!(verify_twilio(
            DOC_TOKEN,
            DOC_URL,
            &params,
            Some("GvWf1cFY/Q7PnoempGyD5oXAezc=")
        ));
    }

    #[test]
    fn names_sort_case_sensitively() {
        // Unix byte order: upper case before lower case.
        let a = twilio_signature("t", "https://x/", &pairs(&[("b", "1"), ("A", "2")]));
        let mac = {
            let mut m = HmacSha1::new_from_slice(b"t").expect("any key length");
            m.update(b"https://x/A2b1");
            STANDARD.encode(m.finalize().into_bytes())
        };
        assert_eq!(a, mac);
    }

    #[test]
    fn bad_signatures_fail() {
        let params = doc_params("+14158675310");
        let good = "GvWf1cFY/Q7PnoempGyD5oXAezc=";
        let forged = "GvWf1cFY/Q7PnoempGyD5oXAezd=";
        assert!(!verify_twilio(DOC_TOKEN, DOC_URL, &params, Some(forged)));
        let other_url = "https://mycompany.com/myapp.php?foo=1&bar=3";
        assert!(!verify_twilio(DOC_TOKEN, other_url, &params, Some(good)));
        assert!(!verify_twilio("54321", DOC_URL, &params, Some(good)));
        assert!(!verify_twilio(DOC_TOKEN, DOC_URL, &params, None));
        assert!(!verify_twilio(DOC_TOKEN, DOC_URL, &params, Some("")));
        assert!(!verify_twilio(
            DOC_TOKEN,
            DOC_URL,
            &params,
            Some(&good[..27])
        ));
        assert!(!verify_twilio(
            DOC_TOKEN,
            DOC_URL,
            &params,
            Some(&good[..10])
        ));
        assert!(!verify_twilio(
            DOC_TOKEN,
            DOC_URL,
            &params,
            Some(&format!("{good}A"))
        ));
        assert!(!verify_twilio(
            DOC_TOKEN,
            DOC_URL,
            &params,
            Some("not base64 at all!")
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "9999".to_owned();
        assert!(!verify_twilio(DOC_TOKEN, DOC_URL, &tampered, Some(good)));
    }

    const KEY: &[u8] = b"an unsubscribe key of 32 bytes!!";

    fn hash(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn unsubscribe_token_round_trip() {
        let h: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let token = unsubscribe_token(KEY, &h);
        assert_eq!(token.len(), 64);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert_eq!(open_unsubscribe_token(KEY, &token), Some(h));
    }

    #[test]
    fn a_flipped_byte_fails() {
        let token = unsubscribe_token(KEY, &hash(0xA5));
        let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("own token decodes");
        for i in [0, 31, 32, 47] {
            let mut flipped = raw.clone();
            flipped[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&flipped);
            assert_eq!(open_unsubscribe_token(KEY, &forged), None, "byte {i}");
        }
        // A valid tag moved onto another subject does not open either.
        raw[..32].copy_from_slice(&hash(0x5A));
        assert_eq!(
            open_unsubscribe_token(KEY, &URL_SAFE_NO_PAD.encode(&raw)),
            None
        );
    }

    #[test]
    fn a_token_from_another_key_fails() {
        let token = unsubscribe_token(b"another key", &hash(1));
        assert_eq!(open_unsubscribe_token(KEY, &token), None);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let token = unsubscribe_token(KEY, &hash(2));
        for bad in [
            String::new(),
            "garbage".to_owned(),
            token[..63].to_owned(),
            format!("{token}A"),
            format!("{token}{token}"),
            "!".repeat(64),
            // Standard base64 alphabet instead of the URL-safe one.
            token.replace('-', "+").replace('_', "/"),
            format!("{}==", &token[..62]),
            "é".repeat(32),
        ] {
            if bad == token {
                continue;
            }
            assert_eq!(open_unsubscribe_token(KEY, &bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn opening_arbitrary_input_never_panics(s in any::<String>()) {
            prop_assert_eq!(open_unsubscribe_token(KEY, &s), None);
        }

        #[test]
        fn opening_arbitrary_64_char_input_never_panics(
            s in "[A-Za-z0-9_=+/é-]{60,68}"
        ) {
            let _ = open_unsubscribe_token(KEY, &s);
        }

        #[test]
        fn every_subject_round_trips(h in any::<[u8; 32]>(), key in any::<Vec<u8>>()) {
            let token = unsubscribe_token(&key, &h);
            prop_assert_eq!(open_unsubscribe_token(&key, &token), Some(h));
        }
    }

    #[test]
    fn bounce_tokens_open_under_their_key_in_any_case_only() {
        let id = *uuid::Uuid::from_u128(42).as_bytes();
        let token = bounce_token(KEY, &id);
        assert_eq!(token.len(), 52);
        assert_eq!(open_bounce_token(KEY, &token), Some(id));
        assert_eq!(open_bounce_token(KEY, &token.to_uppercase()), Some(id));
        assert_eq!(
            open_bounce_token(b"another key of 32 bytes, too!!!!", &token),
            None
        );
        let mut forged = token.clone().into_bytes();
        forged[51] = if forged[51] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            open_bounce_token(KEY, &String::from_utf8(forged).expect("ascii")),
            None
        );
        assert_eq!(open_bounce_token(KEY, &token[..50]), None);
        assert_eq!(
            open_bounce_token(KEY, "not hex at all, but fifty-two characters long, yes!"),
            None
        );
    }
}
