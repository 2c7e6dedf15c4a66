//! Wiring: load and validate everything, open the store, start the API,
//! the scheduler and the dispatcher under supervision, and stop them in
//! order.
//!
//! `run` takes an already-bound listener and a shutdown future, so tests
//! start a real daemon on port 0.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::channels::email::Mailer;
use crate::channels::sms::Texter;
use crate::config::Config;
use crate::config::StoreChoice;
use crate::domain::clock::{SharedClock, system, v7_ids};
use crate::http::api::{ApiState, router};
use crate::runtime::build::{build_engine, with_store_keys};
use crate::runtime::dispatch::Dispatcher;
use crate::runtime::supervise::{Heartbeat, all_fresh};
use crate::service::Service;
use crate::store::{PgStore, PgStoreConfig, SledStore, Storage};

/// Runs the daemon on the wall clock until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_clock(listener, config, shutdown, system()).await
}

/// Runs the daemon on `clock` until `shutdown` resolves, or until a worker
/// stops (then with an error, for the exit code).
pub async fn run_with_clock(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: SharedClock,
) -> anyhow::Result<()> {
    let mut engine =
        build_engine(&config, v7_ids(), clock.now()).map_err(|d| anyhow::anyhow!("{d}"))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "data_dir {}: cannot create it: {e}",
            config.data_dir.display()
        )
    })?;
    let (storage, pg, sweep) = open_store(&config)?;
    with_store_keys(&mut engine, &*storage);
    let texter = Texter::new(
        &config.sms.transport,
        config.sms.twilio.as_ref(),
        &config.public_url,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let whatsapp = config
        .whatsapp
        .as_ref()
        .map(|w| Texter::whatsapp(&w.transport, config.sms.twilio.as_ref(), &config.public_url))
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let pruned = storage.prune_idempotency(clock.now() - chrono::Duration::days(1))?;
    let mut mailer =
        Mailer::new(&config.email.transport, &config.email.from).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(bounces) = &config.email.bounce_address {
        mailer = mailer.with_bounces(bounces, &engine.consent.unsubscribe_key);
    }
    crate::metrics::install();
    let counted = count_cases(storage.clone(), sweep);
    let mut svc = Service::new(
        storage.clone(),
        Arc::new(engine),
        clock.clone(),
        config.defaults(),
    );
    svc.digest_window = config.digest_window;
    // Work another replica commits wakes this one's workers at once.
    let (scheduler, dispatcher) = (svc.wake_scheduler.clone(), svc.wake_dispatcher.clone());
    storage.watch(Arc::new(move || {
        scheduler.notify_one();
        dispatcher.notify_one();
    }));
    let reloader = Arc::new(crate::runtime::reload::Reloader::new(
        config.clone(),
        svc.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        svc: svc.clone(),
        tokens: config.tokens.clone().into(),
        ready: ready.clone(),
        webhooks: Some(Arc::new(crate::http::state::Webhooks {
            auth_token: config.sms.twilio.as_ref().map(|t| t.auth_token.clone()),
            public_url: config.public_url.clone(),
            help_text: config.sms.help_text.clone(),
        })),
        inbound: reloader.inbound(),
    };
    for e in &config.inbound {
        crate::metrics::inbound_configured(e.system.as_str(), &e.source);
    }
    let cancel = CancellationToken::new();
    crate::runtime::reload::on_sighup(reloader.clone(), cancel.clone())?;
    let beats = [Heartbeat::new("scheduler"), Heartbeat::new("dispatcher")];
    let scheduler = tokio::spawn(crate::runtime::scheduler::run(
        svc.clone(),
        cancel.clone(),
        beats[0].clone(),
    ));
    let dispatcher = tokio::spawn(
        Dispatcher {
            svc: svc.clone(),
            mailer,
            texter,
            whatsapp,
            delivery: config.delivery.clone(),
            email_gap: config.email.min_gap,
            sms_gap: config.sms.min_gap,
            whatsapp_gap: config
                .whatsapp
                .as_ref()
                .map_or(config.sms.min_gap, |w| w.min_gap),
        }
        .run(cancel.clone(), config.shutdown_grace, beats[1].clone()),
    );
    let failed = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(std::sync::Mutex::new(None));
    if let Some(pg) = pg {
        tokio::spawn(watch_lock(
            pg,
            taken.clone(),
            cancel.clone(),
            ready.clone(),
            failed.clone(),
        ));
    }
    let supervisor = tokio::spawn(supervise(
        [("scheduler", scheduler), ("dispatcher", dispatcher)],
        cancel.clone(),
        ready.clone(),
        failed.clone(),
        config.shutdown_grace,
    ));
    // A small store is counted before ready, so the gauge is there from
    // the first scrape; a large one (seconds at a million cases) after.
    let _ = tokio::time::timeout(COUNT_BEFORE_READY, counted).await;
    tracing::info!(
        listen = %listener.local_addr()?,
        outbox = storage.outbox_len(),
        pruned_idempotency = pruned,
        "tidings serving"
    );
    ready.store(true, Ordering::Relaxed);
    // systemd Type=notify: ready once the API listens and the store is open.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(watchdog(
            period,
            beats.to_vec(),
            failed.clone(),
            cancel.clone(),
        ));
    }
    let stop = cancel.clone();
    let ready_flag = ready.clone();
    let admin = crate::http::admin::AdminState {
        svc: svc.clone(),
        reloader,
        token_sha256: config.admin_token_sha256,
    };
    crate::http::serve::serve(
        listener,
        crate::http::admin::app(router(state), admin),
        async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => {}
            }
            ready_flag.store(false, Ordering::Relaxed);
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            tracing::info!("shutting down: intake stopped");
        },
    )
    .await?;
    cancel.cancel();
    let _ = supervisor.await;
    storage.flush().await?;
    let taken = taken
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(why) = taken {
        anyhow::bail!("the postgres store: {why}; this daemon stopped");
    }
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("a worker stopped unexpectedly; see the log above");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long a start waits for the count of cases before it is ready.
const COUNT_BEFORE_READY: Duration = Duration::from_millis(250);

/// Counts the cases by status for `tidings_cases_open`, on a blocking
/// thread once the sweep of keys (if any) is done: one walk of every case,
/// which must not hold up the start. The gauge shows once both are done.
fn count_cases(storage: Arc<dyn Storage>, sweep: Option<JoinHandle<()>>) -> JoinHandle<()> {
    crate::metrics::counting_cases();
    let count = move || {
        let started = std::time::Instant::now();
        match crate::metrics::count_cases(storage.scan_case_statuses()) {
            Ok(cases) => tracing::info!(cases, ms = started.elapsed().as_millis(), "cases counted"),
            Err(e) => tracing::error!(
                error = %e,
                "counting the cases failed; tidings_cases_open is not shown until a restart"
            ),
        }
    };
    tokio::spawn(async move {
        if let Some(sweep) = sweep {
            let _ = sweep.await;
        }
        let _ = tokio::task::spawn_blocking(count).await;
    })
}

/// The store, the PostgreSQL store again to watch its lock, the sweep.
type Opened = (Arc<dyn Storage>, Option<PgStore>, Option<JoinHandle<()>>);

/// Opens the backend `store:` chose. sled: the database in `data_dir/db`,
/// with the sweep of keys a crash left behind started in the background.
/// PostgreSQL: migrations applied, and the database's daemon lock taken
/// shared (replicas run side by side; `migrate-store` takes it alone).
/// Also returns the sweep, to be awaited before other walks of the store.
fn open_store(config: &Config) -> anyhow::Result<Opened> {
    match &config.store {
        StoreChoice::Sled => {
            let db = config.data_dir.join("db");
            let store = SledStore::open(&db)
                .map_err(|e| anyhow::anyhow!("the store in {}: {e}", db.display()))?;
            store.set_reserve(config.storage_reserve);
            let sweeper = store.clone();
            let sweep = tokio::task::spawn_blocking(move || match sweeper.sweep_keys() {
                Ok(0) => {}
                Ok(orphans) => {
                    tracing::info!(orphans, "keyring: destroyed keys no stored value names");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keyring: looking for keys left by a crash failed");
                }
            });
            Ok((Arc::new(store), None, Some(sweep)))
        }
        StoreChoice::Postgres {
            url,
            pool_size,
            lease,
        } => {
            let pg = PgStoreConfig {
                url: url.clone(),
                pool_size: *pool_size,
                lease: *lease,
            };
            let store =
                PgStore::open(&pg).map_err(|e| anyhow::anyhow!("the postgres store: {e}"))?;
            store
                .lock_daemon()
                .map_err(|e| anyhow::anyhow!("the postgres store: {e}"))?;
            tracing::info!(
                pool_size,
                lease_s = lease.as_secs_f64(),
                "store: PostgreSQL, shared by replicas"
            );
            Ok((Arc::new(store.clone()), Some(store), None))
        }
    }
}

/// Stops the daemon when a process took the database to itself (a
/// `migrate-store`) while this one's session was gone (a database
/// restart). `/readyz` turns 503 at once, as for a failed worker.
async fn watch_lock(
    store: PgStore,
    taken: Arc<std::sync::Mutex<Option<String>>>,
    cancel: CancellationToken,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(why) = store.lock_taken() {
            ready.store(false, Ordering::SeqCst);
            failed.store(true, Ordering::SeqCst);
            tracing::error!(error = %why, "another process has the database to itself now; this daemon stops");
            *taken
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            cancel.cancel();
            return;
        }
    }
}

/// Watches the workers. One that ends before shutdown (a panic, an
/// unexpected return) fails the daemon: `/readyz` turns 503 at once, the
/// watchdog pings stop, and after a short drain (so load balancers see the
/// 503) everything stops and `run` returns an error.
async fn supervise(
    workers: [(&'static str, JoinHandle<()>); 2],
    cancel: CancellationToken,
    ready: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    grace: Duration,
) {
    let [(first_name, first), (second_name, second)] = workers;
    let mut first = Some(first);
    let mut second = Some(second);
    let (name, result) = tokio::select! {
        r = async { first.as_mut().expect("present").await } => {
            first = None;
            (first_name, r)
        }
        r = async { second.as_mut().expect("present").await } => {
            second = None;
            (second_name, r)
        }
    };
    if !cancel.is_cancelled() {
        failed.store(true, Ordering::SeqCst);
        ready.store(false, Ordering::SeqCst);
        match result {
            Err(e) if e.is_panic() => {
                tracing::error!(worker = name, "worker panicked; the daemon stops");
            }
            _ => tracing::error!(
                worker = name,
                "worker stopped unexpectedly; the daemon stops"
            ),
        }
        tokio::time::sleep(DRAIN.min(grace / 2)).await;
        cancel.cancel();
    }
    for handle in [first, second].into_iter().flatten() {
        let _ = handle.await;
    }
}

/// How long `/readyz` says 503 before a failed daemon stops.
const DRAIN: Duration = Duration::from_secs(1);

/// Pings systemd's watchdog every half period while every worker's
/// heartbeat is fresh and none has failed; otherwise stays silent, so
/// `WatchdogSec=` fires.
async fn watchdog(
    period: Duration,
    beats: Vec<Heartbeat>,
    failed: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(period / 2);
    let mut silent = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !failed.load(Ordering::SeqCst) && all_fresh(&beats) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            silent = false;
        } else if !silent {
            silent = true;
            let stale: Vec<&str> = beats
                .iter()
                .filter(|b| !b.is_fresh())
                .map(Heartbeat::name)
                .collect();
            tracing::error!(?stale, "a worker is not alive; watchdog pings withheld");
        }
    }
}
