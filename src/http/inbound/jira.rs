//! Jira Service Management: admin webhooks (System → WebHooks, with a
//! secret) for `jira:issue_created`, `jira:issue_updated` and
//! `comment_created` (<https://developer.atlassian.com/cloud/jira/platform/webhooks/>).
//!
//! `X-Hub-Signature` is `sha256=` and the hex HMAC-SHA256 of the raw body
//! (admin webhooks with a secret are signed, WebSub style);
//! `X-Atlassian-Webhook-Identifier` names the delivery and stays the same
//! across retries (else the body's hash does). The payload: `{webhookEvent,
//! issue: {key, fields: {summary, status: {name, statusCategory: {key}},
//! priority: {name}, reporter: {displayName, emailAddress?, timeZone,
//! accountId}, assignee}}, comment: {body, jsdPublic?, author}}`; the body
//! is ADF (Cloud, REST v3 shape) or a string (wiki markup, Data Center).
//! `jsdPublic: false` is an internal comment. The reporter's email may be
//! hidden by their profile visibility: then the case has no email channel.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Mapped, Person, Refusal, case_id, case_input, header, priority, some};
use crate::config::{InboundEntry, InboundSystem};
use crate::domain::normalise::adf_to_text;
use crate::domain::{EventInput, Priority, Status};

/// Jira Service Management's default workflow statuses, lower-cased.
const STATUSES: &[(&str, Status)] = &[
    ("open", Status::Open),
    ("waiting for support", Status::Open),
    ("in progress", Status::Open),
    ("escalated", Status::Open),
    ("waiting for customer", Status::PendingCustomer),
    ("pending", Status::OnHold),
    ("resolved", Status::Resolved),
    ("done", Status::Resolved),
    ("closed", Status::Closed),
    ("canceled", Status::Closed),
    ("cancelled", Status::Closed),
];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    webhook_event: String,
    issue: Issue,
    #[serde(default)]
    comment: Option<Comment>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    key: serde_json::Value,
    fields: Fields,
}

#[derive(Debug, Deserialize)]
struct Fields {
    summary: String,
    status: JiraStatus,
    #[serde(default)]
    priority: Option<Named>,
    #[serde(default)]
    reporter: Option<User>,
    #[serde(default)]
    assignee: Option<User>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JiraStatus {
    name: String,
    #[serde(default)]
    status_category: Option<Category>,
}

#[derive(Debug, Deserialize)]
struct Category {
    #[serde(default)]
    key: String,
}

#[derive(Debug, Deserialize)]
struct Named {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    account_type: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    email_address: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    locale: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Comment {
    #[serde(default)]
    body: serde_json::Value,
    #[serde(default)]
    jsd_public: Option<bool>,
    #[serde(default)]
    author: User,
}

/// Checks `X-Hub-Signature`; returns the delivery id.
pub(super) fn verify(
    entry: &InboundEntry,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, Refusal> {
    let signature = header(headers, "x-hub-signature")?;
    let given = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| Refusal::unsigned("X-Hub-Signature is not sha256=<hex>"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&entry.secret)
        .map_err(|_| Refusal::unsigned("no key to check the signature with"))?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::unsigned("the signature does not match"))?;
    Ok(
        header(headers, "x-atlassian-webhook-identifier").map_or_else(
            |_| format!("sha256:{}", hex::encode(Sha256::digest(body))),
            str::to_owned,
        ),
    )
}

/// The status: the entry's names, then Jira's defaults, then the status
/// category (`new` is open, `done` resolved); none is unmapped.
fn read_status(
    entry: &InboundEntry,
    s: &JiraStatus,
    unmapped: &mut Vec<&'static str>,
) -> Option<Status> {
    let key = s.name.trim().to_lowercase();
    let category = s.status_category.as_ref().map_or("", |c| c.key.as_str());
    let found = entry
        .mapping
        .statuses
        .get(&key)
        .copied()
        .or_else(|| STATUSES.iter().find(|(n, _)| *n == key).map(|(_, s)| *s))
        .or(match category {
            "done" => Some(Status::Resolved),
            "new" => Some(Status::Open),
            _ => None,
        });
    if found.is_none() {
        unmapped.push("status");
    }
    found
}

/// Jira's default priorities: Highest … Lowest.
const PRIORITIES: &[(&str, Priority)] = &[
    ("lowest", Priority::Low),
    ("low", Priority::Low),
    ("medium", Priority::Normal),
    ("high", Priority::High),
    ("highest", Priority::Urgent),
    ("blocker", Priority::Urgent),
    ("critical", Priority::Urgent),
];

/// A comment's body as text: ADF through `adf_to_text`, a string as is.
fn comment_text(body: &serde_json::Value) -> String {
    match body {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Object(_) => adf_to_text(body).trim().to_owned(),
        _ => String::new(),
    }
}

/// The payload in our terms.
pub(super) fn map(entry: &InboundEntry, body: &[u8]) -> Result<Mapped, Refusal> {
    let shape = |e: serde_json::Error| Refusal::shape(InboundSystem::JiraSm, &e);
    let b: Body = serde_json::from_slice(body).map_err(shape)?;
    let f = &b.issue.fields;
    let id = case_id(&b.issue.key).map_err(shape)?;
    let mut unmapped = Vec::new();
    let status = read_status(entry, &f.status, &mut unmapped);
    let priority = priority(
        entry,
        PRIORITIES,
        f.priority.as_ref().map_or("", |p| &p.name),
        &mut unmapped,
    );
    let none = User::default();
    let r = f.reporter.as_ref().unwrap_or(&none);
    let customer = Person {
        name: some(&r.display_name).unwrap_or_else(|| "Customer".to_owned()),
        email: r.email_address.as_deref().and_then(some),
        phone: &[],
        time_zone: r.time_zone.as_deref().unwrap_or(""),
        language: r.locale.as_deref().unwrap_or(""),
    }
    .read(entry, &mut unmapped);
    let event = b
        .comment
        .filter(|_| b.webhook_event == "comment_created")
        .and_then(|c| {
            let public = c.jsd_public != Some(false);
            let by_customer = c.author.account_type.eq_ignore_ascii_case("customer")
                || (!c.author.account_id.is_empty() && c.author.account_id == r.account_id);
            let text = comment_text(&c.body);
            (public && !by_customer && !text.is_empty()).then(|| EventInput::Note {
                body: text,
                author: some(&c.author.display_name),
            })
        });
    Ok(Mapped {
        id,
        case: case_input(
            f.summary.clone(),
            status,
            priority,
            customer,
            f.assignee.as_ref().and_then(|a| some(&a.display_name)),
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
            system: InboundSystem::JiraSm,
            source: "helpdesk".into(),
            secret: b"jira-webhook-secret-0004".to_vec(),
            mapping: Mapping {
                default_region: None,
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

    fn body(event: &str, status: &str, category: &str, comment: serde_json::Value) -> Vec<u8> {
        serde_json::json!({
            "webhookEvent": event, "timestamp": 1_700_000_000_000_i64,
            "issue": {"key": "SUP-42", "fields": {"summary": "VPN drops", 
                "status": {"name": status, "statusCategory": {"key": category}},
                "priority": {"name": "Highest"},
                "reporter": {"accountId": "c-1", "accountType": "customer", "displayName": "Ana Lima",
                    "emailAddress": "ana@example.com", "timeZone": "America/Sao_Paulo"}}},
            "comment": comment
        })
        .to_string()
        .into_bytes()
    }

    fn comment(
        public: Option<bool>,
        body: serde_json::Value,
        account_type: &str,
    ) -> serde_json::Value {
        let mut c = serde_json::json!({"body": body, "author": {"accountId": "a-9", "accountType": account_type, "displayName": "Kai Agent"}});
        if let Some(p) = public {
            c["jsdPublic"] = p.into();
        }
        c
    }

    #[test]
    fn an_issue_reads_as_a_case() {
        let m = map(
            &entry(),
            &body(
                "jira:issue_created",
                "Waiting for support",
                "new",
                serde_json::Value::Null,
            ),
        )
        .expect("maps");
        assert_eq!(m.id.to_string(), "SUP-42");
        assert_eq!(m.status, Some(Status::Open));
        assert_eq!(m.case.priority, Priority::Urgent);
        assert_eq!(m.case.customer.email.as_deref(), Some("ana@example.com"));
        assert_eq!(
            m.case.customer.timezone.as_deref(),
            Some("America/Sao_Paulo")
        );
        assert!(m.event.is_none() && m.unmapped.is_empty());
    }

    #[test]
    fn statuses_read_by_name_then_category() {
        let read = |name: &str, cat: &str| {
            let m = map(
                &entry(),
                &body("jira:issue_updated", name, cat, serde_json::Value::Null),
            )
            .expect("maps");
            (m.status, m.unmapped)
        };
        assert_eq!(
            read("Waiting for customer", "indeterminate").0,
            Some(Status::PendingCustomer)
        );
        assert_eq!(read("Fixed by vendor", "done").0, Some(Status::Resolved));
        assert_eq!(
            read("Awaiting Parts", "indeterminate").0,
            Some(Status::OnHold)
        );
        assert_eq!(read("With legal", "indeterminate"), (None, vec!["status"]));
    }

    #[test]
    fn only_a_public_agent_comment_is_a_note() {
        let adf = serde_json::json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Reset your token, please."}]}]});
        let m = map(
            &entry(),
            &body(
                "comment_created",
                "Waiting for customer",
                "indeterminate",
                comment(Some(true), adf.clone(), "atlassian"),
            ),
        )
        .expect("maps");
        assert!(
            matches!(m.event, Some(EventInput::Note { ref body, ref author }) if body == "Reset your token, please." && author.as_deref() == Some("Kai Agent"))
        );
        let m = map(
            &entry(),
            &body(
                "comment_created",
                "Open",
                "new",
                comment(None, "Plain *wiki* text".into(), "atlassian"),
            ),
        )
        .expect("maps");
        assert!(
            matches!(m.event, Some(EventInput::Note { ref body, .. }) if body == "Plain *wiki* text")
        );
        for c in [
            comment(Some(false), adf.clone(), "atlassian"),
            comment(Some(true), adf.clone(), "customer"),
        ] {
            assert!(
                map(&entry(), &body("comment_created", "Open", "new", c))
                    .expect("maps")
                    .event
                    .is_none()
            );
        }
        let m = map(
            &entry(),
            &body(
                "jira:issue_updated",
                "Open",
                "new",
                comment(Some(true), adf, "atlassian"),
            ),
        )
        .expect("maps");
        assert!(m.event.is_none(), "comment_created carries the comment");
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        let b = body("jira:issue_created", "Open", "new", serde_json::Value::Null);
        let mut mac = Hmac::<Sha256>::new_from_slice(&entry().secret).expect("key");
        mac.update(&b);
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
                .parse()
                .expect("header"),
        );
        assert!(
            verify(&entry(), &h, &b)
                .expect("signed")
                .starts_with("sha256:"),
            "the body's hash"
        );
        h.insert(
            "x-atlassian-webhook-identifier",
            "d-77".parse().expect("header"),
        );
        assert_eq!(verify(&entry(), &h, &b).ok().as_deref(), Some("d-77"));
        assert!(verify(&entry(), &h, b"{}").is_err());
    }
}
