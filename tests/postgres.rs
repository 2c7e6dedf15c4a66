//! End to end on PostgreSQL: the real binary with `store: postgres`, a
//! throwaway cluster (`peers::postgres`) and Postfix's `smtp-sink`.
//!
//! One daemon's life: the acknowledgement and a progress update arrive; a
//! `kill -9` and a restart lose nothing and send nothing twice; `DELETE`
//! erases the case (its key row gone, the customer's address in no file of
//! the cluster); a second daemon on the same database refuses to start;
//! `tidings backup` goes through the daemon. And `tidings migrate` applies
//! the schema once; bad `store:` settings are named with their place.
//! Skips when PostgreSQL or smtp-sink is missing, unless
//! `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use peers::*;
use serde_json::{Value, json};

const EMAIL: &str = "pg-erasure-canary.4b7e@example.org";
const URL_ENV: &str = "TIDINGS_TEST_DATABASE_URL";

fn case_body() -> Value {
    let mut case = case_on(&["email"]);
    case["customer"]["email"] = json!(EMAIL);
    case
}

fn setup(sink: &Sink, db: &PgDatabase) -> Setup {
    // The store is set here, whatever `TIDINGS_TEST_STORE` says.
    Setup::new(rules("updates", &[("every", "2s")]))
        .sled()
        .smtp(sink.port)
        .admin()
        .extra(&format!(
            "digest:\n  window: 0s\nstore:\n  postgres:\n    url_env: {URL_ENV}\n    pool_size: 4\n"
        ))
        .env(URL_ENV, &db.url)
}

/// Every file under `dir` holding `needle`, byte for byte.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read a cluster dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn a_daemon_on_postgres_sends_survives_kill_9_erases_and_runs_beside_a_replica() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let db = cluster.database();
    let sink = Sink::start(&bin).await;
    let mut daemon = setup(&sink, &db).start().await;

    // The daemon applied the migrations; `tidings migrate` finds nothing to do.
    let (code, out, err) = tidings(
        &["migrate", "--config", &daemon.config_arg()],
        &[(URL_ENV, &db.url)],
    );
    assert_eq!(code, 0, "migrate: {out}{err}");
    assert!(out.contains("up to date"), "migrate: {out}");

    // A second daemon on the same database runs beside it, as a replica.
    let mut second = setup(&sink, &db).start().await;
    second.stop();

    daemon.put_case("PG-1", &case_body()).await;
    daemon
        .wait_history(
            "PG-1",
            Duration::from_secs(15),
            "ack and a progress update sent",
            |h| {
                h.iter().any(|m| m.kind == "created" && m.status == "sent")
                    && h.iter().any(|m| m.kind == "progress" && m.status == "sent")
            },
        )
        .await;

    let killed_at = Utc::now();
    daemon.kill();
    daemon.spawn().await;
    daemon
        .wait_history(
            "PG-1",
            Duration::from_secs(15),
            "an update after the restart",
            |h| {
                h.iter()
                    .any(|m| m.kind == "progress" && m.status == "sent" && m.due_at >= killed_at)
            },
        )
        .await;
    daemon
        .event("PG-1", json!({"type": "status", "status": "resolved"}))
        .await;
    let h = daemon
        .wait_history(
            "PG-1",
            Duration::from_secs(15),
            "the resolution sent",
            |h| {
                h.last().is_some_and(|m| m.kind == "resolved")
                    && h.iter().all(|m| m.status != "pending")
            },
        )
        .await;
    let recorded: HashSet<&str> = h.iter().map(|m| m.id.as_str()).collect();
    let (mails, _) = sink
        .wait_for(Instant::now() + Duration::from_secs(10), |m| {
            m.iter()
                .map(|m| m.id())
                .collect::<HashSet<_>>()
                .is_superset(&recorded)
        })
        .await;
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for m in &mails {
        *per_id.entry(m.id()).or_default() += 1;
    }
    let arrived: HashSet<&str> = per_id.keys().copied().collect();
    assert_eq!(
        arrived, recorded,
        "every recorded message arrived, no other"
    );
    // The kill came after the last send was recorded (its history said
    // sent), so nothing may arrive twice.
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");

    // A backup through the daemon, in the backup format, holds the case.
    let to = daemon.dir.path().join("backup");
    let (code, out, err) = tidings(
        &[
            "backup",
            "--config",
            &daemon.config_arg(),
            "--to",
            &to.display().to_string(),
        ],
        &[("TIDINGS_ADMIN_TOKEN", ADMIN_TOKEN), (URL_ENV, &db.url)],
    );
    assert_eq!(code, 0, "backup: {out}{err}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(to.join("manifest.json")).expect("the backup's manifest"),
    )
    .expect("a JSON manifest");
    assert_eq!(manifest["trees"]["cases"], json!(1), "{manifest}");

    // Erasure: the case, its key and every row of it go.
    let resp = daemon
        .http
        .delete(daemon.url("/v1/cases/PG-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert!(resp.status().is_success(), "DELETE: {}", resp.status());
    for table in [
        "cases",
        "case_keys",
        "outbox",
        "idempotency",
        "recipients",
        "schedule",
    ] {
        let n = cluster.psql(&db.name, &format!("SELECT count(*) FROM {table}"));
        assert_eq!(n.trim(), "0", "{table} after the erasure");
    }
    // Nothing readable of the customer anywhere in the cluster's files
    // (tables, indexes, WAL): values were sealed before they were written.
    cluster.psql(&db.name, "CHECKPOINT");
    let hits = files_holding(&cluster.data_dir(), EMAIL.as_bytes());
    assert!(hits.is_empty(), "the address in clear in {hits:?}");
    assert!(
        !daemon.log().contains(EMAIL) && !daemon.log().contains(&db.url),
        "the log holds the address or the database URL"
    );
}

#[tokio::test]
async fn migrate_applies_the_schema_once_and_bad_store_settings_are_named() {
    let Some(cluster) = postgres() else { return };
    let db = cluster.database();
    let dir = tempfile::tempdir().expect("a config dir");
    let write = |store: &str| {
        let path = Setup::new(rules("updates", &[("every", "1h")]))
            .sled()
            .extra(store)
            .write(dir.path(), free_port());
        path.display().to_string()
    };
    let config = write(&format!(
        "store:\n  postgres:\n    url_env: {URL_ENV}\n    pool_size: 2\n"
    ));
    let env = [(URL_ENV, db.url.as_str())];
    let (code, out, err) = tidings(&["migrate", "--config", &config], &env);
    assert_eq!(code, 0, "migrate: {out}{err}");
    assert!(out.contains("applied 0001_initial"), "{out}");
    assert!(out.contains("0002_inbound"), "{out}");
    assert!(out.contains("0003_replicas"), "{out}");
    assert!(out.contains("0004_live_replicas"), "{out}");
    let recorded = cluster.psql(
        &db.name,
        "SELECT version, name FROM schema_migrations ORDER BY version",
    );
    assert_eq!(
        recorded.trim(),
        "1|initial\n2|inbound\n3|replicas\n4|live_replicas"
    );
    let (code, out, _) = tidings(&["migrate", "--config", &config], &env);
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "{out}");

    // The variable unset: named with its place, for migrate and check alike.
    for command in ["migrate", "check"] {
        let (code, _, err) = tidings(&[command, "--config", &config], &[]);
        assert_eq!(code, 1, "{command}: {err}");
        assert!(
            err.contains("tidings.yaml:") && err.contains(&format!("{URL_ENV} is not set")),
            "{command}: {err}"
        );
    }
    let config = write("store: mysql\n");
    let (code, _, err) = tidings(&["check", "--config", &config], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("tidings.yaml:") && err.contains("mysql"),
        "{err}"
    );
}
