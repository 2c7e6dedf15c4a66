//! The `tidings` binary as a child process on a port of its own, with its
//! config, rules, store and log in one temp dir; the command line; and
//! readers for what the daemon shows (case histories, `/metrics`).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{POLL, Setup, TOKEN, TestStore, eventually, free_port, stop};

impl Setup {
    /// Writes the config into a fresh temp dir and starts the daemon on a
    /// free port; returns once `/readyz` answers 200.
    pub async fn start(self) -> Daemon {
        let mut d = self.launch();
        d.wait_ready().await;
        d
    }

    /// As `start`, without waiting for readiness.
    pub fn launch(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tidings-test-")
            .tempdir()
            .expect("daemon dir");
        let port = free_port();
        self.write(dir.path(), port);
        let mut d = Daemon::at(dir, port);
        d.store = self.test_store().clone();
        d.env = self.env;
        d.launch();
        d
    }
}

/// `tidings ARGS` with `env` added; its exit code, stdout and stderr.
pub fn tidings(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
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

/// The daemon as a child process. It can be stopped, killed and started
/// again on the same dir and port.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub http: reqwest::Client,
    /// The store its config names.
    pub store: TestStore,
    env: Vec<(String, String)>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

impl Daemon {
    /// A daemon (not started) for the config `dir/tidings.yaml`, which
    /// listens on `port`.
    pub fn at(dir: tempfile::TempDir, port: u16) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self {
            child: None,
            dir,
            port,
            http,
            store: TestStore::Sled,
            env: Vec::new(),
        }
    }

    /// The environment the daemon gets beyond the test's, for a command
    /// on its config (`tidings(&[…], &d.env())`).
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Where the store's bytes are on disk, for a scan: sled's `data/db`,
    /// or the whole PostgreSQL cluster (table files and WAL, every
    /// database) after a `CHECKPOINT` has written all of it out.
    pub fn store_files(&self) -> PathBuf {
        match &self.store {
            TestStore::Sled => self.dir.path().join("data/db"),
            TestStore::Postgres { .. } => {
                let cluster = super::postgres().expect("the cluster the daemon runs on");
                cluster.psql("postgres", "CHECKPOINT");
                cluster.data_dir()
            }
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tidings.yaml")
    }

    /// The config file's path as a string, for the command line.
    pub fn config_arg(&self) -> String {
        self.config_path().display().to_string()
    }

    /// Replaces the rules file (a reload picks it up).
    pub fn write_rules(&self, yaml: &str) {
        std::fs::write(self.dir.path().join("rules/rules.yaml"), yaml).expect("write rules");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Starts the binary (again) and waits for `/readyz`.
    pub async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    /// Starts the binary (again), its output appended to the log.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .env_remove("TIDINGS_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start tidings");
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200; fails at once if the process exits.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .http
                .get(self.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ready {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "tidings did not become ready ({exited:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends `sig` (`-HUP`, `-TERM`, …) to the daemon.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {sig} {pid}");
    }

    /// SIGTERM, as systemd stops a service; returns how long the process
    /// took to exit and its exit status.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        self.signal("-TERM");
        let mut child = self.child.take().expect("the daemon is running");
        let status = child.wait().expect("reap the daemon");
        (started.elapsed(), status)
    }

    /// SIGTERM, and the daemon must exit cleanly.
    pub fn stop(&mut self) {
        let (_, status) = self.terminate();
        assert!(status.success(), "{status}; log:\n{}", self.log());
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the daemon is running");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    /// The daemon's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends `req` with `TOKEN`; the answer must be `want`. Returns its
    /// JSON body (null when there is none).
    pub async fn call(&self, req: reqwest::RequestBuilder, want: u16, what: &str) -> Value {
        let resp = req
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            want,
            "{what}: {body}; daemon log tail:\n{}",
            self.log_tail()
        );
        body
    }

    /// `tidings bounce` for this daemon with `raw` on standard input, as
    /// an MTA's pipe transport runs it; its exit code and stderr.
    pub fn pipe_bounce(&self, raw: &[u8]) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["bounce", "--config", &self.config_arg()])
            .env("TIDINGS_ADMIN_TOKEN", super::ADMIN_TOKEN)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tidings bounce");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(raw)
            .expect("write the report");
        let out = child.wait_with_output().expect("tidings bounce ends");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// PUTs a new case (201).
    pub async fn put_case(&self, id: &str, body: &Value) -> Value {
        let req = self
            .http
            .put(self.url(&format!("/v1/cases/{id}")))
            .json(body);
        self.call(req, 201, &format!("PUT {id}")).await
    }

    /// POSTs an event to a case (200).
    pub async fn event(&self, id: &str, body: Value) -> Value {
        let req = self
            .http
            .post(self.url(&format!("/v1/cases/{id}/events")))
            .json(&body);
        self.call(req, 200, &format!("event {body} on {id}")).await
    }

    /// The case, or what went wrong (with the daemon's state and log tail).
    pub async fn try_get_case(&mut self, id: &str) -> Result<Value, String> {
        let started = Instant::now();
        let r = self
            .http
            .get(self.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await;
        let took = started.elapsed();
        if took > Duration::from_secs(1) {
            println!("slow answer: GET {id} took {:.1}s", took.as_secs_f64());
        }
        match r {
            Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string()),
            other => {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                Err(format!(
                    "GET {id}: {other:?}; daemon exited: {exited:?}; log tail:\n{}",
                    self.log_tail()
                ))
            }
        }
    }

    /// The case (200).
    pub async fn get_case(&self, id: &str) -> Value {
        let req = self.http.get(self.url(&format!("/v1/cases/{id}")));
        self.call(req, 200, &format!("GET {id}")).await
    }

    /// The case's messages, as GET shows them.
    pub async fn messages(&self, id: &str) -> Vec<Value> {
        self.get_case(id).await["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The case's messages, read as `Sent`.
    pub async fn history(&self, id: &str) -> Vec<Sent> {
        sent(&self.messages(id).await)
    }

    /// Polls the case until `done` holds for its messages, which it
    /// returns; panics after `timeout`, showing them.
    pub async fn wait_messages(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        eventually(timeout, what, async || {
            let m = self.messages(id).await;
            if done(&m) {
                Ok(m)
            } else {
                Err(serde_json::to_string_pretty(&m).unwrap_or_default())
            }
        })
        .await
    }

    /// As `wait_messages`, with the messages read as `Sent`.
    pub async fn wait_history(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Sent]) -> bool,
    ) -> Vec<Sent> {
        let m = self
            .wait_messages(id, timeout, what, |m| done(&sent(m)))
            .await;
        sent(&m)
    }

    /// A `/metrics` scrape.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape");
        assert_eq!(r.status(), 200);
        r.text().await.expect("text")
    }

    /// Polls `/metrics` until the series (name with labels, as rendered)
    /// reaches `at_least`, and returns its value.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        eventually(
            Duration::from_secs(20),
            &format!("{series} reaching {at_least}"),
            async || {
                let text = self.metrics().await;
                match metric(&text, series) {
                    Some(v) if v >= at_least => Ok(v),
                    _ => Err(format!("scrape:\n{text}\nlog:\n{}", self.log_tail())),
                }
            },
        )
        .await
    }

    /// The files the file transport wrote into `data/mail` (email).
    pub fn emails(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("data/mail"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        out.sort();
        out
    }
}

/// The value of one series in a Prometheus text scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------
// A case's history as GET shows it

#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub kind: String,
    pub channel: String,
    pub status: String,
    pub due_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub promised: Option<DateTime<Utc>>,
}

pub fn instant(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The messages of a case as GET showed it.
pub fn history(case: &Value) -> Vec<Sent> {
    sent(
        case["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages array in {case}")),
    )
}

/// Messages (GET's `messages`) read as `Sent`.
pub fn sent(messages: &[Value]) -> Vec<Sent> {
    messages
        .iter()
        .map(|m| Sent {
            id: m["id"].as_str().unwrap_or_default().to_owned(),
            kind: m["kind"].as_str().unwrap_or_default().to_owned(),
            channel: m["channel"].as_str().unwrap_or_default().to_owned(),
            status: m["status"].as_str().unwrap_or_default().to_owned(),
            due_at: instant(&m["due_at"]).unwrap_or_else(|| panic!("due_at in {m}")),
            sent_at: instant(&m["sent_at"]),
            promised: instant(&m["promised_next_update_at"]),
        })
        .collect()
}

pub fn kinds(h: &[Sent]) -> Vec<&str> {
    h.iter().map(|m| m.kind.as_str()).collect()
}

pub fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}
