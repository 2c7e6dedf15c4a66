//! Supervision through the real binary: a scheduler that panics (the
//! test-only fault hook `TIDINGS_TEST_FAULT=scheduler-panic-after=MS`) must
//! turn `/readyz` to 503 within a second, stop the systemd watchdog pings
//! (read from a real `NOTIFY_SOCKET` datagram socket, `WATCHDOG_USEC` set),
//! and make the daemon exit non-zero within `shutdown.grace`.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The daemon's `shutdown.grace` in this test.
const GRACE: Duration = Duration::from_secs(4);
/// How far apart two threads may see events the daemon emitted in order.
const SKEW: Duration = Duration::from_millis(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn config(dir: &std::path::Path, port: u16) -> String {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(
        rules.join("rules.yaml"),
        "rules:\n  - name: default\n    every: 1h\n    channels: [email]\n    template: progress\n",
    )
    .expect("rules");
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
email:
  transport: file
  file_dir: {mail:?}
  from: \"Support <support@example.com>\"
shutdown:
  grace: {grace}s
",
        data = dir.join("data").display().to_string(),
        rules = rules.display().to_string(),
        templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
        mail = dir.join("mail").display().to_string(),
        grace = GRACE.as_secs(),
    )
}

/// What arrived, and when (since the test started).
#[derive(Default)]
struct Timeline {
    /// `NOTIFY_SOCKET` datagrams.
    notes: Vec<(Duration, String)>,
    /// When the daemon printed the panic.
    panicked: Option<Duration>,
    /// When the daemon logged that a worker failed (it marks itself failed
    /// before that line, so no ping may follow it).
    noticed: Option<Duration>,
    log: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_panic_fails_readiness_stops_the_watchdog_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let path = dir.path().join("tidings.yaml");
    std::fs::write(&path, config(dir.path(), port)).expect("config");
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let start = Instant::now();
    let timeline = Arc::new(Mutex::new(Timeline::default()));

    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env("TIDINGS_TEST_FAULT", "scheduler-panic-after=2500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidings");

    // The daemon's stderr, line by line: the panic message's arrival is the
    // instant of the panic, as close as an outside observer gets.
    let stderr = child.stderr.take().expect("stderr");
    let t = timeline.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut t = t.lock().expect("lock");
            if t.panicked.is_none() && line.contains("injected scheduler fault") {
                t.panicked = Some(start.elapsed());
            }
            if t.noticed.is_none() && line.contains("worker panicked") {
                t.noticed = Some(start.elapsed());
            }
            t.log.push_str(&line);
            t.log.push('\n');
        }
    });
    let t = timeline.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let listener = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                t.lock().expect("lock").notes.push((start.elapsed(), text));
            }
        }
    });

    // Poll /readyz until it says 503 (or the daemon is gone).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/readyz");
    let mut ready_seen = false;
    let mut unready_at = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match http.get(&url).send().await.map(|r| r.status().as_u16()) {
            Ok(200) => ready_seen = true,
            Ok(503) if ready_seen => {
                unready_at = Some(start.elapsed());
                break;
            }
            _ => {}
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The exit: non-zero, within the grace period after the panic.
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after its scheduler panicked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let exited_at = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().expect("listener");
    reader.join().expect("reader");
    let t = timeline.lock().expect("lock");

    let panicked = t
        .panicked
        .unwrap_or_else(|| panic!("no panic in the log:\n{}", t.log));
    assert!(ready_seen, "never ready; log:\n{}", t.log);
    let unready_at = unready_at.unwrap_or_else(|| panic!("/readyz never said 503:\n{}", t.log));
    let to_unready = unready_at.saturating_sub(panicked);
    let to_exit = exited_at.saturating_sub(panicked);
    let pings: Vec<Duration> = t
        .notes
        .iter()
        .filter(|(_, n)| n.contains("WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect();
    // Between the panic and the supervisor seeing the task end, a ping
    // already under way is legitimate; once the daemon has said so, none
    // may follow. The two are observed on different threads, so a ping is
    // counted only if it arrived more than SKEW after that line.
    let noticed = t
        .noticed
        .unwrap_or_else(|| panic!("no 'worker panicked' in the log:\n{}", t.log));
    let after: Vec<&Duration> = pings.iter().filter(|at| **at > noticed + SKEW).collect();
    eprintln!(
        "panic at {panicked:?}; /readyz 503 {to_unready:?} later; exit {status} {to_exit:?} later; {} watchdog pings before, {} after",
        pings.len() - after.len(),
        after.len()
    );
    assert!(
        t.notes.iter().any(|(_, n)| n.contains("READY=1")),
        "READY=1 was sent"
    );
    assert!(
        pings.len() >= 2,
        "the watchdog was pinged while the workers ran: {:?}",
        t.notes
    );
    assert!(
        to_unready <= Duration::from_secs(1),
        "/readyz turned 503 {to_unready:?} after the panic"
    );
    assert!(
        after.is_empty(),
        "watchdog pings after the daemon noticed the panic at {noticed:?}: {after:?}"
    );
    assert!(!status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(3), "runtime failures exit 3");
    assert!(
        to_exit <= GRACE,
        "exited {to_exit:?} after the panic (grace {GRACE:?})"
    );
    assert!(t.log.contains("worker panicked"), "log:\n{}", t.log);
}
