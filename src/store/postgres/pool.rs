//! The PostgreSQL store's runtime and connections: a small runtime of its
//! own, a pool of connections (each with the statements it prepared), and
//! how a synchronous caller runs a job there and waits for it.

use std::future::Future;
use std::sync::Arc;

use tokio_postgres::{Client, NoTls};

use super::prepared::{self, Db};
use super::{Result, StoreError, pg};

/// The store's own runtime; shut down without waiting when the store goes
/// (dropping a runtime inside another one's thread would panic).
pub(super) struct Rt(pub(super) Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The connections: at most `size` in use; an idle one is reused unless
/// it closed.
pub(super) struct Pool {
    pub(super) config: tokio_postgres::Config,
    idle: std::sync::Mutex<Vec<Pooled>>,
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
}

/// A connection's client and the statements it has prepared.
struct Pooled {
    client: Client,
    statements: prepared::Statements,
}

/// A connection taken from the pool, given back when dropped.
pub(crate) struct Conn {
    client: Option<Pooled>,
    pool: Arc<Pool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Conn {
    fn pooled(&mut self) -> &mut Pooled {
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("a connection holds its client until dropped"))
    }

    /// The client, its statements prepared once.
    pub(super) fn client(&mut self) -> Db<'_, Client> {
        let p = self.pooled();
        Db::new(&p.client, &p.statements)
    }

    /// The client itself (statements sent as text, run once or seldom).
    pub(super) fn raw(&mut self) -> &mut Client {
        &mut self.pooled().client
    }

    /// The client (to start a transaction) and its prepared statements.
    pub(super) fn parts(&mut self) -> (&mut Client, &prepared::Statements) {
        let p = self.pooled();
        (&mut p.client, &p.statements)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && !c.client.is_closed()
        {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
        }
    }
}

/// Opens a connection and runs it on the current runtime.
pub(super) async fn connect(config: &tokio_postgres::Config) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(pg)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %pg(e), "store: a PostgreSQL connection failed");
        }
    });
    Ok(client)
}

impl Pool {
    pub(super) fn new(config: tokio_postgres::Config, size: usize) -> Self {
        Self {
            config,
            idle: std::sync::Mutex::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(size.max(1))),
            size: size.max(1),
        }
    }

    /// At most this many connections in use.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Postgres("the connection pool is closed".into()))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let client = match idle {
            Some(c) if !c.client.is_closed() => c,
            _ => Pooled {
                client: connect(&self.config).await?,
                statements: prepared::Statements::default(),
            },
        };
        Ok(Conn {
            client: Some(client),
            pool: self.clone(),
            _permit: permit,
        })
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tidings-pg")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Postgres(format!("cannot start the store's runtime: {e}")))
}

/// Runs `job` on `rt` with a connection of `pool`; blocks until it ends.
pub(super) fn run_on<T, F, Fut>(rt: &tokio::runtime::Handle, pool: &Arc<Pool>, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let pool = pool.clone();
    rt.spawn(async move {
        let r = match pool.get().await {
            Ok(conn) => job(conn).await,
            Err(e) => Err(e),
        };
        let _ = tx.send(r);
    });
    let wait = || {
        rx.recv()
            .unwrap_or_else(|_| Err(StoreError::Postgres("the store's runtime stopped".into())))
    };
    // A caller on a worker of the daemon's runtime (a request's task)
    // hands the worker's other tasks to another thread while it waits, so
    // a round trip to the database does not hold up every task behind it.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}
