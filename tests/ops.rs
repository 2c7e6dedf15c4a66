//! Operating the daemon: reload (SIGHUP and `POST /-/reload`), `/metrics`,
//! backup and restore. Each test runs the real binary, as systemd would,
//! with a temp config, the shipped templates and the file email transport.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const TOKEN: &str = "ops-test-token-helpdesk-01";
const ADMIN_TOKEN: &str = "ops-test-admin-token-0001";

const HOURLY: &str = r#"
rules:
  - name: hourly
    when: { status: [open] }
    every: 1h
    channels: [email]
    template: progress
on:
  created: { template: acknowledgement, channels: [email] }
"#;

/// The acceptance check's broken set: a duration that is not one and a
/// channel that does not exist.
const BROKEN: &str = r#"
rules:
  - name: hourly
    when: { status: [open] }
    every: soon
    channels: [email, pigeon]
    template: progress
on:
  created: { template: acknowledgement, channels: [email] }
"#;

const FILE_EMAIL: &str = r#"email:
  transport: file
  from: "Example Support <support@example.com>"
"#;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A plain-HTTP client; reqwest is built without a default TLS provider.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A daemon process on its own config, data dir and port.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    client: reqwest::Client,
}

impl Daemon {
    /// Writes `tidings.yaml` and `rules/rules.yaml` into `dir` (kept if
    /// present) and starts `tidings serve`, waiting until it is ready.
    async fn start(dir: &Path, rules: &str) -> Self {
        Self::start_with(dir, rules, FILE_EMAIL).await
    }

    /// As `start`, with this `email:` section and any further config.
    async fn start_with(dir: &Path, rules: &str, more_config: &str) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
        std::fs::write(dir.join("rules/rules.yaml"), rules).expect("rules");
        std::fs::write(
            dir.join("tidings.yaml"),
            format!("{}{more_config}", config(port)),
        )
        .expect("config");
        let mut d = Self {
            child: None,
            dir: dir.to_owned(),
            port,
            client: client(),
        };
        d.spawn().await;
        d
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("log file");
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_tidings"))
                .args(["serve", "--config"])
                .arg(self.dir.join("tidings.yaml"))
                .env_remove("NOTIFY_SOCKET")
                .stderr(log)
                .spawn()
                .expect("spawn tidings"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(&mut self) {
        if self.child.is_some() {
            self.signal("-TERM");
        }
        if let Some(mut child) = self.child.take() {
            let status = child.wait().expect("wait");
            assert!(status.success(), "{status:?}; log:\n{}", self.log());
        }
    }

    async fn put_case(&self, id: &str) -> serde_json::Value {
        let body: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo("examples/case-en-newyork.json")).expect("case"),
        )
        .expect("json");
        let r = self
            .client
            .put(self.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.expect("json")
    }

    async fn get_case(&self, id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET")
    }

    async fn metrics(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape");
        assert_eq!(r.status(), 200);
        r.text().await.expect("text")
    }

    /// Polls `/metrics` until the series (name with labels, as rendered)
    /// reaches `at_least`, and returns its value.
    async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.metrics().await;
            let value = metric(&text, series);
            if value.is_some_and(|v| v >= at_least) {
                return value.unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached {at_least}; scrape:\n{text}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn emails(&self) -> usize {
        std::fs::read_dir(self.dir.join("data/mail"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config(port: u16) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
data_dir: ./data
rules: ./rules
templates: {templates}
api:
  tokens:
    - source: helpdesk
      token_sha256: {api}
admin:
  token_sha256: {admin}
"#,
        templates = repo("templates").display(),
        api = sha(TOKEN),
        admin = sha(ADMIN_TOKEN),
    )
}

/// The value of one series in a Prometheus text scrape.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(tmp.path(), HOURLY).await;
    let before = daemon.put_case("CASE-1").await;
    let promised = next_update_at(&before);

    std::fs::write(tmp.path().join("rules/rules.yaml"), BROKEN).expect("rules");
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
    let check = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["check", "--config"])
        .arg(tmp.path().join("tidings.yaml"))
        .output()
        .expect("tidings check");
    assert_eq!(check.status.code(), Some(1));
    let diagnostics = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(diagnostics.contains("rules.yaml:6:"), "{diagnostics}");
    let log = daemon.log();
    for line in diagnostics.lines() {
        assert!(log.contains(line), "`{line}` is not in the log:\n{log}");
    }
    assert!(log.contains("pigeon"), "{log}");

    // Still serving, still planning under the hourly rule, still sending.
    let r = daemon.get_case("CASE-1").await;
    assert_eq!(r.status(), 200);
    let after: serde_json::Value = r.json().await.expect("json");
    assert_eq!(next_update_at(&after), promised);
    let fresh = daemon.put_case("CASE-2").await;
    let gap = hours_between(chrono::Utc::now(), next_update_at(&fresh));
    assert!((0.9..=1.01).contains(&gap), "{gap} h");
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.emails() < 2 {
        assert!(
            Instant::now() < deadline,
            "the acknowledgements were not sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!log.contains("maria.hernandez@example.com"), "{log}");
    daemon.stop();
}

#[tokio::test]
async fn a_valid_change_on_sighup_reschedules_open_cases_and_keeps_promises_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(tmp.path(), HOURLY).await;
    let case = daemon.put_case("CASE-1").await;
    // The acknowledgement promised the first update an hour from now.
    let hourly = next_update_at(&case);
    let reload = |every: &str| {
        std::fs::write(
            tmp.path().join("rules/rules.yaml"),
            HOURLY.replace("every: 1h", every),
        )
        .expect("rules");
    };

    // A faster rule brings the next update forward.
    reload("every: 30m");
    daemon.signal("-HUP");
    daemon
        .wait_metric(r#"tidings_reload_total{result="success"}"#, 1.0)
        .await;
    let after: serde_json::Value = daemon.get_case("CASE-1").await.json().await.expect("json");
    let moved = hours_between(next_update_at(&after), hourly);
    assert!((0.49..=0.51).contains(&moved), "moved forward by {moved} h");

    // A slower one does not move it past the promise already made: the
    // hour stands, the five-hour cadence starts after it.
    reload("every: 5h");
    daemon.signal("-HUP");
    daemon
        .wait_metric(r#"tidings_reload_total{result="success"}"#, 2.0)
        .await;
    let after: serde_json::Value = daemon.get_case("CASE-1").await.json().await.expect("json");
    assert_eq!(next_update_at(&after), hourly, "the promise is kept");
    let fresh = daemon.put_case("CASE-2").await;
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(tmp.path(), HOURLY).await;
    let url = daemon.url("/-/reload");
    let r = daemon.client.post(&url).send().await.expect("POST");
    assert_eq!(r.status(), 401);
    // A ticket system's token is not an admin token.
    let r = daemon
        .client
        .post(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 401);

    let r = daemon
        .client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["rescheduled"], 0, "{body}");

    std::fs::write(tmp.path().join("rules/rules.yaml"), BROKEN).expect("rules");
    let r = daemon
        .client
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.expect("json");
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
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules = HOURLY.replace("every: 1h", "every: 1s");
    let mut daemon = Daemon::start(tmp.path(), &rules).await;
    daemon.put_case("CASE-1").await;
    // The acknowledgement, then at least one scheduled progress update.
    daemon
        .wait_metric(
            r#"tidings_messages_total{channel="email",rule="hourly",result="sent"}"#,
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
    let r = daemon
        .client
        .post(daemon.url("/v1/cases/CASE-1/events"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"type": "status", "status": "on_hold"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
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
/// it stays in flight until the client's timeout.
fn silent_smtp_peer() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

#[tokio::test]
async fn sigterm_waits_for_sends_in_flight_no_longer_than_the_configured_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let smtp = silent_smtp_peer();
    let more = format!(
        "email:\n  transport: smtp\n  smtp_url: smtp://127.0.0.1:{smtp}\n  from: \"Example Support <support@example.com>\"\n  timeout: 60s\nshutdown:\n  grace: 1s\n"
    );
    let mut daemon = Daemon::start_with(tmp.path(), HOURLY, &more).await;
    daemon.put_case("CASE-1").await;
    // Let the dispatcher pick the acknowledgement up and hang on the peer.
    tokio::time::sleep(Duration::from_millis(500)).await;
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

fn tidings(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tidings");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn backup_of_a_running_daemon_restores_the_case_after_the_store_is_wiped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(tmp.path(), HOURLY).await;
    let stored = daemon.put_case("CASE-1").await;
    let cfg = tmp.path().join("tidings.yaml");
    let cfg = cfg.to_str().expect("utf-8");
    let online = tmp.path().join("backup-online");
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
    let offline = tmp.path().join("backup-offline");
    let offline = offline.to_str().expect("utf-8");
    let (code, out, err) = tidings(&["backup", "--config", cfg, "--to", offline], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read from the stopped store"), "{out}");

    // Wipe, restore, and the case is back as it was.
    std::fs::remove_dir_all(tmp.path().join("data/db")).expect("wipe");
    let (code, out, err) = tidings(&["restore", "--config", cfg, "--from", online], &[]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    daemon.spawn().await;
    let r = daemon.get_case("CASE-1").await;
    assert_eq!(r.status(), 200);
    let restored: serde_json::Value = r.json().await.expect("json");
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
    assert_eq!(daemon.get_case("CASE-1").await.status(), 200);
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let (smtp, _, _) = common::smtp_server(mode);
        let more = format!(
            "email:\n  transport: smtp\n  smtp_url: smtp://{smtp}\n  from: \"Example Support <support@example.com>\"\n  timeout: 5s\ndelivery:\n  max_attempts: 3\n  backoff: {{ initial: 100ms, max: 400ms }}\n"
        );
        let mut daemon = Daemon::start_with(tmp.path(), HOURLY, &more).await;
        daemon.put_case("CASE-1").await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let text = daemon.metrics().await;
            if metric_sum(&text, "tidings_messages_total", &[result]) >= 1.0 {
                break text;
            }
            assert!(Instant::now() < deadline, "no {result}:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
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
