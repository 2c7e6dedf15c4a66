//! Operating the daemon: reload (SIGHUP and `POST /-/reload`), `/metrics`,
//! backup and restore. Each test runs the real binary, as systemd would,
//! with a temp config, the shipped templates and the file email transport.

mod common;
mod peers;

use std::path::Path;
use std::time::{Duration, Instant};

use peers::{ADMIN_TOKEN, Setup, TOKEN, case_named, eventually, metric, rules, tidings};

/// The daemon these tests run: admin endpoints open, the file email
/// transport, a progress update `every` while a case is open.
fn setup(every: &str) -> Setup {
    Setup::new(rules("updates", &[("every", every)])).admin()
}

/// The sample case, as the ticket system sends it.
fn case() -> serde_json::Value {
    case_named("maria")
}

fn next_update_at(case: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    case["next_update_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no next_update_at in {case}"))
}

fn hours_between(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> f64 {
    (b - a).num_seconds() as f64 / 3600.0
}

#[tokio::test]
async fn a_broken_rules_file_on_sighup_is_rejected_and_the_old_rules_keep_serving() {
    let mut daemon = setup("1h").start().await;
    let before = daemon.put_case("CASE-1", &case()).await;
    let promised = next_update_at(&before);

    daemon.write_rules(&rules("broken", &[]));
    daemon.signal("-HUP");
    let failures = daemon
        .wait_metric(r#"tidings_reload_total{result="failure"}"#, 1.0)
        .await;
    assert!((failures - 1.0).abs() < f64::EPSILON, "{failures}");
    let scrape = daemon.metrics().await;
    assert_eq!(
        metric(&scrape, r#"tidings_reload_total{result="success"}"#),
        Some(0.0)
    );

    // Every problem `tidings check` finds is logged, with file:line:column.
    let (code, _, diagnostics) = tidings(&["check", "--config", &daemon.config_arg()], &[]);
    assert_eq!(code, 1);
    assert!(diagnostics.contains("rules.yaml:6:"), "{diagnostics}");
    let log = daemon.log();
    for line in diagnostics.lines() {
        assert!(log.contains(line), "`{line}` is not in the log:\n{log}");
    }
    assert!(log.contains("pigeon"), "{log}");

    // Still serving, still planning under the hourly rule, still sending.
    let after = daemon.get_case("CASE-1").await;
    assert_eq!(next_update_at(&after), promised);
    let fresh = daemon.put_case("CASE-2", &case()).await;
    let gap = hours_between(chrono::Utc::now(), next_update_at(&fresh));
    assert!((0.9..=1.01).contains(&gap), "{gap} h");
    eventually(
        Duration::from_secs(10),
        "the acknowledgements sent",
        async || match daemon.emails().len() {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} email files")),
        },
    )
    .await;
    assert!(!log.contains("maria.hernandez@example.com"), "{log}");
    daemon.stop();
}

#[tokio::test]
async fn a_valid_change_on_sighup_reschedules_open_cases_and_keeps_promises_made() {
    let mut daemon = setup("1h").start().await;
    let first = daemon.put_case("CASE-1", &case()).await;
    // The acknowledgement promised the first update an hour from now.
    let hourly = next_update_at(&first);

    // A faster rule brings the next update forward.
    daemon.write_rules(&rules("updates", &[("every", "30m")]));
    daemon.signal("-HUP");
    daemon
        .wait_metric(r#"tidings_reload_total{result="success"}"#, 1.0)
        .await;
    let after = daemon.get_case("CASE-1").await;
    let moved = hours_between(next_update_at(&after), hourly);
    assert!((0.49..=0.51).contains(&moved), "moved forward by {moved} h");

    // A slower one does not move it past the promise already made: the
    // hour stands, the five-hour cadence starts after it.
    daemon.write_rules(&rules("updates", &[("every", "5h")]));
    daemon.signal("-HUP");
    daemon
        .wait_metric(r#"tidings_reload_total{result="success"}"#, 2.0)
        .await;
    let after = daemon.get_case("CASE-1").await;
    assert_eq!(next_update_at(&after), hourly, "the promise is kept");
    let fresh = daemon.put_case("CASE-2", &case()).await;
    let gap = hours_between(chrono::Utc::now(), next_update_at(&fresh));
    assert!(
        (4.9..=5.01).contains(&gap),
        "a new case runs on the new rule: {gap} h"
    );
    assert!(
        daemon.log().contains("configuration reloaded"),
        "{}",
        daemon.log()
    );
    daemon.stop();
}

#[tokio::test]
async fn reload_over_http_needs_the_admin_token_and_reports_problems() {
    let mut daemon = setup("1h").start().await;
    let url = daemon.url("/-/reload");
    let reload = async |token: Option<&str>| {
        let mut req = daemon.http.post(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("POST");
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    };
    assert_eq!(reload(None).await.0, 401);
    // A ticket system's token is not an admin token.
    assert_eq!(reload(Some(TOKEN)).await.0, 401);

    let (status, body) = reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(body["rescheduled"], 0, "{body}");

    daemon.write_rules(&rules("broken", &[]));
    let (status, body) = reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 422);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("rules.yaml:6:23"), "{body}");
    let scrape = daemon.metrics().await;
    assert_eq!(
        metric(&scrape, r#"tidings_reload_total{result="failure"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&scrape, r#"tidings_reload_total{result="success"}"#),
        Some(1.0)
    );
    daemon.stop();
}

#[tokio::test]
async fn metrics_expose_the_operations_series_after_a_case_is_sent() {
    let mut daemon = setup("1s").start().await;
    daemon.put_case("CASE-1", &case()).await;
    // The acknowledgement, then at least one scheduled progress update.
    daemon
        .wait_metric(
            r#"tidings_messages_total{channel="email",rule="progress",result="sent"}"#,
            1.0,
        )
        .await;
    let text = daemon.metrics().await;
    println!("{text}");
    let sent = metric(
        &text,
        r#"tidings_messages_total{channel="email",rule="created",result="sent"}"#,
    );
    assert!(sent.is_some_and(|n| n >= 1.0), "{text}");
    for name in [
        "tidings_cases_open",
        "tidings_messages_total",
        "tidings_outbox_depth",
        "tidings_outbox_oldest_age_seconds",
        "tidings_due_lateness_seconds",
        "tidings_reload_total",
        "tidings_http_requests_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is missing:\n{text}"
        );
    }
    assert_eq!(
        metric(&text, r#"tidings_cases_open{status="open"}"#),
        Some(1.0)
    );
    assert!(
        metric(&text, r#"tidings_http_requests_total{status="201"}"#).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        metric(&text, "tidings_due_lateness_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // /metrics needs no token, and names no customer.
    assert!(!text.contains("example.com"), "{text}");

    // The open-case gauge follows status changes and survives a restart.
    daemon
        .event(
            "CASE-1",
            serde_json::json!({"type": "status", "status": "on_hold"}),
        )
        .await;
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, r#"tidings_cases_open{status="open"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, r#"tidings_cases_open{status="on_hold"}"#),
        Some(1.0)
    );
    daemon.stop();
    daemon.spawn().await;
    let text = daemon.metrics().await;
    assert_eq!(
        metric(&text, r#"tidings_cases_open{status="on_hold"}"#),
        Some(1.0),
        "{text}"
    );
    daemon.stop();
}

#[test]
fn shutdown_grace_is_a_duration_with_a_ten_second_default() {
    use tidings::config::Config;
    let path = Path::new("t.yaml");
    let cfg = Config::parse(path, "{}").expect("valid");
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(10));
    let cfg = Config::parse(path, "shutdown: { grace: 2500ms }\n").expect("valid");
    assert_eq!(cfg.shutdown_grace, Duration::from_millis(2500));
    let err = Config::parse(path, "shutdown:\n  grace: soon\n").expect_err("invalid");
    assert!(
        err.to_string().starts_with("t.yaml:2:10: shutdown.grace"),
        "{err}"
    );
}

/// An SMTP peer that accepts connections and never says a word: a send to
/// it stays in flight until the client's timeout. Counts the connections.
fn silent_smtp_peer() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = peers::listener();
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn sigterm_waits_for_sends_in_flight_no_longer_than_the_configured_grace() {
    let (smtp, accepted) = silent_smtp_peer();
    let mut daemon = setup("1h")
        .smtp(smtp)
        .email("timeout: 60s")
        .extra("shutdown:\n  grace: 1s\n")
        .start()
        .await;
    daemon.put_case("CASE-1", &case()).await;
    // The dispatcher has picked the acknowledgement up once it is connected
    // to the peer, where the send hangs.
    eventually(
        Duration::from_secs(10),
        "the daemon connected to the SMTP peer",
        async || match accepted.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Err("no connection".into()),
            _ => Ok(()),
        },
    )
    .await;
    let started = Instant::now();
    daemon.stop();
    let took = started.elapsed();
    println!("stopped {took:?} after SIGTERM with shutdown.grace = 1s and a send in flight");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}; log:\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("they stay in the outbox"),
        "{}",
        daemon.log()
    );
    // The unsent acknowledgement is still there after a restart.
    daemon.spawn().await;
    let outbox = metric(&daemon.metrics().await, "tidings_outbox_depth");
    assert_eq!(outbox, Some(1.0));
    daemon.stop();
}

#[tokio::test]
async fn backup_of_a_running_daemon_restores_the_case_after_the_store_is_wiped() {
    let mut daemon = setup("1h").start().await;
    let stored = daemon.put_case("CASE-1", &case()).await;
    let cfg = daemon.config_arg();
    let cfg = cfg.as_str();
    let dir = daemon.dir.path().to_owned();
    let online = dir.join("backup-online");
    let online = online.to_str().expect("utf-8");

    // Online: the store is locked by the daemon, which makes the copy.
    let (code, _, err) = tidings(&["backup", "--config", cfg, "--to", online], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("TIDINGS_ADMIN_TOKEN"), "{err}");
    let (code, out, err) = tidings(
        &["backup", "--config", cfg, "--to", online],
        &[("TIDINGS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    assert!(out.contains("copied by the running daemon"), "{out}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(online).join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["via"], "daemon");
    assert_eq!(manifest["trees"]["cases"], 1, "{manifest}");

    // A restore over a store that is there is refused without --force.
    daemon.stop();
    let (code, _, err) = tidings(&["restore", "--config", cfg, "--from", online], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");

    // Offline: the daemon is stopped, the command reads the store itself.
    let offline = dir.join("backup-offline");
    let offline = offline.to_str().expect("utf-8");
    let (code, out, err) = tidings(&["backup", "--config", cfg, "--to", offline], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read from the stopped store"), "{out}");

    // Wipe, restore, and the case is back as it was.
    std::fs::remove_dir_all(dir.join("data/db")).expect("wipe");
    let (code, out, err) = tidings(&["restore", "--config", cfg, "--from", online], &[]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    daemon.spawn().await;
    let restored = daemon.get_case("CASE-1").await;
    assert_eq!(restored["next_update_at"], stored["next_update_at"]);
    assert_eq!(restored["subject"], stored["subject"]);
    assert_eq!(restored["messages"][0]["kind"], "created");
    daemon.stop();

    // --force replaces the store, from the offline copy this time.
    let (code, _, err) = tidings(
        &["restore", "--config", cfg, "--from", offline, "--force"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    daemon.spawn().await;
    daemon.get_case("CASE-1").await;
    daemon.stop();
}

/// Sums every sample of `name` whose labels include all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_retried_and_failed_deliveries() {
    use common::SmtpMode;
    for (mode, result) in [
        (SmtpMode::DeferRcpt(1), r#"result="retried""#),
        (SmtpMode::RejectRcpt, r#"result="failed""#),
    ] {
        let (smtp, _, _) = common::smtp_server(mode);
        let mut daemon = setup("1h")
            .smtp(smtp.port())
            .email("timeout: 5s")
            .delivery(3, "100ms", "400ms")
            .start()
            .await;
        daemon.put_case("CASE-1", &case()).await;
        let text = eventually(Duration::from_secs(20), result, async || {
            let text = daemon.metrics().await;
            if metric_sum(&text, "tidings_messages_total", &[result]) >= 1.0 {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await;
        let labels = [r#"channel="email""#, r#"rule="created""#, result];
        assert_eq!(
            metric_sum(&text, "tidings_messages_total", &labels),
            1.0,
            "{text}"
        );
        if mode == SmtpMode::DeferRcpt(1) {
            // The retry goes through.
            daemon
                .wait_metric(
                    r#"tidings_messages_total{channel="email",rule="created",result="sent"}"#,
                    1.0,
                )
                .await;
        }
        daemon.stop();
    }
}
