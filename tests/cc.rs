//! Several recipients per case, end to end through the binary: a customer
//! (email, English, New York) and two people in CC, one by email in
//! Indonesian in Jakarta, one by SMS only in Polish in Warsaw. Each gets
//! their own messages in their language and zone (read from smtp-sink's
//! dumps and the SMS file transport's files), one CC's one-click opt-out
//! leaves the others receiving, and `DELETE` leaves none of the three
//! addresses in the store files. `preview` and `simulate` show what each
//! of them gets, and a ticket system's webhook keeps them on the case.
//!
//! Skips when `smtp-sink` is not installed, unless `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use peers::*;
use serde_json::{Value, json};

const MARIA: &str = "maria.cc-customer.2d41@example.com";
const JAN: &str = "jan.cc-first.8a03@example.net";
const ZOFIA: &str = "+48601444333";
const ZOFIA_DIGITS: &str = "48601444333";

fn case() -> Value {
    json!({
        "subject": "Replacement router has not shipped",
        "customer": {"name": "Maria Hernandez", "email": MARIA,
            "timezone": "America/New_York", "locale": "en", "channels": ["email"]},
        "cc": [
            {"name": "Jan Setiawan", "email": JAN,
                "timezone": "Asia/Jakarta", "locale": "id"},
            {"name": "Zofia Nowak", "phone": ZOFIA,
                "timezone": "Europe/Warsaw", "locale": "pl", "channels": ["sms"]}
        ]
    })
}

/// One SMS the file transport wrote: (tidings' message id, to, body).
fn texts(dir: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for f in files_under(dir) {
        let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(&f).unwrap_or_default()) else {
            continue;
        };
        let id = v["message_id"].as_str().unwrap_or_default();
        let id = id
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap_or_default();
        out.push((
            id.to_owned(),
            v["to"].as_str().unwrap_or_default().to_owned(),
            v["body"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    out
}

/// The `To:` header of a dumped message.
fn to_header(sink: &Sink, mail: &Mail) -> String {
    let raw = std::fs::read_to_string(sink.dir.path().join(&mail.file)).unwrap_or_default();
    raw.replace("\r\n ", " ")
        .lines()
        .find_map(|l| l.strip_prefix("To: ").map(str::to_owned))
        .unwrap_or_default()
}

/// The `List-Unsubscribe` link of a dumped message.
fn unsubscribe_link(sink: &Sink, mail: &Mail) -> String {
    let raw = std::fs::read_to_string(sink.dir.path().join(&mail.file)).unwrap_or_default();
    raw.replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: ").map(str::to_owned))
        .map(|l| l.trim_matches(['<', '>']).to_owned())
        .unwrap_or_else(|| panic!("no List-Unsubscribe in {}", mail.file))
}

/// Whether `text` states `promised` on the wall clock of `tz`: its zone
/// abbreviation and its hour and minute (as each language writes them).
fn states(text: &str, promised: DateTime<Utc>, tz: Tz) -> bool {
    let local = promised.with_timezone(&tz);
    let zone = local.format("%Z").to_string();
    let times = [
        local.format("%-I:%M").to_string(),
        local.format("%H:%M").to_string(),
        local.format("%H.%M").to_string(),
    ];
    text.contains(&zone) && times.iter().any(|t| text.contains(t.as_str()))
}

/// Each message of the case by id: (recipient, status, promised).
type Filed = HashMap<String, (String, String, Option<DateTime<Utc>>)>;

fn filed(messages: &[Value]) -> Filed {
    messages
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                (
                    m["recipient"].as_str().unwrap_or_default().to_owned(),
                    m["status"].as_str().unwrap_or_default().to_owned(),
                    instant(&m["promised_next_update_at"]),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_two_ccs_each_in_their_language_and_zone_opt_out_and_erasure() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let rules = rules(
        "updates",
        &[
            ("every", "2s"),
            ("progress", "email, sms"),
            ("created", "email, sms"),
        ],
    );
    let mut d = Setup::new(rules)
        .smtp(sink.port)
        .email("quiet_hours: off")
        .email("min_gap: 0s")
        .extra(
            "sms:
  transport: file
  file_dir: outbox/sms
  quiet_hours: off
  min_gap: 0s
",
        )
        .start()
        .await;
    let sms_dir = d.dir.path().join("outbox/sms");
    d.put_case("CC-1", &case()).await;

    // The acknowledgement and two updates for each of the three.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mails, ok) = sink
        .wait_for(deadline, |m| {
            let to = |a: &str| m.iter().filter(|x| to_header(&sink, x).contains(a)).count();
            to(MARIA) >= 3 && to(JAN) >= 3
        })
        .await;
    assert!(
        ok,
        "the customer and the CC by email got 3 messages each: {} mails",
        mails.len()
    );
    let texted = eventually(
        Duration::from_secs(20),
        "3 SMS to the CC by SMS",
        async || {
            let t = texts(&sms_dir);
            if t.len() >= 3 {
                Ok(t)
            } else {
                Err(format!("{} SMS", t.len()))
            }
        },
    )
    .await;
    let case = d.get_case("CC-1").await;
    assert_eq!(case["cc"].as_array().map(Vec::len), Some(2), "{case}");
    assert_eq!(case["cc"][1]["timezone"], "Europe/Warsaw");
    let messages = d.messages("CC-1").await;
    let history = filed(&messages);

    // Email: each to its own person, filed under them, in their language
    // and zone.
    let (mut maria, mut jan) = (0, 0);
    for m in &mails {
        let to = to_header(&sink, m);
        let (who, _, promised) = history
            .get(m.id())
            .unwrap_or_else(|| panic!("{} is not in the history", m.file));
        let promised = promised.unwrap_or_else(|| panic!("{}: no promise", m.file));
        match who.as_str() {
            "customer" => {
                maria += 1;
                assert!(to.contains(MARIA) && !to.contains(JAN), "{to}");
                assert!(
                    m.text.contains("Maria") && !m.text.contains("Halo"),
                    "{}",
                    m.text
                );
                assert!(
                    states(&m.text, promised, Tz::America__New_York),
                    "{}",
                    m.text
                );
            }
            "cc:0" => {
                jan += 1;
                assert!(to.contains(JAN) && !to.contains(MARIA), "{to}");
                assert!(m.text.contains("Halo Jan"), "{}", m.text);
                assert!(!m.text.contains("Maria"), "{}", m.text);
                assert!(states(&m.text, promised, Tz::Asia__Jakarta), "{}", m.text);
            }
            other => panic!("an email to {other}: {}", m.file),
        }
    }
    // SMS: only to the SMS-only CC (the customer and Jan have no phone),
    // in Polish, Warsaw time.
    for (id, to, body) in &texted {
        let (who, _, promised) = history
            .get(id)
            .unwrap_or_else(|| panic!("SMS {id} is not in the history"));
        assert_eq!((who.as_str(), to.as_str()), ("cc:1", ZOFIA));
        assert!(body.contains("Dzien dobry"), "{body}");
        let promised = promised.expect("a promise");
        assert!(states(body, promised, Tz::Europe__Warsaw), "{body}");
    }
    println!(
        "before opt-out: {maria} emails to the customer (en, EST), {jan} to cc:0 (id, WIB), {} SMS to cc:1 (pl, CET)",
        texted.len()
    );

    // Jan opts out with his own one-click link.
    let jans = mails
        .iter()
        .find(|m| to_header(&sink, m).contains(JAN))
        .expect("an email to Jan");
    let link = unsubscribe_link(&sink, jans);
    let marias = mails
        .iter()
        .find(|m| to_header(&sink, m).contains(MARIA))
        .expect("an email to Maria");
    assert_ne!(link, unsubscribe_link(&sink, marias), "one link per person");
    let one_click = d
        .http
        .post(&link)
        .form(&[("List-Unsubscribe", "One-Click")]);
    d.call(one_click, 200, "Jan's one-click unsubscribe").await;
    let unsubscribed = SystemTime::now();
    let (mails_before, sms_before) = (sink.mails().len(), texted.len());
    // The others keep receiving: three more updates each.
    let (after, ok) = sink
        .wait_for(Instant::now() + Duration::from_secs(20), |m| {
            m.iter()
                .filter(|x| x.since(unsubscribed) > 1.0 && to_header(&sink, x).contains(MARIA))
                .count()
                >= 3
        })
        .await;
    assert!(ok, "the customer stopped receiving after a CC's opt-out");
    let texted = eventually(Duration::from_secs(20), "3 more SMS to cc:1", async || {
        let t = texts(&sms_dir);
        if t.len() >= sms_before + 3 {
            Ok(t)
        } else {
            Err(format!("{} SMS", t.len()))
        }
    })
    .await;
    let late_to_jan: Vec<&Mail> = after
        .iter()
        .filter(|m| m.since(unsubscribed) > 1.0 && to_header(&sink, m).contains(JAN))
        .collect();
    assert!(
        late_to_jan.is_empty(),
        "{} email(s) to Jan after his opt-out",
        late_to_jan.len()
    );
    // His updates are filed as not sent (opted out); nothing fell back
    // (email is his only channel).
    let history = filed(&d.messages("CC-1").await);
    let opted_out = history
        .values()
        .filter(|(who, status, _)| who == "cc:0" && status == "cancelled")
        .count();
    assert!(opted_out >= 1, "Jan's later updates are filed as not sent");
    println!(
        "after cc:0's opt-out: {} more emails (all to the customer), {} more SMS to cc:1, {opted_out} of cc:0's updates not sent",
        after.len() - mails_before,
        texted.len() - sms_before
    );

    // The log names no one.
    let log = d.log();
    for secret in [MARIA, JAN, ZOFIA, ZOFIA_DIGITS] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }

    // Erasure: none of the three addresses is left in the store files.
    d.call(d.http.delete(d.url("/v1/cases/CC-1")), 204, "DELETE CC-1")
        .await;
    d.stop();
    let needles = [
        ("customer", MARIA),
        ("cc:0", JAN),
        ("cc:1", ZOFIA),
        ("cc:1 digits", ZOFIA_DIGITS),
        ("cc:1 name", "Zofia Nowak"),
    ];
    let (files, bytes, found) = scan(&d.store_files(), &needles);
    println!("after DELETE: scanned {files} store files, {bytes} bytes: {found:?}");
    assert!(
        found.is_empty(),
        "erased addresses survive in the store: {found:?}"
    );
}

#[test]
fn preview_and_simulate_show_what_each_recipient_gets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(
        "updates",
        &[
            ("every", "1d"),
            ("progress", "email, sms"),
            ("created", "email, sms"),
        ],
    );
    let setup = Setup::new(rules).extra("sms:\n  transport: file\n  file_dir: outbox/sms\n");
    let cfg = setup.write(dir.path(), 0).display().to_string();
    let file = dir.path().join("CC-2.json");
    std::fs::write(&file, case().to_string()).expect("case file");
    let file = file.display().to_string();

    let (code, out, err) = tidings(
        &["preview", "--config", &cfg, "--case", &file],
        &setup.env_pairs(),
    );
    assert_eq!(code, 0, "{out}{err}");
    // The customer's email first, then each CC's own message.
    let (maria, rest) = out.split_once("to: cc:0").expect("cc:0's message");
    let (jan, zofia) = rest.split_once("to: cc:1").expect("cc:1's message");
    assert!(maria.contains(MARIA) && maria.contains("EST"), "{maria}");
    assert!(
        jan.contains(JAN) && jan.contains("Halo Jan") && jan.contains("WIB"),
        "{jan}"
    );
    assert!(!jan.contains(MARIA), "{jan}");
    assert!(
        zofia.starts_with('\n') || zofia.contains("Segments"),
        "{zofia}"
    );
    assert!(
        zofia.contains(ZOFIA) && zofia.contains("Dzien dobry") && zofia.contains("CET"),
        "{zofia}"
    );

    let (code, out, err) = tidings(
        &[
            "simulate",
            "--config",
            &cfg,
            "--case",
            &file,
            "--days",
            "2",
            "--start",
            "2026-11-23T10:00:00Z",
        ],
        &setup.env_pairs(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines = |who: &str| -> Vec<&str> {
        out.lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().any(|w| w == who))
            .collect()
    };
    // The acknowledgement and the next day's update (the one after falls
    // past the two days), each at their own time.
    let (c, j, z) = (lines("customer"), lines("cc:0"), lines("cc:1"));
    assert_eq!((c.len(), j.len(), z.len()), (2, 2, 2), "{out}");
    assert!(c.iter().all(|l| l.contains("EST")), "{out}");
    assert!(
        j.iter().all(|l| l.contains("WIB") && l.contains("email")),
        "{out}"
    );
    assert!(
        z.iter().all(|l| l.contains("CET") && l.contains("sms")),
        "{out}"
    );
    assert!(out.contains("# cc:1: Europe/Warsaw, pl"), "{out}");
}

#[tokio::test]
async fn a_ticket_systems_webhook_keeps_the_people_in_cc() {
    let maps = tempfile::tempdir().expect("tempdir");
    let mapping = maps.path().join("freshdesk.yaml");
    std::fs::write(&mapping, "default_region: GB\npublic_comments: note\n").expect("mapping");
    let token = "freshdesk-shared-token-cc01";
    let d = Setup::new(rules("updates", &[]))
        .extra(&format!(
            "inbound:\n  - system: freshdesk\n    source: helpdesk\n    secret_env: FRESHDESK_WEBHOOK_TOKEN\n    mapping: {}\n",
            mapping.display()
        ))
        .env("FRESHDESK_WEBHOOK_TOKEN", token)
        .start()
        .await;
    // Created through the API with a CC, then updated by the help desk's
    // own webhook, which knows nothing of CCs.
    d.put_case("1207", &case()).await;
    let body =
        std::fs::read(repo("tests/fixtures/inbound/freshdesk/created.json")).expect("fixture");
    let r = d
        .http
        .post(d.url("/v1/inbound/freshdesk/helpdesk"))
        .header("content-type", "application/json")
        .header("x-tidings-token", token)
        .body(body);
    d.call(r, 200, "Freshdesk's webhook on 1207").await;
    let case = d.get_case("1207").await;
    assert_eq!(
        case["customer"]["phone"], "+447911123456",
        "the help desk's customer"
    );
    assert_eq!(case["cc"].as_array().map(Vec::len), Some(2), "{case}");
    assert_eq!(case["cc"][1]["locale"], "pl");
}
