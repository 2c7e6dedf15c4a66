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
    /// Environment for the daemon process.
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// `rules` (the text of a rules file), the file email transport
    /// (`.eml` files in `data/mail`), `TOKEN` for `helpdesk`, the shipped
    /// templates, up to 10 attempts 200 ms to 2 s apart.
    pub fn new(rules: impl Into<String>) -> Self {
        Self {
            rules: rules.into(),
            email: vec!["transport: file".into()],
            delivery: (10, "200ms".into(), "2s".into()),
            tokens: vec![("helpdesk".into(), TOKEN.into())],
            admin: false,
            templates: repo("templates"),
            data_dir: None,
            extra: String::new(),
            env: Vec::new(),
        }
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
        yaml += &self.extra;
        let path = dir.join("tidings.yaml");
        std::fs::write(&path, yaml).expect("write config");
        path
    }
}
