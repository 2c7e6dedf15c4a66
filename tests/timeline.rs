//! Timelines on a manual clock, in process: the real daemon (HTTP in, SMTP
//! out to an SMTP server, sled on disk) whose clock the test moves, so a
//! day of schedule takes seconds and every instant is exact.

mod common;
mod peers;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Mail, SmtpMode, TestApp};
use peers::rules;
use serde_json::json;
use tidings::domain::clock::ManualClock;

/// A Friday morning in January: no quiet hours anywhere near.
fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-15T09:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

/// The mails whose subject says they are progress updates.
fn kinds(mails: &[Mail]) -> Vec<String> {
    mails
        .iter()
        .map(|m| m.header("Subject").unwrap_or_default())
        .collect()
}

/// What the case's history says each message promised.
async fn promises(app: &TestApp) -> Vec<Option<String>> {
    let case = app.get_case("CASE-1").await;
    case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["promised_next_update_at"].as_str().map(str::to_owned))
        .collect()
}

/// Polling window after the clock moves: the workers look at it at least
/// once a second.
const SETTLE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_arrive_when_the_clock_says_and_an_agent_reply_restarts_the_interval() {
    let clock = ManualClock::at(t0());
    let app = TestApp::spawn_on_clock(
        &rules("updates", &[("every", "4h")]),
        SmtpMode::Accept,
        Arc::clone(&clock),
    )
    .await;
    let r = app.put_case("CASE-1", &peers::case_on(&["email"])).await;
    assert_eq!(r.status(), 201);
    app.wait_mails(SETTLE, |m| m.len() == 1).await;
    assert_eq!(
        promises(&app).await,
        [Some("2027-01-15T13:00:00Z".to_owned())],
        "the acknowledgement promises 4 h later, to the second"
    );

    // One minute short of the promise: nothing. (A deliberate silence: the
    // workers look at the clock every second, so two seconds is enough.)
    app.advance(hours(4) - chrono::Duration::minutes(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.mails().len(), 1, "{:?}", kinds(&app.mails()));

    // At the promise: the update, promising the next one.
    app.advance(chrono::Duration::minutes(1));
    app.wait_mails(SETTLE, |m| m.len() == 2).await;
    assert_eq!(
        promises(&app).await[1].as_deref(),
        Some("2027-01-15T17:00:00Z")
    );

    // An agent replies at 14:00: the next update moves to 18:00.
    app.advance(hours(1));
    let r = app.event("CASE-1", json!({ "type": "agent_reply" })).await;
    assert_eq!(r.status(), 200);
    let case = app.get_case("CASE-1").await;
    assert_eq!(case["next_update_at"], "2027-01-15T18:00:00Z");
    app.advance(hours(3));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.mails().len(), 2, "nothing at 17:00 any more");
    app.advance(hours(1));
    app.wait_mails(SETTLE, |m| m.len() == 3).await;
    assert_eq!(
        promises(&app).await.last().cloned().flatten().as_deref(),
        Some("2027-01-15T22:00:00Z")
    );
}
