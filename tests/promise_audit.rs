//! Promise accounting through the binary: a fast rule sends progress
//! updates to a real smtp-sink, the case is resolved, and then
//! `tidings audit` (asking the running daemon, then reading the stopped
//! store) and `/metrics` agree on kept, late and superseded, with every
//! promise settled.

mod peers;

use std::time::Duration;

use peers::*;
use serde_json::Value;

/// The sum of `tidings_promises_total` over every series with `result`.
fn promises_metric(text: &str, result: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("tidings_promises_total{"))
        .filter(|l| l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn totals(audit: &Value) -> [u64; 4] {
    let rows = audit["rows"].as_array().expect("rows");
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum();
    [
        sum("kept"),
        sum("late"),
        sum("superseded"),
        sum("open") + sum("overdue"),
    ]
}

fn audit_json(d: &Daemon) -> Value {
    let (code, out, err) = tidings(
        &["audit", "--config", &d.config_arg(), "--json"],
        &[("TIDINGS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test]
async fn audit_and_metrics_agree_and_every_promise_is_settled() {
    let Some(bin) = peer_or_skip(smtp_sink(), "smtp-sink", "apt-get install postfix") else {
        return;
    };
    let sink = Sink::start(&bin).await;
    let mut d = Setup::new(rules("updates", &[("every", "1s")]))
        .smtp(sink.port)
        .admin()
        .start()
        .await;
    d.put_case("PA-1", &case_on(&["email"])).await;
    d.wait_history(
        "PA-1",
        Duration::from_secs(30),
        "four progress updates sent",
        |h| {
            h.iter()
                .filter(|m| m.kind == "progress" && m.status == "sent")
                .count()
                >= 4
        },
    )
    .await;
    let mut resolved = case_on(&["email"]);
    resolved["status"] = "resolved".into();
    let req = d.http.put(d.url("/v1/cases/PA-1")).json(&resolved);
    d.call(req, 200, "PUT resolved").await;
    let h = d
        .wait_history(
            "PA-1",
            Duration::from_secs(15),
            "the resolution sent",
            |h| h.iter().any(|m| m.kind == "resolved" && m.status == "sent"),
        )
        .await;
    let promised = h.iter().filter(|m| m.promised.is_some()).count() as u64;
    // The outcome is filed on each message that made a promise.
    let messages = d.messages("PA-1").await;
    for m in messages
        .iter()
        .filter(|m| m["promised_next_update_at"].is_string())
    {
        assert!(
            ["kept", "late", "superseded"].contains(&m["promise"]["result"].as_str().unwrap_or("")),
            "{m}"
        );
    }
    // Every message that reached the customer with a promise: all settled.
    let (_, arrived) = sink
        .wait_for(std::time::Instant::now() + Duration::from_secs(10), |m| {
            m.len() == h.len()
        })
        .await;
    assert!(arrived, "the sink holds every message of the history");

    let online = audit_json(&d);
    let [kept, late, superseded, unsettled] = totals(&online);
    println!("promises: {promised} made, kept {kept}, late {late}, superseded {superseded}");
    assert_eq!(unsettled, 0, "a promise is still open: {online}");
    assert_eq!(kept + late + superseded, promised, "{online}");
    let metrics = d.metrics().await;
    assert_eq!(
        [
            promises_metric(&metrics, "kept"),
            promises_metric(&metrics, "late"),
            promises_metric(&metrics, "superseded")
        ],
        [kept, late, superseded],
        "/metrics and the audit disagree:\n{metrics}"
    );
    assert!(metrics.contains("tidings_promise_lateness_seconds_count"));

    if d.store.is_postgres() {
        // On PostgreSQL the command always asks the daemon (the store is
        // not in `data_dir`): the text report now, and a stopped daemon
        // is named as the reason there is none.
        let mut env = d.env();
        env.push(("TIDINGS_ADMIN_TOKEN", ADMIN_TOKEN));
        let (code, text, err) = tidings(&["audit", "--config", &d.config_arg()], &env);
        assert_eq!(code, 0, "{err}");
        assert!(
            text.contains("helpdesk") && text.contains("kept %"),
            "{text}"
        );
        drop(env);
        d.stop();
        let mut env = d.env();
        env.push(("TIDINGS_ADMIN_TOKEN", ADMIN_TOKEN));
        let (code, _, err) = tidings(&["audit", "--config", &d.config_arg()], &env);
        assert_ne!(code, 0, "an audit with the daemon stopped: {err}");
        assert!(err.contains("cannot be reached"), "{err}");
        return;
    }
    // With the daemon stopped the command reads the store: the same.
    d.stop();
    assert_eq!(audit_json(&d), online);
    let (code, text, err) = tidings(&["audit", "--config", &d.config_arg()], &d.env());
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("helpdesk") && text.contains("kept %"),
        "{text}"
    );
}
