//! Header and template injection, end to end: case fields written to break
//! out of their place (CR/LF and a `Bcc:` in the name and subject, template
//! code, markup) go through the real binary to Postfix's smtp-sink, and the
//! message as the sink stored it is checked: no header the daemon did not
//! write, template code shown as typed, markup escaped in the HTML part.

mod peers;

use std::time::{Duration, Instant};

use peers::*;
use serde_json::json;

const TEMPLATE_CODE: &str = "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %}";
const MARKUP: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

/// The header block of a stored message, folded lines joined.
fn headers(raw: &str) -> Vec<String> {
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push_str(line);
            }
        } else {
            out.push(line.to_owned());
        }
    }
    out
}

#[tokio::test]
async fn case_fields_never_become_headers_code_or_markup() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    // Immediate messages only: the next update is a month away.
    let daemon = Setup::new(rules("updates", &[("every", "30d")]))
        .smtp(sink.port)
        .start()
        .await;

    // Line breaks in a name or subject: the case is taken (a ticket system
    // may well send them), but they never start a header of their own.
    for (id, name, subject) in [
        ("INJ-A", "Maria\r\nBcc: victim@example.net", "Router"),
        ("INJ-B", "Maria", "Router\r\nBcc: victim@example.net"),
        ("INJ-C", "Maria", "Router\nX-Injected: yes\n\nbody?"),
    ] {
        let body = json!({"subject": subject, "customer": {"name": name, "email": EMAIL, "channels": ["email"]}});
        daemon.put_case(id, &body).await;
    }

    // And on one line: an encoded word that would
    // decode to a header, template code, markup, in every customer field.
    let subject =
        format!("Router =?utf-8?q?=0D=0ABcc:_victim@example.net?= {TEMPLATE_CODE} {MARKUP}");
    let name = format!("Maria {TEMPLATE_CODE} {MARKUP}");
    let case = json!({
        "subject": subject,
        "customer": {"name": name, "email": EMAIL, "timezone": "UTC", "locale": "en", "channels": ["email"]},
        "assignee": format!("Jordan {TEMPLATE_CODE}"),
        "fields": {"order": MARKUP}
    });
    daemon.put_case("INJ-1", &case).await;
    daemon
        .event(
            "INJ-1",
            json!({"type": "note", "body": format!("Note {TEMPLATE_CODE}\r\nBcc: victim@example.net\n{MARKUP}"), "author": "Jordan"}),
        )
        .await;

    let (mails, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(15), |m| m.len() >= 5)
        .await;
    assert!(ok, "five messages expected, {} arrived", mails.len());
    for mail in &mails {
        let raw = std::fs::read_to_string(sink.dir.path().join(&mail.file)).expect("read");
        let hs = headers(&raw);
        let names: Vec<String> = hs
            .iter()
            .filter_map(|h| h.split(':').next())
            .map(str::to_ascii_lowercase)
            .collect();
        for bad in ["bcc", "x-injected"] {
            assert!(
                !names.iter().any(|n| n == bad),
                "{}: a `{bad}` header: {hs:#?}",
                mail.file
            );
        }
        for h in hs
            .iter()
            .filter(|h| h.starts_with("To:") || h.starts_with("Subject:"))
        {
            println!("injection: {}: {h}", mail.file);
        }
        // One To, and it is the customer.
        let to: Vec<&String> = hs
            .iter()
            .filter(|h| h.to_ascii_lowercase().starts_with("to:"))
            .collect();
        assert_eq!(to.len(), 1, "{}: {to:?}", mail.file);
        assert!(to[0].contains(EMAIL), "{}: {to:?}", mail.file);
        assert!(!to[0].contains("victim"), "{}: {to:?}", mail.file);
        assert!(
            !mail.text.contains("looplooploop"),
            "{}: a loop ran",
            mail.file
        );
        // `{{ 7*7 }}` evaluated would read "49 " just before the loop's
        // text (a bare "49" can be a minute in a promised time).
        assert!(
            !mail.text.contains("49 {%") && !mail.text.contains("49 loop"),
            "{}: template code ran",
            mail.file
        );
    }
    let inj1: Vec<&Mail> = mails
        .iter()
        .filter(|m| m.subject.contains("[INJ-1]"))
        .collect();
    assert_eq!(inj1.len(), 2, "acknowledgement and note of INJ-1");
    for mail in &inj1 {
        // The subject reads back as typed (mail clients decode it), and
        // template code is text: shown as typed, never run.
        assert!(
            mail.subject.contains(&squash(&subject)),
            "{}: subject `{}`",
            mail.file,
            mail.subject
        );
        assert!(
            mail.text.contains("{{ 7*7 }}"),
            "{}: template code not shown as typed: {}",
            mail.file,
            mail.text
        );
    }
    // The HTML part escapes what the customer and agent wrote.
    for mail in &inj1 {
        let raw = std::fs::read(sink.dir.path().join(&mail.file)).expect("read");
        let parsed = mail_parser::MessageParser::default()
            .parse(&raw[..])
            .expect("parses");
        let html: String = (0..parsed.html_body.len())
            .filter_map(|i| parsed.body_html(i).map(|t| t.into_owned()))
            .collect();
        assert!(!html.is_empty(), "{}: no HTML part", mail.file);
        let lower = html.to_ascii_lowercase();
        assert!(!lower.contains("<script"), "{}: {html}", mail.file);
        assert!(!lower.contains("<img src=x"), "{}: {html}", mail.file);
        assert!(lower.contains("&lt;script&gt;"), "{}: {html}", mail.file);
    }
    println!(
        "injection: {} messages at the sink with no injected header, template code as typed, markup escaped",
        mails.len()
    );
}
