//! Mail that behaves like mail, read at a real smtp-sink: every message of
//! a case answers its first (`In-Reply-To`, `References`), so the
//! customer's mail client shows one thread; each says it is automatic
//! (`Auto-Submitted: auto-generated`, RFC 3834) so out-of-office replies do
//! not loop; `Reply-To` follows `email.reply_to`.

mod peers;

use std::time::Duration;

use peers::*;

/// The headers that matter here, read from a dumped message.
#[derive(Debug)]
struct Headers {
    message_id: String,
    in_reply_to: Vec<String>,
    references: Vec<String>,
    auto_submitted: Option<String>,
    reply_to: Option<String>,
}

fn headers(sink: &Sink, mail: &Mail) -> Headers {
    let raw = std::fs::read(sink.dir.path().join(&mail.file)).expect("the dumped message");
    let msg = mail_parser::MessageParser::default()
        .parse(&raw[..])
        .expect("a message");
    let ids = |v: &mail_parser::HeaderValue| -> Vec<String> {
        v.as_text_list()
            .map(|l| l.iter().map(|s| format!("<{s}>")).collect())
            .unwrap_or_default()
    };
    Headers {
        message_id: format!("<{}>", msg.message_id().expect("Message-ID")),
        in_reply_to: ids(msg.in_reply_to()),
        references: ids(msg.references()),
        auto_submitted: msg
            .header_raw("Auto-Submitted")
            .map(|v| v.trim().to_owned()),
        reply_to: msg
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned),
    }
}

/// Starts a daemon mailing to a fresh sink with `email_lines` added.
async fn start(every: &str, email_lines: &[&str]) -> Option<(Daemon, Sink)> {
    let bin = peer_or_skip(smtp_sink(), "smtp-sink", "apt-get install postfix")?;
    let sink = Sink::start(&bin).await;
    let mut setup = Setup::new(rules("updates", &[("every", every)])).smtp(sink.port);
    for line in email_lines {
        setup = setup.email(line);
    }
    Some((setup.start().await, sink))
}

/// Waits until `n` of the case's messages are at the sink; returns them in
/// the history's order.
async fn arrived(d: &Daemon, sink: &Sink, id: &str, n: usize) -> Vec<Mail> {
    eventually(
        Duration::from_secs(30),
        "messages at the sink",
        async || {
            let history = d.history(id).await;
            let mails = sink.mails();
            let found: Vec<Mail> = history
                .iter()
                .filter_map(|m| mails.iter().find(|mail| mail.id() == m.id).cloned())
                .collect();
            if found.len() >= n {
                Ok(found)
            } else {
                Err(format!("{} of {n}: {:?}", found.len(), kinds(&history)))
            }
        },
    )
    .await
}

#[tokio::test]
async fn every_message_of_a_case_answers_its_first() {
    let Some((d, sink)) = start("2s", &[r#"reply_to: "support+{case_id}@example.com""#]).await
    else {
        return;
    };
    d.put_case("C-77", &case_on(&["email"])).await;
    arrived(&d, &sink, "C-77", 2).await;
    d.event(
        "C-77",
        serde_json::json!({"type": "note", "body": "The courier picked it up."}),
    )
    .await;
    let mails = arrived(&d, &sink, "C-77", 4).await;
    let all: Vec<Headers> = mails.iter().map(|m| headers(&sink, m)).collect();
    let first = &all[0];
    assert!(
        first.in_reply_to.is_empty() && first.references.is_empty(),
        "the acknowledgement answers nothing: {first:?}"
    );
    for (mail, h) in mails.iter().zip(&all) {
        assert_eq!(
            h.auto_submitted.as_deref(),
            Some("auto-generated"),
            "{}",
            mail.file
        );
        assert_eq!(
            h.reply_to.as_deref(),
            Some("support+C-77@example.com"),
            "{}",
            mail.file
        );
    }
    for (mail, h) in mails.iter().zip(&all).skip(1) {
        assert_eq!(
            h.in_reply_to,
            std::slice::from_ref(&first.message_id),
            "{}",
            mail.file
        );
        assert_eq!(
            h.references,
            std::slice::from_ref(&first.message_id),
            "{}",
            mail.file
        );
        assert_ne!(h.message_id, first.message_id, "{}", mail.file);
    }
}

#[tokio::test]
async fn without_reply_to_the_header_is_left_out() {
    let Some((d, sink)) = start("1h", &[]).await else {
        return;
    };
    d.put_case("C-78", &case_on(&["email"])).await;
    let mails = arrived(&d, &sink, "C-78", 1).await;
    let h = headers(&sink, &mails[0]);
    assert_eq!(h.reply_to, None, "{h:?}");
    assert_eq!(h.auto_submitted.as_deref(), Some("auto-generated"));
}
