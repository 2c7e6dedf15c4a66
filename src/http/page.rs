//! The customer's own case page (`/c/{token}`) and the pages behind
//! unsubscribe links: server-rendered HTML from `templates/{locale}/page/`.
//!
//! - `GET /c/{token}`: where the case stands and what comes next, in the
//!   customer's language and zone. A `GET` never changes anything.
//! - `POST /c/{token}`: one preference (`action`): the channels this case
//!   uses, a pause until a date, resume, stop this case, stop (or resume)
//!   everything from this source. Each form carries a token tied to the
//!   page (`csrf`), and a cross-site request is refused.
//! - `GET /s/{code}`: the short form an SMS carries; it redirects (303) to
//!   the case's page under a token issued as of the case's creation, so
//!   it lives exactly as long as the case's links do.
//! - A forged or unknown token and an expired link answer 404, after the
//!   same work and no sooner than `REFUSAL_FLOOR`, so timing tells nothing;
//!   a link to an erased case answers 410.
//!
//! Every answer carries `Referrer-Policy: no-referrer`, `X-Robots-Tag:
//! noindex`, `Cache-Control: private, no-store` and a CSP that allows
//! nothing but the page's own stylesheet and forms. Logs name the case by
//! `source/id`, never the token, an address or a number.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;
use serde::Serialize;

use crate::domain::link::{PageLink, form_token, open_page_token, verify_form_token};
use crate::domain::{CaseKey, CaseRecord, Channel, Contact, Locale, OptOutVia, scoped_contact_of};
use crate::engine::page::{LinkState, PageView, PrefChange, choosable, link_state};
use crate::http::state::ApiState;
use crate::service::ServiceError;

/// The strictest policy the page works with: its own stylesheet, forms
/// posting to itself, nothing else (no scripts, no third parties).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// No refusal is answered sooner than this after the request arrived.
pub const REFUSAL_FLOOR: Duration = Duration::from_millis(50);

/// What `?done=` may say after a preference was saved.
const NOTICES: &[&str] = &[
    "channels",
    "paused",
    "resumed",
    "stopped",
    "source_stopped",
    "source_resumed",
];

/// The case page routes, with their headers.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/c/page.css", get(css))
        .route("/c/{token}", get(show).post(act))
        .route("/s/{code}", get(short))
        .layer(axum::middleware::map_response(hygiene))
}

/// Adds the page headers (also on the unsubscribe pages).
pub async fn hygiene(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        ("referrer-policy", "no-referrer"),
        ("x-robots-tag", "noindex, nofollow"),
        ("cache-control", "private, no-store"),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// A page that is not the case: refusals, confirmations.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    pub lang: String,
    pub company: String,
    /// `not_found`, `gone`, `expired`, `unsubscribe_confirm`, `unsubscribed`.
    pub kind: &'a str,
    /// Where the notice's form (if any) posts, relative to the page.
    pub action: &'a str,
    pub form_token: String,
    pub css: &'a str,
}

/// Renders a notice in `locale` with `status`.
pub fn notice(state: &ApiState, status: StatusCode, locale: &Locale, n: &Notice<'_>) -> Response {
    let engine = state.svc.engine.load();
    match engine.templates.render_page("notice.html.j2", locale, n) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => broken(&e),
    }
}

fn broken(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "a page template failed to render");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "this page cannot be shown right now\n",
    )
        .into_response()
}

fn unavailable(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "storage failure on a case page");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable; retry later\n",
    )
        .into_response()
}

/// A link, opened and checked against the store.
enum Opened {
    Valid(PageLink, Box<CaseRecord>),
    Expired(PageLink, Box<CaseRecord>),
    Gone,
    Invalid,
}

/// Opens `token` and reads its case. An invalid token reads a key no case
/// has, so every answer costs one signature check and one read.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
fn open(state: &ApiState, token: &str) -> Result<Opened, Response> {
    let engine = state.svc.engine.load();
    let link = open_page_token(&engine.consent.opening_keys(), token);
    let key = link
        .as_ref()
        .map_or_else(|| CaseKey::new("", unreachable_id()), |l| l.case.clone());
    let record = state.svc.store.get(&key).map_err(|e| unavailable(&e))?;
    let Some(link) = link else {
        return Ok(Opened::Invalid);
    };
    let window = engine.consent.link_valid_after_close;
    Ok(match link_state(&link, record, state.svc.now(), window) {
        LinkState::Valid(r) => Opened::Valid(link, r),
        LinkState::Expired(r) => Opened::Expired(link, r),
        LinkState::Gone => Opened::Gone,
    })
}

/// `GET /s/{code}`: finds the case the short code names through the
/// store's index, confirms the code against the case, and redirects to
/// its page; anything else is refused like an unknown token.
async fn short(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Response {
    let started = tokio::time::Instant::now();
    match find_short(&state, &code) {
        Ok(Some(token)) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, format!("/c/{token}"))],
        )
            .into_response(),
        Ok(None) => refuse(&state, &headers, "", Opened::Invalid, started).await,
        Err(e) => unavailable(&e),
    }
}

/// The page token (issued as of the case's creation) for the case whose
/// short code is `code`, if there is one.
fn find_short(state: &ApiState, code: &str) -> Result<Option<String>, crate::store::StoreError> {
    use crate::domain::link::{
        case_stamp, is_short_code, link_contact, page_token, short_code_matches,
    };
    if !is_short_code(code) {
        return Ok(None);
    }
    let store = &state.svc.store;
    let salt = store.contact_salt();
    for key in store.cases_of(link_contact(&salt, code))? {
        let Some(record) = store.get(&key)? else {
            continue;
        };
        let created = record.case.created_at;
        if short_code_matches(&salt, &key, case_stamp(created), code) {
            let engine = state.svc.engine.load();
            let link = PageLink::new(key, created, created);
            return Ok(Some(page_token(&engine.consent.unsubscribe_key, &link)));
        }
    }
    Ok(None)
}

fn unreachable_id() -> crate::domain::CaseId {
    "-".parse().unwrap_or_else(|_| unreachable!("a valid id"))
}

/// The answer to a link that does not open a case, no sooner than the
/// floor. An expired link's page offers a fresh link by email.
async fn refuse(
    state: &ApiState,
    headers: &HeaderMap,
    token: &str,
    opened: Opened,
    started: tokio::time::Instant,
) -> Response {
    let default = reader_locale(state, headers);
    let engine = state.svc.engine.load();
    let (status, kind, locale, form) = match &opened {
        Opened::Gone => (StatusCode::GONE, "gone", default, String::new()),
        Opened::Expired(_, r) => (
            StatusCode::NOT_FOUND,
            "expired",
            r.case.customer.locale.clone(),
            form_token(&engine.consent.unsubscribe_key, token),
        ),
        _ => (StatusCode::NOT_FOUND, "not_found", default, String::new()),
    };
    let page = notice(
        state,
        status,
        &locale,
        &Notice {
            lang: locale.to_string(),
            company: engine.company.name.clone(),
            kind,
            action: if form.is_empty() { "" } else { token },
            form_token: form,
            css: "page.css",
        },
    );
    tokio::time::sleep_until(started + REFUSAL_FLOOR).await;
    page
}

/// The language for a page that names no customer (a refused link, the
/// unsubscribe pages): the first of the browser's `Accept-Language` that
/// parses, else the default locale. Template lookup falls back from a
/// language not shipped.
pub fn reader_locale(state: &ApiState, headers: &HeaderMap) -> Locale {
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(|part| part.split(';').next().unwrap_or_default().trim())
                .find_map(|tag| tag.parse::<Locale>().ok())
        })
        .unwrap_or_else(|| state.svc.defaults.locale.clone())
}

/// The customer's contacts for this case's source, keyed (never in clear).
fn source_contacts(state: &ApiState, record: &CaseRecord) -> Vec<Contact> {
    let engine = state.svc.engine.load();
    let c = &record.case.customer;
    choosable(&record.case, &engine.channels)
        .into_iter()
        .filter_map(|ch| {
            let address = match ch {
                Channel::Email => c.email.as_ref()?.to_string(),
                Channel::Sms | Channel::WhatsApp => c.phone.as_ref()?.to_string(),
            };
            Some(scoped_contact_of(
                &state.svc.store.contact_salt(),
                &record.case.source,
                ch,
                &address,
            ))
        })
        .collect()
}

#[derive(Serialize)]
struct CaseCtx<'a> {
    #[serde(flatten)]
    view: &'a PageView,
    css: &'a str,
    action: &'a str,
    error: Option<String>,
}

fn render_case(
    state: &ApiState,
    token: &str,
    record: &CaseRecord,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Response {
    let engine = state.svc.engine.load();
    let now = state.svc.now();
    let mut view = PageView::new(
        record,
        &engine.channels,
        &engine.company.name,
        form_token(&engine.consent.unsubscribe_key, token),
        now,
    );
    view.notice = notice;
    let contacts = source_contacts(state, record);
    view.source_stopped = !contacts.is_empty()
        && contacts
            .iter()
            .all(|c| matches!(state.svc.store.opted_out(*c), Ok(Some(_))));
    let ctx = CaseCtx {
        view: &view,
        css: "page.css",
        action: token,
        error,
    };
    match engine
        .templates
        .render_page("case.html.j2", &record.case.customer.locale, &ctx)
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => broken(&e),
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /c/{token}`: reads, never writes.
async fn show(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    Query(done): Query<Done>,
    headers: HeaderMap,
) -> Response {
    let started = tokio::time::Instant::now();
    let opened = match open(&state, &token) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Opened::Valid(_, record) = opened else {
        return refuse(&state, &headers, &token, opened, started).await;
    };
    let notice = done.done.filter(|d| NOTICES.contains(&d.as_str()));
    render_case(&state, &token, &record, StatusCode::OK, notice, None)
}

/// `GET /c/page.css`: the page's one stylesheet (`page/page.css.j2`).
async fn css(State(state): State<ApiState>) -> Response {
    let engine = state.svc.engine.load();
    let locale = state.svc.defaults.locale.clone();
    match engine
        .templates
        .render_page("page.css.j2", &locale, &serde_json::json!({}))
    {
        Ok(css) => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], css).into_response(),
        Err(e) => broken(&e),
    }
}

/// Whether the request comes from a page of this daemon. A browser says
/// so in `Sec-Fetch-Site`; one that does not send it may send `Origin`
/// (`null` under the page's `no-referrer` policy). A request with neither
/// (a plain client) must still carry the form token.
fn same_site(state: &ApiState, headers: &HeaderMap) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = get("origin").filter(|o| *o != "null") else {
        return true;
    };
    let public = state.webhooks.as_ref().map(|w| w.public_url.as_str());
    let ours = public
        .and_then(|p| url::Url::parse(p).ok())
        .map(|u| u.origin().ascii_serialization());
    let host = get("host").map(|h| format!("http://{h}"));
    Some(origin.to_owned()) == ours || Some(origin.to_owned()) == host
}

fn bad_request(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{field}: {message}\n"),
    )
        .into_response()
}

/// Reads the posted form into a preference, or the field at fault.
fn parse_change(
    form: &[(String, String)],
) -> Result<Option<PrefChange>, (&'static str, &'static str)> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    Ok(Some(match field("action").unwrap_or_default() {
        "channels" => {
            let mut chosen = Vec::new();
            for (_, v) in form.iter().filter(|(k, _)| k == "channel") {
                chosen.push(match v.as_str() {
                    "email" => Channel::Email,
                    "sms" => Channel::Sms,
                    "whatsapp" => Channel::WhatsApp,
                    _ => return Err(("channel", "must be email, sms or whatsapp")),
                });
            }
            PrefChange::Channels(chosen)
        }
        "pause" => PrefChange::Pause(
            field("until")
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .ok_or(("until", "must be a date (YYYY-MM-DD)"))?,
        ),
        "resume" => PrefChange::Resume,
        "stop" => PrefChange::Stop,
        "stop_source" | "resume_source" => return Ok(None),
        _ => {
            return Err((
                "action",
                "must be channels, pause, resume, stop, stop_source or resume_source",
            ));
        }
    }))
}

/// `POST /c/{token}`: one preference.
async fn act(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = tokio::time::Instant::now();
    let opened = match open(&state, &token) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let (link, record, expired) = match opened {
        Opened::Valid(l, r) => (l, r, false),
        Opened::Expired(l, r) => (l, r, true),
        other => return refuse(&state, &headers, &token, other, started).await,
    };
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let action = form
        .iter()
        .find(|(k, _)| k == "action")
        .map_or("", |(_, v)| v.as_str())
        .to_owned();
    // An expired link does only one thing; anything else is refused as
    // on a GET, before any check that could tell it from a forged one.
    if expired && action != "fresh" {
        return refuse(
            &state,
            &headers,
            &token,
            Opened::Expired(link, record),
            started,
        )
        .await;
    }
    if !same_site(&state, &headers) {
        return (
            StatusCode::FORBIDDEN,
            "Origin: a cross-site form is refused\n",
        )
            .into_response();
    }
    let given = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map_or("", |(_, v)| v.as_str());
    let keys = state
        .svc
        .engine
        .load()
        .consent
        .opening_keys()
        .map(<[u8]>::to_vec);
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    if !verify_form_token(&keys, &token, given) {
        return (
            StatusCode::FORBIDDEN,
            "csrf: the form is not from this page; reload it and try again\n",
        )
            .into_response();
    }
    let key = record.key();
    if expired {
        return fresh(&state, &key, &link, &record).await;
    }
    let done = match parse_change(&form) {
        Err((field, message)) => return bad_request(field, message),
        Ok(Some(change)) => match state.svc.set_prefs(&key, link.stamp, &change).await {
            Ok(Ok(())) => match change {
                PrefChange::Channels(_) => "channels",
                PrefChange::Pause(_) => "paused",
                PrefChange::Resume => "resumed",
                PrefChange::Stop => "stopped",
            },
            Ok(Err(e)) => {
                let msg = format!("{}: {}", e.field, e.message);
                return render_case(
                    &state,
                    &token,
                    &record,
                    StatusCode::BAD_REQUEST,
                    None,
                    Some(msg),
                );
            }
            Err(ServiceError::NotFound) => {
                return refuse(&state, &headers, &token, Opened::Gone, started).await;
            }
            Err(e) => return unavailable(&e),
        },
        Ok(None) => {
            let store = &state.svc.store;
            let now = state.svc.now();
            let stop = action == "stop_source";
            for c in source_contacts(&state, &record) {
                let r = if stop {
                    store.opt_out(c, OptOutVia::CasePage, now)
                } else {
                    store.opt_in(c).map(|_| ())
                };
                if let Err(e) = r {
                    return unavailable(&e);
                }
            }
            if let Err(e) = store.flush().await {
                return unavailable(&e);
            }
            if stop {
                "source_stopped"
            } else {
                "source_resumed"
            }
        }
    };
    tracing::info!(case = %key, choice = done, "case page preference saved");
    let location = format!("{token}?done={done}");
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// A fresh link by email, asked for on an expired page. The answer is the
/// same whether one was sent or not (no email address, or one sent within
/// the day), so the page tells nothing about the address on file.
async fn fresh(state: &ApiState, key: &CaseKey, link: &PageLink, record: &CaseRecord) -> Response {
    match state.svc.send_fresh_link(key, link.stamp).await {
        Ok(queued) => {
            tracing::info!(case = %key, queued, "fresh case page link asked for");
        }
        Err(ServiceError::NotFound) => {}
        Err(e) => return unavailable(&e),
    }
    let locale = &record.case.customer.locale;
    notice(
        state,
        StatusCode::OK,
        locale,
        &Notice {
            lang: locale.to_string(),
            company: state.svc.engine.load().company.name.clone(),
            kind: "fresh_sent",
            action: "",
            form_token: String::new(),
            css: "page.css",
        },
    )
}
