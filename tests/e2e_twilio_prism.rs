//! End to end: SMS and consent, with the real `tidings` binary talking to
//! Prism serving Twilio's own OpenAPI description (every request the
//! daemon sends is validated against Twilio's published API) and to
//! Postfix's `smtp-sink` for email.
//!
//! Twilio's webhooks (inbound STOP/START/HELP, delivery reports) are played
//! by the test, signed the way Twilio signs them, computed here
//! independently of the daemon's own code.
//!
//! Skips when Prism or smtp-sink is missing, unless
//! `TIDINGS_E2E_REQUIRED=1` (CI), where a missing peer is a failure.

mod peers;

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use peers::*;
use serde_json::{Value, json};

/// The SMS part of the config: Twilio at Prism.
fn sms_config(prism: &Prism, dir: &std::path::Path, extra: &str) -> String {
    peers::sms_config(&prism.base_url(), dir, extra)
}

/// Progress updates `every` on the `progress` channels, the acknowledgement
/// on `created`.
fn rules(every: &str, progress: &str, created: &str) -> String {
    peers::rules(
        "updates",
        &[
            ("every", every),
            ("progress", progress),
            ("created", created),
        ],
    )
}

/// What a test runs against: smtp-sink, Prism, and the daemon sending to
/// both (its Twilio token file in `_secrets`).
struct Run {
    sink: Sink,
    prism: &'static Prism,
    d: Daemon,
    _secrets: tempfile::TempDir,
}

/// smtp-sink (started with `sink_flags`), the shared Prism and a daemon on
/// `rules` with `extra` in its `sms:` section; `None` when a peer is
/// missing and the test skips.
async fn start_all(sink_flags: &[&str], rules: &str, extra: &str) -> Option<Run> {
    let bin = smtp_sink()?;
    let prism = prism()?;
    let sink = Sink::start_with(&bin, sink_flags).await;
    let secrets = tempfile::tempdir().expect("secrets dir");
    let cfg = sms_config(prism, secrets.path(), extra);
    let d = Setup::new(rules).smtp(sink.port).extra(&cfg).start().await;
    Some(Run {
        sink,
        prism,
        d,
        _secrets: secrets,
    })
}

/// Two updates were cancelled (an opt-out held for two of them), and
/// nothing is waiting after them.
fn two_cancelled(m: &[Value]) -> bool {
    m.iter().filter(|m| m["status"] == "cancelled").count() >= 2
        && m.last().is_some_and(|m| m["status"] == "cancelled")
}

fn is(m: &Value, channel: &str, status: &str) -> bool {
    m["channel"] == channel && m["status"] == status
}

fn sent_at(m: &Value) -> Option<DateTime<Utc>> {
    m["sent_at"].as_str().and_then(|s| s.parse().ok())
}

fn assert_log_clean(d: &Daemon, extra: &[&str]) {
    let log = d.log();
    assert!(!log.trim().is_empty(), "the daemon logged nothing");
    let lower = log.to_lowercase();
    for secret in [EMAIL, PHONE, "2125550143", AUTH_TOKEN, TOKEN, "Reply STOP"]
        .iter()
        .chain(extra)
    {
        assert!(
            !lower.contains(&secret.to_lowercase()),
            "the log holds `{secret}`:\n{log}"
        );
    }
}

#[tokio::test]
async fn sms_acknowledgement_and_progress_pass_twilio_spec_validation() {
    let Some(run) = start_all(&[], &rules("2s", "sms", "sms"), "  quiet_hours: off\n").await else {
        return;
    };
    let (sink, prism, d) = (&run.sink, run.prism, &run.d);
    let t0 = Instant::now();
    d.put_case("SMS-1", &case_on(&["sms"])).await;
    let h = d
        .wait_messages(
            "SMS-1",
            Duration::from_secs(15),
            "ack + 2 progress by SMS",
            |m| m.iter().filter(|m| is(m, "sms", "sent")).count() >= 3,
        )
        .await;
    let kinds: Vec<&str> = h.iter().filter_map(|m| m["kind"].as_str()).collect();
    assert_eq!(&kinds[..3], ["created", "progress", "progress"], "{h:?}");
    for m in h.iter().take(3) {
        assert_eq!(m["channel"], "sms");
        assert_eq!(m["provider_status"], Value::Null);
    }
    assert!(sink.mails().is_empty(), "no email was allowed");
    assert_prism_happy(prism, 3);
    println!(
        "prism: ack and two progress SMS accepted by Twilio's spec within {:.2}s",
        t0.elapsed().as_secs_f64()
    );

    // A delivery report from Twilio lands on the message it names.
    let first = h[0]["id"].as_str().expect("id").to_owned();
    let query = format!("/v1/sms/status?source=helpdesk&case=SMS-1&msg={first}");
    let params = [
        ("MessageSid", "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("MessageStatus", "delivered"),
    ];
    let (code, _) = webhook(d, &query, &params, None).await;
    assert_eq!(code, 204);
    let h = d.messages("SMS-1").await;
    assert_eq!(h[0]["provider_status"], "delivered", "{h:?}");
    let (code, _) = webhook(d, &query, &params, Some(Some("Zm9yZ2Vk"))).await;
    assert_eq!(code, 403, "a forged delivery report is refused");
    assert_log_clean(d, &[]);
}

#[tokio::test]
async fn signed_stop_silences_sms_on_every_case_start_restores_forgery_is_refused() {
    let Some(run) = start_all(
        &[],
        &rules("1s", "sms", "sms"),
        "  quiet_hours: off\ndigest:\n  window: 0s\n",
    )
    .await
    else {
        return;
    };
    let (prism, d) = (run.prism, &run.d);
    for id in ["STOP-1", "STOP-2"] {
        d.put_case(id, &case_on(&["sms"])).await;
    }
    for id in ["STOP-1", "STOP-2"] {
        d.wait_messages(id, Duration::from_secs(10), "first progress SMS", |m| {
            m.iter()
                .any(|m| m["kind"] == "progress" && is(m, "sms", "sent"))
        })
        .await;
    }
    let inbound = |body: &'static str| {
        [
            ("From", PHONE),
            ("To", "+15005550006"),
            ("Body", body),
            ("AccountSid", ACCOUNT),
        ]
    };

    // Forged and missing signatures change nothing: SMS keep coming.
    let forged = Utc::now();
    let (code, _) = webhook(
        d,
        "/v1/sms/inbound",
        &inbound("STOP"),
        Some(Some("bm90IGEgc2lnbmF0dXJl")),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = webhook(d, "/v1/sms/inbound", &inbound("STOP"), Some(None)).await;
    assert_eq!(code, 403);
    for id in ["STOP-1", "STOP-2"] {
        let h = d
            .wait_messages(
                id,
                Duration::from_secs(10),
                "an SMS after the forgeries",
                |m| {
                    m.iter()
                        .any(|m| is(m, "sms", "sent") && sent_at(m).is_some_and(|t| t > forged))
                },
            )
            .await;
        assert!(
            !h.iter().any(|m| m["status"] == "cancelled"),
            "a forged STOP took effect on {id}: {h:?}"
        );
    }

    let (code, twiml) = webhook(d, "/v1/sms/inbound", &inbound("HELP"), None).await;
    assert_eq!(code, 200);
    assert!(
        twiml.contains("<Message>") && twiml.contains("STOP"),
        "{twiml}"
    );

    let (code, _) = webhook(d, "/v1/sms/inbound", &inbound("Stop"), None).await;
    assert_eq!(code, 200);
    let stopped = Utc::now();
    let mut cancelled = 0;
    for id in ["STOP-1", "STOP-2"] {
        // Two updates due after the STOP, both cancelled: two seconds in
        // which no SMS may have gone out.
        let h = d
            .wait_messages(
                id,
                Duration::from_secs(10),
                "updates cancelled after STOP",
                two_cancelled,
            )
            .await;
        let late: Vec<&Value> = h
            .iter()
            .filter(|m| {
                m["channel"] == "sms"
                    && sent_at(m).is_some_and(|t| t > stopped + chrono::Duration::seconds(1))
            })
            .collect();
        assert!(
            late.is_empty(),
            "SMS sent more than 1 s after STOP on {id}: {late:?}"
        );
        cancelled += h.iter().filter(|m| m["status"] == "cancelled").count();
        let last = h.last().expect("messages");
        assert!(
            last["error"]
                .as_str()
                .is_some_and(|e| e.contains("opted out")),
            "{last}"
        );
    }
    assert!(
        cancelled >= 4,
        "updates after STOP should be cancelled, got {cancelled}"
    );

    let (code, _) = webhook(d, "/v1/sms/inbound", &inbound("START"), None).await;
    assert_eq!(code, 200);
    let started = Utc::now();
    for id in ["STOP-1", "STOP-2"] {
        d.wait_messages(id, Duration::from_secs(5), "SMS again after START", |m| {
            m.iter()
                .any(|m| is(m, "sms", "sent") && sent_at(m).is_some_and(|t| t > started))
        })
        .await;
    }
    assert_prism_happy(prism, 4);
    println!(
        "stop: 0 SMS later than 1 s after STOP on 2 cases, {cancelled} updates cancelled; START restored both"
    );
    assert_log_clean(d, &[]);
}

#[tokio::test]
async fn one_click_unsubscribe_stops_email_and_cannot_be_forged() {
    let Some(run) = start_all(&[], &rules("1s", "email", "email"), "").await else {
        return;
    };
    let (sink, d) = (&run.sink, &run.d);
    d.put_case("UNSUB-1", &case_on(&["email"])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mails, ok) = sink.wait_for(deadline, |m| !m.is_empty()).await;
    assert!(ok, "no email arrived");
    let raw = std::fs::read_to_string(sink.dir.path().join(&mails[0].file)).expect("dump");
    let unfolded = raw.replace("\r\n ", " ").replace("\r\n\t", " ");
    let header = |name: &str| {
        unfolded
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {name} header in:\n{raw}"))
    };
    let link = header("List-Unsubscribe")
        .trim_matches(['<', '>'])
        .to_owned();
    assert_eq!(
        header("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert!(link.starts_with(&d.url("/unsubscribe/")), "{link}");
    assert!(
        !link.to_lowercase().contains("maria"),
        "the link must not carry the address: {link}"
    );

    // Forgeries: one character changed, a token cut short, made-up tokens.
    let token = link.rsplit('/').next().expect("token").to_owned();
    let mut flipped: Vec<char> = token.chars().collect();
    flipped[5] = if flipped[5] == 'A' { 'B' } else { 'A' };
    let forged: String = flipped.into_iter().collect();
    for bad in [
        forged.as_str(),
        &token[..40],
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = d
            .http
            .post(d.url(&format!("/unsubscribe/{bad}")))
            .form(&[("List-Unsubscribe", "One-Click")])
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 404, "forged token {bad} accepted");
    }
    let before = sink.mails().len();
    let (_, kept_coming) = sink
        .wait_for(Instant::now() + Duration::from_secs(10), |m| {
            m.len() > before
        })
        .await;
    assert!(kept_coming, "email stopped after a forged unsubscribe");

    let r = d
        .http
        .post(&link)
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let unsubscribed = std::time::SystemTime::now();
    // Two updates due after the unsubscribe, both cancelled: two seconds
    // in which no email may have gone out.
    d.wait_messages(
        "UNSUB-1",
        Duration::from_secs(10),
        "updates cancelled after unsubscribe",
        two_cancelled,
    )
    .await;
    let late = sink
        .mails()
        .into_iter()
        .filter(|m| m.since(unsubscribed) > 1.0)
        .count();
    assert_eq!(late, 0, "email kept coming after the one-click unsubscribe");
    // GET works too (a person clicking the link in the text body).
    let r = d.http.get(&link).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    println!("unsubscribe: 0 emails after the one-click POST; 3 forged tokens refused with 404");
    assert_log_clean(d, &[&token]);
}

#[tokio::test]
async fn permanent_email_failure_falls_back_to_sms_for_the_same_update() {
    let Some(run) = start_all(
        &["-f", "RCPT"],
        &rules("1h", "email", "email"),
        "  quiet_hours: off\n",
    )
    .await
    else {
        return;
    };
    let (prism, d) = (run.prism, &run.d);
    d.put_case("FALL-1", &case_on(&["email", "sms"])).await;
    let h = d
        .wait_messages(
            "FALL-1",
            Duration::from_secs(10),
            "email failed, SMS sent",
            |m| {
                m.iter().any(|m| is(m, "email", "failed")) && m.iter().any(|m| is(m, "sms", "sent"))
            },
        )
        .await;
    assert_eq!(h.len(), 2, "{h:?}");
    let (email, sms) = (&h[0], &h[1]);
    assert_eq!(email["kind"], "created");
    assert!(
        email["error"]
            .as_str()
            .is_some_and(|e| e.contains("SMTP 5")),
        "the failure records the server's reply: {email}"
    );
    assert_eq!(sms["kind"], "created");
    assert_eq!(sms["fallback_for"], email["id"], "{sms}");
    assert_eq!(sms["update"], email["update"], "{sms}");
    assert_eq!(
        sms["promised_next_update_at"],
        email["promised_next_update_at"]
    );
    assert_prism_happy(prism, 1);
    println!("fallback: acknowledgement email refused with 5xx, the same update went out by SMS");
    assert_log_clean(d, &[]);
}

#[tokio::test]
async fn no_sms_inside_quiet_hours_and_the_promise_names_the_first_allowed_instant() {
    // Quiet hours from an hour ago until the start of the minute after
    // next, in the customer's zone (UTC here, to keep the arithmetic plain).
    let now = Utc::now();
    let start = now - chrono::Duration::hours(1);
    let end = (now + chrono::Duration::minutes(2))
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("minute");
    let quiet = format!(
        "  quiet_hours: {{ start: \"{}\", end: \"{}\" }}\n",
        start.format("%H:%M"),
        end.format("%H:%M")
    );
    let Some(run) = start_all(&[], &rules("2s", "sms, email", "email, sms"), &quiet).await else {
        return;
    };
    let (sink, d) = (&run.sink, &run.d);
    let mut case = case_on(&["email", "sms"]);
    case["customer"]["timezone"] = json!("UTC");
    d.put_case("QUIET-1", &case).await;
    let h = d
        .wait_messages("QUIET-1", Duration::from_secs(10), "email ack sent", |m| {
            m.iter().any(|m| is(m, "email", "sent"))
        })
        .await;
    let email = h
        .iter()
        .find(|m| m["channel"] == "email")
        .expect("email ack");
    let promised: DateTime<Utc> = email["promised_next_update_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a promise");
    assert_eq!(promised, end, "the promise skips the SMS quiet hours");
    let text = sink.mails()[0].text.clone();
    assert!(
        text.contains(&end.format("%-I:%M %p").to_string()),
        "the email names {end}: {text}"
    );
    let sms = h.iter().find(|m| m["channel"] == "sms").expect("sms ack");
    assert_eq!(sms["status"], "pending", "{sms}");
    let due: DateTime<Utc> = sms["due_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("due");
    assert_eq!(due, end, "the SMS waits for the end of quiet hours");
    // Deliberate: five seconds inside the quiet hours (two and a half
    // intervals of the rule) in which no SMS and no update may go out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let h = d.messages("QUIET-1").await;
    assert!(
        !h.iter().any(|m| is(m, "sms", "sent")),
        "an SMS went out inside quiet hours: {h:?}"
    );
    assert!(
        h.iter().all(|m| m["kind"] != "progress"),
        "no progress update before the promise: {h:?}"
    );
    println!(
        "quiet: SMS held until {end}, the email promised {promised}; nothing sent inside the window"
    );
    assert_log_clean(d, &[]);
}

#[tokio::test]
async fn three_cases_of_one_customer_due_together_yield_one_digest() {
    let Some(run) = start_all(
        &[],
        &rules("3s", "email", "email"),
        "digest:\n  window: 1m\n",
    )
    .await
    else {
        return;
    };
    let (sink, d) = (&run.sink, &run.d);
    let ids = ["DIG-1", "DIG-2", "DIG-3"];
    for (n, id) in ids.iter().enumerate() {
        let mut c = case_on(&["email"]);
        c["subject"] = json!(format!("Digest subject number {}", n + 1));
        d.put_case(id, &c).await;
        // The scenario: the cases arrive 300 ms apart, so they fall due
        // apart too, within one digest window.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mails, ok) = sink.wait_for(deadline, |m| m.len() >= 4).await;
    assert!(
        ok,
        "expected 3 acknowledgements and a digest, got {}",
        mails.len()
    );
    // Settled once every case records its update as sent (one digest, or
    // updates of their own): whatever was sent is in the sink then.
    for id in ids {
        d.wait_messages(id, Duration::from_secs(10), "the update sent", |m| {
            m.iter()
                .any(|m| m["kind"] != "created" && m["status"] == "sent")
        })
        .await;
    }
    let mails = sink.mails();
    let digests: Vec<&Mail> = mails.iter().skip(3).collect();
    assert_eq!(
        digests.len(),
        1,
        "one digest, not one update per case: {:?}",
        digests.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    let digest = digests[0];
    for n in 1..=3 {
        assert!(
            digest.text.contains(&format!("Digest subject number {n}")),
            "the digest covers case {n}: {}",
            digest.text
        );
    }
    let histories = [
        d.messages(ids[0]).await,
        d.messages(ids[1]).await,
        d.messages(ids[2]).await,
    ];
    let digest_id = digest.id().to_owned();
    for h in &histories {
        let m = h
            .iter()
            .find(|m| m["id"] == digest_id.as_str())
            .unwrap_or_else(|| panic!("the digest is in every history: {h:?}"));
        assert_eq!(m["covers"].as_array().map(Vec::len), Some(3), "{m}");
        assert_eq!(m["status"], "sent");
    }
    println!("digest: 3 cases due within the window, 1 message covering all three");
    assert_log_clean(d, &[]);
}

#[tokio::test]
async fn min_gap_spaces_sms_to_one_number() {
    let Some(run) = start_all(
        &[],
        &rules("1s", "sms", "sms"),
        "  quiet_hours: off\n  min_gap: 3s\ndigest:\n  window: 0s\n",
    )
    .await
    else {
        return;
    };
    let (prism, d) = (run.prism, &run.d);
    d.put_case("GAP-1", &case_on(&["sms"])).await;
    let h = d
        .wait_messages("GAP-1", Duration::from_secs(15), "three SMS", |m| {
            m.iter().filter(|m| is(m, "sms", "sent")).count() >= 3
        })
        .await;
    let mut times: Vec<DateTime<Utc>> = h
        .iter()
        .filter(|m| is(m, "sms", "sent"))
        .filter_map(sent_at)
        .collect();
    times.sort();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1000.0)
        .collect();
    println!("min_gap: rule every 1s, sms.min_gap 3s; gaps between SMS {gaps:?} s");
    assert!(
        gaps.iter().all(|g| *g >= 2.99),
        "SMS closer than the minimum gap: {gaps:?}"
    );
    assert_prism_happy(prism, 3);
    assert_log_clean(d, &[]);
}

/// A carrier's `undelivered`, reported after Twilio took the SMS: the same
/// update arrives by email, once, filed as the SMS's fallback.
#[tokio::test]
async fn an_sms_undelivered_later_goes_again_by_email_once() {
    let Some(run) = start_all(&[], &rules("1h", "sms", "sms"), "  quiet_hours: off\n").await else {
        return;
    };
    let (sink, d) = (&run.sink, &run.d);
    d.put_case("LATE-1", &case_on(&["sms", "email"])).await;
    let h = d
        .wait_messages("LATE-1", Duration::from_secs(15), "the SMS ack", |m| {
            m.iter().any(|m| is(m, "sms", "sent"))
        })
        .await;
    let sms = h[0]["id"].as_str().expect("id").to_owned();
    assert!(sink.mails().is_empty(), "nothing by email yet");

    let params = [
        ("MessageSid", "SMbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    let (mail, fallback, took) = late_failure_by_email(d, sink, "LATE-1", &sms, &params).await;
    assert_eq!(fallback["kind"], "created");
    mail.assert_personal();
    println!(
        "late failure: email arrived {:.2}s after the undelivered report",
        took.as_secs_f64()
    );

    // Twilio reports again (or `failed` after `undelivered`): once is once.
    let query = format!("/v1/sms/status?source=helpdesk&case=LATE-1&msg={sms}");
    assert_eq!(webhook(d, &query, &params, None).await.0, 204);
    let h = d.messages("LATE-1").await;
    assert_eq!(
        h.iter()
            .filter(|m| m["fallback_for"] == sms.as_str())
            .count(),
        1,
        "{h:?}"
    );
    assert_eq!(h.iter().filter(|m| m["channel"] == "email").count(), 1);
    assert_log_clean(d, &[]);
}

/// A bounce report (`tests/fixtures/dsn/NAME`) addressed to `verp`.
fn report(name: &str, verp_token: &str) -> Vec<u8> {
    std::fs::read_to_string(repo("tests/fixtures/dsn").join(name))
        .expect("fixture")
        .replace("TOKEN", verp_token)
        .into_bytes()
}

/// Email goes out with a per-message envelope sender; a returned delay
/// warning is filed, a hard bounce piped to `tidings bounce` sends the
/// same update by SMS, once; reports that are not ours change nothing.
#[tokio::test]
async fn a_hard_bounce_sends_the_same_update_by_sms_once() {
    let (Some(bin), Some(prism)) = (
        peer_or_skip(smtp_sink(), "smtp-sink", "apt-get install postfix"),
        peer_or_skip(prism(), "prism", ".ci/run installs it"),
    ) else {
        return;
    };
    let sink = Sink::start(&bin).await;
    let secrets = tempfile::tempdir().expect("secrets dir");
    let d = Setup::new(rules("1h", "email", "email"))
        .smtp(sink.port)
        .email("bounce_address: bounces@example.com")
        .admin()
        .extra(&sms_config(prism, secrets.path(), "  quiet_hours: off\n"))
        .start()
        .await;
    d.put_case("BNC-1", &case_on(&["email", "sms"])).await;
    let (mails, arrived) = sink
        .wait_for(Instant::now() + Duration::from_secs(10), |m| !m.is_empty())
        .await;
    assert!(arrived, "no acknowledgement at the sink");
    let dump = std::fs::read_to_string(sink.dir.path().join(&mails[0].file)).expect("dump");
    let mail_from = dump
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: <"))
        .and_then(|l| l.split('>').next())
        .unwrap_or_else(|| {
            panic!(
                "no envelope sender in the dump:\n{}",
                &dump[..dump.len().min(600)]
            )
        });
    let token = mail_from
        .strip_prefix("bounces+")
        .and_then(|t| t.strip_suffix("@example.com"))
        .unwrap_or_else(|| panic!("not a VERP sender: {mail_from}"));
    assert_eq!(token.len(), 52, "{mail_from}");
    assert!(
        !mail_from.contains("maria"),
        "the address is not in the token"
    );
    let email = d.messages("BNC-1").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // A delay warning: filed, nothing sent.
    let r = d
        .http
        .post(d.url("/v1/email/bounce"))
        .bearer_auth(ADMIN_TOKEN)
        .body(report("postfix-delayed.eml", token))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 200);
    let h = d.messages("BNC-1").await;
    assert_eq!(h[0]["provider_status"], "delayed", "{h:?}");
    assert_eq!(h.len(), 1, "a delay sends nothing: {h:?}");

    // Not ours, or not a report: nothing changes; the MTA is told which.
    let (code, err) = d.pipe_bounce(&report("postfix-5.1.1.eml", &"0".repeat(52)));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not filed"), "{err}");
    let (code, err) = d.pipe_bounce(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n");
    assert_eq!(code, 65, "{err}");
    assert_eq!(d.messages("BNC-1").await.len(), 1);

    // A hard bounce, piped as an MTA would: the same update goes by SMS.
    let (code, err) = d.pipe_bounce(&report("postfix-5.1.1.eml", token));
    assert_eq!(code, 0, "{err}");
    let h = d
        .wait_messages(
            "BNC-1",
            Duration::from_secs(10),
            "the SMS fallback sent",
            |m| {
                m.iter()
                    .any(|m| m["fallback_for"] == email.as_str() && is(m, "sms", "sent"))
            },
        )
        .await;
    assert_eq!(h[0]["status"], "failed");
    assert_eq!(h[0]["provider_status"], "bounced");
    let sms: Vec<&Value> = h.iter().filter(|m| m["channel"] == "sms").collect();
    assert_eq!(sms.len(), 1, "{h:?}");
    assert_eq!(sms[0]["kind"], "created");
    assert_prism_happy(prism, 1);

    // The same report again (the MTA retried): once is once.
    let (code, _) = d.pipe_bounce(&report("gmail-5.1.1.eml", token));
    assert_eq!(code, 0);
    let h = d.messages("BNC-1").await;
    assert_eq!(
        h.iter().filter(|m| m["channel"] == "sms").count(),
        1,
        "{h:?}"
    );
    assert_log_clean(&d, &[token]);
}

/// A mail system that gave up on a temporary error (`Action: failed`,
/// 4.x.x): the same update goes by email once more.
#[tokio::test]
async fn a_soft_bounce_sends_the_email_once_more() {
    let Some(bin) = peer_or_skip(smtp_sink(), "smtp-sink", "apt-get install postfix") else {
        return;
    };
    let sink = Sink::start(&bin).await;
    let d = Setup::new(rules("1h", "email", "email"))
        .smtp(sink.port)
        .email("bounce_address: bounces@example.com")
        .admin()
        .start()
        .await;
    d.put_case("BNC-2", &case_on(&["email"])).await;
    let (mails, arrived) = sink
        .wait_for(Instant::now() + Duration::from_secs(10), |m| !m.is_empty())
        .await;
    assert!(arrived, "no acknowledgement at the sink");
    let dump = std::fs::read_to_string(sink.dir.path().join(&mails[0].file)).expect("dump");
    let token = dump
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: <bounces+"))
        .and_then(|l| l.split('@').next())
        .expect("a VERP sender")
        .to_owned();
    let first = d.messages("BNC-2").await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let gave_up = String::from_utf8(report("exim-5.0.0.eml", &token))
        .expect("utf-8")
        .replace("Status: 5.0.0", "Status: 4.4.1");
    let (code, err) = d.pipe_bounce(gave_up.as_bytes());
    assert_eq!(code, 0, "{err}");
    let (mails, arrived) = sink
        .wait_for(Instant::now() + Duration::from_secs(10), |m| m.len() == 2)
        .await;
    assert!(arrived, "no second email");
    let h = d.messages("BNC-2").await;
    let again: Vec<&Value> = h
        .iter()
        .filter(|m| m["fallback_for"] == first.as_str())
        .collect();
    assert_eq!(again.len(), 1, "{h:?}");
    assert_eq!(again[0]["channel"], "email");
    assert_eq!(mails[1].id(), again[0]["id"].as_str().expect("id"));
}
