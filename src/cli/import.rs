//! `tidings import`: cases in bulk from a JSON-lines file, one case a
//! line, each the body of `PUT /v1/cases/{id}` with its `id` added.
//!
//! Every line goes through `Service::put_case`, as an API request does:
//! the same validation, the same acknowledgement planned, and each case
//! durable before it counts as imported. Many lines are in flight at once
//! so their flushes are shared. The command opens the store itself, so it
//! refuses while the daemon holds it. It prints progress and rejections,
//! never a line's content: a rejection names the line, the column and the
//! field.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::config::StoreChoice;
use crate::domain::clock::{SharedClock, v7_ids};
use crate::domain::{CaseId, CaseInput, CaseRecord, Diagnostic};
use crate::service::{Reply, Service, ServiceError};
use crate::store::{PgStore, PgStoreConfig, SledStore, Storage};

/// Lines stored concurrently: enough that one flush covers many of them.
const IN_FLIGHT: usize = 64;
/// Rejections printed one by one; beyond this, only counted.
pub const SHOWN_REJECTIONS: usize = 1_000;

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    pub column: u64,
    /// The field at fault, as the API's error names it (`customer.email`).
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    /// The rejection as a `file:line:column: message` diagnostic.
    pub fn diagnostic(&self, file: &Path) -> Diagnostic {
        let message = match &self.field {
            Some(f) => format!("{f}: {}", self.message),
            None => self.message.clone(),
        };
        Diagnostic::new(file, self.line, self.column, message)
    }
}

/// What an import did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Lines read (blank lines are skipped and not counted).
    pub lines: u64,
    pub created: u64,
    pub replaced: u64,
    /// Every rejection, in line order.
    pub rejected: Vec<Rejection>,
}

impl Summary {
    pub fn imported(&self) -> u64 {
        self.created + self.replaced
    }
}

/// What the caller is shown while an import runs.
pub trait Progress {
    /// Called about once a second, and once at the end.
    fn report(&mut self, so_far: &Summary, elapsed: Duration, done: bool);
}

/// Progress as a line on stderr about once a second.
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn report(&mut self, s: &Summary, elapsed: Duration, done: bool) {
        let rate = s.imported() as f64 / elapsed.as_secs_f64().max(0.001);
        eprintln!(
            "import: {} lines read, {} stored ({} new, {} replaced), {} rejected, {rate:.0} cases/s{}",
            s.lines,
            s.imported(),
            s.created,
            s.replaced,
            s.rejected.len(),
            if done { ", done" } else { "" }
        );
    }
}

/// Why an import stopped before the end of the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "the store in {0} is in use (is the daemon running?); stop the daemon before an import, or send the cases to PUT /v1/cases"
    )]
    InUse(PathBuf),
    #[error(
        "source `{0}` has no API token in the config; the imported cases would be unreachable (sources: {1})"
    )]
    UnknownSource(String, String),
    #[error("the config has several sources ({0}); name one with --source")]
    WhichSource(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The source the cases are filed under: `requested`, or the config's
/// only one.
pub fn source_for(config: &Config, requested: Option<&str>) -> Result<String, ImportError> {
    let mut sources: Vec<&str> = config.tokens.iter().map(|t| t.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    let list = sources.join(", ");
    match requested {
        Some(s) if sources.contains(&s) => Ok(s.to_owned()),
        Some(s) => Err(ImportError::UnknownSource(s.to_owned(), list)),
        None if sources.len() == 1 => Ok(sources[0].to_owned()),
        None => Err(ImportError::WhichSource(list)),
    }
}

/// Imports every line of `file` into the store of `config`, under
/// `source`. Returns once every imported case is on disk.
pub async fn import(
    config: &Config,
    file: &Path,
    source: &str,
    clock: SharedClock,
    progress: &mut dyn Progress,
) -> Result<Summary, ImportError> {
    let reader = std::fs::File::open(file)
        .map(std::io::BufReader::new)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut engine = crate::runtime::build::build_engine(config, v7_ids(), clock.now())
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let storage: Arc<dyn Storage> = match &config.store {
        StoreChoice::Sled => {
            let db = config.data_dir.join("db");
            let store = SledStore::open(&db).map_err(|e| {
                if e.to_string().contains("could not acquire lock") {
                    ImportError::InUse(db.clone())
                } else {
                    ImportError::Failed(anyhow::anyhow!("the store in {}: {e}", db.display()))
                }
            })?;
            store.set_reserve(config.storage_reserve);
            Arc::new(store)
        }
        // The daemon's lock keeps a running daemon and an import apart.
        StoreChoice::Postgres {
            url,
            pool_size,
            lease,
        } => {
            let pg = PgStoreConfig {
                url: url.clone(),
                pool_size: *pool_size,
                lease: *lease,
            };
            let store = PgStore::open(&pg)
                .and_then(|s| s.lock_daemon().map(|()| s))
                .map_err(|e| ImportError::Failed(anyhow::anyhow!("the postgres store: {e}")))?;
            Arc::new(store)
        }
    };
    crate::runtime::build::with_store_keys(&mut engine, &*storage);
    let svc = Service::new(storage, Arc::new(engine), clock, config.defaults());
    let source: Arc<str> = source.into();

    let started = Instant::now();
    let mut last_report = started;
    let mut summary = Summary::default();
    let mut tasks: JoinSet<(u64, String, Put)> = JoinSet::new();
    let mut in_flight = HashSet::new();
    for (n, line) in reader.lines().enumerate() {
        let number = n as u64 + 1;
        let line = line.with_context(|| format!("{}:{number}: cannot read", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let (id, input) = match parse_line(&line) {
            Ok(parsed) => parsed,
            Err(mut r) => {
                r.line = number;
                summary.rejected.push(r);
                continue;
            }
        };
        // Two lines for one case are stored in file order: the later waits
        // for the earlier, as a client's second PUT waits for its first.
        let key = id.to_string();
        while tasks.len() >= IN_FLIGHT || in_flight.contains(&key) {
            settle(&mut tasks, &mut summary, &mut in_flight).await?;
        }
        in_flight.insert(key.clone());
        let (svc, source) = (svc.clone(), source.clone());
        tasks.spawn(async move {
            let put = svc.put_case(&source, id, input, None, &no_response).await;
            let outcome = match put {
                Ok(reply) => Ok(matches!(reply, Reply::Done((_, created)) if created)),
                Err(ServiceError::Invalid(e)) => Err(Ok(Rejection {
                    line: number,
                    column: column_of(&line, &e.field),
                    field: Some(e.field),
                    message: e.message,
                })),
                Err(e) => Err(Err(e)),
            };
            (number, key, outcome)
        });
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress.report(&summary, started.elapsed(), false);
        }
    }
    while !tasks.is_empty() {
        settle(&mut tasks, &mut summary, &mut in_flight).await?;
    }
    // Each put waited for its own flush; this one covers nothing new, and
    // makes the end of the import plainly durable.
    svc.flush().await.context("the final flush")?;
    drop(svc);
    if matches!(config.store, StoreChoice::Sled) {
        // sled writes its snapshot only when it opens a store, reading all
        // the log written since the last one: an open now, while the
        // import is still running, spares the daemon's next start that
        // replay of every imported case.
        let db = config.data_dir.join("db");
        SledStore::open(&db)
            .map(drop)
            .map_err(|e| anyhow::anyhow!("reopening the store in {}: {e}", db.display()))?;
    }
    summary.rejected.sort_by_key(|r| r.line);
    progress.report(&summary, started.elapsed(), true);
    Ok(summary)
}

/// A put's outcome: created (or replaced), rejected, or a store failure.
type Put = Result<bool, Result<Rejection, ServiceError>>;

/// Waits for one put and files its outcome; a store failure stops the
/// import (an invalid case does not).
async fn settle(
    tasks: &mut JoinSet<(u64, String, Put)>,
    summary: &mut Summary,
    in_flight: &mut HashSet<String>,
) -> Result<(), ImportError> {
    let Some(joined) = tasks.join_next().await else {
        return Ok(());
    };
    let (line, key, outcome) = joined.context("an import task failed")?;
    in_flight.remove(&key);
    match outcome {
        Ok(true) => summary.created += 1,
        Ok(false) => summary.replaced += 1,
        Err(Ok(rejection)) => summary.rejected.push(rejection),
        Err(Err(e)) => {
            return Err(anyhow::anyhow!("line {line}: storing the case failed: {e}").into());
        }
    }
    Ok(())
}

fn no_response(_: &CaseRecord, _: bool) -> (u16, serde_json::Value) {
    (200, serde_json::Value::Null)
}

/// One line: a JSON object, the body of `PUT /v1/cases/{id}` with an `id`
/// member. The rejection's `line` is left for the caller to fill.
pub fn parse_line(text: &str) -> Result<(CaseId, CaseInput), Rejection> {
    let reject = |column: u64, field: Option<String>, message: String| Rejection {
        line: 0,
        column,
        field,
        message,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        reject(
            e.column() as u64,
            None,
            format!("not valid JSON: {message}"),
        )
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(reject(
            1,
            None,
            "a line must hold one JSON object, a case".into(),
        ));
    };
    let id = match object.remove("id") {
        Some(serde_json::Value::String(s)) => s
            .parse::<CaseId>()
            .map_err(|m| reject(column_of(text, "id"), Some("id".into()), m))?,
        Some(_) => {
            return Err(reject(
                column_of(text, "id"),
                Some("id".into()),
                "must be a string".into(),
            ));
        }
        None => {
            return Err(reject(
                1,
                Some("id".into()),
                "missing: each line needs the case's id".into(),
            ));
        }
    };
    let input: CaseInput = serde_path_to_error::deserialize(serde_json::Value::Object(object))
        .map_err(|e| {
            let path = e.path().to_string();
            let field = (path != ".").then_some(path);
            let column = field.as_deref().map_or(1, |f| column_of(text, f));
            reject(column, field, e.into_inner().to_string())
        })?;
    Ok((id, input))
}

/// Where `field` (a dotted path such as `customer.email` or `tags[2]`) is
/// named in `text`: the column of its last member's key, or 1.
fn column_of(text: &str, field: &str) -> u64 {
    let last = field
        .rsplit('.')
        .next()
        .unwrap_or(field)
        .split('[')
        .next()
        .unwrap_or(field);
    let key = format!("\"{last}\"");
    text.find(&key)
        .map_or(1, |at| text[..at].chars().count() as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        r#"{"id":"T-1","subject":"Router","customer":{"name":"Ana","email":"ana@example.com"}}"#;

    #[test]
    fn a_line_is_the_put_body_with_its_id() {
        let (id, input) = parse_line(GOOD).expect("valid");
        assert_eq!(id.to_string(), "T-1");
        assert_eq!(input.subject, "Router");
    }

    #[test]
    fn a_rejection_names_the_field_and_its_column() {
        let line = r#"{"id":"T-1","subject":"x","customer":{"name":"Ana","emial":"a@b.c"}}"#;
        let r = parse_line(line).expect_err("unknown field");
        assert_eq!(r.field.as_deref(), Some("customer.emial"));
        assert_eq!(r.column, line.find("\"emial\"").expect("there") as u64 + 1);

        let r = parse_line(r#"{"id":"a b","subject":"x"}"#).expect_err("bad id");
        assert_eq!((r.field.as_deref(), r.column), (Some("id"), 2));

        let r = parse_line(r#"{"subject":"x"}"#).expect_err("no id");
        assert_eq!(r.field.as_deref(), Some("id"));

        let r = parse_line(r#"{"id":"T-2","subject":"x","#).expect_err("broken");
        assert_eq!(r.field, None);
        assert!(r.message.starts_with("not valid JSON"), "{}", r.message);

        let r = parse_line("[1]").expect_err("not an object");
        assert_eq!(r.column, 1);
    }

    #[test]
    fn a_diagnostic_reads_file_line_column_field() {
        let r = Rejection {
            line: 7,
            column: 12,
            field: Some("customer.phone".into()),
            message: "not E.164".into(),
        };
        assert_eq!(
            r.diagnostic(Path::new("cases.jsonl")).to_string(),
            "cases.jsonl:7:12: customer.phone: not E.164"
        );
    }
}
