//! Someone taken off a case's CC list gets nothing more, not even a
//! message already planned for them and held back (here by their quiet
//! hours), in process on a manual clock: the held SMS is filed as not
//! sent, "no longer on the case", and the SMS transport writes nothing.

mod common;
mod peers;

use std::sync::Arc;
use std::time::Duration;

use common::{SmtpMode, TestApp};
use peers::rules;
use serde_json::{Value, json};
use tidings::domain::clock::ManualClock;

const MARIA: &str = "maria.departed@example.com";
const ZOFIA: &str = "+48601444999";

fn case(with_cc: bool) -> Value {
    let mut c = json!({
        "subject": "Replacement router has not shipped",
        "customer": {"name": "Maria Hernandez", "email": MARIA,
            "timezone": "America/New_York", "locale": "en", "channels": ["email"]},
    });
    if with_cc {
        // 01:00 in Los Angeles when the case opens: inside SMS quiet hours.
        c["cc"] = json!([{"name": "Zofia Nowak", "phone": ZOFIA,
            "timezone": "America/Los_Angeles", "locale": "pl", "channels": ["sms"]}]);
    }
    c
}

fn cc_messages(case: &Value) -> Vec<Value> {
    case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["recipient"] == "cc:0")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_for_a_cc_taken_off_the_case_is_not_sent() {
    let clock = ManualClock::at("2027-01-15T09:00:00Z".parse().expect("instant"));
    let app = TestApp::spawn_on_clock(
        &rules("updates", &[("every", "4h"), ("created", "email, sms")]),
        SmtpMode::Accept,
        Arc::clone(&clock),
    )
    .await;
    assert_eq!(app.put_case("GONE-1", &case(true)).await.status(), 201);
    app.wait_mails(Duration::from_secs(10), |m| !m.is_empty())
        .await;
    let held = cc_messages(&app.get_case("GONE-1").await);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        held[0]["status"], "pending",
        "held for quiet hours: {held:?}"
    );

    // The help desk takes Zofia off the case; her quiet hours end later.
    assert_eq!(app.put_case("GONE-1", &case(false)).await.status(), 200);
    app.advance(chrono::Duration::hours(8));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let filed = loop {
        let m = cc_messages(&app.get_case("GONE-1").await);
        if m.iter().all(|m| m["status"] != "pending") {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still pending: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(filed.len(), 1, "{filed:?}");
    assert_ne!(filed[0]["status"], "sent", "{filed:?}");
    assert_eq!(filed[0]["error"], "no longer on the case", "{filed:?}");
    let sms = app.dir.path().join("data/sms");
    let written = std::fs::read_dir(&sms).map(Iterator::count).unwrap_or(0);
    assert_eq!(
        written, 0,
        "an SMS was written for someone no longer on the case"
    );
}
