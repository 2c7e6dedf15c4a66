//! Planning follows what the customer chose on their case page: a pause
//! holds every update until its end and the first one goes out then, a
//! narrowed channel list carries the next message, a stop ends them, and
//! a replacement from the ticket system keeps the choices.

use chrono::NaiveDate;

use super::{case, created, days, engine, hours, sent, t0};
use crate::domain::Channel::{Email, Sms};
use crate::domain::Event;
use crate::domain::Priority::Urgent;
use crate::engine::page::{PrefChange, apply_pref};

#[test]
fn a_pause_holds_updates_until_its_end_and_the_first_goes_out_then() {
    let e = engine();
    let mut r = created(&e, case("CASE-1"), t0());
    assert_eq!(r.schedule.next_update_at, Some(t0() + days(1)));
    // t0 is Friday 2027-01-15, 03:00 in New York: pause until Wednesday.
    let until = NaiveDate::from_ymd_opt(2027, 1, 20).expect("date");
    apply_pref(&mut r, &PrefChange::Pause(until), &e.channels, t0()).expect("valid");
    e.reschedule(&mut r, t0());
    // 09:00 in New York is 14:00 UTC.
    let resume = "2027-01-20T14:00:00Z".parse().expect("instant");
    assert_eq!(r.schedule.next_update_at, Some(resume));
    assert_eq!(r.schedule.due_at, Some(resume));
    // Nothing at the old due instant, nor for a note meanwhile.
    let p = e.due(r, t0() + days(1));
    let (r, outbox) = (p.record.expect("record"), p.outbox);
    assert!(outbox.is_empty(), "{:?}", sent(&outbox));
    let p = e.event(
        r,
        Event::Note {
            body: "Courier booked".into(),
            author: None,
        },
        t0() + days(2),
    );
    let r = p.record.expect("record");
    assert!(
        p.outbox.is_empty(),
        "a note during a pause: {:?}",
        sent(&p.outbox)
    );
    assert_eq!(r.schedule.due_at, Some(resume));
    // At its end, the update goes out by itself, and promises the next.
    let p = e.due(r, resume);
    assert_eq!(sent(&p.outbox), [("progress", Email, "progress")]);
    let r = p.record.expect("record");
    assert_eq!(r.schedule.next_update_at, Some(resume + days(1)));
}

#[test]
fn a_channel_choice_carries_the_next_message() {
    let e = engine();
    let mut c = case("CASE-1");
    c.priority = Urgent;
    let mut r = created(&e, c, t0());
    let p = e.due(r.clone(), t0() + hours(4));
    assert_eq!(
        sent(&p.outbox),
        [
            ("progress", Sms, "progress"),
            ("progress", Email, "progress")
        ]
    );
    apply_pref(
        &mut r,
        &PrefChange::Channels(vec![Email]),
        &e.channels,
        t0(),
    )
    .expect("valid");
    e.reschedule(&mut r, t0());
    let p = e.due(r, t0() + hours(4));
    assert_eq!(sent(&p.outbox), [("progress", Email, "progress")]);
}

#[test]
fn a_stop_ends_updates_and_survives_a_replacement_by_the_ticket_system() {
    let e = engine();
    let mut r = created(&e, case("CASE-1"), t0());
    apply_pref(&mut r, &PrefChange::Stop, &e.channels, t0()).expect("valid");
    e.reschedule(&mut r, t0());
    assert_eq!(r.schedule.next_update_at, None);
    let mut replacement = case("CASE-1");
    replacement.subject = "Router replaced".into();
    let p = e.upsert(Some(r), replacement, t0() + hours(1));
    let r = p.record.expect("record");
    assert!(r.case.prefs.stopped, "the choice outlives the replacement");
    assert_eq!(r.schedule.next_update_at, None);
    let p = e.due(r, t0() + days(2));
    assert!(p.outbox.is_empty());
}

#[test]
fn every_customer_message_links_its_case_page() {
    let e = engine();
    let p = e.upsert(None, case("CASE-1"), t0());
    let email = p
        .outbox
        .iter()
        .find(|o| o.channel == Email)
        .expect("an email");
    let text = email.content.text();
    let url = text
        .split_whitespace()
        .find(|w| w.starts_with("https://tidings.example/c/"))
        .unwrap_or_else(|| panic!("no page link in:\n{text}"));
    let token = url.trim_start_matches("https://tidings.example/c/");
    let link = crate::domain::link::open_page_token(&e.consent.opening_keys(), token)
        .expect("a link that opens");
    assert_eq!(link.case.to_string(), "desk/CASE-1");
}

#[test]
fn a_digest_links_every_case_it_covers_to_its_own_page() {
    let e = engine();
    let one = created(&e, case("CASE-1"), t0());
    let two = created(&e, case("CASE-2"), t0());
    let planned = e.due_group(vec![one, two], t0() + days(1), t0() + days(1));
    let digest = planned
        .iter()
        .flat_map(|(_, outbox)| outbox)
        .find(|o| o.channel == Email && !o.also.is_empty())
        .expect("a digest");
    let keys = e.consent.opening_keys();
    let mut cases: Vec<String> = digest
        .content
        .text()
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("https://tidings.example/c/"))
        .filter_map(|t| crate::domain::link::open_page_token(&keys, t))
        .map(|l| l.case.to_string())
        .collect();
    cases.sort();
    cases.dedup();
    assert_eq!(cases, ["desk/CASE-1", "desk/CASE-2"]);
}
