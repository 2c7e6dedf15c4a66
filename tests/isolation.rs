//! Tenant isolation: a token of one source can neither read, change, erase
//! nor learn the existence of another source's cases. For every request,
//! the answer about another source's case is compared byte for byte with
//! the answer about a case id that was never used at all.

mod common;
mod peers;

use common::{SmtpMode, TestApp};
use peers::{OTHER_TOKEN, TOKEN};
use reqwest::Method;
use serde_json::{Value, json};

/// Status, the headers that could tell the two apart, and the body bytes.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    content_length: Option<String>,
    replayed: Option<String>,
    body: Vec<u8>,
}

async fn answer(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    answer_with(app, token, method, path, body, None).await
}

async fn answer_with(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    idempotency_key: Option<&str>,
) -> Answer {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, content_length, replayed) = (
        header("content-type"),
        header("content-length"),
        header("idempotent-replayed"),
    );
    Answer {
        status: resp.status().as_u16(),
        content_type,
        content_length,
        replayed,
        body: resp.bytes().await.expect("body").to_vec(),
    }
}

/// Immediate messages only (the next update is a month away), so nothing
/// changes the owner's case while the intruder tries.
fn rules() -> String {
    peers::rules("updates", &[("every", "30d")])
}

/// The sample case, email only.
fn case_body() -> Value {
    peers::case_on(&["email"])
}

/// The events an intruder might try, valid and invalid.
fn events() -> Vec<Value> {
    vec![
        json!({"type": "note", "body": "Intruder note", "author": "Mallory"}),
        json!({"type": "agent_reply"}),
        json!({"type": "status", "status": "resolved"}),
        json!({"type": "status", "status": "closed"}),
        json!({"type": "eta", "eta": "2030-01-01T00:00:00Z"}),
        json!({"type": "eta", "eta": null}),
        json!({"type": "note", "body": ""}),
        json!({"type": "dance"}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sources_case_is_indistinguishable_from_no_case() {
    let app = TestApp::spawn(&rules(), SmtpMode::Accept).await;
    // The owner (source `helpdesk`, TOKEN) files a case, with an
    // idempotency key, and a note on it.
    let owned = "ISO-OWNED-1";
    let never = "ISO-NEVER-1";
    let first = answer_with(
        &app,
        TOKEN,
        Method::PUT,
        &format!("/v1/cases/{owned}"),
        Some(&case_body()),
        Some("iso-put-1"),
    )
    .await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let note = json!({"type": "note", "body": "The courier has it.", "author": "Jordan"});
    let noted = answer(
        &app,
        TOKEN,
        Method::POST,
        &format!("/v1/cases/{owned}/events"),
        Some(&note),
    )
    .await;
    assert_eq!(noted.status, 200);
    app.wait_mails(std::time::Duration::from_secs(10), |m| m.len() >= 2)
        .await;
    // The history is updated a moment after the server's acceptance (and
    // the note's delivery settles the acknowledgement's promise): the
    // snapshot is taken once both are filed.
    let before = peers::eventually(
        std::time::Duration::from_secs(10),
        "both messages recorded as sent",
        async || {
            let case = app.get_case(owned).await;
            let msgs = case["messages"].as_array().cloned().unwrap_or_default();
            if msgs.len() >= 2 && msgs.iter().all(|m| m["status"] == "sent") {
                Ok(case)
            } else {
                Err(case.to_string())
            }
        },
    )
    .await;

    // The intruder (source `billing`, OTHER_TOKEN) on the owner's id and on
    // an id nobody used: the same answer, byte for byte.
    let mut compared = 0;
    let pair = |method: Method, suffix: &'static str, body: Option<Value>| {
        let app = &app;
        async move {
            let theirs = answer(
                app,
                OTHER_TOKEN,
                method.clone(),
                &format!("/v1/cases/{owned}{suffix}"),
                body.as_ref(),
            )
            .await;
            let none = answer(
                app,
                OTHER_TOKEN,
                method.clone(),
                &format!("/v1/cases/{never}{suffix}"),
                body.as_ref(),
            )
            .await;
            (method, suffix, body, theirs, none)
        }
    };
    let mut probes = vec![
        pair(Method::GET, "", None).await,
        pair(Method::DELETE, "", None).await,
    ];
    for e in events() {
        probes.push(pair(Method::POST, "/events", Some(e)).await);
    }
    for (method, suffix, body, theirs, none) in &probes {
        println!(
            "{method} /v1/cases/{{id}}{suffix} {}: another source's case -> {} ({} bytes), no case -> {} ({} bytes)",
            body.as_ref().map(ToString::to_string).unwrap_or_default(),
            theirs.status,
            theirs.body.len(),
            none.status,
            none.body.len()
        );
        assert_eq!(
            theirs, none,
            "{method} {suffix}: the answer about another source's case differs from the answer about no case"
        );
        assert!(
            matches!(theirs.status, 404 | 422),
            "{method} {suffix}: {}",
            theirs.status
        );
        compared += 1;
    }

    // The intruder's idempotency key space is its own: the owner's key
    // neither replays the owner's answer nor conflicts with it.
    let mut other_body = case_body();
    other_body["subject"] = json!("Intruder subject");
    other_body["assignee"] = json!("Eve");
    other_body["customer"] =
        json!({"name": "Mallory", "email": "mallory@example.net", "channels": ["email"]});
    let theirs = answer_with(
        &app,
        OTHER_TOKEN,
        Method::PUT,
        &format!("/v1/cases/{owned}"),
        Some(&other_body),
        Some("iso-put-1"),
    )
    .await;
    let none = answer_with(
        &app,
        OTHER_TOKEN,
        Method::PUT,
        &format!("/v1/cases/{never}"),
        Some(&other_body),
        Some("iso-put-2"),
    )
    .await;
    println!(
        "PUT with the owner's Idempotency-Key: {} (replayed: {:?}); PUT on an unused id: {}",
        theirs.status, theirs.replayed, none.status
    );
    assert_eq!(theirs.status, 201, "a PUT creates the intruder's own case");
    assert_eq!(theirs.replayed, None);
    assert_eq!(masked(&theirs.body, owned), masked(&none.body, never));
    let text = String::from_utf8_lossy(&theirs.body);
    assert!(
        [
            "maria",
            "Maria",
            "Jordan",
            "courier",
            "Replacement router",
            "+1212"
        ]
        .iter()
        .all(|s| !text.contains(s)),
        "the intruder's answer holds the owner's data: {text}"
    );
    compared += 1;

    // The intruder now erases what it made: its own case, not the owner's.
    let gone = answer(
        &app,
        OTHER_TOKEN,
        Method::DELETE,
        &format!("/v1/cases/{owned}"),
        None,
    )
    .await;
    assert_eq!(gone.status, 204);
    let gone_again = answer(
        &app,
        OTHER_TOKEN,
        Method::DELETE,
        &format!("/v1/cases/{owned}"),
        None,
    )
    .await;
    let never_again = answer(
        &app,
        OTHER_TOKEN,
        Method::DELETE,
        "/v1/cases/ISO-NEVER-2",
        None,
    )
    .await;
    assert_eq!(gone_again, never_again);

    // The owner's case is as it was: same record, same history (messages
    // may have moved on from pending to sent meanwhile, nothing else).
    let after = app.get_case(owned).await;
    assert_eq!(stable(&before), stable(&after), "the owner's case changed");
    assert_eq!(after["subject"], case_body()["subject"]);
    assert_eq!(after["customer"]["email"], case_body()["customer"]["email"]);
    assert_eq!(after["latest_note"]["body"], "The courier has it.");
    assert_eq!(after["status"], "open");
    let replay = answer_with(
        &app,
        TOKEN,
        Method::PUT,
        &format!("/v1/cases/{owned}"),
        Some(&case_body()),
        Some("iso-put-1"),
    )
    .await;
    assert_eq!(
        replay.replayed.as_deref(),
        Some("true"),
        "the owner's key still replays"
    );
    println!(
        "isolation: {compared} request kinds compared byte for byte; the owner's case untouched"
    );
}

/// A case view with what differs between any two fresh cases blanked:
/// the id, instants and message ids.
fn masked(body: &[u8], id: &str) -> Value {
    fn walk(v: &mut Value, id: &str) {
        match v {
            Value::Object(map) => {
                for (k, x) in map.iter_mut() {
                    let volatile = k == "id"
                        || k == "update"
                        || k.ends_with("_at")
                        || (k == "covers" && x.is_array());
                    if volatile && !x.is_null() {
                        *x = json!("*");
                    } else {
                        walk(x, id);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| walk(x, id)),
            Value::String(s) if s.contains(id) => *s = s.replace(id, "{id}"),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(body).expect("json body");
    walk(&mut v, id);
    v
}

/// The case without what delivery moves on by itself.
fn stable(case: &Value) -> Value {
    let mut c = case.clone();
    for m in c["messages"].as_array_mut().into_iter().flatten() {
        for k in [
            "status",
            "attempts",
            "sent_at",
            "error",
            "provider_status",
            "promise",
        ] {
            m[k] = Value::Null;
        }
    }
    c["next_update_at"] = Value::Null;
    c
}
