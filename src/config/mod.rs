//! The daemon's configuration file: parsing, defaults, secrets.
//!
//! One YAML file; unknown keys are errors; durations are humantime strings;
//! secrets come from the environment or from files (systemd credentials),
//! never only inline. Paths are relative to the config file's folder.
//! Every error carries `file:line:column`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::channels::email::{Credentials, EmailTransport};
use crate::channels::sms::{SmsSender, SmsTransport, TwilioAuth};
use crate::domain::{
    Company, Defaults, Diagnostic, Diagnostics, Locale, parse_duration, parse_timezone,
};
use crate::engine::schedule::QuietHours;
use crate::engine::settle::DeliveryPolicy;

mod inbound;
mod store;
mod whatsapp;

pub use whatsapp::WhatsAppConfig;

pub use inbound::{InboundEntry, InboundSystem, Mapping, PublicComments};
pub use store::StoreChoice;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    data_dir: Option<String>,
    rules: Option<String>,
    templates: Option<String>,
    default_timezone: Option<Spanned<String>>,
    default_locale: Option<Spanned<String>>,
    public_url: Option<String>,
    company: Option<Company>,
    api: Option<RawApi>,
    email: Option<RawEmail>,
    sms: Option<RawSms>,
    whatsapp: Option<whatsapp::RawWhatsApp>,
    consent: Option<RawConsent>,
    digest: Option<RawDigest>,
    storage: Option<RawStorage>,
    store: Option<Spanned<store::RawStore>>,
    delivery: Option<RawDelivery>,
    log: Option<LogConfig>,
    admin: Option<RawAdmin>,
    shutdown: Option<RawShutdown>,
    inbound: Option<Vec<Spanned<inbound::RawInbound>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    source: String,
    token_sha256: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    transport: Option<EmailTransportKind>,
    smtp_url: Option<Spanned<String>>,
    username_env: Option<String>,
    username_file: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    from: Option<Spanned<String>>,
    pool_size: Option<u32>,
    tls_ca_file: Option<Spanned<String>>,
    file_dir: Option<String>,
    timeout: Option<Spanned<String>>,
    quiet_hours: Option<Spanned<RawQuiet>>,
    min_gap: Option<Spanned<String>>,
    reply_to: Option<Spanned<String>>,
    bounce_address: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailTransportKind {
    Smtp,
    File,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSms {
    transport: Option<SmsTransportKind>,
    base_url: Option<Spanned<String>>,
    account_sid: Option<Spanned<String>>,
    auth_token_env: Option<String>,
    auth_token_file: Option<String>,
    from: Option<Spanned<String>>,
    messaging_service_sid: Option<Spanned<String>>,
    file_dir: Option<String>,
    max_segments: Option<u32>,
    quiet_hours: Option<Spanned<RawQuiet>>,
    min_gap: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    help_text: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsTransportKind {
    Twilio,
    File,
}

/// `quiet_hours: { start: "21:00", end: "08:00" }`, or `quiet_hours: off`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawQuiet {
    Window {
        start: String,
        end: String,
    },
    /// YAML reads a bare `off` as false.
    Flag(bool),
    Off(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    secret_env: Option<String>,
    secret_file: Option<String>,
    /// The key before a rotation: links signed with it still open.
    previous_secret_env: Option<String>,
    previous_secret_file: Option<String>,
    link_valid_after_close: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    reserve_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDigest {
    window: Option<Spanned<String>>,
}

/// The local operator's token for `/-/reload` and `/-/backup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    token_sha256: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    max_attempts: Option<u32>,
    backoff: Option<RawBackoff>,
    concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
}

/// Logging options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, journald-friendly) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tidings=debug`.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An API token: its SHA-256 and the source it speaks for.
#[derive(Clone)]
pub struct ApiToken {
    pub source: String,
    pub sha256: [u8; 32],
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub transport: EmailTransport,
    pub from: lettre::message::Mailbox,
    /// When no email goes out, recipient-local; none by default.
    pub quiet_hours: Option<QuietHours>,
    /// The least time between two emails to one address.
    pub min_gap: Duration,
    /// Reply-To for every email to a customer, `{case_id}` replaced by the
    /// case's id (`support+{case_id}@example.com`); none by default.
    pub reply_to: Option<String>,
    /// The envelope sender bounces return to, one `+TOKEN` per message
    /// (`bounces@example.com` → `bounces+TOKEN@example.com`); none by
    /// default (the From address).
    pub bounce_address: Option<lettre::Address>,
}

#[derive(Debug, Clone)]
pub struct SmsConfig {
    pub transport: SmsTransport,
    /// Account SID and auth token: needed to send through Twilio and to
    /// check the signature of Twilio's webhooks.
    pub twilio: Option<TwilioAuth>,
    pub max_segments: usize,
    /// Recipient-local hours with no SMS; 21:00–08:00 unless configured.
    pub quiet_hours: Option<QuietHours>,
    pub min_gap: Duration,
    /// The answer to an inbound HELP.
    pub help_text: String,
}

/// The key that signs unsubscribe and case page links, when configured;
/// otherwise the daemon keeps a generated one in its store. The previous
/// key still opens links during a rotation.
#[derive(Clone, Default)]
pub struct ConsentConfig {
    pub secret: Option<Vec<u8>>,
    pub previous_secret: Option<Vec<u8>>,
    /// How long a case page link stays valid after the case closes.
    pub link_valid_after_close: Duration,
}

impl fmt::Debug for ConsentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsentConfig(..)")
    }
}

/// Free space kept on the store's disk unless `storage.reserve` says
/// otherwise: 64 MiB, since sled must never meet a full disk (it cannot
/// recover from one).
pub const DEFAULT_RESERVE: u64 = 64 * 1024 * 1024;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub rules_dir: PathBuf,
    pub templates_dir: PathBuf,
    pub default_timezone: Tz,
    pub default_locale: Locale,
    pub public_url: String,
    pub company: Company,
    pub tokens: Vec<ApiToken>,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    /// WhatsApp, when the `whatsapp:` section is there.
    pub whatsapp: Option<WhatsAppConfig>,
    pub consent: ConsentConfig,
    /// Updates of one customer's cases due within this window go out as one
    /// digest; zero turns digests off.
    pub digest_window: Duration,
    /// Free space kept on the store's disk; intake stops below it.
    pub storage_reserve: u64,
    /// The backend the daemon keeps its state in (`store:`).
    pub store: StoreChoice,
    pub delivery: DeliveryPolicy,
    pub log: LogConfig,
    /// SHA-256 of the admin token; the admin endpoints are off without it.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// How long sends in flight may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// Ticket systems' webhooks (`POST /v1/inbound/{system}/{source}`).
    pub inbound: Vec<InboundEntry>,
}

impl Config {
    pub fn defaults(&self) -> Defaults {
        Defaults {
            timezone: self.default_timezone,
            locale: self.default_locale.clone(),
        }
    }

    /// Reads and validates the config file. Secrets are resolved here, so a
    /// missing environment variable or credential file is reported at once.
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::new(path, 1, 1, format!("cannot read config: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, Diagnostics> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let rel = |p: &str| resolve_path(base, p);
        let mut errors = Vec::new();

        let listen = match &raw.listen {
            Some(s) => s.value.parse().unwrap_or_else(|_| {
                errors.push(Diagnostic::at(
                    path,
                    s,
                    format!(
                        "listen: `{}` is not an address such as 127.0.0.1:8080",
                        s.value
                    ),
                ));
                default_listen()
            }),
            None => default_listen(),
        };
        let default_timezone = match &raw.default_timezone {
            Some(s) => parse_timezone(&s.value).unwrap_or_else(|m| {
                errors.push(Diagnostic::at(path, s, format!("default_timezone {m}")));
                Tz::UTC
            }),
            None => Tz::UTC,
        };
        let fallback_locale = Locale::from_str_default();
        let default_locale = match &raw.default_locale {
            Some(s) => s.value.parse().unwrap_or_else(|m| {
                errors.push(Diagnostic::at(path, s, format!("default_locale {m}")));
                fallback_locale.clone()
            }),
            None => fallback_locale,
        };

        let data_dir = rel(raw.data_dir.as_deref().unwrap_or("./data"));
        let tokens: Vec<ApiToken> = raw
            .api
            .map(|api| {
                api.tokens
                    .iter()
                    .filter_map(|t| match resolve_token(base, &t.value) {
                        Ok(tok) => Some(tok),
                        Err(m) => {
                            errors.push(Diagnostic::at(path, t, m));
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();

        let email = resolve_email(path, base, &data_dir, raw.email, &mut errors);
        let sms = resolve_sms(
            path,
            base,
            &data_dir,
            raw.sms.unwrap_or_default(),
            &mut errors,
        );
        let whatsapp = raw
            .whatsapp
            .map(|w| whatsapp::resolve(path, base, &data_dir, w, &sms, &mut errors));
        let consent = resolve_consent(path, base, raw.consent.unwrap_or_default(), &mut errors);
        let digest_window = spanned_duration(
            path,
            "digest.window",
            raw.digest.and_then(|d| d.window).as_ref(),
            Duration::from_secs(600),
            &mut errors,
        );
        let admin_token_sha256 = resolve_admin(path, base, raw.admin, &mut errors);
        let shutdown_grace = spanned_duration(
            path,
            "shutdown.grace",
            raw.shutdown.as_ref().and_then(|s| s.grace.as_ref()),
            Duration::from_secs(10),
            &mut errors,
        );
        let delivery = resolve_delivery(path, raw.delivery, &mut errors);
        let store = store::resolve(path, raw.store.as_ref(), &mut errors);
        let defaults = Defaults {
            timezone: default_timezone,
            locale: default_locale.clone(),
        };
        let inbound = inbound::resolve(
            path,
            base,
            raw.inbound.unwrap_or_default(),
            &tokens,
            &defaults,
            &mut errors,
        );

        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        let Some(email) = email else {
            return Err(Diagnostic::new(path, 1, 1, "email: invalid").into());
        };
        Ok(Self {
            path: path.to_owned(),
            listen,
            data_dir,
            rules_dir: rel(raw.rules.as_deref().unwrap_or("./rules")),
            templates_dir: rel(raw.templates.as_deref().unwrap_or("./templates")),
            default_timezone,
            default_locale,
            public_url: raw
                .public_url
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_owned(),
            company: raw.company.unwrap_or_else(|| Company {
                name: "Support".into(),
                support_url: None,
            }),
            tokens,
            email,
            sms,
            whatsapp,
            consent,
            digest_window,
            storage_reserve: raw
                .storage
                .and_then(|s| s.reserve_mib)
                .map_or(DEFAULT_RESERVE, |m| m.saturating_mul(1024 * 1024)),
            store,
            delivery,
            log: raw.log.unwrap_or_default(),
            admin_token_sha256,
            shutdown_grace,
            inbound,
        })
    }
}

/// Where the daemon listens and keeps its data: all that `backup` and
/// `restore` need. Secrets are not read, so these commands work where the
/// daemon's credentials (systemd `LoadCredential=`) are not available.
#[derive(Debug, Clone)]
pub struct Locations {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `store: postgres`: the store is not in `data_dir`, so the offline
    /// tools ask the running daemon.
    pub postgres_store: bool,
}

impl Locations {
    pub fn load(path: &Path) -> Result<Self, Diagnostics> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Diagnostic::new(path, 1, 1, format!("cannot read config: {e}")))?;
        let raw: RawConfig =
            serde_saphyr::from_str(&text).map_err(|e| Diagnostic::from_yaml(path, &e))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let listen = match &raw.listen {
            Some(s) => s.value.parse().map_err(|_| {
                Diagnostic::at(path, s, format!("listen: `{}` is not an address", s.value))
            })?,
            None => default_listen(),
        };
        Ok(Self {
            listen,
            data_dir: resolve_path(base, raw.data_dir.as_deref().unwrap_or("./data")),
            postgres_store: matches!(
                raw.store.as_ref().map(|s| &s.value),
                Some(store::RawStore::Postgres(_))
            ),
        })
    }
}

impl Locale {
    fn from_str_default() -> Self {
        "en".parse()
            .unwrap_or_else(|_| unreachable!("`en` is a valid locale"))
    }
}

/// A path from the config file: absolute as written, else relative to the
/// config file's folder.
fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn spanned_duration(
    file: &Path,
    key: &str,
    value: Option<&Spanned<String>>,
    default: Duration,
    errors: &mut Vec<Diagnostic>,
) -> Duration {
    match value {
        None => default,
        Some(s) => parse_duration(key, &s.value).unwrap_or_else(|m| {
            errors.push(Diagnostic::at(file, s, m));
            default
        }),
    }
}

/// The certificates of a PEM file.
fn certificates(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn resolve_consent(
    path: &Path,
    base: &Path,
    raw: RawConsent,
    errors: &mut Vec<Diagnostic>,
) -> ConsentConfig {
    let mut secret =
        |name: &str, env: Option<&str>, file: Option<&str>| match read_secret(base, env, file) {
            Ok(Some(s)) if s.len() < 16 => {
                errors.push(Diagnostic::new(
                    path,
                    1,
                    1,
                    format!("consent: the {name} must be at least 16 characters"),
                ));
                None
            }
            Ok(s) => s.map(String::into_bytes),
            Err(m) => {
                errors.push(Diagnostic::new(path, 1, 1, format!("consent: {m}")));
                None
            }
        };
    let current = secret(
        "secret",
        raw.secret_env.as_deref(),
        raw.secret_file.as_deref(),
    );
    let previous = secret(
        "previous secret",
        raw.previous_secret_env.as_deref(),
        raw.previous_secret_file.as_deref(),
    );
    ConsentConfig {
        secret: current,
        previous_secret: previous,
        link_valid_after_close: spanned_duration(
            path,
            "consent.link_valid_after_close",
            raw.link_valid_after_close.as_ref(),
            Duration::from_secs(30 * 86_400),
            errors,
        ),
    }
}

fn read_secret(
    base: &Path,
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<String>, String> {
    if let Some(name) = env {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(format!("environment variable {name} is not set")),
        };
    }
    if let Some(file) = file {
        let p = credential_path(base, file);
        return std::fs::read_to_string(&p)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|e| format!("cannot read secret file {}: {e}", p.display()));
    }
    Ok(None)
}

/// A relative secret file is looked up in `$CREDENTIALS_DIRECTORY` (systemd
/// `LoadCredential=`) when set, else next to the config file.
fn credential_path(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        return p.to_owned();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(p);
        if candidate.exists() {
            return candidate;
        }
    }
    base.join(p)
}

fn resolve_token(base: &Path, raw: &RawToken) -> Result<ApiToken, String> {
    if raw.source.trim().is_empty() {
        return Err("api.tokens: source must not be empty".into());
    }
    let given = [
        raw.token_sha256.is_some(),
        raw.token_env.is_some(),
        raw.token_file.is_some(),
    ]
    .into_iter()
    .filter(|x| *x)
    .count();
    if given != 1 {
        return Err(format!(
            "api.tokens: source `{}` needs exactly one of token_sha256, token_env, token_file",
            raw.source
        ));
    }
    let sha256 = if let Some(hex_digest) = &raw.token_sha256 {
        let bytes = hex::decode(hex_digest.trim())
            .map_err(|_| "api.tokens: token_sha256 must be 64 hexadecimal characters".to_owned())?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| "api.tokens: token_sha256 must be 64 hexadecimal characters".to_owned())?
    } else {
        let token = read_secret(base, raw.token_env.as_deref(), raw.token_file.as_deref())
            .map_err(|m| format!("api.tokens: {m}"))?
            .unwrap_or_default();
        if token.len() < 16 {
            return Err("api.tokens: a token must be at least 16 characters".into());
        }
        Sha256::digest(token.as_bytes()).into()
    };
    Ok(ApiToken {
        source: raw.source.trim().to_owned(),
        sha256,
    })
}

/// `admin:` takes a token the way `api.tokens` entries do, without a source.
fn resolve_admin(
    file: &Path,
    base: &Path,
    raw: Option<RawAdmin>,
    errors: &mut Vec<Diagnostic>,
) -> Option<[u8; 32]> {
    let raw = raw?;
    let as_token = RawToken {
        source: "admin".into(),
        token_sha256: raw.token_sha256,
        token_env: raw.token_env,
        token_file: raw.token_file,
    };
    match resolve_token(base, &as_token) {
        Ok(t) => Some(t.sha256),
        Err(m) => {
            errors.push(Diagnostic::new(
                file,
                1,
                1,
                m.replace("api.tokens: source `admin`", "admin")
                    .replace("api.tokens", "admin"),
            ));
            None
        }
    }
}

fn resolve_email(
    file: &Path,
    base: &Path,
    data_dir: &Path,
    raw: Option<RawEmail>,
    errors: &mut Vec<Diagnostic>,
) -> Option<EmailConfig> {
    let raw = raw.unwrap_or_default();
    let from_text = raw
        .from
        .as_ref()
        .map_or("Support <support@example.com>", |s| s.value.as_str());
    let from = match from_text.parse::<lettre::message::Mailbox>() {
        Ok(m) => Some(m),
        Err(_) => {
            let d = match &raw.from {
                Some(s) => Diagnostic::at(
                    file,
                    s,
                    format!(
                        "email.from: `{from_text}` is not a mailbox such as \"Support <support@example.com>\""
                    ),
                ),
                None => Diagnostic::new(file, 1, 1, "email.from is invalid"),
            };
            errors.push(d);
            None
        }
    };
    let transport = match raw.transport.unwrap_or(EmailTransportKind::File) {
        EmailTransportKind::File => EmailTransport::File {
            dir: raw
                .file_dir
                .as_deref()
                .map_or_else(|| data_dir.join("mail"), |d| resolve_path(base, d)),
        },
        EmailTransportKind::Smtp => {
            let Some(url) = raw.smtp_url.as_ref() else {
                errors.push(Diagnostic::new(
                    file,
                    1,
                    1,
                    "email.smtp_url is required when email.transport is smtp",
                ));
                return None;
            };
            if !(url.value.starts_with("smtp://") || url.value.starts_with("smtps://")) {
                errors.push(Diagnostic::at(
                    file,
                    url,
                    "email.smtp_url must start with smtp:// or smtps://",
                ));
            }
            let username = read_secret(
                base,
                raw.username_env.as_deref(),
                raw.username_file.as_deref(),
            );
            let password = read_secret(
                base,
                raw.password_env.as_deref(),
                raw.password_file.as_deref(),
            );
            let credentials = match (username, password) {
                (Ok(Some(username)), Ok(Some(password))) => {
                    Some(Credentials { username, password })
                }
                (Ok(None), Ok(None)) => None,
                (Err(m), _) | (_, Err(m)) => {
                    errors.push(Diagnostic::new(file, 1, 1, format!("email: {m}")));
                    None
                }
                _ => {
                    errors.push(Diagnostic::new(
                        file,
                        1,
                        1,
                        "email: username and password must be given together",
                    ));
                    None
                }
            };
            let tls_roots = match &raw.tls_ca_file {
                None => Vec::new(),
                Some(f) => certificates(&resolve_path(base, &f.value)).unwrap_or_else(|m| {
                    errors.push(Diagnostic::at(file, f, format!("email.tls_ca_file: {m}")));
                    Vec::new()
                }),
            };
            EmailTransport::Smtp {
                url: url.value.clone(),
                credentials,
                tls_roots,
                pool_size: raw.pool_size.unwrap_or(8).clamp(1, 64),
                timeout: spanned_duration(
                    file,
                    "email.timeout",
                    raw.timeout.as_ref(),
                    Duration::from_secs(30),
                    errors,
                ),
            }
        }
    };
    let quiet_hours = resolve_quiet(
        file,
        "email.quiet_hours",
        raw.quiet_hours.as_ref(),
        None,
        errors,
    );
    let min_gap = spanned_duration(
        file,
        "email.min_gap",
        raw.min_gap.as_ref(),
        Duration::ZERO,
        errors,
    );
    let reply_to = raw.reply_to.as_ref().and_then(|r| {
        let sample = r.value.trim().replace("{case_id}", "C-1042");
        if sample.parse::<lettre::Address>().is_ok() {
            Some(r.value.trim().to_owned())
        } else {
            errors.push(Diagnostic::at(
                file,
                r,
                format!(
                    "email.reply_to: `{}` is not an email address (with `{{case_id}}` as C-1042)",
                    r.value
                ),
            ));
            None
        }
    });
    let bounce_address = raw.bounce_address.as_ref().and_then(|b| {
        match b.value.trim().parse::<lettre::Address>() {
            Ok(a) if a.user().len() <= 64 - 53 => Some(a),
            Ok(_) => {
                errors.push(Diagnostic::at(
                    file,
                    b,
                    "email.bounce_address: the part before @ must be at most 11 characters (a 53-character +TOKEN follows it)",
                ));
                None
            }
            Err(e) => {
                errors.push(Diagnostic::at(
                    file,
                    b,
                    format!("email.bounce_address: `{}` is not an email address: {e}", b.value),
                ));
                None
            }
        }
    });
    Some(EmailConfig {
        transport,
        from: from?,
        quiet_hours,
        min_gap,
        reply_to,
        bounce_address,
    })
}

fn resolve_quiet(
    file: &Path,
    key: &str,
    raw: Option<&Spanned<RawQuiet>>,
    default: Option<QuietHours>,
    errors: &mut Vec<Diagnostic>,
) -> Option<QuietHours> {
    let raw = raw?;
    match &raw.value {
        RawQuiet::Off(s) if s == "off" || s == "none" => None,
        RawQuiet::Flag(false) => None,
        RawQuiet::Flag(true) => {
            errors.push(Diagnostic::at(
                file,
                raw,
                format!("{key}: give {{ start: \"21:00\", end: \"08:00\" }} or `off`"),
            ));
            default
        }
        RawQuiet::Off(s) => {
            errors.push(Diagnostic::at(
                file,
                raw,
                format!("{key}: `{s}` is neither `off` nor {{ start: \"21:00\", end: \"08:00\" }}"),
            ));
            default
        }
        RawQuiet::Window { start, end } => match QuietHours::parse(start, end) {
            Ok(q) => Some(q),
            Err(m) => {
                errors.push(Diagnostic::at(file, raw, format!("{key}: {m}")));
                default
            }
        },
    }
}

fn default_sms_quiet() -> Option<QuietHours> {
    QuietHours::parse("21:00", "08:00").ok()
}

fn resolve_sms(
    file: &Path,
    base: &Path,
    data_dir: &Path,
    raw: RawSms,
    errors: &mut Vec<Diagnostic>,
) -> SmsConfig {
    let quiet_hours = match &raw.quiet_hours {
        None => default_sms_quiet(),
        q => resolve_quiet(
            file,
            "sms.quiet_hours",
            q.as_ref(),
            default_sms_quiet(),
            errors,
        ),
    };
    let min_gap = spanned_duration(
        file,
        "sms.min_gap",
        raw.min_gap.as_ref(),
        Duration::from_secs(60),
        errors,
    );
    let timeout = spanned_duration(
        file,
        "sms.timeout",
        raw.timeout.as_ref(),
        Duration::from_secs(15),
        errors,
    );
    let token = read_secret(
        base,
        raw.auth_token_env.as_deref(),
        raw.auth_token_file.as_deref(),
    );
    let token = match token {
        Ok(t) => t,
        Err(m) => {
            errors.push(Diagnostic::new(file, 1, 1, format!("sms: {m}")));
            None
        }
    };
    let sid = raw.account_sid.as_ref().map(|s| {
        if !crate::domain::is_twilio_sid(&s.value, "AC") {
            errors.push(Diagnostic::at(
                file,
                s,
                "sms.account_sid: expected AC followed by 32 hexadecimal digits",
            ));
        }
        s.value.clone()
    });
    let twilio = match (sid, token) {
        (Some(account_sid), Some(auth_token)) => Some(TwilioAuth {
            account_sid,
            auth_token,
        }),
        _ => None,
    };
    let transport = match raw.transport.unwrap_or(SmsTransportKind::File) {
        SmsTransportKind::File => SmsTransport::File {
            dir: raw
                .file_dir
                .as_deref()
                .map_or_else(|| data_dir.join("sms"), |d| resolve_path(base, d)),
        },
        SmsTransportKind::Twilio => {
            if twilio.is_none() {
                errors.push(Diagnostic::new(
                    file,
                    1,
                    1,
                    "sms: transport twilio needs account_sid and auth_token_env or auth_token_file",
                ));
            }
            let sender = match (&raw.from, &raw.messaging_service_sid) {
                (Some(f), None) => {
                    let v = &f.value;
                    let shaped = v.len() > 2
                        && v.len() <= 16
                        && v.starts_with('+')
                        && v[1..].bytes().all(|b| b.is_ascii_digit());
                    if !shaped {
                        errors.push(Diagnostic::at(
                            file,
                            f,
                            "sms.from: expected a phone number in E.164 form such as +15550001111",
                        ));
                    }
                    SmsSender::From(f.value.clone())
                }
                (None, Some(m)) => SmsSender::MessagingService(m.value.clone()),
                _ => {
                    errors.push(Diagnostic::new(
                        file,
                        1,
                        1,
                        "sms: transport twilio needs exactly one of from and messaging_service_sid",
                    ));
                    SmsSender::From(String::new())
                }
            };
            let base_url = raw
                .base_url
                .as_ref()
                .map_or("https://api.twilio.com", |s| s.value.as_str());
            if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
                && let Some(s) = &raw.base_url
            {
                errors.push(Diagnostic::at(
                    file,
                    s,
                    "sms.base_url must start with https:// or http://",
                ));
            }
            SmsTransport::Twilio {
                base_url: base_url.trim_end_matches('/').to_owned(),
                sender,
                timeout,
            }
        }
    };
    SmsConfig {
        transport,
        twilio,
        max_segments: raw.max_segments.unwrap_or(2).clamp(1, 10) as usize,
        quiet_hours,
        min_gap,
        help_text: raw.help_text.unwrap_or_else(|| {
            "Updates on your support case. Reply STOP to opt out, START to opt back in.".into()
        }),
    }
}

fn resolve_delivery(
    file: &Path,
    raw: Option<RawDelivery>,
    errors: &mut Vec<Diagnostic>,
) -> DeliveryPolicy {
    let (max_attempts, backoff, concurrency) = raw.map_or((None, None, None), |d| {
        (d.max_attempts, d.backoff, d.concurrency)
    });
    let (initial, max) = backoff.map_or((None, None), |b| (b.initial, b.max));
    let backoff_initial = spanned_duration(
        file,
        "delivery.backoff.initial",
        initial.as_ref(),
        Duration::from_secs(30),
        errors,
    );
    let backoff_max = spanned_duration(
        file,
        "delivery.backoff.max",
        max.as_ref(),
        Duration::from_secs(3600),
        errors,
    );
    DeliveryPolicy {
        max_attempts: max_attempts.unwrap_or(10).max(1),
        backoff_initial,
        backoff_max: backoff_max.max(backoff_initial),
        concurrency: concurrency.unwrap_or(8).clamp(1, 256) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_position() {
        let err = Config::parse(Path::new("t.yaml"), "listen: 127.0.0.1:1\nlisen: x\n")
            .expect_err("unknown key");
        let line = err.to_string();
        assert!(line.starts_with("t.yaml:2:"), "{line}");
        assert!(line.contains("lisen"), "{line}");
    }

    #[test]
    fn bad_durations_name_the_key() {
        let err = Config::parse(
            Path::new("t.yaml"),
            "delivery:\n  backoff: { initial: soon }\n",
        )
        .expect_err("bad duration");
        let line = err.to_string();
        assert!(line.starts_with("t.yaml:2:"), "{line}");
        assert!(line.contains("delivery.backoff.initial"), "{line}");
    }

    #[test]
    fn a_diagnostic_is_one_line_whatever_the_value_holds() {
        let err = Config::parse(Path::new("t.yaml"), "listen: \"127.0.0.1\\n:80\"\n")
            .expect_err("bad listen");
        let line = err.to_string();
        assert_eq!(
            line,
            "t.yaml:1:9: listen: `127.0.0.1\\n:80` is not an address such as 127.0.0.1:8080"
        );
    }

    #[test]
    fn an_unreadable_tls_ca_file_is_named_with_its_position() {
        let err = Config::parse(
            Path::new("/nonexistent/t.yaml"),
            "email:\n  transport: smtp\n  smtp_url: smtp://relay.example.com?tls=required\n  tls_ca_file: ca.pem\n",
        )
        .expect_err("missing CA file");
        let line = err.to_string();
        assert!(line.starts_with("/nonexistent/t.yaml:4:16:"), "{line}");
        assert!(
            line.contains("email.tls_ca_file: cannot read /nonexistent/ca.pem"),
            "{line}"
        );
    }

    #[test]
    fn a_tls_ca_file_without_certificates_is_named_with_its_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").expect("write");
        let err = Config::parse(
            &dir.path().join("t.yaml"),
            "email:\n  transport: smtp\n  smtp_url: smtp://relay.example.com?tls=required\n  tls_ca_file: ca.pem\n",
        )
        .expect_err("no certificate");
        let line = err.to_string();
        assert!(
            line.contains("t.yaml:4:16: email.tls_ca_file: no certificate in"),
            "{line}"
        );
    }

    #[test]
    fn reply_to_must_make_an_address() {
        let cfg = Config::parse(
            Path::new("t.yaml"),
            "email:\n  reply_to: \"support+{case_id}@example.com\"\n",
        )
        .expect("valid");
        assert_eq!(
            cfg.email.reply_to.as_deref(),
            Some("support+{case_id}@example.com")
        );
        let err = Config::parse(
            Path::new("t.yaml"),
            "email:\n  reply_to: support at example\n",
        )
        .expect_err("not an address");
        assert!(
            err.to_string().contains(
                "t.yaml:2:13: email.reply_to: `support at example` is not an email address"
            ),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_file_transports() {
        let cfg = Config::parse(Path::new("/etc/tidings/tidings.yaml"), "{}").expect("valid");
        assert!(matches!(cfg.email.transport, EmailTransport::File { .. }));
        assert_eq!(cfg.data_dir, Path::new("/etc/tidings/./data"));
    }
}
