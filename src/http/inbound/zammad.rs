//! Zammad: webhooks a trigger sends with Zammad's default payload
//! (<https://admin-docs.zammad.org/en/latest/manage/webhook/payload.html>):
//! `{ticket: {id, number, title, state, priority: {name}, customer:
//! {firstname, lastname, email, phone, mobile}}, article: {internal,
//! sender, body, content_type}}`. `X-Hub-Signature` is `sha1=` and the hex
//! HMAC-SHA1 of the body; `X-Zammad-Delivery` names the delivery. Zammad
//! sends no time zone or locale: the entry's defaults apply; phone numbers
//! come as people typed them, read in the entry's `default_region`.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;

use super::{Mapped, Person, Refusal, case_id, case_input, header, priority, some, status};
use crate::config::{InboundEntry, InboundSystem};
use crate::domain::normalise::html_to_text;
use crate::domain::{EventInput, Status};

/// Zammad's default ticket states.
const STATES: &[(&str, Status)] = &[
    ("new", Status::Open),
    ("open", Status::Open),
    ("pending reminder", Status::PendingCustomer),
    ("pending close", Status::PendingCustomer),
    ("closed", Status::Resolved),
    ("merged", Status::Closed),
];

#[derive(Debug, Deserialize)]
struct Body {
    ticket: Ticket,
    #[serde(default)]
    article: Option<Article>,
}

#[derive(Debug, Deserialize)]
struct Ticket {
    id: serde_json::Value,
    #[serde(default)]
    number: Option<serde_json::Value>,
    title: String,
    state: Named,
    #[serde(default)]
    priority: Option<Named>,
    customer: Customer,
    #[serde(default)]
    owner: Option<Customer>,
}

/// A state or priority: its name, or an object with one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Named {
    Name(String),
    Object { name: String },
}

impl Named {
    fn name(&self) -> &str {
        match self {
            Self::Name(n) | Self::Object { name: n } => n,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Customer {
    #[serde(default)]
    firstname: Option<String>,
    #[serde(default)]
    lastname: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    mobile: Option<String>,
}

impl Customer {
    fn name(&self) -> String {
        let parts = [self.firstname.as_deref(), self.lastname.as_deref()];
        let name = parts
            .iter()
            .flatten()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            "Customer".to_owned()
        } else {
            name
        }
    }
}

#[derive(Debug, Deserialize)]
struct Article {
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    content_type: String,
}

/// Checks `X-Hub-Signature`; returns the delivery id.
pub(super) fn verify(
    entry: &InboundEntry,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    let signature = header(headers, "x-hub-signature")?;
    let given = signature
        .strip_prefix("sha1=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| Refusal::unsigned("X-Hub-Signature is not sha1=<hex>"))?;
    let mut mac = Hmac::<Sha1>::new_from_slice(&entry.secret)
        .map_err(|_| Refusal::unsigned("no key to check the signature with"))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::unsigned("the signature does not match"))?;
    Ok(header(headers, "x-zammad-delivery").map_or_else(|_| signature.to_owned(), str::to_owned))
}

/// The default payload in our terms.
pub(super) fn map(entry: &InboundEntry, body: &[u8]) -> Result<Mapped, Refusal> {
    let shape = |e: serde_json::Error| Refusal::shape(InboundSystem::Zammad, &e);
    let b: Body = serde_json::from_slice(body).map_err(shape)?;
    let t = &b.ticket;
    let id = case_id(t.number.as_ref().unwrap_or(&t.id)).map_err(shape)?;
    let mut unmapped = Vec::new();
    let status = status(entry, STATES, t.state.name(), &mut unmapped);
    let priority = priority(
        entry,
        &[],
        t.priority.as_ref().map_or("", Named::name),
        &mut unmapped,
    );
    let c = &t.customer;
    let customer = Person {
        name: c.name(),
        email: c.email.as_deref().and_then(some),
        phone: &[
            c.mobile.as_deref().unwrap_or(""),
            c.phone.as_deref().unwrap_or(""),
        ],
        time_zone: "",
        language: "",
    }
    .read(entry, &mut unmapped);
    let event = b.article.and_then(|a| {
        let from_agent = a.sender.eq_ignore_ascii_case("agent");
        let text = if a.content_type.eq_ignore_ascii_case("text/html") {
            html_to_text(&a.body)
        } else {
            a.body.trim().to_owned()
        };
        (from_agent && !a.internal && !text.is_empty()).then_some(EventInput::Note {
            body: text,
            author: None,
        })
    });
    Ok(Mapped {
        id,
        case: case_input(
            t.title.clone(),
            status,
            priority,
            customer,
            t.owner
                .as_ref()
                .map(Customer::name)
                .filter(|n| n != "Customer"),
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
            system: InboundSystem::Zammad,
            source: "helpdesk".into(),
            secret: b"zammad-secret-0123456789".to_vec(),
            mapping: Mapping {
                default_region: Some("AU".into()),
                defaults: Defaults {
                    timezone: chrono_tz::Australia::Sydney,
                    locale: "en".parse().expect("locale"),
                },
                statuses: Default::default(),
                channels: None,
                priorities: Default::default(),
                fields: Default::default(),
                public_comments: Default::default(),
            },
        }
    }

    fn body(state: &str, article: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "ticket": {"id": 81, "number": "10081", "title": "Webhook-Test", "state": state,
                "priority": {"name": "3 high"},
                "customer": {"firstname": "Emily", "lastname": "Adams", "email": "emily@example.com", "phone": "02 1234 7777", "mobile": ""}},
            "article": article
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_ticket_reads_as_a_case_in_the_entrys_region_and_zone() {
        let m = map(&entry(), &body("new", serde_json::Value::Null)).expect("maps");
        assert_eq!(m.id.to_string(), "10081");
        assert_eq!(m.status, Some(Status::Open));
        assert_eq!(m.case.priority, Priority::High);
        assert_eq!(m.case.customer.name, "Emily Adams");
        assert_eq!(m.case.customer.phone.as_deref(), Some("+61212347777"));
        assert_eq!(
            m.case.customer.timezone.as_deref(),
            Some("Australia/Sydney")
        );
        assert!(m.event.is_none());
    }

    #[test]
    fn only_a_public_agent_article_is_a_note() {
        let article = |sender: &str, internal: bool| serde_json::json!({"sender": sender, "internal": internal, "content_type": "text/html", "body": "<p>Replaced the <b>fuser</b></p>"});
        let m = map(&entry(), &body("pending reminder", article("Agent", false))).expect("maps");
        assert_eq!(m.status, Some(Status::PendingCustomer));
        assert!(
            matches!(m.event, Some(EventInput::Note { ref body, .. }) if body == "Replaced the fuser")
        );
        assert!(
            map(&entry(), &body("open", article("Agent", true)))
                .expect("maps")
                .event
                .is_none()
        );
        assert!(
            map(&entry(), &body("open", article("Customer", false)))
                .expect("maps")
                .event
                .is_none()
        );
        let m = map(&entry(), &body("closed", serde_json::Value::Null)).expect("maps");
        assert_eq!(m.status, Some(Status::Resolved));
        let m = map(
            &entry(),
            &body("waiting for parts", serde_json::Value::Null),
        )
        .expect("maps");
        assert_eq!((m.status, m.unmapped), (None, vec!["status"]));
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha1_of_the_body() {
        let b = body("new", serde_json::Value::Null);
        let mut mac = Hmac::<Sha1>::new_from_slice(&entry().secret).expect("key");
        mac.update(&b);
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature",
            format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
                .parse()
                .expect("header"),
        );
        h.insert("x-zammad-delivery", "d-1".parse().expect("header"));
        assert_eq!(verify(&entry(), &h, &b).ok().as_deref(), Some("d-1"));
        assert!(verify(&entry(), &h, b"{}").is_err());
    }
}
