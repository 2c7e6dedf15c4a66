//! Property test: fields a ticket system adds that tidings does not know
//! (a new attribute, a custom field, a nested object) never make a webhook
//! fail. Each fixture of `tests/fixtures/inbound/` is mapped again with
//! arbitrary extra keys in every object of its body.

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::{freshdesk, jira, zammad, zendesk};
use crate::config::{InboundEntry, InboundSystem, Mapping};
use crate::domain::Defaults;

fn entry(system: InboundSystem) -> InboundEntry {
    InboundEntry {
        system,
        source: "helpdesk".into(),
        secret: b"a secret of sixteen bytes or more".to_vec(),
        mapping: Mapping {
            default_region: Some("US".into()),
            defaults: Defaults {
                timezone: chrono_tz::UTC,
                locale: "en".parse().expect("locale"),
            },
            statuses: Default::default(),
            channels: None,
            priorities: Default::default(),
            fields: Default::default(),
            public_comments: Default::default(),
        },
    }
}

/// Every fixture of one system, parsed.
fn fixtures(dir: &str) -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inbound")
        .join(dir);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&root)
        .expect("the fixture folder")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a fixture");
            let json = serde_json::from_str(&text).expect("fixture JSON");
            (p.display().to_string(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no fixtures in {}", root.display());
    out
}

/// Adds `extra` to every object of `v` where the key is not already taken.
fn with_extra(v: &Value, extra: &[(String, Value)]) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(k.clone(), with_extra(x, extra));
            }
            for (k, x) in extra {
                out.entry(k.clone()).or_insert_with(|| x.clone());
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| with_extra(x, extra)).collect()),
        other => other.clone(),
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn extra_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn extras() -> impl Strategy<Value = Vec<(String, Value)>> {
    // Prefixed so they never replace a field the mapping reads.
    prop::collection::vec(("x_[a-z_]{1,12}", extra_value()), 1..5)
}

type MapFn = fn(&InboundEntry, &[u8]) -> Result<super::Mapped, super::Refusal>;

fn check(system: InboundSystem, dir: &str, map: MapFn, extra: &[(String, Value)]) {
    let entry = entry(system);
    let mut checked = 0;
    for (name, json) in fixtures(dir) {
        let plain = serde_json::to_vec(&json).expect("bytes");
        if map(&entry, &plain).is_err() {
            continue; // a fixture meant to be refused
        }
        let body = serde_json::to_vec(&with_extra(&json, extra)).expect("bytes");
        assert!(map(&entry, &body).is_ok(), "{name} with {extra:?}");
        checked += 1;
    }
    assert!(checked >= 3, "{dir}: only {checked} fixtures map");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn unknown_extra_fields_never_fail_a_webhook(extra in extras()) {
        check(InboundSystem::Zendesk, "zendesk", zendesk::map, &extra);
        check(InboundSystem::Zammad, "zammad", zammad::map, &extra);
        check(InboundSystem::Freshdesk, "freshdesk", freshdesk::map, &extra);
        check(InboundSystem::JiraSm, "jira-sm", jira::map, &extra);
    }
}
