//! What replicas sharing one database claim: due cases (for the
//! scheduler) and due outbox entries (for the dispatcher), each leased to
//! one replica for a while, the entries under a fencing number that the
//! commits settling them are checked against (`commit.rs`); and how a
//! replica hears of work another one committed (`LISTEN`/`NOTIFY`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{CaseKey, OutboxEntry};

use super::reads::read_if_live;
use super::{DueCases, PgStore, Result, StoreError, from_ms, ms, pg};

/// A claimed outbox row: id, due instant, sealed value, fencing number,
/// and the key its case's row joined.
type Claimed = (Uuid, i64, Vec<u8>, i64, Option<Vec<u8>>);

/// The session name of a replica's lock session, before its owner name:
/// the `live_replicas` view (migration 0004) lists the replicas whose
/// session is open. A claim held by a replica whose session is gone (it
/// was killed) is taken over at once, without waiting for its lease.
pub(super) const SESSION_PREFIX: &str = "tidings replica ";

/// The channel a commit that schedules or queues something notifies.
pub(super) const WORK_CHANNEL: &str = "tidings_work";

/// How long the listener waits before connecting again.
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl PgStore {
    /// Calls `wake` on every notification of new work (and once each time
    /// the listening session starts, for what it may have missed). The
    /// workers also look on their own every second, so a lost session only
    /// slows a replica's wake-ups, never stops them.
    pub fn watch(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        let config = self.inner.pool.config.clone();
        self.handle().spawn(async move {
            loop {
                if let Ok((client, mut connection)) = config.connect(tokio_postgres::NoTls).await {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    let driver = tokio::spawn(async move {
                        while let Some(Ok(message)) =
                            std::future::poll_fn(|cx| connection.poll_message(cx)).await
                        {
                            if let tokio_postgres::AsyncMessage::Notification(_) = message
                                && tx.send(()).is_err()
                            {
                                return;
                            }
                        }
                    });
                    if client
                        .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
                        .await
                        .is_ok()
                    {
                        wake();
                        while rx.recv().await.is_some() {
                            wake();
                        }
                    }
                    driver.abort();
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
    }

    /// The cases due at `now` that no other replica holds (at most
    /// `limit`, none of `busy`), earliest first, each leased to this
    /// replica (`lease` from now) so the others pass it by until its record
    /// is written again or the lease runs out; and when to look next.
    /// When something is due and none could be taken, index entries that
    /// outlived their case are dropped.
    pub fn claim_due_cases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<CaseKey>,
    ) -> Result<DueCases> {
        let (owner, lease) = (self.inner.owner.clone(), self.inner.lease_ms);
        let now = ms(now);
        let want = i64::try_from(limit).unwrap_or(i64::MAX);
        let busy: Vec<Vec<u8>> = busy.iter().map(CaseKey::bytes).collect();
        let (rows, next) = self.run(move |mut conn| async move {
            let c = conn.client();
            // The statements are prepared once and their plans kept: each
            // reaches rows through an index whatever `now` is (`= ANY` of
            // an array, not a join the planner could make a scan of).
            let rows = c
                .query(
                    "WITH picked AS (
                         SELECT s.due_ms, c.case_key FROM schedule s
                         JOIN cases c ON c.case_key = s.case_key
                         WHERE s.due_ms <= $1 AND NOT (s.case_key = ANY($2))
                           AND (c.lease_owner IS NULL OR c.lease_owner = $3 OR c.lease_until <= $1
                                OR c.lease_owner NOT IN (SELECT owner FROM live_replicas))
                         ORDER BY s.due_ms, s.case_key LIMIT $4
                         FOR UPDATE OF c SKIP LOCKED)
                     UPDATE cases c SET lease_owner = $3, lease_until = $5,
                            fencing = nextval('fencing_numbers')
                     WHERE c.case_key = ANY(ARRAY(SELECT case_key FROM picked))
                     RETURNING (SELECT min(p.due_ms) FROM picked p WHERE p.case_key = c.case_key),
                               c.case_key",
                    &[&now, &busy, &owner, &want, &now.saturating_add(lease)],
                )
                .await
                .map_err(pg)?;
            let mut rows: Vec<(i64, Vec<u8>)> =
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            rows.sort();
            // More may be due than were taken: look again at once.
            if rows.len() >= limit {
                return Ok((rows, Some(now)));
            }
            let head = |sql: &'static str| async move {
                Ok::<_, StoreError>(
                    c.query_opt(sql, &[&now])
                        .await
                        .map_err(pg)?
                        .map(|r| r.get::<_, i64>(0)),
                )
            };
            if rows.is_empty()
                && head("SELECT due_ms FROM schedule WHERE due_ms <= $1 ORDER BY due_ms LIMIT 1")
                    .await?
                    .is_some()
            {
                // Due, yet none taken: held by other replicas, or index
                // entries that outlived their case (dropped here).
                c.execute(
                    "DELETE FROM schedule WHERE ctid = ANY(ARRAY(
                         SELECT s.ctid FROM schedule s WHERE s.due_ms <= $1
                           AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.case_key = s.case_key)
                         ORDER BY s.due_ms LIMIT 64))",
                    &[&now],
                )
                .await
                .map_err(pg)?;
            }
            let next =
                head("SELECT due_ms FROM schedule WHERE due_ms > $1 ORDER BY due_ms LIMIT 1")
                    .await?;
            Ok((rows, next))
        })?;
        let mut due = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for (at, key) in rows {
            match (from_ms(at), CaseKey::from_bytes(&key)) {
                (Some(at), Some(case)) => due.push((at, case)),
                // A key we cannot read is dropped rather than blocking the queue.
                _ => unreadable.push((at, key)),
            }
        }
        for (at, key) in unreadable {
            self.run(move |mut conn| async move {
                conn.client()
                    .execute(
                        "DELETE FROM schedule WHERE due_ms = $1 AND case_key = $2",
                        &[&at, &key],
                    )
                    .await
                    .map_err(pg)
            })?;
        }
        Ok((due, next.and_then(from_ms)))
    }

    /// Claims the entries due at `now` (at most `limit`, not `busy`, not
    /// held by another replica's lease), earliest first: each is leased to
    /// this replica under a fresh fencing number, kept for the commits
    /// that settle it. Also returns when the next entry is due.
    pub fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<Uuid>,
    ) -> Result<(Vec<OutboxEntry>, Option<DateTime<Utc>>)> {
        // Claims of attempts that are over need no fencing any more.
        self.inner
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| busy.contains(id));
        let busy: Vec<Uuid> = busy.iter().copied().collect();
        let (owner, lease) = (self.inner.owner.clone(), self.inner.lease_ms);
        let now = ms(now);
        let want = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, next) = self.run(move |mut conn| async move {
            let c = conn.client();
            let rows = c
                .query(
                    "WITH picked AS (
                         SELECT id FROM outbox
                         WHERE next_attempt_ms <= $1 AND NOT (id = ANY($2))
                           AND (lease_owner IS NULL OR lease_owner = $3 OR lease_until <= $1
                                OR lease_owner NOT IN (SELECT owner FROM live_replicas))
                         ORDER BY next_attempt_ms, id LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                     UPDATE outbox o SET lease_owner = $3, lease_until = $5,
                            fencing = nextval('fencing_numbers')
                     WHERE o.id = ANY(ARRAY(SELECT id FROM picked))
                     RETURNING o.id, o.next_attempt_ms, o.value, o.fencing,
                               (SELECT k.key FROM case_keys k WHERE k.id = o.key_id)",
                    &[&now, &busy, &owner, &want, &now.saturating_add(lease)],
                )
                .await
                .map_err(pg)?;
            let mut rows: Vec<Claimed> = rows
                .into_iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();
            rows.sort_by_key(|r| (r.1, r.0));
            // More may be due than were taken: look again at once.
            let next = if rows.len() >= limit {
                Some(now)
            } else {
                c.query_opt(
                    "SELECT next_attempt_ms FROM outbox WHERE next_attempt_ms > $1
                     ORDER BY next_attempt_ms LIMIT 1",
                    &[&now],
                )
                .await
                .map_err(pg)?
                .map(|r| r.get::<_, i64>(0))
            };
            Ok((rows, next))
        })?;
        let mut out = Vec::with_capacity(rows.len());
        let mut erased = Vec::new();
        let mut claims = Vec::with_capacity(rows.len());
        for (id, _, value, fencing, key) in rows {
            match read_if_live(id.as_bytes(), &value, key)? {
                Some(entry) => {
                    claims.push((id, fencing));
                    out.push(entry);
                }
                // Its case was erased: nothing is left to send.
                None => erased.push(id),
            }
        }
        self.inner
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(claims);
        if !erased.is_empty() {
            self.run(move |mut conn| async move {
                conn.client()
                    .execute("DELETE FROM outbox WHERE id = ANY($1)", &[&erased])
                    .await
                    .map_err(pg)
            })?;
        }
        Ok((out, next.and_then(from_ms)))
    }
}
