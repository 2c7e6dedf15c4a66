//! The schema, by migrations embedded in the binary and recorded in
//! `schema_migrations`; the settings every replica shares; the daemon's
//! advisory lock.

use tokio_postgres::Client;

use super::pool::{Pool, connect, run_on, runtime};
use super::{PgStoreConfig, Result, StoreError, parse_config, pg};

/// Every migration, in order: its version, its name, its SQL.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (2, "inbound", include_str!("migrations/0002_inbound.sql")),
    (3, "replicas", include_str!("migrations/0003_replicas.sql")),
    (
        4,
        "live_replicas",
        include_str!("migrations/0004_live_replicas.sql"),
    ),
];

/// The advisory lock migrations take (one migrator at a time).
const MIGRATION_LOCK: i64 = 0x7469_6469_6e67_0001;
/// The advisory lock a daemon holds for its lifetime: shared by replicas,
/// taken exclusively by what must have the database alone (`migrate-store`).
pub(super) const DAEMON_LOCK: i64 = 0x7469_6469_6e67_0002;

/// Applies the migrations the database lacks, each in its own transaction
/// (under an advisory lock, so two openers do not race); returns the names
/// of those applied.
pub(super) async fn apply(client: &mut Client) -> Result<Vec<String>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(pg)?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(pg)?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            let StoreError::Postgres(m) = pg(e) else {
                unreachable!("pg errors are Postgres errors")
            };
            StoreError::Postgres(format!("migration {version:04} ({name}): {m}"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        applied.push(format!("{version:04}_{name}"));
    }
    Ok(applied)
}

/// `tidings migrate`: applies what the database lacks; returns the names
/// of the migrations applied (none when it was up to date).
pub fn migrate(config: &PgStoreConfig) -> Result<Vec<String>> {
    let pg_config = parse_config(&config.url)?;
    let rt = runtime()?;
    let pool = std::sync::Arc::new(Pool::new(pg_config, 1));
    let applied = run_on(rt.handle(), &pool, |mut conn| async move {
        apply(conn.raw()).await
    });
    drop(pool);
    rt.shutdown_background();
    applied
}

/// A random 32-byte key made on first use and kept in `settings`:
/// whichever opener's insert lands first wins, and every replica reads it.
pub(super) async fn generated_key(client: &mut Client, name: &str) -> Result<[u8; 32]> {
    let fresh: [u8; 32] = rand::random();
    client
        .execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &&fresh[..]],
        )
        .await
        .map_err(pg)?;
    let row = client
        .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
        .await
        .map_err(pg)?;
    let value: Vec<u8> = row.get(0);
    <[u8; 32]>::try_from(value.as_slice())
        .map_err(|_| StoreError::Postgres(format!("settings: {name} is not 32 bytes")))
}

/// Opens a session of its own and takes the daemon lock in it (shared, as
/// every replica does, or alone); the lock lasts as long as the session.
/// `Ok(Err(why))` when a session holds it in the other way (naming that
/// session); `Err` when the database cannot be asked.
pub(super) async fn take_daemon_lock(
    config: &tokio_postgres::Config,
    shared: bool,
) -> Result<std::result::Result<Client, String>> {
    let client = connect(config).await?;
    let sql = if shared {
        "SELECT pg_try_advisory_lock_shared($1)"
    } else {
        "SELECT pg_try_advisory_lock($1)"
    };
    let row = client.query_one(sql, &[&DAEMON_LOCK]).await.map_err(pg)?;
    if row.get::<_, bool>(0) {
        return Ok(Ok(client));
    }
    let holder = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid
              LIMIT 1",
            &[&DAEMON_LOCK],
        )
        .await
        .ok()
        .flatten()
        .map(|r| {
            format!(
                " (held by PostgreSQL backend pid {}, application `{}`, from {})",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .unwrap_or_default();
    Ok(Err(if shared {
        format!(
            "another tidings process has this database to itself (a `migrate-store`): \
             its advisory lock {DAEMON_LOCK} is taken exclusively{holder}"
        )
    } else {
        format!(
            "tidings daemons are using this database (its advisory lock {DAEMON_LOCK} is \
             taken{holder}); stop every replica first"
        )
    }))
}
