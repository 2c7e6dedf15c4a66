//! `inbound:` — the ticket systems whose own webhooks tidings takes at
//! `POST /v1/inbound/{system}/{source}`: which source each speaks for, the
//! secret its signatures are checked with, the defaults for what it leaves
//! out, and how its statuses read as ours.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chrono_tz::Tz;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{ApiToken, read_secret};
use crate::domain::{Defaults, Diagnostic, Locale, Status, normalise};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    system: Spanned<String>,
    source: Spanned<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    default_region: Option<Spanned<String>>,
    default_timezone: Option<Spanned<String>>,
    default_locale: Option<Spanned<String>>,
    #[serde(default)]
    statuses: BTreeMap<String, Spanned<String>>,
}

/// A ticket system tidings knows the webhooks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundSystem {
    Zendesk,
    Zammad,
    Freshdesk,
    JiraSm,
}

impl InboundSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zendesk => "zendesk",
            Self::Zammad => "zammad",
            Self::Freshdesk => "freshdesk",
            Self::JiraSm => "jira-sm",
        }
    }
}

/// One `inbound:` entry, validated.
#[derive(Clone)]
pub struct InboundEntry {
    pub system: InboundSystem,
    pub source: String,
    /// The webhook's signing secret.
    pub secret: Vec<u8>,
    /// ISO 3166 region for phone numbers in national form.
    pub default_region: Option<String>,
    /// The time zone and locale of a customer the system says nothing of.
    pub defaults: Defaults,
    /// The system's status names (lower case) read as ours, over the
    /// system's defaults.
    pub statuses: BTreeMap<String, Status>,
}

impl fmt::Debug for InboundEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundEntry")
            .field("system", &self.system)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

pub(super) fn resolve(
    file: &Path,
    base: &Path,
    raw: Vec<Spanned<RawInbound>>,
    tokens: &[ApiToken],
    defaults: &Defaults,
    errors: &mut Vec<Diagnostic>,
) -> Vec<InboundEntry> {
    let mut out: Vec<InboundEntry> = Vec::new();
    for entry in raw {
        let at = &entry;
        let raw = &entry.value;
        let system = match raw.system.value.trim() {
            "zendesk" => Some(InboundSystem::Zendesk),
            "zammad" => Some(InboundSystem::Zammad),
            "freshdesk" => Some(InboundSystem::Freshdesk),
            "jira-sm" => Some(InboundSystem::JiraSm),
            s => {
                errors.push(Diagnostic::at(
                    file,
                    &raw.system,
                    format!("inbound.system: `{s}` is none of zendesk, zammad, freshdesk, jira-sm"),
                ));
                None
            }
        };
        let source = raw.source.value.trim().to_owned();
        if !tokens.iter().any(|t| t.source == source) {
            errors.push(Diagnostic::at(
                file,
                &raw.source,
                format!("inbound.source: `{source}` has no entry in api.tokens"),
            ));
        }
        if let Some(system) = system
            && out.iter().any(|e| e.system == system && e.source == source)
        {
            errors.push(Diagnostic::at(
                file,
                at,
                format!("inbound: {}/{source} is configured twice", system.as_str()),
            ));
        }
        let secret = match read_secret(base, raw.secret_env.as_deref(), raw.secret_file.as_deref())
        {
            Ok(Some(s)) if s.len() >= 16 => s.into_bytes(),
            Ok(Some(_)) => {
                errors.push(Diagnostic::at(
                    file,
                    at,
                    "inbound: the secret must be at least 16 characters",
                ));
                Vec::new()
            }
            Ok(None) => {
                errors.push(Diagnostic::at(
                    file,
                    at,
                    "inbound: needs secret_env or secret_file",
                ));
                Vec::new()
            }
            Err(m) => {
                errors.push(Diagnostic::at(file, at, format!("inbound: {m}")));
                Vec::new()
            }
        };
        let default_region = raw.default_region.as_ref().and_then(|r| {
            let code = r.value.trim().to_ascii_uppercase();
            if code.parse::<phonenumber::country::Id>().is_ok() {
                Some(code)
            } else {
                errors.push(Diagnostic::at(
                    file,
                    r,
                    format!(
                        "inbound.default_region: `{}` is not an ISO 3166 region such as US",
                        r.value
                    ),
                ));
                None
            }
        });
        let timezone: Tz = raw
            .default_timezone
            .as_ref()
            .map_or(defaults.timezone, |t| {
                normalise::time_zone(&t.value).unwrap_or_else(|| {
                    errors.push(Diagnostic::at(
                        file,
                        t,
                        format!(
                            "inbound.default_timezone: `{}` is not an IANA or Rails time zone",
                            t.value
                        ),
                    ));
                    defaults.timezone
                })
            });
        let locale: Locale = raw.default_locale.as_ref().map_or_else(
            || defaults.locale.clone(),
            |l| {
                normalise::locale(&l.value).unwrap_or_else(|| {
                    errors.push(Diagnostic::at(
                        file,
                        l,
                        format!("inbound.default_locale: `{}` is not a language", l.value),
                    ));
                    defaults.locale.clone()
                })
            },
        );
        let mut statuses = BTreeMap::new();
        for (theirs, ours) in &raw.statuses {
            match serde_json::from_value::<Status>(serde_json::Value::String(ours.value.clone())) {
                Ok(s) => {
                    statuses.insert(theirs.trim().to_lowercase(), s);
                }
                Err(_) => errors.push(Diagnostic::at(
                    file,
                    ours,
                    format!(
                        "inbound.statuses.{theirs}: `{}` is none of open, pending_customer, on_hold, resolved, closed",
                        ours.value
                    ),
                )),
            }
        }
        if let Some(system) = system {
            out.push(InboundEntry {
                system,
                source,
                secret,
                default_region,
                defaults: Defaults { timezone, locale },
                statuses,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const BASE: &str = "api:\n  tokens:\n    - source: helpdesk\n      token_sha256: 0000000000000000000000000000000000000000000000000000000000000000\n";

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.yaml"), &format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_entry_reads_its_secret_defaults_and_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("zd.secret"), "0123456789abcdef0123\n").expect("write");
        let cfg = Config::parse(
            &dir.path().join("t.yaml"),
            &format!(
                "{BASE}inbound:\n  - system: zendesk\n    source: helpdesk\n    secret_file: zd.secret\n    default_region: us\n    default_timezone: Eastern Time (US & Canada)\n    statuses: {{ hold: pending_customer }}\n"
            ),
        )
        .expect("valid");
        let e = &cfg.inbound[0];
        assert_eq!(e.secret, b"0123456789abcdef0123");
        assert_eq!(e.default_region.as_deref(), Some("US"));
        assert_eq!(e.defaults.timezone, chrono_tz::America::New_York);
        assert_eq!(
            e.statuses.get("hold"),
            Some(&crate::domain::Status::PendingCustomer)
        );
    }

    #[test]
    fn freshdesk_and_jira_entries_are_accepted_with_numbered_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fd.token"), "freshdesk-token-0123456789").expect("write");
        std::fs::write(dir.path().join("jira.secret"), "jira-secret-0123456789").expect("write");
        let cfg = Config::parse(
            &dir.path().join("t.yaml"),
            &format!(
                "{BASE}inbound:\n  - system: freshdesk\n    source: helpdesk\n    secret_file: fd.token\n    statuses: {{ \"6\": on_hold, 7: resolved }}\n  - system: jira-sm\n    source: helpdesk\n    secret_file: jira.secret\n    statuses: {{ With Legal: on_hold }}\n"
            ),
        )
        .expect("valid");
        use crate::config::InboundSystem;
        use crate::domain::Status;
        assert_eq!(cfg.inbound[0].system, InboundSystem::Freshdesk);
        assert_eq!(cfg.inbound[0].statuses.get("6"), Some(&Status::OnHold));
        assert_eq!(cfg.inbound[0].statuses.get("7"), Some(&Status::Resolved));
        assert_eq!(cfg.inbound[1].system, InboundSystem::JiraSm);
        assert_eq!(
            cfg.inbound[1].statuses.get("with legal"),
            Some(&Status::OnHold)
        );
    }

    #[test]
    fn mistakes_are_named_with_their_position() {
        let err = parse("inbound:\n  - system: freshservice\n    source: helpdesk\n    secret_env: NOPE_NOT_SET_ANYWHERE\n")
            .expect_err("unknown system");
        assert!(
            err.contains("t.yaml:6:13: inbound.system: `freshservice` is none of zendesk, zammad, freshdesk, jira-sm"),
            "{err}"
        );
        let err = parse("inbound:\n  - system: zammad\n    source: billing\n    secret_env: X\n    colour: red\n")
            .expect_err("unknown key");
        assert!(err.contains("colour"), "{err}");
        let err = parse("inbound:\n  - system: zammad\n    source: billing\n    secret_env: NOPE_NOT_SET_ANYWHERE\n    statuses: { new: fresh }\n")
            .expect_err("bad values");
        assert!(
            err.contains("`billing` has no entry in api.tokens"),
            "{err}"
        );
        assert!(
            err.contains("environment variable NOPE_NOT_SET_ANYWHERE is not set"),
            "{err}"
        );
        assert!(err.contains("inbound.statuses.new: `fresh`"), "{err}");
    }
}
