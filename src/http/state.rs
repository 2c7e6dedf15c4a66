//! What the HTTP handlers share: the service, the API tokens, readiness,
//! and the webhook settings.

use std::sync::Arc;

use crate::config::ApiToken;
use crate::service::Service;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub svc: Service,
    pub tokens: Arc<[ApiToken]>,
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Twilio webhook settings; `None` refuses every webhook.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Ticket systems' webhooks (`inbound:`), swapped by a reload; empty
    /// refuses them all.
    pub inbound: crate::runtime::reload::Inbound,
}

/// What the webhooks need from the configuration.
#[derive(Clone)]
pub struct Webhooks {
    /// Twilio's auth token; without it no webhook can be verified.
    pub auth_token: Option<String>,
    /// The base URL Twilio was given (`public_url`).
    pub public_url: String,
    pub help_text: String,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}
