//! Zendesk: webhooks a trigger or automation sends with the body the admin
//! pastes (`packaging/inbound/zendesk-trigger-body.json`, placeholders
//! from <https://support.zendesk.com/hc/en-us/articles/4408886858138>).
//!
//! Signature (<https://developer.zendesk.com/documentation/webhooks/verifying/>):
//! `X-Zendesk-Webhook-Signature` is base64(HMAC-SHA256(secret, timestamp +
//! body)), the timestamp being `X-Zendesk-Webhook-Signature-Timestamp`
//! (ISO 8601, e.g. `2021-03-25T05:09:27Z`); a timestamp more than five
//! minutes off is a replay. `X-Zendesk-Webhook-Invocation-Id` names the
//! delivery (<https://developer.zendesk.com/documentation/webhooks/anatomy-of-a-webhook-request/>).

use axum::http::HeaderMap;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Mapped, Person, Refusal, case_id, case_input, fresh, header, priority, some, status};
use crate::config::{InboundEntry, InboundSystem};
use crate::domain::normalise::html_to_text;
use crate::domain::{EventInput, Status};

/// Zendesk's statuses as `{{ticket.status}}` renders them, lower-cased.
const STATUSES: &[(&str, Status)] = &[
    ("new", Status::Open),
    ("open", Status::Open),
    ("pending", Status::PendingCustomer),
    ("hold", Status::OnHold),
    ("on-hold", Status::OnHold),
    ("on hold", Status::OnHold),
    ("solved", Status::Resolved),
    ("closed", Status::Closed),
];

#[derive(Debug, Deserialize)]
struct Body {
    ticket: Ticket,
    #[serde(default)]
    comment: Option<Comment>,
}

#[derive(Debug, Deserialize)]
struct Ticket {
    id: serde_json::Value,
    title: String,
    status: String,
    #[serde(default)]
    priority: String,
    requester: Requester,
    #[serde(default)]
    assignee: String,
}

#[derive(Debug, Deserialize)]
struct Requester {
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    time_zone: String,
    #[serde(default)]
    language: String,
}

/// `{{ticket.latest_comment_html}}` and `{{ticket.latest_public_comment_html}}`:
/// the latest comment is public when they are the same; `{{current_user.email}}`
/// tells whether the requester wrote it.
#[derive(Debug, Deserialize)]
struct Comment {
    #[serde(default)]
    latest: String,
    #[serde(default)]
    latest_public: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    author_email: String,
}

/// Checks the signature and its age; returns the delivery id.
pub(super) fn verify(
    entry: &InboundEntry,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<String, Refusal> {
    let signature = header(headers, "x-zendesk-webhook-signature")?;
    let timestamp = header(headers, "x-zendesk-webhook-signature-timestamp")?;
    let at = DateTime::parse_from_rfc3339(timestamp)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            timestamp
                .parse::<i64>()
                .ok()
                .and_then(|s| DateTime::from_timestamp(s, 0))
        })
        .ok_or_else(|| Refusal::unsigned("the signature timestamp is not a time"))?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| Refusal::unsigned("the signature is not base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&entry.secret)
        .map_err(|_| Refusal::unsigned("no key to check the signature with"))?;
    mac.update(timestamp.as_bytes());
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::unsigned("the signature does not match"))?;
    if !fresh(at, now) {
        return Err(Refusal::unsigned(
            "the signature timestamp is more than 5 minutes off; a replay is refused",
        ));
    }
    Ok(header(headers, "x-zendesk-webhook-invocation-id")
        .map_or_else(|_| signature.to_owned(), str::to_owned))
}

/// The body (our template, filled in) in our terms.
pub(super) fn map(entry: &InboundEntry, body: &[u8]) -> Result<Mapped, Refusal> {
    let shape = |e: serde_json::Error| Refusal::shape(InboundSystem::Zendesk, &e);
    let b: Body = serde_json::from_slice(body).map_err(shape)?;
    let id = case_id(&b.ticket.id).map_err(shape)?;
    let mut unmapped = Vec::new();
    let status = status(entry, STATUSES, &b.ticket.status, &mut unmapped);
    let priority = priority(entry, &[], &b.ticket.priority, &mut unmapped);
    let r = &b.ticket.requester;
    let customer = Person {
        name: r.name.clone(),
        email: some(&r.email),
        phone: &[&r.phone],
        time_zone: &r.time_zone,
        language: &r.language,
    }
    .read(entry, &mut unmapped);
    let event = b.comment.and_then(|c| {
        let public = !c.latest.trim().is_empty() && c.latest.trim() == c.latest_public.trim();
        let by_requester = !c.author_email.trim().is_empty()
            && c.author_email.trim().eq_ignore_ascii_case(r.email.trim());
        let text = html_to_text(&c.latest_public);
        (public && !by_requester && !text.trim().is_empty()).then(|| EventInput::Note {
            body: text,
            author: some(&c.author),
        })
    });
    Ok(Mapped {
        id,
        case: case_input(
            b.ticket.title,
            status,
            priority,
            customer,
            some(&b.ticket.assignee),
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
    use crate::domain::{Defaults, Priority};

    fn entry() -> InboundEntry {
        InboundEntry {
            system: InboundSystem::Zendesk,
            source: "helpdesk".into(),
            secret: b"dGhpcyBpcyBhIHNlY3JldA".to_vec(),
            mapping: Mapping {
                default_region: Some("US".into()),
                defaults: Defaults {
                    timezone: chrono_tz::UTC,
                    locale: "en".parse().expect("locale"),
                },
                statuses: [("awaiting parts".to_owned(), Status::OnHold)].into(),
                channels: None,
                priorities: Default::default(),
                fields: Default::default(),
                public_comments: Default::default(),
            },
        }
    }

    fn body(status: &str, latest: &str, public: &str) -> Vec<u8> {
        serde_json::json!({
            "ticket": {"id": "4021", "title": "Printer on fire", "status": status, "priority": "Urgent",
                "requester": {"name": "Maria Hernandez", "email": "maria@example.com",
                    "phone": "(212) 555-0143", "time_zone": "Eastern Time (US & Canada)", "language": "English"}},
            "comment": {"latest": latest, "latest_public": public, "author": "Sam", "author_email": "sam@example.com"}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_ticket_reads_as_a_case_with_normalised_contact_details() {
        let m = map(&entry(), &body("Open", "", "")).expect("maps");
        assert_eq!(m.id.to_string(), "4021");
        assert_eq!(m.status, Some(Status::Open));
        assert_eq!(m.case.priority, Priority::Urgent);
        assert_eq!(m.case.customer.phone.as_deref(), Some("+12125550143"));
        assert_eq!(
            m.case.customer.timezone.as_deref(),
            Some("America/New_York")
        );
        assert_eq!(m.case.customer.locale.as_deref(), Some("en"));
        assert!(m.event.is_none() && m.unmapped.is_empty());
    }

    #[test]
    fn only_a_public_agent_comment_is_a_note() {
        let m = map(
            &entry(),
            &body("Pending", "<p>Parts ordered</p>", "<p>Parts ordered</p>"),
        )
        .expect("maps");
        assert_eq!(m.status, Some(Status::PendingCustomer));
        assert!(
            matches!(m.event, Some(EventInput::Note { ref body, .. }) if body == "Parts ordered")
        );
        let m = map(&entry(), &body("Open", "internal only", "Parts ordered")).expect("maps");
        assert!(m.event.is_none(), "an internal comment is not a note");
    }

    #[test]
    fn the_mapping_file_names_priorities_fields_and_channels() {
        let mut e = entry();
        e.mapping.priorities = [("p1".to_owned(), Priority::Urgent)].into();
        e.mapping.fields = [
            ("product".to_owned(), "/ticket/product".to_owned()),
            ("absent".to_owned(), "/ticket/nothing/here".to_owned()),
        ]
        .into();
        e.mapping.channels = Some(vec![crate::domain::Channel::Sms]);
        let mut doc: serde_json::Value =
            serde_json::from_slice(&body("Open", "", "")).expect("json");
        doc["ticket"]["priority"] = "P1".into();
        doc["ticket"]["product"] = "LaserJet 4".into();
        let raw = doc.to_string().into_bytes();
        let mut m = map(&e, &raw).expect("maps");
        assert_eq!(m.case.priority, Priority::Urgent);
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);
        super::super::apply_mapping(&e.mapping, &raw, &mut m.case);
        assert_eq!(
            m.case.fields.get("product"),
            Some(&serde_json::json!("LaserJet 4"))
        );
        assert!(!m.case.fields.contains_key("absent"));
        assert_eq!(
            m.case.customer.channels,
            Some(vec![crate::domain::Channel::Sms])
        );
        // A channel the customer cannot be reached on is left to the contact
        // details rather than refused.
        m.case.customer.phone = None;
        m.case.customer.channels = None;
        super::super::apply_mapping(&e.mapping, &raw, &mut m.case);
        assert_eq!(m.case.customer.channels, None);
    }

    #[test]
    fn unknown_values_are_kept_out_and_named() {
        let m = map(&entry(), &body("Waiting on vendor", "", "")).expect("maps");
        assert_eq!(m.status, None);
        assert_eq!(m.unmapped, ["status"]);
        let m = map(&entry(), &body("Awaiting Parts", "", "")).expect("maps");
        assert_eq!(m.status, Some(Status::OnHold), "the entry's override");
        assert!(map(&entry(), b"{\"ticket\": 4}").is_err());
    }

    #[test]
    fn the_signature_covers_timestamp_and_body_and_must_be_fresh() {
        let now = DateTime::parse_from_rfc3339("2026-03-25T05:10:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let b = body("Open", "", "");
        let sign = |ts: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&entry().secret).expect("key");
            mac.update(ts.as_bytes());
            mac.update(&b);
            let mut h = HeaderMap::new();
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            h.insert("x-zendesk-webhook-signature", sig.parse().expect("header"));
            h.insert(
                "x-zendesk-webhook-signature-timestamp",
                ts.parse().expect("header"),
            );
            h.insert(
                "x-zendesk-webhook-invocation-id",
                "8350205582".parse().expect("header"),
            );
            h
        };
        assert_eq!(
            verify(&entry(), &sign("2026-03-25T05:09:27Z"), &b, now)
                .ok()
                .as_deref(),
            Some("8350205582")
        );
        assert!(
            verify(&entry(), &sign("2026-03-25T05:01:00Z"), &b, now).is_err(),
            "stale"
        );
        let mut forged = sign("2026-03-25T05:09:27Z");
        forged.insert(
            "x-zendesk-webhook-signature-timestamp",
            "2026-03-25T05:09:28Z".parse().expect("header"),
        );
        assert!(
            verify(&entry(), &forged, &b, now).is_err(),
            "the timestamp is signed"
        );
    }
}
