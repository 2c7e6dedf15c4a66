//! The PostgreSQL store's reads and single-row writes: cases, the
//! schedule head, the outbox walk, delivered marks, contacts, opt-outs,
//! pacing, idempotency.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{
    CaseKey, CaseRecord, Contact, DeliveredMark, IdempotentResponse, OptOut, OptOutVia, OutboxEntry,
};

use super::super::sealing::{self, KEY_LEN, SealError};
use super::{BackupError, PgStore, Result, StoreError, codec, from_ms, ms, pg};

/// Opens a stored value with the key its row joined (`None`: the key is
/// gone, the case erased).
pub(super) fn unseal(
    value: &[u8],
    key: Option<Vec<u8>>,
) -> std::result::Result<Vec<u8>, SealError> {
    sealing::open(value, |_| {
        key.and_then(|k| <[u8; KEY_LEN]>::try_from(k.as_slice()).ok())
    })
    .map(std::borrow::Cow::into_owned)
}

/// Decodes a sealed value; `None` when its case was erased (its key gone).
pub(super) fn read_if_live<T: for<'de> Deserialize<'de>>(
    name: &[u8],
    value: &[u8],
    key: Option<Vec<u8>>,
) -> Result<Option<T>> {
    match unseal(value, key) {
        Ok(plain) => codec::decode(name, &plain).map(Some),
        Err(SealError::MissingKey) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A case's sealed record, the key its row joined, and its revision.
type VersionedRow = (Vec<u8>, Option<Vec<u8>>, i64);

/// The job that reads case `k`'s row.
fn versioned_row(
    k: Vec<u8>,
) -> impl FnOnce(super::Conn) -> BoxedJob<Option<VersionedRow>> + Send + 'static {
    move |mut conn| {
        Box::pin(async move {
            let row = conn
                .client()
                .query_opt(
                    "SELECT c.value, k.key, c.rev FROM cases c
                     LEFT JOIN case_keys k ON k.id = c.key_id WHERE c.case_key = $1",
                    &[&k],
                )
                .await
                .map_err(pg)?;
            Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
        })
    }
}

/// A job's future, boxed (it borrows the connection it owns).
type BoxedJob<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

fn decode_versioned(k: &[u8], row: Option<VersionedRow>) -> Result<(Option<CaseRecord>, u64)> {
    match row {
        None => Ok((None, 0)),
        Some((value, key, rev)) => {
            let plain = unseal(&value, key)?;
            let record = codec::decode(k, &plain)?;
            Ok((Some(record), u64::try_from(rev).unwrap_or(0)))
        }
    }
}

/// A sealed value and the key its row joined.
type SealedRow = (Vec<u8>, Option<Vec<u8>>);

/// How many cases a walk reads per query.
const SCAN_BATCH: i64 = 256;

/// A walk over the cases in key order, a batch per query.
struct Scan<'a> {
    store: &'a PgStore,
    after: Option<Vec<u8>>,
    buffer: VecDeque<Result<(Vec<u8>, Vec<u8>)>>,
    done: bool,
}

impl Iterator for Scan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let after = self.after.clone().unwrap_or_default();
            let rows = self.store.run(move |mut conn| async move {
                let rows = conn
                    .client()
                    .query(
                        "SELECT c.case_key, c.value, k.key FROM cases c
                         LEFT JOIN case_keys k ON k.id = c.key_id
                         WHERE c.case_key > $1 ORDER BY c.case_key LIMIT $2",
                        &[&after, &SCAN_BATCH],
                    )
                    .await
                    .map_err(pg)?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect::<Vec<(Vec<u8>, Vec<u8>, Option<Vec<u8>>)>>())
            });
            let rows = match rows {
                Ok(rows) => rows,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.done = rows.len() < SCAN_BATCH as usize;
            for (name, value, key) in rows {
                self.after = Some(name.clone());
                match unseal(&value, key) {
                    Ok(plain) => self.buffer.push_back(Ok((name, plain))),
                    // Erased while the walk runs: not there any more.
                    Err(SealError::MissingKey) => {}
                    Err(e) => self.buffer.push_back(Err(e.into())),
                }
            }
        }
    }
}

impl PgStore {
    /// Every stored case's key and record (in clear), in key order.
    pub(super) fn scan_values(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + '_ {
        Scan {
            store: self,
            after: None,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    /// The sealed value of the row `sql` finds by `param`, with the key
    /// its row joined (`None`: erased).
    fn sealed_of<P>(&self, sql: &'static str, param: P) -> Result<Option<SealedRow>>
    where
        P: tokio_postgres::types::ToSql + Sync + Send + 'static,
    {
        self.run(move |mut conn| async move {
            let row = conn.client().query_opt(sql, &[&param]).await.map_err(pg)?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }

    /// One case as stored, with its revision (0: none stored).
    pub fn get_versioned(&self, key: &CaseKey) -> Result<(Option<CaseRecord>, u64)> {
        let k = key.bytes();
        let row = self.run(versioned_row(k.clone()))?;
        decode_versioned(&k, row)
    }

    /// As `get_versioned`, awaited rather than blocking a thread.
    pub async fn get_versioned_async(&self, key: &CaseKey) -> Result<(Option<CaseRecord>, u64)> {
        let k = key.bytes();
        let row = self.run_async(versioned_row(k.clone())).await?;
        decode_versioned(&k, row)
    }

    pub fn next_due_case(&self) -> Result<Option<(DateTime<Utc>, CaseKey)>> {
        self.run(|mut conn| async move {
            let c = conn.client();
            loop {
                let Some(row) = c
                    .query_opt(
                        "SELECT due_ms, case_key FROM schedule ORDER BY due_ms, case_key LIMIT 1",
                        &[],
                    )
                    .await
                    .map_err(pg)?
                else {
                    return Ok(None);
                };
                let (due, key): (i64, Vec<u8>) = (row.get(0), row.get(1));
                if let (Some(at), Some(case)) = (from_ms(due), CaseKey::from_bytes(&key)) {
                    return Ok(Some((at, case)));
                }
                c.execute(
                    "DELETE FROM schedule WHERE due_ms = $1 AND case_key = $2",
                    &[&due, &key],
                )
                .await
                .map_err(pg)?;
            }
        })
    }

    pub fn remove_schedule_entry(&self, at: DateTime<Utc>, key: &CaseKey) -> Result<()> {
        let (due, k) = (ms(at), key.bytes());
        self.run(move |mut conn| async move {
            conn.client()
                .execute(
                    "DELETE FROM schedule WHERE due_ms = $1 AND case_key = $2",
                    &[&due, &k],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    /// Outbox entries due at `now`, earliest first, skipping `busy` ones;
    /// and when the next one not taken is due.
    pub fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>> {
        let row = self.sealed_of(
            "SELECT o.value, k.key FROM outbox o LEFT JOIN case_keys k ON k.id = o.key_id
             WHERE o.id = $1",
            id,
        )?;
        match row {
            Some((value, key)) => read_if_live(id.as_bytes(), &value, key),
            None => Ok(None),
        }
    }

    /// Messages waiting in the outbox (0 when the database cannot say).
    pub fn outbox_len(&self) -> usize {
        let n = self.run(|mut conn| async move {
            let row = conn
                .client()
                .query_one("SELECT count(*) FROM outbox", &[])
                .await
                .map_err(pg)?;
            Ok(row.get::<_, i64>(0))
        });
        match n {
            Ok(n) => usize::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "store: counting the outbox failed");
                0
            }
        }
    }

    /// When the earliest outbox entry is (or was) due.
    pub fn outbox_head(&self) -> Result<Option<DateTime<Utc>>> {
        self.run(|mut conn| async move {
            let row = conn
                .client()
                .query_one("SELECT min(next_attempt_ms) FROM outbox", &[])
                .await
                .map_err(pg)?;
            Ok(row.get::<_, Option<i64>>(0).and_then(from_ms))
        })
    }

    /// Records that a provider accepted message `id`; durable on return.
    pub async fn mark_delivered(
        &self,
        id: Uuid,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let value = codec::encode(&DeliveredMark { at, provider_id });
        self.run_async(move |mut conn| async move {
            conn.client()
                .execute(
                    "INSERT INTO delivered (id, value) VALUES ($1, $2)
                     ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                    &[&id, &value],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    pub fn delivered_mark(&self, id: Uuid) -> Result<Option<DeliveredMark>> {
        let value = self.value_of("SELECT value FROM delivered WHERE id = $1", id)?;
        value.map(|v| codec::decode(id.as_bytes(), &v)).transpose()
    }

    /// One `bytea` column of the row `sql` finds by `param`.
    fn value_of<P>(&self, sql: &'static str, param: P) -> Result<Option<Vec<u8>>>
    where
        P: tokio_postgres::types::ToSql + Sync + Send + 'static,
    {
        self.run(move |mut conn| async move {
            let row = conn.client().query_opt(sql, &[&param]).await.map_err(pg)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Runs one statement with `params`; how many rows it touched.
    fn execute(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
    ) -> Result<u64> {
        self.run(move |mut conn| async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            conn.client().execute(sql, &refs).await.map_err(pg)
        })
    }

    /// The cases (other than erased ones) that have `contact` as a recipient.
    pub fn cases_of(&self, contact: Contact) -> Result<Vec<CaseKey>> {
        let c = contact.0.to_vec();
        let keys = self.run(move |mut conn| async move {
            let rows = conn
                .client()
                .query(
                    "SELECT case_key FROM recipients WHERE contact = $1 ORDER BY case_key",
                    &[&c],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .into_iter()
                .map(|r| r.get::<_, Vec<u8>>(0))
                .collect::<Vec<_>>())
        })?;
        Ok(keys.iter().filter_map(|k| CaseKey::from_bytes(k)).collect())
    }

    pub fn opt_out(&self, contact: Contact, via: OptOutVia, now: DateTime<Utc>) -> Result<()> {
        let value = codec::encode(&OptOut { at: now, via });
        self.execute(
            "INSERT INTO optouts (contact, value) VALUES ($1, $2)
             ON CONFLICT (contact) DO UPDATE SET value = EXCLUDED.value",
            vec![Box::new(contact.0.to_vec()), Box::new(value)],
        )?;
        Ok(())
    }

    /// Lifts an opt-out; whether there was one.
    pub fn opt_in(&self, contact: Contact) -> Result<bool> {
        let n = self.execute(
            "DELETE FROM optouts WHERE contact = $1",
            vec![Box::new(contact.0.to_vec())],
        )?;
        Ok(n > 0)
    }

    pub fn opted_out(&self, contact: Contact) -> Result<Option<OptOut>> {
        let value = self.value_of(
            "SELECT value FROM optouts WHERE contact = $1",
            contact.0.to_vec(),
        )?;
        value.map(|v| codec::decode(&contact.0, &v)).transpose()
    }

    /// Claims the next send to `contact` when the last one is at least
    /// `gap` old (in one statement, so racing claims go one per gap);
    /// otherwise when it may go.
    pub fn claim_send(
        &self,
        contact: Contact,
        gap: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        let (c, gap_ms, now_ms) = (contact.0.to_vec(), gap.num_milliseconds(), ms(now));
        let last = self.run(move |mut conn| async move {
            let client = conn.client();
            let claimed = client
                .query_opt(
                    "INSERT INTO contacts (contact, last_ms) VALUES ($1, $2)
                     ON CONFLICT (contact) DO UPDATE SET last_ms = EXCLUDED.last_ms
                     WHERE contacts.last_ms + $3 <= EXCLUDED.last_ms
                     RETURNING last_ms",
                    &[&c, &now_ms, &gap_ms],
                )
                .await
                .map_err(pg)?;
            if claimed.is_some() {
                return Ok(None);
            }
            let row = client
                .query_opt("SELECT last_ms FROM contacts WHERE contact = $1", &[&c])
                .await
                .map_err(pg)?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        })?;
        match last.and_then(from_ms) {
            None => Ok(Ok(())),
            Some(last) => Ok(Err(last + gap)),
        }
    }

    pub fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        self.execute(
            "INSERT INTO contacts (contact, last_ms) VALUES ($1, $2)
             ON CONFLICT (contact) DO UPDATE
             SET last_ms = GREATEST(contacts.last_ms, EXCLUDED.last_ms)",
            vec![Box::new(contact.0.to_vec()), Box::new(ms(at))],
        )?;
        Ok(())
    }

    /// Records that `contact` wrote to us at `at`; a later instant stays.
    pub fn note_inbound(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        self.execute(
            "INSERT INTO inbound (contact, last_ms) VALUES ($1, $2)
             ON CONFLICT (contact) DO UPDATE
             SET last_ms = GREATEST(inbound.last_ms, EXCLUDED.last_ms)",
            vec![Box::new(contact.0.to_vec()), Box::new(ms(at))],
        )?;
        Ok(())
    }

    /// When `contact` last wrote to us, if ever.
    pub fn last_inbound(&self, contact: Contact) -> Result<Option<DateTime<Utc>>> {
        let c = contact.0.to_vec();
        let last = self.run(move |mut conn| async move {
            let row = conn
                .client()
                .query_opt("SELECT last_ms FROM inbound WHERE contact = $1", &[&c])
                .await
                .map_err(pg)?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        })?;
        Ok(last.and_then(from_ms))
    }

    pub fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        let k = codec::idempotency_key_bytes(key);
        let row = self.sealed_of(
            "SELECT i.value, k.key FROM idempotency i
             LEFT JOIN case_keys k ON k.id = i.key_id WHERE i.key = $1",
            k.clone(),
        )?;
        match row {
            Some((value, key)) => read_if_live(&k, &value, key),
            None => Ok(None),
        }
    }

    /// Drops answers older than `before`, and any whose case was erased;
    /// how many went.
    pub fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<usize> {
        let n = self.execute(
            "DELETE FROM idempotency i WHERE i.at_ms < $1
                OR (i.key_id IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM case_keys k WHERE k.id = i.key_id))",
            vec![Box::new(ms(before))],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

impl From<StoreError> for BackupError {
    fn from(e: StoreError) -> Self {
        BackupError::Io(std::io::Error::other(e.to_string()))
    }
}
