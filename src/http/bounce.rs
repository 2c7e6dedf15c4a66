//! `POST /v1/email/bounce` (admin token): a delivery status notification,
//! as a mail system returned it to the VERP envelope sender
//! (`email.bounce_address`). `tidings bounce` posts one here from an MTA's
//! pipe transport.
//!
//! The report's signed token names the message; its recipients' addresses
//! find the case (by the contact index, never in clear). A hard bounce
//! (`Action: failed`, 5.x.x) fails the message and, when it had gone out,
//! sends the same update on the customer's next channel, once
//! (`Engine::late_fallback`). A soft one the mail system gave up on
//! (`Action: failed`, 4.x.x) sends the same update once more on email
//! (`Engine::late_retry`; a resend that fails again falls back). A delay
//! warning is filed as `provider_status: delayed`: the mail system is
//! still trying.
//!
//! Answers: 200 with what was done; 400 when the body is no delivery
//! status notification; 422 when no address in it carries a token of
//! ours; 404 when no case holds the message any more.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::domain::dsn::{self, Verdict};
use crate::domain::{CaseKey, Channel, DeliveryStatus};
use crate::service::{Scope, Service};
use crate::store::Commit;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"error": {"code": code, "message": message.into(), "field": "body"}});
    (status, Json(body)).into_response()
}

/// Files one report; see the module's documentation.
pub async fn receive(svc: &Service, raw: &[u8]) -> Response {
    let report = match dsn::read(raw) {
        Ok(r) => r,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_report", m),
    };
    let key = svc.engine.load().consent.unsubscribe_key.clone();
    let Some(id) = report
        .tokens
        .iter()
        .find_map(|t| crate::domain::signature::open_bounce_token(&key, t))
        .map(Uuid::from_bytes)
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_ours",
            "no address the report was sent to carries a token of this daemon's",
        );
    };
    let Some(rcpt) = report
        .recipients
        .iter()
        .filter(|r| r.verdict() != Verdict::None)
        .max_by_key(|r| r.verdict() == Verdict::Hard)
    else {
        return Json(serde_json::json!({"message": id, "result": "ignored", "fallback": null}))
            .into_response();
    };
    let hard = rcpt.verdict() == Verdict::Hard;
    // A soft failure the mail system gave up on (failed, 4.x.x), not a
    // delay warning.
    let gave_up = !hard && rcpt.action.trim().eq_ignore_ascii_case("failed");
    let mut candidates: Vec<CaseKey> = Vec::new();
    for r in &report.recipients {
        if let Some(addr) = &r.address {
            let contact = svc.store.contact(Channel::Email, addr);
            match svc.store.cases_of(contact) {
                Ok(keys) => candidates.extend(keys),
                Err(e) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        e.to_string(),
                    );
                }
            }
        }
    }
    candidates.dedup();
    let reason = format!(
        "bounced: {} {}",
        rcpt.status.trim(),
        crate::domain::redact::redact(rcpt.diagnostic.as_deref().unwrap_or_default())
    );
    let engine = svc.engine.load_full();
    for case in candidates {
        let keys = [case];
        let filed = svc
            .change(Scope::internal(&keys), |records, now| {
                let Some(mut record) = records.into_iter().next().flatten() else {
                    return Ok((vec![Commit::default()], None));
                };
                let Some(msg) = record.message_mut(id) else {
                    return Ok((vec![Commit::default()], None));
                };
                if msg.channel != Channel::Email {
                    return Ok((vec![Commit::default()], None));
                }
                let mut late = None;
                let was_sent = msg.status == DeliveryStatus::Sent;
                if hard || gave_up {
                    msg.status = DeliveryStatus::Failed;
                    msg.provider_status = Some("bounced".into());
                    msg.error = Some(reason.trim().to_owned());
                    if was_sent && hard {
                        late = engine.late_fallback(&record, id, now);
                    } else if was_sent {
                        late = engine.late_retry(&record, id, now);
                    }
                } else {
                    msg.provider_status = Some("delayed".into());
                }
                let (commit, fallback) = Commit::record_with_resend(record, late);
                Ok((vec![commit], Some(fallback)))
            })
            .await;
        match filed {
            Ok(None) => continue,
            Ok(Some(fallback)) => {
                let result = if hard || gave_up { "failed" } else { "delayed" };
                tracing::info!(
                    case = %keys[0],
                    msg_id = %id,
                    result,
                    fallback = fallback.map(Channel::as_str),
                    "email bounce"
                );
                return Json(serde_json::json!({
                    "message": id,
                    "result": result,
                    "fallback": fallback.map(Channel::as_str),
                }))
                .into_response();
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                );
            }
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no case holds the message the report names (erased, or sent to another address)",
    )
}
