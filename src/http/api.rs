//! The HTTP API (axum): authentication, validation, idempotency, the
//! OpenAPI document.
//!
//! Handlers parse input into domain types, call `service`, and shape the
//! answer. The API never sends a message: it writes and wakes.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::{OpenApi, ToSchema};

use crate::config::ApiToken;
use crate::domain::{CaseId, CaseInput, Channel, EventInput, FieldError, Note, Priority, Status};
use crate::domain::{CaseRecord, DeliveryStatus, IdempotentResponse};
use crate::service::{Idempotency, Reply, ServiceError};

mod openapi;

pub use crate::http::state::{ApiState, Webhooks};

/// Request bodies above this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The error shape of every 4xx/5xx: `{"error":{"code","message","field"}}`.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    code: String,
    message: String,
    field: Option<String>,
}

impl AppError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such case")
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message, "field": self.field}})
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.message).field(e.field)
    }
}

impl From<ServiceError> for AppError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => Self::not_found(),
            ServiceError::Invalid(f) => f.into(),
            ServiceError::IdempotencyConflict => Self::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this Idempotency-Key was already used for a different request",
            )
            .field("Idempotency-Key"),
            ServiceError::Store(err @ crate::store::StoreError::Full { .. }) => {
                crate::store::warn_full(&err);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_full",
                    format!("{err}; retry later"),
                )
            }
            ServiceError::Store(err) => {
                tracing::error!(error = %err, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the store cannot take writes right now; retry later",
                )
            }
        }
    }
}

impl From<BytesRejection> for AppError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            )
        } else {
            Self::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
        }
    }
}

impl From<crate::http::inbound::Refusal> for AppError {
    fn from(r: crate::http::inbound::Refusal) -> Self {
        use crate::http::inbound::Refusal;
        match r {
            Refusal::Service(e) => e.into(),
            Refusal::Http {
                status,
                code,
                message,
                field,
            } => Self {
                status,
                code,
                message,
                field,
            },
        }
    }
}

/// `POST /v1/inbound/{system}/{source}`: a ticket system's own webhook
/// (`http::inbound`), answered in this API's error shape.
async fn inbound_webhook(
    State(state): State<ApiState>,
    Path((system, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body?;
    Ok(crate::http::inbound::receive(&state, &system, &source, &headers, &body).await?)
}

/// Parses JSON: broken syntax is a 400, a wrong shape a 422 naming the field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { None } else { Some(path) };
                let mut err = AppError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    strip_position(&inner.to_string()),
                );
                err.field = field;
                err
            }
            _ => AppError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })
}

fn strip_position(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_owned()
}

/// The `{id}` path segment as sent; a segment that is not UTF-8 once
/// percent-decoded is an invalid id (422), like any other bad id.
struct RawId(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RawId {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, AppError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| Self(id))
            .map_err(|_| {
                FieldError::new("id", "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -").into()
            })
    }
}

fn parse_id(raw: &str) -> Result<CaseId, AppError> {
    raw.parse::<CaseId>()
        .map_err(|m| FieldError::new("id", m).into())
}

/// The source a request speaks for, set by the auth middleware.
#[derive(Clone, Debug)]
pub struct Source(pub String);

async fn auth(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.filter(|t| !t.is_empty()) else {
        return AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an Authorization: Bearer token is required",
        )
        .into_response();
    };
    match token_source(&state.tokens, token) {
        Some(t) => {
            req.extensions_mut().insert(Source(t.source.clone()));
            next.run(req).await
        }
        None => AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        )
        .into_response(),
    }
}

/// The configured token `presented` matches, if any. Compares SHA-256
/// digests (fixed length, so a token's length leaks nothing) with
/// `subtle`'s constant-time equality against every configured token,
/// without stopping at the first match.
fn token_source<'a>(tokens: &'a [ApiToken], presented: &str) -> Option<&'a ApiToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found: Option<&ApiToken> = None;
    for t in tokens {
        if bool::from(t.sha256.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found
}

fn idempotency(
    headers: &HeaderMap,
    source: &str,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Option<Idempotency>, AppError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()))
        .ok_or_else(|| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .field("Idempotency-Key")
        })?;
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update([0]);
    h.update(path);
    h.update([0]);
    h.update(body);
    Ok(Some(Idempotency {
        key: format!("{source}\0{key}"),
        request_sha256: hex::encode(h.finalize()),
    }))
}

/// The common front of every write: the body within limits, a valid id,
/// the idempotency key scoped to the source and path, the JSON parsed.
fn write_request<T: serde::de::DeserializeOwned>(
    source: &str,
    raw_id: &str,
    suffix: &str,
    method: &Method,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(CaseId, Option<Idempotency>, T), AppError> {
    let body = body?;
    let id = parse_id(raw_id)?;
    let path = format!("/v1/cases/{id}{suffix}");
    let idem = idempotency(headers, source, method, &path, &body)?;
    Ok((id, idem, parse_json(&body)?))
}

fn replayed(r: IdempotentResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, Json(r.body)).into_response();
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

/// A case as `GET` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaseView {
    id: String,
    subject: String,
    status: Status,
    priority: Priority,
    customer: CustomerView,
    /// The people copied on the case.
    cc: Vec<CustomerView>,
    assignee: Option<String>,
    eta: Option<DateTime<Utc>>,
    tags: Vec<String>,
    #[schema(value_type = Object)]
    fields: std::collections::BTreeMap<String, serde_json::Value>,
    latest_note: Option<Note>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// When the next progress update is planned, if one is.
    next_update_at: Option<DateTime<Utc>>,
    /// The rule that currently governs updates.
    rule: Option<String>,
    messages: Vec<MessageView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerView {
    name: String,
    email: Option<String>,
    phone: Option<String>,
    timezone: String,
    locale: String,
    channels: Vec<Channel>,
}

impl From<&crate::domain::Customer> for CustomerView {
    fn from(c: &crate::domain::Customer) -> Self {
        Self {
            name: c.name.clone(),
            email: c.email.as_ref().map(ToString::to_string),
            phone: c.phone.as_ref().map(ToString::to_string),
            timezone: c.timezone.name().to_owned(),
            locale: c.locale.to_string(),
            channels: c.channels.clone(),
        }
    }
}

/// One message in a case's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    id: String,
    /// created, progress, resolved, note, status or escalation.
    kind: String,
    template: String,
    rule: Option<String>,
    /// Who it was for: `customer`, or `cc:N` (the N-th of `cc`, from 0).
    #[schema(example = "customer")]
    recipient: String,
    channel: Channel,
    status: DeliveryStatus,
    attempts: u32,
    due_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    /// The next-update time this message told the customer.
    promised_next_update_at: Option<DateTime<Utc>>,
    error: Option<String>,
    /// The messages of one update (one per channel, and fallbacks) share it.
    update: Option<String>,
    /// The message of the same update this one replaced after it failed.
    fallback_for: Option<String>,
    /// For a digest: every case it covered.
    covers: Vec<String>,
    /// Twilio's latest delivery report for an SMS or WhatsApp message
    /// (queued, sent, delivered, read, undelivered, failed).
    provider_status: Option<String>,
    /// How the promise this message made came out, once settled:
    /// `{"result": "kept"|"late"|"superseded", "at": …}`, `late_by_secs`
    /// when late.
    #[schema(value_type = Option<Object>)]
    promise: Option<crate::domain::PromiseOutcome>,
}

impl From<&CaseRecord> for CaseView {
    fn from(r: &CaseRecord) -> Self {
        let c = &r.case;
        Self {
            id: c.id.to_string(),
            subject: c.subject.clone(),
            status: c.status,
            priority: c.priority,
            customer: CustomerView::from(&c.customer),
            cc: c.cc.iter().map(CustomerView::from).collect(),
            assignee: c.assignee.clone(),
            eta: c.eta,
            tags: c.tags.clone(),
            fields: c.fields.clone(),
            latest_note: c.latest_note.clone(),
            created_at: c.created_at,
            updated_at: r.updated_at,
            next_update_at: r.schedule.next_update_at,
            rule: r.schedule.rule.clone(),
            messages: r
                .messages
                .iter()
                .filter(|m| !m.internal)
                .map(|m| MessageView {
                    id: m.id.to_string(),
                    kind: m.kind.as_str().to_owned(),
                    template: m.template.clone(),
                    rule: m.rule.clone(),
                    recipient: m.recipient.to_string(),
                    channel: m.channel,
                    status: m.status,
                    attempts: m.attempts,
                    due_at: m.due_at,
                    sent_at: m.sent_at,
                    promised_next_update_at: m.promised_next_update_at,
                    error: m.error.clone(),
                    update: m.update.map(|u| u.to_string()),
                    fallback_for: m.fallback_for.map(|u| u.to_string()),
                    covers: m.covers.clone(),
                    provider_status: m.provider_status.clone(),
                    promise: m.promise,
                })
                .collect(),
        }
    }
}

fn view_json(r: &CaseRecord) -> serde_json::Value {
    serde_json::to_value(CaseView::from(r)).unwrap_or_default()
}

/// Create or replace a case.
#[utoipa::path(
    put, path = "/v1/cases/{id}", tag = "cases",
    params(
        ("id" = String, Path, description = "The ticket system's case id", pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for a retried request"),
    ),
    request_body = CaseInput,
    responses(
        (status = 201, description = "Created; the acknowledgement is queued", body = CaseView),
        (status = 200, description = "Replaced", body = CaseView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn put_case(
    State(state): State<ApiState>,
    Extension(Source(source)): Extension<Source>,
    RawId(raw_id): RawId,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (id, idem, input) =
        write_request::<CaseInput>(&source, &raw_id, "", &method, &headers, body)?;
    let respond = |r: &CaseRecord, created: bool| (if created { 201 } else { 200 }, view_json(r));
    match state
        .svc
        .put_case(&source, id, input, idem.as_ref(), &respond)
        .await?
    {
        Reply::Replayed(r) => Ok(replayed(r)),
        Reply::Done((record, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(CaseView::from(&record))).into_response())
        }
    }
}

/// Report an event on a case.
#[utoipa::path(
    post, path = "/v1/cases/{id}/events", tag = "cases",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$"),
        ("Idempotency-Key" = Option<String>, Header),
    ),
    request_body = EventInput,
    responses(
        (status = 200, description = "Applied", body = CaseView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn post_event(
    State(state): State<ApiState>,
    Extension(Source(source)): Extension<Source>,
    RawId(raw_id): RawId,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (id, idem, input) =
        write_request::<EventInput>(&source, &raw_id, "/events", &method, &headers, body)?;
    let respond = |r: &CaseRecord, _: bool| (200, view_json(r));
    match state
        .svc
        .post_event(&source, id, input, idem.as_ref(), &respond)
        .await?
    {
        Reply::Replayed(r) => Ok(replayed(r)),
        Reply::Done(record) => Ok(Json(CaseView::from(&record)).into_response()),
    }
}

/// A case, its schedule and its message history.
#[utoipa::path(
    get, path = "/v1/cases/{id}", tag = "cases",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, body = CaseView),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_case(
    State(state): State<ApiState>,
    Extension(Source(source)): Extension<Source>,
    RawId(raw_id): RawId,
) -> Result<Json<CaseView>, AppError> {
    let id = parse_id(&raw_id)?;
    let record = state.svc.get_case(&source, id)?;
    Ok(Json(CaseView::from(&record)))
}

/// Erase a case and its personal data; pending messages are cancelled.
#[utoipa::path(
    delete, path = "/v1/cases/{id}", tag = "cases",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 204, description = "Erased"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn delete_case(
    State(state): State<ApiState>,
    Extension(Source(source)): Extension<Source>,
    RawId(raw_id): RawId,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&raw_id)?;
    state.svc.delete_case(&source, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store is open and the workers run.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready"), (status = 503, description = "Starting or stopping")))]
async fn readyz(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    if state.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A route that exists, asked with a method it does not take (axum adds
/// the `Allow` header).
pub async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(
    info(title = "tidings", description = "Proactive progress updates for long-running support cases"),
    paths(put_case, post_event, get_case, delete_case, healthz, readyz),
    components(schemas(CaseInput, EventInput, CaseView, MessageView, CustomerView, ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The router, ready to serve.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route(
            "/cases/{id}",
            get(get_case).put(put_case).delete(delete_case),
        )
        .route("/cases/{id}/events", axum::routing::post(post_event))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .nest("/v1", v1)
        .route(
            "/v1/sms/inbound",
            axum::routing::post(crate::http::consent::sms_inbound),
        )
        .route(
            "/v1/whatsapp/inbound",
            axum::routing::post(crate::http::consent::whatsapp_inbound),
        )
        .route(
            "/v1/inbound/{system}/{source}",
            axum::routing::post(inbound_webhook),
        )
        .route(
            "/v1/sms/status",
            axum::routing::post(crate::http::consent::sms_status),
        )
        .route(
            "/unsubscribe/{token}",
            get(crate::http::consent::unsubscribe_confirm)
                .post(crate::http::consent::unsubscribe)
                .layer(middleware::map_response(crate::http::page::hygiene)),
        )
        .merge(crate::http::page::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(source: &str, secret: &str) -> ApiToken {
        ApiToken {
            source: source.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    #[test]
    fn tokens_match_only_exactly_and_every_token_is_compared() {
        let tokens = [
            token("helpdesk", "token-helpdesk-0001"),
            token("billing", "token-billing-0002"),
        ];
        let source = |t: &str| token_source(&tokens, t).map(|t| t.source.as_str());
        assert_eq!(source("token-helpdesk-0001"), Some("helpdesk"));
        assert_eq!(source("token-billing-0002"), Some("billing"));
        // Near misses: a prefix, an extension, the last byte, the case.
        for miss in [
            "",
            "token-helpdesk-000",
            "token-helpdesk-00011",
            "token-helpdesk-0002",
            "TOKEN-HELPDESK-0001",
        ] {
            assert_eq!(source(miss), None, "{miss:?}");
        }
    }

    #[test]
    fn token_comparison_is_constant_time_over_fixed_length_digests() {
        // What the comparison sees is a 32-byte digest whatever was
        // presented, compared with `subtle` (no early exit on the first
        // differing byte); the source must keep it that way.
        let src = include_str!("api.rs");
        let body = src
            .split("fn token_source")
            .nth(1)
            .and_then(|s| s.split("\nfn ").next())
            .unwrap_or_default();
        assert!(
            body.contains("Sha256::digest"),
            "tokens are compared as digests"
        );
        assert!(body.contains(".ct_eq("), "digests are compared with subtle");
        assert!(!body.contains("return"), "the loop visits every token");
        assert!(!body.contains(" == "), "no short-circuiting comparison");
    }
}
