//! The scheduler: sleeps until the earliest due case (or until intake wakes
//! it), plans what is due, and commits messages to the outbox.
//!
//! It reads only the head of the schedule index, never all cases. The cases
//! due are claimed a batch at a time and planned side by side, each in a
//! task of its own, so that their commits share the group commit's
//! transactions and flushes. A case
//! whose update fell due while the daemon was down is planned once, with
//! the clock starting again from that message.

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::domain::{CaseKey, CaseRecord, Channel};
use crate::engine::supersede::supersede;
use crate::runtime::supervise::{Heartbeat, injected_panic};
use crate::service::{Scope, Service, ServiceError, report_render_failures};
use crate::store::{Commit, StoreError};

/// Runs until `cancel` fires.
pub async fn run(svc: Service, cancel: CancellationToken, heartbeat: Heartbeat) {
    let panic_at = injected_panic("scheduler");
    loop {
        heartbeat.beat();
        if panic_at.is_some_and(|t| std::time::Instant::now() >= t) {
            panic!("injected scheduler fault (TIDINGS_TEST_FAULT)");
        }
        if cancel.is_cancelled() {
            return;
        }
        let wait = match step(&svc).await {
            Ok(Some(wait)) => wait,
            Ok(None) => continue,
            Err(ServiceError::Store(e @ StoreError::Full { .. })) => {
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
            () = tokio::time::sleep(wait.min(Heartbeat::PERIOD)) => {}
        }
    }
}

/// At most this many due cases are planned at once (their commits share
/// the group commit's transactions and flushes). As many as the sends in
/// flight: more keep both cores busy while the dispatcher files the
/// delivered marks of accepted messages (RELIABILITY.md, "Duplicates").
const BATCH: usize = 8;

/// Plans the cases due now, several at once. Returns how long to sleep, or
/// `None` to look again at once.
async fn step(svc: &Service) -> Result<Option<std::time::Duration>, ServiceError> {
    svc.store.room(crate::store::Writer::Internal)?;
    let now = svc.now();
    let looked = std::time::Instant::now();
    // With replicas sharing the store, each due case is leased to this one.
    let (due, next) = svc
        .store
        .claim_due_cases(now, BATCH, &std::collections::HashSet::new())?;
    crate::metrics::schedule_head(looked.elapsed());
    if due.is_empty() {
        return Ok(Some(
            next.map_or(std::time::Duration::from_secs(3600), |at| {
                (at - now).to_std().unwrap_or_default()
            }),
        ));
    }
    let mut planning = tokio::task::JoinSet::new();
    for (at, key) in due {
        let svc = svc.clone();
        planning.spawn(async move { plan(&svc, at, key).await });
    }
    let mut failed = None;
    while let Some(done) = planning.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            // A panic is the scheduler's (its supervisor sees it).
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    failed.map_or(Ok(None), Err)
}

/// Plans one due case (`key`, due at `at` by its index entry).
async fn plan(svc: &Service, at: DateTime<Utc>, key: CaseKey) -> Result<(), ServiceError> {
    let now = svc.now();
    // The customer's other cases whose updates fall due soon go out with
    // this one, as a digest.
    let window = chrono::Duration::from_std(svc.digest_window).unwrap_or_default();
    let siblings = if svc.digest_window.is_zero() {
        Vec::new()
    } else {
        siblings_due(svc, &key, now + window)?
    };
    let mut keys = vec![key.clone()];
    keys.extend(siblings);
    let engine = svc.engine.load();
    let planned = svc
        .change(Scope::internal(&keys), |records, now| {
            let mut records = records.into_iter();
            // Index keys hold milliseconds; the record holds the full instant.
            let indexed = |r: &CaseRecord| {
                r.schedule.due_at.map(|d| d.timestamp_millis()) == Some(at.timestamp_millis())
            };
            let Some(record) = records.next().flatten().filter(indexed) else {
                // The index entry outlived its case or its due instant:
                // drop it (under the lock, so a fresh entry with the same
                // instant cannot be the one removed).
                svc.store.remove_schedule_entry(at, &key)?;
                return Ok((vec![Commit::default(); keys.len()], None));
            };
            crate::metrics::due_lateness(at, now);
            let horizon = now + window;
            let primary_due = record.schedule.next_update_at.is_some_and(|t| t <= now);
            let mut group = vec![(0, record)];
            if primary_due {
                group.extend(
                    records
                        .enumerate()
                        .filter_map(|(i, r)| r.map(|r| (i + 1, r)))
                        .filter(|(_, r)| update_due_by(r, horizon)),
                );
            }
            let slots: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
            let lens: Vec<usize> = group.iter().map(|(_, r)| r.messages.len()).collect();
            let (planned, fallbacks) = engine.due_group_reporting(
                group.into_iter().map(|(_, r)| r).collect(),
                now,
                if primary_due { horizon } else { now },
            );
            for f in &fallbacks {
                crate::metrics::digest_fallback(f.channel);
                tracing::warn!(case = %key, channel = f.channel.as_str(), cases = f.cases, reason = %f.reason, "digest not made; each case gets its own update");
            }
            let mut commits = vec![Commit::default(); keys.len()];
            let mut messages = 0;
            let mut superseded = 0;
            for ((slot, before), (mut record, outbox_put)) in
                slots.into_iter().zip(lens).zip(planned)
            {
                if let Some(r) = &record {
                    report_render_failures(&keys[slot], before, r);
                }
                messages += outbox_put.len();
                if let Some(r) = record.as_mut()
                    && r.schedule.due_at.is_some_and(|d| d <= now)
                {
                    // Planning always moves a case forward; should a rule
                    // ever fail to, look again in a second rather than spin.
                    r.schedule.due_at = Some(now + chrono::Duration::seconds(1));
                }
                // One pending progress update per case and channel: the
                // fresh one replaces an unsent older one.
                let mut outbox_remove = Vec::new();
                if let Some(r) = record.as_mut() {
                    for id in supersede(r, &outbox_put) {
                        if let Some(old) = svc.store.outbox_entry(id)? {
                            outbox_remove.push((id, old.next_attempt_at));
                        }
                        superseded += 1;
                    }
                }
                commits[slot] = Commit {
                    record,
                    outbox_put,
                    outbox_remove,
                    ..Commit::default()
                };
            }
            let cases = commits.iter().filter(|c| !c.is_empty()).count();
            Ok((commits, Some((messages, cases, superseded, now))))
        })
        .await?;
    if let Some((messages, cases, superseded, now)) = planned
        && messages > 0
    {
        let late_ms = (now - at).num_milliseconds();
        tracing::info!(case = %key, messages, cases, superseded, late_ms, "due messages queued");
    }
    Ok(())
}

/// Whether a case has a progress update due by `horizon`.
fn update_due_by(r: &CaseRecord, horizon: DateTime<Utc>) -> bool {
    r.schedule.next_update_at.is_some_and(|t| t <= horizon)
}

/// Other cases with one of `key`'s recipients whose update is due by
/// `horizon` (read without locks; they are checked again under lock).
fn siblings_due(
    svc: &Service,
    key: &CaseKey,
    horizon: DateTime<Utc>,
) -> Result<Vec<CaseKey>, StoreError> {
    let Some(record) = svc.store.get(key)? else {
        return Ok(Vec::new());
    };
    // Digests are the customer's: only their addresses bring other cases
    // in (the people in CC get each case's update on its own).
    let c = &record.case.customer;
    let contacts: Vec<_> = c
        .email
        .iter()
        .map(|e| svc.store.contact(Channel::Email, e.as_ref()))
        .chain(
            c.phone
                .iter()
                .map(|p| svc.store.contact(Channel::Sms, p.as_ref())),
        )
        .collect();
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
