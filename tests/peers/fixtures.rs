//! Test data in one place: the rule sets and cases in `tests/fixtures/`,
//! the tokens, and the daemon's config file, written by `Setup` for the
//! spawned binary and the in-process daemon alike.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `helpdesk` source's API token (the README's demo token).
pub const TOKEN: &str = "demo-token-change-me";
/// The `billing` source's token, for daemons `Setup::token` gives a second source.
pub const OTHER_TOKEN: &str = "test-token-billing-00002";
/// The admin token, for daemons started with `Setup::admin`.
pub const ADMIN_TOKEN: &str = "test-admin-token-0001";

// What `cases/maria.json` holds, for assertions on what arrived.
pub const SUBJECT: &str = "Replacement router has not shipped";
pub const FIRST_NAME: &str = "Maria";
pub const EMAIL: &str = "maria.hernandez@example.com";
pub const PHONE: &str = "+12125550143";

/// A file in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn fixture(path: &str) -> String {
    let file = repo("tests/fixtures").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `tests/fixtures/rules/{name}.yaml`, each `${var:-default}` in it filled
/// from `vars`, or with its default. Naming a variable the file does not
/// have is a mistake, and panics.
pub fn rules(name: &str, vars: &[(&str, &str)]) -> String {
    let text = fixture(&format!("rules/{name}.yaml"));
    let mut out = String::with_capacity(text.len());
    let mut used = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .unwrap_or_else(|| panic!("rules/{name}.yaml: unclosed ${{"));
        let inner = &rest[at + 2..at + end];
        let (var, default) = inner.split_once(":-").unwrap_or((inner, ""));
        let value = vars.iter().find(|(k, _)| *k == var).map(|(_, v)| *v);
        out.push_str(value.unwrap_or(default));
        used.push(var.to_owned());
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    for (k, _) in vars {
        assert!(
            used.iter().any(|u| u == k),
            "rules/{name}.yaml has no ${{{k}}}"
        );
    }
    out
}

/// `tests/fixtures/cases/{name}.json`.
pub fn case_named(name: &str) -> Value {
    let text = fixture(&format!("cases/{name}.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cases/{name}.json: {e}"))
}

/// The sample case (Maria Hernandez in New York, `cases/maria.json`),
/// reachable on `channels` only.
pub fn case_on(channels: &[&str]) -> Value {
    let mut case = case_named("maria");
    case["customer"]["channels"] = json!(channels);
    case
}

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A daemon's config: rules, email transport, delivery, tokens and
/// whatever else a test appends. `write` puts it in a folder; the
/// harness's `Setup::start` runs the binary on it, `TestApp` runs the
/// daemon in process.
#[derive(Debug, Clone)]
pub struct Setup {
    rules: String,
    email: Vec<String>,
    delivery: (u32, String, String),
    tokens: Vec<(String, String)>,
    admin: bool,
    templates: PathBuf,
    data_dir: Option<PathBuf>,
    extra: String,
    store: TestStore,
    /// `store.postgres.lease`, when a test sets it (`Setup::lease`).
    lease: Option<String>,
    /// Environment for the daemon process.
    pub env: Vec<(String, String)>,
}

/// The store a test's daemon runs on.
#[derive(Debug, Clone)]
pub enum TestStore {
    /// sled in `data_dir` (the default).
    Sled,
    /// A database of its own on the shared cluster; the daemon reads its
    /// URL from `url_env`, a variable named after the database so that
    /// tests running side by side in one process never share one.
    Postgres { url_env: String, url: String },
}

impl TestStore {
    /// `TIDINGS_TEST_STORE`: `sled` (or unset) or `postgres`, which gives
    /// the test a fresh database on the shared cluster. The same test
    /// files run on either backend.
    pub fn from_env() -> Self {
        match std::env::var("TIDINGS_TEST_STORE").as_deref() {
            Err(_) | Ok("" | "sled") => Self::Sled,
            Ok("postgres") => {
                let cluster = super::postgres()
                    .expect("TIDINGS_TEST_STORE=postgres needs PostgreSQL 15 installed");
                Self::on(&cluster.database())
            }
            Ok(other) => panic!("TIDINGS_TEST_STORE={other}: expected sled or postgres"),
        }
    }

    /// The daemon on `db`.
    pub fn on(db: &super::PgDatabase) -> Self {
        Self::Postgres {
            url_env: format!("TIDINGS_TEST_DATABASE_URL_{}", db.name.to_uppercase()),
            url: db.url.clone(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// Whether this run's daemons use PostgreSQL (`TIDINGS_TEST_STORE`).
    pub fn postgres_run() -> bool {
        std::env::var("TIDINGS_TEST_STORE").as_deref() == Ok("postgres")
    }

    /// For a test about sled itself: `true` when the run is on PostgreSQL,
    /// after printing why the test runs on sled only. Such a test returns.
    pub fn sled_only(why: &str) -> bool {
        let pg = Self::postgres_run();
        if pg {
            super::skip(&format!("sled only: {why}"));
        }
        pg
    }
}

impl Setup {
    /// `rules` (the text of a rules file), the file email transport
    /// (`.eml` files in `data/mail`), `TOKEN` for `helpdesk`, the shipped
    /// templates, up to 10 attempts 200 ms to 2 s apart.
    /// The store is the one `TIDINGS_TEST_STORE` chooses (`TestStore::from_env`).
    pub fn new(rules: impl Into<String>) -> Self {
        Self::on_store(rules, TestStore::from_env())
    }

    /// As `new`, on `store`.
    pub fn on_store(rules: impl Into<String>, store: TestStore) -> Self {
        Self {
            rules: rules.into(),
            email: vec!["transport: file".into()],
            delivery: (10, "200ms".into(), "2s".into()),
            tokens: vec![("helpdesk".into(), TOKEN.into())],
            admin: false,
            templates: repo("templates"),
            data_dir: None,
            extra: String::new(),
            store: TestStore::Sled,
            lease: None,
            env: Vec::new(),
        }
        .store(store)
    }

    /// The daemon on `store` rather than the one `TIDINGS_TEST_STORE` chose.
    pub fn store(mut self, store: TestStore) -> Self {
        if let TestStore::Postgres { url_env, .. } = &self.store {
            self.env.retain(|(k, _)| k != url_env);
        }
        if let TestStore::Postgres { url_env, url } = &store {
            self.env.push((url_env.clone(), url.clone()));
        }
        self.store = store;
        self
    }

    /// sled, whatever `TIDINGS_TEST_STORE` says: for a test about sled's
    /// files.
    pub fn sled(self) -> Self {
        self.store(TestStore::Sled)
    }

    /// `env` as the command line helper `tidings` takes it.
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// The store this daemon runs on.
    pub fn test_store(&self) -> &TestStore {
        &self.store
    }

    /// Email over SMTP to `127.0.0.1:port`.
    pub fn smtp(self, port: u16) -> Self {
        self.smtp_url(&format!("smtp://127.0.0.1:{port}"))
    }

    /// Email over SMTP to `url`.
    pub fn smtp_url(mut self, url: &str) -> Self {
        self.email = vec!["transport: smtp".into(), format!("smtp_url: {url}")];
        self
    }

    /// One more `key: value` line in the `email:` section.
    pub fn email(mut self, line: &str) -> Self {
        self.email.push(line.to_owned());
        self
    }

    pub fn delivery(mut self, max_attempts: u32, initial: &str, max: &str) -> Self {
        self.delivery = (max_attempts, initial.into(), max.into());
        self
    }

    /// Another source and its token.
    pub fn token(mut self, source: &str, token: &str) -> Self {
        self.tokens.push((source.into(), token.into()));
        self
    }

    /// Opens the admin endpoints to `ADMIN_TOKEN`.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    pub fn templates(mut self, dir: &Path) -> Self {
        self.templates = dir.to_owned();
        self
    }

    /// The store somewhere else than `data` beside the config.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Top-level YAML appended as it is (`sms:`, `digest:`, `shutdown:`, …).
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self
    }

    /// How long a claimed outbox entry or due case stays the replica's
    /// that took it (`store.postgres.lease`, a duration); PostgreSQL only.
    pub fn lease(mut self, lease: &str) -> Self {
        self.lease = Some(lease.to_owned());
        self
    }

    /// An environment variable for the daemon process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Writes `rules/rules.yaml` and `tidings.yaml` (listening on `port`)
    /// into `dir`; returns the config's path.
    pub fn write(&self, dir: &Path, port: u16) -> PathBuf {
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).expect("rules dir");
        std::fs::write(rules.join("rules.yaml"), &self.rules).expect("write rules");
        let data = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let mut yaml = format!(
            "listen: 127.0.0.1:{port}
data_dir: {data:?}
rules: {rules:?}
templates: {templates:?}
default_timezone: UTC
default_locale: en
public_url: http://127.0.0.1:{port}
company:
  name: Example Support
api:
  tokens:
",
            templates = self.templates,
        );
        for (source, token) in &self.tokens {
            yaml += &format!(
                "    - source: {source}\n      token_sha256: {}\n",
                sha(token)
            );
        }
        if self.admin {
            yaml += &format!("admin:\n  token_sha256: {}\n", sha(ADMIN_TOKEN));
        }
        yaml += "email:\n  from: \"Example Support <support@example.com>\"\n";
        for line in &self.email {
            yaml += &format!("  {line}\n");
        }
        let (attempts, initial, max) = &self.delivery;
        yaml += &format!(
            "delivery:\n  max_attempts: {attempts}\n  backoff: {{ initial: {initial}, max: {max} }}\n"
        );
        if let TestStore::Postgres { url_env, .. } = &self.store {
            yaml += &format!("store:\n  postgres:\n    url_env: {url_env}\n    pool_size: 4\n");
            if let Some(lease) = &self.lease {
                yaml += &format!("    lease: {lease}\n");
            }
        }
        yaml += &self.extra;
        let path = dir.join("tidings.yaml");
        std::fs::write(&path, yaml).expect("write config");
        path
    }
}
