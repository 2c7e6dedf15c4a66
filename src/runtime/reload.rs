//! Reload: SIGHUP or `POST /-/reload` re-reads the config file, rules and
//! templates, validates them as a whole (the checks `tidings check` makes),
//! swaps the planning engine atomically and recomputes every case's
//! schedule under the new rules. The ticket systems' webhook entries
//! (`inbound:` and their mapping files) are swapped with them.
//!
//! A set that does not validate changes nothing: each diagnostic is logged
//! with `file:line:column`, the failure is counted, and the old set keeps
//! serving. Settings bound at start-up (listen address, data_dir, the
//! email transport, delivery, logging, defaults, API tokens) are compared
//! and, when changed, logged as needing a restart.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::Diagnostics;
use crate::service::{Scope, Service, ServiceError};
use crate::store::Commit;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is invalid; the running one stays:\n{0}")]
    Invalid(Diagnostics),
    #[error("rescheduling cases under the new rules failed: {0}")]
    Store(#[from] ServiceError),
}

/// What a successful reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// Cases whose schedule moved under the new rules.
    pub rescheduled: usize,
    /// Changed settings that take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The ticket systems' webhook entries in force, swapped whole by a reload.
pub type Inbound = Arc<arc_swap::ArcSwap<Vec<crate::config::InboundEntry>>>;

/// Reloads the daemon's configuration; one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    svc: Service,
    inbound: Inbound,
}

impl Reloader {
    pub fn new(config: Config, svc: Service) -> Self {
        Self {
            path: config.path.clone(),
            inbound: Arc::new(arc_swap::ArcSwap::from_pointee(config.inbound.clone())),
            running: Mutex::new(config),
            svc,
        }
    }

    /// The webhook entries in force, for the HTTP layer to read.
    pub fn inbound(&self) -> Inbound {
        self.inbound.clone()
    }

    /// Reloads, logs the outcome and counts it in `tidings_reload_total`.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().await;
        let result = self.try_reload(&mut running).await;
        crate::metrics::reload(result.is_ok());
        match &result {
            Ok(r) => tracing::info!(
                config = %self.path.display(),
                rescheduled = r.rescheduled,
                "configuration reloaded"
            ),
            Err(ReloadError::Invalid(d)) => {
                for diagnostic in &d.0 {
                    tracing::error!(%diagnostic, "reload rejected");
                }
                tracing::error!(
                    config = %self.path.display(),
                    problems = d.0.len(),
                    "reload rejected; the running configuration stays"
                );
            }
            Err(e @ ReloadError::Store(_)) => tracing::error!(error = %e, "reload failed"),
        }
        result
    }

    async fn try_reload(&self, running: &mut Config) -> Result<Reloaded, ReloadError> {
        let config = Config::load(&self.path).map_err(ReloadError::Invalid)?;
        // The same validation as `tidings check`, then the engine it built.
        let now = self.svc.clock.now();
        let (mut engine, _) =
            crate::runtime::build::check(&config, self.svc.engine.load().ids.clone(), now)
                .map_err(ReloadError::Invalid)?;
        // The keys behind contacts and unsubscribe links stay those the
        // daemon started with: links already sent must keep working.
        // How long page links outlive a case is read again.
        let window = engine.consent.link_valid_after_close;
        engine.consent = self.svc.engine.load().consent.clone();
        engine.consent.link_valid_after_close = window;
        let needs_restart = restart_only_changes(running, &config);
        for setting in &needs_restart {
            tracing::warn!(setting, "changed setting ignored until restart");
        }
        self.svc.engine.store(Arc::new(engine));
        for e in &config.inbound {
            crate::metrics::inbound_configured(e.system.as_str(), &e.source);
        }
        self.inbound.store(Arc::new(config.inbound.clone()));
        *running = config;
        let rescheduled = self.reschedule_all().await?;
        Ok(Reloaded {
            rescheduled,
            needs_restart,
        })
    }

    /// One walk of the cases: each is re-planned under the engine now in
    /// force, under its lock, and committed only when its schedule moved;
    /// one flush at the end.
    async fn reschedule_all(&self) -> Result<usize, ServiceError> {
        let svc = &self.svc;
        let mut moved = 0;
        for item in svc.store.scan_cases() {
            let keys = [item?.key()];
            let scope = Scope {
                durable: false,
                ..Scope::internal(&keys)
            };
            // Re-read under the lock: the walk's copy may be stale.
            let changed = svc
                .change(scope, |records, now| {
                    let Some(mut record) = records.into_iter().next().flatten() else {
                        return Ok((vec![Commit::default()], false));
                    };
                    let before = record.schedule.clone();
                    svc.engine.load().reschedule(&mut record, now);
                    if record.schedule == before {
                        return Ok((vec![Commit::default()], false));
                    }
                    Ok((vec![Commit::record(record)], true))
                })
                .await?;
            moved += usize::from(changed);
        }
        svc.flush().await?;
        Ok(moved)
    }
}

/// Names the settings that differ and are bound at start-up.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    // Debug output compares values without needing PartialEq on every
    // config type; secrets print redacted, so a changed password is not
    // noticed here (it is read again at restart like everything else).
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.data_dir != new.data_dir {
        changed.push("data_dir");
    }
    if !same(&old.email, &new.email) {
        changed.push("email");
    }
    if !same(&old.delivery, &new.delivery) {
        changed.push("delivery");
    }
    if !same(&old.log, &new.log) {
        changed.push("log");
    }
    if old.shutdown_grace != new.shutdown_grace {
        changed.push("shutdown.grace");
    }
    if old.default_timezone != new.default_timezone || old.default_locale != new.default_locale {
        changed.push("default_timezone/default_locale");
    }
    if old.tokens.len() != new.tokens.len()
        || old
            .tokens
            .iter()
            .zip(&new.tokens)
            .any(|(a, b)| a.source != b.source || a.sha256 != b.sha256)
    {
        changed.push("api.tokens");
    }
    if old.admin_token_sha256 != new.admin_token_sha256 {
        changed.push("admin");
    }
    // SMS quiet hours and the segment budget take effect at once (they live
    // in the planning engine); the provider, its credentials and the gaps
    // do not.
    if !same(&old.sms.transport, &new.sms.transport)
        || old.sms.min_gap != new.sms.min_gap
        || old.sms.twilio.as_ref().map(|t| &t.account_sid)
            != new.sms.twilio.as_ref().map(|t| &t.account_sid)
    {
        changed.push("sms");
    }
    // WhatsApp's sender and gap live in the delivery loop, built at start.
    let sender = |c: &Config| {
        c.whatsapp
            .as_ref()
            .map(|w| (w.transport.clone(), w.min_gap))
    };
    if !same(&sender(old), &sender(new)) {
        changed.push("whatsapp");
    }
    if old.consent.secret != new.consent.secret {
        changed.push("consent");
    }
    if old.digest_window != new.digest_window {
        changed.push("digest");
    }
    changed
}

/// Reloads on every SIGHUP until `cancel` fires. The handler is installed
/// before this returns, so a SIGHUP after start-up never kills the daemon.
pub fn on_sighup(reloader: Arc<Reloader>, cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The outcome is logged and counted inside.
                    let _ = reloader.reload().await;
                }
            }
        }
    });
    Ok(())
}
