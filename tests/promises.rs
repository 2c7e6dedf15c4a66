//! Promises under load and races, through the binary (smtp-sink as the
//! relay where one is needed): SIGTERM with many cases due, a relay outage
//! that must not turn into a backlog of stale promises, one Idempotency-Key
//! on two cases at once, acknowledgements before progress to a paced
//! address, a big digest, and addresses no relay can deliver.
//!
//! Sizes are small in `cargo test`; `TIDINGS_PROMISES_CASES=N` runs the
//! load tests with N cases (the figures in RELIABILITY.md used 5,000).

mod peers;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use peers::*;
use serde_json::{Value, json};

fn cases_under_load() -> usize {
    std::env::var("TIDINGS_PROMISES_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// The sample case with its own address, email only.
fn case_for(n: usize) -> Value {
    let mut c = case_on(&["email"]);
    c["customer"]["email"] = json!(format!("customer{n}@example.com"));
    c
}

/// Puts `n` cases (ids `{prefix}-{i}`), one after another.
async fn put_many(daemon: &Daemon, prefix: &str, n: usize, body: impl Fn(usize) -> Value) {
    for i in 0..n {
        daemon.put_case(&format!("{prefix}-{i}"), &body(i)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_many_cases_due_every_second_exits_within_grace() {
    let Some(bin) = smtp_sink() else { return };
    // A slow relay (a second per DATA): sends are in flight, the rest due.
    let sink = Sink::start_with(&bin, &["-w", "1"]).await;
    let n = cases_under_load();
    let mut daemon = Setup::new(rules("updates", &[("every", "1s")]))
        .smtp(sink.port)
        .extra("shutdown:\n  grace: 3s\ndigest:\n  window: 0s\n")
        .start()
        .await;
    put_many(&daemon, "LOAD", n, case_for).await;
    // Let the updates fall due while the relay crawls.
    let depth = eventually(
        Duration::from_secs(60.max(n as u64 / 100)),
        "every case due at least once",
        async || {
            let m = daemon.metrics().await;
            let due = metric(&m, "tidings_due_lateness_seconds_count").unwrap_or(0.0);
            if due >= n as f64 {
                Ok(metric(&m, "tidings_outbox_depth").unwrap_or(0.0))
            } else {
                Err(format!("{due} due instants handled"))
            }
        },
    )
    .await;
    let rss = daemon.peak_rss_mib().unwrap_or(0.0);
    let (took, status) = daemon.terminate();
    println!(
        "load: {n} cases on every: 1s, slow relay; outbox {depth} at SIGTERM, peak RSS {rss:.0} MiB; exited in {:.2}s ({status})",
        took.as_secs_f64()
    );
    assert!(status.success(), "exit {status}; log:\n{}", daemon.log());
    assert!(
        took <= Duration::from_secs(4),
        "took {took:?} with a 3 s grace"
    );
    assert!(
        depth <= (2 * n) as f64,
        "outbox {depth}: more than an acknowledgement and one update per case"
    );
    assert!(rss <= 512.0, "peak RSS {rss:.0} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_outage_leaves_one_current_update_per_case_not_a_burst_of_stale_ones() {
    let Some(bin) = smtp_sink() else { return };
    let port = free_port();
    let n = 20;
    let daemon = Setup::new(rules("updates", &[("every", "2s")]))
        .smtp(port)
        .delivery(100, "200ms", "1s")
        .extra("digest:\n  window: 0s\n")
        .start()
        .await;
    put_many(&daemon, "OUT", n, case_for).await;
    // Eight seconds without a relay: four updates fall due per case.
    let mut deepest = 0.0f64;
    let outage = Instant::now() + Duration::from_secs(8);
    while Instant::now() < outage {
        let m = daemon.metrics().await;
        deepest = deepest.max(metric(&m, "tidings_outbox_depth").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sink = Sink::start_on(&bin, &[], port).await;
    let back = std::time::SystemTime::now();
    let (_, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(30), |m| {
            m.len() >= 2 * n
        })
        .await;
    assert!(ok, "after the outage not every case heard from us");
    // What arrived per case in the first 1.5 s after the relay came back
    // (the cadence allows one or two; a backlog would bring four or more).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut per_case: HashMap<String, usize> = HashMap::new();
    let mut stale = Vec::new();
    for i in 0..n {
        let id = format!("OUT-{i}");
        for m in daemon.history(&id).await {
            if m.kind != "progress" || m.status != "sent" {
                continue;
            }
            let sent_at = m.sent_at.expect("a sent message has sent_at");
            if m.promised.is_some_and(|p| p <= sent_at) {
                stale.push((id.clone(), m.promised, sent_at));
            }
            if sent_at.signed_duration_since(chrono::DateTime::<chrono::Utc>::from(back))
                <= chrono::Duration::milliseconds(1500)
            {
                *per_case.entry(id.clone()).or_default() += 1;
            }
        }
    }
    let burst = per_case.values().copied().max().unwrap_or(0);
    println!(
        "outage: {n} cases on every: 2s, 8 s without a relay: outbox at most {deepest}; in the 1.5 s after it came back at most {burst} progress update(s) per case; {} sent promising a past time",
        stale.len()
    );
    assert!(
        deepest <= (2 * n) as f64,
        "outbox reached {deepest}: the backlog grows while the relay is down"
    );
    assert!(burst <= 3, "a burst of {burst} updates to one customer");
    assert!(stale.is_empty(), "sent promising a past time: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_on_two_cases_at_once_is_fresh_once() {
    let daemon = Setup::new(rules("updates", &[])).start().await;
    let mut fresh_twice = 0;
    for trial in 0..5 {
        let key = format!("same-key-{trial}");
        let put = |id: String| {
            daemon
                .http
                .put(daemon.url(&format!("/v1/cases/{id}")))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key.clone())
                .json(&case_on(&["email"]))
                .send()
        };
        let (a, b) = tokio::join!(put(format!("A-{trial}")), put(format!("B-{trial}")));
        let mut codes = [
            a.expect("PUT").status().as_u16(),
            b.expect("PUT").status().as_u16(),
        ];
        codes.sort_unstable();
        if codes == [201, 201] {
            fresh_twice += 1;
        }
        assert_eq!(codes, [201, 409], "trial {trial}");
    }
    assert_eq!(fresh_twice, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_reach_a_paced_address_before_any_progress_update() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    // Progress every 4 s, one email a second to the address: the four
    // acknowledgements fill the first four slots, with seconds to spare for
    // a slow PUT on a busy machine.
    let daemon = Setup::new(rules("updates", &[("every", "4s")]))
        .smtp(sink.port)
        .email("min_gap: 1s")
        .extra("digest:\n  window: 0s\n")
        .start()
        .await;
    let n = 4;
    // One customer, four cases at once (concurrently, so all four exist
    // before the first progress update can fall due, even on a busy machine).
    let body = case_on(&["email"]);
    tokio::join!(
        daemon.put_case("GAP-0", &body),
        daemon.put_case("GAP-1", &body),
        daemon.put_case("GAP-2", &body),
        daemon.put_case("GAP-3", &body),
    );
    let (mails, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(20), |m| m.len() > n)
        .await;
    assert!(ok, "only {} messages", mails.len());
    let mut kind_of: HashMap<String, String> = HashMap::new();
    for i in 0..n {
        for m in daemon.history(&format!("GAP-{i}")).await {
            kind_of.insert(m.id, m.kind);
        }
    }
    let order: Vec<&str> = mails
        .iter()
        .map(|m| kind_of.get(m.id()).map_or("?", String::as_str))
        .collect();
    println!("paced arrivals: {order:?}");
    assert!(
        order[..n].iter().all(|k| *k == "created"),
        "the first {n} to arrive are the acknowledgements: {order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_too_big_to_render_still_brings_every_case_its_update() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let daemon = Setup::new(rules("updates", &[("every", "3s")]))
        .smtp(sink.port)
        .extra("digest:\n  window: 1h\n")
        .start()
        .await;
    let n = 60;
    put_many(&daemon, "BIG", n, |_| case_on(&["email"])).await;
    let note = "🚚📦 The courier is on the way ".repeat(300);
    for i in 0..n {
        daemon
            .event(&format!("BIG-{i}"), json!({ "type": "note", "body": note }))
            .await;
    }
    for i in 0..n {
        daemon
            .wait_history(
                &format!("BIG-{i}"),
                Duration::from_secs(60),
                "a progress update sent",
                |h| h.iter().any(|m| m.kind == "progress" && m.status == "sent"),
            )
            .await;
    }
    let m = daemon.metrics().await;
    let fallbacks = metric(&m, r#"tidings_digest_fallbacks_total{channel="email"}"#);
    println!(
        "big digest: {n} cases of one customer with {} KiB notes: every case got its update; digest fallbacks {fallbacks:?}",
        note.len() / 1024
    );
    assert!(fallbacks.is_some(), "the fallback counter is exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_no_relay_can_deliver_are_refused_at_intake() {
    let daemon = Setup::new(rules("updates", &[])).start().await;
    for bad in [
        "\"a b\"@example.com",
        "a@[127.0.0.1]",
        "ä@bücher.example",
        "a..b@example.com",
    ] {
        let mut body = case_on(&["email"]);
        body["customer"]["email"] = json!(bad);
        let r = daemon
            .http
            .put(daemon.url("/v1/cases/ADDR-1"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status().as_u16(), 422, "{bad}");
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["field"], "customer.email", "{bad}: {err}");
    }
    let mut body = case_on(&["email"]);
    body["customer"]["email"] = json!("maria@bücher.example");
    let case = daemon.put_case("ADDR-2", &body).await;
    assert_eq!(case["customer"]["email"], "maria@xn--bcher-kva.example");
    let r = daemon
        .http
        .put(daemon.url("/v1/cases/.."))
        .bearer_auth(TOKEN)
        .json(&case_on(&["email"]))
        .send()
        .await
        .expect("PUT");
    assert!(r.status().is_client_error(), "{}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_case_in_a_held_digest_gives_the_others_their_own_update() {
    // No relay: everything stays in the outbox, retried every 5 s.
    let daemon = Setup::new(rules("updates", &[("every", "4s")]))
        .smtp(free_port())
        .delivery(100, "5s", "5s")
        .extra("digest:\n  window: 1h\n")
        .start()
        .await;
    daemon.put_case("KEEP", &case_on(&["email"])).await;
    daemon.put_case("GONE", &case_on(&["email"])).await;
    let digest_of = |h: &[Value]| {
        h.iter()
            .find(|m| m["covers"].as_array().is_some_and(|c| c.len() == 2))
            .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
    };
    let held = daemon
        .wait_messages("KEEP", Duration::from_secs(15), "a digest held", |h| {
            digest_of(h).is_some()
        })
        .await;
    let digest = digest_of(&held).expect("the digest");
    let promised = held
        .iter()
        .find(|m| m["id"] == digest)
        .and_then(|m| instant(&m["promised_next_update_at"]))
        .expect("the digest's promise");
    let r = daemon
        .http
        .delete(daemon.url("/v1/cases/GONE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status().as_u16(), 204);
    let after = daemon
        .wait_messages("KEEP", Duration::from_secs(10), "its own update", |h| {
            let cancelled = h
                .iter()
                .any(|m| m["id"] == digest && m["status"] == "cancelled");
            // Its own update at once, not a full interval later.
            let own = h.iter().skip_while(|m| m["id"] != digest).any(|m| {
                m["kind"] == "progress"
                    && m["covers"].as_array().is_none_or(|c| c.is_empty())
                    && instant(&m["due_at"]).is_some_and(|d| d < promised)
            });
            cancelled && own
        })
        .await;
    println!(
        "held digest: after DELETE, KEEP's history: {:?}",
        after
            .iter()
            .map(|m| (m["kind"].clone(), m["status"].clone()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_racing_erasures_are_all_or_nothing() {
    let n = 300;
    let daemon = Setup::new(rules("updates", &[("every", "1h")]))
        .admin()
        .start()
        .await;
    put_many(&daemon, "RACE", n, case_for).await;
    let reload = || {
        daemon
            .http
            .post(daemon.url("/-/reload"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let delete = |i: usize| {
        daemon
            .http
            .delete(daemon.url(&format!("/v1/cases/RACE-{i}")))
            .bearer_auth(TOKEN)
            .send()
    };
    // Every second case erased while reloads walk the store.
    let mut statuses = Vec::new();
    for chunk in (0..n).step_by(2).collect::<Vec<_>>().chunks(6) {
        let erasures = async {
            for i in chunk {
                assert_eq!(delete(*i).await.expect("DELETE").status().as_u16(), 204);
            }
        };
        let (r, ()) = tokio::join!(reload(), erasures);
        statuses.push(r.expect("reload").status().as_u16());
    }
    let m = daemon.metrics().await;
    let failed = metric(&m, r#"tidings_reload_total{result="failure"}"#).unwrap_or(0.0);
    println!("reloads racing erasures: {statuses:?}; failures counted {failed}");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(failed, 0.0);
    // The survivors all run on the rules in force.
    for i in (1..n).step_by(2) {
        let case = daemon.get_case(&format!("RACE-{i}")).await;
        assert!(case["next_update_at"].is_string(), "RACE-{i}: {case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_text_loses_direction_overrides_and_due_instants_are_counted_once() {
    let daemon = Setup::new(rules("updates", &[("every", "1s")]))
        .admin()
        .start()
        .await;
    let mut body = case_on(&["email"]);
    body["subject"] = json!("Invoice \u{202E}fdp.exe\u{202C} \u{200F}ready");
    body["customer"]["name"] = json!("Maria \u{202E}Hernandez");
    let case = daemon.put_case("BIDI-1", &body).await;
    assert_eq!(case["subject"], "Invoice fdp.exe ready");
    assert_eq!(case["customer"]["name"], "Maria Hernandez");
    // Each progress update is one due instant handled, not two.
    let h = daemon
        .wait_history(
            "BIDI-1",
            Duration::from_secs(15),
            "three updates sent",
            |h| {
                h.iter()
                    .filter(|m| m.kind == "progress" && m.status == "sent")
                    .count()
                    >= 3
            },
        )
        .await;
    let m = daemon.metrics().await;
    let handled = metric(&m, "tidings_due_lateness_seconds_count").unwrap_or(0.0);
    let planned = h.iter().filter(|m| m.kind == "progress").count() as f64;
    println!("due instants handled {handled}, progress updates planned {planned}");
    assert!(
        (handled - planned).abs() <= 1.0,
        "{handled} due instants for {planned} updates"
    );
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_used_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").expect("a file");
    let setup = Setup::new(rules("updates", &[])).data_dir(&file);
    let config = setup.write(dir.path(), free_port());
    let config = config.display().to_string();
    let (code, _, stderr) = tidings(&["serve", "--config", &config], &setup.env_pairs());
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()),
        "the path is named: {stderr}"
    );
}
