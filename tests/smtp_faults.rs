//! SMTP faults, with Postfix's smtp-sink playing each one (see its `-r`,
//! `-f`, `-Q`, `-q` and `-w` flags): the server down for a while, a soft
//! 4xx, a hard 5xx, 421 and hang up, the connection dropped mid-DATA, a
//! slow server. For each, the transient ones are retried with backoff and
//! the message arrives exactly once when the server recovers (a normal
//! smtp-sink on the same port); the permanent one fails without a retry.
//! A relay refusing every message gets exactly `max_attempts` tries of each
//! and the daemon's memory stays flat.

mod peers;

use std::time::{Duration, Instant};

use peers::*;
use serde_json::json;

/// The acknowledgement is the only message.
fn setup(smtp_port: u16) -> Setup {
    Setup::new(rules("ack-only", &[])).smtp(smtp_port)
}

fn case() -> serde_json::Value {
    case_on(&["email"])
}

/// The acknowledgement's attempts, status and error, as the history says.
async fn ack(d: &Daemon) -> (u64, String, String) {
    let c = d.get_case("SMTP-1").await;
    let m = &c["messages"][0];
    (
        m["attempts"].as_u64().unwrap_or(0),
        m["status"].as_str().unwrap_or("").to_owned(),
        m["error"].as_str().unwrap_or("").to_owned(),
    )
}

/// Faulty first (or no server at all), then a normal sink on the same
/// port: the message gets there once.
async fn transient(fault: Option<&[&str]>, what: &str) {
    let Some(bin) = smtp_sink() else { return };
    let port = free_port();
    let faulty = match fault {
        Some(flags) => Some(Sink::start_on(&bin, flags, port).await),
        None => None,
    };
    let d = setup(port).start().await;
    d.put_case("SMTP-1", &case()).await;
    // Let it fail a few times (backoff 200 ms doubling, jittered).
    let (attempts, error) = eventually(Duration::from_secs(15), what, async || {
        let (attempts, status, error) = ack(&d).await;
        assert_eq!(status, "pending", "{what}: {error}");
        if attempts >= 2 {
            Ok((attempts, error))
        } else {
            Err(format!("{attempts} attempts, no retry"))
        }
    })
    .await;
    if let Some(f) = &faulty {
        assert!(
            f.mails().is_empty(),
            "{what}: the faulty server kept a message"
        );
    }
    drop(faulty);
    let good = Sink::start_on(&bin, &[], port).await;
    let (_, ok) = good
        .wait_for(Instant::now() + Duration::from_secs(20), |m| !m.is_empty())
        .await;
    assert!(ok, "{what}: nothing arrived after recovery");
    // Once the history says sent, nothing more is on its way.
    let h = d
        .wait_history("SMTP-1", Duration::from_secs(5), what, |h| {
            h[0].status == "sent"
        })
        .await;
    assert_eq!(good.mails().len(), 1, "{what}: exactly one copy arrived");
    let (total, _, _) = ack(&d).await;
    assert_eq!(h.len(), 1, "{what}: {h:?}");
    println!(
        "smtp {what}: retried ({attempts} failed attempts, last error: {error}); delivered once on attempt {total} after recovery"
    );
    assert!(
        !d.log().to_lowercase().contains(EMAIL),
        "{what}: the log holds the address"
    );
}

#[tokio::test]
async fn server_down_for_a_while() {
    transient(None, "down").await;
}

#[tokio::test]
async fn soft_4xx_on_data() {
    transient(Some(&["-r", "DATA"]), "4xx on DATA").await;
}

#[tokio::test]
async fn status_421_and_hang_up() {
    transient(Some(&["-Q", "DATA"]), "421 and hang up").await;
}

#[tokio::test]
async fn connection_dropped_mid_data() {
    transient(Some(&["-q", "DATA"]), "dropped at DATA").await;
}

#[tokio::test]
async fn hard_5xx_fails_at_once() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start_with(&bin, &["-f", "RCPT"]).await;
    let d = setup(sink.port).start().await;
    d.put_case("SMTP-1", &case()).await;
    let h = d
        .wait_messages("SMTP-1", Duration::from_secs(10), "failed", |h| {
            h[0]["status"] == "failed"
        })
        .await;
    let (attempts, error) = (&h[0]["attempts"], h[0]["error"].as_str().unwrap_or(""));
    assert_eq!(attempts, 1, "a permanent failure is not retried");
    assert!(error.contains("SMTP 5"), "{error}");
    println!("smtp 5xx on RCPT: failed on attempt 1 ({error})");
    // Deliberate: a second (several backoffs) in which no retry may happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ack(&d).await.0,
        1,
        "no retry storm after a permanent failure"
    );
}

#[tokio::test]
async fn a_slow_server_gets_the_message_once() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start_with(&bin, &["-w", "3"]).await;
    let d = setup(sink.port).start().await;
    let t = Instant::now();
    d.put_case("SMTP-1", &case()).await;
    let (_, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(20), |m| !m.is_empty())
        .await;
    assert!(ok, "nothing arrived from a slow server");
    // Once the history says sent, nothing more is on its way.
    d.wait_history("SMTP-1", Duration::from_secs(10), "recorded as sent", |h| {
        h[0].status == "sent"
    })
    .await;
    assert_eq!(sink.mails().len(), 1);
    let (attempts, status, _) = ack(&d).await;
    assert_eq!((attempts, status.as_str()), (1, "sent"));
    println!(
        "smtp slow (3 s DATA): delivered once after {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A relay that answers 451 to every DATA (mailin-embedded, counting the
/// transactions it sees; smtp-sink keeps no trace of a refused one): each
/// message is tried exactly `max_attempts` times, then failed, and the
/// daemon's memory does not grow with the failing retries.
#[tokio::test]
async fn a_refusing_relay_gets_bounded_retries_and_memory_stays_flat() {
    const CASES: usize = 200;
    const MAX_ATTEMPTS: usize = 10;
    let (port, transactions) = refusing_relay();
    let d = setup(port)
        .delivery(MAX_ATTEMPTS as u32, "200ms", "2s")
        .start()
        .await;
    let pid = d.child.as_ref().expect("running").id();
    for n in 0..CASES {
        let mut body = case();
        body["customer"]["email"] = json!(format!("storm{n}@example.com"));
        d.put_case(&format!("STORM-{n}"), &body).await;
    }
    let started = Instant::now();
    let mut rss = vec![rss_kib(pid)];
    let deadline = started + Duration::from_secs(60);
    let failed = loop {
        // Polling, and sampling the daemon's memory, once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(rss_kib(pid));
        let mut failed = 0;
        for n in 0..CASES {
            let c = d.get_case(&format!("STORM-{n}")).await;
            if c["messages"][0]["status"] == "failed" {
                failed += 1;
            }
        }
        if failed == CASES || Instant::now() > deadline {
            break failed;
        }
    };
    assert_eq!(failed, CASES, "every message failed after its attempts");
    // Nothing more is tried once they failed: a deliberate two seconds in
    // which the relay must see no transaction.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rss.push(rss_kib(pid));
    let seen = *transactions.lock().expect("count");
    let (first, peak, last) = (
        rss[0],
        rss.iter().copied().max().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
    );
    println!(
        "smtp refusing relay: {CASES} messages, {seen} transactions at the relay ({:.1} per message), all failed in {:.1}s; daemon RSS {:.1} MiB at the start, {:.1} MiB peak, {:.1} MiB at the end",
        seen as f64 / CASES as f64,
        started.elapsed().as_secs_f64(),
        first as f64 / 1024.0,
        peak as f64 / 1024.0,
        last as f64 / 1024.0
    );
    assert_eq!(
        seen,
        CASES * MAX_ATTEMPTS,
        "each message tried exactly max_attempts times"
    );
    assert!(
        last <= first + 32 * 1024,
        "memory grew with failing retries: {first} KiB -> {last} KiB"
    );
}

/// mailin-embedded on a free port, answering 451 to every DATA; the
/// number of transactions (MAIL FROM) it saw.
fn refusing_relay() -> (u16, std::sync::Arc<std::sync::Mutex<usize>>) {
    #[derive(Clone)]
    struct Refuse(std::sync::Arc<std::sync::Mutex<usize>>);
    impl mailin_embedded::Handler for Refuse {
        fn mail(
            &mut self,
            _ip: std::net::IpAddr,
            _domain: &str,
            _from: &str,
        ) -> mailin_embedded::Response {
            *self.0.lock().expect("count") += 1;
            mailin_embedded::response::OK
        }
        fn data_start(
            &mut self,
            _domain: &str,
            _from: &str,
            _is8bit: bool,
            _to: &[String],
        ) -> mailin_embedded::Response {
            mailin_embedded::response::INTERNAL_ERROR
        }
    }
    let count = std::sync::Arc::new(std::sync::Mutex::new(0));
    let listener = listener();
    let port = listener.local_addr().expect("addr").port();
    let mut server = mailin_embedded::Server::new(Refuse(count.clone()));
    server
        .with_name("refusing.test")
        .with_num_threads(8)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, count)
}
