//! Real peers for the end-to-end suites: Postfix's `smtp-sink` dumping
//! each message to a file, the `tidings` binary as a child process on a
//! free loopback port, and readers for what arrived and what the case
//! history says.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "demo-token-change-me";
pub const SUBJECT: &str = "Replacement router has not shipped";
pub const FIRST_NAME: &str = "Maria";
pub const EMAIL: &str = "maria.hernandez@example.com";
pub const PHONE: &str = "+12125550143";
pub const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Processes

/// `smtp-sink`, or `None` (after saying so) when the test should skip.
pub fn sink_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/sbin/smtp-sink");
    let found = if fixed.is_file() {
        Some(fixed.to_owned())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("smtp-sink"))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        assert!(
            std::env::var("TIDINGS_E2E_REQUIRED").as_deref() != Ok("1"),
            "smtp-sink not installed, and TIDINGS_E2E_REQUIRED=1 (apt-get install postfix)"
        );
        println!("skipping: smtp-sink not installed");
    }
    found
}

/// A port that was free a moment ago and that no other test in this
/// process was given (the tests run in parallel, and a killed daemon
/// comes back on its old port).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if GIVEN.lock().map(|mut g| g.insert(port)).unwrap_or(true) {
            return port;
        }
    }
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Kills a child (SIGKILL) and reaps it; used on drop so no test leaves a
/// process behind, whatever it panicked on.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `smtp-sink` that dumps each accepted message into `dir`.
pub struct Sink {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Sink {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

impl Sink {
    pub async fn start(bin: &Path) -> Self {
        Self::start_with(bin, &[]).await
    }

    /// Started with extra flags, such as `-f RCPT` (a hard 5xx on RCPT).
    pub async fn start_with(bin: &Path, flags: &[&str]) -> Self {
        Self::start_on(bin, flags, free_port()).await
    }

    /// Started on `port` (a sink that comes back where the daemon expects
    /// it, after a fault).
    pub async fn start_on(bin: &Path, flags: &[&str], port: u16) -> Self {
        // smtp-sink drops to `nobody` before it writes; the dump dir sits
        // directly in the temp folder so `nobody` can reach it.
        let dir = tempfile::Builder::new()
            .prefix("tidings-sink-")
            .tempdir()
            .expect("sink dump dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("open the dump dir to nobody");
        let errors = tempfile::NamedTempFile::new().expect("sink stderr file");
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let mut child = cmd
            .args(flags)
            .arg("-d")
            .arg(format!("{}/%M.", dir.path().display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.reopen().expect("sink stderr"))
            .spawn()
            .expect("start smtp-sink");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                stop(&mut child);
                panic!(
                    "smtp-sink did not listen on {port} ({exited:?}): {}",
                    std::fs::read_to_string(errors.path()).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Self { child, dir, port }
    }

    /// Every complete message in the dump dir, oldest first. smtp-sink
    /// creates the file at MAIL FROM and writes it when the message is
    /// complete (ending with the empty line it appends), so empty or
    /// unfinished files (a transaction cut by a kill) are not messages.
    pub fn mails(&self) -> Vec<Mail> {
        let mut out: Vec<Mail> = std::fs::read_dir(self.dir.path())
            .expect("read the dump dir")
            .filter_map(Result::ok)
            .filter_map(|e| Mail::read(&e.path()))
            .collect();
        out.sort_by(|a, b| (a.arrived, &a.file).cmp(&(b.arrived, &b.file)));
        out
    }

    /// Polls until `pred` holds for the messages, or `deadline` passes.
    /// Returns the last messages seen and whether `pred` held.
    pub async fn wait_for(
        &self,
        deadline: Instant,
        pred: impl Fn(&[Mail]) -> bool,
    ) -> (Vec<Mail>, bool) {
        loop {
            let mails = self.mails();
            if pred(&mails) {
                return (mails, true);
            }
            if Instant::now() >= deadline {
                return (mails, false);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The daemon as a child process, with its config, rules, store and log
/// in one temp dir. It can be killed and started again on the same dir.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub http: reqwest::Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

/// The config every end-to-end daemon shares: it listens on `port`, keeps
/// its store and rules in `dir` (the rules written from `rules_yaml`), uses
/// the shipped templates and takes `TOKEN` for `helpdesk`. Callers append
/// `email`, `delivery` and whatever else they need.
pub fn config_head(dir: &Path, port: u16, rules_yaml: &str) -> String {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::write(rules_dir.join("rules.yaml"), rules_yaml).expect("write rules");
    format!(
        "listen: 127.0.0.1:{port}
data_dir: {data:?}
rules: {rules:?}
templates: {templates:?}
default_timezone: UTC
default_locale: en
public_url: http://127.0.0.1:{port}
company:
  name: Example Support
api:
  tokens:
    - source: helpdesk
      token_sha256: {sha}
",
        data = dir.join("data").display().to_string(),
        rules = rules_dir.display().to_string(),
        templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
        sha = hex::encode(Sha256::digest(TOKEN.as_bytes())),
    )
}

impl Daemon {
    pub async fn start(sink_port: u16, rules_yaml: &str) -> Self {
        Self::start_with(sink_port, rules_yaml, "").await
    }

    /// Started with `extra` appended to the config file (top-level keys
    /// the base config does not set: `sms`, `digest`, `consent`).
    pub async fn start_with(sink_port: u16, rules_yaml: &str, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tidings-e2e-")
            .tempdir()
            .expect("daemon dir");
        let port = free_port();
        let config = config_head(dir.path(), port, rules_yaml)
            + &format!(
                "email:
  transport: smtp
  smtp_url: smtp://127.0.0.1:{sink_port}
  from: \"Support <support@example.com>\"
delivery:
  max_attempts: 10
  backoff: {{ initial: 200ms, max: 2s }}
"
            )
            + extra;
        Self::start_in(dir, port, &config).await
    }

    /// Writes `config` as the daemon's config file in `dir` and starts it;
    /// `config` listens on `port`.
    pub async fn start_in(dir: tempfile::TempDir, port: u16, config: &str) -> Self {
        std::fs::write(dir.path().join("tidings.yaml"), config).expect("write config");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut d = Self {
            child: None,
            dir,
            port,
            http,
        };
        d.spawn().await;
        d
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the binary (again) and waits for `/readyz`.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        // Appending, so a restarted daemon's lines follow the first run's.
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("daemon log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("tidings.yaml"))
            .env_remove("RUST_LOG")
            .env_remove("TIDINGS_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start tidings");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
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

    /// SIGTERM, as systemd stops a service; returns how long the process
    /// took to exit and its exit status.
    pub fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let mut child = self.child.take().expect("the daemon is running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM failed");
        let status = child.wait().expect("reap the daemon");
        (started.elapsed(), status)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the daemon is running");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn call(&self, req: reqwest::RequestBuilder, want: u16, what: &str) -> Value {
        let resp = req
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{what}: {body}");
        body
    }

    pub async fn put_case(&self, id: &str, body: &Value) -> Value {
        let req = self
            .http
            .put(self.url(&format!("/v1/cases/{id}")))
            .json(body);
        self.call(req, 201, &format!("PUT {id}")).await
    }

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
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                Err(format!(
                    "GET {id}: {other:?}; daemon exited: {exited:?}; log tail (newest first):\n{}",
                    tail.join("\n")
                ))
            }
        }
    }

    pub async fn get_case(&self, id: &str) -> Value {
        let req = self.http.get(self.url(&format!("/v1/cases/{id}")));
        self.call(req, 200, &format!("GET {id}")).await
    }
}

// ---------------------------------------------------------------------------
// A case's history as GET shows it

#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub due_at: DateTime<Utc>,
    pub promised: Option<DateTime<Utc>>,
}

pub fn instant(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

pub fn history(case: &Value) -> Vec<Sent> {
    case["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array in {case}"))
        .iter()
        .map(|m| Sent {
            id: m["id"].as_str().unwrap_or_default().to_owned(),
            kind: m["kind"].as_str().unwrap_or_default().to_owned(),
            status: m["status"].as_str().unwrap_or_default().to_owned(),
            due_at: instant(&m["due_at"]).unwrap_or_else(|| panic!("due_at in {m}")),
            promised: instant(&m["promised_next_update_at"]),
        })
        .collect()
}

pub fn kinds(h: &[Sent]) -> Vec<&str> {
    h.iter().map(|m| m.kind.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Messages as smtp-sink dumped them

/// One accepted message: headers unfolded, subject and text parts decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub file: String,
    pub arrived: SystemTime,
    pub message_id: String,
    pub subject: String,
    /// The decoded text of every `text/*` part, whitespace collapsed.
    pub text: String,
}

impl Mail {
    pub fn read(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        // smtp-sink writes the file as the message arrives; wait for its end.
        if !bytes.ends_with(b"\r\n\r\n") && !bytes.ends_with(b"\n\n") {
            return None;
        }
        let msg = mail_parser::MessageParser::default().parse(&bytes[..])?;
        let text: Vec<String> = (0..msg.text_body.len())
            .filter_map(|i| msg.body_text(i).map(|t| t.into_owned()))
            .chain(
                (0..msg.html_body.len()).filter_map(|i| msg.body_html(i).map(|t| t.into_owned())),
            )
            .collect();
        Some(Self {
            file: path.file_name()?.to_string_lossy().into_owned(),
            arrived: std::fs::metadata(path).and_then(|m| m.modified()).ok()?,
            message_id: msg.message_id()?.to_owned(),
            subject: squash(msg.subject().unwrap_or("")),
            text: squash(&text.join("\n")),
        })
    }

    /// The local part of `Message-ID`, which is the message's id in the
    /// case history (`<uuid@example.com>`).
    pub fn id(&self) -> &str {
        let inner = self.message_id.trim_matches(['<', '>']);
        inner.split('@').next().unwrap_or(inner)
    }

    pub fn since(&self, t: SystemTime) -> f64 {
        match self.arrived.duration_since(t) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    /// The name and subject that make the message personal.
    pub fn assert_personal(&self) {
        assert!(
            self.subject.contains(SUBJECT),
            "{}: subject `{}` lacks the case subject",
            self.file,
            self.subject
        );
        assert!(
            self.text.contains(FIRST_NAME),
            "{}: body lacks the customer's first name: {}",
            self.file,
            self.text
        );
    }

    /// The body tells the customer `promised`, in New York time: the zone
    /// abbreviation (EST/EDT) and the hour and minute (12- or 24-hour).
    pub fn assert_promises(&self, promised: DateTime<Utc>) {
        let local = promised.with_timezone(&chrono_tz::America::New_York);
        let zone = format!(" {}", local.format("%Z"));
        let h12 = local.format("%-I:%M").to_string();
        let h24 = local.format("%H:%M").to_string();
        assert!(
            self.text.contains(&zone) && (self.text.contains(&h12) || self.text.contains(&h24)),
            "{}: body does not state the next update ({h12}/{h24}{zone}): {}",
            self.file,
            self.text
        );
    }
}

pub fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Prism serving Twilio's own OpenAPI description

/// A Prism mock server, shared by every test in the process (it takes
/// seconds to load Twilio's description). A watchdog shell stops it within
/// a second of the test process ending.
pub struct Prism {
    pub port: u16,
    pub log: PathBuf,
    /// The watchdog shell; it outlives the process by design.
    _watchdog: Child,
}

impl Prism {
    /// The shared server, or `None` (after saying so) when Prism is not
    /// installed and the suite may skip.
    pub fn shared() -> Option<&'static Prism> {
        static PRISM: std::sync::OnceLock<Option<Prism>> = std::sync::OnceLock::new();
        PRISM.get_or_init(Prism::start).as_ref()
    }

    fn binary() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("TIDINGS_PRISM").map(PathBuf::from),
            Some(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers/node_modules/.bin/prism"),
            ),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }

    fn start() -> Option<Prism> {
        let Some(bin) = Self::binary() else {
            assert!(
                std::env::var("TIDINGS_E2E_REQUIRED").as_deref() != Ok("1"),
                "Prism not installed, and TIDINGS_E2E_REQUIRED=1 \
                 (npm install --prefix target/peers @stoplight/prism-cli@5)"
            );
            println!("skipping: Prism not installed");
            return None;
        };
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/twilio_api_v2010.yaml");
        let port = free_port();
        let log = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/peers/prism-{}.log", std::process::id()));
        let script = format!(
            "{bin:?} mock -h 127.0.0.1 -p {port} {spec:?} > {log:?} 2>&1 & p=$!; \
             while kill -0 {me} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.5; done; kill $p",
            me = std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Prism");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Prism is listening") {
                break;
            }
            assert!(Instant::now() < deadline, "Prism did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(Prism {
            port,
            log,
            _watchdog: watchdog,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests Prism received for `account`'s Messages resource, and the
    /// validation complaints among all the lines about them.
    pub fn messages_seen(&self, account: &str) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let path = format!("/Accounts/{account}/Messages.json");
        let mut requests = 0;
        let mut complaints = Vec::new();
        let mut ours = false;
        for line in text.lines() {
            if line.contains("[HTTP SERVER]") {
                ours = line.contains(&path);
                if ours && line.contains("Request received") {
                    requests += 1;
                }
            }
            if ours && (line.contains('✖') || line.contains('⚠')) {
                complaints.push(line.to_owned());
            }
        }
        (requests, complaints)
    }
}
