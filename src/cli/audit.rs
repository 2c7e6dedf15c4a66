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
    if config.postgres_store {
        // The daemon reads its database.
        return from_daemon(config, since, source).await;
    }
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
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = since {
        query.append_pair("since", s);
    }
    if let Some(s) = source {
        query.append_pair("source", s);
    }
    let path = format!("/-/audit?{}", query.finish());
    let body = super::ask_daemon(config, reqwest::Method::GET, &path, "audit").await?;
    serde_json::from_slice(&body).context("the daemon's answer")
}
