//! Commands besides `serve`: `preview`, `simulate`, `backup`, `restore`,
//! `import`, `audit`, `bounce`, `migrate`, `migrate-store`.

pub mod audit;
pub mod backup;
pub mod bounce;
pub mod import;
pub mod migrate_store;
pub mod tools;

use crate::config::Config;
use crate::domain::clock::{Clock, SystemClock, v7_ids};
use crate::domain::{Diagnostic, Diagnostics};
pub use crate::engine::plan::Engine;

/// The engine the offline tools plan with: the daemon's own, built from
/// the same config, rules and templates.
pub fn engine(config: &Config) -> Result<Engine, Diagnostics> {
    crate::runtime::build::build_engine(config, v7_ids(), SystemClock.now())
}

/// `tidings check`: warnings when valid, every problem when not.
pub fn check(config: &Config) -> Result<Vec<Diagnostic>, Diagnostics> {
    crate::runtime::build::check(config, v7_ids(), SystemClock.now()).map(|(_, w)| w)
}

/// `tidings migrate`: applies the PostgreSQL store's migrations the
/// database lacks (the daemon applies them at start too); what it did, in
/// words.
pub fn migrate(config: &Config) -> anyhow::Result<String> {
    match &config.store {
        crate::config::StoreChoice::Sled => {
            Ok("store: sled keeps no schema; nothing to migrate".into())
        }
        crate::config::StoreChoice::Postgres {
            url,
            pool_size,
            lease,
        } => {
            let applied = crate::store::migrate_postgres(&crate::store::PgStoreConfig {
                url: url.clone(),
                pool_size: *pool_size,
                lease: *lease,
            })
            .map_err(|e| anyhow::anyhow!("the postgres store: {e}"))?;
            Ok(if applied.is_empty() {
                "store: postgres: the schema is up to date".into()
            } else {
                format!("store: postgres: applied {}", applied.join(", "))
            })
        }
    }
}

/// Now, for the tools that start from the present.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    SystemClock.now()
}

/// The wall clock, for the tools that change the store.
pub fn clock() -> crate::domain::clock::SharedClock {
    crate::domain::clock::system()
}

/// The URL of `path` on the running daemon (its `listen` address; an
/// unspecified one is reached on loopback), for the commands that ask it.
pub(crate) fn daemon_url(config: &crate::config::Locations, path: &str) -> String {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}{path}")
}

/// The admin token from `TIDINGS_ADMIN_TOKEN`, for asking the daemon.
pub(crate) fn admin_token() -> Option<String> {
    std::env::var(backup::ADMIN_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
}

/// Asks the running daemon for `path` with the admin token (the store is
/// locked while it runs); the answer's body, or why there is none. `what`
/// names the request in errors ("backup", "audit").
pub(crate) async fn ask_daemon(
    config: &crate::config::Locations,
    method: reqwest::Method,
    path: &str,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let token = admin_token().ok_or_else(|| {
        anyhow::anyhow!(
            "the store is in use (is the daemon running?); the {what} asks the daemon and needs the admin token in {}",
            backup::ADMIN_TOKEN_ENV
        )
    })?;
    let url = daemon_url(config, path);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| {
            format!("the store is in use, and the daemon at {url} cannot be reached")
        })?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        anyhow::bail!(
            "the daemon refused the {what} ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body.to_vec())
}
