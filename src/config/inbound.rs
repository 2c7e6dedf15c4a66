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
use crate::domain::{Channel, Defaults, Diagnostic, Locale, Priority, Status, normalise};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    system: Spanned<String>,
    source: Spanned<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    /// The source's mapping file, relative to the config file.
    mapping: Option<Spanned<String>>,
}

/// A source's mapping file: how this help desk's values read as ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    default_region: Option<Spanned<String>>,
    default_timezone: Option<Spanned<String>>,
    default_locale: Option<Spanned<String>>,
    channels: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    statuses: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    priorities: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<String, Spanned<String>>,
    public_comments: Option<Spanned<String>>,
}

/// At most this many `fields:` (a case holds at most 100).
const MAX_FIELDS: usize = 100;

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
    /// The rest comes from the entry's mapping file, when it has one.
    pub mapping: Mapping,
}

/// A source's mapping, validated: what its help desk leaves out and how its
/// values read as ours.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// ISO 3166 region for phone numbers in national form.
    pub default_region: Option<String>,
    /// The time zone and locale of a customer the system says nothing of.
    pub defaults: Defaults,
    /// The channels this source's cases use; `None` leaves it to the
    /// contact details.
    pub channels: Option<Vec<Channel>>,
    /// The system's status names (lower case) read as ours, over the
    /// system's defaults.
    pub statuses: BTreeMap<String, Status>,
    /// The system's priority names (lower case) read as ours, over the
    /// system's defaults.
    pub priorities: BTreeMap<String, Priority>,
    /// `case.fields` names and the JSON pointer into the webhook body each
    /// is read from.
    pub fields: BTreeMap<String, String>,
    /// What a public agent comment is to the customer.
    pub public_comments: PublicComments,
}

/// What a public agent comment is: news tidings passes on (`note`, when
/// the help desk does not mail its comments itself), or a reply the help
/// desk has already sent the customer (`agent_reply`: nothing is sent and
/// the update clock starts again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublicComments {
    #[default]
    Note,
    AgentReply,
}

impl Mapping {
    /// No mapping file: the system's defaults and the daemon's zone and
    /// locale.
    pub fn plain(defaults: Defaults) -> Self {
        Self {
            default_region: None,
            defaults,
            channels: None,
            statuses: BTreeMap::new(),
            priorities: BTreeMap::new(),
            fields: BTreeMap::new(),
            public_comments: PublicComments::Note,
        }
    }
}

impl fmt::Debug for InboundEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundEntry")
            .field("system", &self.system)
            .field("source", &self.source)
            .field("mapping", &self.mapping)
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
        let mapping = match &raw.mapping {
            None => Mapping::plain(defaults.clone()),
            Some(m) => {
                let path = if Path::new(&m.value).is_absolute() {
                    Path::new(&m.value).to_owned()
                } else {
                    base.join(&m.value)
                };
                match std::fs::read_to_string(&path) {
                    Ok(text) => read_mapping(&path, &text, defaults, errors),
                    Err(e) => {
                        errors.push(Diagnostic::at(
                            file,
                            m,
                            format!("inbound.mapping: cannot read {}: {e}", path.display()),
                        ));
                        Mapping::plain(defaults.clone())
                    }
                }
            }
        };
        if let Some(system) = system {
            out.push(InboundEntry {
                system,
                source,
                secret,
                mapping,
            });
        }
    }
    out
}

/// Reads one mapping file; each mistake is named at its `file:line:column`.
pub(super) fn read_mapping(
    file: &Path,
    text: &str,
    defaults: &Defaults,
    errors: &mut Vec<Diagnostic>,
) -> Mapping {
    let raw: RawMapping = if text.trim().is_empty() {
        RawMapping::default()
    } else {
        match serde_saphyr::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(Diagnostic::from_yaml(file, &e));
                return Mapping::plain(defaults.clone());
            }
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
                    "default_region: `{}` is not an ISO 3166 region such as US",
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
                        "default_timezone: `{}` is not an IANA or Rails time zone",
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
                    format!("default_locale: `{}` is not a language", l.value),
                ));
                defaults.locale.clone()
            })
        },
    );
    let channels = raw.channels.as_ref().map(|list| {
        if list.value.is_empty() {
            errors.push(Diagnostic::at(
                file,
                list,
                "channels: name at least one of email, sms, whatsapp",
            ));
        }
        list.value
            .iter()
            .filter_map(|c| {
                word::<Channel>(&c.value).or_else(|| {
                    errors.push(Diagnostic::at(
                        file,
                        c,
                        format!("channels: `{}` is none of email, sms, whatsapp", c.value),
                    ));
                    None
                })
            })
            .collect::<Vec<_>>()
    });
    let statuses = read_words(
        file,
        "statuses",
        &raw.statuses,
        errors,
        "open, pending_customer, on_hold, resolved, closed",
    );
    let priorities = read_words(
        file,
        "priorities",
        &raw.priorities,
        errors,
        "low, normal, high, urgent",
    );
    if raw.fields.len() > MAX_FIELDS {
        errors.push(Diagnostic::new(
            file,
            1,
            1,
            format!("fields: at most {MAX_FIELDS} entries"),
        ));
    }
    let mut fields = BTreeMap::new();
    for (name, pointer) in &raw.fields {
        let p = pointer.value.trim();
        if name.trim().is_empty() {
            errors.push(Diagnostic::at(
                file,
                pointer,
                "fields: a field needs a name",
            ));
        } else if !p.starts_with('/') {
            errors.push(Diagnostic::at(
                file,
                pointer,
                format!(
                    "fields.{name}: `{p}` is not a JSON pointer into the webhook body such as /ticket/custom_fields/product"
                ),
            ));
        } else {
            fields.insert(name.trim().to_owned(), p.to_owned());
        }
    }
    let public_comments = match raw.public_comments.as_ref() {
        None => PublicComments::Note,
        Some(w) => match w.value.trim() {
            "note" => PublicComments::Note,
            "agent_reply" => PublicComments::AgentReply,
            other => {
                errors.push(Diagnostic::at(
                    file,
                    w,
                    format!("public_comments: `{other}` is neither note nor agent_reply"),
                ));
                PublicComments::Note
            }
        },
    };
    Mapping {
        default_region,
        defaults: Defaults { timezone, locale },
        channels,
        statuses,
        priorities,
        fields,
        public_comments,
    }
}

/// One of our words (`on_hold`, `urgent`, `sms`) as its type.
fn word<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_owned())).ok()
}

/// A map of the system's names (any case) to our words.
fn read_words<T: serde::de::DeserializeOwned>(
    file: &Path,
    key: &str,
    raw: &BTreeMap<String, Spanned<String>>,
    errors: &mut Vec<Diagnostic>,
    ours: &str,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    for (theirs, value) in raw {
        match word::<T>(&value.value) {
            Some(v) => {
                out.insert(theirs.trim().to_lowercase(), v);
            }
            None => errors.push(Diagnostic::at(
                file,
                value,
                format!("{key}.{theirs}: `{}` is none of {ours}", value.value),
            )),
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
    fn an_entry_reads_its_secret_and_its_mapping_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("zd.secret"), "0123456789abcdef0123\n").expect("write");
        std::fs::create_dir(dir.path().join("inbound")).expect("mkdir");
        std::fs::write(
            dir.path().join("inbound/zendesk.yaml"),
            "default_region: us\ndefault_timezone: Eastern Time (US & Canada)\nchannels: [sms, email]\nstatuses: { Hold: pending_customer }\npriorities: { P1: urgent }\nfields:\n  product: /ticket/product\n",
        )
        .expect("write");
        let cfg = Config::parse(
            &dir.path().join("t.yaml"),
            &format!(
                "{BASE}inbound:\n  - system: zendesk\n    source: helpdesk\n    secret_file: zd.secret\n    mapping: inbound/zendesk.yaml\n"
            ),
        )
        .expect("valid");
        let e = &cfg.inbound[0];
        assert_eq!(e.secret, b"0123456789abcdef0123");
        let m = &e.mapping;
        assert_eq!(m.default_region.as_deref(), Some("US"));
        assert_eq!(m.defaults.timezone, chrono_tz::America::New_York);
        assert_eq!(
            m.statuses.get("hold"),
            Some(&crate::domain::Status::PendingCustomer)
        );
        assert_eq!(
            m.priorities.get("p1"),
            Some(&crate::domain::Priority::Urgent)
        );
        assert_eq!(
            m.fields.get("product").map(String::as_str),
            Some("/ticket/product")
        );
        use crate::domain::Channel;
        assert_eq!(m.channels, Some(vec![Channel::Sms, Channel::Email]));
    }

    #[test]
    fn without_a_mapping_file_the_daemons_defaults_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("fd.token"), "freshdesk-token-0123456789").expect("write");
        let cfg = Config::parse(
            &dir.path().join("t.yaml"),
            &format!(
                "{BASE}inbound:\n  - system: freshdesk\n    source: helpdesk\n    secret_file: fd.token\n"
            ),
        )
        .expect("valid");
        let m = &cfg.inbound[0].mapping;
        assert_eq!(
            cfg.inbound[0].system,
            crate::config::InboundSystem::Freshdesk
        );
        assert_eq!(m.defaults.timezone, chrono_tz::UTC);
        assert!(m.statuses.is_empty() && m.fields.is_empty() && m.channels.is_none());
    }

    #[test]
    fn numbered_statuses_read_as_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut errors = Vec::new();
        let m = super::read_mapping(
            &dir.path().join("m.yaml"),
            "statuses: { \"6\": on_hold, 7: resolved, With Legal: on_hold }\n",
            &crate::domain::Defaults {
                timezone: chrono_tz::UTC,
                locale: "en".parse().expect("locale"),
            },
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        use crate::domain::Status;
        assert_eq!(m.statuses.get("6"), Some(&Status::OnHold));
        assert_eq!(m.statuses.get("7"), Some(&Status::Resolved));
        assert_eq!(m.statuses.get("with legal"), Some(&Status::OnHold));
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
        let err = parse("inbound:\n  - system: zammad\n    source: billing\n    secret_env: NOPE_NOT_SET_ANYWHERE\n    mapping: no/such/file.yaml\n")
            .expect_err("bad values");
        assert!(
            err.contains("`billing` has no entry in api.tokens"),
            "{err}"
        );
        assert!(
            err.contains("environment variable NOPE_NOT_SET_ANYWHERE is not set"),
            "{err}"
        );
        assert!(
            err.contains("t.yaml:9:14: inbound.mapping: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_mapping_validates() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/inbound/mapping.yaml");
        let text = std::fs::read_to_string(&file).expect("the example");
        let mut errors = Vec::new();
        let m = super::read_mapping(
            &file,
            &text,
            &crate::domain::Defaults {
                timezone: chrono_tz::UTC,
                locale: "en".parse().expect("locale"),
            },
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(m.statuses.len(), 2);
        assert_eq!(m.fields.len(), 1);
    }

    #[test]
    fn mapping_file_mistakes_are_named_in_that_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("zammad.yaml");
        let defaults = crate::domain::Defaults {
            timezone: chrono_tz::UTC,
            locale: "en".parse().expect("locale"),
        };
        let mut errors = Vec::new();
        super::read_mapping(
            &file,
            "default_region: Atlantis\nchannels: [email, pigeon]\nstatuses:\n  new: fresh\npriorities: { 3 high: very }\nfields:\n  product: ticket.product\npublic_comments: loud\n",
            &defaults,
            &mut errors,
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let f = file.display();
        for want in [
            format!("{f}:1:17: default_region: `Atlantis`"),
            format!("{f}:2:19: channels: `pigeon` is none of email, sms, whatsapp"),
            format!("{f}:4:8: statuses.new: `fresh` is none of open"),
            format!("{f}:5:23: priorities.3 high: `very` is none of low, normal, high, urgent"),
            format!("{f}:7:12: fields.product: `ticket.product` is not a JSON pointer"),
            format!("{f}:8:18: public_comments: `loud` is neither note nor agent_reply"),
        ] {
            assert!(
                text.iter().any(|t| t.starts_with(&want)),
                "{want}\n{text:#?}"
            );
        }
        let mut errors = Vec::new();
        super::read_mapping(&file, "colour: red\n", &defaults, &mut errors);
        assert!(errors[0].to_string().contains("colour"), "{errors:?}");
    }
}
