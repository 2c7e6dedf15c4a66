//! The page decided on a fixed clock: which links open, what the promise
//! line says in each language, and what a preference changes.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use super::*;
use crate::domain::link::{PageLink, case_key};
use crate::domain::{CaseInput, Defaults, MessageRecord, ScheduleState, Status};

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("instant")
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn record(locale: &str, tz: &str) -> CaseRecord {
    let input: CaseInput = serde_json::from_value(serde_json::json!({
        "subject": "Router keeps rebooting",
        "customer": { "name": "Maria Hernandez", "email": "maria@example.com",
            "phone": "+12125550143", "timezone": tz, "locale": locale },
    }))
    .expect("input");
    let defaults = Defaults {
        timezone: Tz::UTC,
        locale: "en".parse().expect("locale"),
    };
    let case = input
        .into_case(
            "C-1".parse().expect("id"),
            "desk",
            &defaults,
            t("2026-12-01T08:00:00Z"),
            None,
        )
        .expect("case");
    CaseRecord {
        v: 1,
        case,
        updated_at: t("2026-12-01T08:00:00Z"),
        schedule: ScheduleState {
            last_contact_at: t("2026-12-01T08:00:00Z"),
            // Thursday 2026-12-03 09:00 in New York.
            next_update_at: Some(t("2026-12-03T14:00:00Z")),
            due_at: Some(t("2026-12-03T14:00:00Z")),
            rule: Some("standard".into()),
            rule_updates: 0,
            escalated: false,
            resolution_sent: false,
            closed_at: None,
        },
        messages: vec![
            message(Channel::Email, DeliveryStatus::Sent, false),
            message(Channel::Sms, DeliveryStatus::Pending, false),
            message(Channel::Email, DeliveryStatus::Sent, true),
        ],
        idempotency_keys: Vec::new(),
    }
}

fn message(channel: Channel, status: DeliveryStatus, internal: bool) -> MessageRecord {
    MessageRecord {
        id: uuid::Uuid::from_u128(rand_id(channel, status, internal)),
        kind: MessageKind::Progress,
        template: "progress".into(),
        rule: None,
        channel,
        recipient: Default::default(),
        status,
        attempts: 0,
        due_at: t("2026-12-01T08:00:00Z"),
        sent_at: (status == DeliveryStatus::Sent).then(|| t("2026-12-01T08:00:05Z")),
        promised_next_update_at: None,
        error: None,
        internal,
        update: None,
        fallback_for: None,
        covers: Vec::new(),
        provider_id: None,
        provider_status: None,
        promise: None,
    }
}

fn rand_id(channel: Channel, status: DeliveryStatus, internal: bool) -> u128 {
    u128::from(channel == Channel::Sms) * 4
        + u128::from(status == DeliveryStatus::Sent) * 2
        + u128::from(internal)
}

fn link(r: &CaseRecord, issued: DateTime<Utc>) -> PageLink {
    PageLink::new(
        case_key("desk", "C-1").expect("key"),
        r.case.created_at,
        issued,
    )
}

#[test]
fn a_link_opens_while_open_and_for_the_window_after_close() {
    let now = t("2026-12-02T00:00:00Z");
    let mut r = record("en", "America/New_York");
    let l = link(&r, now);
    assert!(matches!(
        link_state(&l, Some(r.clone()), now, DAY),
        LinkState::Valid(_)
    ));
    r.case.status = Status::Closed;
    r.schedule.closed_at = Some(now);
    let later = now + chrono::Duration::hours(23);
    assert!(matches!(
        link_state(&l, Some(r.clone()), later, DAY),
        LinkState::Valid(_)
    ));
    let expired = now + chrono::Duration::hours(25);
    assert!(matches!(
        link_state(&l, Some(r.clone()), expired, DAY),
        LinkState::Expired(_)
    ));
    // A fresh link, issued after the close, lives its own window.
    let fresh = link(&r, expired);
    assert!(matches!(
        link_state(&fresh, Some(r), expired, DAY),
        LinkState::Valid(_)
    ));
}

#[test]
fn an_erased_case_or_a_case_created_again_is_gone() {
    let now = t("2026-12-02T00:00:00Z");
    let r = record("en", "UTC");
    let l = link(&r, now);
    assert_eq!(link_state(&l, None, now, DAY), LinkState::Gone);
    let mut again = r;
    again.case.created_at = t("2026-12-01T09:00:00Z");
    assert_eq!(link_state(&l, Some(again), now, DAY), LinkState::Gone);
}

#[test]
fn the_promise_reads_in_the_customers_language_and_zone() {
    let now = t("2026-12-01T12:00:00Z");
    let next = t("2026-12-03T14:00:00Z");
    let ny: Tz = "America/New_York".parse().expect("tz");
    let cases = [
        ("en", "Thursday 09:00"),
        ("id", "Kamis 09.00"),
        ("pl", "czwartek 09:00"),
        ("tl", "Huwebes 9:00 AM"),
    ];
    for (lang, want) in cases {
        let got = format_promise(next, ny, &lang.parse().expect("locale"), now);
        assert_eq!(got, want, "{lang}");
    }
    let far = format_promise(
        t("2026-12-20T14:00:00Z"),
        ny,
        &"en".parse().expect("l"),
        now,
    );
    assert_eq!(far, "Sunday 20 December 09:00");
    // Same instant, another zone: another wall clock.
    let warsaw: Tz = "Europe/Warsaw".parse().expect("tz");
    assert_eq!(
        format_promise(next, warsaw, &"pl".parse().expect("l"), now),
        "czwartek 15:00"
    );
}

#[test]
fn the_view_holds_no_address_and_only_messages_the_customer_got() {
    let now = t("2026-12-01T12:00:00Z");
    let r = record("en", "America/New_York");
    let v = PageView::new(
        &r,
        &[Channel::Email, Channel::Sms],
        "Support",
        "f".into(),
        now,
    );
    assert_eq!(v.promise.as_deref(), Some("Thursday 09:00"));
    assert_eq!(v.messages.len(), 1, "sent, not internal");
    assert_eq!(v.channels.len(), 2);
    let json = serde_json::to_string(&v).expect("json");
    assert!(
        !json.contains("maria@example.com") && !json.contains("5550143"),
        "{json}"
    );
    assert!(!json.contains("Hernandez"), "{json}");
}

#[test]
fn channels_pause_and_stop_change_the_prefs_and_cancel_pending_messages() {
    let now = t("2026-12-01T12:00:00Z");
    let both = [Channel::Email, Channel::Sms];
    let mut r = record("en", "America/New_York");
    let cancelled = apply_pref(
        &mut r,
        &PrefChange::Channels(vec![Channel::Email]),
        &both,
        now,
    )
    .expect("valid");
    assert_eq!(r.case.prefs.channels, Some(vec![Channel::Email]));
    assert_eq!(cancelled.len(), 1, "the pending SMS");
    assert_eq!(r.messages[1].status, DeliveryStatus::Cancelled);

    let none = apply_pref(&mut r, &PrefChange::Channels(vec![]), &both, now);
    assert_eq!(none.map_err(|e| e.field), Err("channels"));

    let date = NaiveDate::from_ymd_opt(2026, 12, 10).expect("date");
    apply_pref(&mut r, &PrefChange::Pause(date), &both, now).expect("valid");
    // 09:00 in New York.
    assert_eq!(r.case.prefs.paused_until, Some(t("2026-12-10T14:00:00Z")));
    let past = NaiveDate::from_ymd_opt(2026, 11, 30).expect("date");
    let refused = apply_pref(&mut r, &PrefChange::Pause(past), &both, now);
    assert_eq!(refused.map_err(|e| e.field), Err("until"));

    apply_pref(&mut r, &PrefChange::Stop, &both, now).expect("valid");
    assert!(r.case.prefs.stopped);
    let v = PageView::new(&r, &both, "Support", "f".into(), now);
    assert_eq!(v.promise, None, "a stopped case promises nothing");
    apply_pref(&mut r, &PrefChange::Resume, &both, now).expect("valid");
    assert!(!r.case.prefs.stopped && r.case.prefs.paused_until.is_none());
}

#[test]
fn a_templates_folder_without_the_page_is_named_by_check() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&src).expect("templates") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let templates =
        crate::engine::render::Templates::load(dir.path(), "en".parse().expect("locale"))
            .expect("load");
    let now = t("2026-12-01T12:00:00Z");
    let problems = templates.check_pages(&samples(record("en", "UTC").case, now));
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(
        text.iter()
            .any(|t| t.contains("the case page needs page/case.html.j2")),
        "{text:?}"
    );
}

#[test]
fn every_shipped_page_template_renders_its_sample() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let templates =
        crate::engine::render::Templates::load(&dir, "en".parse().expect("locale")).expect("load");
    let now = t("2026-12-01T12:00:00Z");
    let problems = templates.check_pages(&samples(record("en", "UTC").case, now));
    assert!(problems.is_empty(), "{problems:?}");
    for lang in ["en", "id", "pl", "tl"] {
        let html = templates
            .render_page(
                "case.html.j2",
                &lang.parse().expect("locale"),
                &samples(record(lang, "UTC").case, now)["case.html.j2"],
            )
            .expect("renders");
        assert!(html.contains(&format!("lang=\"{lang}\"")), "{lang}");
    }
}

#[test]
fn a_fresh_link_goes_at_most_once_a_day_and_only_to_an_email_address() {
    let now = t("2026-12-01T12:00:00Z");
    let mut r = record("en", "UTC");
    assert!(fresh_link_due(&r, now));
    let mut sent = message(Channel::Email, DeliveryStatus::Sent, false);
    sent.kind = MessageKind::Link;
    sent.due_at = now - chrono::Duration::hours(23);
    r.messages.push(sent);
    assert!(!fresh_link_due(&r, now));
    assert!(fresh_link_due(&r, now + chrono::Duration::hours(1)));
    r.case.customer.email = None;
    assert!(!fresh_link_due(&r, now + chrono::Duration::hours(1)));
}

#[test]
fn an_sms_carries_the_page_link_only_where_it_costs_no_extra_segment() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let templates =
        crate::engine::render::Templates::load(&dir, "en".parse().expect("locale")).expect("load");
    let now = t("2026-12-01T12:00:00Z");
    let r = record("en", "America/New_York");
    let company = crate::domain::Company {
        name: "X".into(),
        support_url: None,
    };
    let mut ctx = MessageContext::new(
        &r.case,
        r.schedule.next_update_at,
        now,
        &company,
        String::new(),
    );
    let en = "en".parse().expect("locale");
    let bare = render_sms_with_link(&templates, "progress", &en, &ctx, 2).expect("renders");
    let short = "https://t.example/c/abc";
    ctx.status_url = short.into();
    let with = render_sms_with_link(&templates, "progress", &en, &ctx, 2).expect("renders");
    assert!(with.contains(short), "{with}");
    let count = |t: &str| crate::domain::segments::count(t).count;
    assert_eq!(count(&with), count(&bare), "{with}");
    ctx.status_url = format!("https://updates.example.com/c/{}", "A".repeat(60));
    let long = render_sms_with_link(&templates, "progress", &en, &ctx, 2).expect("renders");
    assert_eq!(long, bare, "a link that needs a second segment is left out");
}
