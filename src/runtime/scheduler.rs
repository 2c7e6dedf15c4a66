//! The scheduler: sleeps until the earliest due case (or until intake wakes
//! it), plans what is due, and commits messages to the outbox.
//!
//! It reads only the head of the schedule index, never all cases. A case
//! whose update fell due while the daemon was down is planned once, with
//! the clock starting again from that message.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::service::Service;
use crate::store::{CaseKey, CaseRecord, Commit, StoreError, Writer};

/// Runs until `cancel` fires.
pub async fn run(svc: Service, cancel: CancellationToken) {
    loop {
        let wait = match step(&svc).await {
            Ok(Some(wait)) => wait,
            Ok(None) => continue,
            Err(e @ StoreError::Full { .. }) => {
                crate::store::warn_full(&e);
                std::time::Duration::from_secs(5)
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduler step failed; retrying in 1s");
                std::time::Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = svc.wake_scheduler.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Handles the earliest due case, if it is due. Returns how long to sleep,
/// or `None` to look again at once.
async fn step(svc: &Service) -> Result<Option<std::time::Duration>, StoreError> {
    svc.store.room(Writer::Internal)?;
    let now = Utc::now();
    let Some((at, key)) = svc.store.next_due_case()? else {
        return Ok(Some(std::time::Duration::from_secs(3600)));
    };
    if at > now {
        return Ok(Some((at - now).to_std().unwrap_or_default()));
    }
    // The customer's other cases whose updates fall due soon go out with
    // this one, as a digest.
    let horizon = now + chrono::Duration::from_std(svc.digest_window).unwrap_or_default();
    let siblings = if svc.digest_window.is_zero() {
        Vec::new()
    } else {
        siblings_due(svc, &key, horizon)?
    };
    let _guards = svc
        .store
        .lock_many(std::iter::once(&key).chain(siblings.iter()))
        .await;
    let record = svc.store.get(&key)?;
    // Index keys hold milliseconds; the record holds the full instant.
    let indexed = |r: &CaseRecord| {
        r.schedule.due_at.map(|d| d.timestamp_millis()) == Some(at.timestamp_millis())
    };
    let Some(record) = record.filter(indexed) else {
        // The index entry outlived its case or its due instant: drop it.
        svc.store.remove_schedule_entry(at, &key)?;
        return Ok(None);
    };
    let now = Utc::now();
    crate::metrics::due_lateness(at, now);
    let primary_due = record.schedule.next_update_at.is_some_and(|t| t <= now);
    let mut records = vec![record];
    if primary_due {
        for k in &siblings {
            if let Some(r) = svc.store.get(k)?
                && update_due_by(&r, horizon)
            {
                records.push(r);
            }
        }
    }
    let old_due: Vec<_> = records.iter().map(|r| r.schedule.due_at).collect();
    let keys: Vec<CaseKey> = records.iter().map(CaseRecord::key).collect();
    let mut planned =
        svc.engine
            .load()
            .due_group(records, now, if primary_due { horizon } else { now });
    let mut messages = 0;
    for (record, outbox) in &mut planned {
        messages += outbox.len();
        if let Some(r) = record.as_mut()
            && r.schedule.due_at.is_some_and(|d| d <= now)
        {
            // Planning always moves a case forward; should a rule ever fail
            // to, look again in a second rather than spin.
            r.schedule.due_at = Some(now + chrono::Duration::seconds(1));
        }
    }
    let commits: Vec<Commit> = planned
        .into_iter()
        .zip(old_due)
        .map(|((record, outbox_put), old_due)| Commit {
            record,
            old_due,
            outbox_put,
            ..Commit::default()
        })
        .collect();
    let changes: Vec<(&CaseKey, &Commit)> = keys.iter().zip(commits.iter()).collect();
    svc.store.commit_many(&changes)?;
    svc.store.flush().await?;
    if messages > 0 {
        let late_ms = (now - at).num_milliseconds();
        tracing::info!(case = %key, messages, cases = keys.len(), late_ms, "due messages queued");
        svc.wake_dispatcher.notify_one();
    }
    Ok(None)
}

/// Whether a case has a progress update due by `horizon`.
fn update_due_by(r: &CaseRecord, horizon: chrono::DateTime<Utc>) -> bool {
    r.schedule.next_update_at.is_some_and(|t| t <= horizon)
}

/// Other cases with one of `key`'s recipients whose update is due by
/// `horizon` (read without locks; they are checked again under lock).
fn siblings_due(
    svc: &Service,
    key: &CaseKey,
    horizon: chrono::DateTime<Utc>,
) -> Result<Vec<CaseKey>, StoreError> {
    let Some(record) = svc.store.get(key)? else {
        return Ok(Vec::new());
    };
    let contacts = svc.store.contacts_of(&record.case);
    let mut out: Vec<CaseKey> = Vec::new();
    for contact in contacts {
        for k in svc.store.cases_of(contact)? {
            // Digests stay within one source: another tenant's cases are
            // not ours to mention.
            if k == *key || k.source != key.source || out.contains(&k) {
                continue;
            }
            if svc
                .store
                .get(&k)?
                .is_some_and(|r| update_due_by(&r, horizon))
            {
                out.push(k);
            }
        }
    }
    Ok(out)
}
