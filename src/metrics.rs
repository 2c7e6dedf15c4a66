//! Prometheus metrics: the recorder, one helper per series, the scrape.
//!
//! Call sites elsewhere are one line each (`metrics::reload(ok)`,
//! `metrics::delivery(..)`, …), so the pipeline modules stay about their
//! own work. Series names and labels live here and nowhere else. Labels
//! never carry personal data: channel, rule name, status, result.
//!
//! The recorder is process-wide (the `metrics` facade has one global
//! recorder); the exporter has no listener of its own: `GET /metrics` on
//! the API renders it.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{CaseRecord, DeliveryStatus, OutboxEntry};
use crate::domain::{Channel, Status};

pub const CASES_OPEN: &str = "tidings_cases_open";
pub const MESSAGES: &str = "tidings_messages_total";
pub const OUTBOX_DEPTH: &str = "tidings_outbox_depth";
pub const OUTBOX_OLDEST_AGE: &str = "tidings_outbox_oldest_age_seconds";
pub const DUE_LATENESS: &str = "tidings_due_lateness_seconds";
pub const RELOADS: &str = "tidings_reload_total";
pub const STORE_CONFLICTS: &str = "tidings_store_conflicts_total";
pub const LEASES_LOST: &str = "tidings_leases_lost_total";
pub const HTTP_REQUESTS: &str = "tidings_http_requests_total";
pub const DIGEST_FALLBACKS: &str = "tidings_digest_fallbacks_total";
pub const RENDER_FAILURES: &str = "tidings_render_failures_total";
pub const INBOUND_UNMAPPED: &str = "tidings_inbound_unmapped_total";
pub const PROMISES: &str = "tidings_promises_total";
pub const PROMISE_LATENESS: &str = "tidings_promise_lateness_seconds";
pub const SCHEDULE_HEAD: &str = "tidings_schedule_head_seconds";
/// From a provider's acceptance to its delivered mark on file: the window
/// in which a crash sends the message again.
pub const MARK_WINDOW: &str = "tidings_delivered_mark_seconds";

/// What an inbound webhook may carry that tidings has no mapping for.
const INBOUND_WHATS: [&str; 5] = ["status", "priority", "time_zone", "locale", "phone"];

/// Lateness buckets: a scheduler in good health is within a second.
const LATENESS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0,
];

/// Lookup buckets: the head of an ordered index, microseconds when healthy.
const LOOKUP_BUCKETS: &[f64] = &[
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.01, 0.1, 1.0,
];

/// Mark buckets: a round trip to the store, milliseconds when healthy.
const MARK_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

const STATUSES: [Status; 5] = [
    Status::Open,
    Status::PendingCustomer,
    Status::OnHold,
    Status::Resolved,
    Status::Closed,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle. Should
/// another recorder already be installed (a host program's), the series
/// still render, from a recorder of our own that the facade does not feed.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DUE_LATENESS.into()), LATENESS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(PROMISE_LATENESS.into()), LATENESS_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(SCHEDULE_HEAD.into()), LOOKUP_BUCKETS)
            })
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(MARK_WINDOW.into()), MARK_BUCKETS))
            .unwrap_or_else(|_| unreachable!("the bucket list is not empty"));
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows no series");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_gauge!(CASES_OPEN, "Cases held, by status");
    metrics::describe_counter!(
        MESSAGES,
        "Delivery attempts by channel, rule and result (sent, failed, retried)"
    );
    metrics::describe_gauge!(OUTBOX_DEPTH, "Messages waiting in the outbox");
    metrics::describe_gauge!(
        OUTBOX_OLDEST_AGE,
        "Seconds since the earliest outbox entry fell due (0 when none is overdue)"
    );
    metrics::describe_histogram!(
        DUE_LATENESS,
        metrics::Unit::Seconds,
        "How late the scheduler planned a due case"
    );
    metrics::describe_histogram!(
        SCHEDULE_HEAD,
        metrics::Unit::Seconds,
        "How long the scheduler took to find the next due case (the head of the schedule index)"
    );
    metrics::describe_histogram!(
        MARK_WINDOW,
        metrics::Unit::Seconds,
        "From a provider's acceptance to its delivered mark on file: the window in which a crash sends the message again"
    );
    metrics::describe_counter!(RELOADS, "Configuration reloads by result");
    metrics::describe_counter!(
        STORE_CONFLICTS,
        "Changes decided again because another replica wrote the case meanwhile"
    );
    metrics::describe_counter!(
        LEASES_LOST,
        "Messages whose outcome was not recorded because another replica took them over"
    );
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by response status");
    metrics::describe_counter!(
        DIGEST_FALLBACKS,
        "Digests not made (a template failed, or too large); their cases got their own messages"
    );
    for channel in ["email", "sms", "whatsapp"] {
        counter!(DIGEST_FALLBACKS, "channel" => channel).absolute(0);
    }
    metrics::describe_counter!(
        RENDER_FAILURES,
        "Messages whose template failed to render (filed as failed on the history)"
    );
    metrics::describe_counter!(
        INBOUND_UNMAPPED,
        "Ticket-system webhook values accepted without a mapping (the last known or default value kept), by system, source and what"
    );
    for result in ["success", "failure"] {
        counter!(RELOADS, "result" => result).absolute(0);
    }
    metrics::describe_counter!(
        PROMISES,
        "Promises of a next update, settled: kept (the customer heard from us by then), late, or superseded (the case closed with nothing said), by source and rule"
    );
    metrics::describe_histogram!(
        PROMISE_LATENESS,
        "How long after the promised time the next message reached the customer (0 when kept)"
    );
}

/// A promise made under `rule` for a case of `source` was settled.
pub fn promise(source: &str, rule: &str, outcome: crate::domain::PromiseOutcome) {
    use crate::domain::PromiseOutcome;
    counter!(
        PROMISES,
        "source" => source.to_owned(),
        "rule" => rule.to_owned(),
        "result" => outcome.as_str(),
    )
    .increment(1);
    match outcome {
        PromiseOutcome::Kept { .. } => histogram!(PROMISE_LATENESS).record(0.0),
        PromiseOutcome::Late { late_by_secs, .. } => {
            histogram!(PROMISE_LATENESS).record(late_by_secs.max(0) as f64);
        }
        PromiseOutcome::Superseded { .. } => {}
    }
}

/// What the scrape reads from the store (cheaply) just before it renders.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    pub depth: usize,
    /// When the earliest entry is (or was) due.
    pub head: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// The scrape: the outbox gauges, then the text format.
pub fn render(outbox: Outbox) -> String {
    let handle = install();
    gauge!(OUTBOX_DEPTH).set(outbox.depth as f64);
    let age = outbox.head.map_or(0.0, |at| seconds_since(at, outbox.now));
    gauge!(OUTBOX_OLDEST_AGE).set(age);
    handle.run_upkeep();
    handle.render()
}

/// `GET /metrics` in the Prometheus text format.
pub fn response(outbox: Outbox) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(outbox),
    )
        .into_response()
}

fn seconds_since(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - at)
        .to_std()
        .map_or(0.0, |d: Duration| d.as_secs_f64())
}

/// Status changes made while the first count of cases runs, by status:
/// `Some` from `counting_cases` until `count_cases` has set the gauge.
static PENDING: std::sync::Mutex<Option<[i64; STATUSES.len()]>> = std::sync::Mutex::new(None);

fn pending() -> std::sync::MutexGuard<'static, Option<[i64; STATUSES.len()]>> {
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first count of cases starts: until `count_cases` ends it,
/// `tidings_cases_open` is not shown (rather than a partial number), and
/// status changes are held to be added to the count.
pub fn counting_cases() {
    *pending() = Some([0; STATUSES.len()]);
}

/// Sets `tidings_cases_open` from one walk of the cases, plus the changes
/// held since `counting_cases`; after this, `case_status` keeps it current
/// on every write. Returns how many cases were walked.
///
/// A case written while the walk runs is counted by its change; should the
/// walk also meet it (it is not a snapshot), it is counted twice until the
/// next start. The walk runs in the first seconds after a start, when
/// little is written.
pub fn count_cases<E>(statuses: impl Iterator<Item = Result<Status, E>>) -> Result<u64, E> {
    let mut counts = [0i64; STATUSES.len()];
    let mut walked = 0;
    for status in statuses {
        let status = status?;
        walked += 1;
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            counts[i] += 1;
        }
    }
    let mut pending = pending();
    let held = pending.take().unwrap_or_default();
    for ((status, n), d) in STATUSES.iter().zip(counts).zip(held) {
        gauge!(CASES_OPEN, "status" => status.as_str()).set((n + d).max(0) as f64);
    }
    Ok(walked)
}

/// A case changed status, appeared (`before` is `None`) or was erased
/// (`after` is `None`).
pub fn case_status(before: Option<Status>, after: Option<Status>) {
    if before == after {
        return;
    }
    let mut pending = pending();
    if let Some(held) = pending.as_mut() {
        let at = |s: Status| STATUSES.iter().position(|x| *x == s);
        if let Some(i) = before.and_then(at) {
            held[i] -= 1;
        }
        if let Some(i) = after.and_then(at) {
            held[i] += 1;
        }
        return;
    }
    if let Some(s) = before {
        gauge!(CASES_OPEN, "status" => s.as_str()).decrement(1.0);
    }
    if let Some(s) = after {
        gauge!(CASES_OPEN, "status" => s.as_str()).increment(1.0);
    }
}

/// A delivery attempt's outcome, read from the message as recorded: sent,
/// failed (for good), or retried (still pending).
pub fn delivery(record: &CaseRecord, entry: &OutboxEntry) {
    let Some(msg) = record.messages.iter().find(|m| m.id == entry.id) else {
        return;
    };
    let result = match msg.status {
        DeliveryStatus::Sent => "sent",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Pending => "retried",
        DeliveryStatus::Cancelled => return,
    };
    counter!(
        MESSAGES,
        "channel" => entry.channel.as_str(),
        "rule" => msg.rule.clone().unwrap_or_else(|| msg.kind.as_str().to_owned()),
        "result" => result,
    )
    .increment(1);
}

/// The scheduler planned a case that fell due at `due`, at `now`.
pub fn due_lateness(due: DateTime<Utc>, now: DateTime<Utc>) {
    histogram!(DUE_LATENESS).record(seconds_since(due, now));
}

/// Another replica wrote a case between a change's read and its commit.
pub fn store_conflict() {
    counter!(STORE_CONFLICTS).increment(1);
}

/// Another replica took over a message this one had claimed.
pub fn lease_lost() {
    counter!(LEASES_LOST).increment(1);
}

/// The scheduler looked up the next due case in `took`.
pub fn schedule_head(took: Duration) {
    histogram!(SCHEDULE_HEAD).record(took.as_secs_f64());
}

/// A provider's acceptance was marked delivered `took` after its answer.
pub fn delivered_mark(took: Duration) {
    histogram!(MARK_WINDOW).record(took.as_secs_f64());
}

/// A reload finished.
pub fn reload(ok: bool) {
    counter!(RELOADS, "result" => if ok { "success" } else { "failure" }).increment(1);
}

/// A message's template failed to render.
pub fn render_failure(template: &str) {
    counter!(RENDER_FAILURES, "template" => template.to_owned()).increment(1);
}

/// A digest fell back to per-case messages.
pub fn digest_fallback(channel: Channel) {
    counter!(DIGEST_FALLBACKS, "channel" => channel.as_str()).increment(1);
}

/// An `inbound:` entry is configured: its unmapped-value series start at 0.
pub fn inbound_configured(system: &str, source: &str) {
    for what in INBOUND_WHATS {
        counter!(INBOUND_UNMAPPED, "system" => system.to_owned(), "source" => source.to_owned(), "what" => what)
            .increment(0);
    }
}

/// A ticket system sent a value with no mapping (`what`: status, priority,
/// time_zone, locale or phone); the webhook was accepted all the same.
pub fn inbound_unmapped(system: &str, source: &str, what: &'static str) {
    counter!(INBOUND_UNMAPPED, "system" => system.to_owned(), "source" => source.to_owned(), "what" => what)
        .increment(1);
}

/// Middleware: counts every response by status code.
pub async fn track_http(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    counter!(HTTP_REQUESTS, "status" => resp.status().as_str().to_owned()).increment(1);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_never_negative() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("valid");
        assert!(seconds_since(now + chrono::Duration::seconds(5), now).abs() < f64::EPSILON);
        assert!((seconds_since(now - chrono::Duration::seconds(2), now) - 2.0).abs() < 1e-9);
    }
}
