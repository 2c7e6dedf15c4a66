//! Planning on a fixed clock: what each change of a case sends, on which
//! channels, with which promise, and when the case is looked at next.
//! Every call gets an explicit `now`; ids come from `SeqIds`.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::{ConsentKeys, DIGEST_TEMPLATE, Engine, Planned};
use crate::domain::Channel::{Email, Sms};
use crate::domain::Priority::{Normal, Urgent};
use crate::domain::Status::{Closed, OnHold, Open, PendingCustomer as Pending, Resolved};
use crate::domain::clock::SeqIds;
use crate::domain::{Case, CaseInput, CaseRecord, Channel, Company, Defaults};
use crate::domain::{DeliveryStatus, Event, OutboxEntry, Priority, Status};
use crate::engine::render::{Templates, format_local, format_short};
use crate::engine::rules::RuleSet;
use crate::engine::schedule::QuietHours;

/// Friday 2027-01-15 08:00 UTC (03:00 in New York).
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("in range")
}

fn hours(n: i64) -> Duration {
    Duration::hours(n)
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// Ordered: the first rule that matches governs a case.
const RULES: &str = r#"
rules:
  - name: watched
    when: { tags: [watched] }
    every: 3d
    channels: [email]
    template: progress
    escalate: { after: 1d, to: "ops@example.com", template: stale-case }
  - name: urgent
    when: { priority: [urgent], status: [open] }
    every: 4h
    channels: [sms, email]
    template: progress
  - name: standard
    when: { status: [open] }
    every: 1d
    channels: [email]
    template: progress
  - name: waiting
    when: { status: [pending_customer] }
    every: 3d
    channels: [email]
    template: reminder
    max_updates: 2
on:
  created: { template: acknowledgement, channels: [email, sms] }
  resolved: { template: resolution, channels: [email] }
  note: { template: note, channels: [email] }
  status: { template: progress, channels: [email] }
"#;

fn shipped_templates() -> Templates {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    Templates::load(&dir, "en".parse().expect("locale")).expect("shipped templates load")
}

fn engine_with(rules: &str, templates: Templates) -> Engine {
    Engine {
        rules: RuleSet::parse(Path::new("test.yaml"), rules).expect("test rules parse"),
        templates,
        company: Company {
            name: "Acme Support".into(),
            support_url: None,
        },
        public_url: "https://tidings.example".into(),
        message_id_domain: "example.com".into(),
        reply_to: None,
        channels: vec![Email, Sms],
        email_quiet: None,
        sms_quiet: None,
        whatsapp_quiet: None,
        max_segments: 2,
        consent: ConsentKeys {
            salt: [7; 32],
            unsubscribe_key: b"unsubscribe-key".to_vec(),
            ..ConsentKeys::default()
        },
        ids: Arc::new(SeqIds::default()),
    }
}

fn engine() -> Engine {
    engine_with(RULES, shipped_templates())
}

/// The engine with `from` replaced by `to` in its rules.
fn engine_edited(from: &str, to: &str) -> Engine {
    engine_with(&RULES.replace(from, to), shipped_templates())
}

/// An open, normal-priority case of Maria's, created at `t0`, reachable by
/// email and SMS, in New York.
fn case(id: &str) -> Case {
    let input: CaseInput = serde_json::from_value(serde_json::json!({
        "subject": "Router keeps rebooting",
        "customer": { "name": "Maria Hernandez", "email": "maria@example.com",
            "phone": "+12125550143", "timezone": "America/New_York", "locale": "en" },
    }))
    .expect("valid input");
    let defaults = Defaults {
        timezone: Tz::UTC,
        locale: "en".parse().expect("locale"),
    };
    let id = id.parse().expect("valid id");
    let case = input.into_case(id, "desk", &defaults, t0(), None);
    case.expect("valid case")
}

fn record(p: Planned) -> CaseRecord {
    p.record.expect("planning returns the record")
}

/// The record `upsert` makes of a new case.
fn created(e: &Engine, case: Case, now: DateTime<Utc>) -> CaseRecord {
    record(e.upsert(None, case, now))
}

/// The rule, next update and next look of a record.
type Plan<'a> = (
    Option<&'a str>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn plan(r: &CaseRecord) -> Plan<'_> {
    let s = &r.schedule;
    (s.rule.as_deref(), s.next_update_at, s.due_at)
}

/// Channels, in order of preference.
type Channels = &'static [Channel];

/// Kinds of message, in the order they go out.
type Kinds = &'static [&'static str];

/// What went out, briefly: (kind, channel, template) per entry.
fn sent(outbox: &[OutboxEntry]) -> Vec<(&str, Channel, &str)> {
    outbox.iter().map(brief).collect()
}

fn brief(o: &OutboxEntry) -> (&str, Channel, &str) {
    (o.kind.as_str(), o.channel, o.template.as_str())
}

fn text(o: &OutboxEntry) -> &str {
    o.content.text()
}

/// An instant as Maria reads it in an email and in an SMS.
fn shown(t: DateTime<Utc>) -> (String, String) {
    let (tz, locale) = (Tz::America__New_York, "en".parse().expect("locale"));
    (format_local(t, tz, &locale), format_short(t, tz, &locale))
}

#[test]
fn a_new_case_is_acknowledged_and_scheduled() {
    let e = engine();
    let now = t0();
    let Planned { record: r, outbox } = e.upsert(None, case("CASE-1"), now);
    let r = r.expect("a record");
    let next = now + days(1);
    let ack = |c| ("created", c, "acknowledgement");
    assert_eq!(sent(&outbox), [ack(Email), ack(Sms)]);
    assert_eq!(plan(&r), (Some("standard"), Some(next), Some(next)));
    let s = &r.schedule;
    assert_eq!((s.last_contact_at, s.rule_updates), (now, 0));
    assert!(!s.escalated && !s.resolution_sent);

    // The promise, as the customer reads it.
    let (email, sms) = (&outbox[0], &outbox[1]);
    let (long, short) = shown(next);
    assert!(text(email).contains(&long) && text(sms).contains(&short));
    assert_eq!([&email.to, &sms.to], ["maria@example.com", "+12125550143"]);
    assert_eq!(email.to_name, "Maria Hernandez");
    let unsubscribe = e.unsubscribe_url("desk", "maria@example.com");
    assert!(unsubscribe.starts_with("https://tidings.example/unsubscribe/"));
    assert_eq!(email.unsubscribe_url, Some(unsubscribe));
    assert_eq!(sms.unsubscribe_url, None);
    assert_eq!(format!("{:?}", e.consent), "ConsentKeys(..)");
    // One update, filed in the case's history.
    assert_eq!(email.update, sms.update);
    assert_eq!(r.messages.len(), 2);
    for (entry, msg) in outbox.iter().zip(&r.messages) {
        assert_eq!(entry.message_id, format!("<{}@example.com>", entry.id));
        assert_eq!((entry.promised, entry.next_attempt_at), (Some(next), now));
        assert_eq!((msg.id, msg.status), (entry.id, DeliveryStatus::Pending));
        assert_eq!((msg.promised_next_update_at, msg.due_at), (Some(next), now));
        assert_eq!((msg.rule.as_deref(), msg.update), (None, entry.update));
    }
}

#[test]
fn the_acknowledgement_goes_to_every_channel_the_customer_allows_and_we_send() {
    // (customer's channels, has email, our channels, expected)
    let rows: &[(Channels, bool, Channels, Channels)] = &[
        (&[Email, Sms], true, &[Email, Sms], &[Email, Sms]),
        (&[Sms, Email], true, &[Email, Sms], &[Email, Sms]),
        (&[Email], true, &[Email, Sms], &[Email]),
        (&[Sms], true, &[Email, Sms], &[Sms]),
        (&[Email, Sms], true, &[Email], &[Email]),
        (&[Email, Sms], false, &[Email, Sms], &[Sms]),
        (&[Sms], true, &[Email], &[]),
    ];
    let mut e = engine();
    for (customer, has_email, ours, expected) in rows {
        e.channels = ours.to_vec();
        let mut c = case("CASE-1");
        c.customer.channels = customer.to_vec();
        if !has_email {
            c.customer.email = None;
        }
        let p = e.upsert(None, c, t0());
        let got: Vec<Channel> = p.outbox.iter().map(|o| o.channel).collect();
        assert_eq!(got, *expected, "customer {customer:?}, ours {ours:?}");
        assert_eq!(record(p).messages.len(), expected.len());
    }
}

#[test]
fn a_case_that_arrives_resolved_or_closed_gets_only_the_resolution() {
    let e = engine();
    for status in [Resolved, Closed] {
        let mut c = case("CASE-1");
        c.status = status;
        let p = e.upsert(None, c, t0());
        assert_eq!(sent(&p.outbox), [("resolved", Email, "resolution")]);
        let r = record(p);
        assert!(r.schedule.resolution_sent);
        assert_eq!(plan(&r), (None, None, None));
    }
}

#[test]
fn a_replaced_case_hears_of_a_status_change_and_is_rescheduled() {
    // (new status, priority, what goes out, rule, next update from now)
    type Row = (
        Status,
        Priority,
        Kinds,
        Option<&'static str>,
        Option<Duration>,
    );
    let rows: &[Row] = &[
        (Open, Normal, &[], Some("standard"), Some(hours(22))),
        (Open, Urgent, &[], Some("urgent"), Some(hours(2))),
        (Pending, Normal, &["status"], Some("waiting"), Some(days(3))),
        (OnHold, Normal, &["status"], None, None),
        (Closed, Normal, &[], None, None),
        (Resolved, Normal, &["resolved"], None, None),
    ];
    let e = engine();
    let now = t0() + hours(2);
    for (status, priority, kinds, rule, next) in rows {
        let before = created(&e, case("CASE-1"), t0());
        let mut c = before.case.clone();
        (c.status, c.priority) = (*status, *priority);
        let p = e.upsert(Some(before), c, now);
        let got: Vec<&str> = p.outbox.iter().map(|o| o.kind.as_str()).collect();
        assert_eq!(got, *kinds, "{status:?}");
        // What goes out promises the new schedule.
        let want = next.map(|n| now + n);
        assert!(p.outbox.iter().all(|o| o.promised == want));
        let r = record(p);
        assert_eq!((r.updated_at, plan(&r).0, plan(&r).1), (now, *rule, want));
    }
}

#[test]
fn resolution_is_sent_once_and_stops_updates() {
    let e = engine();
    let r = created(&e, case("CASE-1"), t0());
    let p = e.event(r, Event::Status(Resolved), t0() + hours(1));
    assert_eq!(sent(&p.outbox), [("resolved", Email, "resolution")]);
    let r = record(p);
    assert_eq!(plan(&r), (None, None, None));
    // Nothing further falls due, even much later.
    let p = e.due(r, t0() + days(30));
    assert!(p.outbox.is_empty());
    // Reopened, it hears of the status; resolved again, no second resolution.
    let now = t0() + days(31);
    let p = e.event(record(p), Event::Status(Open), now);
    assert_eq!(sent(&p.outbox), [("status", Email, "progress")]);
    let p = e.event(record(p), Event::Status(Resolved), now);
    assert!(p.outbox.is_empty());
    let r = record(p);
    assert_eq!(r.case.status, Resolved);
    let resolutions = r
        .messages
        .iter()
        .filter(|m| m.kind == crate::domain::MessageKind::Resolved);
    assert_eq!(resolutions.count(), 1);
}

#[test]
fn a_note_is_sent_and_pushes_the_next_update() {
    let e = engine();
    let r = created(&e, case("CASE-1"), t0());
    let now = t0() + hours(2);
    let note = Event::Note {
        body: "The courier picked it up.".into(),
        author: Some("Jordan".into()),
    };
    let p = e.event(r, note, now);
    assert_eq!(sent(&p.outbox), [("note", Email, "note")]);
    let body = text(&p.outbox[0]);
    assert!(body.contains("Jordan has added a note"), "{body}");
    assert!(body.contains("The courier picked it up."), "{body}");
    let promised = p.outbox[0].promised;
    let r = record(p);
    let n = r.case.latest_note.as_ref().expect("the note is kept");
    assert_eq!((n.author.as_deref(), n.at), (Some("Jordan"), now));
    assert_eq!(r.schedule.last_contact_at, now);
    assert_eq!(r.schedule.next_update_at, Some(now + days(1)));
    assert_eq!(promised, r.schedule.next_update_at);
}

#[test]
fn a_note_sends_nothing_on_an_inactive_case_or_without_a_note_message() {
    let note = || Event::Note {
        body: "Internal detail".into(),
        author: None,
    };
    let e = engine();
    let mut on_hold = created(&e, case("CASE-1"), t0());
    on_hold.case.status = OnHold;
    let no_note_message = engine_edited("  note:", "  # note:");
    let plain = created(&no_note_message, case("CASE-2"), t0());
    for (engine, r) in [(&e, on_hold), (&no_note_message, plain)] {
        let p = engine.event(r, note(), t0() + hours(2));
        assert!(p.outbox.is_empty());
        let r = record(p);
        assert!(r.case.latest_note.is_some(), "the note is kept");
        assert_eq!(r.schedule.last_contact_at, t0(), "no contact was made");
    }
}

#[test]
fn agent_reply_pushes_next_update_a_full_interval() {
    let e = engine();
    let r = created(&e, case("CASE-1"), t0());
    assert_eq!(r.schedule.next_update_at, Some(t0() + days(1)));
    let now = t0() + hours(20);
    let p = e.event(r, Event::AgentReply, now);
    assert!(p.outbox.is_empty(), "the agent wrote; we send nothing");
    let r = record(p);
    assert_eq!(r.schedule.last_contact_at, now);
    let next = Some(now + days(1));
    assert_eq!(plan(&r), (Some("standard"), next, next));
}

#[test]
fn a_new_eta_is_kept_and_shown_in_the_next_update() {
    let e = engine();
    let r = created(&e, case("CASE-1"), t0());
    let eta = t0() + days(5);
    let p = e.event(r, Event::Eta(Some(eta)), t0() + hours(1));
    assert!(p.outbox.is_empty());
    let r = record(p);
    assert_eq!(r.case.eta, Some(eta));
    let p = e.due(r, t0() + days(1));
    assert!(text(&p.outbox[0]).contains(&shown(eta).0));
}

#[test]
fn a_due_update_promises_the_next_instant() {
    let e = engine();
    let r = created(&e, case("CASE-1"), t0());
    // Woken early, it sends nothing and keeps the schedule.
    let before = r.schedule.clone();
    let p = e.due(r, t0() + hours(1));
    assert!(p.outbox.is_empty());
    let r = record(p);
    assert_eq!(r.schedule, before);

    let now = t0() + days(1);
    let next = now + days(1);
    let p = e.due(r, now);
    assert_eq!(sent(&p.outbox), [("progress", Email, "progress")]);
    let entry = &p.outbox[0];
    assert_eq!(entry.rule.as_deref(), Some("standard"));
    assert_eq!(entry.promised, Some(next));
    assert!(text(entry).contains(&shown(next).0));
    let r = record(p);
    let s = &r.schedule;
    assert_eq!((s.rule_updates, s.last_contact_at), (1, now));
    assert_eq!(plan(&r), (Some("standard"), Some(next), Some(next)));
    let msg = r.messages.last().expect("filed");
    assert_eq!(msg.promised_next_update_at, Some(next));
}

#[test]
fn max_updates_ends_the_reminders_without_a_promise() {
    let e = engine();
    let mut c = case("CASE-1");
    c.status = Pending;
    let mut r = created(&e, c, t0());
    // (when, how many go out, the promise and the next look)
    let rows = [(3, 1, Some(days(6))), (6, 1, None), (9, 0, None)];
    for (when, count, next) in rows {
        let p = e.due(r, t0() + days(when));
        assert_eq!(p.outbox.len(), count, "at +{when}d");
        let next = next.map(|x| t0() + x);
        if let Some(entry) = p.outbox.first() {
            assert_eq!(entry.template, "reminder");
            assert_eq!(entry.promised, next);
            let promises = text(entry).contains("we will check in again");
            assert_eq!(promises, next.is_some(), "{}", text(entry));
        }
        r = record(p);
        assert_eq!((plan(&r).1, plan(&r).2), (next, next));
    }
    assert_eq!(r.schedule.rule_updates, 2);
}

#[test]
fn a_stale_case_is_escalated_once_at_once_to_the_internal_address() {
    let mut e = engine();
    // 21:00-08:00 in New York covers the escalation instant (03:00 EST).
    e.email_quiet = Some(QuietHours::parse("21:00", "08:00").expect("valid"));
    let mut c = case("CASE-1");
    c.tags = vec!["watched".into()];
    let r = created(&e, c, t0());
    // It is looked at for the escalation before its 3d update.
    let escalation_at = t0() + days(1);
    assert_eq!(r.schedule.due_at, Some(escalation_at));

    let p = e.due(r, escalation_at);
    assert_eq!(sent(&p.outbox), [("escalation", Email, "stale-case")]);
    let entry = &p.outbox[0];
    assert_eq!([&entry.to, &entry.to_name], ["ops@example.com", ""]);
    assert!(entry.internal && entry.unsubscribe_url.is_none());
    // Quiet hours do not hold it.
    assert_eq!(entry.next_attempt_at, escalation_at);
    assert!(text(entry).contains("passed its escalation threshold"));
    let r = record(p);
    let msg = r.messages.last().expect("filed");
    assert!(msg.internal && msg.promised_next_update_at.is_none());
    assert!(r.schedule.escalated);
    let update_at = r.schedule.next_update_at.expect("updates go on");
    assert_eq!(r.schedule.due_at, Some(update_at));

    let p = e.due(r, update_at);
    assert_eq!(sent(&p.outbox), [("progress", Email, "progress")]);
}

#[test]
fn one_customers_due_cases_go_out_as_one_digest_per_address_and_channel() {
    let e = engine();
    let now = t0() + days(1);
    let mut urgent = case("CASE-2");
    urgent.priority = Urgent;
    let mut elsewhere = case("CASE-4");
    elsewhere.customer.email = Some("maria@work.example".parse().expect("valid"));
    let records = vec![
        created(&e, case("CASE-1"), t0()),
        created(&e, urgent, t0() + hours(20)),
        created(&e, case("CASE-3"), t0() + hours(2)),
        created(&e, elsewhere, t0()),
        created(&e, case("CASE-5"), t0() + hours(5)),
    ];
    let planned = e.due_group(records, now, now + hours(3));
    let outboxes: Vec<_> = planned.iter().map(|(_, o)| sent(o)).collect();
    let progress = |c| vec![("progress", c, "progress")];
    let digest = vec![("progress", Email, DIGEST_TEMPLATE)];
    let none = Vec::new();
    let expected = [digest, progress(Sms), none.clone(), progress(Email), none];
    assert_eq!(outboxes, expected);
    let d = planned[0].1[0].clone();
    assert_eq!(d.to, "maria@example.com");
    let also: Vec<String> = d.also.iter().map(|k| k.id.to_string()).collect();
    assert_eq!(also, ["CASE-2", "CASE-3"]);
    // The earliest promise among the cases: the urgent one's 4h.
    assert_eq!(d.promised, Some(now + hours(4)));
    assert!(text(&d).contains("CASE-1") && text(&d).contains("CASE-3"));
    let records: Vec<CaseRecord> = planned.into_iter().filter_map(|(r, _)| r).collect();
    for r in &records[..3] {
        let msg = r.messages.iter().find(|m| m.id == d.id);
        let msg = msg.expect("filed in every case");
        assert_eq!(msg.covers, ["CASE-1", "CASE-2", "CASE-3"]);
        assert_eq!(r.schedule.last_contact_at, now);
    }
    // The case not due by the horizon heard nothing and keeps its schedule.
    assert_eq!(records[4].messages.len(), 2, "only its acknowledgement");
    assert_eq!(records[4].schedule.next_update_at, Some(t0() + hours(29)));
}

#[test]
fn a_rule_change_reschedules_from_the_last_contact() {
    let mut r = created(&engine(), case("CASE-1"), t0());
    r.schedule.rule_updates = 3;
    let now = t0() + hours(1);
    engine_edited("every: 1d", "every: 2h").reschedule(&mut r, now);
    assert_eq!(plan(&r).1, Some(t0() + hours(2)));
    assert_eq!((plan(&r).0, r.schedule.rule_updates), (Some("standard"), 3));
    let renamed = engine_edited("name: standard", "name: normal");
    renamed.reschedule(&mut r, now);
    assert_eq!((plan(&r).0, r.schedule.rule_updates), (Some("normal"), 0));
    // A rule with no channel the customer can use plans nothing.
    r.case.customer.channels = vec![Sms];
    renamed.reschedule(&mut r, now);
    assert_eq!(plan(&r), (Some("normal"), None, None));
}

#[test]
fn quiet_hours_hold_an_sms_and_move_the_promise_to_the_first_allowed_instant() {
    let mut e = engine();
    e.sms_quiet = Some(QuietHours::parse("21:00", "08:00").expect("valid"));
    assert_eq!(e.channel_quiet(Sms), e.sms_quiet.as_ref());
    assert_eq!(e.channel_quiet(Email), None);
    let mut c = case("CASE-1");
    c.priority = Urgent;
    c.customer.timezone = Tz::Asia__Jakarta;
    // 23:00 in Jakarta: the SMS waits for 08:00, the email goes now.
    let now = t0() + hours(8);
    let morning = t0() + hours(17);
    let p = e.upsert(None, c, now);
    let at = |o: &OutboxEntry| (o.channel, o.next_attempt_at);
    let when: Vec<_> = p.outbox.iter().map(at).collect();
    assert_eq!(when, [(Email, now), (Sms, morning)]);
    let r = record(p);
    assert_eq!(r.messages[1].due_at, morning);
    // The urgent rule's 4h would land at 03:00 in Jakarta, when its SMS may
    // not go: the promise moves to 08:00.
    assert_eq!(plan(&r), (Some("urgent"), Some(morning), Some(morning)));
}

/// Regression (this once failed): a rule whose `every` or `escalate.after` parses (humantime takes
/// `300000y`) but lands past the last date chrono represents makes planning
/// panic ("`DateTime + TimeDelta` overflowed", in `schedule::next_due` and
/// in `Engine::reschedule`) for every case the rule governs, on `upsert`,
/// `event` and `due` alike; `tidings check` does not catch it. Expected:
/// no update (or no escalation) is planned.
#[test]
fn a_rule_with_an_interval_past_the_last_date_plans_nothing() {
    let e = engine_edited("every: 1d", "every: 300000y");
    let r = created(&e, case("CASE-1"), t0());
    assert_eq!(plan(&r), (Some("standard"), None, None));
    let e = engine_edited("after: 1d", "after: 300000y");
    let mut c = case("CASE-1");
    c.tags = vec!["watched".into()];
    let r = created(&e, c, t0());
    assert_eq!(r.schedule.due_at, r.schedule.next_update_at);
}

mod cc;
mod delivery;
mod prefs;
mod whatsapp;
