//! Failures reported after the send was accepted: a carrier's
//! `undelivered` for an SMS Twilio took. The promise still holds, so the
//! same update goes again on the customer's next channel, once, unless a
//! newer message has taken its place.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Engine;
use crate::domain::{CaseRecord, DeliveryStatus, MessageRecord, OutboxEntry};

impl Engine {
    /// For `failed`, a message of `record` reported undelivered after it
    /// went out: the same update on the next channel the customer allows,
    /// its history entry first. `None` when the update reached the customer
    /// on another channel or is going there, already fell back, is an
    /// internal message or a digest, was superseded by a newer message, or
    /// would promise a time already past.
    pub fn late_fallback(
        &self,
        record: &CaseRecord,
        failed: Uuid,
        now: DateTime<Utc>,
    ) -> Option<(MessageRecord, Option<OutboxEntry>)> {
        self.late_resend(record, failed, now, false)
    }

    /// For `failed`, a message the mail system gave up on for a temporary
    /// reason (a 4.x.x bounce): the same update once more on the same
    /// channel; a resend that fails again falls back to the next channel
    /// instead. `None` as for `late_fallback`.
    pub fn late_retry(
        &self,
        record: &CaseRecord,
        failed: Uuid,
        now: DateTime<Utc>,
    ) -> Option<(MessageRecord, Option<OutboxEntry>)> {
        let again = record
            .messages
            .iter()
            .find(|m| m.id == failed)
            .is_some_and(|m| m.fallback_for.is_none());
        self.late_resend(record, failed, now, again)
    }

    fn late_resend(
        &self,
        record: &CaseRecord,
        failed: Uuid,
        now: DateTime<Utc>,
        same_channel: bool,
    ) -> Option<(MessageRecord, Option<OutboxEntry>)> {
        let m = record.messages.iter().find(|m| m.id == failed)?;
        if m.internal || !m.covers.is_empty() {
            return None;
        }
        if m.promised_next_update_at.is_some_and(|p| p <= now) {
            return None;
        }
        let update = m.update.unwrap_or(m.id);
        let mut tried = vec![m.channel];
        for other in &record.messages {
            // Each recipient's messages stand alone.
            if other.id == m.id || other.internal || other.recipient != m.recipient {
                continue;
            }
            if other.update.unwrap_or(other.id) == update {
                if matches!(other.status, DeliveryStatus::Sent | DeliveryStatus::Pending) {
                    return None;
                }
                tried.push(other.channel);
            } else if other.due_at > m.due_at {
                // A newer update took its place: the customer hears that.
                return None;
            }
        }
        let channel = if same_channel {
            m.channel
        } else {
            self.next_channel_for(&record.case, m.recipient, &tried)?
        };
        let (mut msg, entry) = self.message(
            &[record],
            m.recipient,
            m.kind,
            &m.template,
            m.rule.clone(),
            channel,
            now,
            m.promised_next_update_at,
            None,
            update,
        );
        msg.fallback_for = Some(m.id);
        Some((msg, entry))
    }
}
