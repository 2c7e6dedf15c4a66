//! Rules as specifications: one row per `when` key, rule order, `on:`
//! triggers, and the `file:line:column` of each kind of mistake in a rule
//! file or folder.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};

use super::{RuleSet, Trigger};
use crate::domain::Case;

/// Friday 2027-01-15 08:00 UTC.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("in range")
}

/// An open, normal-priority case from `desk`, opened at `t0`, with the
/// fields of `patch` (a JSON object) replacing the defaults.
fn case_with(patch: &str) -> Case {
    let mut case = serde_json::json!({
        "id": "CASE-1", "source": "desk", "subject": "Router", "status": "open",
        "priority": "normal", "assignee": null, "eta": null, "tags": [],
        "fields": {}, "latest_note": null, "created_at": t0(),
        "customer": { "name": "Ana", "email": "ana@example.com", "phone": null,
            "timezone": "UTC", "locale": "en", "channels": ["email"] },
    });
    let patch: serde_json::Value = serde_json::from_str(patch).expect("patch is JSON");
    for (k, v) in patch.as_object().expect("patch is an object") {
        case[k] = v.clone();
    }
    serde_json::from_value(case).expect("a valid case")
}

/// A rule file of one rule with this `when`.
fn one_rule(when: &str) -> RuleSet {
    let text = format!(
        "rules:\n  - name: r\n    when: {when}\n    every: 1h\n    channels: [email]\n    template: progress\n"
    );
    RuleSet::parse(Path::new("when.yaml"), &text).unwrap_or_else(|e| panic!("{when}: {e}"))
}

#[test]
fn every_when_key_matches_and_does_not() {
    // (when, case fields, hours since opened, matches)
    #[rustfmt::skip]
    let rows: &[(&str, &str, i64, bool)] = &[
        // No `status`: only active cases.
        ("{}", "{}", 0, true),
        ("{}", r#"{"status": "pending_customer"}"#, 0, true),
        ("{}", r#"{"status": "on_hold"}"#, 0, false),
        ("{}", r#"{"status": "resolved"}"#, 0, false),
        ("{ status: [on_hold, closed] }", r#"{"status": "on_hold"}"#, 0, true),
        ("{ status: [on_hold, closed] }", "{}", 0, false),
        ("{ priority: [high, urgent] }", r#"{"priority": "urgent"}"#, 0, true),
        ("{ priority: [high, urgent] }", "{}", 0, false),
        // Any one of the tags.
        ("{ tags: [vip, billing] }", r#"{"tags": ["x", "billing"]}"#, 0, true),
        ("{ tags: [vip, billing] }", r#"{"tags": ["x"]}"#, 0, false),
        ("{ source: [zendesk, jira] }", r#"{"source": "jira"}"#, 0, true),
        ("{ source: [zendesk, jira] }", "{}", 0, false),
        // Age: a bare duration means at least.
        ("{ age: 3d }", "{}", 72, true),
        ("{ age: 3d }", "{}", 71, false),
        ("{ age: '>= 3d' }", "{}", 72, true),
        ("{ age: '>= 3d' }", "{}", 71, false),
        ("{ age: '> 3d' }", "{}", 72, false),
        ("{ age: '> 3d' }", "{}", 73, true),
        ("{ age: '<= 1d' }", "{}", 24, true),
        ("{ age: '<= 1d' }", "{}", 25, false),
        ("{ age: '< 1d' }", "{}", 24, false),
        ("{ age: '< 1d' }", "{}", 23, true),
        // A clock behind the case's creation reads as age 0.
        ("{ age: '< 1h' }", "{}", -5, true),
        // Fields: one value or a list; others compare as their JSON text.
        ("{ fields: { plan: gold } }", r#"{"fields": {"plan": "gold"}}"#, 0, true),
        ("{ fields: { plan: gold } }", r#"{"fields": {"plan": "lead"}}"#, 0, false),
        ("{ fields: { plan: gold } }", "{}", 0, false),
        ("{ fields: { plan: [gold, silver] } }", r#"{"fields": {"plan": "silver"}}"#, 0, true),
        ("{ fields: { seats: '3' } }", r#"{"fields": {"seats": 3}}"#, 0, true),
        ("{ fields: { vip: 'true' } }", r#"{"fields": {"vip": true}}"#, 0, true),
        ("{ fields: { a: x, b: w } }", r#"{"fields": {"a": "x", "b": "v"}}"#, 0, false),
        // Every given condition must hold.
        ("{ status: [open], priority: [high], tags: [vip] }", r#"{"priority": "high", "tags": ["vip"]}"#, 0, true),
        ("{ status: [open], priority: [high], tags: [vip] }", r#"{"priority": "high"}"#, 0, false),
    ];
    for (when, patch, hours, matches) in rows {
        let set = one_rule(when);
        let now = t0() + Duration::hours(*hours);
        let got = set.matching(&case_with(patch), now).is_some();
        assert_eq!(got, *matches, "when {when} on {patch} at +{hours}h");
    }
}

#[test]
fn the_first_matching_rule_wins() {
    let text = r#"
rules:
  - { name: urgent, when: { priority: [urgent] }, every: 1h, channels: [sms], template: progress }
  - { name: open, when: { status: [open] }, every: 1d, channels: [email], template: progress }
  - { name: rest, every: 3d, channels: [email], template: reminder }
"#;
    let set = RuleSet::parse(Path::new("r.yaml"), text).expect("valid");
    // (case fields, the rule that governs)
    let rows = [
        (r#"{"priority": "urgent"}"#, Some("urgent")),
        // Without a `status` condition, no rule speaks to a case on hold.
        (r#"{"priority": "urgent", "status": "on_hold"}"#, None),
        ("{}", Some("open")),
        (r#"{"status": "pending_customer"}"#, Some("rest")),
        (r#"{"status": "on_hold"}"#, None),
    ];
    for (patch, rule) in rows {
        let got = set
            .matching(&case_with(patch), t0())
            .map(|r| r.name.as_str());
        assert_eq!(got, rule, "{patch}");
    }
    assert_eq!(
        set.rule("open").map(|r| r.template.as_str()),
        Some("progress")
    );
    assert!(set.rule("missing").is_none());
}

#[test]
fn triggers_read_back_what_they_write() {
    for t in [
        Trigger::Created,
        Trigger::Resolved,
        Trigger::Note,
        Trigger::Status,
    ] {
        assert_eq!(Trigger::parse(t.as_str()), Some(t));
    }
    assert_eq!(Trigger::parse("escalation"), None);
    let text = "on:\n  status: { template: progress, channels: [sms] }\n";
    let set = RuleSet::parse(Path::new("on.yaml"), text).expect("valid");
    let on = set.on(Trigger::Status).expect("on.status");
    assert_eq!((on.template.as_str(), on.origin.line), ("progress", 2));
    assert!(set.rules.is_empty() && set.on(Trigger::Created).is_none());
}

/// A rule `x` with every key valid, with `line` put in as its last key.
fn rule_with(line: &str) -> String {
    format!("rules:\n  - name: x\n    channels: [email]\n    template: progress\n{line}\n")
}

#[test]
fn mistakes_are_reported_at_their_file_line_and_column() {
    let every = "    every: 1h";
    // (the file, the diagnostic it starts with)
    #[rustfmt::skip]
    let rows: Vec<(String, &str)> = vec![
        (rule_with("    every: 1h\n    max_updates: 0"), "r.yaml:2:5: rule `x`: max_updates must be at least 1"),
        (rule_with("    every: 500ms"), "r.yaml:5:12: every: must be at least 1s"),
        (rule_with("    every: 1h\n    cron: '0 9 * * *'"), "r.yaml:5:12: rule `x`: give either every or cron, not both"),
        (rule_with("    cron: '0 25 * * *'"), "r.yaml:5:11: cron `0 25 * * *` is not valid:"),
        (rule_with("    cron: '0 9 * * 1-9'"), "r.yaml:5:11: cron `0 9 * * 1-9`: weekday 9 is out of range 0-7"),
        (rule_with(""), "r.yaml:2:5: rule `x`: needs every or cron"),
        (rule_with(&format!("{every}\n    quiet_hours: {{ start: '25:00', end: '08:00' }}")), "r.yaml:6:18: quiet_hours: `25:00` is not a time such as 21:00"),
        (rule_with(&format!("{every}\n    quiet_hours: {{ start: '08:00', end: '08:00' }}")), "r.yaml:6:18: quiet_hours: quiet_hours start and end are equal"),
        (rule_with(&format!("{every}\n    when: {{ age: '>= soon' }}")), "r.yaml:6:18: when.age: ` soon` is not a duration"),
        (rule_with(&format!("{every}\n    escalate: {{ after: soon, to: ops@example.com, template: stale-case }}")), "r.yaml:6:15: escalate.after: `soon` is not a duration"),
        (rule_with(&format!("{every}\n    escalate: {{ after: 1d, to: nobody, template: stale-case }}")), "r.yaml:6:15: escalate.to "),
        ("rules:\n  - { name: ' ', every: 1h, channels: [email], template: progress }\n".into(), "r.yaml:2:13: rule name must not be empty"),
        ("rules:\n  - { name: x, every: 1h, channels: [], template: progress }\n".into(), "r.yaml:2:37: channels must not be empty"),
        ("rules:\n  - { name: x, every: 1h, channels: [email], template: '' }\n".into(), "r.yaml:2:56: template must not be empty"),
        (format!("{}{}", rule_with(every), "  - { name: x, every: 2h, channels: [sms], template: progress }"), "r.yaml:6:5: rule `x` is defined twice (first at r.yaml:2)"),
        ("on:\n  created: { template: acknowledgement, channels: [] }\n".into(), "r.yaml:2:12: on.created: channels must not be empty"),
        ("rules:\n  - name: x\n    channels: [email, pigeon]\n".into(), "r.yaml:3:23: "),
        ("rules: [\n".into(), "r.yaml:1:8: "),
    ];
    for (text, want) in rows {
        let err = RuleSet::parse(Path::new("r.yaml"), &text).expect_err("a mistake");
        let got = err.to_string();
        assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn every_mistake_in_a_file_is_reported_not_only_the_first() {
    let text = "rules:\n  - { name: ' ', every: 0s, channels: [], template: ' ' }\n  - { name: y, cron: 'x', channels: [email], template: t }\n";
    let err = RuleSet::parse(Path::new("r.yaml"), text).expect_err("mistakes");
    let lines: Vec<String> = err
        .0
        .iter()
        .map(|d| format!("{}:{}", d.line, d.column))
        .collect();
    assert_eq!(lines, ["2:13", "2:25", "2:39", "2:53", "3:22"]);
}

#[test]
fn a_rules_folder_is_read_in_file_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write(
        "20-later.yaml",
        &rule_with("    every: 1d").replace("x", "later"),
    );
    write(
        "10-first.yml",
        &rule_with("    every: 1h").replace("x", "first"),
    );
    write("README.txt", "not rules");
    let ack = "on:\n  created: { template: acknowledgement, channels: [email] }\n";
    write("30-on.yaml", ack);
    let set = RuleSet::load_dir(dir.path()).expect("valid folder");
    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["first", "later"]);
    assert!(set.rules[1].origin.file.ends_with("20-later.yaml"));
    assert!(set.on(Trigger::Created).is_some());

    // Defined twice across files: each mistake names both places.
    write(
        "40-again.yaml",
        &format!("{}{ack}", rule_with("    every: 1d").replace("x", "first")),
    );
    let err = RuleSet::load_dir(dir.path())
        .expect_err("twice")
        .to_string();
    assert!(
        err.contains("40-again.yaml:2:5: rule `first` is defined twice (first at "),
        "{err}"
    );
    assert!(err.contains("10-first.yml:2)"), "{err}");
    assert!(
        err.contains("40-again.yaml:7:12: on.created is defined in two files"),
        "{err}"
    );
}

#[test]
fn a_rules_folder_that_cannot_be_read_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = RuleSet::load_dir(dir.path())
        .expect_err("empty")
        .to_string();
    assert!(err.ends_with(":1:1: no *.yaml rule files found"), "{err}");
    let missing = dir.path().join("missing");
    let err = RuleSet::load_dir(&missing)
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("missing:1:1: cannot read rules folder:"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("folder.yaml")).expect("mkdir");
    let err = RuleSet::load_dir(dir.path())
        .expect_err("unreadable")
        .to_string();
    assert!(err.contains("folder.yaml:1:1: cannot read:"), "{err}");
}

#[test]
fn the_shipped_rules_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let set = RuleSet::load_dir(&dir).expect("shipped rules are valid");
    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["urgent", "standard", "waiting-on-customer"]);
    let esc = set.rule("standard").and_then(|r| r.escalate.as_ref());
    let esc = esc.expect("standard escalates");
    assert_eq!(esc.after, std::time::Duration::from_secs(14 * 86_400));
    assert_eq!(esc.to.to_string(), "ops@example.com");
}
