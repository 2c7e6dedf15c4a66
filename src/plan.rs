//! Planning: what a case change means for the customer.
//!
//! Given a case record, what happened (a new case, an event, the clock
//! reaching a due instant) and `now`, these functions return the new record
//! and the rendered messages to put in the outbox. They are pure: no I/O, no
//! clock, no storage; the caller commits the result atomically.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Company;
use crate::domain::{Case, Channel, Event, Note, Status};
use crate::render::{MessageContext, Templates, one_line};
use crate::rules::{RuleSet, Trigger};
use crate::schedule::next_due;
use crate::store::{
    CaseRecord, DeliveryStatus, MessageRecord, OutboxEntry, RECORD_VERSION, ScheduleState,
};

/// Rules and templates: everything planning needs besides the case.
#[derive(Debug)]
pub struct Engine {
    pub rules: RuleSet,
    pub templates: Templates,
    pub company: Company,
    pub public_url: String,
    /// The domain part of `Message-ID`s, taken from the sender address.
    pub message_id_domain: String,
    /// Channels this daemon can send on.
    pub channels: Vec<Channel>,
}

/// The outcome of planning: the record to store and the messages to queue.
#[derive(Debug, Default)]
pub struct Planned {
    pub record: Option<CaseRecord>,
    pub outbox: Vec<OutboxEntry>,
}

/// Why a message goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event(Trigger),
    Progress,
    Escalation,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Event(t) => t.as_str(),
            Self::Progress => "progress",
            Self::Escalation => "escalation",
        }
    }
}

impl Engine {
    /// A case arrives (new) or is replaced (existing).
    pub fn upsert(&self, existing: Option<CaseRecord>, case: Case, now: DateTime<Utc>) -> Planned {
        match existing {
            None => {
                let mut record = CaseRecord {
                    v: RECORD_VERSION,
                    updated_at: now,
                    schedule: ScheduleState {
                        last_contact_at: now,
                        next_update_at: None,
                        due_at: None,
                        rule: None,
                        rule_updates: 0,
                        escalated: false,
                        resolution_sent: false,
                    },
                    messages: Vec::new(),
                    idempotency_keys: Vec::new(),
                    case,
                };
                let mut outbox = Vec::new();
                if matches!(record.case.status, Status::Resolved | Status::Closed) {
                    self.resolve(&mut record, now, &mut outbox);
                } else {
                    self.reschedule(&mut record, now);
                    self.event_message(&mut record, Trigger::Created, now, &mut outbox);
                }
                Planned {
                    record: Some(record),
                    outbox,
                }
            }
            Some(mut record) => {
                let old_status = record.case.status;
                let new_status = case.status;
                record.case = case;
                record.updated_at = now;
                let mut outbox = Vec::new();
                self.status_changed(&mut record, old_status, new_status, now, &mut outbox);
                Planned {
                    record: Some(record),
                    outbox,
                }
            }
        }
    }

    /// What a progress update for `case` would look like if it went out at
    /// `now`: the rule that governs it (or `rule`), rendered with the promise
    /// it would make. Used by `tidings preview`.
    pub fn preview(
        &self,
        case: Case,
        rule: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(String, Option<String>, OutboxEntry), String> {
        let Planned { record, .. } = self.upsert(None, case, now);
        let mut record = record.ok_or("no record")?;
        let rule = match rule {
            Some(name) => Some(
                self.rules
                    .rule(name)
                    .ok_or_else(|| format!("no rule named `{name}`"))?,
            ),
            None => self.rules.matching(&record.case, now),
        };
        let (template, channels, rule_name) = match rule {
            Some(r) => (r.template.clone(), r.channels.clone(), Some(r.name.clone())),
            None => {
                let on = self
                    .rules
                    .on(Trigger::Created)
                    .ok_or("no rule matches this case and there is no on.created message")?;
                (on.template.clone(), on.channels.clone(), None)
            }
        };
        if let Some(name) = &rule_name {
            record.schedule.rule = Some(name.clone());
        }
        let channel = self
            .allowed(&record.case, &channels)
            .into_iter()
            .next()
            .ok_or("the customer allows none of the rule's channels that this daemon sends")?;
        let promised = record.schedule.next_update_at;
        let (msg, entry) = self.message(
            &record,
            Kind::Progress,
            &template,
            rule_name,
            channel,
            now,
            promised,
            None,
        );
        let entry = entry.ok_or_else(|| msg.error.unwrap_or_default())?;
        Ok((template, msg.rule, entry))
    }

    /// A ticket-system event on an existing case.
    pub fn event(&self, mut record: CaseRecord, event: Event, now: DateTime<Utc>) -> Planned {
        let mut outbox = Vec::new();
        record.updated_at = now;
        match event {
            Event::Note { body, author } => {
                record.case.latest_note = Some(Note {
                    body,
                    author,
                    at: now,
                });
                if record.case.status.is_active() && self.rules.on(Trigger::Note).is_some() {
                    record.schedule.last_contact_at = now;
                    self.reschedule(&mut record, now);
                    self.event_message(&mut record, Trigger::Note, now, &mut outbox);
                }
            }
            Event::AgentReply => {
                record.schedule.last_contact_at = now;
                self.reschedule(&mut record, now);
            }
            Event::Status(status) => {
                let old = record.case.status;
                record.case.status = status;
                self.status_changed(&mut record, old, status, now, &mut outbox);
            }
            Event::Eta(eta) => {
                record.case.eta = eta;
                self.reschedule(&mut record, now);
            }
        }
        Planned {
            record: Some(record),
            outbox,
        }
    }

    /// The clock reached the case's due instant: send what is due and plan
    /// the next look.
    pub fn due(&self, mut record: CaseRecord, now: DateTime<Utc>) -> Planned {
        let mut outbox = Vec::new();
        self.reschedule(&mut record, now);
        if let Some(rule) = record
            .schedule
            .rule
            .as_deref()
            .and_then(|name| self.rules.rule(name))
        {
            if let Some(esc) = &rule.escalate
                && !record.schedule.escalated
                && record.case.created_at + to_chrono(esc.after) <= now
            {
                record.schedule.escalated = true;
                let promised = record.schedule.next_update_at;
                let msg = self.message(
                    &record,
                    Kind::Escalation,
                    &esc.template,
                    Some(rule.name.clone()),
                    Channel::Email,
                    now,
                    promised,
                    Some((String::new(), esc.to.to_string())),
                );
                push(&mut record, msg, &mut outbox);
            }
            if record.schedule.next_update_at.is_some_and(|t| t <= now) {
                record.schedule.rule_updates += 1;
                record.schedule.last_contact_at = now;
                let template = rule.template.clone();
                let channels = rule.channels.clone();
                let rule_name = rule.name.clone();
                self.reschedule(&mut record, now);
                let promised = record.schedule.next_update_at;
                for channel in self.allowed(&record.case, &channels) {
                    let msg = self.message(
                        &record,
                        Kind::Progress,
                        &template,
                        Some(rule_name.clone()),
                        channel,
                        now,
                        promised,
                        None,
                    );
                    push(&mut record, msg, &mut outbox);
                }
            }
        }
        self.reschedule(&mut record, now);
        record.updated_at = now;
        Planned {
            record: Some(record),
            outbox,
        }
    }

    fn status_changed(
        &self,
        record: &mut CaseRecord,
        old: Status,
        new: Status,
        now: DateTime<Utc>,
        outbox: &mut Vec<OutboxEntry>,
    ) {
        if old == new {
            self.reschedule(record, now);
            return;
        }
        if matches!(new, Status::Resolved) {
            self.resolve(record, now, outbox);
        } else {
            self.reschedule(record, now);
            if self.rules.on(Trigger::Status).is_some() && new != Status::Closed {
                record.schedule.last_contact_at = now;
                self.reschedule(record, now);
                self.event_message(record, Trigger::Status, now, outbox);
            }
        }
    }

    /// The resolution message goes out once in a case's life, never twice.
    fn resolve(&self, record: &mut CaseRecord, now: DateTime<Utc>, outbox: &mut Vec<OutboxEntry>) {
        self.reschedule(record, now);
        if record.schedule.resolution_sent {
            return;
        }
        record.schedule.resolution_sent = true;
        record.schedule.last_contact_at = now;
        self.event_message(record, Trigger::Resolved, now, outbox);
    }

    fn event_message(
        &self,
        record: &mut CaseRecord,
        trigger: Trigger,
        now: DateTime<Utc>,
        outbox: &mut Vec<OutboxEntry>,
    ) {
        let Some(on) = self.rules.on(trigger) else {
            return;
        };
        let promised = record.schedule.next_update_at;
        for channel in self.allowed(&record.case, &on.channels) {
            let msg = self.message(
                record,
                Kind::Event(trigger),
                &on.template,
                None,
                channel,
                now,
                promised,
                None,
            );
            push(record, msg, outbox);
        }
    }

    /// The channels of a rule that the customer allows and we can send on,
    /// in the rule's order.
    fn allowed(&self, case: &Case, channels: &[Channel]) -> Vec<Channel> {
        channels
            .iter()
            .copied()
            .filter(|c| self.channels.contains(c) && case.customer.reachable_by(*c))
            .collect()
    }

    /// Recomputes which rule applies and when the case is next due.
    pub fn reschedule(&self, record: &mut CaseRecord, now: DateTime<Utc>) {
        let case = &record.case;
        let s = &mut record.schedule;
        let rule = self.rules.matching(case, now);
        let name = rule.map(|r| r.name.clone());
        if name != s.rule {
            s.rule = name;
            s.rule_updates = 0;
        }
        s.next_update_at = rule.and_then(|r| {
            if r.max_updates.is_some_and(|max| s.rule_updates >= max) {
                return None;
            }
            // A rule with no channel the customer can use plans nothing.
            if !r
                .channels
                .iter()
                .any(|c| self.channels.contains(c) && case.customer.reachable_by(*c))
            {
                return None;
            }
            next_due(
                &r.cadence,
                r.quiet_hours.as_ref(),
                case.customer.timezone,
                s.last_contact_at,
            )
        });
        let escalation_at = rule.and_then(|r| {
            let esc = r.escalate.as_ref()?;
            (!s.escalated).then(|| case.created_at + to_chrono(esc.after))
        });
        s.due_at = match (s.next_update_at, escalation_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &self,
        record: &CaseRecord,
        kind: Kind,
        template: &str,
        rule: Option<String>,
        channel: Channel,
        now: DateTime<Utc>,
        promised: Option<DateTime<Utc>>,
        internal_to: Option<(String, String)>,
    ) -> (MessageRecord, Option<OutboxEntry>) {
        let id = Uuid::now_v7();
        let case = &record.case;
        let mut msg = MessageRecord {
            id,
            kind: kind.as_str().to_owned(),
            template: template.to_owned(),
            rule,
            channel,
            status: DeliveryStatus::Pending,
            attempts: 0,
            due_at: now,
            sent_at: None,
            promised_next_update_at: if internal_to.is_some() {
                None
            } else {
                promised
            },
            error: None,
            internal: internal_to.is_some(),
        };
        let ctx = MessageContext::new(case, promised, now, &self.company, String::new());
        let locale = &case.customer.locale;
        let rendered = match channel {
            Channel::Email => self.templates.render_email(template, locale, &ctx),
            Channel::Sms => unreachable!("SMS is not among the enabled channels"),
        };
        let content = match rendered {
            Ok(c) => c,
            Err(e) => {
                // A broken template must not stop the schedule: the failure is
                // recorded on the message for the operator to see.
                msg.status = DeliveryStatus::Failed;
                msg.error = Some(e.to_string());
                return (msg, None);
            }
        };
        let (to_name, to) = internal_to.unwrap_or_else(|| {
            (
                one_line(&case.customer.name),
                case.customer
                    .email
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
        });
        let entry = OutboxEntry {
            v: RECORD_VERSION,
            id,
            case: record.key(),
            channel,
            to_name,
            to,
            content,
            message_id: format!("<{id}@{}>", self.message_id_domain),
            attempts: 0,
            next_attempt_at: now,
        };
        (msg, Some(entry))
    }
}

fn push(
    record: &mut CaseRecord,
    (msg, entry): (MessageRecord, Option<OutboxEntry>),
    outbox: &mut Vec<OutboxEntry>,
) {
    record.messages.push(msg);
    outbox.extend(entry);
}

fn to_chrono(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
