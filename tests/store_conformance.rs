//! The storage conformance suite: what every backend of
//! `tidings::store::Storage` must do, written against `&dyn Storage` only.
//!
//! Each backend is one `conformance!` line at the bottom of this file plus
//! two functions: `open` (a fresh, empty store, with whatever keeps it
//! alive) and `reopen` (the same store after its handle is dropped and
//! opened again). Every test gets a store of its own.
//!
//! Time is fixed (`at`): nothing here reads the wall clock.

use std::collections::HashSet;
use std::future::Future;

use chrono::Duration;
use tidings::domain::{
    CaseKey, CaseRecord, Channel, DeliveredMark, OptOut, OptOutVia, OutboxEntry, Status, contact_of,
};
use tidings::store::{Commit, PgStore, PgStoreConfig, SledStore, Storage, Writer, verify_backup};
use uuid::Uuid;

mod peers;

use peers::records::*;

/// A store under test, and what keeps it alive (sled: its directory).
/// Fields drop in order: the store closes before its home goes.
struct Fixture<H> {
    store: Box<dyn Storage>,
    home: H,
}

/// One test of the suite per function of `suite`, each on a fresh store.
macro_rules! conformance {
    (@each $open:path; $($test:ident),+ $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            let Some(fixture) = $open().await else { return };
            suite::$test(&*fixture.store).await;
        }
    )+};
    ($backend:ident, open: $open:path, reopen: $reopen:path) => {
        mod $backend {
            use super::*;

            conformance!(@each $open;
                commit_moves_the_schedule_index,
                remove_schedule_entry_drops_only_that_entry,
                commit_many_applies_every_change,
                a_batch_moves_every_case_it_names,
                next_due_case_is_the_earliest,
                due_cases_are_claimed_earliest_first,
                due_outbox_takes_what_is_due_earliest_first,
                an_outbox_entry_is_rescheduled_in_one_commit,
                the_outbox_size_holds_while_entries_are_replaced,
                erasure_removes_the_case_and_what_holds_its_data,
                erasure_destroys_what_it_does_not_name,
                a_case_twice_in_one_batch_is_shredded_whole,
                a_delivered_mark_lasts_as_long_as_its_outbox_entry,
                a_commit_files_a_delivered_mark_and_the_last_send,
                marks_in_one_batch_keep_the_latest_send,
                contacts_are_keyed_by_channel_and_normalised_address,
                cases_of_follows_the_customer_address,
                a_case_is_found_by_its_short_link_until_erased,
                opt_out_and_opt_in_round_trip,
                claim_send_paces_one_recipient,
                the_last_inbound_message_is_kept_per_contact,
                idempotent_answers_are_kept_until_pruned,
                scans_yield_every_case,
                flush_completes_and_a_store_with_space_has_room,
                a_backup_verifies,
            );

            #[tokio::test]
            async fn a_reopened_store_keeps_what_was_flushed() {
                let Some(fixture) = $open().await else { return };
                suite::a_reopened_store_keeps_what_was_flushed(fixture, $reopen).await;
            }
        }
    };
}

/// The tests, each given a fresh, empty store.
mod suite {
    use super::*;

    pub async fn commit_moves_the_schedule_index(store: &dyn Storage) {
        let k = key("C-1");
        assert_eq!(store.get(&k).expect("get"), None);
        assert_eq!(store.next_due_case().expect("next due"), None);

        let mut r = maria("C-1", Some(at(60)));
        commit_record(store, &r);
        assert_eq!(store.get(&k).expect("get"), Some(r.clone()));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(60), k.clone()))
        );

        // Later: a stale entry at the old instant would come first.
        r.schedule.due_at = Some(at(180));
        commit_record(store, &r);
        assert_eq!(store.get(&k).expect("get"), Some(r.clone()));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(180), k.clone()))
        );

        // Earlier: once its entry goes, nothing is left of the later one.
        r.schedule.due_at = Some(at(30));
        commit_record(store, &r);
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(30), k.clone()))
        );
        store
            .remove_schedule_entry(at(30), &k)
            .expect("remove the entry");
        assert_eq!(store.next_due_case().expect("next due"), None);

        // Put it back, then leave the index with `due_at: None`.
        r.schedule.due_at = Some(at(30));
        commit_record(store, &r);
        r.schedule.due_at = None;
        commit_record(store, &r);
        assert_eq!(store.next_due_case().expect("next due"), None);
        assert_eq!(store.get(&k).expect("get"), Some(r.clone()), "still stored");

        // And from unscheduled back into the index.
        r.schedule.due_at = Some(at(90));
        commit_record(store, &r);
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(90), k.clone()))
        );

        // A commit without a record leaves the case and its entry alone.
        store
            .commit(&k, &Commit::default())
            .expect("an empty commit applies");
        assert_eq!(store.get(&k).expect("get"), Some(r));
        assert_eq!(store.next_due_case().expect("next due"), Some((at(90), k)));
    }

    pub async fn remove_schedule_entry_drops_only_that_entry(store: &dyn Storage) {
        let (one, two) = (maria("C-1", Some(at(10))), jan("C-2", Some(at(20))));
        commit_record(store, &one);
        commit_record(store, &two);
        // An entry that names another case or instant is not this one.
        store
            .remove_schedule_entry(at(10), &key("C-2"))
            .expect("remove a missing entry");
        store
            .remove_schedule_entry(at(11), &key("C-1"))
            .expect("remove a missing entry");
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(10), key("C-1")))
        );
        store
            .remove_schedule_entry(at(10), &key("C-1"))
            .expect("remove the entry");
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(20), key("C-2")))
        );
        // The index only: the case itself stays.
        assert_eq!(store.get(&key("C-1")).expect("get"), Some(one));
    }

    pub async fn commit_many_applies_every_change(store: &dyn Storage) {
        let (one, two) = (maria("C-1", Some(at(60))), jan("C-2", Some(at(30))));
        let (e1, e2) = (entry(&one.key(), 1, at(0)), entry(&two.key(), 2, at(5)));
        let c1 = Commit {
            outbox_put: vec![e1.clone()],
            ..Commit::record(one.clone())
        };
        let c2 = Commit {
            outbox_put: vec![e2.clone()],
            idempotency: Some(("req-2".into(), answer(at(0), "C-2"))),
            ..Commit::record(two.clone())
        };
        store
            .commit_many(&[(&one.key(), &c1), (&two.key(), &c2)])
            .expect("commit both");
        assert_eq!(store.get(&one.key()).expect("get"), Some(one));
        assert_eq!(store.get(&two.key()).expect("get"), Some(two.clone()));
        assert_eq!(store.outbox_entry(e1.id).expect("entry"), Some(e1));
        assert_eq!(store.outbox_entry(e2.id).expect("entry"), Some(e2));
        assert_eq!(store.outbox_len(), 2);
        assert_eq!(
            store.idempotent_response("req-2").expect("answer"),
            Some(answer(at(0), "C-2"))
        );
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(30), two.key()))
        );
    }

    pub async fn a_batch_moves_every_case_it_names(store: &dyn Storage) {
        let maria_email = store.contact(Channel::Email, MARIA_EMAIL);
        let jan_email = store.contact(Channel::Email, JAN_EMAIL);
        let (mut one, mut two) = (maria("C-1", Some(at(60))), jan("C-2", Some(at(30))));
        let (e1, e2) = (entry(&one.key(), 1, at(0)), entry(&two.key(), 2, at(5)));
        let first = [
            Commit {
                outbox_put: vec![e1.clone()],
                idempotency: Some(("req-1".into(), answer(at(0), "C-1"))),
                ..Commit::record(one.clone())
            },
            Commit {
                outbox_put: vec![e2.clone()],
                ..Commit::record(two.clone())
            },
        ];
        store
            .commit_many(&[(&one.key(), &first[0]), (&two.key(), &first[1])])
            .expect("the first batch");
        // Both move in one batch: C-1 to Jan's address and a later
        // instant, its entry replaced and its answer dropped; C-2 out of
        // the schedule, its entry moved (removed and put again).
        one.case = case("C-1", Some(JAN_EMAIL), None);
        one.schedule.due_at = Some(at(90));
        two.schedule.due_at = None;
        let e3 = entry(&one.key(), 3, at(7));
        let e2_later = OutboxEntry {
            next_attempt_at: at(50),
            ..e2.clone()
        };
        let second = [
            Commit {
                outbox_remove: vec![(e1.id, e1.next_attempt_at)],
                outbox_put: vec![e3.clone()],
                idempotency_remove: vec!["req-1".into()],
                ..Commit::record(one.clone())
            },
            Commit {
                outbox_remove: vec![(e2.id, e2.next_attempt_at)],
                outbox_put: vec![e2_later.clone()],
                ..Commit::record(two.clone())
            },
        ];
        store
            .commit_many(&[(&one.key(), &second[0]), (&two.key(), &second[1])])
            .expect("the second batch");
        assert_eq!(store.get(&one.key()).expect("get"), Some(one.clone()));
        assert_eq!(store.get(&two.key()).expect("get"), Some(two.clone()));
        assert_eq!(store.outbox_entry(e1.id).expect("entry"), None);
        assert_eq!(store.outbox_entry(e3.id).expect("entry"), Some(e3));
        assert_eq!(store.outbox_entry(e2.id).expect("entry"), Some(e2_later));
        assert_eq!(store.outbox_len(), 2);
        assert_eq!(store.idempotent_response("req-1").expect("answer"), None);
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(90), one.key()))
        );
        assert_eq!(store.cases_of(maria_email).expect("cases of"), vec![]);
        assert_eq!(
            sorted(store.cases_of(jan_email).expect("cases of")),
            vec![key("C-1"), key("C-2")]
        );
    }

    pub async fn next_due_case_is_the_earliest(store: &dyn Storage) {
        for (id, due) in [("C-1", 180), ("C-2", 60), ("C-3", 120)] {
            commit_record(store, &maria(id, Some(at(due))));
        }
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(60), key("C-2")))
        );
        // Unscheduling the earliest hands over to the next.
        commit_record(store, &maria("C-2", None));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(120), key("C-3")))
        );
        // Two cases due at one instant both stay in the index.
        commit_record(store, &maria("C-4", Some(at(20))));
        commit_record(store, &jan("C-5", Some(at(20))));
        let (when, first) = store
            .next_due_case()
            .expect("next due")
            .expect("a case is due");
        assert_eq!(when, at(20));
        store
            .remove_schedule_entry(when, &first)
            .expect("remove the entry");
        let (when, second) = store
            .next_due_case()
            .expect("next due")
            .expect("a case is due");
        assert_eq!(when, at(20));
        assert_eq!(sorted(vec![first, second]), vec![key("C-4"), key("C-5")]);
    }

    pub async fn due_cases_are_claimed_earliest_first(store: &dyn Storage) {
        let none = std::collections::HashSet::new();
        assert_eq!(
            store.claim_due_cases(at(0), 10, &none).expect("due"),
            (vec![], None)
        );
        for (id, due) in [("C-1", 10), ("C-2", -5), ("C-3", 0), ("C-4", 60)] {
            commit_record(store, &maria(id, Some(at(due))));
        }
        assert_eq!(
            store.claim_due_cases(at(0), 10, &none).expect("due"),
            (
                vec![(at(-5), key("C-2")), (at(0), key("C-3"))],
                Some(at(10))
            )
        );
        // More due than asked for: look again at once.
        assert_eq!(
            store.claim_due_cases(at(0), 1, &none).expect("due"),
            (vec![(at(-5), key("C-2"))], Some(at(0)))
        );
        // What the daemon is planning already is passed by.
        let busy = std::collections::HashSet::from([key("C-2")]);
        assert_eq!(
            store.claim_due_cases(at(0), 10, &busy).expect("due"),
            (vec![(at(0), key("C-3"))], Some(at(10)))
        );
        let (all, next) = store.claim_due_cases(at(100), 10, &none).expect("due");
        assert_eq!(
            all,
            vec![
                (at(-5), key("C-2")),
                (at(0), key("C-3")),
                (at(10), key("C-1")),
                (at(60), key("C-4"))
            ]
        );
        assert_eq!(next, None);
    }

    pub async fn due_outbox_takes_what_is_due_earliest_first(store: &dyn Storage) {
        let r = maria("C-1", Some(at(600)));
        let k = r.key();
        commit_record(store, &r);
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(store.outbox_head().expect("head"), None);
        assert_eq!(
            store.due_outbox(at(0), 10, &no_busy()).expect("due"),
            (vec![], None)
        );

        let (a, b, c, d) = (
            entry(&k, 1, at(-10)),
            entry(&k, 2, at(-5)),
            entry(&k, 3, at(0)),
            entry(&k, 4, at(60)),
        );
        // Outbox-only: the case and its schedule entry stay as they are.
        let put = Commit {
            outbox_put: vec![d.clone(), b.clone(), a.clone(), c.clone()],
            ..Commit::default()
        };
        store.commit(&k, &put).expect("put");
        assert_eq!(store.get(&k).expect("get"), Some(r));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(600), k.clone()))
        );
        for e in [&a, &b, &c, &d] {
            assert_eq!(store.outbox_entry(e.id).expect("entry"), Some(e.clone()));
        }
        assert_eq!(
            store.outbox_entry(Uuid::from_u128(99)).expect("entry"),
            None
        );
        assert_eq!(store.outbox_len(), 4);
        assert_eq!(store.outbox_head().expect("head"), Some(at(-10)));

        // Due means at or before `now`; the next one not taken is reported.
        assert_eq!(
            store.due_outbox(at(0), 10, &no_busy()).expect("due"),
            (vec![a.clone(), b.clone(), c.clone()], Some(at(60)))
        );
        // At most `limit`: the next not taken may be due already.
        assert_eq!(
            store.due_outbox(at(0), 2, &no_busy()).expect("due"),
            (vec![a.clone(), b.clone()], Some(at(0)))
        );
        // Busy entries (in flight) are skipped.
        let busy: HashSet<Uuid> = [a.id, c.id].into();
        assert_eq!(
            store.due_outbox(at(0), 10, &busy).expect("due"),
            (vec![b.clone()], Some(at(60)))
        );
        assert_eq!(
            store.due_outbox(at(-20), 10, &no_busy()).expect("due"),
            (vec![], Some(at(-10)))
        );
        assert_eq!(
            store.due_outbox(at(120), 10, &no_busy()).expect("due"),
            (vec![a.clone(), b.clone(), c.clone(), d.clone()], None)
        );
        // Taking does not remove.
        assert_eq!(store.outbox_len(), 4);

        let drop_two = Commit {
            outbox_remove: removing(&[&a, &b]),
            ..Commit::default()
        };
        store.commit(&k, &drop_two).expect("remove");
        assert_eq!(store.outbox_entry(a.id).expect("entry"), None);
        assert_eq!(store.outbox_entry(b.id).expect("entry"), None);
        assert_eq!(store.outbox_len(), 2);
        assert_eq!(store.outbox_head().expect("head"), Some(at(0)));
        assert_eq!(
            store.due_outbox(at(0), 10, &no_busy()).expect("due"),
            (vec![c.clone()], Some(at(60)))
        );

        let drop_rest = Commit {
            outbox_remove: removing(&[&c, &d]),
            ..Commit::default()
        };
        store.commit(&k, &drop_rest).expect("remove");
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(store.outbox_head().expect("head"), None);
        assert_eq!(
            store.due_outbox(at(120), 10, &no_busy()).expect("due"),
            (vec![], None)
        );
    }

    pub async fn the_outbox_size_holds_while_entries_are_replaced(store: &dyn Storage) {
        // A retry moved later and an update superseded by a newer one each
        // replace an entry: the size a scrape reads meanwhile stays put.
        use std::sync::atomic::{AtomicBool, Ordering};
        let r = maria("C-1", Some(at(60)));
        let mut live: Vec<OutboxEntry> = (1..=20).map(|n| entry(&r.key(), n, at(0))).collect();
        let first = Commit {
            outbox_put: live.clone(),
            ..Commit::record(r.clone())
        };
        store.commit(&r.key(), &first).expect("commit");
        let done = AtomicBool::new(false);
        let mut seen = HashSet::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                for round in 0..400u32 {
                    let i = round as usize % live.len();
                    let old = live[i].clone();
                    let new = if round % 2 == 0 {
                        OutboxEntry {
                            next_attempt_at: old.next_attempt_at + Duration::seconds(1),
                            ..old.clone()
                        }
                    } else {
                        entry(&r.key(), 1_000 + u128::from(round), at(1))
                    };
                    let replace = Commit {
                        outbox_remove: removing(&[&old]),
                        outbox_put: vec![new.clone()],
                        ..Commit::default()
                    };
                    store.commit(&r.key(), &replace).expect("replace");
                    live[i] = new;
                }
                done.store(true, Ordering::SeqCst);
            });
            while !done.load(Ordering::SeqCst) {
                seen.insert(store.outbox_len());
            }
        });
        assert_eq!(seen, HashSet::from([20]), "sizes read while entries moved");
        // Removing an entry already gone (2 was superseded) changes nothing.
        let gone = entry(&r.key(), 2, at(0));
        let again = Commit {
            outbox_remove: removing(&[&gone]),
            ..Commit::default()
        };
        store.commit(&r.key(), &again).expect("remove again");
        assert_eq!(store.outbox_len(), 20);
    }

    pub async fn an_outbox_entry_is_rescheduled_in_one_commit(store: &dyn Storage) {
        let r = maria("C-1", Some(at(600)));
        let k = r.key();
        let first = entry(&k, 1, at(0));
        let put = Commit {
            outbox_put: vec![first.clone()],
            ..Commit::record(r)
        };
        store.commit(&k, &put).expect("put");
        // A retry: the same id, removed under its old instant and put
        // under its new one, in one commit.
        let retry = OutboxEntry {
            attempts: 1,
            next_attempt_at: at(30),
            ..first.clone()
        };
        let move_it = Commit {
            outbox_remove: removing(&[&first]),
            outbox_put: vec![retry.clone()],
            ..Commit::default()
        };
        store.commit(&k, &move_it).expect("reschedule");
        assert_eq!(
            store.outbox_entry(first.id).expect("entry"),
            Some(retry.clone())
        );
        assert_eq!(store.outbox_len(), 1);
        assert_eq!(store.outbox_head().expect("head"), Some(at(30)));
        assert_eq!(
            store.due_outbox(at(0), 10, &no_busy()).expect("due"),
            (vec![], Some(at(30)))
        );
        assert_eq!(
            store.due_outbox(at(30), 10, &no_busy()).expect("due"),
            (vec![retry], None)
        );
    }

    pub async fn erasure_removes_the_case_and_what_holds_its_data(store: &dyn Storage) {
        // Maria has two cases; C-1 goes, C-2 stays.
        let mut one = maria("C-1", Some(at(60)));
        one.idempotency_keys = vec!["req-1".into()];
        let two = maria("C-2", Some(at(120)));
        let (e1, e2) = (entry(&one.key(), 1, at(0)), entry(&one.key(), 2, at(5)));
        let e3 = entry(&two.key(), 3, at(10));
        let write_one = Commit {
            outbox_put: vec![e1.clone(), e2.clone()],
            idempotency: Some(("req-1".into(), answer(at(0), "C-1"))),
            ..Commit::record(one.clone())
        };
        let write_two = Commit {
            outbox_put: vec![e3.clone()],
            idempotency: Some(("req-2".into(), answer(at(0), "C-2"))),
            ..Commit::record(two.clone())
        };
        store
            .commit_many(&[(&one.key(), &write_one), (&two.key(), &write_two)])
            .expect("commit");
        let email = store.contact(Channel::Email, MARIA_EMAIL);
        let phone = store.contact(Channel::Sms, MARIA_PHONE);
        store
            .opt_out(phone, OptOutVia::SmsStop, at(1))
            .expect("opt out");
        assert_eq!(
            sorted(store.cases_of(email).expect("cases of")),
            vec![one.key(), two.key()]
        );

        let erase = Commit {
            erase: true,
            outbox_remove: removing(&[&e1, &e2]),
            idempotency_remove: one.idempotency_keys.clone(),
            ..Commit::default()
        };
        store.commit(&one.key(), &erase).expect("erase");
        store.flush().await.expect("flush");

        assert_eq!(store.get(&one.key()).expect("get"), None);
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(120), two.key())),
            "C-1's schedule entry went with it"
        );
        assert_eq!(store.outbox_entry(e1.id).expect("entry"), None);
        assert_eq!(store.outbox_entry(e2.id).expect("entry"), None);
        assert_eq!(store.outbox_len(), 1);
        assert_eq!(
            store.due_outbox(at(600), 10, &no_busy()).expect("due"),
            (vec![e3.clone()], None)
        );
        assert_eq!(store.idempotent_response("req-1").expect("answer"), None);
        assert_eq!(store.cases_of(email).expect("cases of"), vec![two.key()]);
        assert_eq!(store.cases_of(phone).expect("cases of"), vec![two.key()]);
        let scanned: Vec<CaseRecord> = store.scan_cases().collect::<Result<_, _>>().expect("scan");
        assert_eq!(scanned, vec![two.clone()]);

        // The other case keeps everything; the opt-out outlives the erasure.
        assert_eq!(store.get(&two.key()).expect("get"), Some(two.clone()));
        assert_eq!(store.outbox_entry(e3.id).expect("entry"), Some(e3));
        assert_eq!(
            store.idempotent_response("req-2").expect("answer"),
            Some(answer(at(0), "C-2"))
        );
        assert_eq!(
            store.opted_out(phone).expect("opted out"),
            Some(OptOut {
                at: at(1),
                via: OptOutVia::SmsStop
            })
        );

        // The erased key can hold a new case afterwards.
        let again = jan("C-1", Some(at(30)));
        commit_record(store, &again);
        assert_eq!(store.get(&again.key()).expect("get"), Some(again.clone()));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(30), again.key()))
        );
        assert_eq!(store.cases_of(email).expect("cases of"), vec![two.key()]);
        assert_eq!(
            store
                .cases_of(store.contact(Channel::Email, JAN_EMAIL))
                .expect("cases of"),
            vec![again.key()]
        );
    }

    /// "Erasure destroys what the store keeps of a case": an answer or an
    /// outbox entry committed with the case, but not named by the erasure,
    /// is not readable once the erasure is durable.
    pub async fn erasure_destroys_what_it_does_not_name(store: &dyn Storage) {
        let r = maria("C-1", Some(at(60)));
        let leftover = entry(&r.key(), 1, at(0));
        let write = Commit {
            outbox_put: vec![leftover.clone()],
            idempotency: Some(("req-1".into(), answer(at(0), "C-1"))),
            ..Commit::record(r.clone())
        };
        store.commit(&r.key(), &write).expect("commit");
        let erase = Commit {
            erase: true,
            ..Commit::default()
        };
        store.commit(&r.key(), &erase).expect("erase");
        store.flush().await.expect("flush");

        assert_eq!(store.get(&r.key()).expect("get"), None);
        assert_eq!(store.idempotent_response("req-1").expect("answer"), None);
        assert_eq!(
            store.outbox_entry(leftover.id).expect("read"),
            None,
            "the leftover entry does not read back"
        );
        assert_eq!(
            store.due_outbox(at(600), 10, &no_busy()).expect("due"),
            (vec![], None),
            "nothing is left to send"
        );
    }

    /// A case named twice in one batch (a digest filing, a fallback) has
    /// one key: erasing it shreds what both changes wrote.
    pub async fn a_case_twice_in_one_batch_is_shredded_whole(store: &dyn Storage) {
        let r = maria("C-1", Some(at(60)));
        let (first, second) = (entry(&r.key(), 1, at(0)), entry(&r.key(), 2, at(0)));
        let a = Commit {
            outbox_put: vec![first.clone()],
            ..Commit::record(r.clone())
        };
        let b = Commit {
            outbox_put: vec![second.clone()],
            ..Commit::default()
        };
        store
            .commit_many(&[(&r.key(), &a), (&r.key(), &b)])
            .expect("one batch");
        assert!(store.outbox_entry(second.id).expect("read").is_some());
        let erase = Commit {
            erase: true,
            ..Commit::default()
        };
        store.commit(&r.key(), &erase).expect("erase");
        store.flush().await.expect("flush");
        for e in [&first, &second] {
            assert_eq!(store.outbox_entry(e.id).expect("read"), None, "{}", e.id);
        }
    }

    pub async fn marks_in_one_batch_keep_the_latest_send(store: &dyn Storage) {
        // Maria's two cases, a message of each sent; both filed in one batch.
        let (one, two) = (maria("C-1", Some(at(60))), maria("C-2", Some(at(60))));
        let (e1, e2) = (entry(&one.key(), 1, at(0)), entry(&two.key(), 2, at(0)));
        for (r, e) in [(&one, &e1), (&two, &e2)] {
            let put = Commit {
                outbox_put: vec![e.clone()],
                ..Commit::record(r.clone())
            };
            store.commit(&r.key(), &put).expect("put");
        }
        let contact = store.contact(Channel::Email, MARIA_EMAIL);
        let mark = |minute| DeliveredMark {
            at: at(minute),
            provider_id: Some(format!("p-{minute}")),
        };
        let filed = |e: &OutboxEntry, minute| Commit {
            delivered: Some((e.id, mark(minute))),
            last_sent: Some((contact, at(minute))),
            ..Commit::default()
        };
        let (f1, f2) = (filed(&e1, 20), filed(&e2, 10));
        store
            .commit_many(&[(&one.key(), &f1), (&two.key(), &f2)])
            .expect("one batch");
        assert_eq!(store.delivered_mark(e1.id).expect("mark"), Some(mark(20)));
        assert_eq!(store.delivered_mark(e2.id).expect("mark"), Some(mark(10)));
        // The later of the two sends paces the next one.
        assert_eq!(
            store
                .claim_send(contact, Duration::hours(1), at(30))
                .expect("claim"),
            Err(at(80))
        );
    }

    pub async fn a_commit_files_a_delivered_mark_and_the_last_send(store: &dyn Storage) {
        let r = maria("C-1", Some(at(60)));
        let sent = entry(&r.key(), 1, at(0));
        let put = Commit {
            outbox_put: vec![sent.clone()],
            ..Commit::record(r.clone())
        };
        store.commit(&r.key(), &put).expect("put");
        let contact = store.contact(Channel::Email, MARIA_EMAIL);
        let gap = Duration::hours(1);
        // The next send claims the contact before the earlier one is filed.
        assert_eq!(
            store.claim_send(contact, gap, at(30)).expect("claim"),
            Ok(())
        );
        let mark = DeliveredMark {
            at: at(5),
            provider_id: None,
        };
        let filed = Commit {
            delivered: Some((sent.id, mark.clone())),
            last_sent: Some((contact, at(5))),
            ..Commit::default()
        };
        store.commit(&r.key(), &filed).expect("filed");
        assert_eq!(store.delivered_mark(sent.id).expect("mark"), Some(mark));
        assert_eq!(
            store.claim_send(contact, gap, at(60)).expect("claim"),
            Err(at(90)),
            "an earlier send filed late does not move the last claim back"
        );
        let later = Commit {
            last_sent: Some((contact, at(100))),
            ..Commit::default()
        };
        store.commit(&r.key(), &later).expect("later");
        assert_eq!(
            store.claim_send(contact, gap, at(130)).expect("claim"),
            Err(at(160))
        );
    }

    pub async fn a_delivered_mark_lasts_as_long_as_its_outbox_entry(store: &dyn Storage) {
        let r = maria("C-1", Some(at(60)));
        let (sent, other) = (entry(&r.key(), 1, at(0)), entry(&r.key(), 2, at(0)));
        let put = Commit {
            outbox_put: vec![sent.clone(), other.clone()],
            ..Commit::record(r.clone())
        };
        store.commit(&r.key(), &put).expect("put");
        assert_eq!(store.delivered_mark(sent.id).expect("mark"), None);

        store
            .mark_delivered(sent.id, Some("SM0123456789".into()), at(1))
            .await
            .expect("mark delivered");
        store
            .mark_delivered(other.id, None, at(2))
            .await
            .expect("mark delivered");
        assert_eq!(
            store.delivered_mark(sent.id).expect("mark"),
            Some(DeliveredMark {
                at: at(1),
                provider_id: Some("SM0123456789".into())
            })
        );
        assert_eq!(
            store.delivered_mark(other.id).expect("mark"),
            Some(DeliveredMark {
                at: at(2),
                provider_id: None
            })
        );
        assert_eq!(
            store.delivered_mark(Uuid::from_u128(99)).expect("mark"),
            None
        );

        let done = Commit {
            outbox_remove: removing(&[&sent]),
            ..Commit::default()
        };
        store.commit(&r.key(), &done).expect("remove");
        assert_eq!(store.delivered_mark(sent.id).expect("mark"), None);
        assert!(store.delivered_mark(other.id).expect("mark").is_some());
    }

    pub async fn contacts_are_keyed_by_channel_and_normalised_address(store: &dyn Storage) {
        let email = store.contact(Channel::Email, MARIA_EMAIL);
        assert_eq!(
            store.contact(Channel::Email, "  Maria.Hernandez@EXAMPLE.com\n"),
            email
        );
        assert_ne!(store.contact(Channel::Sms, MARIA_EMAIL), email);
        assert_ne!(store.contact(Channel::Email, JAN_EMAIL), email);
        let phone = store.contact(Channel::Sms, MARIA_PHONE);
        assert_eq!(store.contact(Channel::Sms, " +12125550143 "), phone);
        assert_ne!(store.contact(Channel::Email, MARIA_PHONE), phone);

        // The salt the store hands out keys contacts the same way (the
        // engine computes them from it).
        let salt = store.contact_salt();
        assert_eq!(contact_of(&salt, Channel::Email, MARIA_EMAIL), email);
        assert_eq!(contact_of(&salt, Channel::Sms, MARIA_PHONE), phone);
        assert_eq!(store.contact_salt(), salt, "stable");
        assert_eq!(
            store.generated_unsubscribe_key(),
            store.generated_unsubscribe_key(),
            "stable"
        );

        let both = case("C-1", Some(MARIA_EMAIL), Some(MARIA_PHONE));
        assert_eq!(
            store.contacts_of(&both).into_iter().collect::<HashSet<_>>(),
            HashSet::from([email, phone])
        );
        assert_eq!(store.contacts_of(&both).len(), 2);
        let email_only = case("C-2", Some(MARIA_EMAIL), None);
        assert_eq!(store.contacts_of(&email_only), vec![email]);
        let phone_only = case("C-3", None, Some(JAN_PHONE));
        assert_eq!(
            store.contacts_of(&phone_only),
            vec![store.contact(Channel::Sms, JAN_PHONE)]
        );
    }

    pub async fn cases_of_follows_the_customer_address(store: &dyn Storage) {
        let email = store.contact(Channel::Email, MARIA_EMAIL);
        let phone = store.contact(Channel::Sms, MARIA_PHONE);
        let jan_email = store.contact(Channel::Email, JAN_EMAIL);
        assert_eq!(store.cases_of(email).expect("cases of"), vec![]);

        let mut one = maria("C-1", Some(at(60)));
        commit_record(store, &one);
        commit_record(store, &maria("C-2", None));
        commit_record(store, &jan("C-3", Some(at(10))));
        assert_eq!(
            sorted(store.cases_of(email).expect("cases of")),
            vec![key("C-1"), key("C-2")]
        );
        assert_eq!(
            sorted(store.cases_of(phone).expect("cases of")),
            vec![key("C-1"), key("C-2")]
        );
        assert_eq!(
            store.cases_of(jan_email).expect("cases of"),
            vec![key("C-3")]
        );

        // C-1's customer changes address and drops the phone.
        one.case = case("C-1", Some(JAN_EMAIL), None);
        commit_record(store, &one);
        assert_eq!(store.cases_of(email).expect("cases of"), vec![key("C-2")]);
        assert_eq!(store.cases_of(phone).expect("cases of"), vec![key("C-2")]);
        assert_eq!(
            sorted(store.cases_of(jan_email).expect("cases of")),
            vec![key("C-1"), key("C-3")]
        );
    }

    pub async fn a_case_is_found_by_its_short_link_until_erased(store: &dyn Storage) {
        use tidings::domain::link::{case_stamp, link_contact, short_code};
        let salt = store.contact_salt();
        let one = maria("C-1", Some(at(60)));
        let code = short_code(&salt, &one.key(), case_stamp(one.case.created_at));
        let entry = link_contact(&salt, &code);
        assert_eq!(store.cases_of(entry).expect("cases of"), vec![]);
        commit_record(store, &one);
        commit_record(store, &maria("C-2", None));
        assert_eq!(store.cases_of(entry).expect("cases of"), vec![key("C-1")]);
        // Not one of the customer's contacts: digests never see it.
        assert!(!store.contacts_of(&one.case).contains(&entry));
        // Another record of the case keeps the entry, once.
        commit_record(store, &one);
        assert_eq!(store.cases_of(entry).expect("cases of"), vec![key("C-1")]);
        let erase = Commit {
            erase: true,
            ..Commit::default()
        };
        store.commit(&one.key(), &erase).expect("erase");
        assert_eq!(store.cases_of(entry).expect("cases of"), vec![]);
    }

    pub async fn opt_out_and_opt_in_round_trip(store: &dyn Storage) {
        let email = store.contact(Channel::Email, MARIA_EMAIL);
        let phone = store.contact(Channel::Sms, MARIA_PHONE);
        assert_eq!(store.opted_out(email).expect("opted out"), None);
        assert!(!store.opt_in(email).expect("opt in"), "nothing to lift");

        store
            .opt_out(email, OptOutVia::UnsubscribeLink, at(5))
            .expect("opt out");
        assert_eq!(
            store.opted_out(email).expect("opted out"),
            Some(OptOut {
                at: at(5),
                via: OptOutVia::UnsubscribeLink
            })
        );
        assert_eq!(
            store.opted_out(phone).expect("opted out"),
            None,
            "per channel"
        );
        assert_eq!(
            store
                .opted_out(store.contact(Channel::Sms, MARIA_EMAIL))
                .expect("opted out"),
            None,
            "the same text on another channel is another contact"
        );

        // A second opt-out replaces the first.
        store
            .opt_out(email, OptOutVia::Provider, at(6))
            .expect("opt out");
        assert_eq!(
            store.opted_out(email).expect("opted out"),
            Some(OptOut {
                at: at(6),
                via: OptOutVia::Provider
            })
        );

        assert!(store.opt_in(email).expect("opt in"), "there was one");
        assert_eq!(store.opted_out(email).expect("opted out"), None);
        assert!(!store.opt_in(email).expect("opt in"), "already lifted");
    }

    pub async fn claim_send_paces_one_recipient(store: &dyn Storage) {
        let gap = Duration::hours(1);
        let maria = store.contact(Channel::Email, MARIA_EMAIL);
        let jan = store.contact(Channel::Email, JAN_EMAIL);

        assert_eq!(store.claim_send(maria, gap, at(0)).expect("claim"), Ok(()));
        // The claim counts as the last send.
        assert_eq!(
            store.claim_send(maria, gap, at(10)).expect("claim"),
            Err(at(60))
        );
        assert_eq!(
            store.claim_send(maria, gap, at(10)).expect("claim"),
            Err(at(60)),
            "a refusal claims nothing"
        );
        assert_eq!(store.claim_send(jan, gap, at(10)).expect("claim"), Ok(()));
        assert_eq!(store.claim_send(maria, gap, at(60)).expect("claim"), Ok(()));
        assert_eq!(
            store.claim_send(maria, gap, at(61)).expect("claim"),
            Err(at(120))
        );
        // A zero gap never refuses.
        assert_eq!(
            store
                .claim_send(maria, Duration::zero(), at(61))
                .expect("claim"),
            Ok(())
        );

        // A send recorded directly counts the same way.
        store.set_last_sent(jan, at(300)).expect("set last sent");
        assert_eq!(
            store.claim_send(jan, gap, at(330)).expect("claim"),
            Err(at(360))
        );
        assert_eq!(store.claim_send(jan, gap, at(360)).expect("claim"), Ok(()));
    }

    pub async fn the_last_inbound_message_is_kept_per_contact(store: &dyn Storage) {
        let whatsapp = store.contact(Channel::WhatsApp, MARIA_PHONE);
        let sms = store.contact(Channel::Sms, MARIA_PHONE);
        assert_eq!(store.last_inbound(whatsapp).expect("read"), None);
        store.note_inbound(whatsapp, at(10)).expect("note");
        assert_eq!(store.last_inbound(whatsapp).expect("read"), Some(at(10)));
        // The same number on another channel is another contact.
        assert_eq!(store.last_inbound(sms).expect("read"), None);
        store.note_inbound(whatsapp, at(70)).expect("note");
        assert_eq!(store.last_inbound(whatsapp).expect("read"), Some(at(70)));
        // A report that arrives late never moves the instant back.
        store.note_inbound(whatsapp, at(20)).expect("note");
        assert_eq!(store.last_inbound(whatsapp).expect("read"), Some(at(70)));
    }

    /// The sled store drops every answer older than `before` (and any whose
    /// case was erased), whether or not a live case lists its key in
    /// `idempotency_keys`; answers at or after `before` stay. The answers
    /// here are listed by no case, so both readings of the trait's doc
    /// agree on them.
    pub async fn idempotent_answers_are_kept_until_pruned(store: &dyn Storage) {
        assert_eq!(store.idempotent_response("req-old").expect("answer"), None);
        let k = key("C-1");
        let writes = [
            ("req-old", at(-3 * 24 * 60)),
            ("req-edge", at(-24 * 60)),
            ("req-new", at(0)),
        ];
        // The first comes with the case, the others on their own.
        let mut commit = Commit::record(maria("C-1", Some(at(60))));
        for (req, when) in writes {
            commit.idempotency = Some((req.into(), answer(when, "C-1")));
            store.commit(&k, &commit).expect("commit");
            commit = Commit::default();
        }
        for (req, when) in writes {
            assert_eq!(
                store.idempotent_response(req).expect("answer"),
                Some(answer(when, "C-1"))
            );
        }
        assert_eq!(
            store.idempotent_response("req-other").expect("answer"),
            None
        );

        assert_eq!(
            store.prune_idempotency(at(-24 * 60)).expect("prune"),
            1,
            "only the answer older than `before`"
        );
        assert_eq!(store.idempotent_response("req-old").expect("answer"), None);
        assert_eq!(
            store.idempotent_response("req-edge").expect("answer"),
            Some(answer(at(-24 * 60), "C-1")),
            "exactly at `before` is not older"
        );
        assert!(
            store
                .idempotent_response("req-new")
                .expect("answer")
                .is_some()
        );
        assert_eq!(store.prune_idempotency(at(-24 * 60)).expect("prune"), 0);
        // The case the answers were committed with is untouched.
        assert!(store.get(&k).expect("get").is_some());
    }

    pub async fn scans_yield_every_case(store: &dyn Storage) {
        assert_eq!(store.scan_cases().count(), 0);
        assert_eq!(store.scan_case_statuses().count(), 0);
        let mut records = Vec::new();
        for (id, status) in [
            ("C-3", Status::OnHold),
            ("C-1", Status::Open),
            ("C-2", Status::Resolved),
            ("C-4", Status::Open),
        ] {
            let mut r = maria(id, Some(at(60)));
            r.case.status = status;
            commit_record(store, &r);
            records.push(r);
        }
        // Another source sorts by source first.
        let mut other = jan("Z-9", None);
        other.case.source = "billing".into();
        commit_record(store, &other);
        records.push(other);

        let scanned: Vec<CaseRecord> = store.scan_cases().collect::<Result<_, _>>().expect("scan");
        let keys: Vec<CaseKey> = scanned.iter().map(CaseRecord::key).collect();
        assert_eq!(
            keys,
            sorted(records.iter().map(CaseRecord::key).collect()),
            "in key order"
        );
        records.sort_by_key(CaseRecord::key);
        assert_eq!(scanned, records);

        let statuses: Vec<Status> = store
            .scan_case_statuses()
            .collect::<Result<_, _>>()
            .expect("scan statuses");
        assert_eq!(
            sorted(statuses),
            sorted(records.iter().map(|r| r.case.status).collect())
        );
    }

    pub async fn flush_completes_and_a_store_with_space_has_room(store: &dyn Storage) {
        store.flush().await.expect("flush an empty store");
        commit_record(store, &maria("C-1", Some(at(60))));
        store.flush().await.expect("flush");
        // Concurrent flushes both finish.
        let (a, b) = tokio::join!(store.flush(), store.flush());
        a.expect("flush");
        b.expect("flush");
        store.room(Writer::Intake).expect("room for intake");
        store
            .room(Writer::Internal)
            .expect("room for internal writes");
    }

    pub async fn a_backup_verifies(store: &dyn Storage) {
        let r = maria("C-1", Some(at(60)));
        let write = Commit {
            outbox_put: vec![entry(&r.key(), 1, at(0))],
            idempotency: Some(("req-1".into(), answer(at(0), "C-1"))),
            ..Commit::record(r.clone())
        };
        store.commit(&r.key(), &write).expect("commit");
        store
            .opt_out(
                store.contact(Channel::Sms, MARIA_PHONE),
                OptOutVia::SmsStop,
                at(1),
            )
            .expect("opt out");

        let mut bytes = Vec::new();
        let made = store.backup(&mut bytes).await.expect("backup");
        assert!(made.entries > 0, "the backup holds entries");
        let checked = verify_backup(&bytes).expect("the backup verifies");
        assert_eq!(checked.entries, made.entries);
        assert_eq!(checked.sha256, made.sha256);
        assert_eq!(checked.trees, made.trees);

        let mut damaged = bytes.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 1;
        assert!(
            verify_backup(&damaged).is_err(),
            "a damaged copy is refused"
        );
        // Taking a backup changes nothing.
        assert_eq!(store.get(&r.key()).expect("get"), Some(r));
    }

    pub async fn a_reopened_store_keeps_what_was_flushed<H, F>(
        fixture: Fixture<H>,
        reopen: impl FnOnce(Fixture<H>) -> F,
    ) where
        F: Future<Output = Fixture<H>>,
    {
        let mut r = maria("C-1", Some(at(60)));
        r.idempotency_keys = vec!["req-1".into()];
        let e = entry(&r.key(), 1, at(0));
        let (salt, unsubscribe_key, email, phone) = {
            let store = &*fixture.store;
            let write = Commit {
                outbox_put: vec![e.clone()],
                idempotency: Some(("req-1".into(), answer(at(0), "C-1"))),
                ..Commit::record(r.clone())
            };
            store.commit(&r.key(), &write).expect("commit");
            let email = store.contact(Channel::Email, MARIA_EMAIL);
            let phone = store.contact(Channel::Sms, MARIA_PHONE);
            store
                .opt_out(phone, OptOutVia::SmsStop, at(1))
                .expect("opt out");
            assert_eq!(
                store
                    .claim_send(email, Duration::hours(1), at(2))
                    .expect("claim"),
                Ok(())
            );
            store
                .mark_delivered(e.id, Some("SM1".into()), at(3))
                .await
                .expect("mark delivered");
            store.flush().await.expect("flush");
            (
                store.contact_salt(),
                store.generated_unsubscribe_key(),
                email,
                phone,
            )
        };

        let fixture = reopen(fixture).await;
        let store = &*fixture.store;
        assert_eq!(store.get(&r.key()).expect("get"), Some(r.clone()));
        assert_eq!(
            store.next_due_case().expect("next due"),
            Some((at(60), r.key()))
        );
        assert_eq!(store.outbox_entry(e.id).expect("entry"), Some(e.clone()));
        assert_eq!(store.outbox_len(), 1);
        assert_eq!(store.outbox_head().expect("head"), Some(at(0)));
        assert_eq!(
            store.idempotent_response("req-1").expect("answer"),
            Some(answer(at(0), "C-1"))
        );
        assert_eq!(
            store.delivered_mark(e.id).expect("mark"),
            Some(DeliveredMark {
                at: at(3),
                provider_id: Some("SM1".into())
            })
        );
        // Contacts key the same way, so opt-outs and pacing still apply.
        assert_eq!(store.contact_salt(), salt);
        assert_eq!(store.contact(Channel::Email, MARIA_EMAIL), email);
        assert_eq!(store.generated_unsubscribe_key(), unsubscribe_key);
        assert_eq!(
            store.opted_out(phone).expect("opted out"),
            Some(OptOut {
                at: at(1),
                via: OptOutVia::SmsStop
            })
        );
        assert_eq!(
            store
                .claim_send(email, Duration::hours(1), at(30))
                .expect("claim"),
            Err(at(62))
        );
        assert_eq!(store.cases_of(email).expect("cases of"), vec![r.key()]);

        // And it still works: an erasure after the reopen takes it all.
        let erase = Commit {
            erase: true,
            outbox_remove: removing(&[&e]),
            idempotency_remove: r.idempotency_keys.clone(),
            ..Commit::default()
        };
        store.commit(&r.key(), &erase).expect("erase");
        store.flush().await.expect("flush");
        assert_eq!(store.get(&r.key()).expect("get"), None);
        assert_eq!(store.next_due_case().expect("next due"), None);
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(store.idempotent_response("req-1").expect("answer"), None);
        assert_eq!(store.cases_of(email).expect("cases of"), vec![]);
    }
}

// Backends.

async fn open_sled() -> Option<Fixture<tempfile::TempDir>> {
    let home = tempfile::tempdir().expect("a temporary directory");
    let store = SledStore::open(home.path()).expect("a fresh sled store opens");
    Some(Fixture {
        store: Box::new(store),
        home,
    })
}

async fn reopen_sled(fixture: Fixture<tempfile::TempDir>) -> Fixture<tempfile::TempDir> {
    let Fixture { store, home } = fixture;
    drop(store);
    let store = SledStore::open(home.path()).expect("the sled store opens again");
    Fixture {
        store: Box::new(store),
        home,
    }
}

conformance!(sled, open: open_sled, reopen: reopen_sled);

fn pg_config(db: &peers::PgDatabase) -> PgStoreConfig {
    PgStoreConfig {
        url: db.url.clone(),
        pool_size: 4,
        lease: std::time::Duration::from_secs(30),
    }
}

async fn open_postgres() -> Option<Fixture<peers::PgDatabase>> {
    let home = peers::postgres()?.database();
    let store = PgStore::open(&pg_config(&home)).expect("a fresh PostgreSQL store opens");
    Some(Fixture {
        store: Box::new(store),
        home,
    })
}

async fn reopen_postgres(fixture: Fixture<peers::PgDatabase>) -> Fixture<peers::PgDatabase> {
    let Fixture { store, home } = fixture;
    drop(store);
    let store = PgStore::open(&pg_config(&home)).expect("the PostgreSQL store opens again");
    Fixture {
        store: Box::new(store),
        home,
    }
}

conformance!(postgres, open: open_postgres, reopen: reopen_postgres);
