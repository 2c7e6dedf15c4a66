//! `tidings audit`: how the promises of a next update came out, per
//! source and rule, with the worst late ones. With the daemon stopped it
//! reads the store itself; while it runs (the store locked) it asks the
//! daemon (`GET /-/audit` with the admin token from `TIDINGS_ADMIN_TOKEN`).
//! Both count with `engine::promises::audit`, as `/metrics` does.

use anyhow::{Context, bail};

use crate::config::Locations;
use crate::domain::clock::{Clock, SystemClock};
use crate::engine::promises::{self, Audit};
use crate::store::SledStore;

/// The audit of the store in `config`'s data dir.
pub async fn audit(
    config: &Locations,
    since: Option<&str>,
    source: Option<&str>,
) -> anyhow::Result<Audit> {
    let now = SystemClock.now();
    let db = config.data_dir.join("db");
    if !db.exists() {
        bail!("no store at {}", db.display());
    }
    let from = since
        .map(|s| promises::since(s, now))
        .transpose()
        .map_err(|m| anyhow::anyhow!("--since: {m}"))?;
    match SledStore::open(&db) {
        Ok(store) => {
            let mut records = Vec::new();
            for r in store.scan_cases() {
                records.push(r.context("reading the store")?);
            }
            Ok(promises::audit(records, from, source, now))
        }
        Err(_) => from_daemon(config, since, source).await,
    }
}

async fn from_daemon(
    config: &Locations,
    since: Option<&str>,
    source: Option<&str>,
) -> anyhow::Result<Audit> {
    let token = super::admin_token().ok_or_else(|| {
        anyhow::anyhow!(
            "the store is in use (is the daemon running?); asking the daemon needs the admin token in {}",
            super::backup::ADMIN_TOKEN_ENV
        )
    })?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = since {
        query.append_pair("since", s);
    }
    if let Some(s) = source {
        query.append_pair("source", s);
    }
    let url = super::daemon_url(config, &format!("/-/audit?{}", query.finish()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| {
            format!("the store is in use, and the daemon at {url} cannot be reached")
        })?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "the daemon refused the audit ({status}): {}",
            resp.text().await.unwrap_or_default()
        );
    }
    resp.json().await.context("the daemon's answer")
}
