//! Loading a backup (the sled store's format) into the PostgreSQL store,
//! in one transaction: how `tidings migrate-store` moves an installation
//! from sled. Values come in clear and are sealed again under keys of this
//! database, one per case, as if written now; the generated keys (contact
//! salt, unsubscribe key) replace this database's, so contacts, opt-outs
//! and the links already sent keep working.

use std::collections::HashMap;

use uuid::Uuid;

use super::super::sealing::{self, CaseSecret};
use super::super::sled::{ms_of, parse_backup};
use super::{BackupError, BackupSummary, PgStore, Result, StoreError, codec, ms, pg};
use crate::domain::{CaseRecord, OutboxEntry};

/// The tables a load writes; emptied first when it replaces what is there.
const TABLES: &str = "cases, schedule, outbox, delivered, idempotency, recipients, optouts, contacts, inbound, case_keys";

/// Why a load did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the backup: {0}")]
    Backup(#[from] BackupError),
    #[error("the database already holds {0} cases or other records; pass --force to replace them")]
    NotEmpty(i64),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Two columns of bytes (a key and a value).
type Pair = (Vec<u8>, Vec<u8>);
/// A contact and an instant.
type Stamp = (Vec<u8>, i64);
/// A key, its case key, a value in clear, an instant.
type Sealed = (Vec<u8>, Vec<u8>, Vec<u8>, i64);

/// One row of each kind, ready to insert (values still in clear).
#[derive(Default)]
struct Rows {
    settings: Vec<(String, Vec<u8>)>,
    cases: Vec<Pair>,
    schedule: Vec<(i64, Vec<u8>)>,
    /// id, case key, value, due.
    outbox: Vec<(Uuid, Vec<u8>, Vec<u8>, i64)>,
    delivered: Vec<(Uuid, Vec<u8>)>,
    /// hash, case key, value, at.
    idempotency: Vec<Sealed>,
    recipients: Vec<Pair>,
    optouts: Vec<Pair>,
    contacts: Vec<Stamp>,
    inbound: Vec<Stamp>,
}

fn bad(what: &str) -> BackupError {
    BackupError::Format(format!("a malformed {what} entry"))
}

fn instant(key: &[u8], what: &str) -> std::result::Result<i64, BackupError> {
    ms_of(key).map(ms).ok_or_else(|| bad(what))
}

fn uuid(key: &[u8], what: &str) -> std::result::Result<Uuid, BackupError> {
    Uuid::from_slice(key).map_err(|_| bad(what))
}

/// Turns the backup's trees into rows. A stored answer belongs to the case
/// whose record names its key (so the case's erasure takes it); one no
/// case names is kept under the empty case key, until pruned by age.
fn rows(bytes: &[u8]) -> std::result::Result<(Rows, BackupSummary), BackupError> {
    let parsed = parse_backup(bytes)?;
    let tree = |name: &str| {
        parsed
            .trees
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map_or(&[][..], |(_, e)| e.as_slice())
    };
    let mut out = Rows::default();
    let mut answer_of: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (k, v) in tree("cases") {
        let record: CaseRecord = codec::decode(k, v).map_err(|_| bad("cases"))?;
        for key in &record.idempotency_keys {
            answer_of.insert(codec::idempotency_key_bytes(key), k.to_vec());
        }
        out.cases.push((k.to_vec(), v.to_vec()));
    }
    for (k, _) in tree("schedule") {
        let case = k.get(8..).ok_or_else(|| bad("schedule"))?;
        out.schedule.push((instant(k, "schedule")?, case.to_vec()));
    }
    let mut due: HashMap<Uuid, i64> = HashMap::new();
    for (k, _) in tree("outbox_due") {
        let id = uuid(k.get(8..).ok_or_else(|| bad("outbox_due"))?, "outbox_due")?;
        due.insert(id, instant(k, "outbox_due")?);
    }
    for (k, v) in tree("outbox") {
        let entry: OutboxEntry = codec::decode(k, v).map_err(|_| bad("outbox"))?;
        let id = uuid(k, "outbox")?;
        let at = due.get(&id).copied().unwrap_or(ms(entry.next_attempt_at));
        out.outbox.push((id, entry.case.bytes(), v.to_vec(), at));
    }
    for (k, v) in tree("delivered") {
        out.delivered.push((uuid(k, "delivered")?, v.to_vec()));
    }
    for (k, v) in tree("idempotency") {
        let answer: crate::domain::IdempotentResponse =
            codec::decode(k, v).map_err(|_| bad("idempotency"))?;
        let case = answer_of.get(*k).cloned().unwrap_or_default();
        out.idempotency
            .push((k.to_vec(), case, v.to_vec(), ms(answer.at)));
    }
    for (k, _) in tree("recipients") {
        if k.len() <= 32 {
            return Err(bad("recipients"));
        }
        out.recipients.push((k[..32].to_vec(), k[32..].to_vec()));
    }
    for (k, v) in tree("optouts") {
        out.optouts.push((k.to_vec(), v.to_vec()));
    }
    for (k, v) in tree("contacts") {
        out.contacts.push((k.to_vec(), instant(v, "contacts")?));
    }
    for (k, v) in tree("inbound") {
        out.inbound.push((k.to_vec(), instant(v, "inbound")?));
    }
    for (k, v) in tree("meta") {
        let name = String::from_utf8(k.to_vec()).map_err(|_| bad("meta"))?;
        out.settings.push((name, v.to_vec()));
    }
    Ok((out, parsed.summary))
}

impl PgStore {
    /// Loads a backup into this database in one transaction, its values
    /// sealed under fresh per-case keys. Refuses a database that holds any
    /// record unless `replace`, which empties it first (in the same
    /// transaction). Returns what the backup held.
    pub fn load_backup(
        &self,
        bytes: &[u8],
        replace: bool,
    ) -> std::result::Result<BackupSummary, LoadError> {
        let (rows, summary) = rows(bytes)?;
        let loaded = self.run(move |mut conn| async move {
            let tx = conn.raw().transaction().await.map_err(pg)?;
            if replace {
                tx.batch_execute(&format!("TRUNCATE {TABLES}"))
                    .await
                    .map_err(pg)?;
            } else {
                let held: i64 = tx
                    .query_one(
                        "SELECT (SELECT count(*) FROM cases) + (SELECT count(*) FROM outbox)
                              + (SELECT count(*) FROM idempotency) + (SELECT count(*) FROM optouts)
                              + (SELECT count(*) FROM contacts) + (SELECT count(*) FROM inbound)",
                        &[],
                    )
                    .await
                    .map_err(pg)?
                    .get(0);
                if held > 0 {
                    return Ok(Err(held));
                }
            }
            write(&tx, &rows).await?;
            tx.commit().await.map_err(pg)?;
            Ok(Ok(()))
        })?;
        loaded.map_err(LoadError::NotEmpty)?;
        Ok(summary)
    }
}

async fn write(tx: &tokio_postgres::Transaction<'_>, rows: &Rows) -> Result<()> {
    // One key per case key met (a case, or an outbox entry or answer
    // whose case is gone).
    let mut secrets: HashMap<&[u8], CaseSecret> = HashMap::new();
    let keys = rows
        .cases
        .iter()
        .map(|(k, _)| k)
        .chain(rows.outbox.iter().map(|o| &o.1))
        .chain(rows.idempotency.iter().map(|i| &i.1));
    let insert_key = tx
        .prepare("INSERT INTO case_keys (case_key, id, key) VALUES ($1, $2, $3)")
        .await
        .map_err(pg)?;
    for k in keys {
        if secrets.contains_key(k.as_slice()) {
            continue;
        }
        let fresh = sealing::fresh_key();
        tx.execute(&insert_key, &[k, &&fresh.0[..], &&fresh.1[..]])
            .await
            .map_err(pg)?;
        secrets.insert(k, fresh);
    }
    let secret = |k: &[u8]| {
        secrets
            .get(k)
            .ok_or_else(|| StoreError::Postgres("a case key without its key".into()))
    };
    for (name, value) in &rows.settings {
        tx.execute(
            "INSERT INTO settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[name, value],
        )
        .await
        .map_err(pg)?;
    }
    let st = tx
        .prepare("INSERT INTO cases (case_key, key_id, value) VALUES ($1, $2, $3)")
        .await
        .map_err(pg)?;
    for (k, v) in &rows.cases {
        let s = secret(k)?;
        tx.execute(&st, &[k, &&s.0[..], &sealing::seal(s, v)])
            .await
            .map_err(pg)?;
    }
    let st = tx
        .prepare("INSERT INTO outbox (id, case_key, key_id, value, next_attempt_ms) VALUES ($1, $2, $3, $4, $5)")
        .await
        .map_err(pg)?;
    for (id, k, v, due) in &rows.outbox {
        let s = secret(k)?;
        tx.execute(&st, &[id, k, &&s.0[..], &sealing::seal(s, v), due])
            .await
            .map_err(pg)?;
    }
    let st = tx
        .prepare("INSERT INTO idempotency (key, case_key, key_id, value, at_ms) VALUES ($1, $2, $3, $4, $5)")
        .await
        .map_err(pg)?;
    for (hash, k, v, at) in &rows.idempotency {
        let s = secret(k)?;
        tx.execute(&st, &[hash, k, &&s.0[..], &sealing::seal(s, v), at])
            .await
            .map_err(pg)?;
    }
    let plain = "INSERT INTO recipients (contact, case_key) VALUES ($1, $2)";
    insert_all(tx, plain, &rows.recipients).await?;
    let plain = "INSERT INTO optouts (contact, value) VALUES ($1, $2)";
    insert_all(tx, plain, &rows.optouts).await?;
    let stamp = "INSERT INTO contacts (contact, last_ms) VALUES ($1, $2)";
    insert_all(tx, stamp, &rows.contacts).await?;
    let stamp = "INSERT INTO inbound (contact, last_ms) VALUES ($1, $2)";
    insert_all(tx, stamp, &rows.inbound).await?;
    let stamp = "INSERT INTO schedule (due_ms, case_key) VALUES ($1, $2)";
    insert_all(tx, stamp, &rows.schedule).await?;
    let plain = "INSERT INTO delivered (id, value) VALUES ($1, $2)";
    insert_all(tx, plain, &rows.delivered).await?;
    Ok(())
}

/// Inserts two-column rows, stored as they are (nothing in them is sealed).
async fn insert_all<A, B>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    rows: &[(A, B)],
) -> Result<()>
where
    A: tokio_postgres::types::ToSql + Sync,
    B: tokio_postgres::types::ToSql + Sync,
{
    let st = tx.prepare(sql).await.map_err(pg)?;
    for (a, b) in rows {
        tx.execute(&st, &[a, b]).await.map_err(pg)?;
    }
    Ok(())
}
