//! The gate just before a send: consent, a CC still on the case, a stale
//! update, quiet hours, WhatsApp's 24-hour window and the minimum gap.

use super::{Dispatcher, Gate};
use crate::channels::Outcome;
use crate::domain::{Content, OutboxEntry};
use crate::engine::plan::Engine;
use crate::engine::settle::Report;
use crate::engine::supersede::stale;
use crate::engine::whatsapp::{Decision, NO_TEMPLATE, decide};
use crate::store::StoreError;

impl Dispatcher {
    /// Consent, quiet hours and the minimum gap, checked just before a send
    /// (an opt-out may have arrived after the message was planned).
    pub(super) fn gate(&self, entry: &OutboxEntry) -> Result<Gate, StoreError> {
        if entry.internal {
            return Ok(Gate::Open(Box::new(entry.message())));
        }
        let store = &self.svc.store;
        let contact = store.contact(entry.channel, &entry.to);
        if let Some(o) = store.opted_out(contact)? {
            return Ok(Gate::Closed(Report::OptedOut(o.via.to_string())));
        }
        // An opt-out from this source (help desk) only.
        let scoped = crate::domain::scoped_contact_of(
            &store.contact_salt(),
            &entry.case.source,
            entry.channel,
            &entry.to,
        );
        if let Some(o) = store.opted_out(scoped)? {
            return Ok(Gate::Closed(Report::OptedOut(o.via.to_string())));
        }
        // Someone in CC taken off the case (or given another address)
        // since the message was planned gets nothing more.
        if !entry.recipient.is_customer()
            && !store.get(&entry.case)?.is_some_and(|r| {
                Engine::still_reaches(&r.case, entry.recipient, entry.channel, &entry.to)
            })
        {
            return Ok(Gate::Closed(Report::Departed));
        }
        let now = self.svc.now();
        if stale(entry.kind, entry.promised, now) {
            return Ok(Gate::Closed(Report::Stale));
        }
        if let (Some(q), Some(tz)) = (
            self.svc.engine.load().channel_quiet(entry.channel).copied(),
            entry.tz,
        ) && q.contains(now, tz)
        {
            return Ok(Gate::Later(q.first_allowed(now, tz), "quiet hours"));
        }
        let mut message = entry.message();
        // WhatsApp's 24-hour window: the free-form body inside it, the
        // approved template outside, and without one the next channel.
        if let Content::WhatsApp(text) = &entry.content {
            match decide(text, store.last_inbound(contact)?, now) {
                Decision::FreeForm(t) | Decision::Template(t) => {
                    message.content = Content::WhatsApp(t);
                }
                Decision::NoTemplate => {
                    return Ok(Gate::Closed(Report::Attempt(Outcome::permanent(
                        NO_TEMPLATE,
                    ))));
                }
            }
        }
        let gap = self.gap(entry.channel);
        if !gap.is_zero() {
            let gap = chrono::Duration::from_std(gap).unwrap_or(chrono::Duration::MAX);
            if let Err(next) = store.claim_send(contact, gap, now)? {
                return Ok(Gate::Later(next, "minimum gap"));
            }
        }
        Ok(Gate::Open(Box::new(message)))
    }
}
