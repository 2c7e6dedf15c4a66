//! Ticket systems' own webhooks through the binary:
//! `POST /v1/inbound/{zendesk,zammad,freshdesk,jira-sm}/helpdesk` with the bodies in
//! `tests/fixtures/inbound/`, signed as each system signs them, and the
//! case the API then shows (`GET /v1/cases/{id}` with the source's token).

mod peers;

use base64::Engine as _;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use peers::*;
use serde_json::Value;

const ZENDESK_SECRET: &str = "zendesk-webhook-secret-0001";
const ZAMMAD_SECRET: &str = "zammad-webhook-secret-0002";
const FRESHDESK_TOKEN: &str = "freshdesk-shared-token-0003";
const JIRA_SECRET: &str = "jira-webhook-secret-0004";

fn body(path: &str) -> Vec<u8> {
    std::fs::read(repo("tests/fixtures/inbound").join(path)).expect("fixture")
}

/// A daemon mailing through a real smtp-sink, the four systems configured
/// for `helpdesk` with mapping files; public comments read as `comments`
/// (`note` or `agent_reply`). `None` when smtp-sink is not installed.
struct Desk {
    d: Daemon,
    sink: Sink,
    maps: tempfile::TempDir,
}

const MAPPINGS: [(&str, &str); 4] = [
    (
        "zendesk",
        "default_region: US\nfields:\n  ticket_ref: /ticket/id\n",
    ),
    (
        "zammad",
        "default_region: AU\ndefault_timezone: Australia/Sydney\nfields:\n  group: /ticket/group/name\n",
    ),
    ("freshdesk", "default_region: GB\n"),
    ("jira-sm", "priorities: { Highest: urgent }\n"),
];

async fn desk(comments: &str) -> Option<Desk> {
    let bin = peer_or_skip(smtp_sink(), "smtp-sink", "apt-get install postfix")?;
    let sink = Sink::start(&bin).await;
    let maps = tempfile::tempdir().expect("tempdir");
    let mut inbound = String::from("inbound:\n");
    for (system, mapping) in MAPPINGS {
        let file = maps.path().join(format!("{system}.yaml"));
        std::fs::write(&file, format!("{mapping}public_comments: {comments}\n")).expect("write");
        let secret = match system {
            "zendesk" => "ZENDESK_WEBHOOK_SECRET",
            "zammad" => "ZAMMAD_WEBHOOK_SECRET",
            "freshdesk" => "FRESHDESK_WEBHOOK_TOKEN",
            _ => "JIRA_WEBHOOK_SECRET",
        };
        inbound.push_str(&format!(
            "  - system: {system}\n    source: helpdesk\n    secret_env: {secret}\n    mapping: {}\n",
            file.display()
        ));
    }
    let d = Setup::new(rules("updates", &[("remind", "1h")]))
        .smtp(sink.port)
        .admin()
        .extra(&inbound)
        .env("ZENDESK_WEBHOOK_SECRET", ZENDESK_SECRET)
        .env("ZAMMAD_WEBHOOK_SECRET", ZAMMAD_SECRET)
        .env("FRESHDESK_WEBHOOK_TOKEN", FRESHDESK_TOKEN)
        .env("JIRA_WEBHOOK_SECRET", JIRA_SECRET)
        .start()
        .await;
    Some(Desk { d, sink, maps })
}

/// The acknowledgement speaks to the customer by name.
fn greets(mail: &Mail, name: &str) {
    assert!(
        mail.text.contains(name),
        "{}: no `{name}` in {}",
        mail.file,
        mail.text
    );
}

/// Waits until the case's history is `kinds`, every one of its messages
/// arrived at the sink (by Message-ID) and the sink holds nothing else;
/// returns the mails in the history's order.
async fn at_sink(desk: &Desk, id: &str, want: &[&str]) -> Vec<Mail> {
    at_sink_beside(desk, id, want, 0).await
}

/// As `at_sink`, with `others` messages of other cases at the sink.
async fn at_sink_beside(desk: &Desk, id: &str, want: &[&str], others: usize) -> Vec<Mail> {
    eventually(
        Duration::from_secs(20),
        "the history at the sink",
        async || {
            let history = desk.d.history(id).await;
            let mails = desk.sink.mails();
            let arrived: Vec<Mail> = history
                .iter()
                .filter_map(|m| mails.iter().find(|mail| mail.id() == m.id).cloned())
                .collect();
            if kinds(&history) == want
                && arrived.len() == want.len()
                && mails.len() == want.len() + others
            {
                Ok(arrived)
            } else {
                Err(format!(
                    "history {:?}, {} at the sink",
                    kinds(&history),
                    mails.len()
                ))
            }
        },
    )
    .await
}

/// Posts `body` to the route with `headers`; returns the status and body.
async fn post(d: &Daemon, system: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(d.url(&format!("/v1/inbound/{system}/helpdesk")))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.expect("answer");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Zendesk's headers for `body`, signed at `at` (RFC 3339) with `secret`.
fn zendesk_headers(
    body: &[u8],
    at: &str,
    secret: &str,
    invocation: &str,
) -> Vec<(&'static str, String)> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(at.as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("x-zendesk-webhook-signature", sig),
        ("x-zendesk-webhook-signature-timestamp", at.to_owned()),
        ("x-zendesk-webhook-invocation-id", invocation.to_owned()),
        (
            "x-zendesk-webhook-id",
            "01F1KRFQ6BG29CNWFR60NK5FNY".to_owned(),
        ),
    ]
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn zendesk(d: &Daemon, fixture: &str, invocation: &str) -> (u16, Value) {
    let b = body(&format!("zendesk/{fixture}.json"));
    post(
        d,
        "zendesk",
        &b,
        &zendesk_headers(&b, &now(), ZENDESK_SECRET, invocation),
    )
    .await
}

fn zammad_headers(body: &[u8], secret: &str, delivery: &str) -> Vec<(&'static str, String)> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    vec![
        (
            "x-hub-signature",
            format!("sha1={}", hex::encode(mac.finalize().into_bytes())),
        ),
        ("x-zammad-delivery", delivery.to_owned()),
        ("x-zammad-trigger", "tidings".to_owned()),
    ]
}

async fn zammad(d: &Daemon, fixture: &str, delivery: &str) -> (u16, Value) {
    let b = body(&format!("zammad/{fixture}.json"));
    post(
        d,
        "zammad",
        &b,
        &zammad_headers(&b, ZAMMAD_SECRET, delivery),
    )
    .await
}

async fn freshdesk(d: &Daemon, fixture: &str, token: &str) -> (u16, Value) {
    let b = body(&format!("freshdesk/{fixture}.json"));
    post(d, "freshdesk", &b, &[("x-tidings-token", token.to_owned())]).await
}

fn jira_headers(body: &[u8], secret: &str, delivery: &str) -> Vec<(&'static str, String)> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    vec![
        (
            "x-hub-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        ),
        ("x-atlassian-webhook-identifier", delivery.to_owned()),
        ("x-atlassian-webhook-flow", "Primary".to_owned()),
    ]
}

async fn jira(d: &Daemon, fixture: &str, delivery: &str) -> (u16, Value) {
    let b = body(&format!("jira-sm/{fixture}.json"));
    post(d, "jira-sm", &b, &jira_headers(&b, JIRA_SECRET, delivery)).await
}

/// The case without its messages (whose delivery goes on meanwhile).
async fn case_of(d: &Daemon, id: &str) -> Value {
    let mut c = d.get_case(id).await;
    c.as_object_mut().map(|o| o.remove("messages"));
    c
}

/// The kinds of the case's messages, oldest first.
async fn kinds_of(d: &Daemon, id: &str) -> Vec<String> {
    d.messages(id)
        .await
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn zendesk_trigger_webhooks_drive_a_case_from_created_to_resolved() {
    let Some(desk) = desk("note").await else {
        return;
    };
    let d = &desk.d;

    let (status, answer) = zendesk(d, "created", "8350205582").await;
    assert_eq!(status, 201, "{answer}");
    let case = d.get_case("4021").await;
    assert_eq!(
        case["customer"]["timezone"], "America/New_York",
        "a Rails zone"
    );
    assert_eq!(case["customer"]["phone"], "+12125550143", "a local phone");
    assert_eq!(case["priority"], "urgent");
    assert_eq!(kinds_of(d, "4021").await, ["created"]);
    assert_eq!(case["fields"]["ticket_ref"], "4021", "a field by pointer");
    greets(&at_sink(&desk, "4021", &["created"]).await[0], "Maria");

    // A redelivery: the same answer, nothing changes.
    let before = case_of(d, "4021").await;
    let (status, again) = zendesk(d, "created", "8350205582").await;
    assert_eq!((status, &again), (201, &answer));
    assert_eq!(
        case_of(d, "4021").await,
        before,
        "the replay changed the case"
    );

    let (status, _) = zendesk(d, "public-comment", "8350205583").await;
    assert_eq!(status, 200);
    assert_eq!(kinds_of(d, "4021").await, ["created", "note"]);
    let note = &d.get_case("4021").await["latest_note"]["body"];
    assert_eq!(note, "We have ordered a new fuser; it arrives on Friday.");
    let mails = at_sink(&desk, "4021", &["created", "note"]).await;
    assert!(
        mails[1].text.contains("ordered a new fuser"),
        "{}",
        mails[1].text
    );

    let (status, _) = zendesk(d, "internal-comment", "8350205584").await;
    assert_eq!(status, 200);
    assert_eq!(
        kinds_of(d, "4021").await,
        ["created", "note"],
        "an internal comment is silent"
    );

    let (status, _) = zendesk(d, "custom-status", "8350205585").await;
    assert_eq!(status, 200, "an unknown status is no 4xx");
    assert_eq!(
        d.get_case("4021").await["status"],
        "open",
        "the last known status stays"
    );
    d.wait_metric(
        r#"tidings_inbound_unmapped_total{system="zendesk",source="helpdesk",what="status"}"#,
        1.0,
    )
    .await;

    let (status, _) = zendesk(d, "solved", "8350205586").await;
    assert_eq!(status, 200);
    assert_eq!(d.get_case("4021").await["status"], "resolved");
    assert_eq!(kinds_of(d, "4021").await, ["created", "note", "resolved"]);

    // Refused
    at_sink(&desk, "4021", &["created", "note", "resolved"]).await;

    // Refused: forged, stale, not Zendesk's shape, no such entry.
    let b = body("zendesk/public-comment.json");
    let forged = zendesk_headers(&b, &now(), "not-the-secret-at-all", "8350205590");
    assert_eq!(post(d, "zendesk", &b, &forged).await.0, 401);
    assert_eq!(post(d, "zendesk", &b, &[]).await.0, 401, "unsigned");
    let old =
        (Utc::now() - chrono::Duration::minutes(6)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (status, err) = post(
        d,
        "zendesk",
        &b,
        &zendesk_headers(&b, &old, ZENDESK_SECRET, "8350205591"),
    )
    .await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "bad_signature");
    let junk = br#"{"ticket": {"id": 1}}"#;
    let (status, err) = post(
        d,
        "zendesk",
        junk,
        &zendesk_headers(junk, &now(), ZENDESK_SECRET, "8350205592"),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "bad_payload");
    let (status, err) = post(d, "freshservice", &b, &[]).await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(kinds_of(d, "4021").await, ["created", "note", "resolved"]);
    assert!(
        !d.log().contains("maria.hernandez@example.com"),
        "an address in the log"
    );
}

#[tokio::test]
async fn zammad_trigger_webhooks_drive_a_case_from_created_to_resolved() {
    let Some(desk) = desk("note").await else {
        return;
    };
    let d = &desk.d;

    let (status, answer) = zammad(d, "created", "5d8b1e3c-0001").await;
    assert_eq!(status, 201, "{answer}");
    let case = d.get_case("10081").await;
    assert_eq!(case["customer"]["name"], "Emily Adams");
    assert_eq!(
        case["customer"]["phone"], "+61298765432",
        "the mobile, read in AU"
    );
    assert_eq!(
        case["customer"]["timezone"], "Australia/Sydney",
        "the entry's default"
    );
    assert_eq!(
        kinds_of(d, "10081").await,
        ["created"],
        "a customer's article is no note"
    );
    assert_eq!(
        case["fields"]["group"], "Service Desk",
        "a field by pointer"
    );
    greets(&at_sink(&desk, "10081", &["created"]).await[0], "Emily");

    let before = case_of(d, "10081").await;
    assert_eq!(zammad(d, "created", "5d8b1e3c-0001").await, (201, answer));
    assert_eq!(
        case_of(d, "10081").await,
        before,
        "the replay changed the case"
    );

    assert_eq!(zammad(d, "public-comment", "5d8b1e3c-0002").await.0, 200);
    assert_eq!(kinds_of(d, "10081").await, ["created", "note"]);
    assert_eq!(
        d.get_case("10081").await["latest_note"]["body"],
        "We replaced the fuser."
    );
    let mails = at_sink(&desk, "10081", &["created", "note"]).await;
    assert!(
        mails[1].text.contains("We replaced the fuser"),
        "{}",
        mails[1].text
    );
    // The same delivery again: still one note.
    assert_eq!(zammad(d, "public-comment", "5d8b1e3c-0002").await.0, 200);
    assert_eq!(kinds_of(d, "10081").await, ["created", "note"]);

    assert_eq!(zammad(d, "internal-comment", "5d8b1e3c-0003").await.0, 200);
    assert_eq!(
        kinds_of(d, "10081").await,
        ["created", "note"],
        "an internal article is silent"
    );

    assert_eq!(zammad(d, "solved", "5d8b1e3c-0004").await.0, 200);
    assert_eq!(d.get_case("10081").await["status"], "resolved");
    assert_eq!(kinds_of(d, "10081").await, ["created", "note", "resolved"]);

    at_sink(&desk, "10081", &["created", "note", "resolved"]).await;
    let b = body("zammad/public-comment.json");
    let forged = zammad_headers(&b, "not-the-secret-at-all", "5d8b1e3c-0009");
    assert_eq!(post(d, "zammad", &b, &forged).await.0, 401);
    assert_eq!(post(d, "zammad", &b, &[]).await.0, 401, "unsigned");
    assert_eq!(kinds_of(d, "10081").await, ["created", "note", "resolved"]);
}

#[tokio::test]
async fn freshdesk_automation_webhooks_drive_a_case_from_created_to_resolved() {
    let Some(desk) = desk("note").await else {
        return;
    };
    let d = &desk.d;

    let (status, answer) = freshdesk(d, "created", FRESHDESK_TOKEN).await;
    assert_eq!(status, 201, "{answer}");
    let case = d.get_case("1207").await;
    assert_eq!(
        case["customer"]["phone"], "+447911123456",
        "the mobile, read in GB"
    );
    assert_eq!(
        case["customer"]["timezone"], "Europe/London",
        "a Rails zone"
    );
    assert_eq!(case["priority"], "urgent");
    assert_eq!(kinds_of(d, "1207").await, ["created"]);
    greets(&at_sink(&desk, "1207", &["created"]).await[0], "Oliver");

    // A retry of the same body: the same answer, nothing changes.
    let before = case_of(d, "1207").await;
    assert_eq!(
        freshdesk(d, "created", FRESHDESK_TOKEN).await,
        (201, answer)
    );
    assert_eq!(
        case_of(d, "1207").await,
        before,
        "the retry changed the case"
    );

    assert_eq!(freshdesk(d, "public-comment", FRESHDESK_TOKEN).await.0, 200);
    assert_eq!(kinds_of(d, "1207").await, ["created", "note"]);
    let case = d.get_case("1207").await;
    assert_eq!(
        case["latest_note"]["body"],
        "An engineer visits on Tuesday morning."
    );
    let mails = at_sink(&desk, "1207", &["created", "note"]).await;
    assert!(
        mails[1].text.contains("An engineer visits on Tuesday"),
        "{}",
        mails[1].text
    );
    assert_eq!(case["status"], "pending_customer");
    assert_eq!(freshdesk(d, "public-comment", FRESHDESK_TOKEN).await.0, 200);
    assert_eq!(kinds_of(d, "1207").await, ["created", "note"], "a retry");

    assert_eq!(
        freshdesk(d, "internal-comment", FRESHDESK_TOKEN).await.0,
        200
    );
    assert_eq!(
        kinds_of(d, "1207").await,
        ["created", "note"],
        "a private note is silent"
    );

    assert_eq!(freshdesk(d, "custom-status", FRESHDESK_TOKEN).await.0, 200);
    assert_eq!(
        d.get_case("1207").await["status"],
        "pending_customer",
        "the last known status stays"
    );
    d.wait_metric(
        r#"tidings_inbound_unmapped_total{system="freshdesk",source="helpdesk",what="status"}"#,
        1.0,
    )
    .await;

    assert_eq!(freshdesk(d, "solved", FRESHDESK_TOKEN).await.0, 200);
    assert_eq!(d.get_case("1207").await["status"], "resolved");
    assert_eq!(kinds_of(d, "1207").await, ["created", "note", "resolved"]);

    at_sink(&desk, "1207", &["created", "note", "resolved"]).await;
    let (status, err) = freshdesk(d, "public-comment", "not-the-token-at-all-0000").await;
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "bad_signature");
    let b = body("freshdesk/public-comment.json");
    assert_eq!(post(d, "freshdesk", &b, &[]).await.0, 401, "no token");
    assert_eq!(kinds_of(d, "1207").await, ["created", "note", "resolved"]);
    assert!(
        !d.log().contains("oliver.smith@example.com"),
        "an address in the log"
    );
    assert!(!d.log().contains(FRESHDESK_TOKEN), "the token in the log");
}

#[tokio::test]
async fn jira_service_management_webhooks_drive_a_case_from_created_to_resolved() {
    let Some(desk) = desk("note").await else {
        return;
    };
    let d = &desk.d;

    let (status, answer) = jira(d, "created", "0a1b-0001").await;
    assert_eq!(status, 201, "{answer}");
    let case = d.get_case("SUP-42").await;
    assert_eq!(case["customer"]["name"], "Ana Lima");
    assert_eq!(case["customer"]["timezone"], "America/Sao_Paulo");
    assert_eq!(case["priority"], "high");
    assert_eq!(kinds_of(d, "SUP-42").await, ["created"]);
    greets(&at_sink(&desk, "SUP-42", &["created"]).await[0], "Ana");

    let before = case_of(d, "SUP-42").await;
    assert_eq!(jira(d, "created", "0a1b-0001").await, (201, answer));
    assert_eq!(
        case_of(d, "SUP-42").await,
        before,
        "the redelivery changed the case"
    );

    assert_eq!(jira(d, "public-comment", "0a1b-0002").await.0, 200);
    assert_eq!(kinds_of(d, "SUP-42").await, ["created", "note"]);
    assert_eq!(
        d.get_case("SUP-42").await["latest_note"]["body"],
        "Please reinstall the VPN client version 5.2."
    );
    let mails = at_sink(&desk, "SUP-42", &["created", "note"]).await;
    assert!(
        mails[1].text.contains("reinstall the VPN client"),
        "{}",
        mails[1].text
    );
    assert_eq!(jira(d, "public-comment", "0a1b-0002").await.0, 200);
    assert_eq!(
        kinds_of(d, "SUP-42").await,
        ["created", "note"],
        "a redelivery"
    );

    assert_eq!(jira(d, "internal-comment", "0a1b-0003").await.0, 200);
    assert_eq!(
        kinds_of(d, "SUP-42").await,
        ["created", "note"],
        "an internal comment is silent"
    );

    assert_eq!(jira(d, "custom-status", "0a1b-0004").await.0, 200);
    assert_eq!(
        d.get_case("SUP-42").await["status"],
        "pending_customer",
        "the last known status stays"
    );
    d.wait_metric(
        r#"tidings_inbound_unmapped_total{system="jira-sm",source="helpdesk",what="status"}"#,
        1.0,
    )
    .await;

    assert_eq!(jira(d, "solved", "0a1b-0005").await.0, 200);
    assert_eq!(d.get_case("SUP-42").await["status"], "resolved");
    assert_eq!(kinds_of(d, "SUP-42").await, ["created", "note", "resolved"]);

    // A reporter
    at_sink(&desk, "SUP-42", &["created", "note", "resolved"]).await;

    // A reporter whose address is hidden: no case, counted.
    let (status, answer) = jira(d, "hidden-email", "0a1b-0006").await;
    assert_eq!((status, &answer["case"]), (200, &Value::Null), "{answer}");
    d.wait_metric(
        r#"tidings_inbound_unmapped_total{system="jira-sm",source="helpdesk",what="contact"}"#,
        1.0,
    )
    .await;

    let b = body("jira-sm/public-comment.json");
    let forged = jira_headers(&b, "not-the-secret-at-all", "0a1b-0009");
    assert_eq!(post(d, "jira-sm", &b, &forged).await.0, 401);
    assert_eq!(post(d, "jira-sm", &b, &[]).await.0, 401, "unsigned");
    assert_eq!(kinds_of(d, "SUP-42").await, ["created", "note", "resolved"]);
    assert!(
        !d.log().contains("ana.lima@example.com"),
        "an address in the log"
    );
}

/// When the help desk mails its public comments itself (`public_comments:
/// agent_reply` in the mapping file), a public comment sends nothing and
/// starts the update clock again; a reload brings an edited mapping file in.
#[tokio::test]
async fn a_help_desk_that_mails_its_own_replies_restarts_the_clock() {
    let Some(desk) = desk("agent_reply").await else {
        return;
    };
    let d = &desk.d;
    let next =
        async |id: &str| instant(&d.get_case(id).await["next_update_at"]).expect("a next update");
    let mut others = 0;
    for (system, id) in [
        ("zendesk", "4021"),
        ("zammad", "10081"),
        ("freshdesk", "1207"),
        ("jira-sm", "SUP-42"),
    ] {
        let send = async |fixture: &str, delivery: &str| match system {
            "zendesk" => zendesk(d, fixture, delivery).await,
            "zammad" => zammad(d, fixture, delivery).await,
            // Freshdesk's fixture also moves the ticket to pending, whose
            // reminders would set the clock instead: here it stays open.
            "freshdesk" => {
                let b = String::from_utf8(body(&format!("freshdesk/{fixture}.json")))
                    .expect("utf-8")
                    .replace(r#""status": "Pending""#, r#""status": "Open""#);
                let token = [("x-tidings-token", FRESHDESK_TOKEN.to_owned())];
                post(d, "freshdesk", b.as_bytes(), &token).await
            }
            // So does Jira's, to waiting for customer.
            _ => {
                let b = String::from_utf8(body(&format!("jira-sm/{fixture}.json")))
                    .expect("utf-8")
                    .replace(
                        r#""name": "Waiting for customer""#,
                        r#""name": "In Progress""#,
                    );
                let b = b.as_bytes();
                post(d, "jira-sm", b, &jira_headers(b, JIRA_SECRET, delivery)).await
            }
        };
        assert_eq!(send("created", "r-1").await.0, 201, "{system}");
        at_sink_beside(&desk, id, &["created"], others).await;
        let before = next(id).await;
        let replied = Utc::now();
        assert_eq!(send("public-comment", "r-2").await.0, 200, "{system}");
        let after = next(id).await;
        assert!(
            after > before && after >= replied + chrono::Duration::hours(1),
            "{system}: the next update did not start again: {before} -> {after} (reply at {replied})"
        );
        assert_eq!(send("solved", "r-3").await.0, 200, "{system}");
        // The resolution arrives and nothing came between: no note.
        at_sink_beside(&desk, id, &["created", "resolved"], others).await;
        others += 2;
    }

    // An edited mapping file comes in with a reload: Zendesk's custom
    // status, unmapped before, now reads as on hold.
    let file = desk.maps.path().join("zendesk.yaml");
    let mapping = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        format!("{mapping}statuses: {{ Waiting on vendor: on_hold }}\n"),
    )
    .expect("write");
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    assert_eq!(zendesk(d, "custom-status", "r-4").await.0, 200);
    assert_eq!(d.get_case("4021").await["status"], "on_hold");

    // A mapping file that does not validate is refused whole, with its
    // position, and the running one stays.
    std::fs::write(&file, "statuses: { hold: sideways }\n").expect("write");
    let r = reqwest::Client::new()
        .post(d.url("/-/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status().as_u16(), 422);
    let text = r.text().await.unwrap_or_default();
    assert!(
        text.contains(&format!(
            "{}:1:19: statuses.hold: `sideways`",
            file.display()
        )),
        "{text}"
    );
}
