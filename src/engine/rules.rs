//! Rules: which cases hear from us, how often, over which channels, with
//! which template. Parsing (with `file:line:column` errors) and matching.
//!
//! Matching is pure: the case and the clock come in, a rule comes out. This
//! module knows nothing of storage, rendering or sending.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::domain::{Case, Channel, EmailAddress, Priority, Status};
use crate::domain::{Diagnostic, Diagnostics, parse_duration};
use crate::engine::schedule::{Cadence, CronSpec, QuietHours};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    on: Option<RawOn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(default)]
    when: RawWhen,
    every: Option<Spanned<String>>,
    cron: Option<Spanned<String>>,
    channels: Spanned<Vec<Channel>>,
    template: Spanned<String>,
    quiet_hours: Option<Spanned<RawQuiet>>,
    max_updates: Option<u32>,
    escalate: Option<Spanned<RawEscalate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    status: Option<Vec<Status>>,
    priority: Option<Vec<Priority>>,
    tags: Option<Vec<String>>,
    source: Option<Vec<String>>,
    age: Option<Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuiet {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalate {
    after: String,
    to: String,
    template: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOn {
    created: Option<Spanned<RawOnEvent>>,
    resolved: Option<Spanned<RawOnEvent>>,
    note: Option<Spanned<RawOnEvent>>,
    status: Option<Spanned<RawOnEvent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnEvent {
    template: String,
    channels: Vec<Channel>,
}

/// Where a rule or template reference was written, for later diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
}

impl Origin {
    fn of<T>(file: &Path, s: &Spanned<T>) -> Self {
        Self {
            file: file.to_owned(),
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }

    pub fn diagnostic(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(&self.file, self.line, self.column, message)
    }
}

/// A comparison on the case's age, e.g. `>= 3d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeCondition {
    op: AgeOp,
    age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgeOp {
    Ge,
    Gt,
    Le,
    Lt,
}

impl AgeCondition {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (op, rest) = if let Some(r) = s.strip_prefix(">=") {
            (AgeOp::Ge, r)
        } else if let Some(r) = s.strip_prefix("<=") {
            (AgeOp::Le, r)
        } else if let Some(r) = s.strip_prefix('>') {
            (AgeOp::Gt, r)
        } else if let Some(r) = s.strip_prefix('<') {
            (AgeOp::Lt, r)
        } else {
            (AgeOp::Ge, s)
        };
        Ok(Self {
            op,
            age: parse_duration("when.age", rest)?,
        })
    }

    fn holds(&self, age: Duration) -> bool {
        match self.op {
            AgeOp::Ge => age >= self.age,
            AgeOp::Gt => age > self.age,
            AgeOp::Le => age <= self.age,
            AgeOp::Lt => age < self.age,
        }
    }
}

/// The conditions of a rule; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct When {
    pub status: Option<Vec<Status>>,
    pub priority: Option<Vec<Priority>>,
    pub tags: Option<Vec<String>>,
    pub source: Option<Vec<String>>,
    pub age: Option<AgeCondition>,
    pub fields: BTreeMap<String, Vec<String>>,
}

impl When {
    /// Whether the case matches. Without a `status` condition only active
    /// cases (open, pending_customer) match: on_hold, resolved and closed
    /// hear nothing unless a rule names them.
    pub fn matches(&self, case: &Case, now: DateTime<Utc>) -> bool {
        let status_ok = match &self.status {
            Some(list) => list.contains(&case.status),
            None => case.status.is_active(),
        };
        let age = (now - case.created_at).to_std().unwrap_or_default();
        status_ok
            && self
                .priority
                .as_ref()
                .is_none_or(|p| p.contains(&case.priority))
            && self
                .tags
                .as_ref()
                .is_none_or(|t| t.iter().any(|tag| case.tags.contains(tag)))
            && self
                .source
                .as_ref()
                .is_none_or(|s| s.contains(&case.source))
            && self.age.is_none_or(|a| a.holds(age))
            && self.fields.iter().all(|(k, wanted)| {
                case.fields.get(k).is_some_and(|v| {
                    let text = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    wanted.contains(&text)
                })
            })
    }
}

/// A one-time message to an internal address when a case grows stale.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub after: Duration,
    pub to: EmailAddress,
    pub template: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub when: When,
    pub cadence: Cadence,
    pub channels: Vec<Channel>,
    pub template: String,
    pub quiet_hours: Option<QuietHours>,
    pub max_updates: Option<u32>,
    pub escalate: Option<Escalation>,
    pub origin: Origin,
}

/// A message sent at once when something happens to a case.
#[derive(Debug, Clone, PartialEq)]
pub struct OnEvent {
    pub template: String,
    pub channels: Vec<Channel>,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    Created,
    Resolved,
    Note,
    Status,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Created, Self::Resolved, Self::Note, Self::Status]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Resolved => "resolved",
            Self::Note => "note",
            Self::Status => "status",
        }
    }
}

/// Every rule file, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub on: BTreeMap<&'static str, OnEvent>,
}

impl RuleSet {
    /// The first rule that matches.
    pub fn matching(&self, case: &Case, now: DateTime<Utc>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.when.matches(case, now))
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    pub fn on(&self, trigger: Trigger) -> Option<&OnEvent> {
        self.on.get(trigger.as_str())
    }

    /// Reads every `*.yaml` / `*.yml` in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Self, Diagnostics> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Diagnostic::new(dir, 1, 1, format!("cannot read rules folder: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let mut set = Self::default();
        let mut errors = Vec::new();
        for file in &files {
            match std::fs::read_to_string(file) {
                Ok(text) => set.add_file(file, &text, &mut errors),
                Err(e) => errors.push(Diagnostic::new(file, 1, 1, format!("cannot read: {e}"))),
            }
        }
        if files.is_empty() {
            errors.push(Diagnostic::new(dir, 1, 1, "no *.yaml rule files found"));
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(Diagnostics(errors))
        }
    }

    /// Parses one rule file's text, as if it were the only one.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Diagnostics> {
        let mut set = Self::default();
        let mut errors = Vec::new();
        set.add_file(file, text, &mut errors);
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(Diagnostics(errors))
        }
    }

    fn add_file(&mut self, file: &Path, text: &str, errors: &mut Vec<Diagnostic>) {
        let raw: RawFile = match serde_saphyr::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(Diagnostic::from_yaml(file, &e));
                return;
            }
        };
        for spanned in raw.rules {
            let origin = Origin::of(file, &spanned);
            if let Some(rule) = build_rule(file, spanned.value, origin, errors) {
                if let Some(prev) = self.rule(&rule.name) {
                    errors.push(rule.origin.diagnostic(format!(
                        "rule `{}` is defined twice (first at {}:{})",
                        rule.name,
                        prev.origin.file.display(),
                        prev.origin.line
                    )));
                } else {
                    self.rules.push(rule);
                }
            }
        }
        let on = raw.on.unwrap_or_default();
        for (key, value) in [
            (Trigger::Created, on.created),
            (Trigger::Resolved, on.resolved),
            (Trigger::Note, on.note),
            (Trigger::Status, on.status),
        ] {
            let Some(s) = value else { continue };
            let origin = Origin::of(file, &s);
            if s.value.channels.is_empty() {
                errors.push(
                    origin.diagnostic(format!("on.{}: channels must not be empty", key.as_str())),
                );
                continue;
            }
            if self.on.contains_key(key.as_str()) {
                errors.push(
                    origin.diagnostic(format!("on.{} is defined in two files", key.as_str())),
                );
                continue;
            }
            self.on.insert(
                key.as_str(),
                OnEvent {
                    template: s.value.template,
                    channels: s.value.channels,
                    origin,
                },
            );
        }
    }
}

fn build_rule(
    file: &Path,
    raw: RawRule,
    origin: Origin,
    errors: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let before = errors.len();
    let name = raw.name.value.trim().to_owned();
    if name.is_empty() {
        errors.push(Diagnostic::at(
            file,
            &raw.name,
            "rule name must not be empty",
        ));
    }
    let cadence = match (&raw.every, &raw.cron) {
        (Some(every), None) => match parse_duration("every", &every.value) {
            Ok(d) if d >= Duration::from_secs(1) => Some(Cadence::Every(d)),
            Ok(_) => {
                errors.push(Diagnostic::at(file, every, "every: must be at least 1s"));
                None
            }
            Err(m) => {
                errors.push(Diagnostic::at(file, every, m));
                None
            }
        },
        (None, Some(cron)) => match CronSpec::parse(&cron.value) {
            Ok(c) => Some(Cadence::Cron(Box::new(c))),
            Err(m) => {
                errors.push(Diagnostic::at(file, cron, m));
                None
            }
        },
        (Some(every), Some(_)) => {
            errors.push(Diagnostic::at(
                file,
                every,
                format!("rule `{name}`: give either every or cron, not both"),
            ));
            None
        }
        (None, None) => {
            errors.push(origin.diagnostic(format!("rule `{name}`: needs every or cron")));
            None
        }
    };
    if raw.channels.value.is_empty() {
        errors.push(Diagnostic::at(
            file,
            &raw.channels,
            "channels must not be empty",
        ));
    }
    if raw.template.value.trim().is_empty() {
        errors.push(Diagnostic::at(
            file,
            &raw.template,
            "template must not be empty",
        ));
    }
    let quiet_hours = raw.quiet_hours.as_ref().and_then(|q| {
        QuietHours::parse(&q.value.start, &q.value.end)
            .map_err(|m| errors.push(Diagnostic::at(file, q, format!("quiet_hours: {m}"))))
            .ok()
    });
    let age = raw.when.age.as_ref().and_then(|a| {
        AgeCondition::parse(&a.value)
            .map_err(|m| errors.push(Diagnostic::at(file, a, m)))
            .ok()
    });
    let escalate = raw.escalate.as_ref().and_then(|e| {
        let after = parse_duration("escalate.after", &e.value.after)
            .map_err(|m| errors.push(Diagnostic::at(file, e, m)))
            .ok()?;
        let to = e
            .value
            .to
            .parse::<EmailAddress>()
            .map_err(|m| errors.push(Diagnostic::at(file, e, format!("escalate.to {m}"))))
            .ok()?;
        Some(Escalation {
            after,
            to,
            template: e.value.template.clone(),
        })
    });
    if raw.max_updates == Some(0) {
        errors.push(origin.diagnostic(format!("rule `{name}`: max_updates must be at least 1")));
    }
    if errors.len() > before {
        return None;
    }
    Some(Rule {
        name,
        when: When {
            status: raw.when.status,
            priority: raw.when.priority,
            tags: raw.when.tags,
            source: raw.when.source,
            age,
            fields: raw
                .when
                .fields
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        match v {
                            OneOrMany::One(s) => vec![s],
                            OneOrMany::Many(v) => v,
                        },
                    )
                })
                .collect(),
        },
        cadence: cadence?,
        channels: raw.channels.value,
        template: raw.template.value,
        quiet_hours,
        max_updates: raw.max_updates,
        escalate,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
rules:
  - name: urgent
    when: { priority: [urgent, high], status: [open] }
    every: 4h
    channels: [sms, email]
    template: progress
    quiet_hours: { start: "21:00", end: "08:00" }
  - name: standard
    when: { status: [open] }
    cron: "0 9 * * 1-5"
    channels: [email]
    template: progress
    escalate: { after: 14d, to: "ops@example.com", template: stale-case }
  - name: waiting-on-customer
    when: { status: [pending_customer] }
    every: 3d
    max_updates: 2
    channels: [email]
    template: reminder
on:
  created:  { template: acknowledgement, channels: [email, sms] }
  resolved: { template: resolution, channels: [email] }
  note:     { template: note, channels: [email] }
"#;

    #[test]
    fn spec_example_parses() {
        let set = RuleSet::parse(Path::new("r.yaml"), SPEC_EXAMPLE).expect("valid");
        assert_eq!(set.rules.len(), 3);
        assert_eq!(set.rules[1].origin.line, 9);
        assert!(set.on(Trigger::Created).is_some());
        assert!(set.on(Trigger::Status).is_none());
    }

    #[test]
    fn bad_duration_and_channel_point_at_the_value() {
        let text =
            "rules:\n  - name: x\n    every: soon\n    channels: [email]\n    template: progress\n";
        let err = RuleSet::parse(Path::new("r.yaml"), text).expect_err("bad every");
        assert!(err.to_string().starts_with("r.yaml:3:12: every:"), "{err}");

        let text = "rules:\n  - name: x\n    every: 1h\n    channels: [email, pigeon]\n    template: progress\n";
        let err = RuleSet::parse(Path::new("r.yaml"), text).expect_err("bad channel");
        let s = err.to_string();
        assert!(s.starts_with("r.yaml:4:"), "{s}");
        assert!(s.contains("pigeon"), "{s}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text =
            "rules:\n  - name: x\n    evry: 1h\n    channels: [email]\n    template: progress\n";
        let err = RuleSet::parse(Path::new("r.yaml"), text).expect_err("unknown key");
        assert!(err.to_string().contains("evry"), "{err}");
    }
}

#[cfg(test)]
mod more_tests;
