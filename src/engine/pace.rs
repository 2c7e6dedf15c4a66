//! Which of the due messages go now when a channel keeps a minimum gap
//! between two messages to one recipient: one per recipient at a time,
//! acknowledgements and other event messages before progress updates and
//! digests, then the oldest first. The rest wait for the recipient's turn
//! (`runtime::dispatch` holds them and tries again when the send in flight
//! is recorded); without a gap, nothing waits.

use std::collections::HashSet;

use crate::domain::{Channel, MessageKind, OutboxEntry};

/// A recipient on a channel, as the outbox names it.
pub type Recipient = (Channel, String);

/// The recipient of an entry.
pub fn recipient(e: &OutboxEntry) -> Recipient {
    (e.channel, e.to.trim().to_lowercase())
}

/// Lower goes first: what the customer must hear (the acknowledgement, a
/// resolution, a note, a status change) before the next progress update.
fn rank(e: &OutboxEntry) -> u8 {
    if e.internal {
        0
    } else if e.kind == MessageKind::Progress {
        2
    } else {
        1
    }
}

/// Splits `due` (earliest first) into what goes now and what waits.
/// `paced(channel)` says whether the channel keeps a gap; `in_flight`
/// holds the recipients with a send under way.
pub fn choose(
    due: Vec<OutboxEntry>,
    paced: impl Fn(Channel) -> bool,
    in_flight: &HashSet<Recipient>,
) -> (Vec<OutboxEntry>, Vec<OutboxEntry>) {
    let mut order: Vec<(usize, OutboxEntry)> = due.into_iter().enumerate().collect();
    // Stable: among equals the outbox's own order (due instant, then id).
    order.sort_by_key(|(i, e)| (rank(e), *i));
    let mut taken: HashSet<Recipient> = HashSet::new();
    let (mut go, mut wait) = (Vec::new(), Vec::new());
    for (_, e) in order {
        if e.internal || !paced(e.channel) {
            go.push(e);
            continue;
        }
        let who = recipient(&e);
        if in_flight.contains(&who) || !taken.insert(who) {
            wait.push(e);
        } else {
            go.push(e);
        }
    }
    (go, wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CaseKey, Content, SmsText};
    use uuid::Uuid;

    fn e(n: u128, kind: MessageKind, to: &str, channel: Channel) -> OutboxEntry {
        OutboxEntry {
            v: 1,
            id: Uuid::from_u128(n),
            case: CaseKey::new("helpdesk", format!("C-{n}").parse().expect("id")),
            channel,
            recipient: Default::default(),
            to_name: String::new(),
            to: to.into(),
            content: Content::Sms(SmsText { text: "x".into() }),
            message_id: String::new(),
            attempts: 0,
            next_attempt_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("valid"),
            also: Vec::new(),
            tz: None,
            update: None,
            kind,
            template: kind.to_string(),
            rule: None,
            promised: None,
            internal: false,
            unsubscribe_url: None,
            thread: None,
            reply_to: None,
        }
    }

    fn ids(v: &[OutboxEntry]) -> Vec<u128> {
        v.iter().map(|e| e.id.as_u128()).collect()
    }

    #[test]
    fn one_message_per_recipient_acknowledgements_first_then_oldest() {
        let due = vec![
            e(1, MessageKind::Progress, "+48601234567", Channel::Sms),
            e(2, MessageKind::Created, "+48601234567", Channel::Sms),
            e(3, MessageKind::Created, "+48601234567", Channel::Sms),
            e(4, MessageKind::Progress, "+12125550143", Channel::Sms),
            e(
                5,
                MessageKind::Progress,
                "maria@example.com",
                Channel::Email,
            ),
            e(
                6,
                MessageKind::Progress,
                "maria@example.com",
                Channel::Email,
            ),
        ];
        let sms_only = |c: Channel| c == Channel::Sms;
        let (go, wait) = choose(due, sms_only, &HashSet::new());
        // The oldest acknowledgement of the first number, the other
        // number's update, and email (no gap) all at once.
        assert_eq!(ids(&go), [2, 4, 5, 6]);
        assert_eq!(ids(&wait), [3, 1]);
    }

    #[test]
    fn a_recipient_with_a_send_in_flight_waits() {
        let due = vec![
            e(1, MessageKind::Created, "+48601234567", Channel::Sms),
            e(2, MessageKind::Created, "+12125550143", Channel::Sms),
        ];
        let busy: HashSet<Recipient> = [(Channel::Sms, "+48601234567".to_owned())].into();
        let (go, wait) = choose(due, |_| true, &busy);
        assert_eq!((ids(&go), ids(&wait)), (vec![2], vec![1]));
        // Escalations to operations never wait.
        let mut esc = e(3, MessageKind::Escalation, "+48601234567", Channel::Sms);
        esc.internal = true;
        let (go, wait) = choose(vec![esc], |_| true, &busy);
        assert_eq!((ids(&go), wait.len()), (vec![3], 0));
    }
}
