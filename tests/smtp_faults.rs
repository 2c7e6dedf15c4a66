//! SMTP faults, with Postfix's smtp-sink playing each one (see its `-r`,
//! `-f`, `-Q`, `-q` and `-w` flags): the server down for a while, a soft
//! 4xx, a hard 5xx, 421 and hang up, the connection dropped mid-DATA, a
//! slow server. For each, the transient ones are retried with backoff and
//! the message arrives exactly once when the server recovers (a normal
//! smtp-sink on the same port); the permanent one fails without a retry.

mod peers;

use std::time::{Duration, Instant};

use peers::*;
use serde_json::json;

const RULES: &str = "rules: []
on:
  created: { template: acknowledgement, channels: [email] }
";

fn case() -> serde_json::Value {
    json!({
        "subject": SUBJECT, "status": "open", "priority": "normal",
        "customer": { "name": "Maria Hernandez", "email": EMAIL, "timezone": "UTC", "locale": "en", "channels": ["email"] }
    })
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
    let Some(bin) = sink_binary() else { return };
    let port = free_port();
    let faulty = match fault {
        Some(flags) => Some(Sink::start_on(&bin, flags, port).await),
        None => None,
    };
    let d = Daemon::start(port, RULES).await;
    d.put_case("SMTP-1", &case()).await;
    // Let it fail a few times (backoff 200 ms doubling, jittered).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (attempts, error) = loop {
        let (attempts, status, error) = ack(&d).await;
        assert_eq!(status, "pending", "{what}: {error}");
        if attempts >= 2 {
            break (attempts, error);
        }
        assert!(Instant::now() < deadline, "{what}: no retry");
        tokio::time::sleep(POLL).await;
    };
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
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(good.mails().len(), 1, "{what}: exactly one copy arrived");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (total, status, _) = loop {
        let a = ack(&d).await;
        if a.1 == "sent" || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(status, "sent", "{what}");
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
    let Some(bin) = sink_binary() else { return };
    let sink = Sink::start_with(&bin, &["-f", "RCPT"]).await;
    let d = Daemon::start(sink.port, RULES).await;
    d.put_case("SMTP-1", &case()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (attempts, status, error) = ack(&d).await;
        if status == "failed" {
            assert_eq!(attempts, 1, "a permanent failure is not retried");
            assert!(error.contains("SMTP 5"), "{error}");
            println!("smtp 5xx on RCPT: failed on attempt 1 ({error})");
            break;
        }
        assert!(Instant::now() < deadline, "not failed: {status} {error}");
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        ack(&d).await.0,
        1,
        "no retry storm after a permanent failure"
    );
}

#[tokio::test]
async fn a_slow_server_gets_the_message_once() {
    let Some(bin) = sink_binary() else { return };
    let sink = Sink::start_with(&bin, &["-w", "3"]).await;
    let d = Daemon::start(sink.port, RULES).await;
    let t = Instant::now();
    d.put_case("SMTP-1", &case()).await;
    let (_, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(20), |m| !m.is_empty())
        .await;
    assert!(ok, "nothing arrived from a slow server");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sink.mails().len(), 1);
    let (attempts, status, _) = ack(&d).await;
    assert_eq!((attempts, status.as_str()), (1, "sent"));
    println!(
        "smtp slow (3 s DATA): delivered once after {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
