//! Promise accounting. Every progress message tells the customer when
//! they will hear from us next; the next message that reaches them settles
//! that promise: `kept` when it arrived by the promised time (within the
//! minute customers are told, `GRACE`), `late` (by how much) when after. A promise still open when the case closes with no
//! message is `superseded`. The outcome is stored on the message that made
//! the promise; `/metrics` and `tidings audit` count them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{CaseRecord, DeliveryStatus, MessageRecord, PromiseOutcome};

/// Customers are told times to the minute ("by Thursday 09:00"), and the
/// update planned for the promised instant takes a moment to go out: a
/// message within a minute after it keeps the promise.
pub const GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// A promise the customer holds: a message that reached them with a next
/// update time, not settled yet.
fn open(m: &MessageRecord) -> bool {
    !m.internal
        && m.recipient.is_customer()
        && m.status == DeliveryStatus::Sent
        && m.promise.is_none()
        && m.promised_next_update_at.is_some()
}

/// The message `sent` reached the customer at `at`: settles every promise
/// made before it.
pub fn settle_on_delivery(record: &mut CaseRecord, sent: Uuid, at: DateTime<Utc>) {
    let Some(delivered) = record.messages.iter().find(|m| m.id == sent) else {
        return;
    };
    // The promise is the case's, made to its customer: the copies to the
    // people in CC neither make nor settle one.
    if delivered.internal || !delivered.recipient.is_customer() {
        return;
    }
    let update = delivered.update.unwrap_or(delivered.id);
    for m in &mut record.messages {
        // The same update on another channel is the same promise made,
        // not one kept.
        if m.id == sent || m.update.unwrap_or(m.id) == update || !open(m) {
            continue;
        }
        if m.sent_at.is_none_or(|s| s > at) {
            continue;
        }
        let Some(promised) = m.promised_next_update_at else {
            continue;
        };
        m.promise = Some(if at <= promised + GRACE {
            PromiseOutcome::Kept { at }
        } else {
            PromiseOutcome::Late {
                at,
                late_by_secs: (at - promised).num_seconds(),
            }
        });
    }
}

/// The case closed at `at` with no message to say so: the promises it
/// still held are withdrawn.
pub fn supersede_open(record: &mut CaseRecord, at: DateTime<Utc>) {
    for m in record.messages.iter_mut().filter(|m| open(m)) {
        if m.promised_next_update_at.is_some_and(|p| p > at) {
            m.promise = Some(PromiseOutcome::Superseded { at });
        }
    }
}

/// The promises settled between `before` (the ids of messages already
/// settled) and `after`: (the rule or event that made each, outcome),
/// one per update.
pub fn newly_settled(before: &[Uuid], after: &CaseRecord) -> Vec<(String, PromiseOutcome)> {
    let mut seen: Vec<Uuid> = Vec::new();
    let mut out = Vec::new();
    for m in &after.messages {
        let Some(outcome) = m.promise else { continue };
        let update = m.update.unwrap_or(m.id);
        if before.contains(&m.id) || seen.contains(&update) {
            continue;
        }
        seen.push(update);
        let rule = m.rule.clone().unwrap_or_else(|| m.kind.as_str().to_owned());
        out.push((rule, outcome));
    }
    out
}

/// The ids of `record`'s messages whose promise is settled.
pub fn settled_ids(record: &CaseRecord) -> Vec<Uuid> {
    record
        .messages
        .iter()
        .filter(|m| m.promise.is_some())
        .map(|m| m.id)
        .collect()
}

/// The outcomes of one source's promises under one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub source: String,
    pub rule: String,
    pub kept: u64,
    pub late: u64,
    pub superseded: u64,
    /// Made and not settled yet, whose time is still to come.
    pub open: u64,
    /// Made and not settled, whose time has passed: late already.
    pub overdue: u64,
}

/// A promise kept late: one of an audit's worst.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Worst {
    pub case: String,
    pub rule: String,
    pub late_by_secs: i64,
    pub at: DateTime<Utc>,
}

/// When an audit starts: an RFC 3339 instant, or a span back from `now`
/// (`7d`, `24h`).
pub fn since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let span = humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{text}` is neither an RFC 3339 instant nor a span such as 7d"))?;
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("`{text}` reaches too far back"))
}

/// What `tidings audit` prints and `GET /-/audit` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Audit {
    pub rows: Vec<Tally>,
    /// The promises kept latest, the most late first (at most `WORST`).
    pub worst: Vec<Worst>,
}

/// How many late promises an audit names.
pub const WORST: usize = 10;

/// Counts the promises of `records` settled since `since` (all when
/// `None`), of `source` only when given, and those still open at `now`.
pub fn audit<R: std::borrow::Borrow<CaseRecord>>(
    records: impl IntoIterator<Item = R>,
    since: Option<DateTime<Utc>>,
    source: Option<&str>,
    now: DateTime<Utc>,
) -> Audit {
    let mut rows: std::collections::BTreeMap<(String, String), Tally> = Default::default();
    let mut worst = Vec::new();
    for record in records {
        let record = record.borrow();
        let src = &record.case.source;
        if source.is_some_and(|s| s != src) {
            continue;
        }
        let mut seen: Vec<Uuid> = Vec::new();
        for m in &record.messages {
            let update = m.update.unwrap_or(m.id);
            let made = m.promised_next_update_at;
            let counted = m.promise.is_some() || open(m);
            if !counted || made.is_none() || seen.contains(&update) {
                continue;
            }
            seen.push(update);
            let rule = m.rule.clone().unwrap_or_else(|| m.kind.as_str().to_owned());
            let row = rows
                .entry((src.clone(), rule.clone()))
                .or_insert_with(|| Tally {
                    source: src.clone(),
                    rule: rule.clone(),
                    ..Tally::default()
                });
            match m.promise {
                None if made.is_some_and(|p| p < now) => row.overdue += 1,
                None => row.open += 1,
                Some(o) => {
                    let at = match o {
                        PromiseOutcome::Kept { at }
                        | PromiseOutcome::Late { at, .. }
                        | PromiseOutcome::Superseded { at } => at,
                    };
                    if since.is_some_and(|s| at < s) {
                        continue;
                    }
                    match o {
                        PromiseOutcome::Kept { .. } => row.kept += 1,
                        PromiseOutcome::Superseded { .. } => row.superseded += 1,
                        PromiseOutcome::Late { late_by_secs, .. } => {
                            row.late += 1;
                            worst.push(Worst {
                                case: format!("{src}/{}", record.case.id),
                                rule,
                                late_by_secs,
                                at,
                            });
                        }
                    }
                }
            }
        }
    }
    worst.sort_by_key(|w| std::cmp::Reverse(w.late_by_secs));
    worst.truncate(WORST);
    Audit {
        rows: rows.into_values().collect(),
        worst,
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<16} {:>8} {:>6} {:>10} {:>6} {:>7} {:>8}",
            "source", "rule", "kept", "late", "superseded", "open", "overdue", "kept %"
        )?;
        for r in &self.rows {
            let settled = r.kept + r.late;
            let ratio = if settled == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}", 100.0 * r.kept as f64 / settled as f64)
            };
            writeln!(
                f,
                "{:<16} {:<16} {:>8} {:>6} {:>10} {:>6} {:>7} {:>8}",
                r.source, r.rule, r.kept, r.late, r.superseded, r.open, r.overdue, ratio
            )?;
        }
        if !self.worst.is_empty() {
            writeln!(f, "worst:")?;
            for w in &self.worst {
                writeln!(
                    f,
                    "  {} ({}) late by {} at {}",
                    w.case,
                    w.rule,
                    humantime::format_duration(std::time::Duration::from_secs(
                        w.late_by_secs.max(0) as u64
                    )),
                    w.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, MessageKind};

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_576_000 + h * 3600, 0).expect("an instant")
    }

    fn sent(n: u128, at: i64, promised: Option<i64>) -> MessageRecord {
        let id = Uuid::from_u128(n);
        MessageRecord {
            id,
            kind: MessageKind::Progress,
            template: "progress".into(),
            rule: Some("standard".into()),
            channel: Channel::Email,
            recipient: Default::default(),
            status: DeliveryStatus::Sent,
            attempts: 1,
            due_at: t(at),
            sent_at: Some(t(at)),
            promised_next_update_at: promised.map(t),
            error: None,
            internal: false,
            update: Some(id),
            fallback_for: None,
            covers: Vec::new(),
            provider_id: None,
            provider_status: None,
            promise: None,
        }
    }

    fn record(messages: Vec<MessageRecord>) -> CaseRecord {
        let input: crate::domain::CaseInput = serde_json::from_value(serde_json::json!({
            "subject": "Router keeps rebooting",
            "customer": { "name": "Maria Hernandez", "email": "maria@example.com" },
        }))
        .expect("valid input");
        let defaults = crate::domain::Defaults {
            timezone: chrono_tz::UTC,
            locale: "en".parse().expect("locale"),
        };
        let case = input
            .into_case("C-1".parse().expect("id"), "desk", &defaults, t(0), None)
            .expect("a case");
        CaseRecord {
            v: 1,
            case,
            updated_at: t(0),
            schedule: crate::domain::ScheduleState {
                last_contact_at: t(0),
                next_update_at: None,
                due_at: None,
                rule: None,
                rule_updates: 0,
                escalated: false,
                resolution_sent: false,
                closed_at: None,
            },
            messages,
            idempotency_keys: Vec::new(),
        }
    }

    #[test]
    fn the_next_delivery_keeps_or_breaks_each_promise_made_before_it() {
        let mut r = record(vec![
            sent(1, 0, Some(24)),
            sent(2, 24, Some(48)),
            sent(3, 50, None),
        ]);
        // Within the minute the customer was told: kept.
        let mut on_time = r.clone();
        settle_on_delivery(&mut on_time, Uuid::from_u128(2), t(24) + GRACE);
        assert_eq!(
            on_time.messages[0].promise,
            Some(PromiseOutcome::Kept { at: t(24) + GRACE })
        );
        settle_on_delivery(&mut r, Uuid::from_u128(2), t(24));
        assert_eq!(
            r.messages[0].promise,
            Some(PromiseOutcome::Kept { at: t(24) })
        );
        assert_eq!(r.messages[1].promise, None, "its own promise stays open");
        settle_on_delivery(&mut r, Uuid::from_u128(3), t(50));
        assert_eq!(
            r.messages[1].promise,
            Some(PromiseOutcome::Late {
                at: t(50),
                late_by_secs: 2 * 3600
            })
        );
        let audit = audit([&r], None, None, t(50));
        assert_eq!((audit.rows[0].kept, audit.rows[0].late), (1, 1));
        assert_eq!(audit.worst[0].late_by_secs, 7200);
        assert!(audit.to_string().contains("50.00"), "{audit}");
    }

    #[test]
    fn the_same_update_on_two_channels_is_one_promise() {
        let mut sms = sent(2, 0, Some(24));
        sms.channel = Channel::Sms;
        sms.update = Some(Uuid::from_u128(1));
        let mut r = record(vec![sent(1, 0, Some(24)), sms, sent(3, 10, Some(34))]);
        let before = settled_ids(&r);
        settle_on_delivery(&mut r, Uuid::from_u128(3), t(10));
        assert!(r.messages[..2].iter().all(|m| m.promise.is_some()));
        let new = newly_settled(&before, &r);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(new[0].0, "standard");
    }

    #[test]
    fn a_close_with_nothing_said_supersedes_what_is_open_and_internal_mail_keeps_nothing() {
        let mut internal = sent(2, 5, None);
        internal.internal = true;
        let mut r = record(vec![sent(1, 0, Some(24)), internal]);
        settle_on_delivery(&mut r, Uuid::from_u128(2), t(5));
        assert_eq!(
            r.messages[0].promise, None,
            "an operator's mail is not the customer's"
        );
        let audit_open = audit([&r], None, None, t(5));
        assert_eq!(audit_open.rows[0].open, 1);
        assert_eq!(audit([&r], None, None, t(30)).rows[0].overdue, 1);
        supersede_open(&mut r, t(6));
        assert_eq!(
            r.messages[0].promise,
            Some(PromiseOutcome::Superseded { at: t(6) })
        );
        assert_eq!(
            audit([&r], Some(t(7)), None, t(7)).rows[0].superseded,
            0,
            "before --since"
        );
        assert_eq!(audit([&r], None, Some("other"), t(7)).rows.len(), 0);
    }
}
