//! What the customer's case page changes: their preferences, and a fresh
//! link asked for on an expired page. Both go through `Service::change`.

use super::{Commit, Scope, Service, ServiceError};
use crate::domain::{CaseKey, CaseRecord};
use crate::engine::page::{PrefChange, PrefError, apply_pref};

impl Service {
    /// A preference the customer posted on their case page: applied to
    /// the case made `created_at`-stamp `stamp` (a case erased and made
    /// again is another case), the case replanned, and the pending
    /// messages the choice rules out taken out of the outbox.
    pub async fn set_prefs(
        &self,
        key: &CaseKey,
        stamp: u32,
        change: &PrefChange,
    ) -> Result<Result<(), PrefError>, ServiceError> {
        let keys = [key.clone()];
        let store = &self.store;
        self.change(Scope::internal(&keys), |records, now| {
            let mut record = linked(records, stamp)?;
            let engine = self.engine.load();
            let cancelled = match apply_pref(&mut record, change, &engine.channels, now) {
                Ok(c) => c,
                Err(e) => return Ok((vec![Commit::default()], Err(e))),
            };
            engine.reschedule(&mut record, now);
            // The last message before a pause says when updates resume: one
            // confirmation, on the customer's first channel for this case.
            let mut outbox_put = Vec::new();
            if matches!(change, PrefChange::Pause(_))
                && let Some(channel) =
                    crate::engine::page::choosable(&record.case, &engine.channels)
                        .into_iter()
                        .find(|c| record.case.prefs.allows(*c))
            {
                let (msg, entry) = engine.message(
                    &[&record],
                    crate::domain::Recipient::Customer,
                    crate::domain::MessageKind::Paused,
                    crate::engine::page::PAUSED_TEMPLATE,
                    None,
                    channel,
                    now,
                    record.schedule.next_update_at,
                    None,
                    engine.ids.next_id(),
                );
                record.messages.push(msg);
                outbox_put.extend(entry);
            }
            let mut commit = Commit {
                outbox_put,
                ..Commit::record(record)
            };
            for id in cancelled {
                if let Some(entry) = store.outbox_entry(id)? {
                    commit.outbox_remove.push((entry.id, entry.next_attempt_at));
                }
            }
            Ok((vec![commit], Ok(())))
        })
        .await
    }

    /// A fresh case page link, asked for on an expired page, queued by
    /// email to the address on file; whether one was queued (none when the
    /// case has no email address or got one within the last day).
    pub async fn send_fresh_link(&self, key: &CaseKey, stamp: u32) -> Result<bool, ServiceError> {
        let keys = [key.clone()];
        self.change(Scope::internal(&keys), |records, now| {
            let mut record = linked(records, stamp)?;
            if !crate::engine::page::fresh_link_due(&record, now) {
                return Ok((vec![Commit::default()], false));
            }
            let engine = self.engine.load();
            let (msg, entry) = engine.message(
                &[&record],
                crate::domain::Recipient::Customer,
                crate::domain::MessageKind::Link,
                crate::engine::page::LINK_TEMPLATE,
                None,
                crate::domain::Channel::Email,
                now,
                None,
                None,
                engine.ids.next_id(),
            );
            record.messages.push(msg);
            record.updated_at = now;
            let commit = Commit {
                record: Some(record),
                outbox_put: entry.into_iter().collect(),
                ..Commit::default()
            };
            Ok((vec![commit], true))
        })
        .await
    }
}

/// The case a page link names: there, and the same case the link was made
/// for (its creation stamp), else not found.
fn linked(records: Vec<Option<CaseRecord>>, stamp: u32) -> Result<CaseRecord, ServiceError> {
    records
        .into_iter()
        .next()
        .flatten()
        .filter(|r| crate::domain::link::case_stamp(r.case.created_at) == stamp)
        .ok_or(ServiceError::NotFound)
}
