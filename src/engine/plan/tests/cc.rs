//! Several recipients per case: the customer and the people in CC, each
//! planned in their own language and zone, on their own channels, with
//! their own fallback; one promise per case.

use super::{case, created, days, engine, format_short, hours, record, t0};
use crate::domain::Channel::{Email, Sms};
use crate::domain::{
    Case, CaseInput, Channel, Customer, CustomerInput, Defaults, DeliveryStatus, MessageKind,
    OutboxEntry, Recipient,
};
use crate::engine::supersede::supersede;
use chrono_tz::Tz;

/// Maria's case with Jan (email, New York, English) and Zofia (SMS only,
/// Warsaw, Polish) in CC.
fn with_cc() -> Case {
    let mut c = case("CASE-1");
    let defaults = Defaults {
        timezone: Tz::UTC,
        locale: "en".parse().expect("locale"),
    };
    let person = |v: serde_json::Value, at: &str| -> Customer {
        let input: CustomerInput = serde_json::from_value(v).expect("input");
        input.validate_as(at, &defaults).expect("valid")
    };
    c.cc = vec![
        person(
            serde_json::json!({"name": "Jan Kowalski", "email": "jan@example.com",
                "timezone": "America/New_York", "locale": "en"}),
            "cc[0]",
        ),
        person(
            serde_json::json!({"name": "Zofia Nowak", "phone": "+48601234567",
                "timezone": "Europe/Warsaw", "locale": "pl", "channels": ["sms"]}),
            "cc[1]",
        ),
    ];
    c
}

/// `with_cc`, Jan also reachable by SMS, after email.
fn with_jan_by_sms_too() -> Case {
    let mut c = with_cc();
    c.cc[0].phone = Some("+12125550199".parse().expect("phone"));
    c.cc[0].channels = vec![Email, Sms];
    c
}

fn to(outbox: &[OutboxEntry], who: Recipient) -> Vec<(Channel, &str)> {
    outbox
        .iter()
        .filter(|o| o.recipient == who)
        .map(|o| (o.channel, o.to.as_str()))
        .collect()
}

#[test]
fn each_recipient_gets_the_update_in_their_language_and_zone() {
    let e = engine();
    let r = created(&e, with_cc(), t0());
    let p = e.due(r, t0() + days(1));
    assert_eq!(
        p.outbox[0].recipient,
        Recipient::Customer,
        "the customer's first"
    );
    let promised = p.outbox[0].promised.expect("a promise");
    assert_eq!(
        to(&p.outbox, Recipient::Customer),
        [(Email, "maria@example.com")]
    );
    assert_eq!(
        to(&p.outbox, Recipient::Cc(0)),
        [(Email, "jan@example.com")]
    );
    // The rule sends email; Zofia allows SMS only: nothing for her.
    assert_eq!(to(&p.outbox, Recipient::Cc(1)), []);
    let jan = p.outbox.iter().find(|o| o.recipient == Recipient::Cc(0));
    let jan = jan.expect("Jan's email");
    assert!(jan.content.text().contains("Jan"), "{}", jan.content.text());
    assert!(!jan.content.text().contains("Maria"));
    // His own unsubscribe link, and no link to the customer's case page.
    let maria = p.outbox.iter().find(|o| o.recipient.is_customer());
    let maria = maria.expect("Maria's email");
    assert_ne!(jan.unsubscribe_url, maria.unsubscribe_url);
    // It opts out Jan's address for this source, nobody else's.
    assert_eq!(
        jan.unsubscribe_url.as_deref(),
        Some(e.unsubscribe_url("desk", "jan@example.com").as_str())
    );
    assert!(!jan.content.text().contains("/c/"));
    assert_eq!(jan.promised, Some(promised));
    // One update: the same id, recorded per recipient in the history.
    assert_eq!(jan.update, maria.update);
    let r = record(p);
    let labels: Vec<String> = r
        .messages
        .iter()
        .filter(|m| m.kind == MessageKind::Progress)
        .map(|m| m.recipient.to_string())
        .collect();
    assert_eq!(labels, ["customer", "cc:0"]);
}

#[test]
fn an_sms_only_cc_in_another_zone_gets_sms_in_their_language() {
    let e = engine();
    // The acknowledgement goes on email and SMS.
    let p = e.upsert(None, with_cc(), t0());
    let zofia: Vec<&OutboxEntry> = p
        .outbox
        .iter()
        .filter(|o| o.recipient == Recipient::Cc(1))
        .collect();
    assert_eq!(zofia.len(), 1);
    let z = zofia[0];
    assert_eq!((z.channel, z.to.as_str()), (Sms, "+48601234567"));
    assert_eq!(z.tz, Some(Tz::Europe__Warsaw));
    let promised = z.promised.expect("a promise");
    let text = z.content.text();
    let warsaw = format_short(promised, Tz::Europe__Warsaw, &"pl".parse().expect("pl"));
    assert!(text.contains(&warsaw), "{text} / {warsaw}");
    assert!(text.contains("Aby zrezygnowac"), "{text}");
    // The customer's SMS is in English, in New York time.
    let maria = p
        .outbox
        .iter()
        .find(|o| o.recipient == Recipient::Customer && o.channel == Sms)
        .expect("Maria's SMS");
    let ny = format_short(promised, Tz::America__New_York, &"en".parse().expect("en"));
    assert!(maria.content.text().contains(&ny));
    assert!(maria.content.text().contains("Reply STOP"));
    // Four messages: Maria on both, Jan on email, Zofia on SMS.
    assert_eq!(p.outbox.len(), 4);
}

#[test]
fn a_cc_falls_back_to_their_own_next_channel() {
    let e = engine();
    let c = with_jan_by_sms_too();
    let p = e.due(created(&e, c, t0()), t0() + days(1));
    let failed = p.outbox.iter().find(|o| o.recipient == Recipient::Cc(0));
    let failed = failed.expect("Jan's email").clone();
    let r = record(p);
    assert_eq!(
        e.next_channel_for(&r.case, Recipient::Cc(0), &[Email]),
        Some(Sms)
    );
    // Zofia allows SMS only: nothing after it.
    assert_eq!(e.next_channel_for(&r.case, Recipient::Cc(1), &[Sms]), None);
    let (msg, entry) = e.fallback(&[&r], &failed, Sms, t0() + days(1) + hours(1));
    let entry = entry.expect("renders");
    assert_eq!(msg.recipient, Recipient::Cc(0));
    assert_eq!(entry.recipient, Recipient::Cc(0));
    assert_eq!(entry.to, "+12125550199");
    assert_eq!(entry.promised, failed.promised);
    assert_eq!(msg.fallback_for, Some(failed.id));
    // Once the case lists someone else first in CC, Jan's failed email is
    // no one's to fall back for.
    use crate::engine::plan::Engine;
    assert!(Engine::still_reaches(
        &r.case,
        Recipient::Cc(0),
        Email,
        "jan@example.com"
    ));
    let mut replaced = r.case.clone();
    replaced.cc.remove(0);
    assert!(!Engine::still_reaches(
        &replaced,
        Recipient::Cc(0),
        Email,
        "jan@example.com"
    ));
}

#[test]
fn a_fresh_update_to_one_recipient_leaves_the_others_pending_ones() {
    let e = engine();
    let r = created(&e, with_cc(), t0());
    let p = e.due(r, t0() + days(1));
    let mut r = record(p);
    // A second update, only Jan's copy is fresh: Maria's stays pending.
    let p2 = e.due(r.clone(), t0() + days(2));
    let jan_only: Vec<OutboxEntry> = p2
        .outbox
        .iter()
        .filter(|o| o.recipient == Recipient::Cc(0))
        .cloned()
        .collect();
    r.messages.extend(
        record(p2)
            .messages
            .into_iter()
            .filter(|m| m.recipient == Recipient::Cc(0) && m.due_at > t0() + days(1)),
    );
    let gone = supersede(&mut r, &jan_only);
    let cancelled: Vec<Recipient> = r
        .messages
        .iter()
        .filter(|m| gone.contains(&m.id))
        .map(|m| m.recipient)
        .collect();
    assert_eq!(cancelled, [Recipient::Cc(0)]);
    assert!(r.messages.iter().any(|m| m.recipient.is_customer()
        && m.kind == MessageKind::Progress
        && m.status == DeliveryStatus::Pending));
}

#[test]
fn the_promise_is_settled_on_the_customers_messages_only() {
    let e = engine();
    let mut r = created(&e, with_cc(), t0());
    for m in &mut r.messages {
        m.status = DeliveryStatus::Sent;
        m.sent_at = Some(t0());
    }
    let mut r = record(e.due(r, t0() + days(1)));
    let jan = r
        .messages
        .iter()
        .find(|m| m.recipient == Recipient::Cc(0) && m.kind == MessageKind::Progress)
        .map(|m| m.id)
        .expect("Jan's update");
    // Jan's copy arriving settles nothing.
    crate::engine::promises::settle_on_delivery(&mut r, jan, t0() + days(1));
    assert!(r.messages.iter().all(|m| m.promise.is_none()));
    let maria = r
        .messages
        .iter()
        .find(|m| m.recipient.is_customer() && m.kind == MessageKind::Progress)
        .map(|m| m.id)
        .expect("Maria's update");
    crate::engine::promises::settle_on_delivery(&mut r, maria, t0() + days(1));
    let settled: Vec<Recipient> = r
        .messages
        .iter()
        .filter(|m| m.promise.is_some())
        .map(|m| m.recipient)
        .collect();
    // Maria's acknowledgement (email and SMS, one update) made the promise.
    assert!(!settled.is_empty());
    assert!(settled.iter().all(|w| w.is_customer()), "{settled:?}");
}

#[test]
fn bad_cc_input_names_the_field() {
    let defaults = Defaults {
        timezone: Tz::UTC,
        locale: "en".parse().expect("locale"),
    };
    let input = |cc: serde_json::Value| -> CaseInput {
        serde_json::from_value(serde_json::json!({
            "subject": "Router",
            "customer": {"name": "Maria", "email": "maria@example.com"},
            "cc": cc,
        }))
        .expect("shape")
    };
    let err = |cc| {
        input(cc)
            .into_case("C-1".parse().expect("id"), "desk", &defaults, t0(), None)
            .expect_err("invalid")
            .field
    };
    assert_eq!(
        err(serde_json::json!([{"name": "A", "email": "a@example.com"},
            {"name": "B", "email": "not an address"}])),
        "cc[1].email"
    );
    assert_eq!(
        err(serde_json::json!([{"name": "A", "email": "a@example.com", "timezone": "Mars/Base"}])),
        "cc[0].timezone"
    );
    assert_eq!(err(serde_json::json!([{"name": "A"}])), "cc[0].email");
    let many: Vec<_> = (0..11)
        .map(|i| serde_json::json!({"name": "A", "email": format!("a{i}@example.com")}))
        .collect();
    assert_eq!(err(serde_json::json!(many)), "cc");
    // A record stored before CCs existed reads back with none.
    let mut v = serde_json::to_value(case("C-2")).expect("json");
    assert!(v.get("cc").is_none());
    v.as_object_mut().expect("object").remove("cc");
    let back: Case = serde_json::from_value(v).expect("reads");
    assert!(back.cc.is_empty());
}

#[test]
fn a_late_failure_to_a_cc_falls_back_on_their_channel_whatever_the_others_got() {
    let e = engine();
    let mut c = with_jan_by_sms_too();
    // The customer on email only, so the acknowledgement's SMS is Jan's
    // and Zofia's.
    c.customer.channels = vec![Email];
    let mut r = created(&e, c, t0());
    // Here every copy went out, then the carrier reported Jan's SMS
    // undelivered.
    for m in &mut r.messages {
        m.status = DeliveryStatus::Sent;
    }
    r.messages
        .retain(|m| m.recipient != Recipient::Cc(0) || m.channel == Sms);
    let jan_sms = r
        .messages
        .iter()
        .find(|m| m.recipient == Recipient::Cc(0))
        .expect("Jan's SMS")
        .clone();
    let later = t0() + hours(1);
    // Maria's and Zofia's copies of the same update reached them: that
    // does not count as reaching Jan.
    let (msg, entry) = e
        .late_fallback(&r, jan_sms.id, later)
        .expect("Jan's update goes again");
    let entry = entry.expect("renders");
    assert_eq!((msg.recipient, msg.channel), (Recipient::Cc(0), Email));
    assert_eq!(entry.to, "jan@example.com");
    assert_eq!(msg.update, jan_sms.update);
    // Zofia has nothing after SMS: her failure falls back nowhere.
    let zofia = r
        .messages
        .iter()
        .find(|m| m.recipient == Recipient::Cc(1))
        .expect("Zofia's SMS");
    assert!(e.late_fallback(&r, zofia.id, later).is_none());
}
