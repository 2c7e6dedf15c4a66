//! `tidings preview` and `tidings simulate`: what the daemon would send,
//! computed by the same planning code the scheduler runs, on a virtual clock.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::channels::email::Mailer;
use crate::config::Config;
use crate::domain::{Case, CaseInput, Channel, EventInput};
use crate::domain::{CaseRecord, DeliveryStatus, OutboxEntry};
use crate::engine::plan::Engine;

/// Reads a case JSON file (the body of `PUT /v1/cases/{id}`) into a case.
pub fn load_case(path: &Path, config: &Config, now: DateTime<Utc>) -> Result<Case, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let input: CaseInput = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner();
        format!(
            "{}:{}:{}: {}: {}",
            path.display(),
            inner.line(),
            inner.column(),
            e.path(),
            inner
        )
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| "CASE".parse().unwrap_or_else(|_| unreachable!("valid id")));
    input
        .into_case(id, "preview", &config.defaults(), now, None)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads EVENTS.jsonl: one API event a line, each with an `at` instant.
pub fn load_events(path: &Path) -> Result<Vec<(DateTime<Utc>, EventInput)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |col: usize, m: String| format!("{}:{}:{col}: {m}", path.display(), n + 1);
        let mut v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(e.column(), e.to_string()))?;
        let when = v
            .as_object_mut()
            .and_then(|o| o.remove("at"))
            .and_then(|a| a.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()))
            .ok_or_else(|| at(1, "each event needs an `at` instant (RFC 3339)".into()))?;
        let event: EventInput = serde_json::from_value(v).map_err(|e| at(1, e.to_string()))?;
        out.push((when, event));
    }
    out.sort_by_key(|(t, _)| *t);
    Ok(out)
}

/// `tidings preview`: the message as it would leave now.
pub fn preview(
    engine: &Engine,
    config: &Config,
    case: Case,
    rule: Option<&str>,
    channel: Option<Channel>,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let (template, rule, mut each) = engine.preview_each(case, rule, channel, now)?;
    let (_, customer) = each.remove(0);
    let mut out = show(engine, config, &template, rule.as_deref(), &customer?, "")?;
    // Then what each person in CC gets, in their language and zone.
    for (who, entry) in each {
        out.push('\n');
        match entry {
            Ok(entry) => {
                let to = format!("   to: {who}");
                out.push_str(&show(
                    engine,
                    config,
                    &template,
                    rule.as_deref(),
                    &entry,
                    &to,
                )?);
            }
            Err(why) => {
                let _ = writeln!(out, "# to: {who}: nothing ({why})");
            }
        }
    }
    Ok(out)
}

/// One previewed message: its headers (email) or segments (SMS) and text.
fn show(
    engine: &Engine,
    config: &Config,
    template: &str,
    rule: Option<&str>,
    entry: &OutboxEntry,
    to: &str,
) -> Result<String, String> {
    if let crate::domain::Content::WhatsApp(w) = &entry.content {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# channel: whatsapp   template: {template}   rule: {}{to}",
            rule.unwrap_or("-")
        );
        let _ = writeln!(out, "To: whatsapp:{}\n", entry.to);
        let _ = writeln!(
            out,
            "--- free-form body (inside the 24-hour window) ---\n{}",
            w.body.trim_end()
        );
        match &w.template {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "--- approved template (outside it) ---\nContentSid: {}\nContentVariables: {}",
                    t.content_sid,
                    serde_json::to_string(&t.variables).unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "--- no approved template: outside the window the update takes the next channel ---"
                );
            }
        }
        return Ok(out);
    }
    if entry.channel == Channel::Sms {
        let seg = crate::domain::segments::count(entry.content.text());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# channel: sms   template: {template}   rule: {}{to}",
            rule.unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "To: {}\nSegments: {} ({:?}, {} units; budget {})\n",
            entry.to, seg.count, seg.encoding, seg.units, engine.max_segments
        );
        let _ = writeln!(out, "--- text ---\n{}", entry.content.text().trim_end());
        return Ok(out);
    }
    let mailer = Mailer::new(&config.email.transport, &config.email.from)?;
    let message = mailer.build(&entry.message())?;
    let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
    let headers = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# channel: {}   template: {template}   rule: {}{to}",
        entry.channel.as_str(),
        rule.unwrap_or("-")
    );
    let _ = writeln!(out, "{headers}\n");
    let _ = writeln!(out, "--- text ---\n{}", entry.content.text().trim_end());
    if let crate::domain::Content::Email(crate::domain::EmailText {
        html: Some(html), ..
    }) = &entry.content
    {
        let _ = writeln!(out, "--- html ---\n{}", html.trim_end());
    }
    Ok(out)
}

/// `tidings simulate`: every message the rules would send over `days`,
/// with events applied at their instants.
pub fn simulate(
    engine: &Engine,
    case: Case,
    events: Vec<(DateTime<Utc>, EventInput)>,
    start: DateTime<Utc>,
    days: u32,
) -> Result<String, String> {
    let end = start + chrono::Duration::days(i64::from(days));
    let tz = case.customer.timezone;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} ({}, {}) from {} for {days} day(s)",
        case.id,
        tz.name(),
        case.customer.locale,
        start.format("%Y-%m-%d %H:%M UTC")
    );
    for (who, c) in case.recipients().skip(1) {
        let _ = writeln!(out, "# {who}: {}, {}", c.timezone.name(), c.locale);
    }
    let _ = writeln!(
        out,
        "{:<17}  {:<22}  {:<10}  {:<20}  {:<6}  {:<16}  {:<8}  promised next",
        "time (UTC)", "recipient's time", "kind", "rule", "chan", "template", "to"
    );
    let mut record = engine
        .upsert(None, case, start)
        .record
        .ok_or("planning produced no record")?;
    let mut shown = 0;
    let mut events = events.into_iter().filter(|(t, _)| *t >= start).peekable();
    let mut steps = 0usize;
    loop {
        shown = print_new(&mut out, &record, shown);
        steps += 1;
        if steps > 1_000_000 {
            return Err("the simulation did not settle; is a rule firing every second?".into());
        }
        let due = record.schedule.due_at.filter(|t| *t <= end);
        let next_event = events.peek().map(|(t, _)| *t).filter(|t| *t <= end);
        record = match (due, next_event) {
            (None, None) => break,
            (Some(d), Some(e)) if e <= d => apply_event(engine, record, events.next())?,
            (None, Some(_)) => apply_event(engine, record, events.next())?,
            (Some(d), _) => advance(engine.due(record, d).record)?,
        };
        // Sends are instantaneous in a simulation.
        for m in &mut record.messages {
            if m.status == DeliveryStatus::Pending {
                m.status = DeliveryStatus::Sent;
                m.sent_at = Some(m.due_at);
            }
        }
    }
    let _ = writeln!(out, "# {shown} message(s)");
    Ok(out)
}

fn advance(record: Option<CaseRecord>) -> Result<CaseRecord, String> {
    record.ok_or_else(|| "planning produced no record".into())
}

fn apply_event(
    engine: &Engine,
    record: CaseRecord,
    event: Option<(DateTime<Utc>, EventInput)>,
) -> Result<CaseRecord, String> {
    let Some((at, input)) = event else {
        return Ok(record);
    };
    let event = input.validate().map_err(|e| e.to_string())?;
    advance(engine.event(record, event, at).record)
}

/// The messages after the first `from`, each at its recipient's time.
fn print_new(out: &mut String, record: &CaseRecord, from: usize) -> usize {
    for m in record.messages.iter().skip(from) {
        let tz = record
            .case
            .person(m.recipient)
            .map_or(record.case.customer.timezone, |p| p.timezone);
        let local = m.due_at.with_timezone(&tz);
        let promised = m.promised_next_update_at.map_or_else(
            || "-".to_owned(),
            |p| {
                p.with_timezone(&tz)
                    .format("%a %Y-%m-%d %H:%M %Z")
                    .to_string()
            },
        );
        let _ = writeln!(
            out,
            "{:<17}  {:<22}  {:<10}  {:<20}  {:<6}  {:<16}  {:<8}  {promised}",
            m.due_at.format("%Y-%m-%d %H:%M"),
            local.format("%a %Y-%m-%d %H:%M %Z").to_string(),
            m.kind,
            m.rule.as_deref().unwrap_or("-"),
            m.channel.as_str(),
            m.template,
            m.recipient.to_string(),
        );
    }
    record.messages.len()
}
