//! A batch of plain writes (new revisions of distinct cases, with their
//! outbox entries and idempotency records) in a few set-based statements:
//! one per table for the whole batch rather than one per table for each
//! case. PostgreSQL runs a transaction's statements one after another on
//! one backend, so the statement count, not the rows, is what a batch of
//! intake costs.
//!
//! An erasure, or one case (outbox entry, idempotency key, delivered
//! mark) twice, goes the per-case way of `commit.rs`.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Prepared, Tx, stored_secret};
use crate::store::StoreError;
use crate::store::postgres::{Result, pg};
use crate::store::sealing::{self, CaseSecret};

/// The keys of the batch's cases that write, by case; those made now; and
/// the claimed outbox entries that are gone.
type Keys = (
    HashMap<Vec<u8>, CaseSecret>,
    Vec<(Vec<u8>, CaseSecret)>,
    HashSet<Uuid>,
);

/// Whether the batch can go the set-based way: more than one change, none
/// of them an erasure, no case, outbox entry, idempotency key or delivered
/// mark twice.
pub(super) fn eligible(prepared: &[Prepared]) -> bool {
    if prepared.len() < 2 || prepared.iter().any(|p| p.erase) {
        return false;
    }
    let mut cases = HashSet::new();
    let mut entries = HashSet::new();
    let mut idem = HashSet::new();
    let mut marks = HashSet::new();
    prepared.iter().all(|p| {
        cases.insert(p.case_key.as_slice())
            && p.outbox_put.iter().all(|(id, _, _)| entries.insert(*id))
            && p.idem.iter().all(|(k, _, _)| idem.insert(k.as_slice()))
            && p.delivered.iter().all(|(id, _)| marks.insert(*id))
    })
}

/// The cases' revisions (locked until the commit) against the ones the
/// changes were decided on, the claims' fencing numbers against this
/// replica's, and the keys of the cases that write: those stored, and
/// fresh ones for cases that have none yet. The delivered marks go out
/// with these reads.
async fn read(tx: Tx<'_>, prepared: &[Prepared]) -> Result<Keys> {
    let expected: Vec<&[u8]> = (prepared.iter())
        .filter(|p| p.expect.is_some())
        .map(|p| p.case_key.as_slice())
        .collect();
    let writing: Vec<&[u8]> = (prepared.iter())
        .filter(|p| p.writes())
        .map(|p| p.case_key.as_slice())
        .collect();
    let fenced: Vec<Uuid> = prepared
        .iter()
        .filter_map(|p| p.fence.map(|(id, _)| id))
        .collect();
    let (revs, keys, fences, ()) = futures_util::future::try_join4(
        tx.query(
            "SELECT case_key, rev FROM cases WHERE case_key = ANY($1) FOR UPDATE",
            &[&expected],
        ),
        tx.query(
            "SELECT case_key, id, key FROM case_keys WHERE case_key = ANY($1)",
            &[&writing],
        ),
        async {
            if fenced.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT id, fencing FROM outbox WHERE id = ANY($1) FOR UPDATE",
                &[&fenced],
            )
            .await
        },
        marks(tx, prepared),
    )
    .await
    .map_err(pg)?;
    let revs: HashMap<Vec<u8>, i64> = revs.iter().map(|r| (r.get(0), r.get(1))).collect();
    let fences: HashMap<Uuid, i64> = fences.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut gone = HashSet::new();
    for p in prepared {
        if let Some(expect) = p.expect
            && revs.get(&p.case_key).copied().unwrap_or(0) != expect
        {
            return Err(StoreError::Conflict);
        }
        // A claim another replica took over refuses the batch; an entry
        // settled or cancelled meanwhile is not put back.
        if let Some((id, fence)) = p.fence {
            match fences.get(&id) {
                Some(f) if *f != fence => return Err(StoreError::Fenced),
                Some(_) => {}
                None => {
                    gone.insert(id);
                }
            }
        }
    }
    let mut secrets = HashMap::with_capacity(writing.len());
    for row in &keys {
        let secret = stored_secret(&row.get::<_, Vec<u8>>(1), &row.get::<_, Vec<u8>>(2))?;
        secrets.insert(row.get(0), secret);
    }
    let mut fresh = Vec::new();
    for case_key in writing {
        if !secrets.contains_key(case_key) {
            let secret = sealing::fresh_key();
            secrets.insert(case_key.to_vec(), secret);
            fresh.push((case_key.to_vec(), secret));
        }
    }
    Ok((secrets, fresh, gone))
}

/// The batch's delivered marks and last sends (pipelined with the checks:
/// a refusal rolls them back with the rest).
async fn marks(
    tx: Tx<'_>,
    prepared: &[Prepared],
) -> std::result::Result<(), tokio_postgres::Error> {
    let (ids, values): (Vec<Uuid>, Vec<&[u8]>) = (prepared.iter())
        .filter_map(|p| p.delivered.as_ref())
        .map(|(id, mark)| (*id, mark.as_slice()))
        .unzip();
    // One row per contact (a statement may not touch a row twice): the
    // latest send.
    let mut last: HashMap<&[u8], i64> = HashMap::new();
    for (contact, at) in prepared.iter().filter_map(|p| p.last_sent.as_ref()) {
        let latest = last.entry(contact.as_slice()).or_insert(*at);
        *latest = (*latest).max(*at);
    }
    // In one order, so batches side by side lock the rows in one order.
    let mut last: Vec<(&[u8], i64)> = last.into_iter().collect();
    last.sort_unstable();
    let (contacts, sent): (Vec<&[u8]>, Vec<i64>) = last.into_iter().unzip();
    futures_util::future::try_join(
        rows(
            tx,
            ids.is_empty(),
            "INSERT INTO delivered (id, value) SELECT * FROM unnest($1::uuid[], $2::bytea[])
             ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
            &[&ids, &values],
        ),
        rows(
            tx,
            contacts.is_empty(),
            "INSERT INTO contacts (contact, last_ms) SELECT * FROM unnest($1::bytea[], $2::bigint[])
             ON CONFLICT (contact) DO UPDATE
             SET last_ms = GREATEST(contacts.last_ms, EXCLUDED.last_ms)",
            &[&contacts, &sent],
        ),
    )
    .await
    .map(|((), ())| ())
}

/// Runs `sql` over the batch's rows for it, unless there are none.
async fn rows(
    tx: Tx<'_>,
    none: bool,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> std::result::Result<(), tokio_postgres::Error> {
    if none {
        return Ok(());
    }
    tx.execute(sql, params).await.map(|_| ())
}

/// The batch's rows, sealed, one array per column.
#[derive(Default)]
struct Columns {
    fresh_case: Vec<Vec<u8>>,
    fresh_id: Vec<Vec<u8>>,
    fresh_key: Vec<Vec<u8>>,
    case: Vec<Vec<u8>>,
    case_key_id: Vec<Vec<u8>>,
    case_value: Vec<Vec<u8>>,
    case_rev: Vec<i64>,
    due: Vec<Option<i64>>,
    recipient_case: Vec<Vec<u8>>,
    recipient_contact: Vec<Vec<u8>>,
    removed: Vec<Uuid>,
    entry: Vec<Uuid>,
    entry_case: Vec<Vec<u8>>,
    entry_key_id: Vec<Vec<u8>>,
    entry_value: Vec<Vec<u8>>,
    entry_due: Vec<i64>,
    idem: Vec<Vec<u8>>,
    idem_case: Vec<Vec<u8>>,
    idem_key_id: Vec<Vec<u8>>,
    idem_value: Vec<Vec<u8>>,
    idem_at: Vec<i64>,
    idem_removed: Vec<Vec<u8>>,
}

impl Columns {
    fn new(
        prepared: &[Prepared],
        secrets: &HashMap<Vec<u8>, CaseSecret>,
        fresh: Vec<(Vec<u8>, CaseSecret)>,
        gone: &HashSet<Uuid>,
    ) -> Self {
        let mut c = Columns::default();
        for (case_key, (id, key)) in fresh {
            c.fresh_case.push(case_key);
            c.fresh_id.push(id.to_vec());
            c.fresh_key.push(key.to_vec());
        }
        for p in prepared {
            let k = &p.case_key;
            c.removed.extend(&p.outbox_remove);
            c.idem_removed.extend(p.idem_remove.iter().cloned());
            let Some(secret) = secrets.get(k) else {
                continue;
            };
            let key_id = secret.0.to_vec();
            if let Some(record) = &p.record {
                c.case.push(k.clone());
                c.case_key_id.push(key_id.clone());
                c.case_value.push(sealing::seal(secret, record));
                c.case_rev.push(p.expect.unwrap_or(0) + 1);
                c.due.push(p.new_due);
                for contact in &p.contacts {
                    c.recipient_case.push(k.clone());
                    c.recipient_contact.push(contact.clone());
                }
            }
            for (id, value, due) in (p.outbox_put.iter()).filter(|(id, _, _)| !gone.contains(id)) {
                c.entry.push(*id);
                c.entry_case.push(k.clone());
                c.entry_key_id.push(key_id.clone());
                c.entry_value.push(sealing::seal(secret, value));
                c.entry_due.push(*due);
            }
            if let Some((hash, value, at)) = &p.idem {
                c.idem.push(hash.clone());
                c.idem_case.push(k.clone());
                c.idem_key_id.push(key_id.clone());
                c.idem_value.push(sealing::seal(secret, value));
                c.idem_at.push(*at);
            }
        }
        c
    }
}

/// Applies an `eligible` batch in `tx`.
pub(super) async fn apply(tx: Tx<'_>, prepared: &[Prepared]) -> Result<()> {
    // Planned for the arrays at hand and the tables as they are now: a
    // plan kept from when a table was nearly empty would scan it whole
    // where its index finds the batch's rows (planning a statement costs
    // far less than that, once per batch).
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await
        .map_err(pg)?;
    let (secrets, fresh, gone) = read(tx, prepared).await?;
    let c = Columns::new(prepared, &secrets, fresh, &gone);
    // Each phase's statements go out together (pipelined on the
    // connection, one round trip): first the keys, the records, their
    // indexes and what is removed; then what is put (an entry removed and
    // put again is put after its removal); then the idempotency records
    // dropped.
    let no_records = c.case.is_empty();
    futures_util::future::try_join_all([
        rows(
            tx,
            c.fresh_case.is_empty(),
            "INSERT INTO case_keys (case_key, id, key)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[])",
            &[&c.fresh_case, &c.fresh_id, &c.fresh_key],
        ),
        // A new revision; a lease on the case ends with the write.
        rows(
            tx,
            no_records,
            "INSERT INTO cases (case_key, key_id, value, rev)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bigint[])
             ON CONFLICT (case_key) DO UPDATE SET key_id = EXCLUDED.key_id, value = EXCLUDED.value,
                 rev = cases.rev + 1, lease_owner = NULL, lease_until = NULL",
            &[&c.case, &c.case_key_id, &c.case_value, &c.case_rev],
        ),
        // The indexes follow the records: entries that no longer hold go,
        // the new ones come (what holds already is left alone).
        rows(
            tx,
            no_records,
            "WITH n AS (SELECT * FROM unnest($1::bytea[], $2::bigint[]) AS n (case_key, due_ms)),
             gone AS (DELETE FROM schedule s USING n
                      WHERE s.case_key = ANY($1) AND s.case_key = n.case_key
                        AND s.due_ms IS DISTINCT FROM n.due_ms)
             INSERT INTO schedule (due_ms, case_key)
             SELECT due_ms, case_key FROM n WHERE due_ms IS NOT NULL ON CONFLICT DO NOTHING",
            &[&c.case, &c.due],
        ),
        rows(
            tx,
            no_records,
            "WITH n AS (SELECT * FROM unnest($2::bytea[], $3::bytea[]) AS n (case_key, contact)),
             gone AS (DELETE FROM recipients r WHERE r.case_key = ANY($1)
                      AND NOT EXISTS (SELECT 1 FROM n
                                      WHERE n.case_key = r.case_key AND n.contact = r.contact))
             INSERT INTO recipients (contact, case_key)
             SELECT contact, case_key FROM n ON CONFLICT DO NOTHING",
            &[&c.case, &c.recipient_case, &c.recipient_contact],
        ),
        rows(
            tx,
            c.removed.is_empty(),
            "DELETE FROM outbox WHERE id = ANY($1)",
            &[&c.removed],
        ),
        rows(
            tx,
            c.removed.is_empty(),
            "DELETE FROM delivered WHERE id = ANY($1)",
            &[&c.removed],
        ),
    ])
    .await
    .map_err(pg)?;
    futures_util::future::try_join(
        rows(
            tx,
            c.entry.is_empty(),
            "INSERT INTO outbox (id, case_key, key_id, value, next_attempt_ms)
             SELECT * FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bigint[])
             ON CONFLICT (id) DO UPDATE SET case_key = EXCLUDED.case_key, key_id = EXCLUDED.key_id,
                 value = EXCLUDED.value, next_attempt_ms = EXCLUDED.next_attempt_ms",
            &[
                &c.entry,
                &c.entry_case,
                &c.entry_key_id,
                &c.entry_value,
                &c.entry_due,
            ],
        ),
        rows(
            tx,
            c.idem.is_empty(),
            "INSERT INTO idempotency (key, case_key, key_id, value, at_ms)
             SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bigint[])
             ON CONFLICT (key) DO UPDATE SET case_key = EXCLUDED.case_key, key_id = EXCLUDED.key_id,
                 value = EXCLUDED.value, at_ms = EXCLUDED.at_ms",
            &[
                &c.idem,
                &c.idem_case,
                &c.idem_key_id,
                &c.idem_value,
                &c.idem_at,
            ],
        ),
    )
    .await
    .map_err(pg)?;
    rows(
        tx,
        c.idem_removed.is_empty(),
        "DELETE FROM idempotency WHERE key = ANY($1)",
        &[&c.idem_removed],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
