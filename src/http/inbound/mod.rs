//! `POST /v1/inbound/{system}/{source}`: a ticket system's own webhook,
//! turned into the case API's calls.
//!
//! Each system's module checks the signature or, for Freshdesk, the shared
//! token header (401 when bad, missing or, for Zendesk, older than five
//! minutes) and maps the payload (400 when it is
//! not the system's shape) into a `Mapped`: the case as `PUT` takes it and
//! the event a public agent comment makes. Here the case is upserted
//! (`Service::put_case`), then the event applied (`Service::post_event`),
//! each under an idempotency key made from the delivery id, so a redelivery
//! changes nothing. A value with no mapping (an unknown status, a time zone
//! or phone number that does not read) is never a 4xx: the last known
//! status or the entry's default is kept, a warning logged (no personal
//! data) and `tidings_inbound_unmapped_total` counted.
//!
//! A webhook whose customer has neither an email address nor a phone
//! number (Jira hides addresses by profile visibility) keeps the existing
//! case's; with no case yet it is answered 200 `{"case":null}`, stores
//! nothing and counts `what="contact"`.
//!
//! Answers: 201 `{"case","created":true}` when the webhook created the
//! case, 200 `{"case","created":false}` when it updated one; a redelivery
//! replays the first answer with `Idempotent-Replayed: true`.

mod freshdesk;
mod jira;
mod zammad;
mod zendesk;

#[cfg(test)]
mod extra_fields;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{InboundEntry, InboundSystem};
use crate::domain::{CaseId, CaseInput, CaseRecord, CustomerInput, EventInput, Priority, Status};
use crate::http::state::ApiState;
use crate::service::{Idempotency, Reply, ServiceError};

/// Why a webhook was refused, in the API's error shape.
#[derive(Debug)]
pub enum Refusal {
    Http {
        status: StatusCode,
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    Service(ServiceError),
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Http {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 401: the request cannot be shown to come from the ticket system.
    fn unsigned(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "bad_signature", message)
    }

    /// 400: the body is not what the system sends.
    fn shape(system: InboundSystem, e: &serde_json::Error) -> Self {
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg);
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_payload",
            format!("not a {} webhook body: {msg}", system.as_str()),
        )
    }
}

impl From<ServiceError> for Refusal {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

/// A webhook read into our terms.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub id: CaseId,
    /// The case as `PUT` takes it; its status is set from `status`.
    pub case: CaseInput,
    /// `None` when the system's status has no mapping: the last known one
    /// stays (open for a new case).
    pub status: Option<Status>,
    /// What the customer should hear of (a public agent comment).
    pub event: Option<EventInput>,
    /// What had no mapping, for the log and the metric.
    pub unmapped: Vec<&'static str>,
}

/// The idempotency of one delivery, scoped to the source as the API's
/// `Idempotency-Key` is; the request hash is the raw body's.
fn idempotency(
    source: &str,
    system: InboundSystem,
    delivery: &str,
    part: &str,
    body: &[u8],
) -> Idempotency {
    Idempotency {
        key: format!("{source}\0inbound:{}:{delivery}{part}", system.as_str()),
        request_sha256: hex::encode(Sha256::digest(body)),
    }
}

/// Handles one webhook: the entry, the signature, the payload, the writes.
pub async fn receive(
    state: &ApiState,
    system: &str,
    source: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let entries = state.inbound.load_full();
    let Some(entry) = entries
        .iter()
        .find(|e| e.system.as_str() == system && e.source == source)
    else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no inbound webhook is configured for this system and source",
        ));
    };
    let now = state.svc.now();
    let (delivery, mapped) = match entry.system {
        InboundSystem::Zendesk => (
            zendesk::verify(entry, headers, body, now)?,
            zendesk::map(entry, body)?,
        ),
        InboundSystem::Zammad => (
            zammad::verify(entry, headers, body)?,
            zammad::map(entry, body)?,
        ),
        InboundSystem::Freshdesk => (
            freshdesk::verify(entry, headers, body)?,
            freshdesk::map(entry, body)?,
        ),
        InboundSystem::JiraSm => (jira::verify(entry, headers, body)?, jira::map(entry, body)?),
    };
    for what in &mapped.unmapped {
        crate::metrics::inbound_unmapped(system, source, what);
        tracing::warn!(
            system,
            case = %format_args!("{source}/{}", mapped.id),
            what,
            "inbound: a value with no mapping; the last known or default kept"
        );
    }
    let existing = match state.svc.get_case(source, mapped.id.clone()) {
        Ok(r) => Some(r),
        Err(ServiceError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    let mut case = mapped.case;
    // Ticket systems' webhooks carry no CC list: the people copied through
    // the API stay on the case.
    if let Some(r) = &existing {
        case.cc = r.case.cc.iter().map(CustomerInput::from).collect();
    }
    if case.customer.email.is_none() && case.customer.phone.is_none() {
        // Jira may hide the reporter's address: the case keeps what it
        // had; a new one with no way to reach the customer is not stored.
        match existing.as_ref().map(|r| &r.case.customer) {
            Some(c) if c.email.is_some() || c.phone.is_some() => {
                case.customer.email = c.email.as_ref().map(ToString::to_string);
                case.customer.phone = c.phone.as_ref().map(ToString::to_string);
            }
            _ => {
                crate::metrics::inbound_unmapped(system, source, "contact");
                tracing::warn!(
                    system,
                    case = %format_args!("{source}/{}", mapped.id),
                    what = "contact",
                    "inbound: no email address or phone number; no case stored"
                );
                return Ok((
                    StatusCode::OK,
                    Json(serde_json::json!({"case": null, "created": false})),
                )
                    .into_response());
            }
        }
    }
    apply_mapping(&entry.mapping, body, &mut case);
    case.status = mapped
        .status
        .or(existing.as_ref().map(|r| r.case.status))
        .unwrap_or(Status::Open);
    let id = mapped.id;
    let respond = |r: &CaseRecord, created: bool| {
        (
            if created { 201 } else { 200 },
            serde_json::json!({"case": r.case.id.to_string(), "created": created}),
        )
    };
    let put_idem = idempotency(source, entry.system, &delivery, "", body);
    let answer = match state
        .svc
        .put_case(source, id.clone(), case, Some(&put_idem), &respond)
        .await?
    {
        Reply::Replayed(r) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            let mut resp = (status, Json(r.body)).into_response();
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            resp
        }
        Reply::Done((record, created)) => {
            let (status, body) = respond(&record, created);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            (status, Json(body)).into_response()
        }
    };
    // The note an update repeats (Zendesk sends the latest public comment
    // with every update) was heard already.
    let repeated = |e: &EventInput| match (
        e,
        existing.as_ref().and_then(|r| r.case.latest_note.as_ref()),
    ) {
        (EventInput::Note { body, .. }, Some(n)) => body.trim() == n.body.trim(),
        _ => false,
    };
    let event = match mapped.event {
        // The help desk mailed the comment itself: the clock starts again.
        Some(EventInput::Note { .. })
            if entry.mapping.public_comments == crate::config::PublicComments::AgentReply =>
        {
            Some(EventInput::AgentReply {})
        }
        other => other,
    };
    if let Some(event) = event.filter(|e| !repeated(e)) {
        let idem = idempotency(source, entry.system, &delivery, ":event", body);
        let respond =
            |r: &CaseRecord, _: bool| (200, serde_json::json!({"case": r.case.id.to_string()}));
        state
            .svc
            .post_event(source, id, event, Some(&idem), &respond)
            .await?;
    }
    Ok(answer)
}

/// What the source's mapping file adds: `case.fields` read from the body
/// by JSON pointer (an absent or null value is left out), and the channels
/// the source's cases use, as far as the customer's contact details allow
/// (none left: the contact details decide).
fn apply_mapping(mapping: &crate::config::Mapping, body: &[u8], case: &mut CaseInput) {
    if !mapping.fields.is_empty()
        && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body)
    {
        for (name, pointer) in &mapping.fields {
            if let Some(v) = doc.pointer(pointer).filter(|v| !v.is_null()) {
                case.fields.insert(name.clone(), v.clone());
            }
        }
    }
    if let Some(channels) = &mapping.channels {
        let reachable: Vec<_> = channels
            .iter()
            .copied()
            .filter(|c| match c {
                crate::domain::Channel::Email => case.customer.email.is_some(),
                crate::domain::Channel::Sms | crate::domain::Channel::WhatsApp => {
                    case.customer.phone.is_some()
                }
            })
            .collect();
        if !reachable.is_empty() {
            case.customer.channels = Some(reachable);
        }
    }
}

/// A header's value as text, or a 401 naming it.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Refusal> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Refusal::unsigned(format!("the {name} header is missing")))
}

/// The status a system's name reads as: the entry's overrides first, then
/// the system's defaults (`names`), by lower-case name.
fn status(
    entry: &InboundEntry,
    names: &[(&str, Status)],
    theirs: &str,
    unmapped: &mut Vec<&'static str>,
) -> Option<Status> {
    let key = theirs.trim().to_lowercase();
    let found = entry
        .mapping
        .statuses
        .get(&key)
        .copied()
        .or_else(|| names.iter().find(|(n, _)| *n == key).map(|(_, s)| *s));
    if found.is_none() {
        unmapped.push("status");
    }
    found
}

/// A priority by name: the entry's names first, then the system's
/// (`names`), then ours (`"urgent"`, Zammad's `"3 high"` by its last word);
/// none is normal.
fn priority(
    entry: &InboundEntry,
    names: &[(&str, Priority)],
    theirs: &str,
    unmapped: &mut Vec<&'static str>,
) -> Priority {
    let key = theirs.trim().to_lowercase();
    let word = key.rsplit(' ').next().unwrap_or_default();
    if let Some(p) = entry.mapping.priorities.get(&key) {
        return *p;
    }
    if let Some((_, p)) = names.iter().find(|(n, _)| *n == key) {
        return *p;
    }
    match word {
        "low" => Priority::Low,
        "" | "-" | "normal" => Priority::Normal,
        "high" => Priority::High,
        "urgent" => Priority::Urgent,
        _ => {
            unmapped.push("priority");
            Priority::Normal
        }
    }
}

/// The customer's contact details and zone, normalised; what does not read
/// is left out (phone) or defaulted (zone, locale) and named in `unmapped`.
struct Person<'a> {
    name: String,
    email: Option<String>,
    phone: &'a [&'a str],
    time_zone: &'a str,
    language: &'a str,
}

impl Person<'_> {
    fn read(&self, entry: &InboundEntry, unmapped: &mut Vec<&'static str>) -> CustomerInput {
        let given: Vec<&str> = self
            .phone
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect();
        let phone = given.iter().find_map(|p| {
            crate::domain::normalise::phone(p, entry.mapping.default_region.as_deref())
        });
        if phone.is_none() && !given.is_empty() {
            unmapped.push("phone");
        }
        let tz = match self.time_zone.trim() {
            "" => entry.mapping.defaults.timezone,
            z => crate::domain::normalise::time_zone(z).unwrap_or_else(|| {
                unmapped.push("time_zone");
                entry.mapping.defaults.timezone
            }),
        };
        let locale = match self.language.trim() {
            "" => entry.mapping.defaults.locale.clone(),
            l => crate::domain::normalise::locale(l).unwrap_or_else(|| {
                unmapped.push("locale");
                entry.mapping.defaults.locale.clone()
            }),
        };
        CustomerInput {
            name: self.name.clone(),
            email: self.email.clone(),
            phone: phone.map(|p| p.to_string()),
            timezone: Some(tz.name().to_owned()),
            locale: Some(locale.to_string()),
            channels: None,
        }
    }
}

/// The case as every system's webhook gives it; an unmapped status reads
/// as open here (the caller keeps the last known one).
fn case_input(
    subject: String,
    status: Option<Status>,
    priority: Priority,
    customer: CustomerInput,
    assignee: Option<String>,
) -> CaseInput {
    CaseInput {
        subject,
        status: status.unwrap_or(Status::Open),
        priority,
        customer,
        cc: Vec::new(),
        assignee,
        eta: None,
        tags: Vec::new(),
        fields: Default::default(),
    }
}

/// Text that is empty when the system filled in nothing.
fn some(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// A ticket id as the system sends it (a number or a string) as a case id.
fn case_id(v: &serde_json::Value) -> Result<CaseId, serde_json::Error> {
    use serde::de::Error;
    let text = match v {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    text.parse()
        .map_err(|m: String| serde_json::Error::custom(format!("ticket id: {m}")))
}

/// Whether `at` is within five minutes of `now`, either way.
fn fresh(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    (now - at).abs() <= chrono::Duration::minutes(5)
}
