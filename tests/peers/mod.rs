//! The harness for tests that run the real binary, and what every test
//! shares: the daemon's config (`Setup`) and the fixtures in
//! `tests/fixtures/`, free ports, waits on observable state, and the real
//! peers (Postfix's `smtp-sink`, Prism serving Twilio's OpenAPI
//! description), which a test asks for with `smtp_sink()` or `prism()`:
//! when one is missing the test reports itself SKIPPED, or fails under
//! `TIDINGS_E2E_REQUIRED=1` (CI).
//!
//! `tests/common` (the daemon in process) builds on this module: a test
//! file that declares `mod common;` declares `mod peers;` too.

#![allow(dead_code)]

mod daemon;
mod fixtures;
mod postgres;
mod prism;
pub mod records;
mod scan;
mod sink;
mod twilio;

// Each test file uses a part of the harness.
#[allow(unused_imports)]
pub use {daemon::*, fixtures::*, postgres::*, prism::*, scan::*, sink::*, twilio::*};

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often waits look again.
pub const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Ports

/// A loopback listener on a port no other caller in this test process was
/// given, by this function or `free_port`: the tests run in parallel, and
/// a daemon that is stopped comes back on its old port.
pub fn listener() -> TcpListener {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local address").port();
        let fresh = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port);
        if fresh {
            return l;
        }
    }
}

/// A port that was free a moment ago and that nothing else in this test
/// process will be given, for a peer that binds it itself.
pub fn free_port() -> u16 {
    listener().local_addr().expect("local address").port()
}

/// Kills a child (SIGKILL) and reaps it; used on drop so no test leaves a
/// process behind, whatever it panicked on.
pub fn stop(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Skipping

/// The running test, as `file::test` (libtest names its thread after it).
fn test_name() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("?");
    format!("{}::{name}", env!("CARGO_CRATE_NAME"))
}

/// Reports the running test as skipped on stderr, past the test harness's
/// output capture so it shows in every run.
pub fn skip(why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {}: {why}", test_name());
}

/// `found`, or `None` after reporting the test SKIPPED because `peer` is
/// missing (`install` says how to get it). Under `TIDINGS_E2E_REQUIRED=1`
/// a missing peer fails the test instead. Every test that needs a real
/// peer asks through here.
pub fn peer_or_skip<T>(found: Option<T>, peer: &str, install: &str) -> Option<T> {
    if found.is_none() {
        let why = format!("{peer} not installed ({install})");
        assert!(
            std::env::var("TIDINGS_E2E_REQUIRED").as_deref() != Ok("1"),
            "{}: {why}, and TIDINGS_E2E_REQUIRED=1",
            test_name()
        );
        skip(&why);
    }
    found
}

/// Postfix's `smtp-sink`, or `None` when the test skips.
pub fn smtp_sink() -> Option<std::path::PathBuf> {
    peer_or_skip(sink_binary(), "smtp-sink", "apt-get install postfix")
}

/// The Prism server shared by the process, or `None` when the test skips.
pub fn prism() -> Option<&'static Prism> {
    peer_or_skip(
        Prism::shared(),
        "Prism",
        "npm install --prefix target/peers @stoplight/prism-cli@5",
    )
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `probe` until it gives `Ok`, and returns that; panics after
/// `timeout` with `what` and the last `Err` (what was seen instead).
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last seen: {seen}"
        );
        tokio::time::sleep(POLL).await;
    }
}
