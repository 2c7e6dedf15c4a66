//! The API's input shapes as they arrive (`CaseInput`, `EventInput`) and
//! their validation into the domain types, with defaults for what a ticket
//! system leaves out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

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
    /// People copied on the case (at most 10): each gets the customer's
    /// messages in their own language and zone, on their own channels.
    #[serde(default)]
    #[schema(max_items = 10)]
    pub cc: Vec<CustomerInput>,
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

/// The most people one case may copy.
pub const MAX_CC: usize = 10;

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

impl From<&Customer> for CustomerInput {
    /// A validated person as input again (a case replaced keeps them).
    fn from(c: &Customer) -> Self {
        Self {
            name: c.name.clone(),
            email: c.email.as_ref().map(ToString::to_string),
            phone: c.phone.as_ref().map(ToString::to_string),
            timezone: Some(c.timezone.name().to_owned()),
            locale: Some(c.locale.to_string()),
            channels: Some(c.channels.clone()),
        }
    }
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
    // Direction overrides and marks (U+202E and kin) would let a case
    // field reorder what a mail client shows in a subject or a name.
    Ok(trimmed.chars().filter(|c| !is_bidi_control(*c)).collect())
}

/// The Unicode bidirectional formatting characters.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
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
        if self.cc.len() > MAX_CC {
            return Err(FieldError::new(
                "cc",
                format!("must hold at most {MAX_CC} people"),
            ));
        }
        let cc = self
            .cc
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.validate_as(&format!("cc[{i}]"), defaults))
            .collect::<Result<Vec<_>, _>>()?;
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
            cc,
            assignee,
            eta: self.eta,
            tags: self.tags,
            fields: self.fields,
            latest_note,
            created_at,
            prefs: super::CasePrefs::default(),
        })
    }
}

impl CustomerInput {
    pub(crate) fn validate(self, defaults: &Defaults) -> Result<Customer, FieldError> {
        self.validate_as("customer", defaults)
    }

    /// Validates a person given at `at` (`customer`, `cc[1]`): errors name
    /// their field under it.
    pub(crate) fn validate_as(self, at: &str, defaults: &Defaults) -> Result<Customer, FieldError> {
        let f = |name: &str| format!("{at}.{name}");
        let name = check_text(&f("name"), &self.name, 200, true)?;
        let email = self
            .email
            .filter(|e| !e.trim().is_empty())
            .map(|e| e.parse::<EmailAddress>())
            .transpose()
            .map_err(|m| FieldError::new(f("email"), m))?;
        let phone = self
            .phone
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse::<E164>())
            .transpose()
            .map_err(|m| FieldError::new(f("phone"), m))?;
        let timezone = match self.timezone {
            Some(tz) => parse_timezone(&tz).map_err(|m| FieldError::new(f("timezone"), m))?,
            None => defaults.timezone,
        };
        let locale = match self.locale {
            Some(l) => l
                .parse::<Locale>()
                .map_err(|m| FieldError::new(f("locale"), m))?,
            None => defaults.locale.clone(),
        };
        if email.is_none() && phone.is_none() {
            return Err(FieldError::new(
                f("email"),
                "needs an email address or a phone number",
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
                    Channel::Sms | Channel::WhatsApp => phone.is_some(),
                })
                .collect(),
        };
        for c in &channels {
            let missing = match c {
                Channel::Email => email.is_none().then(|| f("email")),
                Channel::Sms | Channel::WhatsApp => phone.is_none().then(|| f("phone")),
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
    fn bidi_controls_never_reach_a_subject_or_a_name() {
        let got = check_text(
            "subject",
            "Invoice \u{202E}fdp.exe\u{202C} \u{200F}ok",
            500,
            true,
        );
        assert_eq!(got, Ok("Invoice fdp.exe ok".to_owned()));
        assert_eq!(check_text("name", "Zoë", 10, true), Ok("Zoë".to_owned()));
    }
}
