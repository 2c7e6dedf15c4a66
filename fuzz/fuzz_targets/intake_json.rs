//! Request bodies of any bytes through the API's own parsing of
//! `PUT /v1/cases/{id}` (`CaseInput`, `into_case`) and
//! `POST /v1/cases/{id}/events` (`EventInput`, `validate`); whatever is
//! accepted then goes through planning with the shipped rules and templates
//! (the acknowledgement, the next progress update, an event on an existing
//! case), as the service would do next. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use tidings::http::api::{MAX_BODY, parse_json};
use tidings::config::Config;
use tidings::domain::{CaseId, CaseInput, Defaults, EventInput};
use tidings::engine::plan::Engine;
use tidings::domain::CaseRecord;

struct Fixture {
    defaults: Defaults,
    engine: Engine,
    /// The example case of the README, planned: events apply to it.
    existing: CaseRecord,
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("valid instant")
}

fn id() -> CaseId {
    "CASE-20931".parse().expect("valid id")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let repo = tidings_fuzz::repo();
        let config = Config::load(&repo.join("tidings.yaml")).expect("the shipped config loads");
        let engine = tidings::cli::engine(&config).expect("the shipped set builds");
        let body = std::fs::read(repo.join("examples/case-en-newyork.json")).expect("example");
        let input: CaseInput = parse_json(&body).unwrap_or_else(|_| panic!("example parses"));
        let case = input
            .into_case(id(), "fuzz", &config.defaults(), now(), None)
            .expect("example is valid");
        let existing = engine.upsert(None, case, now()).record.expect("a record");
        Fixture {
            defaults: config.defaults(),
            engine,
            existing,
        }
    })
}

/// Runs the scheduler's step for a record that has one due.
fn run_due(engine: &Engine, record: Option<CaseRecord>) {
    let Some(record) = record else { return };
    if let Some(due) = record.schedule.due_at {
        let _ = engine.due(record, due);
    }
}

fuzz_target!(|body: &[u8]| {
    if body.len() > MAX_BODY {
        return;
    }
    let fx = fixture();
    if let Ok(input) = parse_json::<CaseInput>(body) {
        if let Ok(case) = input.into_case(id(), "fuzz", &fx.defaults, now(), None) {
            // As a new case, and as a replacement of an existing one.
            run_due(
                &fx.engine,
                fx.engine.upsert(None, case.clone(), now()).record,
            );
            run_due(
                &fx.engine,
                fx.engine
                    .upsert(Some(fx.existing.clone()), case, now())
                    .record,
            );
        }
    }
    if let Ok(input) = parse_json::<EventInput>(body) {
        if let Ok(event) = input.validate() {
            let planned = fx.engine.event(fx.existing.clone(), event, now());
            run_due(&fx.engine, planned.record);
        }
    }
});
