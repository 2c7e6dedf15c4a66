//! Operator endpoints beside the case API: `GET /metrics` (open, like
//! `/healthz`), and `POST /-/reload`, `POST /-/backup` and
//! `POST /v1/email/bounce` (`http::bounce`), which need the
//! admin token (`admin.token_sha256`, `token_env` or `token_file`). Ticket
//! systems' API tokens do not open them: a tenant must not be able to
//! reload the daemon or read every tenant's data.
//!
//! The admin endpoints are off (403) while no admin token is configured.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::runtime::reload::{ReloadError, Reloader};
use crate::service::Service;

/// What the operator endpoints share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub svc: Service,
    pub reloader: Arc<Reloader>,
    pub token_sha256: Option<[u8; 32]>,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"error": {"code": code, "message": message.into(), "field": null}});
    (status, Json(body)).into_response()
}

async fn admin_auth(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.token_sha256 else {
        return error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin endpoints are off: set admin.token_sha256 (or token_env, token_file)",
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if presented.is_empty() || !bool::from(expected.ct_eq(&digest)) {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is required",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    next.run(req).await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let store = &state.svc.store;
    let head = store.outbox_head().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the outbox head for /metrics failed");
        None
    });
    crate::metrics::response(crate::metrics::Outbox {
        depth: store.outbox_len(),
        head,
        now: state.svc.now(),
    })
}

async fn reload(State(state): State<AdminState>) -> Response {
    match state.reloader.reload().await {
        Ok(done) => Json(done).into_response(),
        Err(ReloadError::Invalid(d)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            d.to_string(),
        ),
        Err(e @ ReloadError::Store(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_failed",
            e.to_string(),
        ),
    }
}

/// A consistent copy of the store, in the format `tidings restore` reads.
async fn backup(State(state): State<AdminState>) -> Response {
    let mut bytes = Vec::new();
    match state.svc.backup(&mut bytes).await {
        Ok(summary) => {
            tracing::info!(
                entries = summary.entries,
                sha256 = %summary.sha256,
                "backup taken"
            );
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "backup_failed",
            e.to_string(),
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    since: Option<String>,
    source: Option<String>,
}

/// `GET /-/audit?since=7d&source=helpdesk`: how the promises came out
/// (`engine::promises::audit`), as `tidings audit` prints it.
async fn audit(
    State(state): State<AdminState>,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Response {
    let now = state.svc.now();
    let since = match q
        .since
        .as_deref()
        .map(|s| crate::engine::promises::since(s, now))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(m)) => {
            let body =
                serde_json::json!({"error": {"code": "invalid", "message": m, "field": "since"}});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let store = state.svc.store.clone();
    let source = q.source.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let records = store.scan_cases().filter_map(|r| {
            r.map_err(|e| tracing::warn!(error = %e, "audit: a case could not be read"))
                .ok()
        });
        crate::engine::promises::audit(records, since, source.as_deref(), now)
    })
    .await;
    match scanned {
        Ok(audit) => Json(audit).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_failed",
            e.to_string(),
        ),
    }
}

/// `POST /v1/email/bounce`: a returned mail's delivery status
/// notification (`http::bounce`).
async fn bounce(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    crate::http::bounce::receive(&state.svc, &body).await
}

/// The operator routes, merged into the API's router; every response of
/// the whole app is counted by status.
pub fn app(api: Router, state: AdminState) -> Router {
    let guarded = Router::new()
        .route("/-/reload", post(reload))
        .route("/-/backup", post(backup))
        .route("/v1/email/bounce", post(bounce))
        .route("/-/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth));
    let ops = Router::new()
        .route("/metrics", get(metrics))
        .merge(guarded)
        .with_state(state);
    api.merge(ops)
        .method_not_allowed_fallback(crate::http::api::method_not_allowed)
        .layer(middleware::from_fn(crate::metrics::track_http))
}
