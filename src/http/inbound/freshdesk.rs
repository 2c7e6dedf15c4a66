//! Freshdesk: webhooks an automation rule's *Trigger webhook* action sends
//! with the body the admin pastes (`packaging/inbound/freshdesk-automation-body.json`,
//! placeholders from Freshdesk's "Understanding dynamic content and
//! placeholders", <https://support.freshdesk.com/support/solutions/articles/43170>;
//! the action: <https://support.freshdesk.com/support/solutions/articles/132589-using-webhooks-in-automation-rules>).
//!
//! Freshdesk signs nothing: the action adds a custom header,
//! `X-Tidings-Token: <secret>`, compared in constant time. It names no
//! delivery either: the hash of the raw body is the idempotency key, so a
//! retry of the same body changes nothing. Statuses arrive as numbers or
//! as their names (2 open, 3 pending, 4 resolved, 5 closed; 6 and up are
//! the account's own), priorities as 1–4 or Low/Medium/High/Urgent. A
//! placeholder Freshdesk left unrendered (`{{…}}`) reads as empty.

use axum::http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Mapped, Person, Refusal, case_id, case_input, header, priority, some, status};
use crate::config::{InboundEntry, InboundSystem};
use crate::domain::normalise::html_to_text;
use crate::domain::{EventInput, Priority, Status};

/// Freshdesk's built-in statuses, by number and by name.
const STATUSES: &[(&str, Status)] = &[
    ("2", Status::Open),
    ("open", Status::Open),
    ("3", Status::PendingCustomer),
    ("pending", Status::PendingCustomer),
    ("4", Status::Resolved),
    ("resolved", Status::Resolved),
    ("5", Status::Closed),
    ("closed", Status::Closed),
];

/// The header the automation's webhook action carries the secret in.
pub const TOKEN_HEADER: &str = "x-tidings-token";

#[derive(Debug, Deserialize)]
struct Body {
    ticket: Ticket,
}

#[derive(Debug, Deserialize)]
struct Ticket {
    id: serde_json::Value,
    subject: String,
    status: serde_json::Value,
    #[serde(default)]
    priority: serde_json::Value,
    #[serde(default)]
    agent: String,
    requester: Requester,
    #[serde(default)]
    latest_public_comment: String,
}

#[derive(Debug, Deserialize)]
struct Requester {
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    mobile: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    language: String,
}

/// Checks the shared-secret header; returns the delivery id (the body's
/// hash: Freshdesk names no delivery).
pub(super) fn verify(
    entry: &InboundEntry,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    let given = header(headers, TOKEN_HEADER)?;
    let want = Sha256::digest(&entry.secret);
    let got = Sha256::digest(given.as_bytes());
    if !bool::from(want.ct_eq(&got)) || entry.secret.is_empty() {
        return Err(Refusal::unsigned(format!(
            "the {TOKEN_HEADER} header does not match"
        )));
    }
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(body))))
}

/// A placeholder's rendering: empty when Freshdesk left it as `{{…}}`.
fn rendered(s: &str) -> &str {
    let t = s.trim();
    if t.starts_with("{{") && t.ends_with("}}") {
        ""
    } else {
        t
    }
}

/// A number or a name as text.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => rendered(s).to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Freshdesk's priorities: 1 low, 2 medium, 3 high, 4 urgent.
const PRIORITIES: &[(&str, Priority)] = &[
    ("1", Priority::Low),
    ("low", Priority::Low),
    ("2", Priority::Normal),
    ("medium", Priority::Normal),
    ("3", Priority::High),
    ("high", Priority::High),
    ("4", Priority::Urgent),
    ("urgent", Priority::Urgent),
];

/// The body (our template, filled in) in our terms.
pub(super) fn map(entry: &InboundEntry, body: &[u8]) -> Result<Mapped, Refusal> {
    let shape = |e: serde_json::Error| Refusal::shape(InboundSystem::Freshdesk, &e);
    let b: Body = serde_json::from_slice(body).map_err(shape)?;
    let t = &b.ticket;
    let id = case_id(&t.id).map_err(shape)?;
    let mut unmapped = Vec::new();
    let status = status(entry, STATUSES, &text(&t.status), &mut unmapped);
    let priority = priority(entry, PRIORITIES, &text(&t.priority), &mut unmapped);
    let r = &t.requester;
    let customer = Person {
        name: some(rendered(&r.name)).unwrap_or_else(|| "Customer".to_owned()),
        email: some(rendered(&r.email)),
        phone: &[rendered(&r.mobile), rendered(&r.phone)],
        time_zone: rendered(&r.time_zone),
        language: rendered(&r.language),
    }
    .read(entry, &mut unmapped);
    let note = html_to_text(rendered(&t.latest_public_comment));
    let event = (!note.trim().is_empty()).then(|| EventInput::Note {
        body: note,
        author: some(rendered(&t.agent)),
    });
    Ok(Mapped {
        id,
        case: case_input(
            rendered(&t.subject).to_owned(),
            status,
            priority,
            customer,
            some(rendered(&t.agent)),
        ),
        status,
        event,
        unmapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mapping;
    use crate::domain::Defaults;

    fn entry() -> InboundEntry {
        InboundEntry {
            system: InboundSystem::Freshdesk,
            source: "helpdesk".into(),
            secret: b"freshdesk-shared-token-0003".to_vec(),
            mapping: Mapping {
                default_region: Some("GB".into()),
                defaults: Defaults {
                    timezone: chrono_tz::UTC,
                    locale: "en".parse().expect("locale"),
                },
                statuses: [("7".to_owned(), Status::OnHold)].into(),
                channels: None,
                priorities: Default::default(),
                fields: Default::default(),
                public_comments: Default::default(),
            },
        }
    }

    fn body(status: serde_json::Value, priority: serde_json::Value, comment: &str) -> Vec<u8> {
        serde_json::json!({
            "ticket": {"id": "1207", "subject": "Boiler service", "status": status, "priority": priority,
                "agent": "Priya Agent", "latest_public_comment": comment,
                "requester": {"name": "Oliver Smith", "email": "oliver@example.com", "phone": "",
                    "mobile": "07911 123456", "time_zone": "London", "language": "{{ticket.requester.language}}"}}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_ticket_reads_as_a_case_with_normalised_contact_details() {
        let m = map(&entry(), &body("Open".into(), 4.into(), "")).expect("maps");
        assert_eq!(m.id.to_string(), "1207");
        assert_eq!(m.status, Some(Status::Open));
        assert_eq!(m.case.priority, Priority::Urgent);
        assert_eq!(m.case.customer.phone.as_deref(), Some("+447911123456"));
        assert_eq!(m.case.customer.timezone.as_deref(), Some("Europe/London"));
        assert_eq!(
            m.case.customer.locale.as_deref(),
            Some("en"),
            "an unrendered placeholder is empty"
        );
        assert!(m.event.is_none() && m.unmapped.is_empty());
    }

    #[test]
    fn statuses_and_priorities_read_as_numbers_or_names() {
        let read = |s: serde_json::Value, p: serde_json::Value| {
            let m = map(&entry(), &body(s, p, "")).expect("maps");
            (m.status, m.case.priority, m.unmapped)
        };
        assert_eq!(
            read(3.into(), "Medium".into()),
            (Some(Status::PendingCustomer), Priority::Normal, vec![])
        );
        assert_eq!(read("4".into(), 1.into()).0, Some(Status::Resolved));
        assert_eq!(read("Closed".into(), 3.into()).0, Some(Status::Closed));
        assert_eq!(
            read(7.into(), 2.into()).0,
            Some(Status::OnHold),
            "the entry's own"
        );
        assert_eq!(
            read(6.into(), 9.into()),
            (None, Priority::Normal, vec!["status", "priority"])
        );
    }

    #[test]
    fn the_latest_public_comment_is_a_note() {
        let m = map(
            &entry(),
            &body(
                3.into(),
                2.into(),
                "<p>Engineer booked for <b>Tuesday</b></p>",
            ),
        )
        .expect("maps");
        assert!(
            matches!(m.event, Some(EventInput::Note { ref body, ref author }) if body == "Engineer booked for Tuesday" && author.as_deref() == Some("Priya Agent"))
        );
        assert!(map(&entry(), b"{\"ticket\": 4}").is_err());
    }

    #[test]
    fn the_token_header_must_match_and_the_body_names_the_delivery() {
        let b = body(2.into(), 2.into(), "");
        let mut h = HeaderMap::new();
        h.insert(
            TOKEN_HEADER,
            "freshdesk-shared-token-0003".parse().expect("header"),
        );
        let d = verify(&entry(), &h, &b).expect("accepted");
        assert_eq!(verify(&entry(), &h, &b).ok(), Some(d.clone()), "a retry");
        assert_ne!(verify(&entry(), &h, b"{}").ok(), Some(d));
        h.insert(
            TOKEN_HEADER,
            "freshdesk-shared-token-0004".parse().expect("header"),
        );
        assert!(verify(&entry(), &h, &b).is_err());
        assert!(verify(&entry(), &HeaderMap::new(), &b).is_err());
    }
}
