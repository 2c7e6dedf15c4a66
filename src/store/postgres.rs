//! Durable state in PostgreSQL: the same `Storage` as the sled store,
//! with every operation sled makes atomic done as one transaction.
//!
//! The trait is synchronous (its callers block a tokio worker, as with
//! sled), so the store owns a small runtime of its own holding the
//! connections; each call sends its job there and waits for the answer.
//! That works from any thread, inside a runtime or not (a `block_on` in a
//! runtime's thread would panic); a caller on a worker of the daemon's
//! runtime hands its other tasks over while it waits. The reads and
//! commits of the write path are also offered awaited
//! (`get_versioned_async`, `commit_now`). `synchronous_commit` is PostgreSQL's
//! default (`on`): a commit that returns is durable, so `flush` has
//! nothing left to wait for. The one exception is the delivered mark
//! (`commit_now`), committed on connections of its own with
//! `synchronous_commit = off` (`marks_config`).
//!
//! Tables (`postgres/migrations/`): `cases`, `schedule`, `outbox`,
//! `delivered`, `idempotency`, `recipients`, `optouts`, `contacts`,
//! `case_keys` and `settings`. Keys are encoded as the sled store's are.
//! Values that hold personal data are sealed under their case's key
//! (`sealing`), and the key lives in `case_keys`: an erasure deletes it in
//! the erasure's own transaction, so what PostgreSQL's files and WAL still
//! hold of the case is ciphertext nobody can open.
//!
//! - `postgres/schema.rs`: migrations, the shared settings, the daemon's
//!   advisory lock.
//! - `postgres/pool.rs`: the store's runtime, its connections, `run_on`.
//! - `postgres/prepared.rs`: each connection's statements, prepared once.
//! - `postgres/commit.rs`: `commit_many`, one transaction; a batch of
//!   plain writes to distinct cases as one statement per table
//!   (`commit/batch.rs`), anything else case by case. Up to
//!   `PARALLEL_COMMITS` of the group commit's batches run side by side.
//! - `postgres/claims.rs`: what a replica claims, due cases and due
//!   outbox entries, each under a lease.
//! - `postgres/reads.rs`: everything else (reads, the outbox walk,
//!   contacts, opt-outs, pacing, idempotency).
//! - `postgres/backup.rs`: a backup in the sled store's format, from one
//!   snapshot (so `tidings restore` makes a sled store of it).
//! - `postgres/load.rs`: a backup loaded in one transaction, re-sealed
//!   (`tidings migrate-store`).

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::domain::{
    Case, CaseKey, CaseRecord, Channel, Contact, DeliveredMark, IdempotentResponse, OptOut,
    OptOutVia, OutboxEntry, Status, contact_of,
};

use self::pool::{Conn, Pool, Rt, run_on, runtime};
use super::{BackupError, BackupSummary, Commit, DueCases, Result, StoreError, Writer, codec};

mod backup;
mod claims;
mod commit;
mod load;
mod pool;
mod prepared;
mod reads;
mod schema;

pub use load::LoadError;
pub use schema::migrate;

/// Where the store is and how many connections it keeps.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// A libpq connection string or URL (it may hold a password: never
    /// logged, never shown).
    pub url: String,
    pub pool_size: usize,
    /// How long a due case or outbox entry this replica claims is its own.
    pub lease: std::time::Duration,
}

impl std::fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL error as the store reports it: the server's message, or
/// the client's (never the connection string).
fn pg(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        return StoreError::Postgres(format!("{}: {}", db.code().code(), db.message()));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Postgres(text)
}

/// Milliseconds since the epoch, as the tables keep instants.
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// How often the daemon lock's keeper looks at its session.
const KEEP_LOCK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The daemon's advisory lock, shared with the task that keeps it.
#[derive(Default)]
struct DaemonLock {
    /// Set once a daemon took it: from then on, nothing is read or written
    /// while the session holding it is gone.
    wanted: std::sync::atomic::AtomicBool,
    /// Held as one replica among others (not to itself).
    shared: std::sync::atomic::AtomicBool,
    /// The session holding the lock.
    session: std::sync::Mutex<Option<Client>>,
    /// Why the lock cannot be taken again: another daemon holds it.
    taken: std::sync::Mutex<Option<String>>,
}

impl DaemonLock {
    fn held(&self) -> bool {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// Refuses every call while a daemon's lock is not held (the database
    /// restarted, or its session was ended): another daemon may hold it.
    fn check(&self) -> Result<()> {
        if !self.wanted.load(std::sync::atomic::Ordering::SeqCst) || self.held() {
            return Ok(());
        }
        Err(StoreError::Postgres(
            "this daemon does not hold the database's lock right now (its session ended); \
             nothing is read or written until it is taken again"
                .into(),
        ))
    }

    /// Takes the lock again whenever its session ends, as soon as the
    /// database answers; gives up (and says why) if another session took it.
    async fn keep(self: Arc<Self>, config: tokio_postgres::Config) {
        let mut tick = tokio::time::interval(KEEP_LOCK_EVERY);
        let mut lost = false;
        loop {
            tick.tick().await;
            if self.held() {
                continue;
            }
            if !lost {
                lost = true;
                tracing::warn!(
                    "store: the session holding the database's daemon lock ended; \
                     reads and writes wait until the lock is taken again"
                );
            }
            let shared = self.shared.load(std::sync::atomic::Ordering::SeqCst);
            match schema::take_daemon_lock(&config, shared).await {
                Ok(Ok(client)) => {
                    *self
                        .session
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client);
                    lost = false;
                    tracing::info!("store: the database's daemon lock is taken again");
                }
                Ok(Err(why)) => {
                    tracing::error!(error = %why, "store: the database's daemon lock was taken meanwhile");
                    *self
                        .taken
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
                    return;
                }
                // The database does not answer yet.
                Err(_) => {}
            }
        }
    }
}

struct Inner {
    pool: Arc<Pool>,
    /// Connections kept for the commits that must not wait (`commit_now`).
    urgent: Arc<Pool>,
    /// This replica's name in the leases it takes.
    owner: String,
    /// How long a claim lasts, in milliseconds.
    lease_ms: i64,
    /// The outbox entries this replica claimed, with their fencing numbers.
    claims: std::sync::Mutex<std::collections::HashMap<Uuid, i64>>,
    salt: [u8; 32],
    unsubscribe_key: [u8; 32],
    lock: Arc<DaemonLock>,
    // Last: the runtime stops after the connections are dropped.
    rt: Rt,
}

/// Connections kept for `commit_now` (delivered marks), beside the pool's.
const URGENT_CONNECTIONS: usize = 2;

/// At most this many group-commit batches under way at once.
const PARALLEL_COMMITS: usize = 4;

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Parses a connection string, naming the problem but not the string.
fn parse_config(url: &str) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Postgres(format!("the connection string does not parse: {}", pg(e)))
    })?;
    config.application_name("tidings");
    // A database that does not answer fails a call in seconds (the API
    // answers 503) rather than after the system's TCP timeout.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    Ok(config)
}

/// The connections that file a provider's acceptance commit without
/// waiting for PostgreSQL's WAL flush (`synchronous_commit = off`): the
/// mark is safe from this replica's crash as soon as the database has it,
/// which is the window a crash sends a message twice in, and it reaches
/// disk within PostgreSQL's `wal_writer_delay` (or with the next ordinary
/// commit, the history's). If the database itself crashes first, the mark
/// is lost and the message is sent again with its `Message-ID`: a
/// duplicate, never a loss.
fn marks_config(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    let given = config.get_options().unwrap_or_default();
    config.options(format!("{given} -c synchronous_commit=off").trim_start());
    config
}

impl PgStore {
    /// Connects, applies the migrations this binary has and the database
    /// lacks, and reads (or makes) the shared settings.
    pub fn open(config: &PgStoreConfig) -> Result<Self> {
        let pg_config = parse_config(&config.url)?;
        let rt = runtime()?;
        let pool = Arc::new(Pool::new(pg_config.clone(), config.pool_size));
        // A provider's acceptance is filed on connections of its own: the
        // sooner it is durable, the smaller the window in which a crash
        // sends the message twice, so it never waits behind planning.
        let urgent = Arc::new(Pool::new(marks_config(pg_config), URGENT_CONNECTIONS));
        let (salt, unsubscribe_key) = run_on(rt.handle(), &pool, |mut conn| async move {
            schema::apply(conn.raw()).await?;
            let salt = schema::generated_key(conn.raw(), "contact_salt").await?;
            let unsubscribe = schema::generated_key(conn.raw(), "unsubscribe_key").await?;
            Ok((salt, unsubscribe))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                urgent,
                owner: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
                lease_ms: i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX / 4),
                claims: std::sync::Mutex::default(),
                salt,
                unsubscribe_key,
                lock: Arc::default(),
                rt: Rt(Some(rt)),
            }),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.inner
            .rt
            .0
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives as long as the store"))
            .handle()
    }

    /// Runs `job` with a pooled connection on the store's runtime and
    /// waits for it (from any thread).
    pub(crate) fn run<T, F, Fut>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        self.inner.lock.check()?;
        run_on(self.handle(), &self.inner.pool, job)
    }

    /// As `run`, awaited rather than blocking.
    pub(crate) async fn run_async<T, F, Fut>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        self.inner.lock.check()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = self.inner.pool.clone();
        self.handle().spawn(async move {
            let r = match pool.get().await {
                Ok(conn) => job(conn).await,
                Err(e) => Err(e),
            };
            let _ = tx.send(r);
        });
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Postgres("the store's runtime stopped".into())))
    }

    /// As `run_async`, on the connections kept for what must not wait, and
    /// in the caller's own task: no hand-over to the store's runtime and
    /// back, two thread wake-ups fewer between the provider's answer and
    /// its mark. These connections are driven by the runtime that opened
    /// them (the daemon's); one whose runtime stopped is found closed and
    /// opened again.
    pub(crate) async fn run_urgent<T, F, Fut>(&self, job: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.inner.lock.check()?;
        job(self.inner.urgent.get().await?).await
    }

    /// Takes the database's daemon lock as one replica among others (a
    /// shared session advisory lock, held while the store lives). Refuses
    /// while a process has the database to itself (`lock_alone`), naming
    /// its session. When the lock's session ends (the database restarted),
    /// every call is refused until a task of the store's takes the lock
    /// again; if another session took it alone meanwhile,
    /// [`PgStore::lock_taken`] says so and the store stays refused.
    pub fn lock_daemon(&self) -> Result<()> {
        self.take_lock(true)
    }

    /// Takes the daemon lock alone: refused while any replica runs, and
    /// replicas are refused while it is held (`migrate-store`).
    pub fn lock_alone(&self) -> Result<()> {
        self.take_lock(false)
    }

    fn take_lock(&self, shared: bool) -> Result<()> {
        // The lock's session names this replica: while it is open, the
        // others leave this one's claims alone (`live_replicas`).
        let mut session = self.inner.pool.config.clone();
        session.application_name(format!("{}{}", claims::SESSION_PREFIX, self.inner.owner));
        let config = session.clone();
        let client = self
            .run(move |_conn| async move { schema::take_daemon_lock(&config, shared).await })?
            .map_err(StoreError::Postgres)?;
        let lock = &self.inner.lock;
        *lock
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(client);
        lock.shared
            .store(shared, std::sync::atomic::Ordering::SeqCst);
        lock.wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle().spawn(lock.clone().keep(session));
        Ok(())
    }

    /// Why this daemon cannot go on: another session took the daemon lock
    /// while this one's session was gone.
    pub fn lock_taken(&self) -> Option<String> {
        self.inner
            .lock
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The recipient `address` on `channel`, keyed under the shared salt.
    pub fn contact(&self, channel: Channel, address: &str) -> Contact {
        contact_of(&self.inner.salt, channel, address)
    }
}

impl super::Storage for PgStore {
    fn get(&self, key: &CaseKey) -> Result<Option<CaseRecord>> {
        PgStore::get_versioned(self, key).map(|(r, _)| r)
    }
    fn commit_many(&self, changes: &[(&CaseKey, &Commit)]) -> Result<()> {
        PgStore::commit_many(self, changes)
    }
    fn flush(&self) -> super::BoxFuture<'_, Result<()>> {
        // Every commit is durable when it returns (synchronous_commit).
        Box::pin(async { Ok(()) })
    }
    fn commit_now<'a>(
        &'a self,
        changes: &'a [(&'a CaseKey, &'a Commit)],
    ) -> Option<super::BoxFuture<'a, Result<()>>> {
        Some(Box::pin(PgStore::commit_now(self, changes)))
    }
    fn parallel_commits(&self) -> usize {
        // Batches side by side on as many backends (and cores), leaving
        // most of the pool to reads.
        (self.inner.pool.size() / 2).clamp(1, PARALLEL_COMMITS)
    }
    fn room(&self, _writer: Writer) -> Result<()> {
        // PostgreSQL survives a full disk (it refuses the write); its
        // operators watch its space.
        Ok(())
    }
    fn scan_cases(&self) -> Box<dyn Iterator<Item = Result<CaseRecord>> + Send + '_> {
        Box::new(self.scan_values().map(|item| {
            let (key, plain) = item?;
            codec::decode(&key, &plain)
        }))
    }
    fn scan_case_statuses(&self) -> Box<dyn Iterator<Item = Result<Status>> + Send + '_> {
        Box::new(self.scan_values().map(|item| {
            let (key, plain) = item?;
            codec::decode_status(&key, &plain)
        }))
    }
    fn get_versioned(&self, key: &CaseKey) -> Result<(Option<CaseRecord>, u64)> {
        PgStore::get_versioned(self, key)
    }
    fn get_versioned_async<'a>(
        &'a self,
        key: &'a CaseKey,
    ) -> Option<super::BoxFuture<'a, Result<super::Versioned>>> {
        Some(Box::pin(PgStore::get_versioned_async(self, key)))
    }
    fn next_due_case(&self) -> Result<Option<(DateTime<Utc>, CaseKey)>> {
        PgStore::next_due_case(self)
    }
    fn watch(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        PgStore::watch(self, wake);
    }
    fn claim_due_cases(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<CaseKey>,
    ) -> Result<DueCases> {
        PgStore::claim_due_cases(self, now, limit, busy)
    }
    fn remove_schedule_entry(&self, at: DateTime<Utc>, key: &CaseKey) -> Result<()> {
        PgStore::remove_schedule_entry(self, at, key)
    }
    fn due_outbox(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &std::collections::HashSet<Uuid>,
    ) -> Result<(Vec<OutboxEntry>, Option<DateTime<Utc>>)> {
        PgStore::due_outbox(self, now, limit, busy)
    }
    fn outbox_entry(&self, id: Uuid) -> Result<Option<OutboxEntry>> {
        PgStore::outbox_entry(self, id)
    }
    fn outbox_len(&self) -> usize {
        PgStore::outbox_len(self)
    }
    fn outbox_head(&self) -> Result<Option<DateTime<Utc>>> {
        PgStore::outbox_head(self)
    }
    fn mark_delivered(
        &self,
        id: Uuid,
        provider_id: Option<String>,
        at: DateTime<Utc>,
    ) -> super::BoxFuture<'_, Result<()>> {
        Box::pin(PgStore::mark_delivered(self, id, provider_id, at))
    }
    fn delivered_mark(&self, id: Uuid) -> Result<Option<DeliveredMark>> {
        PgStore::delivered_mark(self, id)
    }
    fn contact(&self, channel: Channel, address: &str) -> Contact {
        PgStore::contact(self, channel, address)
    }
    fn contacts_of(&self, case: &Case) -> Vec<Contact> {
        codec::contacts_of(&self.inner.salt, case)
    }
    fn cases_of(&self, contact: Contact) -> Result<Vec<CaseKey>> {
        PgStore::cases_of(self, contact)
    }
    fn contact_salt(&self) -> [u8; 32] {
        self.inner.salt
    }
    fn generated_unsubscribe_key(&self) -> [u8; 32] {
        self.inner.unsubscribe_key
    }
    fn opt_out(&self, contact: Contact, via: OptOutVia, now: DateTime<Utc>) -> Result<()> {
        PgStore::opt_out(self, contact, via, now)
    }
    fn opt_in(&self, contact: Contact) -> Result<bool> {
        PgStore::opt_in(self, contact)
    }
    fn opted_out(&self, contact: Contact) -> Result<Option<OptOut>> {
        PgStore::opted_out(self, contact)
    }
    fn claim_send(
        &self,
        contact: Contact,
        gap: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), DateTime<Utc>>> {
        PgStore::claim_send(self, contact, gap, now)
    }
    fn set_last_sent(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        PgStore::set_last_sent(self, contact, at)
    }
    fn note_inbound(&self, contact: Contact, at: DateTime<Utc>) -> Result<()> {
        PgStore::note_inbound(self, contact, at)
    }
    fn last_inbound(&self, contact: Contact) -> Result<Option<DateTime<Utc>>> {
        PgStore::last_inbound(self, contact)
    }
    fn idempotent_response(&self, key: &str) -> Result<Option<IdempotentResponse>> {
        PgStore::idempotent_response(self, key)
    }
    fn prune_idempotency(&self, before: DateTime<Utc>) -> Result<usize> {
        PgStore::prune_idempotency(self, before)
    }
    fn backup<'a>(
        &'a self,
        out: &'a mut (dyn std::io::Write + Send),
    ) -> super::BoxFuture<'a, std::result::Result<BackupSummary, BackupError>> {
        Box::pin(PgStore::backup(self, out))
    }
}
