//! Which channel an update goes on, and what happens when a template or a
//! channel fails: fallbacks, the next channel, `preview`, missing templates.

use std::path::Path;

use super::{
    Channels, RULES, case, created, days, engine, engine_edited, engine_with, hours, record, sent,
    t0,
};
use crate::domain::Channel::{Email, Sms};
use crate::domain::Priority::Urgent;
use crate::domain::Status::{OnHold, Open};
use crate::domain::{Channel, DeliveryStatus, MessageKind, Status};
use crate::engine::plan::DIGEST_TEMPLATE;
use crate::engine::render::Templates;

/// The shipped top-level templates but those whose name starts with `skip`.
fn templates_without(skip: &str) -> (tempfile::TempDir, Templates) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(&src).expect("templates folder") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("a name").to_string_lossy();
        if path.is_file() && !name.starts_with(skip) {
            std::fs::copy(&path, dir.path().join(&*name)).expect("copy");
        }
    }
    let t = Templates::load(dir.path(), "en".parse().expect("locale"));
    (dir, t.expect("load"))
}

#[test]
fn without_a_digest_template_each_case_gets_its_own_update() {
    let (_dir, templates) = templates_without(DIGEST_TEMPLATE);
    let e = engine_with(RULES, templates);
    let one = created(&e, case("CASE-1"), t0());
    let two = created(&e, case("CASE-2"), t0());
    let planned = e.due_group(vec![one, two], t0() + days(1), t0() + days(1));
    for (_, outbox) in &planned {
        assert_eq!(sent(outbox), [("progress", Email, "progress")]);
    }
    assert_eq!(planned[0].1[0].update, planned[1].1[0].update, "one update");
}

#[test]
fn a_missing_template_fails_the_message_not_the_schedule() {
    let (_dir, templates) = templates_without("progress");
    let e = engine_with(RULES, templates);
    let r = created(&e, case("CASE-1"), t0());
    let now = t0() + days(1);
    let p = e.due(r, now);
    assert!(p.outbox.is_empty());
    let r = record(p);
    let msg = r.messages.last().expect("filed");
    assert_eq!(msg.status, DeliveryStatus::Failed);
    let error = "no `progress` template for channel email";
    assert_eq!(msg.error.as_deref(), Some(error));
    assert_eq!(r.schedule.next_update_at, Some(now + days(1)));
    // `preview` says so too.
    let err = e.preview(case("CASE-2"), None, None, now);
    assert!(err.is_err_and(|err| err.contains(error)));
}

#[test]
fn a_failed_update_falls_back_to_the_next_channel_with_the_same_promise() {
    let e = engine();
    let mut c = case("CASE-1");
    c.priority = Urgent;
    c.customer.channels = vec![Sms, Email];
    let p = e.due(created(&e, c, t0()), t0() + hours(4));
    let failed = p.outbox.iter().find(|o| o.channel == Sms);
    let failed = failed.expect("an SMS").clone();
    let r = record(p);
    let next = e.next_channel(&r.case, &[Sms]).expect("email is left");
    assert_eq!(next, Email);
    let now = t0() + hours(5);
    // (failed kind, kind of the fallback)
    for (kind, expected) in [
        (MessageKind::Created, "created"),
        (MessageKind::Progress, "progress"),
    ] {
        let mut failed = failed.clone();
        failed.kind = kind;
        let (msg, entry) = e.fallback(&[&r], &failed, next, now);
        let entry = entry.expect("renders");
        assert_eq!(msg.fallback_for, Some(failed.id));
        assert_eq!((msg.kind.as_str(), msg.channel), (expected, Email));
        assert_eq!(entry.update, failed.update);
        assert_eq!(entry.promised, failed.promised);
        assert_eq!(
            [&entry.template, &entry.to],
            ["progress", "maria@example.com"]
        );
    }
    // An entry from before updates had ids stands for its own update.
    let mut old = failed;
    old.update = None;
    let (msg, _) = e.fallback(&[&r], &old, Email, now);
    assert_eq!((msg.update, msg.kind.as_str()), (Some(old.id), "progress"));
}

#[test]
fn the_next_channel_follows_the_customers_preference() {
    // (our channels, customer has a phone, tried, next)
    let rows: &[(Channels, bool, Channels, Option<Channel>)] = &[
        (&[Email, Sms], true, &[], Some(Sms)),
        (&[Email, Sms], true, &[Sms], Some(Email)),
        (&[Email, Sms], true, &[Sms, Email], None),
        (&[Email], true, &[], Some(Email)),
        (&[Email, Sms], false, &[], Some(Email)),
    ];
    let mut e = engine();
    for (ours, phone, tried, next) in rows {
        e.channels = ours.to_vec();
        let mut c = case("CASE-1");
        c.customer.channels = vec![Sms, Email];
        if !phone {
            c.customer.phone = None;
        }
        assert_eq!(e.next_channel(&c, tried), *next, "{ours:?} {tried:?}");
    }
}

#[test]
fn preview_shows_the_update_a_rule_would_send() {
    // (status, customer's channels, rule, channel, and what is shown:
    // "template rule channel", or the error)
    type Row = (
        Status,
        Channels,
        Option<&'static str>,
        Option<Channel>,
        &'static str,
    );
    #[rustfmt::skip]
    let rows: &[Row] = &[
        (Open, &[Email], None, None, "progress standard email"),
        (Open, &[Email], Some("waiting"), None, "reminder waiting email"),
        (Open, &[Sms], Some("urgent"), Some(Sms), "progress urgent sms"),
        (OnHold, &[Sms], None, None, "acknowledgement  sms"),
        (Open, &[Email], Some("nope"), None, "no rule named `nope`"),
        (Open, &[Email, Sms], None, Some(Sms), "does not send sms"),
        (Open, &[Sms], None, None, "allows none of the rule's"),
    ];
    let e = engine();
    for (status, channels, rule, channel, want) in rows {
        let mut c = case("CASE-1");
        c.status = *status;
        c.customer.channels = channels.to_vec();
        let got = match e.preview(c, *rule, *channel, t0()) {
            Ok((t, r, o)) => [t, r.unwrap_or_default(), o.channel.as_str().into()].join(" "),
            Err(err) => err,
        };
        assert!(got.contains(want), "{got} lacks {want}");
    }
    let mut on_hold = case("CASE-1");
    on_hold.status = OnHold;
    let no_ack = engine_edited("  created:", "  # created:");
    let got = no_ack.preview(on_hold, None, None, t0());
    let want = "no rule matches this case and there is no on.created message";
    assert_eq!(got.map(|(t, ..)| t), Err(want.to_owned()));
}

#[test]
fn every_later_email_answers_the_cases_first_and_carries_its_reply_to() {
    let mut e = engine();
    e.reply_to = Some("support+{case_id}@example.com".into());
    let mut r = created(&e, case("CASE-1"), t0());
    let first = r.messages[0].id;
    assert_eq!(r.messages[0].channel, Email);
    let note = crate::domain::Event::Note {
        body: "The courier picked it up.".into(),
        author: None,
    };
    // The acknowledgement starts the thread; it answers nothing.
    r = record(e.event(r, note.clone(), t0() + hours(1)));
    let p = e.event(r, note, t0() + hours(2));
    let later = &p.outbox[0];
    assert_eq!(later.thread, Some(format!("<{first}@example.com>")));
    assert_eq!(
        later.reply_to.as_deref(),
        Some("support+CASE-1@example.com")
    );

    let fresh = e.upsert(None, case("CASE-2"), t0());
    assert_eq!(fresh.outbox[0].thread, None, "the first answers nothing");
    // A case id that makes no address: no Reply-To rather than a bad one.
    let odd = e.upsert(None, case("A:B"), t0());
    assert_eq!(odd.outbox[0].reply_to, None);
}

#[test]
fn a_late_failure_sends_the_same_update_on_the_next_channel_once() {
    let e = engine();
    let mut c = case("CASE-1");
    c.customer.channels = vec![Email, Sms];
    let mut r = created(&e, c, t0());
    // The acknowledgement goes on both; here it went by email alone.
    r.messages.retain(|m| m.channel == Email);
    let ack = r.messages[0].clone();
    r.messages[0].status = DeliveryStatus::Sent;
    let later = t0() + hours(1);

    let (msg, entry) = e.late_fallback(&r, ack.id, later).expect("falls back");
    let entry = entry.expect("renders");
    assert_eq!((msg.channel, msg.kind), (Sms, MessageKind::Created));
    assert_eq!(msg.fallback_for, Some(ack.id));
    assert_eq!(msg.update, ack.update, "the same update");
    assert_eq!(entry.promised, ack.promised_next_update_at);

    // Once: with the fallback filed, a repeated report sends nothing.
    r.messages.push(msg);
    assert!(e.late_fallback(&r, ack.id, later).is_none());
    r.messages.pop();

    // Superseded: a newer update took its place.
    let mut newer = ack.clone();
    newer.id = uuid::Uuid::from_u128(7);
    newer.update = Some(newer.id);
    newer.due_at = later;
    r.messages.push(newer);
    assert!(e.late_fallback(&r, ack.id, later).is_none());
    r.messages.pop();

    // Another channel carried the same update.
    let mut sibling = ack.clone();
    sibling.id = uuid::Uuid::from_u128(8);
    sibling.channel = Sms;
    r.messages.push(sibling);
    assert!(e.late_fallback(&r, ack.id, later).is_none());
    r.messages.pop();

    // A promise already past is not repeated; an internal message is not
    // the customer's.
    let past = ack.promised_next_update_at.expect("a promise") + hours(1);
    assert!(e.late_fallback(&r, ack.id, past).is_none());
    r.messages[0].internal = true;
    assert!(e.late_fallback(&r, ack.id, later).is_none());
}

#[test]
fn a_late_temporary_failure_is_sent_once_more_then_falls_back() {
    let e = engine();
    let mut c = case("CASE-1");
    c.customer.channels = vec![Email, Sms];
    let mut r = created(&e, c, t0());
    r.messages.retain(|m| m.channel == Email);
    r.messages[0].status = DeliveryStatus::Sent;
    let first = r.messages[0].id;
    let later = t0() + hours(1);
    let (again, entry) = e.late_retry(&r, first, later).expect("sent again");
    assert_eq!(again.channel, Email, "the same channel");
    assert_eq!(again.fallback_for, Some(first));
    assert!(entry.is_some());
    // The resend failing too: the next channel, not a third email.
    r.messages[0].status = DeliveryStatus::Failed;
    let mut again = again;
    again.status = DeliveryStatus::Sent;
    let resend = again.id;
    r.messages.push(again);
    let (fallback, _) = e.late_retry(&r, resend, later).expect("falls back");
    assert_eq!(fallback.channel, Sms);
}
