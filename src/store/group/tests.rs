use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::*;
use crate::domain::{
    CaseInput, CaseRecord, CustomerInput, Defaults, IdempotentResponse, Priority, RECORD_VERSION,
    ScheduleState, Status, parse_timezone,
};
use crate::store::SledStore;

fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).expect("a representable instant")
}

fn key(id: &str) -> CaseKey {
    CaseKey::new("helpdesk", id.parse().expect("a valid case id"))
}

/// Case `id` of source `helpdesk`, looked at next at `due`.
fn record(id: &str, due: DateTime<Utc>) -> CaseRecord {
    let input = CaseInput {
        subject: "Replacement router has not shipped".into(),
        status: Status::Open,
        priority: Priority::High,
        customer: CustomerInput {
            name: "Maria Hernandez".into(),
            email: Some(format!("{id}@example.com")),
            phone: None,
            timezone: Some("America/New_York".into()),
            locale: Some("en".into()),
            channels: None,
        },
        cc: Vec::new(),
        assignee: None,
        eta: None,
        tags: Vec::new(),
        fields: Default::default(),
    };
    let defaults = Defaults {
        timezone: parse_timezone("UTC").expect("UTC is a time zone"),
        locale: "en".parse().expect("a valid locale"),
    };
    let case = input
        .into_case(
            id.parse().expect("valid"),
            "helpdesk",
            &defaults,
            at(-60),
            None,
        )
        .expect("a valid case");
    CaseRecord {
        v: RECORD_VERSION,
        case,
        updated_at: at(0),
        schedule: ScheduleState {
            last_contact_at: at(-60),
            next_update_at: Some(due),
            due_at: Some(due),
            rule: Some("slow".into()),
            rule_updates: 0,
            escalated: false,
            resolution_sent: false,
            closed_at: None,
        },
        messages: Vec::new(),
        idempotency_keys: Vec::new(),
    }
}

fn answer(status: u16) -> IdempotentResponse {
    IdempotentResponse {
        request_sha256: "ab".into(),
        status,
        body: serde_json::json!({ "status": status }),
        at: at(0),
    }
}

/// A writer's changes as the task holds them (the answer goes nowhere).
fn pending(changes: Vec<(CaseKey, Commit)>) -> Pending {
    Pending {
        changes,
        answer: oneshot::channel().0,
    }
}

fn open() -> (tempfile::TempDir, Arc<SledStore>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(tmp.path()).expect("open");
    (tmp, Arc::new(store))
}

#[test]
fn two_changes_to_one_case_in_a_batch_land_in_order() {
    let (_tmp, store) = open();
    let batch = vec![
        pending(vec![(key("C-1"), Commit::record(record("C-1", at(10))))]),
        pending(vec![(key("C-1"), Commit::record(record("C-1", at(20))))]),
    ];
    let refused = apply(&batch, |c| store.commit_many(c));
    assert!(refused.iter().all(Option::is_none));
    let stored = store.get(&key("C-1")).expect("get").expect("stored");
    assert_eq!(stored.schedule.due_at, Some(at(20)));
    // The index holds the later instant only: the earlier change's entry
    // was moved by the later one.
    assert_eq!(
        store.next_due_case().expect("head"),
        Some((at(20), key("C-1")))
    );
    store
        .remove_schedule_entry(at(20), &key("C-1"))
        .expect("remove");
    assert_eq!(store.next_due_case().expect("head"), None);
}

#[test]
fn a_refused_change_fails_its_writer_only() {
    let (_tmp, store) = open();
    let batch = vec![
        pending(vec![(key("C-1"), Commit::record(record("C-1", at(10))))]),
        pending(vec![(key("C-2"), Commit::record(record("C-2", at(10))))]),
        pending(vec![(key("C-3"), Commit::record(record("C-3", at(10))))]),
    ];
    let calls = std::cell::Cell::new(0);
    let refused = apply(&batch, |c| {
        calls.set(calls.get() + 1);
        if c.iter().any(|(k, _)| **k == key("C-2")) {
            return Err(StoreError::Version { found: 99 });
        }
        store.commit_many(c)
    });
    // The batch, then each writer on its own.
    assert_eq!(calls.get(), 4);
    assert!(refused[0].is_none());
    assert!(matches!(
        refused[1],
        Some(StoreError::Version { found: 99 })
    ));
    assert!(refused[2].is_none());
    assert!(store.get(&key("C-1")).expect("get").is_some());
    assert!(store.get(&key("C-2")).expect("get").is_none());
    assert!(store.get(&key("C-3")).expect("get").is_some());
}

#[test]
fn idempotency_records_in_one_batch_are_each_kept() {
    let (_tmp, store) = open();
    let with_answer = |id: &str, idem: &str, status: u16| Commit {
        idempotency: Some((idem.into(), answer(status))),
        ..Commit::record(record(id, at(10)))
    };
    let batch = vec![
        pending(vec![(key("C-1"), with_answer("C-1", "k-1", 201))]),
        pending(vec![(key("C-2"), with_answer("C-2", "k-2", 200))]),
    ];
    let refused = apply(&batch, |c| store.commit_many(c));
    assert!(refused.iter().all(Option::is_none));
    let status = |k: &str| {
        store
            .idempotent_response(k)
            .expect("read")
            .map(|r| r.status)
    };
    assert_eq!(status("k-1"), Some(201));
    assert_eq!(status("k-2"), Some(200));
    assert_eq!(status("k-3"), None);
}

/// `n` writers at once, each committing case `{prefix}-{i}` due at
/// `at(i)`: each is answered durable, and each case is stored.
async fn writers(group: &Arc<GroupCommit>, store: &SledStore, prefix: &str, n: i64) {
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..n {
        let (group, id) = (group.clone(), format!("{prefix}-{i}"));
        writers.spawn(async move {
            group
                .commit(vec![(key(&id), Commit::record(record(&id, at(i))))])
                .await
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("the writer ran").expect("committed");
    }
    for i in 0..n {
        let stored = store.get(&key(&format!("{prefix}-{i}"))).expect("get");
        assert_eq!(stored.map(|r| r.schedule.due_at), Some(Some(at(i))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_each_answered_once_durable() {
    let (_tmp, store) = open();
    let group = Arc::new(GroupCommit::new(store.clone()));
    writers(&group, &store, "C", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_tasks_answer_every_writer_and_stop_when_done() {
    let (_tmp, store) = open();
    let group = Arc::new(GroupCommit {
        tasks: 3,
        ..GroupCommit::new(store.clone())
    });
    for round in 0..3 {
        writers(&group, &store, &format!("C-{round}"), 60).await;
        // Every task ends once nothing waits (polled: the last one may
        // still be between its answers and its end).
        for _ in 0..500 {
            if group.queue.lock().expect("the queue").running == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let q = group.queue.lock().expect("the queue");
        assert_eq!((q.running, q.applying, q.pending.len()), (0, 0, 0));
    }
}

#[tokio::test]
async fn a_writer_that_leaves_does_not_take_the_batch_with_it() {
    let (_tmp, store) = open();
    let group = Arc::new(GroupCommit::new(store.clone()));
    let mut gone = Box::pin(group.commit(vec![(key("C-1"), Commit::record(record("C-1", at(1))))]));
    // Polled once (its changes queued), then dropped unanswered.
    tokio::select! {
        biased;
        _ = &mut gone => panic!("answered before the task ran"),
        () = std::future::ready(()) => {}
    }
    drop(gone);
    group
        .commit(vec![(key("C-2"), Commit::record(record("C-2", at(2))))])
        .await
        .expect("committed");
    assert!(store.get(&key("C-1")).expect("get").is_some());
    assert!(store.get(&key("C-2")).expect("get").is_some());
}

#[test]
fn a_delivered_mark_in_a_batch_goes_with_its_outbox_entry() {
    let (_tmp, store) = open();
    let id = uuid::Uuid::from_u128(7);
    let mark = crate::domain::DeliveredMark {
        at: at(1),
        provider_id: Some("SM1".into()),
    };
    let contact = store.contact(crate::domain::Channel::Email, "c-1@example.com");
    let batch = vec![
        pending(vec![(
            key("C-1"),
            Commit {
                delivered: Some((id, mark)),
                ..Commit::default()
            },
        )]),
        pending(vec![(
            key("C-2"),
            Commit {
                delivered: Some((
                    uuid::Uuid::from_u128(8),
                    crate::domain::DeliveredMark {
                        at: at(1),
                        provider_id: None,
                    },
                )),
                last_sent: Some((contact, at(1))),
                ..Commit::default()
            },
        )]),
    ];
    assert!(
        apply(&batch, |c| store.commit_many(c))
            .iter()
            .all(Option::is_none)
    );
    let stored = store.delivered_mark(id).expect("read").expect("marked");
    assert_eq!(stored.provider_id.as_deref(), Some("SM1"));
    // A mark alone leaves the case alone.
    assert!(store.get(&key("C-1")).expect("get").is_none());
    // The last send is the one the commit names: no other before a minute.
    let gap = chrono::Duration::minutes(1);
    assert_eq!(
        store.claim_send(contact, gap, at(1)).expect("claim"),
        Err(at(2))
    );
    // The history's commit removes the mark with the outbox entry.
    let done = Commit {
        outbox_remove: vec![(id, at(0))],
        ..Commit::default()
    };
    assert!(
        apply(&[pending(vec![(key("C-1"), done)])], |c| store
            .commit_many(c))[0]
            .is_none()
    );
    assert!(store.delivered_mark(id).expect("read").is_none());
}
