//! Consent: Twilio's inbound and status webhooks, and one-click email
//! unsubscribe links.
//!
//! - `POST /v1/sms/inbound`: a reply from a customer's phone. The request
//!   must carry a valid `X-Twilio-Signature` (HMAC-SHA1 of `public_url` +
//!   path + sorted form fields under the auth token); anything else is a 403.
//!   STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT opt the number out;
//!   START, YES, UNSTOP opt it back in; HELP is answered with the help text.
//! - `POST /v1/whatsapp/inbound` (or the same URL as SMS): a WhatsApp
//!   message from a customer (`From` is `whatsapp:+…`), signed the same
//!   way. The keywords work as by SMS, on WhatsApp only; any message opens
//!   WhatsApp's 24-hour window, kept by contact (`Storage::note_inbound`).
//! - `POST /v1/sms/status`: Twilio's delivery reports (SMS and WhatsApp), filed on the message
//!   named in the callback URL (which Twilio signs with the rest).
//! - `GET /unsubscribe/{token}`: the signed link in every email asks for
//!   confirmation; only `POST` (the page's button, or RFC 8058 one-click)
//!   opts out. The token names the address, for the source that sent the
//!   email, only by its keyed hash.
//!
//! Opt-outs live in their own tree, keyed by contact, so erasing a case
//! never forgets one.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::{CaseId, Channel};
use crate::domain::{CaseKey, Contact, DeliveryStatus, OptOutVia};
use crate::http::state::ApiState;
use crate::service::Scope;
use crate::store::Commit;

/// The delivery states Twilio reports in its status callbacks.
pub const DELIVERY_STATUSES: [&str; 10] = [
    "accepted",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "read",
    "canceled",
];

const STOP_WORDS: &[&str] = &["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
const START_WORDS: &[&str] = &["START", "YES", "UNSTOP"];

/// What an inbound text asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Stop,
    Start,
    Help,
    Other,
}

/// Reads a keyword the way carriers do: the whole message, trimmed, any
/// case, trailing punctuation ignored.
pub fn keyword(body: &str) -> Keyword {
    let word = body.trim().trim_end_matches(['.', '!', '?']).to_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        Keyword::Stop
    } else if START_WORDS.contains(&word.as_str()) {
        Keyword::Start
    } else if word == "HELP" || word == "INFO" {
        Keyword::Help
    } else {
        Keyword::Other
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "invalid or missing X-Twilio-Signature\n",
    )
        .into_response()
}

fn twiml(message: Option<&str>) -> Response {
    let body = match message {
        Some(m) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            xml_escape(m)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>".to_owned(),
    };
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The form fields of a verified Twilio request, or the response to give.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
fn verified(
    state: &ApiState,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Response> {
    let Some(hooks) = state.webhooks.as_ref() else {
        return Err(forbidden());
    };
    let Some(token) = hooks.auth_token.as_deref() else {
        tracing::warn!(path, "Twilio webhook refused: no auth token is configured");
        return Err(forbidden());
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let url = match query {
        Some(q) if !q.is_empty() => format!("{}{path}?{q}", hooks.public_url),
        _ => format!("{}{path}", hooks.public_url),
    };
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    if !crate::domain::signature::verify_twilio(token, &url, &params, signature) {
        tracing::warn!(path, "Twilio webhook refused: bad signature");
        return Err(forbidden());
    }
    Ok(params)
}

fn field<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "storage failure in a consent request");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable; retry later\n",
    )
        .into_response()
}

/// `POST /v1/sms/inbound`
pub async fn sms_inbound(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inbound(&state, "/v1/sms/inbound", query.as_deref(), &headers, &body).await
}

/// `POST /v1/whatsapp/inbound`: the same for WhatsApp (`From` is
/// `whatsapp:+…`); either URL takes either channel.
pub async fn whatsapp_inbound(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inbound(
        &state,
        "/v1/whatsapp/inbound",
        query.as_deref(),
        &headers,
        &body,
    )
    .await
}

/// A message from a customer's phone, by SMS or WhatsApp: a keyword opts
/// the number in or out on that channel; any WhatsApp message opens the
/// 24-hour window in which free-form messages may go.
async fn inbound(
    state: &ApiState,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let params = match verified(state, path, query, headers, body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(from) = field(&params, "From").filter(|f| !f.is_empty()) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "From is required\n").into_response();
    };
    let (channel, from) = match from.strip_prefix("whatsapp:") {
        Some(number) => (Channel::WhatsApp, number),
        None => (Channel::Sms, from),
    };
    let store = &state.svc.store;
    if let Err(e) = store.room(crate::store::Writer::Internal) {
        return unavailable(e);
    }
    let contact = store.contact(channel, from);
    let kw = keyword(field(&params, "Body").unwrap_or_default());
    let now = state.svc.now();
    let via = match channel {
        Channel::WhatsApp => OptOutVia::WhatsAppStop,
        _ => OptOutVia::SmsStop,
    };
    let result = match kw {
        Keyword::Stop => store.opt_out(contact, via, now).map(|()| true),
        Keyword::Start => store.opt_in(contact),
        Keyword::Help | Keyword::Other => Ok(false),
    };
    let result = match (result, channel) {
        (Ok(changed), Channel::WhatsApp) => store.note_inbound(contact, now).map(|()| changed),
        (result, _) => result,
    };
    if let Err(e) = result {
        return unavailable(e);
    }
    if (matches!(kw, Keyword::Stop | Keyword::Start) || channel == Channel::WhatsApp)
        && let Err(e) = store.flush().await
    {
        return unavailable(e);
    }
    match channel {
        Channel::WhatsApp => tracing::info!(keyword = ?kw, "inbound WhatsApp message"),
        _ => tracing::info!(keyword = ?kw, "inbound SMS"),
    }
    match kw {
        Keyword::Help => twiml(state.webhooks.as_ref().map(|h| h.help_text.as_str())),
        _ => twiml(None),
    }
}

/// `POST /v1/sms/status`
pub async fn sms_status(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match verified(&state, "/v1/sms/status", query.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let q: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let key = match (
        field(&q, "source"),
        field(&q, "case").map(str::parse::<CaseId>),
    ) {
        (Some(source), Some(Ok(id))) => CaseKey::new(source, id),
        _ => return (StatusCode::UNPROCESSABLE_ENTITY, "unknown callback\n").into_response(),
    };
    let Some(msg_id) = field(&q, "msg").and_then(|m| m.parse::<uuid::Uuid>().ok()) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "unknown callback\n").into_response();
    };
    let status = field(&params, "MessageStatus")
        .or_else(|| field(&params, "SmsStatus"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !DELIVERY_STATUSES.contains(&status.as_str()) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "MessageStatus is not one Twilio sends\n",
        )
            .into_response();
    }
    let code = field(&params, "ErrorCode").unwrap_or_default().to_owned();
    let keys = [key];
    let engine = state.svc.engine.load_full();
    let filed = state
        .svc
        .change(Scope::internal(&keys), |records, now| {
            // An erased case, or another source's: nothing to file, and
            // Twilio must not retry.
            let Some(mut record) = records.into_iter().next().flatten() else {
                return Ok((vec![Commit::default()], None));
            };
            let Some(msg) = record.message_mut(msg_id) else {
                return Ok((vec![Commit::default()], None));
            };
            msg.provider_status = Some(status.clone());
            let mut late = None;
            if matches!(status.as_str(), "undelivered" | "failed") {
                let was_sent = msg.status == DeliveryStatus::Sent;
                msg.status = DeliveryStatus::Failed;
                msg.error = Some(if code.is_empty() {
                    format!("carrier reported {status}")
                } else {
                    format!("carrier reported {status} (error {code})")
                });
                // Reported after Twilio took it: the update goes again on
                // the next channel, once (a repeated report finds it failed).
                if was_sent {
                    late = engine.late_fallback(&record, msg_id, now);
                }
            }
            let (commit, fallback) = Commit::record_with_resend(record, late);
            Ok((vec![commit], Some(fallback)))
        })
        .await;
    let fallback = match filed {
        Ok(Some(fallback)) => fallback,
        Ok(None) => return StatusCode::NO_CONTENT.into_response(),
        Err(e) => return unavailable(e),
    };
    let key = &keys[0];
    tracing::info!(
        case = %key,
        msg_id = %msg_id,
        status = %status,
        fallback = fallback.map(Channel::as_str),
        "SMS delivery report"
    );
    StatusCode::NO_CONTENT.into_response()
}

fn opened_contact(state: &ApiState, token: &str) -> Option<[u8; 32]> {
    let engine = state.svc.engine.load();
    engine
        .consent
        .opening_keys()
        .iter()
        .filter(|k| !k.is_empty())
        .find_map(|k| crate::domain::signature::open_unsubscribe_token(k, token))
}

fn unsubscribe_notice(
    state: &ApiState,
    headers: &HeaderMap,
    status: StatusCode,
    kind: &str,
    token: &str,
) -> Response {
    let locale = crate::http::page::reader_locale(state, headers);
    let company = state.svc.engine.load().company.name.clone();
    crate::http::page::notice(
        state,
        status,
        &locale,
        &crate::http::page::Notice {
            lang: locale.to_string(),
            company,
            kind,
            action: token,
            form_token: String::new(),
            css: "../c/page.css",
        },
    )
}

/// `GET /unsubscribe/{token}`: asks for confirmation and changes nothing
/// (a mail scanner that follows every link must not opt anyone out).
pub async fn unsubscribe_confirm(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    if opened_contact(&state, &token).is_none() {
        return unsubscribe_notice(&state, &headers, StatusCode::NOT_FOUND, "not_found", "");
    }
    unsubscribe_notice(
        &state,
        &headers,
        StatusCode::OK,
        "unsubscribe_confirm",
        &token,
    )
}

/// `POST /unsubscribe/{token}`: the confirmation form, or RFC 8058
/// one-click from the mail client. The token names the address (for the
/// source that sent it) only by its keyed hash.
pub async fn unsubscribe(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(hash) = opened_contact(&state, &token) else {
        return unsubscribe_notice(&state, &headers, StatusCode::NOT_FOUND, "not_found", "");
    };
    let store = &state.svc.store;
    if let Err(e) = store.room(crate::store::Writer::Internal) {
        return unavailable(e);
    }
    if let Err(e) = store.opt_out(Contact(hash), OptOutVia::UnsubscribeLink, state.svc.now()) {
        return unavailable(e);
    }
    if let Err(e) = store.flush().await {
        return unavailable(e);
    }
    tracing::info!("email address unsubscribed by link");
    unsubscribe_notice(&state, &headers, StatusCode::OK, "unsubscribed", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_as_carriers_read_them() {
        assert_eq!(keyword(" stop "), Keyword::Stop);
        assert_eq!(keyword("Unsubscribe."), Keyword::Stop);
        assert_eq!(keyword("QUIT"), Keyword::Stop);
        assert_eq!(keyword("start"), Keyword::Start);
        assert_eq!(keyword("Yes!"), Keyword::Start);
        assert_eq!(keyword("help"), Keyword::Help);
        assert_eq!(keyword("please stop the noise"), Keyword::Other);
        assert_eq!(keyword(""), Keyword::Other);
    }

    #[test]
    fn twiml_escapes_the_help_text() {
        let r = twiml(Some("A & B <c>"));
        assert_eq!(r.status(), StatusCode::OK);
    }
}
