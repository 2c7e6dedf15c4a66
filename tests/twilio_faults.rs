//! Twilio faults: how the real binary answers a Messages API that says
//! 429 with `Retry-After`, 500, 21211 (invalid number), 21610 (the
//! recipient unsubscribed at the carrier), or does not answer at all.
//!
//! Prism (see `e2e_twilio_prism.rs`) checks the shape of every request
//! against Twilio's description but cannot be told to fail on cue, so this
//! suite scripts the answers with a small HTTP server in the test; email
//! goes to Postfix's smtp-sink. Assertions are on what reached the two
//! peers and on the case history.

mod peers;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use peers::*;
use serde_json::{Value, json};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<&'static str>,
    delay: Duration,
}

impl Reply {
    fn created() -> Self {
        Self {
            status: 201,
            body: json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}),
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    fn error(status: u16, code: u64) -> Self {
        Self {
            status,
            body: json!({"code": code, "message": "scripted failure", "more_info": "https://www.twilio.com/docs/errors", "status": status}),
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    seen: Vec<(Instant, HashMap<String, String>)>,
}

type Shared = Arc<Mutex<Script>>;

async fn messages(
    State(script): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let reply = {
        let mut s = script.lock().expect("lock");
        s.seen.push((Instant::now(), form));
        s.replies.pop_front().unwrap_or_else(Reply::created)
    };
    // A scripted slow answer (the daemon's timeout is the subject).
    tokio::time::sleep(reply.delay).await;
    let mut headers = axum::http::HeaderMap::new();
    if let Some(r) = reply.retry_after {
        headers.insert("retry-after", r.parse().expect("header"));
    }
    (
        StatusCode::from_u16(reply.status).expect("status"),
        headers,
        axum::Json(reply.body),
    )
}

/// The scripted Messages API on a free port.
async fn fake_twilio(replies: Vec<Reply>) -> (u16, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script {
        replies: replies.into(),
        seen: Vec::new(),
    }));
    let app = axum::Router::new()
        .route(
            &format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json"),
            axum::routing::post(messages),
        )
        .with_state(script.clone());
    let listener = listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, script)
}

/// Hourly progress by SMS, the acknowledgement on `created`.
fn rules(created: &str) -> String {
    peers::rules(
        "updates",
        &[("every", "1h"), ("progress", "sms"), ("created", created)],
    )
}

async fn daemon(sink: &Sink, twilio: u16, rules: &str) -> (Daemon, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("secrets");
    let token = secrets.path().join("twilio_token");
    std::fs::write(&token, "twilio-faults-auth-token").expect("token");
    let sms = format!(
        "sms:
  transport: twilio
  base_url: http://127.0.0.1:{twilio}
  account_sid: {ACCOUNT}
  auth_token_file: {token:?}
  from: \"+15005550006\"
  quiet_hours: off
  min_gap: 0s
  timeout: 1s
digest:
  window: 0s
"
    );
    let d = Setup::new(rules).smtp(sink.port).extra(&sms).start().await;
    (d, secrets)
}

fn case(channels: &[&str]) -> Value {
    case_on(channels)
}

/// Waits (15 s at most) until `pred` holds for the case's messages.
async fn history_until(
    d: &Daemon,
    id: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    d.wait_messages(id, Duration::from_secs(15), what, pred)
        .await
}

fn seen(script: &Shared) -> Vec<(Instant, HashMap<String, String>)> {
    script.lock().expect("lock").seen.clone()
}

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_retry_after() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let mut busy = Reply::error(429, 20429);
    busy.retry_after = Some("2");
    let (port, script) = fake_twilio(vec![busy]).await;
    let (d, _s) = daemon(&sink, port, &rules("sms")).await;
    d.put_case("F-429", &case(&["sms"])).await;
    let h = history_until(&d, "F-429", "sent after the 429", |h| {
        h[0]["status"] == "sent"
    })
    .await;
    assert_eq!(h[0]["attempts"], 2, "{h:?}");
    let s = seen(&script);
    assert_eq!(s.len(), 2, "one refused, one accepted");
    let waited = s[1].0 - s[0].0;
    println!(
        "twilio 429: retried after {:.2}s (Retry-After: 2)",
        waited.as_secs_f64()
    );
    assert!(
        waited >= Duration::from_millis(1990),
        "retried after {waited:?}"
    );
    let form = &s[1].1;
    assert_eq!(form.get("To").map(String::as_str), Some(PHONE));
    assert_eq!(form.get("From").map(String::as_str), Some("+15005550006"));
    assert!(
        form.get("StatusCallback")
            .is_some_and(|u| u.contains("/v1/sms/status?"))
    );
    assert!(form.get("Body").is_some_and(|b| b.contains("Maria")));
}

#[tokio::test]
async fn a_500_and_a_timeout_are_retried_until_accepted() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let mut hang = Reply::created();
    hang.delay = Duration::from_secs(3);
    let (port, script) = fake_twilio(vec![Reply::error(500, 20500), hang]).await;
    let (d, _s) = daemon(&sink, port, &rules("sms")).await;
    d.put_case("F-500", &case(&["sms"])).await;
    let h = history_until(&d, "F-500", "sent after 500 and a timeout", |h| {
        h[0]["status"] == "sent"
    })
    .await;
    assert_eq!(h[0]["attempts"], 3, "{h:?}");
    println!(
        "twilio 500 + timeout: sent on attempt 3; {} requests",
        seen(&script).len()
    );
    assert_eq!(h.len(), 1, "no fallback for transient failures: {h:?}");
}

#[tokio::test]
async fn error_21211_fails_the_sms_and_falls_back_to_email() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let (port, script) = fake_twilio(vec![Reply::error(400, 21211)]).await;
    let (d, _s) = daemon(&sink, port, &rules("sms")).await;
    d.put_case("F-21211", &case(&["sms", "email"])).await;
    let h = history_until(&d, "F-21211", "sms failed, email sent", |h| {
        h.iter()
            .any(|m| m["channel"] == "email" && m["status"] == "sent")
    })
    .await;
    let sms = &h[0];
    assert_eq!(sms["status"], "failed");
    assert_eq!(sms["attempts"], 1, "a permanent failure is not retried");
    assert!(
        sms["error"].as_str().is_some_and(|e| e.contains("21211")),
        "{sms}"
    );
    assert_eq!(h[1]["fallback_for"], sms["id"]);
    let (mails, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(5), |m| !m.is_empty())
        .await;
    assert!(ok && mails.len() == 1, "one fallback email");
    assert_eq!(seen(&script).len(), 1);
    println!("twilio 21211: SMS failed once with the code recorded; the update went by email");
}

#[tokio::test]
async fn error_21610_opts_the_number_out_for_every_case() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let (port, script) = fake_twilio(vec![Reply::error(400, 21610)]).await;
    let (d, _s) = daemon(&sink, port, &rules("sms")).await;
    d.put_case("F-21610-A", &case(&["sms"])).await;
    let h = history_until(&d, "F-21610-A", "sms failed", |h| {
        h[0]["status"] == "failed"
    })
    .await;
    assert!(
        h[0]["error"].as_str().is_some_and(|e| e.contains("21610")),
        "{h:?}"
    );
    // Another case for the same number: never offered to Twilio again.
    d.put_case("F-21610-B", &case(&["sms"])).await;
    let h = history_until(&d, "F-21610-B", "cancelled", |h| {
        h[0]["status"] == "cancelled"
    })
    .await;
    assert!(
        h[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("opted out")),
        "{h:?}"
    );
    assert_eq!(seen(&script).len(), 1, "one request in all");
    println!(
        "twilio 21610: the number is opted out; the next case's SMS was cancelled without a request"
    );
}
