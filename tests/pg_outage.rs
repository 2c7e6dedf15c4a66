//! A PostgreSQL outage under load: the real binary on a throwaway cluster
//! (`peers::postgres`, stopped and started again by the test) with
//! Postfix's `smtp-sink`, a stream of new cases arriving and progress
//! updates coming due. While the database is down, intake answers 503 and
//! never a 2xx for a case it did not store; sends pause; when it is back,
//! the daemon takes its advisory lock again and everything goes on: every
//! case answered 2xx is there, every acknowledgement goes out, nothing
//! arrives twice. The outage lasts 5 s (`TIDINGS_PG_OUTAGE_SECS` sets
//! another length, e.g. 30). Skips when PostgreSQL or smtp-sink is missing,
//! unless `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peers::*;
use serde_json::json;

const URL_ENV: &str = "TIDINGS_TEST_DATABASE_URL";
/// The daemon's advisory lock (`src/store/postgres/schema.rs`).
const DAEMON_LOCK: i64 = 0x7469_6469_6e67_0002;

/// The tests share one cluster, and one of them stops it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn setup(sink: &Sink, db: &PgDatabase) -> Setup {
    Setup::new(rules("updates", &[("every", "2s")]))
        .smtp(sink.port)
        .extra(&format!(
            "digest:\n  window: 0s\nstore:\n  postgres:\n    url_env: {URL_ENV}\n    pool_size: 8\n"
        ))
        .env(URL_ENV, &db.url)
}

/// How one PUT was answered: its status, or no answer at all.
type Answer = Result<u16, String>;

/// PUTs a new case every 100 ms until `stop`; each case's id and answer.
async fn load(d: Arc<Daemon>, stop: Arc<AtomicBool>) -> Vec<(String, Answer)> {
    let mut answers = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("OUT-{n}");
        let mut case = case_on(&["email"]);
        case["customer"]["email"] = json!(format!("outage-{n}@example.org"));
        let answer = d
            .http
            .put(d.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .json(&case)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        answers.push((id, answer));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers
}

/// Whether the database shows the daemon's advisory lock held.
fn lock_held(cluster: &PgCluster, db: &str) -> bool {
    cluster
        .psql(
            db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
        )
        .trim()
        == "1"
}

#[tokio::test]
async fn a_database_outage_under_load_answers_503_pauses_sends_and_loses_nothing() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let outage = std::env::var("TIDINGS_PG_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let db = cluster.database();
    let sink = Sink::start(&bin).await;
    let d = setup(&sink, &db).start().await;
    let d = Arc::new(d);
    assert!(lock_held(cluster, &db.name), "the daemon holds its lock");

    let stop = Arc::new(AtomicBool::new(false));
    let stream = tokio::spawn(load(d.clone(), stop.clone()));
    // Traffic flows, then the database goes away.
    sink.wait_for(Instant::now() + Duration::from_secs(20), |m| m.len() >= 10)
        .await;
    cluster.stop_server();
    let down_at = Instant::now();
    let sent_before = sink.mails().len();
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let sent_during = sink.mails().len() - sent_before;
    cluster.start_server();
    let up_after = down_at.elapsed();
    // The daemon takes its lock again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock_held(cluster, &db.name) {
        assert!(Instant::now() < deadline, "the lock was not taken again");
        tokio::time::sleep(POLL).await;
    }
    let relocked_after = down_at.elapsed();
    // Intake answers 2xx again.
    let before_up = d.http.get(d.url("/readyz")).send().await.is_ok();
    assert!(before_up, "the daemon still runs");
    let mut resumed = false;
    for _ in 0..200 {
        let mut case = case_on(&["email"]);
        case["customer"]["email"] = json!("outage-after@example.org");
        let status = d
            .http
            .put(d.url("/v1/cases/AFTER-1"))
            .bearer_auth(TOKEN)
            .json(&case)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.is_ok_and(|s| s == 201 || s == 200) {
            resumed = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(resumed, "intake did not resume");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let answers = stream.await.expect("the load");

    let stored: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|s| (200..300).contains(s)))
        .map(|(id, _)| id.as_str())
        .collect();
    let refused = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|s| *s == 503))
        .count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(_, a)| {
            !a.as_ref()
                .is_ok_and(|s| *s == 503 || (200..300).contains(s))
        })
        .collect();
    assert!(other.is_empty(), "answers neither 2xx nor 503: {other:?}");
    assert!(refused > 0, "the outage was not seen by intake");

    // Every case answered 2xx is stored, and its acknowledgement goes out.
    let mut recorded: HashSet<String> = HashSet::new();
    for id in &stored {
        let h = d
            .wait_history(id, Duration::from_secs(60), "its ack sent", |h| {
                h.iter().any(|m| m.kind == "created" && m.status == "sent")
            })
            .await;
        recorded.extend(
            h.iter()
                .filter(|m| m.status == "sent")
                .map(|m| m.id.clone()),
        );
    }
    let (mails, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(30), |m| {
            m.iter()
                .map(|m| m.id().to_owned())
                .collect::<HashSet<_>>()
                .is_superset(&recorded)
        })
        .await;
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for m in &mails {
        *per_id.entry(m.id()).or_default() += 1;
    }
    let twice = per_id.values().filter(|n| **n > 1).count();
    println!(
        "outage {outage} s (database back after {:.1} s, lock taken again after {:.1} s): \
         {} PUTs answered 2xx, {refused} answered 503, {} otherwise; \
         {} emails sent ({sent_during} while the database was down), \
         {} recorded as sent, {} missing at the relay, {twice} sent twice",
        up_after.as_secs_f64(),
        relocked_after.as_secs_f64(),
        stored.len(),
        other.len(),
        mails.len(),
        recorded.len(),
        recorded
            .iter()
            .filter(|id| !per_id.contains_key(id.as_str()))
            .count(),
    );
    assert!(ok, "a message recorded as sent did not arrive");
    assert_eq!(twice, 0, "messages sent twice");
}

#[tokio::test]
async fn a_daemon_whose_database_another_process_took_to_itself_meanwhile_stops_and_says_why() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = cluster.database();
    let sink = Sink::start(&bin).await;
    let mut d = setup(&sink, &db).start().await;
    d.put_case("TAKEN-1", &case_on(&["email"])).await;

    // One session ends the daemon's lock session and takes the lock alone
    // as soon as it is free (before the daemon can take it again), holding
    // it a while: as a `migrate-store` would after a database restart.
    let (port, name) = (cluster.port, db.name.clone());
    let holder = std::thread::spawn(move || {
        std::process::Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", &name, "-c"])
            .arg(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_locks \
                  WHERE locktype = 'advisory' AND granted AND objid = ({DAEMON_LOCK} & 4294967295)::oid; \
                 SELECT pg_advisory_lock({DAEMON_LOCK}); SELECT pg_sleep(5);"
            ))
            .output()
            .expect("run psql")
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let child = d.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().expect("poll the daemon") {
            break status;
        }
        assert!(Instant::now() < deadline, "the daemon kept running");
        tokio::time::sleep(POLL).await;
    };
    d.child = None;
    let out = holder.join().expect("the lock holder");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "the daemon exited {status}");
    let log = d.log();
    assert!(
        log.contains("has this database to itself") && log.contains("this daemon stopped"),
        "{log}"
    );
    println!("the daemon stopped ({status}) once another session held its lock");
}
