//! Validated domain types: a case, its customer, and the values they carry.
//!
//! Everything here is parsed once at the edge (API, simulate input) and never
//! re-validated inside: a `CaseId`, `EmailAddress`, `E164` or `Locale` cannot
//! hold an invalid value. This module knows nothing of storage, rules or I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A validation failure naming the offending field (JSON path, dotted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A case identifier as the ticket system names it: 1–128 characters of
/// `A–Z a–z 0–9 . _ : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(String);
string_newtype!(CaseId);

impl FromStr for CaseId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 128 {
            return Err("must be 1 to 128 characters".into());
        }
        if s.bytes().all(|b| b == b'.') {
            return Err("may not be only dots".into());
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err("may only hold letters, digits, '.', '_', ':' and '-'".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// An email address that lettre accepts as a recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);
string_newtype!(EmailAddress);

impl FromStr for EmailAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let trimmed = s.trim();
        if trimmed.len() > 254 {
            return Err("is longer than 254 characters".into());
        }
        let address = lettre::Address::from_str(trimmed)
            .map_err(|_| "is not a valid email address".to_owned())?;
        // What a relay without SMTPUTF8 delivers: a dot-atom local part in
        // ASCII (no quoted strings, no spaces) at a host name (no address
        // literal); a domain in Unicode goes out in its ASCII (IDNA) form.
        let local = address.user();
        if !local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(
                "is not deliverable: the part before @ must be plain ASCII letters, digits and !#$%&'*+-/=?^_`{|}~. (no quotes, spaces or other characters)"
                    .into(),
            );
        }
        let domain = address.domain();
        if domain.starts_with('[') {
            return Err("is not deliverable: use a domain name, not an address literal".into());
        }
        let ascii = match url::Host::parse(domain) {
            Ok(url::Host::Domain(d)) if d.contains('.') => d,
            _ => return Err("is not deliverable: the domain is not a valid host name".into()),
        };
        Ok(Self(format!("{local}@{ascii}")))
    }
}

/// A phone number in E.164 form (`+` and country code), checked against the
/// numbering plan of its country.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct E164(String);
string_newtype!(E164);

impl FromStr for E164 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const MSG: &str = "must be an E.164 phone number such as +12125550143";
        if !s.starts_with('+') || s.len() > 16 || !s[1..].bytes().all(|b| b.is_ascii_digit()) {
            return Err(MSG.into());
        }
        let number = phonenumber::parse(None, s).map_err(|_| MSG.to_owned())?;
        if !phonenumber::is_valid(&number) {
            return Err("is not a valid phone number for its country code".into());
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }
}

/// Whether `value` is a Twilio SID of the kind `prefix` names (`AC` an
/// account, `MG` a messaging service, `HX` a content template): the prefix
/// and 32 hexadecimal digits.
pub fn is_twilio_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34
        && value.starts_with(prefix)
        && value[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A BCP 47-style language tag: `en`, `id`, `pl`, `tl`, `pt-BR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locale(String);
string_newtype!(Locale);

impl FromStr for Locale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const MSG: &str = "must be a language tag such as en, id, pl, tl or pt-BR";
        let mut parts = s.split(['-', '_']);
        let lang = parts.next().unwrap_or_default();
        if !(2..=3).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(MSG.into());
        }
        let mut out = lang.to_ascii_lowercase();
        for part in parts {
            if !(2..=8).contains(&part.len()) || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(MSG.into());
            }
            out.push('-');
            if part.len() == 2 {
                out.push_str(&part.to_ascii_uppercase());
            } else {
                out.push_str(part);
            }
        }
        Ok(Self(out))
    }
}

impl Locale {
    /// The tag, then each shorter prefix: `pt-BR` → `pt-BR`, `pt`.
    pub fn fallbacks(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        let mut cut = Some(s.len());
        std::iter::from_fn(move || {
            let end = cut?;
            let out = &s[..end];
            cut = out.rfind('-');
            Some(out)
        })
    }

    /// The primary language subtag.
    pub fn language(&self) -> &str {
        self.0.split('-').next().unwrap_or(&self.0)
    }
}

/// Parses an IANA time zone name.
pub fn parse_timezone(s: &str) -> Result<Tz, String> {
    Tz::from_str(s).map_err(|_| "must be an IANA time zone such as Europe/Warsaw".to_owned())
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    PendingCustomer,
    OnHold,
    Resolved,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::PendingCustomer => "pending_customer",
            Self::OnHold => "on_hold",
            Self::Resolved => "resolved",
            Self::Closed => "closed",
        }
    }

    /// Statuses that get progress updates from rules that do not name a status.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Open | Self::PendingCustomer)
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Urgent => "urgent",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    /// WhatsApp through Twilio, to the customer's phone number.
    #[serde(rename = "whatsapp")]
    WhatsApp,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::WhatsApp => "whatsapp",
        }
    }

    /// Whether the channel reaches the customer's phone number.
    pub fn uses_phone(self) -> bool {
        matches!(self, Self::Sms | Self::WhatsApp)
    }
}

/// The customer a case belongs to, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    pub email: Option<EmailAddress>,
    pub phone: Option<E164>,
    pub timezone: Tz,
    pub locale: Locale,
    /// The channels the customer allows, in order of preference.
    pub channels: Vec<Channel>,
}

impl Customer {
    /// Whether the customer allows `channel` and we have an address for it.
    pub fn reachable_by(&self, channel: Channel) -> bool {
        self.channels.contains(&channel)
            && match channel {
                Channel::Email => self.email.is_some(),
                Channel::Sms | Channel::WhatsApp => self.phone.is_some(),
            }
    }
}

/// Who on a case a message is for: the customer, or one of the people
/// copied (`cc`, by position). Stored and shown as `customer` or `cc:N`,
/// never as an address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recipient {
    #[default]
    Customer,
    Cc(u16),
}

impl Recipient {
    pub fn is_customer(&self) -> bool {
        *self == Self::Customer
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Customer => f.write_str("customer"),
            Self::Cc(n) => write!(f, "cc:{n}"),
        }
    }
}

impl FromStr for Recipient {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "customer" => Ok(Self::Customer),
            _ => s
                .strip_prefix("cc:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cc)
                .ok_or_else(|| "must be `customer` or `cc:N`".to_owned()),
        }
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// The latest public note an agent wrote on the case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Note {
    pub body: String,
    pub author: Option<String>,
    pub at: DateTime<Utc>,
}

/// A case as tidings keeps it: the ticket system's facts, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub id: CaseId,
    pub source: String,
    pub subject: String,
    pub status: Status,
    pub priority: Priority,
    pub customer: Customer,
    /// People copied on the case, each with their own addresses, channels,
    /// zone and language.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Customer>,
    pub assignee: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub latest_note: Option<Note>,
    pub created_at: DateTime<Utc>,
    /// What the customer chose on their case page; kept when the ticket
    /// system replaces the case.
    #[serde(default, skip_serializing_if = "CasePrefs::is_default")]
    pub prefs: CasePrefs,
}

impl Case {
    /// The person `who` names, if the case has them.
    pub fn person(&self, who: Recipient) -> Option<&Customer> {
        match who {
            Recipient::Customer => Some(&self.customer),
            Recipient::Cc(n) => self.cc.get(usize::from(n)),
        }
    }

    /// Everyone the case's messages go to: the customer, then each CC.
    pub fn recipients(&self) -> impl Iterator<Item = (Recipient, &Customer)> {
        std::iter::once((Recipient::Customer, &self.customer)).chain(
            self.cc
                .iter()
                .enumerate()
                .map(|(i, c)| (Recipient::Cc(i as u16), c)),
        )
    }
}

/// The customer's own choices for one case (from their case page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasePrefs {
    /// The channels this case may use, when narrowed on the page
    /// (within the customer's channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Channel>>,
    /// No progress update, note or status message before this instant;
    /// updates resume by themselves at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,
    /// No more messages to the customer about this case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

impl CasePrefs {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the customer's choices let `channel` carry this case.
    pub fn allows(&self, channel: Channel) -> bool {
        !self.stopped && self.channels.as_ref().is_none_or(|c| c.contains(&channel))
    }

    /// Whether updates are paused at `now`.
    pub fn paused_at(&self, now: DateTime<Utc>) -> bool {
        self.paused_until.is_some_and(|u| now < u)
    }
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Note {
        body: String,
        author: Option<String>,
    },
    AgentReply,
    Status(Status),
    Eta(Option<DateTime<Utc>>),
}

impl Event {
    /// The event's `type` as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Note { .. } => "note",
            Self::AgentReply => "agent_reply",
            Self::Status(_) => "status",
            Self::Eta(_) => "eta",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CustomerInput, Defaults};

    #[test]
    fn case_ids() {
        assert!("CASE-1:a_b.c".parse::<CaseId>().is_ok());
        assert!("".parse::<CaseId>().is_err());
        assert!("a/b".parse::<CaseId>().is_err());
        assert!("x".repeat(129).parse::<CaseId>().is_err());
        // Would name a folder in a path or URL.
        assert!(".".parse::<CaseId>().is_err());
        assert!("..".parse::<CaseId>().is_err());
        assert!("..a".parse::<CaseId>().is_ok());
    }

    #[test]
    fn phones() {
        assert_eq!(
            "+12125550143".parse::<E164>().map(|p| p.to_string()),
            Ok("+12125550143".to_owned())
        );
        assert!("+48601234567".parse::<E164>().is_ok());
        assert!("2125550143".parse::<E164>().is_err());
        assert!("+1 212 555 0143".parse::<E164>().is_err());
        assert!("+999999".parse::<E164>().is_err());
    }

    #[test]
    fn emails() {
        assert!("maria@example.com".parse::<EmailAddress>().is_ok());
        assert!("maria@".parse::<EmailAddress>().is_err());
        assert!("a\r\nBcc: x@y.z".parse::<EmailAddress>().is_err());
        assert!(
            "o'brien+case@mail.example.co.uk"
                .parse::<EmailAddress>()
                .is_ok()
        );
        // Accepted by the RFC, refused by relays without SMTPUTF8 or never
        // deliverable: refused at intake instead of failing at send.
        for bad in [
            "\"a b\"@example.com",
            "a@[127.0.0.1]",
            "ä@bücher.example",
            "a..b@example.com",
            ".a@example.com",
            "a@localhost",
        ] {
            assert!(bad.parse::<EmailAddress>().is_err(), "{bad}");
        }
        // A Unicode domain goes out in its ASCII form.
        assert_eq!(
            "maria@bücher.example"
                .parse::<EmailAddress>()
                .map(|a| a.to_string()),
            Ok("maria@xn--bcher-kva.example".to_owned())
        );
    }

    #[test]
    fn locales_fall_back_to_language() {
        let l: Locale = "pt_br".parse().expect("valid");
        assert_eq!(l.to_string(), "pt-BR");
        assert_eq!(l.fallbacks().collect::<Vec<_>>(), vec!["pt-BR", "pt"]);
        assert!("english!".parse::<Locale>().is_err());
    }

    #[test]
    fn channels_need_addresses() {
        let defaults = Defaults {
            timezone: Tz::UTC,
            locale: "en".parse().expect("valid"),
        };
        let input = CustomerInput {
            name: "Ana".into(),
            email: Some("ana@example.com".into()),
            phone: None,
            timezone: None,
            locale: None,
            channels: Some(vec![Channel::Sms]),
        };
        let err = input.validate(&defaults).expect_err("sms without phone");
        assert_eq!(err.field, "customer.phone");
    }
}

/// How the company signs its messages; exposed to templates as `company`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Company {
    pub name: String,
    #[serde(default)]
    pub support_url: Option<String>,
}
