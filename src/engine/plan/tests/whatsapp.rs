//! WhatsApp planned: the customer's phone as the address, the message
//! rendered both ways (free-form body, approved template when named), its
//! quiet hours, and the fallback to the next channel.

use super::{case, engine_edited, t0};
use crate::domain::Channel::{Email, WhatsApp};
use crate::domain::{Content, MessageKind, Recipient};
use crate::engine::schedule::QuietHours;

#[test]
fn a_whatsapp_message_goes_to_the_phone_rendered_for_both_sides_of_the_window() {
    let mut e = engine_edited(
        "created: { template: acknowledgement, channels: [email, sms] }",
        "created: { template: acknowledgement, channels: [whatsapp] }",
    );
    e.channels.push(WhatsApp);
    e.whatsapp_quiet = Some(QuietHours::parse("21:00", "08:00").expect("valid"));
    assert_eq!(e.channel_quiet(WhatsApp), e.whatsapp_quiet.as_ref());
    let mut c = case("CASE-1");
    c.customer.channels = vec![WhatsApp, Email];
    let planned = e.upsert(None, c, t0());
    let [entry] = planned.outbox.as_slice() else {
        panic!("one acknowledgement: {:?}", planned.outbox);
    };
    assert_eq!(
        (entry.channel, entry.to.as_str()),
        (WhatsApp, "+12125550143")
    );
    let Content::WhatsApp(w) = &entry.content else {
        panic!("a WhatsApp message: {:?}", entry.content);
    };
    // The shipped templates name no approved template: the body is the
    // SMS text, and outside the window the update takes the next channel.
    assert!(w.body.contains("CASE-1"), "{}", w.body);
    assert_eq!(w.template, None);
    assert_eq!(entry.unsubscribe_url, None);
    assert_eq!(
        (entry.thread.as_ref(), entry.reply_to.as_ref()),
        (None, None)
    );
    // 03:00 in New York: held until the quiet hours end at 08:00 there.
    assert_eq!(entry.next_attempt_at, t0() + chrono::Duration::hours(5));

    let record = planned.record.expect("record");
    assert_eq!(e.next_channel(&record.case, &[WhatsApp]), Some(Email));
    let (msg, fallback) = e.fallback(&[&record], entry, Email, t0());
    assert_eq!(msg.fallback_for, Some(entry.id));
    assert_eq!((msg.channel, msg.kind), (Email, MessageKind::Created));
    let fallback = fallback.expect("rendered");
    assert_eq!(fallback.to, "maria@example.com");
    assert_eq!(fallback.update, entry.update);
}

#[test]
fn a_customer_on_whatsapp_is_reached_only_while_the_daemon_sends_it() {
    let e = engine_edited(
        "created: { template: acknowledgement, channels: [email, sms] }",
        "created: { template: acknowledgement, channels: [whatsapp, email] }",
    );
    let mut c = case("CASE-2");
    c.customer.channels = vec![WhatsApp, Email];
    // No `whatsapp:` section: the acknowledgement goes by email alone.
    let planned = e.upsert(None, c, t0());
    let channels: Vec<_> = planned.outbox.iter().map(|o| o.channel).collect();
    assert_eq!(channels, [Email]);
}

#[test]
fn a_person_in_cc_on_whatsapp_gets_it_on_their_own_number_in_their_language() {
    let mut e = engine_edited(
        "created: { template: acknowledgement, channels: [email, sms] }",
        "created: { template: acknowledgement, channels: [email, whatsapp] }",
    );
    e.channels.push(WhatsApp);
    let mut c = case("CASE-3");
    c.customer.channels = vec![Email];
    let input: crate::domain::CustomerInput = serde_json::from_value(serde_json::json!({
        "name": "Zofia Nowak", "phone": "+48601234567", "timezone": "Europe/Warsaw",
        "locale": "pl", "channels": ["whatsapp"]}))
    .expect("input");
    let defaults = crate::domain::Defaults {
        timezone: chrono_tz::Tz::UTC,
        locale: "en".parse().expect("locale"),
    };
    c.cc = vec![input.validate_as("cc[0]", &defaults).expect("valid")];
    let planned = e.upsert(None, c, t0());
    let sent: Vec<_> = planned
        .outbox
        .iter()
        .map(|o| (o.recipient, o.channel, o.to.as_str()))
        .collect();
    assert_eq!(
        sent,
        [
            (Recipient::Customer, Email, "maria@example.com"),
            (Recipient::Cc(0), WhatsApp, "+48601234567"),
        ]
    );
    let Content::WhatsApp(w) = &planned.outbox[1].content else {
        panic!("a WhatsApp message");
    };
    // The Polish SMS text serves as the body.
    assert!(
        w.body.contains("otworzylismy zgloszenie CASE-3"),
        "{}",
        w.body
    );
}
