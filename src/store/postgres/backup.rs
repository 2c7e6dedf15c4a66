//! A backup of the PostgreSQL store in the backup format the sled store
//! writes (`sled/ops.rs`): the same trees, keyed as sled keys them, values
//! in clear, read from one snapshot (a repeatable-read transaction). A
//! value whose key is gone (what is left of an erased case) is counted as
//! shredded and not copied. `tidings restore` makes a sled store of it.
//!
//! The whole copy is read into memory before it is written; for a large
//! database, `pg_dump` is the better tool.

use uuid::Uuid;

use super::super::sealing::SealError;
use super::super::sled::{BackupWriter, ms_key};
use super::reads::unseal;
use super::{BackupError, BackupSummary, PgStore, Result, from_ms, pg};

/// The trees, in the order sled lists them, with their entries.
type Trees = Vec<(&'static str, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Each tree's rows: its name, its query, whether its values are sealed
/// (value, key as the last two columns) and how a row becomes a sled key.
async fn snapshot(tx: &tokio_postgres::Transaction<'_>) -> Result<(Trees, u64)> {
    let mut shredded = 0;
    let mut trees: Trees = Vec::new();
    let rows = |sql: &'static str| async move { tx.query(sql, &[]).await.map_err(pg) };
    let at = |ms: i64, suffix: &[u8]| from_ms(ms).map(|t| ms_key(t, suffix));

    let mut sealed = |value: Vec<u8>, key: Option<Vec<u8>>| match unseal(&value, key) {
        Ok(plain) => Ok(Some(plain)),
        Err(SealError::MissingKey) => {
            shredded += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    };

    let mut cases = Vec::new();
    for r in rows(
        "SELECT c.case_key, c.value, k.key FROM cases c
         LEFT JOIN case_keys k ON k.id = c.key_id ORDER BY c.case_key",
    )
    .await?
    {
        if let Some(plain) = sealed(r.get(1), r.get(2))? {
            cases.push((r.get(0), plain));
        }
    }
    let mut outbox = Vec::new();
    let mut outbox_due = Vec::new();
    for r in rows(
        "SELECT o.id, o.next_attempt_ms, o.value, k.key FROM outbox o
         LEFT JOIN case_keys k ON k.id = o.key_id ORDER BY o.id",
    )
    .await?
    {
        let id: Uuid = r.get(0);
        if let Some(plain) = sealed(r.get(2), r.get(3))? {
            outbox.push((id.as_bytes().to_vec(), plain));
            outbox_due.extend(at(r.get(1), id.as_bytes()).map(|k| (k, Vec::new())));
        }
    }
    outbox_due.sort();
    let mut idempotency = Vec::new();
    for r in rows(
        "SELECT i.key, i.value, k.key FROM idempotency i
         LEFT JOIN case_keys k ON k.id = i.key_id ORDER BY i.key",
    )
    .await?
    {
        if let Some(plain) = sealed(r.get(1), r.get(2))? {
            idempotency.push((r.get(0), plain));
        }
    }
    let pairs = |rows: Vec<tokio_postgres::Row>| -> Vec<(Vec<u8>, Vec<u8>)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let meta =
        pairs(rows("SELECT convert_to(name, 'UTF8'), value FROM settings ORDER BY name").await?);
    let mut schedule: Vec<(Vec<u8>, Vec<u8>)> = rows("SELECT due_ms, case_key FROM schedule")
        .await?
        .iter()
        .filter_map(|r| at(r.get(0), &r.get::<_, Vec<u8>>(1)).map(|k| (k, Vec::new())))
        .collect();
    schedule.sort();
    let recipients =
        rows("SELECT contact || case_key FROM recipients ORDER BY contact || case_key")
            .await?
            .iter()
            .map(|r| (r.get(0), Vec::new()))
            .collect();
    let contacts = rows("SELECT contact, last_ms FROM contacts ORDER BY contact")
        .await?
        .iter()
        .filter_map(|r| at(r.get(1), &[]).map(|v| (r.get(0), v)))
        .collect();
    let inbound = rows("SELECT contact, last_ms FROM inbound ORDER BY contact")
        .await?
        .iter()
        .filter_map(|r| at(r.get(1), &[]).map(|v| (r.get(0), v)))
        .collect();
    let delivered = rows("SELECT id, value FROM delivered ORDER BY id")
        .await?
        .iter()
        .map(|r| (r.get::<_, Uuid>(0).as_bytes().to_vec(), r.get(1)))
        .collect();
    let optouts = pairs(rows("SELECT contact, value FROM optouts ORDER BY contact").await?);
    trees.extend([
        ("cases", cases),
        ("contacts", contacts),
        ("delivered", delivered),
        ("idempotency", idempotency),
        ("inbound", inbound),
        ("meta", meta),
        ("optouts", optouts),
        ("outbox", outbox),
        ("outbox_due", outbox_due),
        ("recipients", recipients),
        ("schedule", schedule),
    ]);
    Ok((trees, shredded))
}

impl PgStore {
    /// Writes a consistent copy of the store to `out`, in the backup format.
    pub async fn backup(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> std::result::Result<BackupSummary, BackupError> {
        let (trees, shredded) = self
            .run_async(|mut conn| async move {
                let tx = conn
                    .raw()
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg)?;
                let copy = snapshot(&tx).await?;
                tx.commit().await.map_err(pg)?;
                Ok(copy)
            })
            .await?;
        let mut w = BackupWriter::start(out)?;
        for (name, entries) in trees {
            w.tree(name.as_bytes())?;
            for (k, v) in entries {
                w.entry(&k, &v)?;
            }
        }
        for _ in 0..shredded {
            w.shredded();
        }
        w.finish()
    }
}
