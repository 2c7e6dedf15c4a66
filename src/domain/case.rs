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
        lettre::Address::from_str(trimmed)
            .map(|a| Self(a.to_string()))
            .map_err(|_| "is not a valid email address".into())
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
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
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
                Channel::Sms => self.phone.is_some(),
            }
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
    pub assignee: Option<String>,
    pub eta: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub latest_note: Option<Note>,
    pub created_at: DateTime<Utc>,
}

/// The body of `PUT /v1/cases/{id}` as it arrives, before validation.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseInput {
    #[schema(min_length = 1, max_length = 500)]
    pub subject: String,
    #[serde(default = "default_status")]
    pub status: Status,
    #[serde(default)]
    pub priority: Priority,
    pub customer: CustomerInput,
    #[serde(default)]
    #[schema(max_length = 200)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub eta: Option<DateTime<Utc>>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

fn default_status() -> Status {
    Status::Open
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[serde(default)]
    #[schema(example = "maria.hernandez@example.com")]
    pub email: Option<String>,
    #[serde(default)]
    #[schema(example = "+12125550143")]
    pub phone: Option<String>,
    /// IANA time zone; the configured default when absent.
    #[serde(default)]
    #[schema(example = "America/New_York")]
    pub timezone: Option<String>,
    /// Language tag; the configured default when absent.
    #[serde(default)]
    #[schema(example = "en")]
    pub locale: Option<String>,
    /// Allowed channels in order of preference; every channel with an
    /// address when absent.
    #[serde(default)]
    pub channels: Option<Vec<Channel>>,
}

/// Defaults applied where the customer's record is silent.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub timezone: Tz,
    pub locale: Locale,
}

fn check_text(field: &str, value: &str, max: usize, required: bool) -> Result<String, FieldError> {
    let trimmed = value.trim();
    if required && trimmed.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    // The limit counts what was sent, as the OpenAPI document's maxLength does.
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(trimmed.to_owned())
}

impl CaseInput {
    /// Validates the input into a case. `created_at` is kept from an earlier
    /// version of the case when it is replaced.
    pub fn into_case(
        self,
        id: CaseId,
        source: &str,
        defaults: &Defaults,
        created_at: DateTime<Utc>,
        latest_note: Option<Note>,
    ) -> Result<Case, FieldError> {
        let subject = check_text("subject", &self.subject, 500, true)?;
        let customer = self.customer.validate(defaults)?;
        let assignee = match self.assignee {
            Some(a) => Some(check_text("assignee", &a, 200, false)?).filter(|a| !a.is_empty()),
            None => None,
        };
        if self.tags.len() > 50 {
            return Err(FieldError::new("tags", "must hold at most 50 tags"));
        }
        for (i, tag) in self.tags.iter().enumerate() {
            check_text(&format!("tags[{i}]"), tag, 100, true)?;
        }
        if self.fields.len() > 100 {
            return Err(FieldError::new("fields", "must hold at most 100 entries"));
        }
        Ok(Case {
            id,
            source: source.to_owned(),
            subject,
            status: self.status,
            priority: self.priority,
            customer,
            assignee,
            eta: self.eta,
            tags: self.tags,
            fields: self.fields,
            latest_note,
            created_at,
        })
    }
}

impl CustomerInput {
    fn validate(self, defaults: &Defaults) -> Result<Customer, FieldError> {
        let name = check_text("customer.name", &self.name, 200, true)?;
        let email = self
            .email
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.parse::<EmailAddress>())
            .transpose()
            .map_err(|m| FieldError::new("customer.email", m))?;
        let phone = self
            .phone
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse::<E164>())
            .transpose()
            .map_err(|m| FieldError::new("customer.phone", m))?;
        let timezone = match self.timezone {
            Some(tz) => parse_timezone(&tz).map_err(|m| FieldError::new("customer.timezone", m))?,
            None => defaults.timezone,
        };
        let locale = match self.locale {
            Some(l) => l
                .parse::<Locale>()
                .map_err(|m| FieldError::new("customer.locale", m))?,
            None => defaults.locale.clone(),
        };
        if email.is_none() && phone.is_none() {
            return Err(FieldError::new(
                "customer.email",
                "the customer needs an email address or a phone number",
            ));
        }
        let channels = match self.channels {
            Some(list) => {
                let mut seen = Vec::new();
                for c in list {
                    if !seen.contains(&c) {
                        seen.push(c);
                    }
                }
                seen
            }
            None => [Channel::Email, Channel::Sms]
                .into_iter()
                .filter(|c| match c {
                    Channel::Email => email.is_some(),
                    Channel::Sms => phone.is_some(),
                })
                .collect(),
        };
        for c in &channels {
            let missing = match c {
                Channel::Email => email.is_none().then_some("customer.email"),
                Channel::Sms => phone.is_none().then_some("customer.phone"),
            };
            if let Some(field) = missing {
                return Err(FieldError::new(
                    field,
                    format!("is required when channels include {}", c.as_str()),
                ));
            }
        }
        Ok(Customer {
            name,
            email,
            phone,
            timezone,
            locale,
            channels,
        })
    }
}

/// An event a ticket system reports on a case.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventInput {
    /// A public agent note; the customer hears of it when a `note` message is configured.
    Note {
        body: String,
        #[serde(default)]
        author: Option<String>,
    },
    /// An agent answered the customer directly: the update clock starts again.
    AgentReply {},
    /// The case moved to another status.
    Status { status: Status },
    /// A new estimate of when the case will be solved (`null` clears it).
    Eta { eta: Option<DateTime<Utc>> },
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

impl EventInput {
    pub fn validate(self) -> Result<Event, FieldError> {
        Ok(match self {
            Self::Note { body, author } => Event::Note {
                body: check_text("body", &body, 10_000, true)?,
                author: match author {
                    Some(a) => {
                        Some(check_text("author", &a, 200, false)?).filter(|a| !a.is_empty())
                    }
                    None => None,
                },
            },
            Self::AgentReply {} => Event::AgentReply,
            Self::Status { status } => Event::Status(status),
            Self::Eta { eta } => Event::Eta(eta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids() {
        assert!("CASE-1:a_b.c".parse::<CaseId>().is_ok());
        assert!("".parse::<CaseId>().is_err());
        assert!("a/b".parse::<CaseId>().is_err());
        assert!("x".repeat(129).parse::<CaseId>().is_err());
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
