//! The scheduler: sleeps until the earliest due case (or until intake wakes
//! it), plans what is due, and commits messages to the outbox.
//!
//! It reads only the head of the schedule index, never all cases. A case
//! whose update fell due while the daemon was down is planned once, with
//! the clock starting again from that message.

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::service::Service;
use crate::store::{Commit, StoreError};

/// Runs until `cancel` fires.
pub async fn run(svc: Service, cancel: CancellationToken) {
    loop {
        let wait = match step(&svc).await {
            Ok(Some(wait)) => wait,
            Ok(None) => continue,
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
    let now = Utc::now();
    let Some((at, key)) = svc.store.next_due_case()? else {
        return Ok(Some(std::time::Duration::from_secs(3600)));
    };
    if at > now {
        return Ok(Some((at - now).to_std().unwrap_or_default()));
    }
    let _guard = svc.store.lock(&key).await;
    let record = svc.store.get(&key)?;
    // Index keys hold milliseconds; the record holds the full instant.
    let indexed = |r: &crate::store::CaseRecord| {
        r.schedule.due_at.map(|d| d.timestamp_millis()) == Some(at.timestamp_millis())
    };
    let Some(record) = record.filter(indexed) else {
        // The index entry outlived its case or its due instant: drop it.
        svc.store.remove_schedule_entry(at, &key)?;
        return Ok(None);
    };
    let now = Utc::now();
    crate::metrics::due_lateness(at, now);
    let mut planned = svc.engine.load().due(record, now);
    if let Some(r) = planned.record.as_mut()
        && r.schedule.due_at.is_some_and(|d| d <= now)
    {
        // Planning always moves a case forward; should a rule ever fail
        // to, look again in a second rather than spin.
        r.schedule.due_at = Some(now + chrono::Duration::seconds(1));
    }
    let messages = planned.outbox.len();
    svc.store.commit(
        &key,
        &Commit {
            record: planned.record,
            old_due: Some(at),
            outbox_put: planned.outbox,
            ..Commit::default()
        },
    )?;
    svc.store.flush().await?;
    if messages > 0 {
        let late_ms = (now - at).num_milliseconds();
        tracing::info!(case = %key, messages, late_ms, "due messages queued");
        svc.wake_dispatcher.notify_one();
    }
    Ok(None)
}
