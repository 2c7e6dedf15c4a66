//! What the PostgreSQL store does for several replicas on one database,
//! with two stores (two replicas) opened on one fresh database:
//!
//! - a change decided on a case another replica wrote meanwhile is refused
//!   (`Conflict`), and lands once decided again on what is stored now;
//! - due outbox entries are claimed, each by one replica, and a claim whose
//!   lease ran out is taken over under a larger fencing number: the first
//!   replica's delivered mark and settlement are refused (`Fenced`), while
//!   another writer may still cancel the entry (a newer update);
//! - a due case one replica claimed is passed by the other until its
//!   record is written again or the lease runs out;
//! - what a replica that is gone (its lock session closed) had claimed is
//!   taken over at once, without waiting for the lease.
//!
//! Time is fixed (`at`): leases run on the instants the callers pass.

use std::collections::HashSet;

use tidings::domain::DeliveredMark;
use tidings::store::{Commit, PgStore, PgStoreConfig, Storage, StoreError};
use uuid::Uuid;

mod peers;

use peers::records::*;

/// Two replicas on one fresh database, each with a 60 s lease.
fn two_replicas() -> Option<(PgStore, PgStore, peers::PgDatabase)> {
    let db = peers::postgres()?.database();
    let config = PgStoreConfig {
        url: db.url.clone(),
        pool_size: 2,
        lease: std::time::Duration::from_secs(60),
    };
    let a = PgStore::open(&config).expect("replica a opens");
    let b = PgStore::open(&config).expect("replica b opens");
    // As daemons do: the lock's session says each replica is alive.
    a.lock_daemon().expect("a's lock");
    b.lock_daemon().expect("b's lock");
    Some((a, b, db))
}

#[test]
fn a_change_decided_on_an_older_revision_is_refused() {
    let Some((a, b, _db)) = two_replicas() else {
        return;
    };
    let r = maria("R-1", Some(at(30)));
    let k = r.key();
    // A new case: decided on "nothing stored" (revision 0).
    let create = Commit {
        expect: Some(0),
        ..Commit::record(r.clone())
    };
    a.commit(&k, &create).expect("created");
    assert!(
        matches!(b.commit(&k, &create), Err(StoreError::Conflict)),
        "a second creation of the same case is refused"
    );

    // Both replicas read revision 1; b writes first.
    let (seen_a, rev_a) = a.get_versioned(&k).expect("read a");
    let (_, rev_b) = b.get_versioned(&k).expect("read b");
    assert_eq!((rev_a, rev_b), (1, 1));
    let mut by_b = r.clone();
    by_b.case.subject = "Written by b".into();
    b.commit(
        &k,
        &Commit {
            expect: Some(rev_b),
            ..Commit::record(by_b)
        },
    )
    .expect("b's change lands");
    let mut by_a = seen_a.expect("stored");
    by_a.case.subject = "Written by a".into();
    let stale = Commit {
        expect: Some(rev_a),
        ..Commit::record(by_a.clone())
    };
    assert!(matches!(a.commit(&k, &stale), Err(StoreError::Conflict)));
    let (now, rev) = a.get_versioned(&k).expect("read again");
    assert_eq!(now.expect("stored").case.subject, "Written by b");
    assert_eq!(rev, 2);
    // Decided again on revision 2, a's change lands.
    a.commit(
        &k,
        &Commit {
            expect: Some(rev),
            ..Commit::record(by_a)
        },
    )
    .expect("a's change lands on the current revision");
    assert_eq!(a.get_versioned(&k).expect("read").1, 3);

    // An erasure decided on an old revision is refused too; a stored-again
    // case goes on from the erased one's revision.
    let erase = Commit {
        erase: true,
        expect: Some(2),
        ..Commit::default()
    };
    assert!(matches!(b.commit(&k, &erase), Err(StoreError::Conflict)));
    b.commit(
        &k,
        &Commit {
            expect: Some(3),
            ..Commit::record(r)
        },
    )
    .expect("stored again");
    assert_eq!(b.get_versioned(&k).expect("read").1, 4);
}

#[test]
fn each_due_entry_is_claimed_by_one_replica_and_a_lapsed_claim_is_fenced() {
    let Some((a, b, _db)) = two_replicas() else {
        return;
    };
    let r = maria("R-2", None);
    let k = r.key();
    let entries: Vec<_> = (1..=6).map(|n| entry(&k, n, at(n as i64))).collect();
    a.commit(
        &k,
        &Commit {
            outbox_put: entries.clone(),
            ..Commit::record(r)
        },
    )
    .expect("queued");
    let none = HashSet::new();
    let (took_a, _) = a.due_outbox(at(10), 3, &none).expect("a claims");
    let (took_b, next) = b.due_outbox(at(10), 10, &none).expect("b claims");
    let ids =
        |v: &[tidings::domain::OutboxEntry]| -> HashSet<Uuid> { v.iter().map(|e| e.id).collect() };
    assert_eq!(took_a.len(), 3);
    assert_eq!(took_b.len(), 3, "b takes only what a did not");
    assert!(ids(&took_a).is_disjoint(&ids(&took_b)));
    assert_eq!(next, None);
    // a's earliest first.
    assert_eq!(took_a[0].id, entries[0].id);
    // Within the lease nobody takes them again.
    let (again, _) = b
        .due_outbox(at(10) + chrono::Duration::seconds(30), 10, &none)
        .expect("b looks again");
    assert!(ids(&again).is_disjoint(&ids(&took_a)));

    // a stalls past its lease (60 s); b takes its first entry over.
    let mine: HashSet<Uuid> = ids(&took_a);
    let late = at(10) + chrono::Duration::seconds(61);
    let (over, _) = b.due_outbox(late, 10, &ids(&took_b)).expect("b takes over");
    assert_eq!(ids(&over), mine, "b takes over every lapsed claim");

    // a's delivered mark and a's settlement are refused now.
    let first = &took_a[0];
    let mark = Commit {
        delivered: Some((
            first.id,
            DeliveredMark {
                at: late,
                provider_id: None,
            },
        )),
        settles: Some(first.id),
        ..Commit::default()
    };
    assert!(matches!(a.commit(&k, &mark), Err(StoreError::Fenced)));
    let settle = Commit {
        outbox_remove: vec![(first.id, first.next_attempt_at)],
        settles: Some(first.id),
        ..Commit::default()
    };
    assert!(matches!(a.commit(&k, &settle), Err(StoreError::Fenced)));
    assert!(
        a.delivered_mark(first.id).expect("mark").is_none(),
        "no mark from a replica whose claim lapsed"
    );
    // b, the holder, settles it.
    b.commit(&k, &mark).expect("b marks it");
    b.commit(&k, &settle).expect("b settles it");
    assert!(b.outbox_entry(first.id).expect("read").is_none());

    // An entry another writer cancelled meanwhile is not put back by the
    // replica that claimed it (a retry of a withdrawn message).
    let second = &over[1];
    a.commit(
        &k,
        &Commit {
            outbox_remove: vec![(second.id, second.next_attempt_at)],
            ..Commit::default()
        },
    )
    .expect("a cancels it (a newer update superseded it)");
    let retry = Commit {
        outbox_remove: vec![(second.id, second.next_attempt_at)],
        outbox_put: vec![tidings::domain::OutboxEntry {
            attempts: 1,
            next_attempt_at: late + chrono::Duration::seconds(30),
            ..second.clone()
        }],
        settles: Some(second.id),
        ..Commit::default()
    };
    b.commit(&k, &retry).expect("b files its retry");
    assert!(
        b.outbox_entry(second.id).expect("read").is_none(),
        "the cancelled message stays cancelled"
    );
}

#[test]
fn a_due_case_one_replica_claimed_is_passed_by_the_other() {
    let Some((a, b, _db)) = two_replicas() else {
        return;
    };
    let first = maria("R-3", Some(at(1)));
    let second = maria("R-4", Some(at(2)));
    let later = maria("R-5", Some(at(90)));
    for r in [&first, &second, &later] {
        a.commit(&r.key(), &Commit::record(r.clone()))
            .expect("stored");
    }
    let none = HashSet::new();
    let claim = |s: &PgStore, now, limit| s.claim_due_cases(now, limit, &none).expect("claims");
    assert_eq!(
        claim(&a, at(5), 1),
        (vec![(at(1), first.key())], Some(at(5)))
    );
    assert_eq!(
        claim(&b, at(5), 10),
        (vec![(at(2), second.key())], Some(at(90))),
        "b passes by the case a holds"
    );
    // a asks again (its lease is its own): the same case, unless busy.
    assert_eq!(claim(&a, at(5), 1).0, vec![(at(1), first.key())]);
    let planning = HashSet::from([first.key()]);
    assert_eq!(
        a.claim_due_cases(at(5), 1, &planning).expect("a"),
        (vec![], Some(at(90))),
        "what a plans already and what b holds are not offered"
    );
    // b asks again: the one it holds.
    assert_eq!(claim(&b, at(5), 10).0, vec![(at(2), second.key())]);
    // a writes its case (the update planned, due later): the lease ends.
    let mut moved = first.clone();
    moved.schedule.due_at = Some(at(60));
    a.commit(&moved.key(), &Commit::record(moved.clone()))
        .expect("a plans it");
    let mut done = second.clone();
    done.schedule.due_at = Some(at(70));
    b.commit(&done.key(), &Commit::record(done))
        .expect("b plans it");
    assert_eq!(
        claim(&b, at(5), 10),
        (vec![], Some(at(60))),
        "nothing due: the head, free to anyone when it falls due"
    );
    // A lapsed lease is taken over.
    assert_eq!(claim(&a, at(61), 10).0, vec![(at(60), moved.key())]);
    assert_eq!(
        claim(&b, at(61), 10),
        (vec![], Some(at(70))),
        "b passes by a's claim while it lasts"
    );
    let lapsed = at(61) + chrono::Duration::seconds(61);
    assert_eq!(
        claim(&b, lapsed, 10),
        (vec![(at(60), moved.key())], Some(at(70)))
    );
}

#[test]
fn a_replica_hears_of_work_another_one_commits() {
    let Some((a, b, _db)) = two_replicas() else {
        return;
    };
    let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = woken.clone();
    b.watch(std::sync::Arc::new(move || {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let seen = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while woken.load(std::sync::atomic::Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "no wake-up");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // Once when it starts listening.
    seen(1);
    let before = woken.load(std::sync::atomic::Ordering::SeqCst);
    // A pacing write schedules nothing: no notification.
    a.set_last_sent(
        a.contact(tidings::domain::Channel::Email, MARIA_EMAIL),
        at(1),
    )
    .expect("noted");
    // A new case with a due instant does.
    let r = maria("R-6", Some(at(5)));
    a.commit(&r.key(), &Commit::record(r.clone()))
        .expect("stored");
    seen(before + 1);
    // So does a queued message.
    let before = woken.load(std::sync::atomic::Ordering::SeqCst);
    a.commit(
        &r.key(),
        &Commit {
            outbox_put: vec![entry(&r.key(), 9, at(6))],
            ..Commit::default()
        },
    )
    .expect("queued");
    seen(before + 1);
}

#[test]
fn the_claims_of_a_replica_that_is_gone_are_taken_over_at_once() {
    let Some((a, b, _db)) = two_replicas() else {
        return;
    };
    let r = maria("R-7", Some(at(1)));
    let k = r.key();
    a.commit(
        &k,
        &Commit {
            outbox_put: vec![entry(&k, 21, at(1)), entry(&k, 22, at(2))],
            ..Commit::record(r.clone())
        },
    )
    .expect("queued");
    let none = HashSet::new();
    let (took, _) = a.due_outbox(at(5), 10, &none).expect("a claims");
    assert_eq!(took.len(), 2);
    let no_case = HashSet::new();
    assert_eq!(
        a.claim_due_cases(at(5), 10, &no_case)
            .expect("a claims the case")
            .0,
        vec![(at(1), k.clone())]
    );
    // While a lives, b leaves them alone.
    assert!(b.due_outbox(at(5), 10, &none).expect("b").0.is_empty());
    assert_eq!(
        b.claim_due_cases(at(5), 10, &no_case).expect("b"),
        (vec![], None)
    );
    // a is killed: its sessions close. Well within a's lease, b takes
    // everything over as soon as the database sees a's session gone.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut taken = Vec::new();
    while taken.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a's claims were not taken over"
        );
        let busy: HashSet<Uuid> = taken
            .iter()
            .map(|e: &tidings::domain::OutboxEntry| e.id)
            .collect();
        taken.extend(b.due_outbox(at(5), 10, &busy).expect("b").0);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        b.claim_due_cases(at(5), 10, &no_case)
            .expect("b takes the case")
            .0,
        vec![(at(1), k)]
    );
}
