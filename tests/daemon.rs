//! The daemon end to end, in process: HTTP in, SMTP out to a real SMTP
//! server implementation, sled on disk.

mod common;
mod peers;

use std::time::Duration;

use common::{SmtpMode, TestApp};
use peers::{OTHER_TOKEN, TOKEN, eventually, rules};
use serde_json::json;

/// Updates every `every` while a case is open, two reminders a second
/// apart while it waits on the customer.
fn updates(every: &str) -> String {
    rules("updates", &[("every", every)])
}

/// The sample case, email only.
fn case_body() -> serde_json::Value {
    peers::case_on(&["email"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_case_gets_an_acknowledgement_naming_the_customer() {
    let app = TestApp::spawn(&updates("1h"), SmtpMode::Accept).await;
    let r = app.put_case("CASE-1", &case_body()).await;
    assert_eq!(r.status(), 201);
    let mails = app
        .wait_mails(Duration::from_secs(2), |m| !m.is_empty())
        .await;
    let ack = &mails[0];
    assert_eq!(ack.to, vec!["maria.hernandez@example.com".to_owned()]);
    assert!(
        ack.header("Subject")
            .expect("subject")
            .contains("Replacement router has not shipped")
    );
    assert!(ack.text().contains("Maria"), "{}", ack.text());
    let mid = ack.header("Message-ID").expect("message id");
    assert!(
        mid.starts_with('<') && mid.ends_with("@example.com>"),
        "{mid}"
    );
    // The promise in the message is the case's next update, in New York time.
    let case = app.get_case("CASE-1").await;
    assert_eq!(case["messages"][0]["kind"], "created");
    assert!(case["messages"][0]["promised_next_update_at"].is_string());
    assert_eq!(
        case["messages"][0]["promised_next_update_at"],
        case["next_update_at"]
    );
    assert!(ack.text().contains(" EST"), "{}", ack.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_updates_keep_coming_until_one_resolution_then_silence() {
    let app = TestApp::spawn(&updates("1s"), SmtpMode::Accept).await;
    assert_eq!(app.put_case("CASE-2", &case_body()).await.status(), 201);
    app.wait_mails(Duration::from_secs(5), |m| m.len() >= 3)
        .await;
    let r = app
        .event("CASE-2", json!({"type": "status", "status": "resolved"}))
        .await;
    assert_eq!(r.status(), 200);
    // A second resolved event must not send a second resolution.
    let r = app
        .event("CASE-2", json!({"type": "status", "status": "resolved"}))
        .await;
    assert_eq!(r.status(), 200);
    let before = app.mails().len();
    // Settled: the resolution (and any update already under way) sent, and
    // the server holds every message the history records.
    let case = eventually(Duration::from_secs(5), "the resolution sent", async || {
        let case = app.get_case("CASE-2").await;
        let msgs = case["messages"].as_array().cloned().unwrap_or_default();
        let settled = msgs.last().is_some_and(|m| m["kind"] == "resolved")
            && msgs.iter().all(|m| m["status"] == "sent")
            && app.mails().len() == msgs.len();
        if settled {
            Ok(case)
        } else {
            Err(case.to_string())
        }
    })
    .await;
    // Then silence: with updates every second, two seconds in which nothing
    // may arrive (deliberate: this is the scenario's "then silence").
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = app.mails();
    let kinds: Vec<&str> = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "resolved").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"resolved"));
    // At most the resolution (and a progress already in flight) after the event.
    assert!(mails.len() <= before + 1, "{} then {}", before, mails.len());
    assert_eq!(mails.len(), kinds.len());
    for m in case["messages"].as_array().expect("messages") {
        assert_eq!(m["status"], "sent", "{m}");
        assert!(m["sent_at"].is_string());
    }
    assert!(case["next_update_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reply_pushes_the_next_update_a_full_interval() {
    let app = TestApp::spawn(&updates("2s"), SmtpMode::Accept).await;
    app.put_case("CASE-3", &case_body()).await;
    app.wait_mails(Duration::from_secs(2), |m| m.len() == 1)
        .await;
    // The reply comes 1.2 s into the 2 s interval (the scenario's timing).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let replied = chrono::Utc::now();
    let replied_at = std::time::Instant::now();
    let case: serde_json::Value = app
        .event("CASE-3", json!({"type": "agent_reply"}))
        .await
        .json()
        .await
        .expect("json");
    let next: chrono::DateTime<chrono::Utc> = case["next_update_at"]
        .as_str()
        .expect("next")
        .parse()
        .expect("instant");
    let gap = (next - replied).num_milliseconds();
    assert!(
        (1800..=2300).contains(&gap),
        "next update {gap} ms after the reply"
    );
    let mails = app
        .wait_mails(Duration::from_secs(4), |m| m.len() >= 2)
        .await;
    let after = mails[1].at - replied_at;
    assert!(
        after >= Duration::from_millis(1800),
        "a progress update {after:?} after the reply, within the interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_cases_and_sends_nothing_twice() {
    let app = TestApp::spawn(&updates("2s"), SmtpMode::Accept).await;
    app.put_case("CASE-4", &case_body()).await;
    app.wait_mails(Duration::from_secs(2), |m| m.len() == 1)
        .await;
    let app = app.restart().await;
    let case = app.get_case("CASE-4").await;
    assert_eq!(case["messages"].as_array().expect("messages").len(), 1);
    app.wait_mails(Duration::from_secs(4), |m| m.len() >= 2)
        .await;
    let mails = app.mails();
    let mut ids: Vec<String> = mails
        .iter()
        .filter_map(|m| m.header("Message-ID"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), mails.len(), "a message was sent twice");
}

/// Sends a request; returns its status and JSON body (null when there is none).
async fn answer(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let app = TestApp::spawn(&updates("1s"), SmtpMode::Accept).await;
    let c = &app.client;
    let url = app.url("/v1/cases/C-9");
    let events = app.url("/v1/cases/C-9/events");
    let put = |body: &serde_json::Value| c.put(&url).bearer_auth(TOKEN).json(body);

    assert_eq!(answer(c.put(&url).json(&case_body())).await.0, 401);
    let wrong = c.put(&url).bearer_auth("wrong-token-wrong-token");
    assert_eq!(answer(wrong.json(&case_body())).await.0, 401);

    let (status, body) = answer(c.put(&url).bearer_auth(TOKEN).body("{\"subject\": ")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_json");

    for (field, value, expect) in [
        ("email", json!("not-an-address"), "customer.email"),
        ("phone", json!("555-0143"), "customer.phone"),
        ("timezone", json!("Mars/Olympus"), "customer.timezone"),
        ("locale", json!("english!"), "customer.locale"),
    ] {
        let mut b = case_body();
        b["customer"][field] = value;
        let (status, body) = answer(put(&b)).await;
        assert_eq!(status, 422, "{field}");
        assert_eq!(body["error"]["field"], expect, "{body}");
    }
    let mut b = case_body();
    b["status"] = json!("sleeping");
    let (status, body) = answer(put(&b)).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "status");
    let mut b = case_body();
    b["colour"] = json!("red");
    assert_eq!(answer(put(&b)).await.0, 422);

    let mut b = case_body();
    b["subject"] = json!("x".repeat(70_000));
    assert_eq!(answer(put(&b)).await.0, 413);

    let bad_id = c.put(app.url("/v1/cases/bad%2Fid")).bearer_auth(TOKEN);
    assert_eq!(answer(bad_id.json(&case_body())).await.0, 422);

    let event = |body: serde_json::Value| c.post(&events).bearer_auth(TOKEN).json(&body);
    assert_eq!(answer(event(json!({"type": "agent_reply"}))).await.0, 404);
    let (status, _) = answer(event(json!({"type": "dance"}))).await;
    assert!(status == 422 || status == 404, "{status}");

    // Another source's case does not exist for this token.
    assert_eq!(app.put_case("C-9", &case_body()).await.status(), 201);
    for req in [
        c.get(&url).bearer_auth(OTHER_TOKEN),
        c.delete(&url).bearer_auth(OTHER_TOKEN),
        c.post(&events)
            .bearer_auth(OTHER_TOKEN)
            .json(&json!({"type": "agent_reply"})),
    ] {
        assert_eq!(answer(req).await.0, 404);
    }
    assert_eq!(app.get_case("C-9").await["id"], "C-9");

    let (status, doc) = answer(c.get(app.url("/openapi.json"))).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/cases/{id}"]["put"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_the_first_answer() {
    let app = TestApp::spawn(&updates("1s"), SmtpMode::Accept).await;
    let send = |body: serde_json::Value| {
        app.client
            .post(app.url("/v1/cases/C-5/events"))
            .bearer_auth(TOKEN)
            .header("Idempotency-Key", "note-1")
            .json(&body)
            .send()
    };
    app.put_case("C-5", &case_body()).await;
    let note = json!({"type": "note", "body": "The courier has it.", "author": "Jordan"});
    let first = send(note.clone()).await.expect("req");
    assert_eq!(first.status(), 200);
    let again = send(note).await.expect("req");
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let other = send(json!({"type": "agent_reply"})).await.expect("req");
    assert_eq!(other.status(), 409);
    let case = app.get_case("C-5").await;
    let notes = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["kind"] == "note")
        .count();
    assert_eq!(notes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_smtp_failure_is_recorded_with_the_reply() {
    let app = TestApp::spawn(&updates("1h"), SmtpMode::RejectRcpt).await;
    app.put_case("C-6", &case_body()).await;
    let case = eventually(Duration::from_secs(3), "the message failed", async || {
        let case = app.get_case("C-6").await;
        if case["messages"][0]["status"] == "failed" {
            Ok(case)
        } else {
            Err(case.to_string())
        }
    })
    .await;
    let m = &case["messages"][0];
    let err = m["error"].as_str().expect("error");
    assert!(err.contains("550"), "{err}");
    assert!(!err.contains("maria"), "the reply is scrubbed: {err}");
    assert_eq!(m["attempts"], 1);
    assert!(app.mails().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_smtp_failures_are_retried_until_accepted() {
    let app = TestApp::spawn(&updates("1h"), SmtpMode::DeferRcpt(2)).await;
    app.put_case("C-7", &case_body()).await;
    let mails = app
        .wait_mails(Duration::from_secs(5), |m| !m.is_empty())
        .await;
    assert_eq!(mails.len(), 1);
    // The history is updated a moment after the server's acceptance.
    let case = eventually(Duration::from_secs(3), "recorded as sent", async || {
        let case = app.get_case("C-7").await;
        if case["messages"][0]["status"] == "sent" {
            Ok(case)
        } else {
            Err(case.to_string())
        }
    })
    .await;
    assert_eq!(case["messages"][0]["status"], "sent");
    assert_eq!(case["messages"][0]["attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_erases_the_case_and_cancels_pending_messages() {
    // Every attempt is deferred, so the acknowledgement stays pending.
    let app = TestApp::spawn(&updates("1h"), SmtpMode::DeferRcpt(1000)).await;
    app.put_case("C-8", &case_body()).await;
    let r = app
        .client
        .delete(app.url("/v1/cases/C-8"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 204);
    let r = app
        .client
        .get(app.url("/v1/cases/C-8"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 404);
    let attempts = *app.smtp_attempts.lock().expect("lock");
    // Deliberate: a second (several backoffs of 100-400 ms) in which no
    // retry may reach the server.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        *app.smtp_attempts.lock().expect("lock") <= attempts + 1,
        "retries continued after erasure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_stop_after_max_updates() {
    let app = TestApp::spawn(&updates("1s"), SmtpMode::Accept).await;
    let mut body = case_body();
    body["status"] = json!("pending_customer");
    app.put_case("C-10", &body).await;
    // Done once nothing more is planned and every message is sent.
    let case = eventually(Duration::from_secs(6), "the reminders over", async || {
        let case = app.get_case("C-10").await;
        let msgs = case["messages"].as_array().cloned().unwrap_or_default();
        let done = case["next_update_at"].is_null()
            && msgs.len() >= 3
            && msgs.iter().all(|m| m["status"] == "sent");
        if done {
            Ok(case)
        } else {
            Err(case.to_string())
        }
    })
    .await;
    let reminders = case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["kind"] == "progress")
        .count();
    assert_eq!(reminders, 2, "{case}");
    assert_eq!(app.mails().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_case_escalates_once_to_operations() {
    let app = TestApp::spawn(&rules("escalate", &[]), SmtpMode::Accept).await;
    app.put_case("C-11", &case_body()).await;
    let mails = app
        .wait_mails(Duration::from_secs(4), |m| m.len() >= 2)
        .await;
    let ops: Vec<_> = mails
        .iter()
        .filter(|m| m.to == ["ops@example.com"])
        .collect();
    assert_eq!(ops.len(), 1);
    assert!(ops[0].text().contains("C-11"), "{}", ops[0].text());
    // Deliberate: a second escalation would come a second later; 1.5 s in
    // which nothing more may arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.mails().len(), 2, "escalation is sent once");
    // Internal messages stay out of the customer's history.
    let case = app.get_case("C-11").await;
    assert_eq!(case["messages"].as_array().expect("messages").len(), 1);
}
