//! The customer's own case page, decided: whether a link still opens its
//! case, what the page shows (in the customer's language and zone), and
//! what a preference posted on it changes.
//!
//! Pure: the record, the link and `now` come from the caller, which
//! renders the view with `Templates::render_page` and commits a changed
//! record through `Service::change`. Nothing here sees an email address
//! or a phone number: the view carries neither.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::domain::link::{PageLink, case_stamp};
use crate::domain::{Case, CaseRecord, Channel, DeliveryStatus, Locale, MessageKind};
use crate::engine::render::{MessageContext, RenderError, Templates, format_short};

/// What a page link comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// The case is open, or closed recently enough.
    Valid(Box<CaseRecord>),
    /// The case closed longer ago than links live; a fresh link may be sent.
    Expired(Box<CaseRecord>),
    /// The case the link was made for was erased.
    Gone,
}

/// Whether `link` opens `record` at `now`. A link stays valid while the
/// case is open, and for `window` after it closed (or after the link was
/// issued, whichever is later).
pub fn link_state(
    link: &PageLink,
    record: Option<CaseRecord>,
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> LinkState {
    let Some(record) = record else {
        return LinkState::Gone;
    };
    if case_stamp(record.case.created_at) != link.stamp {
        return LinkState::Gone;
    }
    let closed = matches!(
        record.case.status,
        crate::domain::Status::Resolved | crate::domain::Status::Closed
    );
    if !closed {
        return LinkState::Valid(Box::new(record));
    }
    let closed_at = record.schedule.closed_at.unwrap_or(record.updated_at);
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let until = closed_at
        .max(link.issued_at())
        .checked_add_signed(window)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if now < until {
        LinkState::Valid(Box::new(record))
    } else {
        LinkState::Expired(Box::new(record))
    }
}

/// The page's variables.
#[derive(Debug, Clone, Serialize)]
pub struct PageView {
    pub lang: String,
    pub company: String,
    pub case: PageCase,
    /// The promised next update, as one short phrase ("Thursday 09:00").
    pub promise: Option<String>,
    pub paused_until: Option<String>,
    pub stopped: bool,
    /// The customer stopped every update from this source (help desk).
    pub source_stopped: bool,
    /// The zone the times are in (IANA name).
    pub zone: String,
    pub messages: Vec<PageMessage>,
    /// The channels the customer can choose for this case.
    pub channels: Vec<PageChannel>,
    /// The form token every form carries.
    pub form_token: String,
    /// The earliest and the suggested date for a pause (`YYYY-MM-DD`).
    pub pause_min: String,
    pub pause_default: String,
    /// What the last POST did, shown once (`saved`, `paused`, …).
    pub notice: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageCase {
    pub id: String,
    pub subject: String,
    pub status: &'static str,
    pub eta: Option<String>,
    pub note: Option<String>,
    pub note_author: Option<String>,
    pub note_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageMessage {
    pub channel: &'static str,
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PageChannel {
    pub name: &'static str,
    pub on: bool,
}

/// A short wall-clock phrase for a promise: the weekday and time within
/// the coming week, with the date further out (or in the past).
pub fn format_promise(t: DateTime<Utc>, tz: Tz, locale: &Locale, now: DateTime<Utc>) -> String {
    let local = t.with_timezone(&tz);
    let ahead = t - now;
    let near = ahead >= chrono::Duration::zero() && ahead < chrono::Duration::days(6);
    let (fmt, loc) = match (locale.language(), near) {
        ("id", true) => ("%A %H.%M", chrono::Locale::id_ID),
        ("id", false) => ("%A %-d %B %H.%M", chrono::Locale::id_ID),
        ("pl", true) => ("%A %H:%M", chrono::Locale::pl_PL),
        ("pl", false) => ("%A %d.%m %H:%M", chrono::Locale::pl_PL),
        ("tl", true) => ("%A %-I:%M %p", chrono::Locale::tl_PH),
        ("tl", false) => ("%A %B %-d, %-I:%M %p", chrono::Locale::tl_PH),
        (_, true) => ("%A %H:%M", chrono::Locale::en_US),
        (_, false) => ("%A %-d %B %H:%M", chrono::Locale::en_US),
    };
    local.format_localized(fmt, loc).to_string()
}

/// The channels the daemon sends on that the customer can be reached by.
pub fn choosable(case: &Case, daemon: &[Channel]) -> Vec<Channel> {
    case.customer
        .channels
        .iter()
        .copied()
        .filter(|c| daemon.contains(c) && case.customer.reachable_by(*c))
        .collect()
}

impl PageView {
    pub fn new(
        record: &CaseRecord,
        daemon_channels: &[Channel],
        company: &str,
        form_token: String,
        now: DateTime<Utc>,
    ) -> Self {
        let case = &record.case;
        let tz = case.customer.timezone;
        let locale = &case.customer.locale;
        let prefs = &case.prefs;
        let paused = prefs.paused_at(now);
        let note = case.latest_note.as_ref();
        let today = now.with_timezone(&tz).date_naive();
        Self {
            lang: locale.to_string(),
            company: company.to_owned(),
            case: PageCase {
                id: case.id.to_string(),
                subject: case.subject.clone(),
                status: case.status.as_str(),
                eta: case.eta.map(|e| format_promise(e, tz, locale, now)),
                note: note.map(|n| n.body.clone()),
                note_author: note.and_then(|n| n.author.clone()),
                note_at: note.map(|n| format_short(n.at, tz, locale)),
            },
            promise: (!prefs.stopped)
                .then_some(record.schedule.next_update_at)
                .flatten()
                .map(|t| format_promise(t, tz, locale, now)),
            paused_until: prefs
                .paused_until
                .filter(|_| paused)
                .map(|t| format_promise(t, tz, locale, now)),
            stopped: prefs.stopped,
            source_stopped: false,
            zone: tz.name().to_owned(),
            messages: record
                .messages
                .iter()
                .filter(|m| !m.internal && m.status == DeliveryStatus::Sent)
                .map(|m| PageMessage {
                    channel: m.channel.as_str(),
                    at: format_short(m.sent_at.unwrap_or(m.due_at), tz, locale),
                })
                .collect(),
            channels: choosable(case, daemon_channels)
                .into_iter()
                .map(|c| PageChannel {
                    name: c.as_str(),
                    on: prefs.allows(c) || prefs.stopped,
                })
                .collect(),
            form_token,
            pause_min: (today + chrono::Days::new(1)).to_string(),
            pause_default: (today + chrono::Days::new(7)).to_string(),
            notice: None,
        }
    }
}

/// A preference posted on the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefChange {
    /// The channels this case uses (at least one).
    Channels(Vec<Channel>),
    /// No updates until this local date (09:00 in the customer's zone).
    Pause(NaiveDate),
    /// Updates again from now on (lifts a pause and a stop).
    Resume,
    /// No more messages about this case.
    Stop,
}

/// Why a preference was refused; the field it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PrefError {
    pub field: &'static str,
    pub message: &'static str,
}

/// The local hour a pause ends at on its date.
pub const RESUME_HOUR: u32 = 9;

/// The longest pause the page offers.
pub const MAX_PAUSE_DAYS: i64 = 366;

/// Applies `change` to `record`'s preferences at `now`; the caller
/// reschedules (`Engine::reschedule`) and commits. Returns the ids of
/// pending customer messages the change cancels.
pub fn apply_pref(
    record: &mut CaseRecord,
    change: &PrefChange,
    daemon_channels: &[Channel],
    now: DateTime<Utc>,
) -> Result<Vec<uuid::Uuid>, PrefError> {
    let tz = record.case.customer.timezone;
    let offered = choosable(&record.case, daemon_channels);
    let prefs = &mut record.case.prefs;
    match change {
        PrefChange::Channels(chosen) => {
            if chosen.is_empty() {
                return Err(PrefError {
                    field: "channels",
                    message: "choose at least one channel, or stop updates for this case",
                });
            }
            if chosen.iter().any(|c| !offered.contains(c)) {
                return Err(PrefError {
                    field: "channels",
                    message: "not a channel this case can use",
                });
            }
            prefs.channels = (chosen.len() < offered.len()).then(|| chosen.clone());
            prefs.stopped = false;
        }
        PrefChange::Pause(date) => {
            let until = date
                .and_hms_opt(RESUME_HOUR, 0, 0)
                .and_then(|t| tz.from_local_datetime(&t).earliest())
                .map(|t| t.with_timezone(&Utc))
                .ok_or(PrefError {
                    field: "until",
                    message: "not a date in your time zone",
                })?;
            if until <= now || until - now > chrono::Duration::days(MAX_PAUSE_DAYS) {
                return Err(PrefError {
                    field: "until",
                    message: "must be a date after today, within a year",
                });
            }
            prefs.paused_until = Some(until);
        }
        PrefChange::Resume => {
            prefs.paused_until = None;
            prefs.stopped = false;
        }
        PrefChange::Stop => prefs.stopped = true,
    }
    record.updated_at = now;
    // Pending messages the choice no longer allows: on a channel left
    // out, or any at all once paused or stopped. Digests (which carry
    // other cases too) are left to the send-time checks.
    let prefs = record.case.prefs.clone();
    let mut cancelled = Vec::new();
    for m in &mut record.messages {
        let held = !prefs.allows(m.channel)
            || (prefs.paused_at(now)
                && matches!(
                    m.kind,
                    MessageKind::Progress | MessageKind::Note | MessageKind::Status
                ));
        if m.status == DeliveryStatus::Pending && !m.internal && m.covers.is_empty() && held {
            m.status = DeliveryStatus::Cancelled;
            m.error = Some("cancelled by the customer's choice on their case page".into());
            cancelled.push(m.id);
        }
    }
    Ok(cancelled)
}

/// Renders an SMS that carries the case page link (`status_url`) only
/// where the segment budget allows: when the link costs no extra segment
/// and no shortening of the case's own text, it stays; otherwise the SMS
/// goes as it would without it.
pub fn render_sms_with_link(
    templates: &Templates,
    template: &str,
    locale: &Locale,
    ctx: &MessageContext,
    max_segments: usize,
) -> Result<String, RenderError> {
    let with = templates.render_sms(template, locale, ctx, max_segments)?;
    if ctx.status_url.is_empty() || !with.contains(&ctx.status_url) {
        return templates.render_sms(template, locale, &without_link(ctx), max_segments);
    }
    let without = templates.render_sms(template, locale, &without_link(ctx), max_segments)?;
    let segments = |t: &str| crate::domain::segments::count(t).count;
    // Longer by the link and the space before it, or the case's text was
    // cut to make room.
    let kept = with.chars().count() > without.chars().count() + ctx.status_url.chars().count();
    Ok(if segments(&with) <= segments(&without) && kept {
        with
    } else {
        without
    })
}

fn without_link(ctx: &MessageContext) -> MessageContext {
    MessageContext {
        status_url: String::new(),
        ..ctx.clone()
    }
}

/// The template that confirms a pause and says when updates resume.
pub const PAUSED_TEMPLATE: &str = "paused";

/// The template a fresh page link is sent with.
pub const LINK_TEMPLATE: &str = "page-link";

/// At most one fresh link per case in this long.
pub const FRESH_LINK_EVERY: chrono::Duration = chrono::Duration::hours(24);

/// Whether `record` may get a fresh page link at `now`: it has an email
/// address and got none within `FRESH_LINK_EVERY`.
pub fn fresh_link_due(record: &CaseRecord, now: DateTime<Utc>) -> bool {
    record.case.customer.email.is_some()
        && !record
            .messages
            .iter()
            .any(|m| m.kind == MessageKind::Link && now - m.due_at < FRESH_LINK_EVERY)
}

/// Sample variables for every page template, for `tidings check`.
pub fn samples(case: Case, now: DateTime<Utc>) -> BTreeMap<&'static str, serde_json::Value> {
    let record = CaseRecord {
        v: crate::domain::RECORD_VERSION,
        updated_at: now,
        schedule: crate::domain::ScheduleState {
            last_contact_at: now,
            next_update_at: Some(now + chrono::Duration::hours(4)),
            due_at: None,
            rule: None,
            rule_updates: 0,
            escalated: false,
            resolution_sent: false,
            closed_at: None,
        },
        messages: Vec::new(),
        idempotency_keys: Vec::new(),
        case,
    };
    let mut view = PageView::new(
        &record,
        &[Channel::Email, Channel::Sms],
        "Support",
        "t".into(),
        now,
    );
    view.notice = Some("saved".into());
    let notice = serde_json::json!({
        "lang": "en", "company": "Support", "kind": "not_found",
        "form_token": "t", "action": "", "title": "", "css": "page.css",
    });
    let mut case = serde_json::to_value(&view).unwrap_or_default();
    case["css"] = "page.css".into();
    case["action"] = "t".into();
    case["error"] = serde_json::Value::Null;
    [
        ("case.html.j2", case),
        ("notice.html.j2", notice),
        ("page.css.j2", serde_json::json!({})),
    ]
    .into()
}

#[cfg(test)]
mod tests;
