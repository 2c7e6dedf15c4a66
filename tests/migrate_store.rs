//! `tidings migrate-store`: an installation moves from sled to PostgreSQL.
//!
//! The real binary runs on sled with Postfix's `smtp-sink`: cases arrive
//! (one with a stored idempotent answer), a customer opts out with the
//! link of their email, and a message is left waiting in the outbox (the
//! relay is gone). The daemon stops, `migrate-store` copies the store into
//! a throwaway PostgreSQL cluster and prints its counts, and a daemon on
//! PostgreSQL (same config otherwise) goes on: the cases read back equal,
//! the waiting message arrives once at a new relay and nothing else is
//! sent again, the opt-out holds, an unsubscribe link from before still
//! works and the replayed PUT answers the same. Skips when PostgreSQL or
//! smtp-sink is missing, unless `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use peers::*;
use serde_json::{Value, json};

const URL_ENV: &str = "TIDINGS_TEST_DATABASE_URL";
const A: &str = "migrate-a.51c2@example.org";
const B: &str = "migrate-b.51c2@example.org";
const C: &str = "migrate-c.51c2@example.org";

fn case_for(email: &str) -> Value {
    let mut case = case_on(&["email"]);
    case["customer"]["email"] = json!(email);
    case
}

fn setup(smtp_port: u16, db: &PgDatabase, store: &str) -> Setup {
    Setup::new(rules("ack-only", &[]))
        .smtp(smtp_port)
        .delivery(10, "1s", "5s")
        .extra(&format!("digest:\n  window: 0s\n{store}"))
        .env(URL_ENV, &db.url)
}

fn postgres_store() -> String {
    format!("store:\n  postgres:\n    url_env: {URL_ENV}\n    pool_size: 4\n")
}

/// The `List-Unsubscribe` link of the first email to `to`.
fn unsubscribe_link(sink: &Sink, to: &str) -> String {
    sink.mails()
        .iter()
        .map(|m| std::fs::read_to_string(sink.dir.path().join(&m.file)).unwrap_or_default())
        .map(|raw| raw.replace("\r\n ", " ").replace("\r\n\t", " "))
        .find(|raw| raw.contains(to))
        .and_then(|raw| {
            raw.lines()
                .find_map(|l| l.strip_prefix("List-Unsubscribe: ").map(str::to_owned))
        })
        .map(|l| l.trim_matches(['<', '>']).to_owned())
        .unwrap_or_else(|| panic!("no email with a List-Unsubscribe to {to}"))
}

/// A one-click unsubscribe through `link`; the answer's status.
async fn one_click(d: &Daemon, link: &str) -> u16 {
    d.http
        .post(link)
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .expect("a one-click unsubscribe")
        .status()
        .as_u16()
}

/// PUT with an idempotency key: status, body and whether it was replayed.
async fn idempotent_put(d: &Daemon, id: &str, body: &Value) -> (u16, Value, bool) {
    let resp = d
        .http
        .put(d.url(&format!("/v1/cases/{id}")))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", "migrate-put-1")
        .json(body)
        .send()
        .await
        .expect("PUT");
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (status, resp.json().await.unwrap_or(Value::Null), replayed)
}

/// How many emails arrived per message id.
fn per_id(sink: &Sink) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for m in sink.mails() {
        *n.entry(m.id().to_owned()).or_default() += 1;
    }
    n
}

#[tokio::test]
async fn a_sled_store_moves_to_postgres_and_the_daemon_goes_on_there() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let db = cluster.database();
    let first_relay = Sink::start(&bin).await;
    let mut d = setup(first_relay.port, &db, "").start().await;

    // On sled: A's case through an idempotent PUT, B's case and B's
    // opt-out through the link of B's acknowledgement.
    let (status, put_answer, replayed) = idempotent_put(&d, "MIG-1", &case_for(A)).await;
    assert_eq!((status, replayed), (201, false), "{put_answer}");
    d.put_case("MIG-2", &case_for(B)).await;
    let (_, ok) = first_relay
        .wait_for(Instant::now() + Duration::from_secs(15), |m| m.len() >= 2)
        .await;
    assert!(ok, "both acknowledgements arrived on sled");
    let link_a = unsubscribe_link(&first_relay, A);
    let link_b = unsubscribe_link(&first_relay, B);
    assert_eq!(one_click(&d, &link_b).await, 200, "B's unsubscribe on sled");
    d.wait_history("MIG-2", Duration::from_secs(15), "B's ack sent", |h| {
        h.iter().all(|m| m.status == "sent")
    })
    .await;
    d.wait_history("MIG-1", Duration::from_secs(15), "A's ack sent", |h| {
        h.iter().all(|m| m.status == "sent")
    })
    .await;
    // The relay goes: C's acknowledgement stays in the outbox.
    let sent_on_sled = per_id(&first_relay);
    drop(first_relay);
    d.put_case("MIG-3", &case_for(C)).await;
    let waiting: Vec<String> = d
        .history("MIG-3")
        .await
        .iter()
        .filter(|m| m.status == "pending")
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(waiting.len(), 1, "C's acknowledgement waits");
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for id in ["MIG-1", "MIG-2"] {
            v.push(d.get_case(id).await);
        }
        v
    };
    let case_3 = d.get_case("MIG-3").await;

    // While the daemon runs, its store is not copied.
    let sled_arg = format!("sled:{}", d.dir.path().join("data").display());
    let pg_config = d.dir.path().join("postgres.yaml");
    let second_relay = Sink::start(&bin).await;
    let sled_config = d.dir.path().join("sled.yaml");
    std::fs::rename(d.config_path(), &sled_config).expect("keep the sled config");
    setup(second_relay.port, &db, &postgres_store()).write(d.dir.path(), d.port);
    std::fs::rename(d.config_path(), &pg_config).expect("keep the postgres config");
    std::fs::rename(&sled_config, d.config_path()).expect("the sled config back");
    let migrate = |force: bool| {
        let mut args = vec![
            "migrate-store",
            "--from",
            &sled_arg,
            "--to",
            "postgres",
            "--config",
            pg_config.to_str().expect("utf-8 path"),
        ];
        if force {
            args.push("--force");
        }
        tidings(&args, &[(URL_ENV, &db.url)])
    };
    let (code, out, err) = migrate(false);
    assert_eq!(code, 1, "migrate-store beside a running daemon: {out}{err}");
    assert!(err.contains("stop it first"), "{err}");

    d.stop();
    let (code, out, err) = migrate(false);
    println!("{out}{err}");
    assert_eq!(code, 0, "migrate-store: {out}{err}");
    assert!(out.contains("every count matches"), "{out}");
    let counts: HashMap<&str, (u64, u64)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let kind = w.next()?;
            let read = w.next()?.parse().ok()?;
            let written = w.next()?.parse().ok()?;
            Some((kind, (read, written)))
        })
        .collect();
    for (kind, n) in [
        ("cases", 3),
        ("outbox", 1),
        ("idempotency", 1),
        ("optouts", 1),
        ("meta", 2),
    ] {
        assert_eq!(counts.get(kind), Some(&(n, n)), "{kind} in {out}");
    }
    // Each case has a key of its own, and no value is in clear.
    let keys = cluster.psql(&db.name, "SELECT count(*) FROM case_keys");
    assert_eq!(keys.trim(), "3", "one key per case");
    for table in ["cases", "outbox", "idempotency"] {
        for email in [A, B, C] {
            let n = cluster.psql(
                &db.name,
                &format!(
                    "SELECT count(*) FROM {table} WHERE position(convert_to('{email}', 'UTF8') IN value) > 0"
                ),
            );
            assert_eq!(n.trim(), "0", "{email} in clear in {table}");
        }
    }
    // A second copy onto a database that holds cases is refused.
    let (code, out, err) = migrate(false);
    assert_eq!(code, 1, "a second migrate-store: {out}{err}");
    assert!(err.contains("--force"), "{err}");

    // The daemon on PostgreSQL.
    std::fs::rename(&pg_config, d.config_path()).expect("switch to the postgres config");
    d.spawn().await;
    for (id, was) in ["MIG-1", "MIG-2"].iter().zip(&before) {
        assert_eq!(&d.get_case(id).await, was, "{id} reads back equal");
    }
    assert_eq!(
        d.get_case("MIG-3").await["case"],
        case_3["case"],
        "MIG-3 reads back equal"
    );
    // The waiting message goes out once, and nothing sent before goes again.
    let (_, ok) = second_relay
        .wait_for(Instant::now() + Duration::from_secs(20), |m| {
            m.iter().any(|m| m.id() == waiting[0])
        })
        .await;
    assert!(ok, "the waiting acknowledgement arrived");
    d.wait_history("MIG-3", Duration::from_secs(15), "C's ack sent", |h| {
        h.iter().all(|m| m.status == "sent")
    })
    .await;
    // B's opt-out holds: a new case of B's sends nothing.
    d.put_case("MIG-4", &case_for(B)).await;
    d.wait_history("MIG-4", Duration::from_secs(15), "B's ack not sent", |h| {
        !h.is_empty() && h.iter().all(|m| m.status == "cancelled")
    })
    .await;
    // The link A got on sled still works; the replayed PUT answers the same.
    assert_eq!(
        one_click(&d, &link_a).await,
        200,
        "A's link from before the move"
    );
    let (status, again, replayed) = idempotent_put(&d, "MIG-1", &case_for(A)).await;
    assert_eq!(
        (status, &again, replayed),
        (201, &put_answer, true),
        "the replayed PUT"
    );

    let after = per_id(&second_relay);
    let twice: Vec<_> = after
        .iter()
        .filter(|(id, n)| **n > 1 || sent_on_sled.contains_key(*id))
        .collect();
    println!(
        "after the move: {} emails at the new relay ({} before it), sent again: {}",
        after.values().sum::<usize>(),
        sent_on_sled.len(),
        twice.len()
    );
    assert!(twice.is_empty(), "sent again: {twice:?}");
    assert_eq!(after.get(&waiting[0]), Some(&1), "the waiting one once");
}
