//! Erasure is real: after `DELETE /v1/cases/{id}`, the customer's email
//! address, phone number, name, those of the person in CC, and the case's
//! note and subject are in no file of the store, byte for byte: sled's old
//! log segments included, or on PostgreSQL (`TIDINGS_TEST_STORE=postgres`)
//! every file of the cluster, table files and WAL, after a checkpoint.
//!
//! The daemon runs as a child process (the real binary) with file
//! transports, so the messages it sends land in an outbox folder beside the
//! store. That folder is delivery output, not the store: it is scanned and
//! reported, not judged. The daemon's log is judged: it must hold none of it.

mod peers;

use std::time::Duration;

use peers::{Daemon, Sent, Setup, TOKEN, count, rules, scan};
use serde_json::json;

const EMAIL: &str = "quintessa.erasure-canary.7f3a9@example.org";
/// The address the case had first, replaced before the erasure.
const OLD_EMAIL: &str = "quintessa.first-address.1c4e@example.org";
const PHONE: &str = "+48601987654";
const PHONE_DIGITS: &str = "48601987654";
const NAME: &str = "Quintessa Erasurefield";
const SUBJECT: &str = "Canary subject 5d1e: broken heat pump";
const NOTE: &str = "Canary note 9c2b: the engineer replaced the compressor valve";
/// A person copied on the case: their messages go by SMS, their email
/// address is only on the case.
const CC_EMAIL: &str = "ottoline.cc-canary.4b8e@example.net";
const CC_PHONE: &str = "+48601555777";
const CC_PHONE_DIGITS: &str = "48601555777";
const CC_NAME: &str = "Ottoline Copiedfield";

/// The acknowledgement and notes by email and SMS, progress a month away;
/// file transports, so the messages land in `outbox/` beside the store.
async fn start() -> Daemon {
    let rules = rules(
        "updates",
        &[
            ("every", "30d"),
            ("created", "email, sms"),
            ("note", "email, sms"),
        ],
    );
    Setup::new(rules)
        .email("file_dir: outbox/email")
        .email("quiet_hours: off")
        .email("min_gap: 1h")
        .delivery(3, "200ms", "1s")
        .extra(
            "log:
  level: tidings=debug,info
sms:
  transport: file
  file_dir: outbox/sms
  quiet_hours: off
  min_gap: 0s
",
        )
        .start()
        .await
}

/// Waits until `done(sent, pending)` holds for the case's messages.
async fn wait_for(d: &Daemon, done: impl Fn(usize, usize) -> bool) -> (usize, usize) {
    let count = |h: &[Sent], status: &str| h.iter().filter(|m| m.status == status).count();
    let h = d
        .wait_history("ERASE-1", Duration::from_secs(20), "messages", |h| {
            done(count(h, "sent"), count(h, "pending"))
        })
        .await;
    (count(&h, "sent"), count(&h, "pending"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_no_personal_data_in_the_store_files() {
    let mut d = start().await;

    // A neighbour case that stays: the store must still be readable and
    // hold it afterwards (erasure must not take others with it).
    let neighbour = json!({
        "subject": "Neighbour case stays",
        "customer": {"name": "Nadia Neighbour", "email": "nadia@example.com", "channels": ["email"]}
    });
    d.call(
        d.http.put(d.url("/v1/cases/KEEP-1")).json(&neighbour),
        201,
        "PUT KEEP-1",
    )
    .await;

    let case = json!({
        "subject": SUBJECT,
        "customer": {
            "name": NAME,
            "email": EMAIL,
            "phone": PHONE,
            "timezone": "Europe/Warsaw",
            "locale": "en",
            "channels": ["email", "sms"]
        },
        "cc": [{
            "name": CC_NAME,
            "email": CC_EMAIL,
            "phone": CC_PHONE,
            "timezone": "Asia/Jakarta",
            "locale": "id",
            "channels": ["sms"]
        }],
        "assignee": "Jordan",
        "fields": {"contract": "canary"}
    });
    // First with an address the ticket system then corrects: the old one
    // lives on only in sled's old segments, and must go with the case.
    let mut first = case.clone();
    first["customer"]["email"] = json!(OLD_EMAIL);
    let put = d
        .http
        .put(d.url("/v1/cases/ERASE-1"))
        .header("Idempotency-Key", "erase-put-0")
        .json(&first);
    d.call(put, 201, "PUT ERASE-1").await;
    // The acknowledgement: the customer's email and SMS, the CC's SMS.
    wait_for(&d, |sent, _| sent >= 3).await;
    let put = d
        .http
        .put(d.url("/v1/cases/ERASE-1"))
        .header("Idempotency-Key", "erase-put-1")
        .json(&case);
    d.call(put, 200, "PUT ERASE-1 again").await;
    // The acknowledgement went out by email and SMS; now two notes: the
    // first reaches the new address, the second's email is held back by the
    // one-hour minimum gap and waits, rendered, in the outbox (a deferred
    // message must keep its case). The CC gets each by SMS.
    for (n, body) in [NOTE, "A second note"].into_iter().enumerate() {
        let note = d
            .http
            .post(d.url("/v1/cases/ERASE-1/events"))
            .header("Idempotency-Key", format!("erase-note-{n}"))
            .json(&json!({"type": "note", "body": body, "author": "Jordan"}));
        d.call(note, 200, "note on ERASE-1").await;
        wait_for(&d, |sent, _| sent >= 6 + 2 * n).await;
    }
    let (sent, pending) = wait_for(&d, |sent, pending| sent >= 8 && pending >= 1).await;
    println!("before DELETE: {sent} sent, {pending} pending");
    // Deliberate: let sled's periodic flush (every 500 ms) write the sent
    // state out too, so the erasure has old log segments to deal with.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let del = d.http.delete(d.url("/v1/cases/ERASE-1")).bearer_auth(TOKEN);
    let resp = del.send().await.expect("DELETE");
    assert_eq!(resp.status(), 204);
    let gone = d.http.get(d.url("/v1/cases/ERASE-1")).bearer_auth(TOKEN);
    assert_eq!(gone.send().await.expect("GET").status(), 404);
    // SIGTERM, then wait: the daemon flushes the store on its way out.
    d.stop();

    let needles = [
        ("email", EMAIL),
        ("replaced email", OLD_EMAIL),
        ("phone", PHONE),
        ("phone digits", PHONE_DIGITS),
        ("name", NAME),
        ("subject", SUBJECT),
        ("note", NOTE),
        ("cc email", CC_EMAIL),
        ("cc phone", CC_PHONE),
        ("cc phone digits", CC_PHONE_DIGITS),
        ("cc name", CC_NAME),
    ];
    let root = d.dir.path().to_owned();
    // sled's files, or on PostgreSQL every file of the cluster (table
    // files and WAL) after a checkpoint.
    let store = d.store_files();
    let (files, bytes, in_store) = scan(&store, &needles);
    println!(
        "store {}: scanned {files} files, {bytes} bytes",
        store.display()
    );
    for (f, what, n) in &in_store {
        println!("  FOUND {what} x{n} in {}/{f}", store.display());
    }
    let (ofiles, obytes, in_outbox) = scan(&root.join("outbox"), &needles);
    println!(
        "outbox (delivery output of the file transports, not the store): {ofiles} files, {obytes} bytes, {} hits",
        in_outbox.len()
    );
    for (f, what, n) in &in_outbox {
        println!("  outbox/{f}: {what} x{n}");
    }
    let log = std::fs::read(d.log_path()).unwrap_or_default();
    let in_log: Vec<_> = needles
        .iter()
        .filter(|(_, n)| count(&log, n.as_bytes()) > 0)
        .map(|(w, _)| *w)
        .collect();
    println!(
        "daemon log: {} bytes, personal data found: {in_log:?}",
        log.len()
    );

    // The store still opens and holds the neighbour, and only it.
    d.spawn().await;
    assert_eq!(
        d.get_case("KEEP-1").await["subject"],
        "Neighbour case stays"
    );
    let gone = d.http.get(d.url("/v1/cases/ERASE-1")).bearer_auth(TOKEN);
    assert_eq!(gone.send().await.expect("GET").status(), 404);
    d.stop();

    assert!(
        in_outbox.iter().any(|(_, w, _)| w == "email"),
        "the messages were delivered to the outbox before erasure"
    );
    assert!(
        in_outbox.iter().any(|(_, w, _)| w == "cc phone"),
        "the CC's messages were delivered to the outbox before erasure"
    );
    assert!(in_log.is_empty(), "the daemon log holds {in_log:?}");
    assert!(
        in_store.is_empty(),
        "erased personal data survives in the store files: {in_store:?}"
    );
}
