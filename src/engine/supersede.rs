//! At most one progress update per case, recipient and channel waits to be sent: a
//! newer one supersedes the unsent older one, so a relay slower than the
//! rules (or down for a while) leaves one message per case and channel in
//! the outbox, not a growing backlog that arrives in a burst of stale
//! promises.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{CaseRecord, DeliveryStatus, MessageKind, MessageRecord, OutboxEntry};

/// Why a superseded message was not sent.
pub const SUPERSEDED: &str = "superseded by a newer update before it could be sent";

/// Cancels the pending progress updates of `record` that a fresh one (in
/// `fresh`, the entries just planned) replaces on the same channel, and
/// returns their ids: their outbox entries go in the same commit. A digest
/// still pending is left alone (other cases' histories hold it too).
pub fn supersede(record: &mut CaseRecord, fresh: &[OutboxEntry]) -> Vec<Uuid> {
    let new_ids: HashSet<Uuid> = fresh.iter().map(|e| e.id).collect();
    // Per recipient (the customer, each CC) and channel.
    let channels: Vec<_> = fresh
        .iter()
        .filter(|e| e.kind == MessageKind::Progress && !e.internal)
        .map(|e| (e.recipient, e.channel))
        .collect();
    let mut gone = Vec::new();
    for m in &mut record.messages {
        if m.status == DeliveryStatus::Pending
            && m.kind == MessageKind::Progress
            && !m.internal
            && m.covers.is_empty()
            && channels.contains(&(m.recipient, m.channel))
            && !new_ids.contains(&m.id)
        {
            m.status = DeliveryStatus::Cancelled;
            m.error = Some(SUPERSEDED.to_owned());
            gone.push(m.id);
        }
    }
    gone
}

/// Whether a progress update has gone stale before it could be sent: the
/// time it promises has passed, so the next update is already due and
/// will say more (and promise a time still ahead).
pub fn stale(kind: MessageKind, promised: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    kind == MessageKind::Progress && promised.is_some_and(|p| p <= now)
}

/// Whether `m` is an update that was superseded.
pub fn was_superseded(m: &MessageRecord) -> bool {
    m.status == DeliveryStatus::Cancelled && m.error.as_deref() == Some(SUPERSEDED)
}

/// A case whose pending digest was cancelled is still owed the update the
/// digest carried: unless someone reached the customer since, its schedule
/// goes back to the last message that did go out, and the scheduler looks
/// at it at once (it gets its own update now).
pub fn owe_update(r: &mut CaseRecord, digest_at: DateTime<Utc>, now: DateTime<Utc>) {
    let s = &mut r.schedule;
    if s.last_contact_at > digest_at {
        return;
    }
    s.last_contact_at = r
        .messages
        .iter()
        .filter(|m| !m.internal && m.status == DeliveryStatus::Sent)
        .map(|m| m.sent_at.unwrap_or(m.due_at))
        .max()
        .unwrap_or(r.case.created_at);
    s.rule_updates = s.rule_updates.saturating_sub(1);
    s.due_at = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CaseKey, Channel, Content, SmsText};

    fn t(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).expect("valid")
    }

    fn msg(n: u128, kind: MessageKind, channel: Channel, status: DeliveryStatus) -> MessageRecord {
        MessageRecord {
            id: Uuid::from_u128(n),
            kind,
            template: kind.to_string(),
            rule: Some("default".into()),
            channel,
            recipient: Default::default(),
            status,
            attempts: 0,
            due_at: t(0),
            sent_at: None,
            promised_next_update_at: Some(t(60)),
            error: None,
            internal: false,
            update: None,
            fallback_for: None,
            covers: Vec::new(),
            provider_id: None,
            provider_status: None,
            promise: None,
        }
    }

    fn entry(m: &MessageRecord) -> OutboxEntry {
        OutboxEntry {
            v: 1,
            id: m.id,
            case: CaseKey::new("helpdesk", "C-1".parse().expect("id")),
            channel: m.channel,
            recipient: Default::default(),
            to_name: String::new(),
            to: "+48601234567".into(),
            content: Content::Sms(SmsText { text: "x".into() }),
            message_id: String::new(),
            attempts: 0,
            next_attempt_at: t(0),
            also: Vec::new(),
            tz: None,
            update: None,
            kind: m.kind,
            template: m.template.clone(),
            rule: None,
            promised: m.promised_next_update_at,
            internal: false,
            unsubscribe_url: None,
            thread: None,
            reply_to: None,
        }
    }

    fn record(messages: Vec<MessageRecord>) -> CaseRecord {
        let mut r: CaseRecord = serde_json::from_value(serde_json::json!({
            "v": 1,
            "case": {
                "id": "C-1", "source": "helpdesk", "subject": "Router",
                "status": "open", "priority": "normal",
                "customer": { "name": "Maria", "email": "maria@example.com",
                    "phone": null, "timezone": "UTC", "locale": "en",
                    "channels": ["email"] },
                "assignee": null, "eta": null, "tags": [], "fields": {},
                "latest_note": null, "created_at": "2027-01-15T08:00:00Z"
            },
            "updated_at": "2027-01-15T08:00:00Z",
            "schedule": { "last_contact_at": "2027-01-15T08:00:00Z",
                "next_update_at": null, "due_at": null, "rule": null,
                "rule_updates": 0, "escalated": false, "resolution_sent": false },
            "messages": []
        }))
        .expect("a record");
        r.messages = messages;
        r
    }

    #[test]
    fn a_fresh_update_supersedes_the_pending_one_on_its_channel_only() {
        use DeliveryStatus::{Pending, Sent};
        let old_sms = msg(1, MessageKind::Progress, Channel::Sms, Pending);
        let old_email = msg(2, MessageKind::Progress, Channel::Email, Pending);
        let sent_sms = msg(3, MessageKind::Progress, Channel::Sms, Sent);
        let ack = msg(4, MessageKind::Created, Channel::Sms, Pending);
        let mut digest = msg(5, MessageKind::Progress, Channel::Sms, Pending);
        digest.covers = vec!["C-1".into(), "C-2".into()];
        let fresh = msg(6, MessageKind::Progress, Channel::Sms, Pending);
        let mut r = record(vec![
            old_sms,
            old_email,
            sent_sms,
            ack,
            digest,
            fresh.clone(),
        ]);
        let gone = supersede(&mut r, &[entry(&fresh)]);
        assert_eq!(gone, vec![Uuid::from_u128(1)]);
        let status: Vec<_> = r.messages.iter().map(|m| m.status).collect();
        assert_eq!(
            status,
            [
                DeliveryStatus::Cancelled,
                Pending,
                Sent,
                Pending,
                Pending,
                Pending
            ]
        );
        assert!(was_superseded(&r.messages[0]));
        assert!(!was_superseded(&r.messages[1]));
        // An acknowledgement or other event message supersedes nothing.
        let mut r2 = record(vec![msg(1, MessageKind::Progress, Channel::Sms, Pending)]);
        let ack = msg(7, MessageKind::Created, Channel::Sms, Pending);
        assert!(supersede(&mut r2, &[entry(&ack)]).is_empty());
    }

    #[test]
    fn a_progress_update_whose_promise_has_passed_is_stale() {
        assert!(stale(MessageKind::Progress, Some(t(0)), t(0)));
        assert!(stale(MessageKind::Progress, Some(t(0)), t(1)));
        assert!(!stale(MessageKind::Progress, Some(t(2)), t(1)));
        assert!(!stale(MessageKind::Progress, None, t(1)));
        assert!(!stale(MessageKind::Created, Some(t(0)), t(1)));
    }
}
