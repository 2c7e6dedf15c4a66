//! Wiring: load and validate everything, open the store, start the API,
//! the scheduler and the dispatcher, and stop them in order.
//!
//! `run` takes an already-bound listener and a shutdown future, so tests
//! start a real daemon on port 0.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::channels::email::Mailer;
use crate::channels::sms::Texter;
use crate::config::{Config, Diagnostic, Diagnostics};
use crate::domain::{Case, CaseInput, Channel, CustomerInput, Priority, Status};
use crate::engine::plan::{ConsentKeys, Engine};
use crate::engine::render::{MessageContext, Templates};
use crate::engine::rules::RuleSet;
use crate::http::api::{ApiState, router};
use crate::runtime::dispatch::Dispatcher;
use crate::service::Service;
use crate::store::Store;

/// Loads rules and templates and checks that they fit together: every
/// template a rule names exists, and every template renders.
pub fn build_engine(config: &Config) -> Result<Engine, Diagnostics> {
    let rules = RuleSet::load_dir(&config.rules_dir);
    let templates = Templates::load(&config.templates_dir, config.default_locale.clone());
    let (rules, templates) = match (rules, templates) {
        (Ok(r), Ok(t)) => (r, t),
        (r, t) => {
            let mut all = Vec::new();
            if let Err(Diagnostics(d)) = r {
                all.extend(d);
            }
            if let Err(Diagnostics(d)) = t {
                all.extend(d);
            }
            return Err(Diagnostics(all));
        }
    };
    let mut errors = Vec::new();
    let channels = vec![Channel::Email, Channel::Sms];
    let mut need = |template: &str, origin: &crate::engine::rules::Origin, chans: &[Channel]| {
        for c in chans {
            if channels.contains(c) && !templates.has(template, *c) {
                errors.push(origin.diagnostic(format!(
                    "template `{template}` has no {}.{}.j2 in {}",
                    template,
                    c.as_str(),
                    templates.dir().display()
                )));
            }
        }
    };
    for r in &rules.rules {
        need(&r.template, &r.origin, &r.channels);
        if let Some(e) = &r.escalate {
            need(&e.template, &r.origin, &[Channel::Email]);
        }
    }
    for on in rules.on.values() {
        need(&on.template, &on.origin, &on.channels);
    }
    errors.extend(templates.check(&sample_context(config)));
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(Engine {
        rules,
        templates,
        company: config.company.clone(),
        public_url: config.public_url.clone(),
        message_id_domain: config.email.from.email.domain().to_owned(),
        channels,
        email_quiet: config.email.quiet_hours,
        sms_quiet: config.sms.quiet_hours,
        max_segments: config.sms.max_segments,
        consent: ConsentKeys {
            salt: [0; 32],
            unsubscribe_key: config.consent.secret.clone().unwrap_or_default(),
        },
    })
}

/// Contacts are keyed under the store's own salt; unsubscribe links are
/// signed with the configured secret, else with the store's own key.
pub fn with_store_keys(engine: &mut Engine, store: &Store) {
    engine.consent.salt = store.contact_salt();
    if engine.consent.unsubscribe_key.is_empty() {
        engine.consent.unsubscribe_key = store.generated_unsubscribe_key().to_vec();
    }
}

/// A realistic case with every field filled, for template checks.
fn sample_context(config: &Config) -> MessageContext {
    let now = Utc::now();
    let input = CaseInput {
        subject: "Replacement router has not shipped".into(),
        status: Status::Open,
        priority: Priority::High,
        customer: CustomerInput {
            name: "Maria Hernandez".into(),
            email: Some("maria.hernandez@example.com".into()),
            phone: Some("+12125550143".into()),
            timezone: Some("America/New_York".into()),
            locale: Some("en".into()),
            channels: None,
        },
        assignee: Some("Jordan".into()),
        eta: Some(now + chrono::Duration::days(3)),
        tags: vec!["hardware".into()],
        fields: [("order".to_owned(), serde_json::json!("RMA-20931"))].into(),
    };
    let mut case: Case = input
        .into_case(
            "CASE-1"
                .parse()
                .unwrap_or_else(|_| unreachable!("valid id")),
            "sample",
            &config.defaults(),
            now,
            None,
        )
        .unwrap_or_else(|e| unreachable!("the sample case is valid: {e}"));
    case.latest_note = Some(crate::domain::Note {
        body: "The courier picked up the replacement this morning.".into(),
        author: Some("Jordan".into()),
        at: now,
    });
    MessageContext::new(
        &case,
        Some(now + chrono::Duration::hours(4)),
        now,
        &config.company,
        format!("{}/unsubscribe/sample", config.public_url),
    )
}

/// `tidings check`: everything `serve` would validate, nothing started.
/// Returns warnings: SMS templates that can run over the segment budget
/// with long inputs (rendering shortens those at send time).
pub fn check(config: &Config) -> Result<Vec<Diagnostic>, Diagnostics> {
    let engine = build_engine(config)?;
    if let Err(e) = Mailer::new(&config.email) {
        return Err(Diagnostic::new(&config.path, 1, 1, e).into());
    }
    if let Err(e) = Texter::new(&config.sms, &config.public_url) {
        return Err(Diagnostic::new(&config.path, 1, 1, e).into());
    }
    Ok(engine
        .templates
        .sms_over_budget(&long_context(config), config.sms.max_segments))
}

/// The sample case with the longest inputs a ticket system realistically
/// sends: a long name, subject and note.
fn long_context(config: &Config) -> MessageContext {
    let mut ctx = sample_context(config);
    ctx.customer.name = "Maria Guadalupe Hernandez-Villanueva de la Cruz".into();
    ctx.customer.first_name = "Maria Guadalupe".into();
    ctx.case.subject = "Replacement router for the branch office has not shipped although the order was confirmed two weeks ago".into();
    ctx.case.latest_note = Some("The courier picked up the replacement this morning and it is now on its way to the depot; \
we will confirm the delivery window as soon as the carrier shares it with us. Thank you for your patience."
        .into());
    ctx.cases = vec![ctx.case.clone(), ctx.case.clone(), ctx.case.clone()];
    ctx
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut engine = build_engine(&config).map_err(|d| anyhow::anyhow!("{d}"))?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join("db"))?;
    store.set_reserve(config.storage_reserve);
    let sweeper = store.clone();
    tokio::task::spawn_blocking(move || match sweeper.sweep_keys() {
        Ok(0) => {}
        Ok(orphans) => tracing::info!(orphans, "keyring: destroyed keys no stored value names"),
        Err(e) => tracing::warn!(error = %e, "keyring: looking for keys left by a crash failed"),
    });
    with_store_keys(&mut engine, &store);
    let texter = Texter::new(&config.sms, &config.public_url).map_err(|e| anyhow::anyhow!(e))?;
    let pruned = store.prune_idempotency(Utc::now() - chrono::Duration::days(1))?;
    let mailer = Mailer::new(&config.email).map_err(|e| anyhow::anyhow!(e))?;
    let mut svc = Service::new(store.clone(), Arc::new(engine), config.defaults());
    svc.digest_window = config.digest_window;
    crate::metrics::install();
    crate::metrics::count_cases(&store)?;
    let reloader = Arc::new(crate::runtime::reload::Reloader::new(
        config.clone(),
        svc.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        svc: svc.clone(),
        tokens: config.tokens.clone().into(),
        ready: ready.clone(),
        webhooks: Some(Arc::new(crate::http::consent::Webhooks {
            auth_token: config.sms.twilio.as_ref().map(|t| t.auth_token.clone()),
            public_url: config.public_url.clone(),
            help_text: config.sms.help_text.clone(),
        })),
    };
    let cancel = CancellationToken::new();
    crate::runtime::reload::on_sighup(reloader.clone(), cancel.clone())?;
    let scheduler = tokio::spawn(crate::runtime::scheduler::run(svc.clone(), cancel.clone()));
    let dispatcher = tokio::spawn(
        Dispatcher {
            svc: svc.clone(),
            mailer,
            texter,
            delivery: config.delivery.clone(),
            email_gap: config.email.min_gap,
            sms_gap: config.sms.min_gap,
        }
        .run(cancel.clone(), config.shutdown_grace),
    );
    tracing::info!(
        listen = %listener.local_addr()?,
        outbox = store.outbox_len(),
        pruned_idempotency = pruned,
        "tidings serving"
    );
    ready.store(true, Ordering::Relaxed);
    // systemd Type=notify: ready once the API listens and the store is open.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
        });
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
    let _ = scheduler.await;
    let _ = dispatcher.await;
    store.flush().await?;
    tracing::info!("stopped");
    Ok(())
}
