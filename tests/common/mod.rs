//! The in-process harness: the daemon (`tidings::daemon::run`) on a task
//! of the test's runtime with a temp sled store, talking SMTP to an
//! in-process SMTP server (the `mailin-embedded` crate), so tests assert
//! on what arrived at a mail server.
//!
//! Built on the shared harness (ports, config, fixtures): a test file
//! declares `mod peers;` beside `mod common;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::{Handler, Response, Server, response};
use tokio::sync::oneshot;

use crate::peers::{OTHER_TOKEN, Setup, TOKEN, TestStore, eventually, listener};

/// How the test SMTP server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    Accept,
    /// 550 on RCPT: a permanent failure.
    RejectRcpt,
    /// 451 on RCPT for the first `n` attempts, then accept.
    DeferRcpt(usize),
}

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub raw: String,
    /// When the server had all of it.
    pub at: Instant,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The decoded text part of the message.
    pub fn text(&self) -> String {
        mail_parser::MessageParser::default()
            .parse(self.raw.as_bytes())
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct Collector {
    mails: Arc<Mutex<Vec<Mail>>>,
    attempts: Arc<Mutex<usize>>,
    mode: SmtpMode,
    to: Vec<String>,
    buf: Vec<u8>,
}

impl Handler for Collector {
    fn rcpt(&mut self, to: &str) -> Response {
        let mut n = self.attempts.lock().expect("lock");
        *n += 1;
        match self.mode {
            SmtpMode::Accept => response::OK,
            SmtpMode::RejectRcpt => response::NO_MAILBOX,
            SmtpMode::DeferRcpt(k) if *n <= k => response::INTERNAL_ERROR,
            SmtpMode::DeferRcpt(_) => {
                let _ = to;
                response::OK
            }
        }
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.buf.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.mails.lock().expect("lock").push(Mail {
            to: std::mem::take(&mut self.to),
            raw: String::from_utf8_lossy(&self.buf).into_owned(),
            at: Instant::now(),
        });
        response::OK
    }
}

pub type Shared<T> = Arc<Mutex<T>>;

/// Starts an SMTP server on a free port; it lives for the test process.
/// Returns its address, the mail it received and its RCPT count.
pub fn smtp_server(mode: SmtpMode) -> (SocketAddr, Shared<Vec<Mail>>, Shared<usize>) {
    let mails = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0));
    let listener = listener();
    let addr = listener.local_addr().expect("addr");
    let mut server = Server::new(Collector {
        mails: mails.clone(),
        attempts: attempts.clone(),
        mode,
        to: Vec::new(),
        buf: Vec::new(),
    });
    server.with_name("sink.test").with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (addr, mails, attempts)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub mails: Arc<Mutex<Vec<Mail>>>,
    pub smtp_attempts: Arc<Mutex<usize>>,
    pub dir: Arc<tempfile::TempDir>,
    pub smtp: SocketAddr,
    pub rules: String,
    /// The daemon's clock, when the test drives it (`spawn_on_clock`).
    pub clock: Option<Arc<tidings::domain::clock::ManualClock>>,
    /// sled in `dir`, or a database of its own (`TIDINGS_TEST_STORE`).
    pub store: TestStore,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(rules: &str, mode: SmtpMode) -> Self {
        let (smtp, mails, attempts) = smtp_server(mode);
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let store = TestStore::from_env();
        Self::start(dir, smtp, mails, attempts, rules.to_owned(), None, store).await
    }

    /// As `spawn`, with the daemon on a clock the test moves (`advance`):
    /// hours of schedule in a second of test. The workers look at the
    /// clock at least once a second, so a wait after `advance` is short.
    pub async fn spawn_on_clock(
        rules: &str,
        mode: SmtpMode,
        clock: Arc<tidings::domain::clock::ManualClock>,
    ) -> Self {
        let (smtp, mails, attempts) = smtp_server(mode);
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let store = TestStore::from_env();
        Self::start(
            dir,
            smtp,
            mails,
            attempts,
            rules.to_owned(),
            Some(clock),
            store,
        )
        .await
    }

    /// Moves the daemon's clock forward.
    pub fn advance(&self, by: chrono::Duration) {
        self.clock
            .as_ref()
            .expect("spawned on a manual clock")
            .advance(by);
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        smtp: SocketAddr,
        mails: Arc<Mutex<Vec<Mail>>>,
        smtp_attempts: Arc<Mutex<usize>>,
        rules: String,
        clock: Option<Arc<tidings::domain::clock::ManualClock>>,
        store: TestStore,
    ) -> Self {
        let listener = listener();
        let addr = listener.local_addr().expect("addr");
        // The config file says sled; the in-process daemon gets its
        // database in its `Config`, so no test touches the environment.
        let cfg_path = Setup::on_store(rules.as_str(), TestStore::Sled)
            .smtp_url(&format!("smtp://{smtp}"))
            .email("pool_size: 2")
            .email("timeout: 5s")
            .delivery(3, "100ms", "400ms")
            .token("billing", OTHER_TOKEN)
            .write(dir.path(), addr.port());
        let mut config = tidings::config::Config::load(&cfg_path).expect("valid config");
        if let TestStore::Postgres { url, .. } = &store {
            config.store = tidings::config::StoreChoice::Postgres {
                url: url.clone(),
                pool_size: 4,
                lease: std::time::Duration::from_secs(30),
            };
        }
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (tx, rx) = oneshot::channel();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = match clock.clone() {
            None => tokio::spawn(tidings::daemon::run(listener, config, shutdown)),
            Some(c) => tokio::spawn(tidings::daemon::run_with_clock(
                listener, config, shutdown, c,
            )),
        };
        Self {
            addr,
            base: format!("http://{addr}"),
            client: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
            mails,
            smtp_attempts,
            dir,
            smtp,
            rules,
            clock,
            store,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the daemon gracefully and starts it again on the same store.
    pub async fn restart(mut self) -> Self {
        self.shutdown().await;
        Self::start(
            self.dir.clone(),
            self.smtp,
            self.mails.clone(),
            self.smtp_attempts.clone(),
            self.rules.clone(),
            self.clock.clone(),
            self.store.clone(),
        )
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("daemon ran cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn put_case(&self, id: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn event(&self, id: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/cases/{id}/events")))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_case(&self, id: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("lock").clone()
    }

    /// Waits until `pred` holds on the received mail, or panics at `timeout`.
    pub async fn wait_mails(&self, timeout: Duration, pred: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
        eventually(timeout, "mail", async || {
            let mails = self.mails();
            if pred(&mails) {
                return Ok(mails);
            }
            let subjects: Vec<_> = mails.iter().map(|m| m.header("Subject")).collect();
            Err(format!("{} mails: {subjects:?}", mails.len()))
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
