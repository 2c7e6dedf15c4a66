//! `tidings backup` and `tidings restore`: a consistent copy of the store
//! in a folder, and a store made again from one.
//!
//! sled allows one process per database. When the daemon is stopped the
//! command opens the store itself; while it runs, the store is locked and
//! the copy is asked of the daemon (`POST /-/backup` with the admin token
//! from `TIDINGS_ADMIN_TOKEN`), which takes it at a single point in time.
//! Either way the folder gets `tidings.backup` and `manifest.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::Utc;

use crate::config::Locations;
use crate::domain::clock::{Clock, SystemClock};
use crate::store::{BackupSummary, SledStore, verify_backup};

pub const BACKUP_FILE: &str = "tidings.backup";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Where `tidings backup` reads the admin token for an online copy.
pub const ADMIN_TOKEN_ENV: &str = "TIDINGS_ADMIN_TOKEN";

/// How a copy was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The daemon was stopped; the command read the store itself.
    Offline,
    /// The daemon was running and made the copy.
    Daemon,
}

#[derive(Debug, serde::Serialize)]
struct Manifest<'a> {
    created_at: chrono::DateTime<Utc>,
    via: Via,
    version: &'static str,
    #[serde(flatten)]
    summary: &'a BackupSummary,
}

fn db_dir(config: &Locations) -> PathBuf {
    config.data_dir.join("db")
}

/// Copies the store into `to` (created if needed).
pub async fn backup(config: &Locations, to: &Path) -> anyhow::Result<(BackupSummary, Via)> {
    let db = db_dir(config);
    if config.postgres_store {
        // The daemon reads its database; offline, pg_dump does.
        std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
        let bytes = from_daemon(config)
            .await
            .context("store: postgres is backed up through the running daemon (or with pg_dump)")?;
        return finish(to, &bytes);
    }
    if !db.exists() {
        bail!("no store at {}", db.display());
    }
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let partial = to.join(format!("{BACKUP_FILE}.partial"));
    let (summary, via) = match SledStore::open(&db) {
        Ok(store) => {
            let file = std::fs::File::create(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            let summary = store
                .backup(std::io::BufWriter::new(file))
                .await
                .context("reading the store")?;
            (summary, Via::Offline)
        }
        // Locked: the daemon holds it.
        Err(_) => {
            let bytes = from_daemon(config).await?;
            return finish(to, &bytes);
        }
    };
    seal_folder(to, &partial, &summary, via)?;
    Ok((summary, via))
}

/// Writes the daemon's copy into `to`, once it verifies.
fn finish(to: &Path, bytes: &[u8]) -> anyhow::Result<(BackupSummary, Via)> {
    let summary = verify_backup(bytes).context("the daemon's copy")?;
    let partial = to.join(format!("{BACKUP_FILE}.partial"));
    std::fs::write(&partial, bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    seal_folder(to, &partial, &summary, Via::Daemon)?;
    Ok((summary, Via::Daemon))
}

/// Syncs the copy, moves it in place and writes the manifest beside it.
fn seal_folder(to: &Path, partial: &Path, summary: &BackupSummary, via: Via) -> anyhow::Result<()> {
    std::fs::File::open(partial).and_then(|f| f.sync_all())?;
    std::fs::rename(partial, to.join(BACKUP_FILE))?;
    let manifest = Manifest {
        created_at: SystemClock.now(),
        via,
        version: env!("CARGO_PKG_VERSION"),
        summary,
    };
    std::fs::write(
        to.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(())
}

async fn from_daemon(config: &Locations) -> anyhow::Result<Vec<u8>> {
    super::ask_daemon(config, reqwest::Method::POST, "/-/backup", "online backup").await
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} already holds a store; stop the daemon and pass --force to replace it")]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Makes the store in `data_dir` again from the copy in `from`. An existing
/// store is replaced only with `force`, and never while the daemon runs.
pub fn restore(
    config: &Locations,
    from: &Path,
    force: bool,
) -> Result<BackupSummary, RestoreError> {
    if config.postgres_store {
        return Err(RestoreError::Failed(anyhow::anyhow!(
            "restore makes a sled store in data_dir, and this config uses store: postgres; \
             restore with the config's store set to sled, or restore the database with pg_restore"
        )));
    }
    let file = from.join(BACKUP_FILE);
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    verify_backup(&bytes).with_context(|| file.display().to_string())?;
    let db = db_dir(config);
    let occupied = std::fs::read_dir(&db).is_ok_and(|mut d| d.next().is_some());
    if occupied && !force {
        return Err(RestoreError::NotEmpty(db));
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let restoring = config.data_dir.join("db.restoring");
    if restoring.exists() {
        std::fs::remove_dir_all(&restoring).context("removing an unfinished restore")?;
    }
    let summary = SledStore::restore(&restoring, &bytes).context("writing the store")?;
    if occupied {
        // Opening it proves no daemon holds it; then it goes.
        drop(SledStore::open(&db).map_err(|e| {
            anyhow::anyhow!("{} is in use (stop the daemon first): {e}", db.display())
        })?);
        std::fs::remove_dir_all(&db).with_context(|| format!("cannot remove {}", db.display()))?;
    } else if db.exists() {
        std::fs::remove_dir(&db).ok();
    }
    std::fs::rename(&restoring, &db)
        .with_context(|| format!("cannot move the restored store to {}", db.display()))?;
    Ok(summary)
}
