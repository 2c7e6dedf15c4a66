//! End to end: WhatsApp through Twilio, with the real `tidings` binary
//! talking to Prism serving Twilio's own OpenAPI description (through a
//! tap that keeps each request, so the test reads what was asked as well
//! as Prism's verdict) and to Postfix's `smtp-sink` for email.
//!
//! One case whose customer takes WhatsApp first and email second, and
//! WhatsApp's 24-hour customer-service window: closed until the customer
//! writes (only the approved template goes, and a message without one
//! goes by email instead), open after a signed inbound WhatsApp message
//! (a free-form body goes), and a WhatsApp STOP ends WhatsApp.
//!
//! Skips when Prism or smtp-sink is missing, unless
//! `TIDINGS_E2E_REQUIRED=1` (CI), where a missing peer is a failure.

mod peers;

use std::time::Duration;

use chrono::{DateTime, Utc};
use peers::*;
use serde_json::{Value, json};

/// The approved template `progress.whatsapp.j2` names.
const CONTENT_SID: &str = "HXb5b62575e6e4ff6129ad7c8efe1f983e";
const SENDER: &str = "whatsapp:+14155238886";

/// Progress every 2 s on WhatsApp alone (its template has an approved
/// WhatsApp template); one reminder while the case waits on the customer
/// (`reminder` has none); the acknowledgement on WhatsApp (none either).
const RULES: &str = "rules:
  - name: progress
    when: { status: [open] }
    every: 2s
    channels: [whatsapp]
    template: progress
  - name: waiting
    when: { status: [pending_customer] }
    every: 1s
    max_updates: 1
    channels: [whatsapp]
    template: reminder
on:
  created: { template: acknowledgement, channels: [whatsapp] }
";

/// `{template}.whatsapp.j2` naming the approved template, whose
/// variables are the case id and the next update.
fn approved(template: &str) -> (String, String) {
    (
        format!("{template}.whatsapp.j2"),
        format!(
            "{{% block content_sid %}}{CONTENT_SID}{{% endblock %}}\n\
             {{% block var_1 %}}{{{{ case.id }}}}{{% endblock %}}\n\
             {{% block var_2 %}}{{{{ next_update_at_short or \"soon\" }}}}{{% endblock %}}\n"
        ),
    )
}

/// What a test runs against: smtp-sink, Prism behind the tap, and the
/// daemon with WhatsApp on, its templates and token file in `_dir`.
struct Run {
    sink: Sink,
    prism: &'static Prism,
    tap: TwilioTap,
    d: Daemon,
    _dir: tempfile::TempDir,
}

/// The peers and a daemon on `rules`, with the shipped templates and
/// `extra` template files; `None` when a peer is missing.
async fn start(rules: &str, extra: &[(String, String)]) -> Option<Run> {
    let (Some(bin), Some(prism)) = (smtp_sink(), prism()) else {
        return None;
    };
    let sink = Sink::start(&bin).await;
    let tap = TwilioTap::start(prism).await;
    let dir = tempfile::tempdir().expect("dir");
    let tpl = dir.path().join("templates");
    copy_dir(&repo("templates"), &tpl);
    for (name, text) in extra {
        std::fs::write(tpl.join(name), text).expect("write a template");
    }
    let cfg = format!(
        "{}whatsapp:\n  from: \"{SENDER}\"\n",
        sms_config(&tap.base_url(), dir.path(), "  quiet_hours: off\n")
    );
    let d = Setup::new(rules)
        .smtp(sink.port)
        .templates(&tpl)
        .extra(&cfg)
        .start()
        .await;
    Some(Run {
        sink,
        prism,
        tap,
        d,
        _dir: dir,
    })
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("templates dir");
    for entry in std::fs::read_dir(from).expect("read templates") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy a template");
        }
    }
}

fn is(m: &Value, kind: &str, channel: &str, status: &str) -> bool {
    m["kind"] == kind && m["channel"] == channel && m["status"] == status
}

fn sent_at(m: &Value) -> Option<DateTime<Utc>> {
    m["sent_at"].as_str().and_then(|s| s.parse().ok())
}

/// A WhatsApp message from the customer, as Twilio posts it.
fn from_customer(body: &str) -> Vec<(&str, &str)> {
    vec![
        ("AccountSid", ACCOUNT),
        ("MessageSid", "SMcccccccccccccccccccccccccccccccc"),
        ("From", "whatsapp:+12125550143"),
        ("To", SENDER),
        ("Body", body),
        ("WaId", "12125550143"),
        ("ProfileName", "Maria"),
        ("NumMedia", "0"),
    ]
}

#[tokio::test]
async fn whatsapp_keeps_the_24_hour_window_and_falls_back_to_email() {
    let Some(run) = start(RULES, &[approved("progress")]).await else {
        return;
    };
    let (sink, prism, tap, d) = (&run.sink, run.prism, &run.tap, &run.d);
    d.put_case("WA-1", &case_on(&["whatsapp", "email"])).await;

    // (c) The acknowledgement has no approved template and the customer
    // never wrote: it goes by email instead, filed as the fallback.
    let h = d
        .wait_messages("WA-1", Duration::from_secs(15), "the ack by email", |m| {
            m.iter().any(|m| is(m, "created", "email", "sent"))
        })
        .await;
    let wa_ack = h
        .iter()
        .find(|m| m["kind"] == "created" && m["channel"] == "whatsapp")
        .expect("the WhatsApp ack is filed");
    assert_eq!(wa_ack["status"], "failed", "{wa_ack}");
    assert!(
        wa_ack["error"]
            .as_str()
            .is_some_and(|e| e.contains("24-hour window")),
        "{wa_ack}"
    );
    let email_ack = h
        .iter()
        .find(|m| is(m, "created", "email", "sent"))
        .expect("email ack");
    assert_eq!(email_ack["fallback_for"], wa_ack["id"], "{h:?}");
    let (mails, arrived) = sink
        .wait_for(std::time::Instant::now() + Duration::from_secs(5), |m| {
            !m.is_empty()
        })
        .await;
    assert!(arrived, "the ack did not reach smtp-sink");
    assert_eq!(mails[0].id(), email_ack["id"].as_str().expect("id"));

    // (a) Progress updates outside the window: the approved template
    // alone. A forged inbound message does not open the window.
    let forged = webhook(
        d,
        "/v1/whatsapp/inbound",
        &from_customer("Any news?"),
        Some(Some("bm90IGEgc2lnbmF0dXJl")),
    )
    .await;
    assert_eq!(forged.0, 403);
    d.wait_messages(
        "WA-1",
        Duration::from_secs(15),
        "two progress updates",
        |m| {
            m.iter()
                .filter(|m| is(m, "progress", "whatsapp", "sent"))
                .count()
                >= 2
        },
    )
    .await;
    let templated = tap.messages("whatsapp:");
    assert!(templated.len() >= 2, "{templated:?}");
    for t in &templated {
        assert_eq!(t.field("To"), Some("whatsapp:+12125550143"), "{t:?}");
        assert_eq!(t.field("From"), Some(SENDER), "{t:?}");
        assert_eq!(t.field("ContentSid"), Some(CONTENT_SID), "{t:?}");
        assert_eq!(t.field("Body"), None, "no Body beside a template: {t:?}");
        assert!(t.field("StatusCallback").is_some(), "{t:?}");
        let vars: Value =
            serde_json::from_str(t.field("ContentVariables").expect("ContentVariables"))
                .expect("ContentVariables is JSON");
        assert_eq!(vars["1"], "WA-1", "{vars}");
        assert!(vars["2"].as_str().is_some_and(|v| !v.is_empty()), "{vars}");
    }
    assert_prism_happy(prism, templated.len());
    println!(
        "whatsapp: {} template messages outside the window, 0 Prism complaints",
        templated.len()
    );

    // (c) A rule whose template has no approved one, outside the window:
    // the reminder goes by email, as the fallback of the WhatsApp one.
    d.event(
        "WA-1",
        json!({"type": "status", "status": "pending_customer"}),
    )
    .await;
    let h = d
        .wait_messages(
            "WA-1",
            Duration::from_secs(15),
            "the reminder by email",
            |m| {
                m.iter()
                    .any(|m| m["template"] == "reminder" && is(m, "progress", "email", "sent"))
            },
        )
        .await;
    let wa_reminder = h
        .iter()
        .find(|m| m["template"] == "reminder" && m["channel"] == "whatsapp")
        .expect("the WhatsApp reminder is filed");
    assert_eq!(wa_reminder["status"], "failed", "{wa_reminder}");
    let email_reminder = h
        .iter()
        .find(|m| m["template"] == "reminder" && m["channel"] == "email")
        .expect("email reminder");
    assert_eq!(email_reminder["fallback_for"], wa_reminder["id"], "{h:?}");
    assert_eq!(email_reminder["update"], wa_reminder["update"], "{h:?}");
    sink.wait_for(std::time::Instant::now() + Duration::from_secs(5), |m| {
        m.len() >= 2
    })
    .await;
    assert!(
        sink.mails()
            .iter()
            .any(|m| m.id() == email_reminder["id"].as_str().expect("id")),
        "the reminder did not reach smtp-sink"
    );
    assert!(
        tap.messages("whatsapp:")
            .iter()
            .all(|t| t.field("ContentSid") == Some(CONTENT_SID)),
        "only the approved template went outside the window"
    );
    d.event("WA-1", json!({"type": "status", "status": "open"}))
        .await;

    // (b) The customer writes on WhatsApp (signed): the window opens and
    // the next update goes as a free-form body.
    let (code, twiml) = webhook(d, "/v1/whatsapp/inbound", &from_customer("Any news?"), None).await;
    assert_eq!(code, 200, "{twiml}");
    let wrote = tap.messages("whatsapp:").len();
    let free = loop_until(Duration::from_secs(15), || {
        tap.messages("whatsapp:")
            .into_iter()
            .skip(wrote)
            .find(|t| t.field("Body").is_some())
    })
    .await
    .expect("a free-form WhatsApp message after the customer wrote");
    assert_eq!(free.field("To"), Some("whatsapp:+12125550143"), "{free:?}");
    assert_eq!(free.field("ContentSid"), None, "{free:?}");
    assert_eq!(free.field("ContentVariables"), None, "{free:?}");
    assert!(
        free.field("Body").is_some_and(|b| b.contains("WA-1")),
        "{free:?}"
    );

    // (d) STOP on WhatsApp: no more WhatsApp; the updates take email.
    let (code, _) = webhook(d, "/v1/whatsapp/inbound", &from_customer("stop"), None).await;
    assert_eq!(code, 200);
    let stopped = Utc::now();
    let before = tap.messages("whatsapp:").len();
    let h = d
        .wait_messages(
            "WA-1",
            Duration::from_secs(15),
            "two updates by email after STOP",
            |m| {
                m.iter()
                    .filter(|m| {
                        is(m, "progress", "email", "sent")
                            && m["fallback_for"].is_string()
                            && sent_at(m).is_some_and(|t| t > stopped)
                    })
                    .count()
                    >= 2
            },
        )
        .await;
    let after: Vec<Tapped> = tap.messages("whatsapp:").into_iter().skip(before).collect();
    assert!(
        after.len() <= 1,
        "WhatsApp messages after STOP (one may have been under way): {after:?}"
    );
    let opted_out = h
        .iter()
        .filter(|m| {
            m["channel"] == "whatsapp"
                && m["error"].as_str().is_some_and(|e| e.contains("opted out"))
        })
        .count();
    assert!(opted_out >= 2, "{h:?}");

    let all = tap.messages("whatsapp:");
    assert_prism_happy(prism, all.len());
    // Counted under their own channel: every WhatsApp request Prism took
    // is a sent progress update; the acknowledgement and reminder failed.
    let m = d.metrics().await;
    let series = |rule: &str, result: &str| {
        metric(
            &m,
            &format!(
                r#"tidings_messages_total{{channel="whatsapp",rule="{rule}",result="{result}"}}"#
            ),
        )
    };
    assert_eq!(series("progress", "sent"), Some(all.len() as f64), "{m}");
    assert_eq!(series("created", "failed"), Some(1.0), "{m}");
    assert_eq!(series("waiting", "failed"), Some(1.0), "{m}");
    println!(
        "whatsapp: {} requests in all ({} free-form), 0 Prism complaints; {} updates by email after STOP",
        all.len(),
        all.iter().filter(|t| t.field("Body").is_some()).count(),
        opted_out
    );
    // START opts back in (and, a message from the customer, keeps the
    // window open): the next update is a free-form WhatsApp message again.
    let (code, _) = webhook(d, "/v1/whatsapp/inbound", &from_customer("START"), None).await;
    assert_eq!(code, 200);
    let restarted = tap.messages("whatsapp:").len();
    let again = loop_until(Duration::from_secs(15), || {
        tap.messages("whatsapp:").into_iter().nth(restarted)
    })
    .await
    .expect("WhatsApp again after START");
    assert!(again.field("Body").is_some(), "{again:?}");
    assert_prism_happy(prism, restarted + 1);

    let log = d.log();
    for secret in [
        "+12125550143",
        "2125550143",
        AUTH_TOKEN,
        "Any news?",
        "maria.hernandez",
    ] {
        assert!(!log.contains(secret), "the log holds `{secret}`");
    }
}

/// Polls `probe` until it gives something or `within` passes.
async fn loop_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Twilio took the approved template, then reported it undelivered (a
/// WhatsApp error): the same update goes by email, once, as for SMS.
#[tokio::test]
async fn an_undelivered_whatsapp_message_goes_again_by_email_once() {
    let rules = "rules:
  - name: progress
    when: { status: [open] }
    every: 1h
    channels: [whatsapp]
    template: progress
on:
  created: { template: acknowledgement, channels: [whatsapp] }
";
    let Some(run) = start(rules, &[approved("acknowledgement")]).await else {
        return;
    };
    let (sink, prism, tap, d) = (&run.sink, run.prism, &run.tap, &run.d);
    d.put_case("WA-LATE", &case_on(&["whatsapp", "email"]))
        .await;
    let h = d
        .wait_messages(
            "WA-LATE",
            Duration::from_secs(15),
            "the WhatsApp ack",
            |m| m.iter().any(|m| is(m, "created", "whatsapp", "sent")),
        )
        .await;
    let sent = tap.messages("whatsapp:");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].field("ContentSid"), Some(CONTENT_SID));
    assert!(sink.mails().is_empty(), "nothing by email yet");
    let wa = h[0]["id"].as_str().expect("id").to_owned();

    let params = [
        ("MessageSid", "SMdddddddddddddddddddddddddddddddd"),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "63003"),
        ("ChannelPrefix", "whatsapp"),
    ];
    let (_, fallback, took) = late_failure_by_email(d, sink, "WA-LATE", &wa, &params).await;
    assert_eq!(fallback["kind"], "created");
    let h = d.messages("WA-LATE").await;
    let failed = h
        .iter()
        .find(|m| m["id"] == wa.as_str())
        .expect("the WhatsApp ack");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["provider_status"], "undelivered", "{failed}");

    // Reported again: once is once.
    let query = format!("/v1/sms/status?source=helpdesk&case=WA-LATE&msg={wa}");
    assert_eq!(webhook(d, &query, &params, None).await.0, 204);
    let h = d.messages("WA-LATE").await;
    assert_eq!(
        h.iter().filter(|m| m["channel"] == "email").count(),
        1,
        "{h:?}"
    );
    assert_eq!(tap.messages("whatsapp:").len(), 1);
    assert_prism_happy(prism, 1);
    println!(
        "whatsapp late failure: email arrived {:.2}s after the undelivered report",
        took.as_secs_f64()
    );
}
