//! `commit_many`: every change of a batch in one PostgreSQL transaction
//! (the case record, its schedule and recipient index entries, the
//! outbox, delivered marks, idempotency records, erasure with its key).

use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::domain::CaseKey;

use super::super::sealing::{self, CaseSecret, KEY_LEN, KeyId};
use super::prepared::Db;
use super::{PgStore, Result, StoreError, codec, ms, pg};
use crate::store::Commit;

mod batch;

/// One statement of a commit, under way.
type Write<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = std::result::Result<u64, tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

/// The transaction of a commit, with its connection's prepared statements.
type Tx<'a> = Db<'a, Transaction<'a>>;

/// One change, encoded (in clear) before it is sent to the store's
/// runtime; sealed there, under the key the transaction finds or makes.
struct Prepared {
    case_key: Vec<u8>,
    record: Option<Vec<u8>>,
    erase: bool,
    new_due: Option<i64>,
    contacts: Vec<Vec<u8>>,
    outbox_put: Vec<(Uuid, Vec<u8>, i64)>,
    outbox_remove: Vec<Uuid>,
    idem: Option<(Vec<u8>, Vec<u8>, i64)>,
    idem_remove: Vec<Vec<u8>>,
    /// A provider's acceptance of a message: its id and the mark.
    delivered: Option<(Uuid, Vec<u8>)>,
    /// When the daemon last sent to a contact (never moved back).
    last_sent: Option<(Vec<u8>, i64)>,
    /// The case's revision the change was decided on.
    expect: Option<i64>,
    /// The outbox entry it settles, when this replica claimed it, with the
    /// fencing number of the claim.
    fence: Option<(Uuid, i64)>,
}

impl Prepared {
    fn writes(&self) -> bool {
        self.record.is_some() || !self.outbox_put.is_empty() || self.idem.is_some()
    }

    /// A provider's acceptance and nothing else: its delivered mark.
    fn mark_only(&self) -> Option<&(Uuid, Vec<u8>)> {
        let nothing_else = self.record.is_none()
            && !self.erase
            && self.contacts.is_empty()
            && self.outbox_put.is_empty()
            && self.outbox_remove.is_empty()
            && self.idem.is_none()
            && self.idem_remove.is_empty()
            && self.expect.is_none();
        self.delivered.as_ref().filter(|_| nothing_else)
    }
}

/// A delivered mark (with the recipient's last send) as one statement,
/// committed on its own: one round trip to durable rather than a
/// transaction's three, the window in which a crash sends a message twice
/// as short as it can be. Refused (`Fenced`, nothing written) when another
/// replica took the entry over.
async fn mark_in_one_statement(
    mut conn: super::Conn,
    p: &Prepared,
    (id, mark): &(Uuid, Vec<u8>),
) -> Result<()> {
    let fence = p.fence.map(|(_, f)| f);
    let (contact, last_ms) = match &p.last_sent {
        Some((c, at)) => (Some(c), Some(*at)),
        None => (None, None),
    };
    let row = conn
        .client()
        .query_one(
            // The entry's row stays locked until the commit: a replica
            // taking it over waits, then finds the mark and sends nothing.
            "WITH locked AS (SELECT fencing FROM outbox WHERE id = $1 AND $3::bigint IS NOT NULL
                             FOR UPDATE),
             held AS (
                 SELECT NOT EXISTS (SELECT 1 FROM locked WHERE fencing <> $3::bigint) AS ours),
             mark AS (
                 INSERT INTO delivered (id, value) SELECT $1, $2 FROM held WHERE ours
                 ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value),
             last AS (
                 INSERT INTO contacts (contact, last_ms) SELECT $4::bytea, $5::bigint FROM held
                 WHERE ours AND $4::bytea IS NOT NULL
                 ON CONFLICT (contact) DO UPDATE
                 SET last_ms = GREATEST(contacts.last_ms, EXCLUDED.last_ms))
             SELECT ours FROM held",
            &[id, mark, &fence, &contact, &last_ms],
        )
        .await
        .map_err(pg)?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(StoreError::Fenced)
    }
}

impl PgStore {
    /// Applies changes to one or several cases in one transaction.
    pub fn commit_many(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()> {
        let (prepared, settled) = self.prepare(changes);
        self.run(move |conn| transact(conn, prepared))?;
        self.release(settled);
        Ok(())
    }

    /// As `commit_many`, awaited in the caller's task rather than blocking
    /// a thread (a change that must not wait for a group, nor hold up a
    /// shutdown), on the connections kept for delivered marks, whose
    /// commits do not wait for the WAL flush (see `marks_config`).
    pub async fn commit_now(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()> {
        let (prepared, settled) = self.prepare(changes);
        self.run_urgent(move |conn| transact(conn, prepared))
            .await?;
        self.release(settled);
        Ok(())
    }

    /// Settled entries are no longer this replica's to fence.
    fn release(&self, settled: Vec<Uuid>) {
        let mut claims = self
            .inner
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in settled {
            claims.remove(&id);
        }
    }

    /// The changes encoded, with the fencing numbers of the claims they
    /// settle; and the outbox entries they remove.
    fn prepare(&self, changes: &[(&CaseKey, &Commit)]) -> (Vec<Prepared>, Vec<Uuid>) {
        let salt = self.inner.salt;
        // The claims' fencing numbers, read under the lock, not held while
        // the changes are encoded.
        let fences: Vec<Option<(Uuid, i64)>> = {
            let claims = self
                .inner
                .claims
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            changes
                .iter()
                .map(|(_, c)| c.settles.and_then(|id| claims.get(&id).map(|f| (id, *f))))
                .collect()
        };
        let prepared: Vec<Prepared> = changes
            .iter()
            .zip(fences)
            .map(|((key, c), fence)| Prepared {
                case_key: key.bytes(),
                record: c.record.as_ref().map(codec::encode),
                erase: c.erase,
                new_due: c.record.as_ref().and_then(|r| r.schedule.due_at).map(ms),
                contacts: c
                    .record
                    .as_ref()
                    .map(|r| codec::indexed_under(&salt, &r.case))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.0.to_vec())
                    .collect(),
                outbox_put: c
                    .outbox_put
                    .iter()
                    .map(|e| (e.id, codec::encode(e), ms(e.next_attempt_at)))
                    .collect(),
                outbox_remove: c.outbox_remove.iter().map(|(id, _)| *id).collect(),
                idem: c
                    .idempotency
                    .as_ref()
                    .map(|(k, v)| (codec::idempotency_key_bytes(k), codec::encode(v), ms(v.at))),
                idem_remove: c
                    .idempotency_remove
                    .iter()
                    .map(|k| codec::idempotency_key_bytes(k))
                    .collect(),
                delivered: c
                    .delivered
                    .as_ref()
                    .map(|(id, mark)| (*id, codec::encode(mark))),
                last_sent: c
                    .last_sent
                    .map(|(contact, at)| (contact.0.to_vec(), ms(at))),
                expect: c.expect.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                fence,
            })
            .collect();
        let settled: Vec<Uuid> = changes
            .iter()
            .flat_map(|(_, c)| c.outbox_remove.iter().map(|(id, _)| *id))
            .collect();
        (prepared, settled)
    }
}

/// Applies prepared changes in one transaction on `conn`.
async fn transact(mut conn: super::Conn, prepared: Vec<Prepared>) -> Result<()> {
    if let [p] = prepared.as_slice()
        && let Some(mark) = p.mark_only()
    {
        return mark_in_one_statement(conn, p, mark).await;
    }
    let (client, statements) = conn.parts();
    let tx = client.transaction().await.map_err(pg)?;
    let db = Db::new(&tx, statements);
    if batch::eligible(&prepared) {
        batch::apply(db, &prepared).await?;
    } else {
        per_case(db, &prepared).await?;
    }
    // Other replicas hear of new work when this commits.
    if prepared
        .iter()
        .any(|p| p.new_due.is_some() || !p.outbox_put.is_empty())
    {
        db.batch_execute(&format!("NOTIFY {}", super::claims::WORK_CHANNEL))
            .await
            .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)
}

/// Applies each case's changes in order, statement by statement.
async fn per_case(db: Tx<'_>, prepared: &[Prepared]) -> Result<()> {
    // Each case's changes in order; different cases side by side,
    // their statements pipelined on the one connection (one round
    // trip per step rather than per statement of every case).
    let mut cases: Vec<Vec<&Prepared>> = Vec::new();
    for p in prepared {
        match cases.iter_mut().find(|c| c[0].case_key == p.case_key) {
            Some(c) => c.push(p),
            None => cases.push(vec![p]),
        }
    }
    futures_util::future::try_join_all(cases.into_iter().map(|changes| async move {
        for p in changes {
            apply(db, p).await?;
        }
        Ok::<(), StoreError>(())
    }))
    .await?;
    Ok(())
}

/// A case's key as `case_keys` holds it (its id and the key).
fn stored_secret(id: &[u8], key: &[u8]) -> Result<CaseSecret> {
    match (KeyId::try_from(id), <[u8; KEY_LEN]>::try_from(key)) {
        (Ok(id), Ok(key)) => Ok((id, key)),
        _ => Err(StoreError::Postgres(
            "case_keys: a key of the wrong size".into(),
        )),
    }
}

/// The case's key, made (in this transaction) if it has none.
async fn case_secret(tx: Tx<'_>, case_key: &[u8]) -> Result<CaseSecret> {
    let row = tx
        .query_opt(
            "SELECT id, key FROM case_keys WHERE case_key = $1",
            &[&case_key],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = row {
        return stored_secret(&row.get::<_, Vec<u8>>(0), &row.get::<_, Vec<u8>>(1));
    }
    let fresh = sealing::fresh_key();
    tx.execute(
        "INSERT INTO case_keys (case_key, id, key) VALUES ($1, $2, $3)",
        &[&case_key, &&fresh.0[..], &&fresh.1[..]],
    )
    .await
    .map_err(pg)?;
    Ok(fresh)
}

/// Refuses the change when the case moved on from the revision it was
/// decided on (`Conflict`), or when another replica took over an outbox
/// entry it settles (`Fenced`); returns the claimed entry if it is gone
/// (settled or cancelled by another writer meanwhile: not put back).
async fn check(tx: Tx<'_>, p: &Prepared) -> Result<Option<Uuid>> {
    if let Some(expect) = p.expect {
        let rev = tx
            .query_opt(
                "SELECT rev FROM cases WHERE case_key = $1 FOR UPDATE",
                &[&p.case_key],
            )
            .await
            .map_err(pg)?
            .map_or(0, |r| r.get::<_, i64>(0));
        if rev != expect {
            return Err(StoreError::Conflict);
        }
    }
    let Some((id, fence)) = p.fence else {
        return Ok(None);
    };
    let row = tx
        .query_opt(
            "SELECT fencing FROM outbox WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(pg)?;
    match row.map(|r| r.get::<_, i64>(0)) {
        Some(f) if f != fence => Err(StoreError::Fenced),
        Some(_) => Ok(None),
        None => Ok(Some(id)),
    }
}

async fn apply(tx: Tx<'_>, p: &Prepared) -> Result<()> {
    let k = &p.case_key;
    // The checks and the small writes that do not depend on them go out
    // together (pipelined): a refusal rolls the whole transaction back.
    // A provider's acceptance is durable a few round trips sooner.
    let delivered = async {
        if let Some((id, mark)) = &p.delivered {
            tx.execute(
                "INSERT INTO delivered (id, value) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                &[id, mark],
            )
            .await
            .map_err(pg)?;
        }
        Ok(())
    };
    let last_sent = async {
        if let Some((contact, at)) = &p.last_sent {
            tx.execute(
                "INSERT INTO contacts (contact, last_ms) VALUES ($1, $2)
                 ON CONFLICT (contact) DO UPDATE
                 SET last_ms = GREATEST(contacts.last_ms, EXCLUDED.last_ms)",
                &[contact, at],
            )
            .await
            .map_err(pg)?;
        }
        Ok(())
    };
    let (gone, (), ()) =
        futures_util::future::try_join3(check(tx, p), delivered, last_sent).await?;
    let exec = |sql: &'static str| async move { tx.execute(sql, &[k]).await.map_err(pg) };
    if p.erase {
        // Everything of the case goes, and its key with it: what the
        // table files and the WAL still hold of it no longer opens.
        exec("DELETE FROM delivered WHERE id IN (SELECT id FROM outbox WHERE case_key = $1)")
            .await?;
        exec("DELETE FROM outbox WHERE case_key = $1").await?;
        exec("DELETE FROM idempotency WHERE case_key = $1").await?;
        exec("DELETE FROM schedule WHERE case_key = $1").await?;
        exec("DELETE FROM recipients WHERE case_key = $1").await?;
        exec("DELETE FROM cases WHERE case_key = $1").await?;
        exec("DELETE FROM case_keys WHERE case_key = $1").await?;
    }
    let secret = if p.writes() {
        Some(case_secret(tx, k).await?)
    } else {
        None
    };
    let key_id: Option<&[u8]> = secret.as_ref().map(|s| &s.0[..]);
    let seal = |plain: &[u8]| match &secret {
        Some(s) => sealing::seal(s, plain),
        None => plain.to_vec(),
    };
    let record = p.record.as_ref().map(|r| seal(r));
    let outbox: Vec<(&Uuid, Vec<u8>, &i64)> = (p.outbox_put.iter())
        .filter(|(id, _, _)| gone != Some(*id))
        .map(|(id, value, due)| (id, seal(value), due))
        .collect();
    let idem = p
        .idem
        .as_ref()
        .map(|(hash, value, at)| (hash, seal(value), at));
    // The writes go out in phases, each phase's at once (pipelined on the
    // connection): the record, its indexes and what it removes; then what
    // it puts (an entry removed and put again is put after its removal);
    // then the idempotency records it drops.
    let mut writes: Vec<Write<'_>> = Vec::new();
    if let Some(record) = &record {
        // A new revision; a lease on the case ends with the write.
        writes.push(Box::pin(async move {
            tx.execute(
                "INSERT INTO cases (case_key, key_id, value, rev) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (case_key) DO UPDATE SET key_id = EXCLUDED.key_id, value = EXCLUDED.value,
                     rev = cases.rev + 1, lease_owner = NULL, lease_until = NULL",
                // Stored again after an erasure: its revisions go on rising.
                &[k, &key_id, record, &(p.expect.unwrap_or(0) + 1)],
            )
            .await
        }));
        // The indexes follow the record: its entries that no longer hold
        // go, the new ones come (what holds already is left alone).
        writes.push(Box::pin(async move {
            tx.execute(
                "WITH gone AS (DELETE FROM schedule WHERE case_key = $1
                           AND due_ms IS DISTINCT FROM $2::bigint)
             INSERT INTO schedule (due_ms, case_key) SELECT $2::bigint, $1
             WHERE $2::bigint IS NOT NULL ON CONFLICT DO NOTHING",
                &[k, &p.new_due],
            )
            .await
        }));
        writes.push(Box::pin(async move {
            tx.execute(
                "WITH gone AS (DELETE FROM recipients WHERE case_key = $1
                           AND NOT (contact = ANY($2::bytea[])))
             INSERT INTO recipients (contact, case_key) SELECT c, $1 FROM unnest($2::bytea[]) c
             ON CONFLICT DO NOTHING",
                &[k, &p.contacts],
            )
            .await
        }));
    }
    if !p.outbox_remove.is_empty() {
        let removed = &p.outbox_remove;
        writes.push(Box::pin(async move {
            tx.execute("DELETE FROM outbox WHERE id = ANY($1)", &[removed])
                .await
        }));
        writes.push(Box::pin(async move {
            tx.execute("DELETE FROM delivered WHERE id = ANY($1)", &[removed])
                .await
        }));
    }
    let mut puts: Vec<Write<'_>> = Vec::new();
    for (id, value, due) in &outbox {
        puts.push(Box::pin(async move {
            tx.execute(
                "INSERT INTO outbox (id, case_key, key_id, value, next_attempt_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET case_key = EXCLUDED.case_key, key_id = EXCLUDED.key_id,
                     value = EXCLUDED.value, next_attempt_ms = EXCLUDED.next_attempt_ms",
                &[*id, k, &key_id, value, *due],
            )
            .await
        }));
    }
    if let Some((hash, value, at)) = &idem {
        puts.push(Box::pin(async move {
            tx.execute(
                "INSERT INTO idempotency (key, case_key, key_id, value, at_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET case_key = EXCLUDED.case_key, key_id = EXCLUDED.key_id,
                     value = EXCLUDED.value, at_ms = EXCLUDED.at_ms",
                &[*hash, k, &key_id, value, *at],
            )
            .await
        }));
    }
    let mut drops: Vec<Write<'_>> = Vec::new();
    if !p.idem_remove.is_empty() {
        drops.push(Box::pin(async move {
            tx.execute(
                "DELETE FROM idempotency WHERE key = ANY($1)",
                &[&p.idem_remove],
            )
            .await
        }));
    }
    for phase in [writes, puts, drops] {
        for written in futures_util::future::join_all(phase).await {
            written.map_err(pg)?;
        }
    }
    Ok(())
}
