//! Records for the storage suites: cases, their records, outbox entries
//! and stored answers, at fixed instants (nothing reads the wall clock).

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use tidings::domain::{
    Case, CaseInput, CaseKey, CaseRecord, Channel, Content, CustomerInput, Defaults,
    DeliveryStatus, EmailText, IdempotentResponse, MessageRecord, OutboxEntry, Priority,
    RECORD_VERSION, ScheduleState, Status, parse_timezone,
};
use tidings::store::{Commit, Storage};
use uuid::Uuid;

pub const MARIA_EMAIL: &str = "maria.hernandez@example.com";
pub const MARIA_PHONE: &str = "+12125550143";
pub const JAN_EMAIL: &str = "jan.kowalski@example.org";
pub const JAN_PHONE: &str = "+48601987654";

/// `minutes` after a fixed instant (2027-01-15T08:00:00Z).
pub fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).expect("a representable instant")
}

pub fn key(id: &str) -> CaseKey {
    CaseKey::new("helpdesk", id.parse().expect("a valid case id"))
}

/// A validated case of source `helpdesk`, built the way intake builds one.
pub fn case(id: &str, email: Option<&str>, phone: Option<&str>) -> Case {
    let input = CaseInput {
        subject: "Replacement router has not shipped".into(),
        status: Status::Open,
        priority: Priority::High,
        customer: CustomerInput {
            name: "Maria Hernandez".into(),
            email: email.map(Into::into),
            phone: phone.map(Into::into),
            timezone: Some("America/New_York".into()),
            locale: Some("en".into()),
            channels: None,
        },
        cc: Vec::new(),
        assignee: Some("Jordan".into()),
        eta: Some(at(3 * 24 * 60)),
        tags: vec!["hardware".into()],
        fields: [("order".to_owned(), serde_json::json!("RMA-20931"))].into(),
    };
    let defaults = Defaults {
        timezone: parse_timezone("UTC").expect("UTC is a time zone"),
        locale: "en".parse().expect("a valid locale"),
    };
    input
        .into_case(
            id.parse().expect("a valid case id"),
            "helpdesk",
            &defaults,
            at(-60),
            None,
        )
        .expect("the sample case is valid")
}

/// A stored case whose scheduler looks at it next at `due`, with one sent
/// message in its history.
pub fn record(case: Case, due: Option<DateTime<Utc>>) -> CaseRecord {
    CaseRecord {
        v: RECORD_VERSION,
        case,
        updated_at: at(0),
        schedule: ScheduleState {
            last_contact_at: at(-60),
            next_update_at: due,
            due_at: due,
            rule: Some("slow".into()),
            rule_updates: 1,
            escalated: false,
            resolution_sent: false,
            closed_at: None,
        },
        messages: vec![MessageRecord {
            id: Uuid::from_u128(0xACC),
            kind: tidings::domain::MessageKind::Created,
            template: "acknowledgement".into(),
            rule: None,
            channel: Channel::Email,
            recipient: Default::default(),
            status: DeliveryStatus::Sent,
            attempts: 1,
            due_at: at(-60),
            sent_at: Some(at(-59)),
            promised_next_update_at: due,
            error: None,
            internal: false,
            update: Some(Uuid::from_u128(0xACC0)),
            fallback_for: None,
            covers: Vec::new(),
            provider_id: None,
            provider_status: None,
            promise: None,
        }],
        idempotency_keys: Vec::new(),
    }
}

/// Maria's case `id` (email and phone), due at `due`.
pub fn maria(id: &str, due: Option<DateTime<Utc>>) -> CaseRecord {
    record(case(id, Some(MARIA_EMAIL), Some(MARIA_PHONE)), due)
}

/// Jan's case `id` (email and phone), due at `due`.
pub fn jan(id: &str, due: Option<DateTime<Utc>>) -> CaseRecord {
    record(case(id, Some(JAN_EMAIL), Some(JAN_PHONE)), due)
}

/// An email for `case` waiting in the outbox, id `n`, due at `due`.
pub fn entry(case: &CaseKey, n: u128, due: DateTime<Utc>) -> OutboxEntry {
    OutboxEntry {
        v: RECORD_VERSION,
        id: Uuid::from_u128(n),
        case: case.clone(),
        channel: Channel::Email,
        recipient: Default::default(),
        to_name: "Maria Hernandez".into(),
        to: MARIA_EMAIL.into(),
        content: Content::Email(EmailText {
            subject: format!("Case {}: still on it", case.id),
            text: "We are still working on your case.".into(),
            html: None,
        }),
        message_id: format!("<{n}@tidings.example.com>"),
        attempts: 0,
        next_attempt_at: due,
        also: Vec::new(),
        tz: None,
        update: Some(Uuid::from_u128(n << 8)),
        kind: tidings::domain::MessageKind::Progress,
        template: "progress".into(),
        rule: Some("slow".into()),
        promised: Some(due + Duration::days(2)),
        internal: false,
        unsubscribe_url: Some("https://tidings.example.com/unsubscribe/x".into()),
        thread: Some("<first@example.com>".into()),
        reply_to: None,
    }
}

/// A stored answer to a request made at `when`.
pub fn answer(when: DateTime<Utc>, case: &str) -> IdempotentResponse {
    IdempotentResponse {
        request_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        status: 201,
        body: serde_json::json!({ "id": case, "email": MARIA_EMAIL }),
        at: when,
    }
}

/// Drops outbox entries (as the outbox indexes them).
pub fn removing(entries: &[&OutboxEntry]) -> Vec<(Uuid, DateTime<Utc>)> {
    entries.iter().map(|e| (e.id, e.next_attempt_at)).collect()
}

pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

pub fn no_busy() -> HashSet<Uuid> {
    HashSet::new()
}

pub fn commit_record(store: &dyn Storage, record: &CaseRecord) {
    store
        .commit(&record.key(), &Commit::record(record.clone()))
        .expect("the commit applies");
}
