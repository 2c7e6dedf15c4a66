//! Planning: what a case change means for the customer.
//!
//! Given a case record, what happened (a new case, an event, the clock
//! reaching a due instant) and `now`, these functions return the new record
//! and the rendered messages to put in the outbox. They are pure: no I/O, no
//! clock, no storage; the caller commits the result atomically.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Company;
use crate::domain::clock::SharedIds;
use crate::domain::{
    Case, Channel, Content, Customer, Event, MessageKind, Note, Recipient, SmsText, Status,
};
use crate::domain::{
    CaseKey, CaseRecord, DeliveryStatus, MessageRecord, OutboxEntry, RECORD_VERSION, ScheduleState,
    scoped_contact_of,
};
use crate::engine::render::{MessageContext, Templates, one_line};
use crate::engine::rules::{RuleSet, Trigger};
use crate::engine::schedule::{QuietHours, first_allowed_all, next_due};

/// The template digests are rendered with.
pub const DIGEST_TEMPLATE: &str = "digest";

/// The most cases one digest covers; more go in further digests.
pub const MAX_DIGEST_CASES: usize = 20;

/// The largest digest (text and HTML together); a larger one is not sent,
/// its cases get their own messages.
pub const MAX_DIGEST_BYTES: usize = 256 * 1024;

/// One case of a group as planned: the record to store (if it changed)
/// and the outbox entries to commit with it.
pub type PlannedCase = (Option<CaseRecord>, Vec<OutboxEntry>);

/// A digest that could not be made; its cases got their own messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFallback {
    pub channel: Channel,
    pub cases: usize,
    pub reason: String,
}

/// The size of a rendered message.
fn content_len(c: &Content) -> usize {
    match c {
        Content::Email(e) => {
            e.subject.len() + e.text.len() + e.html.as_ref().map_or(0, String::len)
        }
        Content::Sms(s) => s.text.len(),
        Content::WhatsApp(w) => w.body.len(),
    }
}

/// Rules and templates: everything planning needs besides the case.
#[derive(Debug)]
pub struct Engine {
    pub rules: RuleSet,
    pub templates: Templates,
    pub company: Company,
    pub public_url: String,
    /// The domain part of `Message-ID`s, taken from the sender address.
    pub message_id_domain: String,
    /// `email.reply_to`: the Reply-To address, `{case_id}` replaced.
    pub reply_to: Option<String>,
    /// Channels this daemon can send on.
    pub channels: Vec<Channel>,
    /// Recipient-local hours with no message, per channel.
    pub email_quiet: Option<QuietHours>,
    pub sms_quiet: Option<QuietHours>,
    pub whatsapp_quiet: Option<QuietHours>,
    pub max_segments: usize,
    pub consent: ConsentKeys,
    /// Where message and update ids come from (fresh UUIDv7s in the
    /// daemon, a counter in tests).
    pub ids: SharedIds,
}

/// The keys behind contacts, unsubscribe links and case page links (see
/// `store`), and how long a page link outlives its case.
#[derive(Clone, Default)]
pub struct ConsentKeys {
    /// The store's contact salt.
    pub salt: [u8; 32],
    /// Signs unsubscribe and case page links.
    pub unsubscribe_key: Vec<u8>,
    /// The key before the last rotation: its links still open.
    pub previous_key: Vec<u8>,
    /// A case page link stays valid this long after the case closes (or
    /// after a fresh link was issued).
    pub link_valid_after_close: std::time::Duration,
}

impl ConsentKeys {
    /// The keys that open a link: the current one, then the previous one.
    pub fn opening_keys(&self) -> [&[u8]; 2] {
        [&self.unsubscribe_key, &self.previous_key]
    }
}

impl std::fmt::Debug for ConsentKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsentKeys(..)")
    }
}

/// A progress update that is due, before it is rendered: planning a group
/// of cases collects these first, so that one customer's updates can go
/// out as one digest.
#[derive(Debug, Clone)]
struct Intent {
    template: String,
    rule: String,
    channels: Vec<Channel>,
    promised: Option<DateTime<Utc>>,
}

/// The outcome of planning: the record to store and the messages to queue.
#[derive(Debug, Default)]
pub struct Planned {
    pub record: Option<CaseRecord>,
    pub outbox: Vec<OutboxEntry>,
}

impl From<Trigger> for MessageKind {
    fn from(t: Trigger) -> Self {
        match t {
            Trigger::Created => Self::Created,
            Trigger::Resolved => Self::Resolved,
            Trigger::Note => Self::Note,
            Trigger::Status => Self::Status,
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
                        closed_at: None,
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
                let prefs = std::mem::take(&mut record.case.prefs);
                record.case = case;
                record.case.prefs = prefs;
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
        channel: Option<Channel>,
        now: DateTime<Utc>,
    ) -> Result<(String, Option<String>, OutboxEntry), String> {
        let (template, rule, mut each) = self.preview_each(case, rule, channel, now)?;
        let (_, customer) = each.remove(0);
        Ok((template, rule, customer?))
    }

    /// `preview` for everyone on the case: the customer first, then each
    /// CC, each on the channel asked for (or their first the rule sends),
    /// in their own language and zone; or why they get nothing.
    #[allow(clippy::type_complexity)]
    pub fn preview_each(
        &self,
        case: Case,
        rule: Option<&str>,
        channel: Option<Channel>,
        now: DateTime<Utc>,
    ) -> Result<
        (
            String,
            Option<String>,
            Vec<(Recipient, Result<OutboxEntry, String>)>,
        ),
        String,
    > {
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
        let promised = record.schedule.next_update_at;
        let update = self.ids.next_id();
        let whos: Vec<Recipient> = record.case.recipients().map(|(w, _)| w).collect();
        let mut each = Vec::new();
        for who in whos {
            let allowed = self.allowed_to(&record.case, who, &channels);
            let whom = if who.is_customer() {
                "this customer".to_owned()
            } else {
                who.to_string()
            };
            let chosen = match channel {
                Some(c) if allowed.contains(&c) => Ok(c),
                Some(c) => Err(format!(
                    "the rule does not send {} to {whom} (allowed: {})",
                    c.as_str(),
                    allowed
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                None => allowed.first().copied().ok_or_else(|| {
                    if who.is_customer() {
                        "the customer allows none of the rule's channels that this daemon sends"
                            .to_owned()
                    } else {
                        format!("{who} allows none of the rule's channels that this daemon sends")
                    }
                }),
            };
            let entry = chosen.and_then(|c| {
                let (msg, entry) = self.message(
                    &[&record],
                    who,
                    MessageKind::Progress,
                    &template,
                    rule_name.clone(),
                    c,
                    now,
                    promised,
                    None,
                    update,
                );
                entry.ok_or_else(|| msg.error.unwrap_or_default())
            });
            each.push((who, entry));
        }
        Ok((template, rule_name, each))
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
    pub fn due(&self, record: CaseRecord, now: DateTime<Utc>) -> Planned {
        let mut group = self.due_group(vec![record], now, now);
        let (record, outbox) = group.pop().unwrap_or_default();
        Planned { record, outbox }
    }

    /// Plans several cases of one customer at once: every case whose
    /// progress update falls due by `horizon` gets it now, and updates that
    /// go to the same address on the same channel become one digest.
    /// Returns each record with the outbox entries to commit with it.
    pub fn due_group(
        &self,
        records: Vec<CaseRecord>,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Vec<PlannedCase> {
        self.due_group_reporting(records, now, horizon).0
    }

    /// `due_group`, and the digests that could not be made (a template
    /// that failed or a message too large), whose cases got their own
    /// messages instead: for the caller to log and count.
    pub fn due_group_reporting(
        &self,
        records: Vec<CaseRecord>,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> (Vec<PlannedCase>, Vec<DigestFallback>) {
        let mut planned: Vec<(CaseRecord, Vec<OutboxEntry>, Option<Intent>)> = records
            .into_iter()
            .map(|r| self.due_one(r, now, horizon))
            .collect();
        // Which (channel, address) each intent goes to.
        let mut buckets: Vec<((Channel, String), Vec<usize>)> = Vec::new();
        for (i, (record, _, intent)) in planned.iter().enumerate() {
            let Some(intent) = intent else { continue };
            for channel in self.allowed(&record.case, &intent.channels) {
                let addr = address(&record.case.customer, channel);
                match buckets
                    .iter_mut()
                    .find(|(k, _)| *k == (channel, addr.clone()))
                {
                    Some((_, v)) => v.push(i),
                    None => buckets.push(((channel, addr), vec![i])),
                }
            }
        }
        let update = self.ids.next_id();
        let mut fallbacks = Vec::new();
        // Each case's own update, when it does not go in a digest.
        let single = |planned: &mut Vec<(CaseRecord, Vec<OutboxEntry>, Option<Intent>)>,
                      i: usize,
                      who: Recipient,
                      channel: Channel| {
            let (record, outbox, intent) = &mut planned[i];
            let Some(intent) = intent.as_ref() else {
                return;
            };
            let msg = self.message(
                &[&*record],
                who,
                MessageKind::Progress,
                &intent.template,
                Some(intent.rule.clone()),
                channel,
                now,
                intent.promised,
                None,
                update,
            );
            push(record, msg, outbox);
        };
        for ((channel, _), members) in buckets {
            if members.len() == 1 || !self.templates.has(DIGEST_TEMPLATE, channel) {
                for i in members {
                    single(&mut planned, i, Recipient::Customer, channel);
                }
                continue;
            }
            for chunk in members.chunks(MAX_DIGEST_CASES) {
                if chunk.len() == 1 {
                    single(&mut planned, chunk[0], Recipient::Customer, channel);
                    continue;
                }
                // A digest: the earliest promise among the cases is the one it makes.
                let promised = chunk
                    .iter()
                    .filter_map(|i| planned[*i].2.as_ref().and_then(|x| x.promised))
                    .min();
                let rule = planned[chunk[0]].2.as_ref().map(|x| x.rule.clone());
                let (msg, entry) = {
                    let group: Vec<&CaseRecord> = chunk.iter().map(|i| &planned[*i].0).collect();
                    self.message(
                        &group,
                        Recipient::Customer,
                        MessageKind::Progress,
                        DIGEST_TEMPLATE,
                        rule,
                        channel,
                        now,
                        promised,
                        None,
                        update,
                    )
                };
                let problem = match &entry {
                    None => msg.error.clone().or_else(|| Some("not rendered".into())),
                    Some(e) if content_len(&e.content) > MAX_DIGEST_BYTES => Some(format!(
                        "{} bytes, more than {MAX_DIGEST_BYTES}",
                        content_len(&e.content)
                    )),
                    Some(_) => None,
                };
                if let Some(reason) = problem {
                    // Every case still gets its update, on its own.
                    fallbacks.push(DigestFallback {
                        channel,
                        cases: chunk.len(),
                        reason,
                    });
                    for i in chunk {
                        single(&mut planned, *i, Recipient::Customer, channel);
                    }
                    continue;
                }
                for (n, i) in chunk.iter().enumerate() {
                    let (record, outbox, _) = &mut planned[*i];
                    record.messages.push(msg.clone());
                    if n == 0 {
                        outbox.extend(entry.clone());
                    }
                }
            }
        }
        // The people copied on a case get its update on their own, never
        // in a digest: a digest is the customer's view of their cases.
        for i in 0..planned.len() {
            let (record, _, intent) = &planned[i];
            let Some(intent) = intent else { continue };
            let mut sends = self.sends(&record.case, &intent.channels);
            sends.retain(|(who, _)| !who.is_customer());
            for (who, channel) in sends {
                single(&mut planned, i, who, channel);
            }
        }
        let planned = planned.into_iter().map(|(r, o, _)| (Some(r), o)).collect();
        (planned, fallbacks)
    }

    /// One case's part of `due_group`: escalations rendered at once, the
    /// progress update returned as an intent.
    fn due_one(
        &self,
        mut record: CaseRecord,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> (CaseRecord, Vec<OutboxEntry>, Option<Intent>) {
        let mut outbox = Vec::new();
        let mut intent = None;
        self.reschedule(&mut record, now);
        if let Some(rule) = record
            .schedule
            .rule
            .as_deref()
            .and_then(|name| self.rules.rule(name))
        {
            if let Some(esc) = &rule.escalate
                && !record.schedule.escalated
                && record
                    .case
                    .created_at
                    .checked_add_signed(to_chrono(esc.after))
                    .is_some_and(|at| at <= now)
            {
                record.schedule.escalated = true;
                let promised = record.schedule.next_update_at;
                let msg = self.message(
                    &[&record],
                    Recipient::Customer,
                    MessageKind::Escalation,
                    &esc.template,
                    Some(rule.name.clone()),
                    Channel::Email,
                    now,
                    promised,
                    Some((String::new(), esc.to.to_string())),
                    self.ids.next_id(),
                );
                push(&mut record, msg, &mut outbox);
            }
            if record.schedule.next_update_at.is_some_and(|t| t <= horizon) {
                record.schedule.rule_updates += 1;
                record.schedule.last_contact_at = now;
                let template = rule.template.clone();
                let channels = rule.channels.clone();
                let rule_name = rule.name.clone();
                self.reschedule(&mut record, now);
                intent = Some(Intent {
                    template,
                    rule: rule_name,
                    channels,
                    promised: record.schedule.next_update_at,
                });
            }
        }
        self.reschedule(&mut record, now);
        record.updated_at = now;
        (record, outbox, intent)
    }

    /// A message on `channel` that stands in for `failed`, which could not
    /// be delivered (a permanent failure or an opt-out): the same template
    /// and promise, rendered for the new channel. The records are those
    /// `failed` covers.
    pub fn fallback(
        &self,
        records: &[&CaseRecord],
        failed: &OutboxEntry,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> (MessageRecord, Option<OutboxEntry>) {
        let kind = failed.kind;
        let (mut msg, entry) = self.message(
            records,
            failed.recipient,
            kind,
            &failed.template,
            failed.rule.clone(),
            channel,
            now,
            failed.promised,
            None,
            failed.update.unwrap_or(failed.id),
        );
        msg.fallback_for = Some(failed.id);
        (msg, entry)
    }

    /// The next channel to try for an update that failed on the channels
    /// in `tried`: the customer's own order of preference, among channels
    /// we send on and they can be reached by.
    pub fn next_channel(&self, case: &Case, tried: &[Channel]) -> Option<Channel> {
        self.next_channel_for(case, Recipient::Customer, tried)
    }

    /// Whether a message to `who` at `to` on `channel` is still theirs to
    /// fall back for: a replaced case may list someone else at a CC's
    /// position (the customer is always the customer).
    pub fn still_reaches(case: &Case, who: Recipient, channel: Channel, to: &str) -> bool {
        who.is_customer() || case.person(who).is_some_and(|p| address(p, channel) == to)
    }

    /// `next_channel` for `who`, one of the case's recipients, in their
    /// own order of preference.
    pub fn next_channel_for(
        &self,
        case: &Case,
        who: Recipient,
        tried: &[Channel],
    ) -> Option<Channel> {
        let person = case.person(who)?;
        let left: Vec<Channel> = person
            .channels
            .iter()
            .copied()
            .filter(|c| !tried.contains(c))
            .collect();
        self.allowed_to(case, who, &left).into_iter().next()
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
        let queued = outbox.len();
        self.status_message(record, new, now, outbox);
        // Closed with nothing said: the promises it held are withdrawn.
        if matches!(new, Status::Resolved | Status::Closed) && outbox.len() == queued {
            crate::engine::promises::supersede_open(record, now);
        }
    }

    fn status_message(
        &self,
        record: &mut CaseRecord,
        new: Status,
        now: DateTime<Utc>,
        outbox: &mut Vec<OutboxEntry>,
    ) {
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
        // A pause holds back news too; the acknowledgement and the
        // resolution still go.
        if matches!(trigger, Trigger::Note | Trigger::Status) && record.case.prefs.paused_at(now) {
            return;
        }
        let promised = record.schedule.next_update_at;
        let update = self.ids.next_id();
        for (who, channel) in self.sends(&record.case, &on.channels) {
            let msg = self.message(
                &[&*record],
                who,
                MessageKind::from(trigger),
                &on.template,
                None,
                channel,
                now,
                promised,
                None,
                update,
            );
            push(record, msg, outbox);
        }
    }

    /// The channels of a rule that the customer allows and we can send on,
    /// in the rule's order.
    fn allowed(&self, case: &Case, channels: &[Channel]) -> Vec<Channel> {
        self.allowed_to(case, Recipient::Customer, channels)
    }

    /// The channels of a rule that `who` (the customer or a CC) allows and
    /// we can send on, in the rule's order. The choices made on the case
    /// page are the customer's: they narrow the customer's channels only.
    pub fn allowed_to(&self, case: &Case, who: Recipient, channels: &[Channel]) -> Vec<Channel> {
        let Some(person) = case.person(who) else {
            return Vec::new();
        };
        channels
            .iter()
            .copied()
            .filter(|c| {
                self.channels.contains(c)
                    && person.reachable_by(*c)
                    && (!who.is_customer() || case.prefs.allows(*c))
            })
            .collect()
    }

    /// Where a message on `channels` goes: each recipient of `case` (the
    /// customer first), on each of those channels they allow.
    fn sends(&self, case: &Case, channels: &[Channel]) -> Vec<(Recipient, Channel)> {
        case.recipients()
            .flat_map(|(who, _)| {
                self.allowed_to(case, who, channels)
                    .into_iter()
                    .map(move |c| (who, c))
            })
            .collect()
    }

    /// The channels of a rule that anyone on the case can be reached by.
    fn allowed_any(&self, case: &Case, channels: &[Channel]) -> Vec<Channel> {
        let mut out = Vec::new();
        for (who, _) in case.recipients() {
            for c in self.allowed_to(case, who, channels) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// Quiet hours of a channel, recipient-local.
    pub fn channel_quiet(&self, channel: Channel) -> Option<&QuietHours> {
        match channel {
            Channel::Email => self.email_quiet.as_ref(),
            Channel::Sms => self.sms_quiet.as_ref(),
            Channel::WhatsApp => self.whatsapp_quiet.as_ref(),
        }
    }

    /// Recomputes which rule applies and when the case is next due.
    pub fn reschedule(&self, record: &mut CaseRecord, now: DateTime<Utc>) {
        let case = &record.case;
        let s = &mut record.schedule;
        s.closed_at = match case.status {
            Status::Resolved | Status::Closed => s.closed_at.or(Some(now)),
            _ => None,
        };
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
            let channels = self.allowed_any(case, &r.channels);
            // A rule with no channel anyone on the case can use plans nothing.
            if channels.is_empty() {
                return None;
            }
            // The promise falls where every channel of the update may send.
            let quiet: Vec<QuietHours> = r
                .quiet_hours
                .iter()
                .chain(channels.iter().filter_map(|c| self.channel_quiet(*c)))
                .copied()
                .collect();
            next_due(
                &r.cadence,
                &quiet,
                case.customer.timezone,
                s.last_contact_at,
            )
        });
        // A promise already made is kept: a slower rule (after a reload, or
        // a status that matches another rule) starts after it.
        if let (Some(next), Some(promised)) = (
            s.next_update_at,
            outstanding_promise(&record.messages, s.last_contact_at, now),
        ) && promised < next
        {
            s.next_update_at = Some(promised);
        }
        // A pause the customer asked for moves the next update to its end
        // (the first instant there that every channel may send).
        if let (Some(next), Some(until), Some(r)) =
            (s.next_update_at, case.prefs.paused_until, rule)
            && until > now
            && next < until
        {
            s.next_update_at = Some(self.resume_at(r, case, until));
        }
        let escalation_at = rule.and_then(|r| {
            let esc = r.escalate.as_ref()?;
            (!s.escalated)
                .then(|| case.created_at.checked_add_signed(to_chrono(esc.after)))
                .flatten()
        });
        s.due_at = match (s.next_update_at, escalation_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The first instant at or after `until` at which every channel of
    /// `rule` may send to the customer of `case`.
    fn resume_at(
        &self,
        rule: &crate::engine::rules::Rule,
        case: &Case,
        until: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let quiet: Vec<QuietHours> = rule
            .quiet_hours
            .iter()
            .chain(
                self.allowed_any(case, &rule.channels)
                    .iter()
                    .filter_map(|c| self.channel_quiet(*c)),
            )
            .copied()
            .collect();
        first_allowed_all(&quiet, until, case.customer.timezone)
    }

    /// The link to the customer's own page for `case`, issued at `now`:
    /// the signed token, or in an SMS the short code (`/s/{code}`), which
    /// leaves room for the case's own text.
    pub fn status_url(&self, case: &Case, channel: Channel, now: DateTime<Utc>) -> String {
        let key = CaseKey::new(&case.source, case.id.clone());
        if channel == Channel::Sms {
            let stamp = crate::domain::link::case_stamp(case.created_at);
            let code = crate::domain::link::short_code(&self.consent.salt, &key, stamp);
            return format!("{}/s/{code}", self.public_url);
        }
        let link = crate::domain::link::PageLink::new(key, case.created_at, now);
        let token = crate::domain::link::page_token(&self.consent.unsubscribe_key, &link);
        format!("{}/c/{token}", self.public_url)
    }

    /// The signed one-click opt-out link for an email address, scoped to
    /// the source (help desk) that sends it.
    pub fn unsubscribe_url(&self, source: &str, email: &str) -> String {
        let contact = scoped_contact_of(&self.consent.salt, source, Channel::Email, email);
        let token =
            crate::domain::signature::unsubscribe_token(&self.consent.unsubscribe_key, &contact.0);
        format!("{}/unsubscribe/{token}", self.public_url)
    }

    /// Renders one message for `records` (one case, or a digest's cases,
    /// the first being the one it is filed under) to `who`, one of the
    /// case's recipients, on `channel` (their address, their name in the
    /// greeting, their language and zone, their own unsubscribe link), and
    /// the history entry each of those cases keeps for it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn message(
        &self,
        records: &[&CaseRecord],
        who: Recipient,
        kind: MessageKind,
        template: &str,
        rule: Option<String>,
        channel: Channel,
        now: DateTime<Utc>,
        promised: Option<DateTime<Utc>>,
        internal_to: Option<(String, String)>,
        update: Uuid,
    ) -> (MessageRecord, Option<OutboxEntry>) {
        let id = self.ids.next_id();
        let record = records[0];
        let case = &record.case;
        let internal = internal_to.is_some();
        let mut msg = MessageRecord {
            id,
            kind,
            template: template.to_owned(),
            rule: rule.clone(),
            recipient: who,
            channel,
            status: DeliveryStatus::Pending,
            attempts: 0,
            due_at: now,
            sent_at: None,
            promised_next_update_at: if internal { None } else { promised },
            error: None,
            internal,
            update: Some(update),
            fallback_for: None,
            covers: if records.len() > 1 {
                records.iter().map(|r| r.case.id.to_string()).collect()
            } else {
                Vec::new()
            },
            provider_id: None,
            provider_status: None,
            promise: None,
        };
        let Some(person) = case.person(who) else {
            // The case was replaced with fewer people copied.
            msg.status = DeliveryStatus::Failed;
            msg.error = Some(format!("{who} is no longer on the case"));
            return (msg, None);
        };
        let (to_name, to) =
            internal_to.unwrap_or_else(|| (one_line(&person.name), address(person, channel)));
        let unsubscribe_url = (channel == Channel::Email && !internal)
            .then(|| self.unsubscribe_url(&case.source, &to));
        let mut ctx = MessageContext::for_person(
            case,
            person,
            promised,
            now,
            &self.company,
            unsubscribe_url.clone().unwrap_or_default(),
        );
        // The case page and its choices are the customer's.
        if !internal && who.is_customer() {
            ctx.status_url = self.status_url(case, channel, now);
        }
        if records.len() > 1 {
            ctx.cases = records
                .iter()
                .map(|r| crate::engine::render::CaseView {
                    status_url: if internal {
                        String::new()
                    } else {
                        self.status_url(&r.case, channel, now)
                    },
                    ..crate::engine::render::CaseView::new(&r.case, now)
                })
                .collect();
        }
        let locale = &person.locale;
        let rendered = match channel {
            Channel::Email => self
                .templates
                .render_email(template, locale, &ctx)
                .map(Content::Email),
            Channel::Sms => crate::engine::page::render_sms_with_link(
                &self.templates,
                template,
                locale,
                &ctx,
                self.max_segments,
            )
            .map(|text| Content::Sms(SmsText { text })),
            Channel::WhatsApp => {
                crate::engine::whatsapp::render(&self.templates, template, locale, &ctx)
                    .map(Content::WhatsApp)
            }
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
        let tz = person.timezone;
        // Quiet hours hold a message back to the first allowed instant;
        // internal escalations go at once.
        let send_at = match self.channel_quiet(channel) {
            Some(q) if !internal => first_allowed_all(std::slice::from_ref(q), now, tz),
            _ => now,
        };
        msg.due_at = send_at;
        let entry = OutboxEntry {
            v: RECORD_VERSION,
            id,
            case: record.key(),
            channel,
            recipient: who,
            to_name,
            to,
            content,
            message_id: self.message_id(id),
            attempts: 0,
            next_attempt_at: send_at,
            also: records[1..].iter().map(|r| r.key()).collect(),
            tz: Some(tz),
            update: Some(update),
            kind,
            template: template.to_owned(),
            rule,
            promised,
            internal,
            unsubscribe_url,
            thread: (channel == Channel::Email && !internal && records.len() == 1)
                .then(|| self.thread_of(record, who))
                .flatten(),
            reply_to: (channel == Channel::Email && !internal)
                .then(|| self.reply_to_for(case))
                .flatten(),
        };
        (msg, Some(entry))
    }

    /// The `Message-ID` of the message with tidings' id `id`.
    fn message_id(&self, id: Uuid) -> String {
        format!("<{id}@{}>", self.message_id_domain)
    }

    /// The `Message-ID` of the case's first email to `who` (not a
    /// digest's), which every later one to them answers.
    fn thread_of(&self, record: &CaseRecord, who: Recipient) -> Option<String> {
        record
            .messages
            .iter()
            .find(|m| {
                m.channel == Channel::Email
                    && !m.internal
                    && m.covers.is_empty()
                    && m.recipient == who
            })
            .map(|m| self.message_id(m.id))
    }

    /// `email.reply_to` for this case, when it makes an address (a case id
    /// with `:` or `..` does not; the header is then left out).
    fn reply_to_for(&self, case: &Case) -> Option<String> {
        let address = self
            .reply_to
            .as_ref()?
            .replace("{case_id}", case.id.as_ref());
        address
            .parse::<crate::domain::EmailAddress>()
            .is_ok()
            .then_some(address)
    }
}

/// A recipient's address on `channel`.
fn address(c: &Customer, channel: Channel) -> String {
    match channel {
        Channel::Email => c.email.as_ref().map(ToString::to_string),
        Channel::Sms | Channel::WhatsApp => c.phone.as_ref().map(ToString::to_string),
    }
    .unwrap_or_default()
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

/// The next update the customer was last promised, if it is still ahead
/// and nothing has reached them since the message that promised it (a
/// public agent reply counts as contact).
fn outstanding_promise(
    messages: &[MessageRecord],
    last_contact_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    messages
        .iter()
        .filter(|m| {
            !m.internal && matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Pending)
        })
        .filter_map(|m| Some((m.due_at, m.promised_next_update_at?)))
        .max_by_key(|(due, _)| *due)
        .filter(|(due, promised)| *due >= last_contact_at && *promised > now)
        .map(|(_, promised)| promised)
}

mod late;

#[cfg(test)]
mod tests;
