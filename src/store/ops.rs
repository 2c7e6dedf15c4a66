//! Operator-facing reads of the store: walking every case (reload,
//! counting at start-up) and the head of the outbox (metrics).
//!
//! These live beside `store` (they read its trees) but are not part of the
//! request path: nothing here is called per request.

use chrono::{DateTime, Utc};

use crate::domain::Status;

use super::{CaseRecord, Result, Store, decode, ms_of};

impl Store {
    /// Every stored case, in key order: one pass over the cases tree.
    pub fn scan_cases(&self) -> impl Iterator<Item = Result<CaseRecord>> + '_ {
        self.cases.iter().map(|item| {
            let (k, v) = item?;
            decode(&k, &v)
        })
    }

    /// The status of every stored case: one pass over the cases tree that
    /// reads only the status field of each record.
    pub fn scan_case_statuses(&self) -> impl Iterator<Item = Result<Status>> + '_ {
        #[derive(serde::Deserialize)]
        struct Only {
            case: OnlyCase,
        }
        #[derive(serde::Deserialize)]
        struct OnlyCase {
            status: Status,
        }
        self.cases.iter().map(|item| {
            let (k, v) = item?;
            decode::<Only>(&k, &v).map(|o| o.case.status)
        })
    }

    /// When the earliest outbox entry is (or was) due, if any.
    pub fn outbox_head(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(self.outbox_due.first()?.and_then(|(k, _)| ms_of(&k)))
    }
}
