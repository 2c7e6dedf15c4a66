//! The `tidings` command line: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidings::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Keeps customers informed while their support case is open"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
    },
    /// Validate config, rules and templates; print file:line:column errors.
    Check {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
    },
    /// Print exactly what would be sent for a case now, without sending.
    Preview {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        /// A case as JSON, the body of PUT /v1/cases/{id}.
        #[arg(long)]
        case: PathBuf,
        /// Use this rule's template instead of the one that matches.
        #[arg(long)]
        rule: Option<String>,
        /// The channel to render for (default: the rule's first the customer allows).
        #[arg(long, value_parser = ["email", "sms", "whatsapp"])]
        channel: Option<String>,
    },
    /// Print the timeline of messages the rules would send over N days.
    Simulate {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        case: PathBuf,
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// API events, one JSON object a line, each with an `at` instant.
        #[arg(long)]
        events: Option<PathBuf>,
        /// The instant the case arrives (RFC 3339); now by default.
        #[arg(long)]
        start: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Copy the store into a folder; while the daemon runs, it makes the
    /// copy (needs the admin token in TIDINGS_ADMIN_TOKEN).
    Backup {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
    /// Make the store again from a backup folder (the daemon stopped).
    Restore {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        from: PathBuf,
        /// Replace a store that is already there.
        #[arg(long)]
        force: bool,
    },
    /// Hand one returned mail (a delivery status notification, on standard
    /// input) to the running daemon; for an MTA's pipe transport. Needs the
    /// admin token in TIDINGS_ADMIN_TOKEN.
    Bounce {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
    },
    /// How the promises of a next update came out (kept, late, superseded)
    /// per source and rule, with the worst late ones.
    Audit {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        /// Settled since: an RFC 3339 instant or a span back (7d, 24h).
        #[arg(long)]
        since: Option<String>,
        /// One source only.
        #[arg(long)]
        source: Option<String>,
        /// Print JSON, as GET /-/audit answers.
        #[arg(long)]
        json: bool,
    },
    /// Apply the store's schema migrations (PostgreSQL; the daemon applies
    /// them at start too).
    Migrate {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
    },
    /// Copy a stopped sled store into the PostgreSQL database the config
    /// names, with counts per kind read and written.
    MigrateStore {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        /// sled:PATH, the store's directory (or the data_dir holding it).
        #[arg(long)]
        from: String,
        /// postgres (the database of the config's `store`).
        #[arg(long)]
        to: String,
        /// Replace what the database already holds.
        #[arg(long)]
        force: bool,
    },
    /// Load cases from a JSON-lines file (one PUT /v1/cases body a line,
    /// with its "id"), the daemon stopped.
    Import {
        #[arg(long, env = "TIDINGS_CONFIG")]
        config: PathBuf,
        /// The JSON-lines file.
        file: PathBuf,
        /// The source the cases belong to (default: the config's only one).
        #[arg(long)]
        source: Option<String>,
    },
}

/// Loads config, rules and templates for the offline tools.
fn offline(path: &std::path::Path) -> Result<(Config, tidings::cli::Engine), ExitCode> {
    let config = load(path)?;
    let engine = tidings::cli::engine(&config).map_err(|d| {
        eprintln!("{d}");
        ExitCode::from(1)
    })?;
    Ok((config, engine))
}

fn print_result(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            config
                .log
                .level
                .clone()
                .unwrap_or_else(|| "info,lettre=warn,sled=warn,tower_http=warn".into()),
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        // Under systemd the journal stamps each line; keep them plain.
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|d| {
        eprintln!("{d}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match tidings::cli::check(&config) {
                Ok(warnings) => {
                    for w in &warnings {
                        eprintln!("{w}");
                    }
                    println!("{}: ok", config.path.display());
                    ExitCode::SUCCESS
                }
                Err(d) => {
                    eprintln!("{d}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Preview {
            config,
            case,
            rule,
            channel,
        } => {
            let channel = channel.map(|c| match c.as_str() {
                "sms" => tidings::domain::Channel::Sms,
                "whatsapp" => tidings::domain::Channel::WhatsApp,
                _ => tidings::domain::Channel::Email,
            });
            let (config, engine) = match offline(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let now = tidings::cli::now();
            print_result(
                tidings::cli::tools::load_case(&case, &config, now).and_then(|c| {
                    tidings::cli::tools::preview(&engine, &config, c, rule.as_deref(), channel, now)
                }),
            )
        }
        Command::Simulate {
            config,
            case,
            days,
            events,
            start,
        } => {
            let (config, engine) = match offline(&config) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let start = start.unwrap_or_else(tidings::cli::now);
            let events = match events
                .map(|p| tidings::cli::tools::load_events(&p))
                .transpose()
            {
                Ok(e) => e.unwrap_or_default(),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            print_result(
                tidings::cli::tools::load_case(&case, &config, start)
                    .and_then(|c| tidings::cli::tools::simulate(&engine, c, events, start, days)),
            )
        }
        Command::Backup { config, to } => ops_command(&config, |loc| {
            let rt = tokio::runtime::Runtime::new()?;
            let (summary, via) = rt.block_on(tidings::cli::backup::backup(&loc, &to))?;
            println!(
                "{}: {} entries in {} trees, sha256 {} ({})",
                to.join(tidings::cli::backup::BACKUP_FILE).display(),
                summary.entries,
                summary.trees.len(),
                summary.sha256,
                match via {
                    tidings::cli::backup::Via::Offline => "read from the stopped store",
                    tidings::cli::backup::Via::Daemon => "copied by the running daemon",
                }
            );
            Ok(())
        }),
        Command::Restore {
            config,
            from,
            force,
        } => ops_command(&config, |loc| {
            let summary = tidings::cli::backup::restore(&loc, &from, force)?;
            println!(
                "{}: restored {} entries in {} trees (sha256 {})",
                loc.data_dir.join("db").display(),
                summary.entries,
                summary.trees.len(),
                summary.sha256
            );
            Ok(())
        }),
        Command::Audit {
            config,
            since,
            source,
            json,
        } => ops_command(&config, |loc| {
            let rt = tokio::runtime::Runtime::new()?;
            let audit = rt.block_on(tidings::cli::audit::audit(
                &loc,
                since.as_deref(),
                source.as_deref(),
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&audit)?);
            } else {
                print!("{audit}");
            }
            Ok(())
        }),
        Command::Bounce { config } => {
            let loc = match tidings::config::Locations::load(&config) {
                Ok(l) => l,
                Err(d) => {
                    eprintln!("{d}");
                    return ExitCode::from(tidings::cli::bounce::EX_TEMPFAIL);
                }
            };
            let (code, line) = tidings::cli::bounce::run(&loc, std::io::stdin().lock());
            eprintln!("tidings bounce: {line}");
            ExitCode::from(code)
        }
        Command::Import {
            config,
            file,
            source,
        } => import(&config, &file, source.as_deref()),
        Command::Migrate { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match tidings::cli::migrate(&config) {
                Ok(done) => {
                    println!("{done}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tidings migrate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::MigrateStore {
            config,
            from,
            to,
            force,
        } => migrate_store(&config, &from, &to, force),
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(3);
                }
            };
            let result = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
                let shutdown = shutdown_signal()
                    .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
                tidings::daemon::run(listener, config, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "tidings stopped on an error");
                    eprintln!("tidings: {e:#}");
                    ExitCode::from(3)
                }
            }
        }
    }
}

/// SIGTERM or SIGINT. The handlers are installed here, before the daemon
/// starts (and before it tells systemd it is ready), so a signal sent at
/// any point after start-up stops it gracefully instead of killing it.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Runs `backup` or `restore`: 1 for a bad config or a refused restore,
/// 3 for a failure on the way.
fn ops_command(
    path: &std::path::Path,
    run: impl FnOnce(tidings::config::Locations) -> anyhow::Result<()>,
) -> ExitCode {
    let loc = match tidings::config::Locations::load(path) {
        Ok(l) => l,
        Err(d) => {
            eprintln!("{d}");
            return ExitCode::from(1);
        }
    };
    match run(loc) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings: {e:#}");
            let refused = e
                .downcast_ref::<tidings::cli::backup::RestoreError>()
                .is_some_and(|r| matches!(r, tidings::cli::backup::RestoreError::NotEmpty(_)));
            ExitCode::from(if refused { 1 } else { 3 })
        }
    }
}

/// `tidings migrate-store`: 0 when every kind arrived whole, 1 when
/// refused, 3 when it failed on the way or the counts differ.
fn migrate_store(config: &std::path::Path, from: &str, to: &str, force: bool) -> ExitCode {
    use tidings::cli::migrate_store::MigrateStoreError;
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match tidings::cli::migrate_store::migrate_store(&config, from, to, force) {
        Ok(report) => {
            println!("{}: copied into postgres", report.from.display());
            print!("{report}");
            if report.matches() {
                println!("every count matches");
                ExitCode::SUCCESS
            } else {
                eprintln!("tidings migrate-store: the counts read and written differ");
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("tidings migrate-store: {e}");
            ExitCode::from(match e {
                MigrateStoreError::Refused(_) => 1,
                MigrateStoreError::Failed(_) => 3,
            })
        }
    }
}

/// `tidings import`: 0 when every line was imported, 1 for a bad config or
/// any rejected line, 3 when the store failed on the way.
fn import(config: &std::path::Path, file: &std::path::Path, source: Option<&str>) -> ExitCode {
    use tidings::cli::import::{self, ImportError, SHOWN_REJECTIONS, StderrProgress};
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let run = || -> Result<import::Summary, ImportError> {
        let source = import::source_for(&config, source)?;
        let rt = tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?;
        rt.block_on(import::import(
            &config,
            file,
            &source,
            tidings::cli::clock(),
            &mut StderrProgress,
        ))
    };
    match run() {
        Ok(summary) => {
            for r in summary.rejected.iter().take(SHOWN_REJECTIONS) {
                eprintln!("{}", r.diagnostic(file));
            }
            if let Some(more) = summary
                .rejected
                .len()
                .checked_sub(SHOWN_REJECTIONS)
                .filter(|m| *m > 0)
            {
                eprintln!("… and {more} more rejected lines");
            }
            println!(
                "{}: {} cases imported ({} new, {} replaced), {} lines rejected",
                file.display(),
                summary.imported(),
                summary.created,
                summary.replaced,
                summary.rejected.len()
            );
            ExitCode::from(u8::from(!summary.rejected.is_empty()))
        }
        Err(e) => {
            eprintln!("tidings: {e:#}");
            let refused = !matches!(e, ImportError::Failed(_));
            ExitCode::from(if refused { 1 } else { 3 })
        }
    }
}
