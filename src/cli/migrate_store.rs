//! `tidings migrate-store --from sled:PATH --to postgres`: copies a stopped
//! sled store into the PostgreSQL database the config names. The sled
//! store is read through its backup walk (values opened, erased cases
//! left out), loaded into PostgreSQL in one transaction under fresh
//! per-case keys, then read back through PostgreSQL's own backup walk:
//! every kind of record is counted on both sides and the counts must match.

use std::path::{Path, PathBuf};

use crate::config::{Config, StoreChoice};
use crate::store::{BackupSummary, LoadError, PgStore, PgStoreConfig, SledStore};

/// Why the copy did not happen (or did not check out).
#[derive(Debug, thiserror::Error)]
pub enum MigrateStoreError {
    /// Bad arguments, a store in use, a target already holding records.
    #[error("{0}")]
    Refused(String),
    /// Something failed on the way, or the counts differ.
    #[error("{0}")]
    Failed(String),
}

/// One kind of record: how many were read from sled and found in
/// PostgreSQL after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub kind: String,
    pub read: u64,
    pub written: u64,
}

/// What the copy did.
#[derive(Debug, Clone)]
pub struct Report {
    pub from: PathBuf,
    pub counts: Vec<Count>,
    /// Values of erased cases the sled store still held (unreadable by
    /// design), not copied.
    pub shredded: u64,
}

impl Report {
    /// Whether every kind arrived whole.
    pub fn matches(&self) -> bool {
        self.counts.iter().all(|c| c.read == c.written)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:<12} {:>10} {:>10}", "kind", "read", "written")?;
        for c in &self.counts {
            let flag = if c.read == c.written {
                ""
            } else {
                "  MISMATCH"
            };
            writeln!(f, "{:<12} {:>10} {:>10}{flag}", c.kind, c.read, c.written)?;
        }
        if self.shredded > 0 {
            writeln!(
                f,
                "{} values of erased cases left out (their keys are destroyed)",
                self.shredded
            )?;
        }
        Ok(())
    }
}

/// The sled database directory `from` names: the store's own directory,
/// or a `data_dir` holding it in `db`.
fn sled_dir(from: &str) -> Result<PathBuf, MigrateStoreError> {
    let path = from.strip_prefix("sled:").ok_or_else(|| {
        MigrateStoreError::Refused(format!(
            "--from {from}: expected sled:PATH (the store's directory, or the data_dir holding it)"
        ))
    })?;
    let path = Path::new(path);
    [path.to_path_buf(), path.join("db")]
        .into_iter()
        .find(|p| p.join("conf").is_file())
        .ok_or_else(|| {
            MigrateStoreError::Refused(format!(
                "--from sled:{}: no sled store there (neither it nor its db/ holds one)",
                path.display()
            ))
        })
}

/// Counts per kind on both sides (kinds empty on both are left out).
fn compare(read: &BackupSummary, written: &BackupSummary) -> Vec<Count> {
    let kinds: std::collections::BTreeSet<&String> =
        read.trees.keys().chain(written.trees.keys()).collect();
    kinds
        .into_iter()
        .map(|kind| Count {
            kind: kind.clone(),
            read: read.trees.get(kind).copied().unwrap_or(0),
            written: written.trees.get(kind).copied().unwrap_or(0),
        })
        .filter(|c| c.read > 0 || c.written > 0)
        .collect()
}

/// Copies the sled store `from` (`sled:PATH`) into the database of
/// `config` (`to` must be `postgres`). `force` replaces what the database
/// holds; without it, a database holding records is refused.
pub fn migrate_store(
    config: &Config,
    from: &str,
    to: &str,
    force: bool,
) -> Result<Report, MigrateStoreError> {
    let refused = MigrateStoreError::Refused;
    let failed =
        |what: &str, e: &dyn std::fmt::Display| MigrateStoreError::Failed(format!("{what}: {e}"));
    if to != "postgres" {
        return Err(refused(format!(
            "--to {to}: only postgres is a target (the database the config names)"
        )));
    }
    let StoreChoice::Postgres {
        url,
        pool_size,
        lease,
    } = &config.store
    else {
        return Err(refused(
            "the config's store is sled; --to postgres needs `store: { postgres: … }` in it".into(),
        ));
    };
    let dir = sled_dir(from)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("cannot start the runtime", &e))?;

    let sled = SledStore::open(&dir).map_err(|e| {
        refused(format!(
            "{} cannot be opened (is a daemon running on it? stop it first): {e}",
            dir.display()
        ))
    })?;
    let mut copy = Vec::new();
    let read = rt
        .block_on(sled.backup(&mut copy))
        .map_err(|e| failed("reading the sled store", &e))?;
    drop(sled);

    let pg = PgStore::open(&PgStoreConfig {
        url: url.clone(),
        pool_size: *pool_size,
        lease: *lease,
    })
    .map_err(|e| failed("the postgres store", &e))?;
    // No daemon may run on the target meanwhile.
    pg.lock_alone().map_err(|e| refused(e.to_string()))?;
    pg.load_backup(&copy, force).map_err(|e| match e {
        LoadError::NotEmpty(_) => refused(e.to_string()),
        e => failed("writing the postgres store", &e),
    })?;
    drop(copy);

    let mut check = Vec::new();
    let written = rt
        .block_on(pg.backup(&mut check))
        .map_err(|e| failed("reading the postgres store back", &e))?;
    Ok(Report {
        from: dir,
        counts: compare(&read, &written),
        shredded: read.shredded,
    })
}
