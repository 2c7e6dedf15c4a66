//! What tidings keeps: a case with its schedule and message history, the
//! messages waiting in the outbox, delivery marks, opt-outs, idempotent
//! answers. The store persists these; the engine produces them; nothing
//! here knows how they are stored.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::{Case, CaseId, Channel, Recipient};

/// The version of the stored records this binary writes.
pub const RECORD_VERSION: u32 = 1;

/// Identifies a case across sources: a token only ever sees its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CaseKey {
    pub source: String,
    pub id: CaseId,
}

impl CaseKey {
    pub fn new(source: &str, id: CaseId) -> Self {
        Self {
            source: source.to_owned(),
            id,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.source.len() + 1 + self.id.as_ref().len());
        k.extend_from_slice(self.source.as_bytes());
        k.push(0);
        k.extend_from_slice(self.id.as_ref().as_bytes());
        k
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let nul = b.iter().position(|x| *x == 0)?;
        let source = std::str::from_utf8(&b[..nul]).ok()?;
        let id = std::str::from_utf8(&b[nul + 1..]).ok()?.parse().ok()?;
        Some(Self::new(source, id))
    }
}

impl std::fmt::Display for CaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.id)
    }
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Failed,
    Cancelled,
}

/// Why a message goes out: an event (`created`, `resolved`, `note`,
/// `status`), a scheduled `progress` update (or digest), or an internal
/// `escalation`, a fresh case page `link`, or the confirmation of a pause
/// (`paused`). Stored and shown as those words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Created,
    Resolved,
    Note,
    Status,
    /// Entries stored before kinds were recorded were progress updates.
    #[default]
    Progress,
    Escalation,
    /// A fresh link to the case page, asked for on an expired one.
    Link,
    /// The confirmation of a pause set on the case page: when updates resume.
    Paused,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Resolved => "resolved",
            Self::Note => "note",
            Self::Status => "status",
            Self::Progress => "progress",
            Self::Escalation => "escalation",
            Self::Link => "link",
            Self::Paused => "paused",
        }
    }
}

impl std::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message in a case's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: Uuid,
    /// What caused it.
    pub kind: MessageKind,
    pub template: String,
    pub rule: Option<String>,
    /// Who on the case it was for (`customer`, `cc:0`, …).
    #[serde(default, skip_serializing_if = "Recipient::is_customer")]
    pub recipient: Recipient,
    pub channel: Channel,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub promised_next_update_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Internal escalations go to an operator, not to the customer.
    #[serde(default)]
    pub internal: bool,
    /// The messages of one update (one per channel, and fallbacks) share it.
    #[serde(default)]
    pub update: Option<Uuid>,
    /// The failed message of the same update this one replaces.
    #[serde(default)]
    pub fallback_for: Option<Uuid>,
    /// For a digest: the ids of all the cases it covered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<String>,
    /// The provider's id for the message (Twilio's message SID).
    #[serde(default)]
    pub provider_id: Option<String>,
    /// The provider's last delivery report (queued, sent, delivered, …).
    #[serde(default)]
    pub provider_status: Option<String>,
    /// How the promise this message made came out, once settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promise: Option<PromiseOutcome>,
}

/// How a promise ("next update by …") came out: the customer heard from
/// us by then (`kept`), after it (`late`, by how much), or the case closed
/// with no message before it came (`superseded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PromiseOutcome {
    Kept {
        at: DateTime<Utc>,
    },
    Late {
        at: DateTime<Utc>,
        late_by_secs: i64,
    },
    Superseded {
        at: DateTime<Utc>,
    },
}

impl PromiseOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kept { .. } => "kept",
            Self::Late { .. } => "late",
            Self::Superseded { .. } => "superseded",
        }
    }
}

/// Schedule bookkeeping for one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The last customer-facing message or public agent reply.
    pub last_contact_at: DateTime<Utc>,
    /// When the next progress update goes out, if one is planned.
    pub next_update_at: Option<DateTime<Utc>>,
    /// When the scheduler looks at the case next (the index key).
    pub due_at: Option<DateTime<Utc>>,
    /// The rule that matched last, and how many updates it sent in a row.
    pub rule: Option<String>,
    pub rule_updates: u32,
    pub escalated: bool,
    pub resolution_sent: bool,
    /// When the case was last resolved or closed (`None` while it is open);
    /// its page link stays valid for a while after.
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
}

/// A case with everything tidings keeps about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub v: u32,
    pub case: Case,
    pub updated_at: DateTime<Utc>,
    pub schedule: ScheduleState,
    pub messages: Vec<MessageRecord>,
    /// Idempotency records that hold this case's data, erased with it.
    #[serde(default)]
    pub idempotency_keys: Vec<String>,
}

impl CaseRecord {
    pub fn key(&self) -> CaseKey {
        CaseKey::new(&self.case.source, self.case.id.clone())
    }

    pub fn message_mut(&mut self, id: Uuid) -> Option<&mut MessageRecord> {
        self.messages.iter_mut().find(|m| m.id == id)
    }
}

/// A message waiting to be sent, already rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub v: u32,
    pub id: Uuid,
    pub case: CaseKey,
    pub channel: Channel,
    /// Who on the case it is for; `to` is their address on `channel`.
    #[serde(default, skip_serializing_if = "Recipient::is_customer")]
    pub recipient: Recipient,
    pub to_name: String,
    pub to: String,
    pub content: Content,
    /// Stable across retries and restarts, so a resend is recognisable.
    pub message_id: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// A digest also covers these cases; their histories hold the message too.
    #[serde(default)]
    pub also: Vec<CaseKey>,
    /// The recipient's zone, for quiet hours at send time.
    #[serde(default)]
    pub tz: Option<chrono_tz::Tz>,
    /// What the message was made from, so a fallback can render it again
    /// for another channel.
    #[serde(default)]
    pub update: Option<Uuid>,
    #[serde(default)]
    pub kind: MessageKind,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub promised: Option<DateTime<Utc>>,
    /// Internal messages (escalations) skip consent, quiet hours and gaps.
    #[serde(default)]
    pub internal: bool,
    /// The recipient's one-click opt-out link (email).
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// The `Message-ID` of the case's first email, which this one answers
    /// (`In-Reply-To`, `References`), so a mail client shows one thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// Where the customer's reply goes (`email.reply_to`), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl OutboxEntry {
    /// Every case this message belongs to.
    pub fn cases(&self) -> impl Iterator<Item = &CaseKey> {
        std::iter::once(&self.case).chain(self.also.iter())
    }
}

/// A provider accepted the message (see the `delivered` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredMark {
    pub at: DateTime<Utc>,
    pub provider_id: Option<String>,
}

/// A recipient who asked not to hear from us on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub at: DateTime<Utc>,
    pub via: OptOutVia,
}

/// How a recipient opted out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutVia {
    /// A STOP (or kin) by SMS.
    SmsStop,
    /// The signed link in an email.
    UnsubscribeLink,
    /// The provider said so (Twilio 21610).
    Provider,
    /// "Stop all updates from this help desk" on a case page.
    CasePage,
    /// A STOP (or kin) sent to us on WhatsApp.
    WhatsAppStop,
}

impl std::fmt::Display for OptOutVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SmsStop => "sms_stop",
            Self::UnsubscribeLink => "unsubscribe_link",
            Self::Provider => "provider",
            Self::CasePage => "case_page",
            Self::WhatsAppStop => "whatsapp_stop",
        })
    }
}

/// A recipient on one channel, as the store knows it: keyed, not in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Contact(pub [u8; 32]);

/// A recipient on `channel` as one source (help desk) knows them: an
/// opt-out filed under this key silences that source only.
pub fn scoped_contact_of(
    salt: &[u8; 32],
    source: &str,
    channel: Channel,
    address: &str,
) -> Contact {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(salt)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"source:");
    mac.update(source.as_bytes());
    mac.update(b"\0");
    mac.update(channel.as_str().as_bytes());
    mac.update(b":");
    mac.update(address.trim().to_lowercase().as_bytes());
    Contact(mac.finalize().into_bytes().into())
}

/// A stored answer for a retried request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub request_sha256: String,
    pub status: u16,
    pub body: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// A recipient on `channel`, keyed under `salt`: an HMAC of the channel and
/// the normalised address.
pub fn contact_of(salt: &[u8; 32], channel: Channel, address: &str) -> Contact {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(salt)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(channel.as_str().as_bytes());
    mac.update(b":");
    mac.update(address.trim().to_lowercase().as_bytes());
    Contact(mac.finalize().into_bytes().into())
}

/// A rendered email: what the mail channel turns into MIME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailText {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// A rendered SMS body, already within the segment budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsText {
    pub text: String,
}

/// A WhatsApp message, rendered both ways: the free-form `body` for inside
/// the 24-hour customer-service window (the customer wrote to us in the
/// last 24 hours), and the approved template for outside it, when there is
/// one. Which one goes is decided at send time (`engine::whatsapp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatsAppText {
    pub body: String,
    #[serde(default)]
    pub template: Option<ApprovedTemplate>,
}

/// A WhatsApp template approved by Meta, as Twilio's Content API names it:
/// its `ContentSid` (`HX` and 32 hex digits) and the values of its numbered
/// variables (`ContentVariables`), rendered from the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedTemplate {
    pub content_sid: String,
    pub variables: std::collections::BTreeMap<String, String>,
}

/// What a message says, rendered for its channel.
///
/// Stored without a tag: an email has a subject, a WhatsApp message a
/// `body`, an SMS only text. (Entries written before SMS had a shape of
/// their own carry an empty subject and read back as `Email`; `text`
/// serves both.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Email(EmailText),
    WhatsApp(WhatsAppText),
    Sms(SmsText),
}

impl Content {
    /// The plain text, whatever the channel (a WhatsApp message's
    /// free-form body).
    pub fn text(&self) -> &str {
        match self {
            Self::Email(e) => &e.text,
            Self::Sms(s) => &s.text,
            Self::WhatsApp(w) => &w.body,
        }
    }
}

/// One message as a channel sends it: the recipient, the rendered content,
/// and the ids that make a resend recognisable. Channels take this and
/// nothing else of tidings' records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// tidings' own id of the message (also in the SMS status callback).
    pub id: Uuid,
    /// The case it belongs to (named in the SMS status callback).
    pub case: CaseKey,
    pub to_name: String,
    /// The email address or E.164 number.
    pub to: String,
    pub content: Content,
    /// Fixed when the message was planned.
    pub message_id: String,
    /// The recipient's one-click opt-out link (email).
    pub unsubscribe_url: Option<String>,
    /// The `Message-ID` this one answers, the case's first email.
    pub thread: Option<String>,
    /// Where the customer's reply goes.
    pub reply_to: Option<String>,
}

impl OutboxEntry {
    /// What the channel needs to send this entry.
    pub fn message(&self) -> Message {
        Message {
            id: self.id,
            case: self.case.clone(),
            to_name: self.to_name.clone(),
            to: self.to.clone(),
            content: self.content.clone(),
            message_id: self.message_id.clone(),
            unsubscribe_url: self.unsubscribe_url.clone(),
            thread: self.thread.clone(),
            reply_to: self.reply_to.clone(),
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message; its id for it, when it gives one.
    Sent { provider_id: Option<String> },
    /// Worth trying again later: 4xx, connection loss, timeouts, 429.
    /// `retry_after` is the provider's own request, when it made one.
    Transient {
        reason: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Trying again will not help: 5xx, an invalid recipient. `opt_out`
    /// when the provider says the recipient unsubscribed.
    Permanent { reason: String, opt_out: bool },
}

impl Outcome {
    pub fn sent() -> Self {
        Self::Sent { provider_id: None }
    }

    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
            opt_out: false,
        }
    }
}
