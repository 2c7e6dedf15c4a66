//! Several replicas on one PostgreSQL: three real daemons, each with a data
//! dir and a port of its own, on one database of the shared throwaway
//! cluster (`peers::postgres`), all sending to one Postfix `smtp-sink`.
//! What is judged is what arrived there, by `Message-ID`, against the
//! cases' histories as any replica shows them.
//!
//! - `three_replicas_send_each_update_once`: cases loaded with `tidings
//!   import`, each with one progress update due at one instant (a cron
//!   rule) a little after the three are up; every update arrives exactly
//!   once, none is lost, and every replica sent a share.
//!   `TIDINGS_REPLICA_CASES` sets how many (default 1,000, about a minute
//!   in a debug build on two cores; the full run is 10,000),
//!   `TIDINGS_REPLICA_LEAD_SECS` how long after the import starts the
//!   updates fall due (default 8 s + 1 s for 50 cases: the import runs at
//!   80 to 150 cases/s in a debug build).
//! - `kill_one_replica_mid_burst`: bursts of due messages (cases imported
//!   before the start; new ones PUT across the replicas meanwhile; before
//!   each kill a burst of new cases; each case with an acknowledgement and
//!   one progress update 10 s later) while one replica after another is
//!   killed with `kill -9`, at a random instant in the burst (0–100 ms
//!   after it starts, then the first moment the replica holds claimed
//!   messages, read from the database just before the kill and right
//!   after it), and restarted. The last one killed
//!   stays down: the two others must settle what it held, and send what
//!   was due at that kill, within the lease (3 s) + 5 s. Nothing is lost;
//!   duplicates (a kill between the sink's acceptance and the delivered
//!   mark) are printed, each traced to its kill, and stay under 0.1 % on
//!   runs of 20 kills or more. `TIDINGS_REPLICA_KILLS` (default 5; the
//!   full run is 20), `TIDINGS_REPLICA_SEED` (default 1),
//!   `TIDINGS_REPLICA_BURST` (cases imported before the start, default
//!   150), `TIDINGS_REPLICA_BURST_PUTS` (cases PUT in the burst before each
//!   kill, default 30), `TIDINGS_REPLICA_INTO_BURST_MS` (the most the
//!   kill waits into the burst, default 100; 0 kills the moment the
//!   replica is first seen holding claims, nearly always as its first
//!   sends are accepted), `TIDINGS_REPLICA_KILL_WHEN_HOLDING=0` (kill at
//!   the random instant itself, whether the replica holds claims or not),
//!   `TIDINGS_REPLICA_GAP_MIN_MS`/`_MAX_MS` (time between a restart and
//!   the next burst, default 1000–4000) and
//!   `TIDINGS_REPLICA_MAX_DUP_PCT` (default 0.1 on runs of 20 kills or
//!   more, not checked on shorter ones) set the run.
//!
//! The full runs:
//! `TIDINGS_REPLICA_CASES=10000 TIDINGS_REPLICA_KILLS=20 cargo test --release --test replicas -- --nocapture`.
//! Skips when PostgreSQL or smtp-sink is missing, unless
//! `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Timelike, Utc};
use peers::*;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Both tests load the machine; they run one after the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const REPLICAS: usize = 3;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name).map(|v| v.parse()) {
        Ok(Ok(v)) => v,
        _ => default,
    }
}

/// The sample case for case `id` (the body of its PUT), mailed to an
/// address of its own, in UTC.
fn case_for(id: &str) -> Value {
    let mut case = case_on(&["email"]);
    case["customer"]["email"] = json!(format!("{}@example.org", id.to_lowercase()));
    case["customer"]["timezone"] = json!("UTC");
    case
}

/// `tidings import` of the cases `ids` into the store `setup` names,
/// before any replica runs on it; returns how long it took.
fn import(setup: &Setup, ids: &[String]) -> Duration {
    let dir = tempfile::Builder::new()
        .prefix("tidings-replicas-import-")
        .tempdir()
        .expect("import dir");
    let config = setup.write(dir.path(), free_port());
    let file = dir.path().join("cases.jsonl");
    let lines: Vec<String> = ids
        .iter()
        .map(|id| {
            let mut case = case_for(id);
            case["id"] = json!(id);
            case.to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write the cases");
    let started = Instant::now();
    let (code, out, err) = tidings(
        &[
            "import",
            "--config",
            &config.display().to_string(),
            "--source",
            "helpdesk",
            &file.display().to_string(),
        ],
        &setup.env_pairs(),
    );
    assert_eq!(code, 0, "import:\n{out}{err}");
    started.elapsed()
}

/// The emails a replica counts as sent since it started.
fn sent_metric(scrape: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.starts_with("tidings_messages_total{")
                && l.contains("channel=\"email\"")
                && l.contains("result=\"sent\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A replica's sent count, or 0 when it does not answer.
async fn scrape_sent(d: &Daemon) -> f64 {
    scrape(d).await.0
}

/// A replica's sent count and its delivered-mark window histogram
/// (`tidings_delivered_mark_seconds`: sum, count, count within 10 ms).
async fn scrape(d: &Daemon) -> (f64, [f64; 3]) {
    let Ok(r) = d.http.get(d.url("/metrics")).send().await else {
        return (0.0, [0.0; 3]);
    };
    let text = r.text().await.unwrap_or_default();
    let value = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let marks = [
        value("tidings_delivered_mark_seconds_sum "),
        value("tidings_delivered_mark_seconds_count "),
        value("tidings_delivered_mark_seconds_bucket{le=\"0.01\"}"),
    ];
    (sent_metric(&text), marks)
}

/// Every case in `ids` as GET shows it (`None`: 404), asked of the
/// replicas at `urls` in turn, eight at a time; a case no replica answers
/// for fails the test.
async fn get_cases(urls: &[String], ids: &[String]) -> BTreeMap<String, Option<Value>> {
    const WORKERS: usize = 8;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<String> = ids.iter().skip(w).step_by(WORKERS).cloned().collect();
        let (http, urls) = (http.clone(), urls.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for (i, id) in mine.into_iter().enumerate() {
                let mut last = String::new();
                let mut got = None;
                for t in 0..2 * urls.len() {
                    let url = &urls[(i + w + t) % urls.len()];
                    let r = http
                        .get(format!("{url}/v1/cases/{id}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 404 => {
                            got = Some(None);
                            break;
                        }
                        Ok(r) if r.status().is_success() => {
                            got = Some(Some(r.json::<Value>().await.expect("a case")));
                            break;
                        }
                        other => last = format!("{url}: {other:?}"),
                    }
                }
                let got = got.unwrap_or_else(|| panic!("GET {id}: no replica answered: {last}"));
                out.push((id, got));
            }
            out
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.expect("a GET worker"));
    }
    all
}

/// The messages of a case as GET showed it.
fn messages(case: &Value) -> &[Value] {
    case["messages"].as_array().map_or(&[], Vec::as_slice)
}

/// The case id in a subject (`… [ID]`).
fn subject_case(subject: &str) -> &str {
    subject
        .rsplit('[')
        .next()
        .map_or("", |s| s.trim_end_matches(']'))
}

/// How the mails at the sink add up.
struct Arrivals {
    /// `Message-ID` → when each copy arrived, first first.
    at: HashMap<String, Vec<SystemTime>>,
    /// Case id (from the subject) → mails.
    per_case: HashMap<String, usize>,
    total: usize,
}

impl Arrivals {
    fn of(mails: &[Mail]) -> Self {
        let mut a = Self {
            at: HashMap::new(),
            per_case: HashMap::new(),
            total: mails.len(),
        };
        for m in mails {
            // `mails` come oldest first.
            a.at.entry(m.id().to_owned()).or_default().push(m.arrived);
            *a.per_case
                .entry(subject_case(&m.subject).to_owned())
                .or_default() += 1;
        }
        a
    }

    /// Copies beyond the first, by `Message-ID`.
    fn same_id_copies(&self) -> usize {
        self.at.values().map(|t| t.len() - 1).sum()
    }

    fn first(&self, mid: &str) -> Option<SystemTime> {
        self.at.get(mid).and_then(|t| t.first().copied())
    }

    fn last(&self, mid: &str) -> Option<SystemTime> {
        self.at.get(mid).and_then(|t| t.last().copied())
    }
}

/// Files in the sink's dump dir (complete or not): cheap to poll.
fn dumped(sink: &Sink) -> usize {
    std::fs::read_dir(sink.dir.path()).map_or(0, Iterator::count)
}

fn since(t: SystemTime, since: SystemTime) -> f64 {
    t.duration_since(since)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
}

#[tokio::test]
async fn three_replicas_send_each_update_once() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    let n: usize = env_or("TIDINGS_REPLICA_CASES", 1_000);
    let lead = env_or("TIDINGS_REPLICA_LEAD_SECS", 8 + n as u64 / 50);
    let db = cluster.database();
    let sink = Sink::start(&bin).await;

    // One progress update per case, at one instant `lead` from now (a
    // cron with seconds, once a day), and nothing on creation.
    let due = (Utc::now() + chrono::TimeDelta::seconds(lead as i64))
        .with_nanosecond(0)
        .expect("a whole second");
    let rules = format!(
        "rules:\n  - name: burst\n    when: {{ status: [open] }}\n    cron: \"{} {} {} * * *\"\n    channels: [email]\n    template: progress\n",
        due.second(),
        due.minute(),
        due.hour()
    );
    let setup = Setup::on_store(rules, TestStore::on(&db))
        .smtp(sink.port)
        .lease("5s")
        .extra("digest:\n  window: 0s\n");
    let ids: Vec<String> = (1..=n).map(|i| format!("R-{i}")).collect();
    let took = import(&setup, &ids);

    let mut replicas: Vec<Daemon> = (0..REPLICAS).map(|_| setup.clone().launch()).collect();
    for d in &mut replicas {
        d.wait_ready().await;
    }
    let ready = Utc::now();
    assert!(
        ready < due,
        "the import ({:.1} s) and the start ran past the due instant: raise TIDINGS_REPLICA_LEAD_SECS (now {lead})",
        took.as_secs_f64()
    );
    assert_eq!(dumped(&sink), 0, "nothing is due before {due}");

    // Every update goes out (waited for at the sink, then in the histories).
    let deadline = Instant::now()
        + (due - Utc::now()).to_std().unwrap_or_default()
        + Duration::from_secs(60 + n as u64 / 20);
    while dumped(&sink) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} updates arrived; replica logs' tails:\n{}",
            dumped(&sink),
            replicas
                .iter()
                .map(|d| d
                    .log()
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n"))
                .collect::<Vec<_>>()
                .join("\n--\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let urls: Vec<String> = replicas.iter().map(|d| d.url("")).collect();
    let mut cases = get_cases(&urls, &ids).await;
    loop {
        let pending: Vec<String> = cases
            .iter()
            .filter(|(_, c)| {
                let c = c.as_ref().expect("an imported case");
                !messages(c)
                    .iter()
                    .any(|m| m["kind"] == "progress" && m["status"] == "sent")
            })
            .map(|(id, _)| id.clone())
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} cases have no update sent, e.g. {:?}",
            pending.len(),
            pending
                .iter()
                .take(3)
                .map(|id| &cases[id])
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        cases.extend(get_cases(&urls, &pending).await);
    }
    let mut per_replica = [0.0; REPLICAS];
    for (i, d) in replicas.iter().enumerate() {
        per_replica[i] = scrape_sent(d).await;
    }
    for d in &mut replicas {
        d.stop();
    }

    // What arrived, against what the histories record.
    let mails = sink.mails();
    let arrivals = Arrivals::of(&mails);
    let mut recorded = HashSet::new();
    let mut lost = Vec::new();
    let mut not_sent = Vec::new();
    let mut extra_updates = 0;
    for (id, c) in &cases {
        let c = c.as_ref().expect("an imported case");
        let progress: Vec<&Value> = messages(c)
            .iter()
            .filter(|m| m["kind"] == "progress")
            .collect();
        extra_updates += progress.len().saturating_sub(1);
        for m in progress {
            let mid = m["id"].as_str().expect("a message id");
            if m["status"] != "sent" {
                not_sent.push(format!("{id}: {m}"));
                continue;
            }
            recorded.insert(mid.to_owned());
            if !arrivals.at.contains_key(mid) {
                lost.push(format!("{id}: {mid}"));
            }
        }
    }
    let unrecorded = arrivals
        .at
        .keys()
        .filter(|mid| !recorded.contains(*mid))
        .count();
    let same_id = arrivals.same_id_copies();
    let per_case_extra: usize = arrivals.per_case.values().map(|k| k - 1).sum();
    let first = mails.iter().map(|m| m.arrived).min().expect("mails");
    let last = mails.iter().map(|m| m.arrived).max().expect("mails");
    let due_sys = SystemTime::from(due);
    let spread = since(last, first);
    println!(
        "replicas: {REPLICAS} on one database, lease 5s; {n} cases imported in {:.1} s; one update each due at {due}",
        took.as_secs_f64()
    );
    println!(
        "replicas: {} emails arrived, {} recorded as sent; first {:+.2} s, last {:+.2} s from the due instant ({:.0} msg/s)",
        arrivals.total,
        recorded.len(),
        since(first, due_sys),
        since(last, due_sys),
        (arrivals.total.saturating_sub(1)) as f64 / spread.max(0.001)
    );
    println!(
        "replicas: sent per replica (tidings_messages_total): {}",
        per_replica.map(|v| format!("{v:.0}")).join(" / ")
    );
    println!(
        "replicas: duplicates {same_id} (same Message-ID), {} (another message for the same update), {per_case_extra} (mails beyond one a case); unrecorded arrivals {unrecorded}",
        extra_updates
    );
    println!("replicas: lost {}", lost.len());
    assert!(lost.is_empty(), "recorded as sent, never arrived: {lost:?}");
    assert!(not_sent.is_empty(), "updates not sent: {not_sent:?}");
    assert_eq!(recorded.len(), n, "one update recorded a case");
    assert_eq!(same_id, 0, "updates sent twice");
    assert_eq!(extra_updates, 0, "an update planned twice");
    assert_eq!(per_case_extra, 0, "a case mailed twice");
    assert_eq!(unrecorded, 0, "arrivals no history records");
    assert_eq!(arrivals.per_case.len(), n, "every case mailed");
    assert!(
        per_replica.iter().all(|v| *v > 0.0),
        "every replica sends a share: {per_replica:?}"
    );
}

/// How one PUT was answered: its status, or no answer at all.
type Answer = Result<u16, String>;

/// PUTs a new case every 100 ms until `stop`, each to the next replica in
/// `urls` (one that is down refuses at once); each case's id and answer.
async fn load(urls: Vec<String>, stop: Arc<AtomicBool>) -> Vec<(String, Answer)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut answers = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = format!("K-{n}");
        let answer = put(&http, &urls[n % urls.len()], &id).await;
        answers.push((id, answer));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answers
}

/// PUTs the new case `id` to the replica at `url`.
async fn put(http: &reqwest::Client, url: &str, id: &str) -> Answer {
    http.put(format!("{url}/v1/cases/{id}"))
        .bearer_auth(TOKEN)
        .json(&case_for(id))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// PUTs the new cases `ids`, `width` at a time, each to the next replica
/// in `urls`; each case's id and answer.
async fn put_cases(urls: Vec<String>, ids: Vec<String>, width: usize) -> Vec<(String, Answer)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let workers: Vec<_> = (0..width)
        .map(|w| {
            let mine: Vec<String> = ids.iter().skip(w).step_by(width).cloned().collect();
            let (http, urls) = (http.clone(), urls.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for (i, id) in mine.into_iter().enumerate() {
                    let answer = put(&http, &urls[(w + i) % urls.len()], &id).await;
                    answers.push((id, answer));
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.expect("a PUT worker"));
    }
    answers
}

/// What a replica held in the database at `at`: the outbox entries
/// (message ids) and the due cases (case ids) its leases still covered.
/// A replica's claims carry its process id (`PID-RANDOM`, see
/// `src/store/postgres.rs`); a case key is `source \0 id`.
#[derive(Debug, Default)]
struct Held {
    messages: Vec<String>,
    /// Those of `messages` whose delivered mark (the provider's acceptance)
    /// was on file.
    marked: Vec<String>,
    cases: Vec<String>,
}

impl Held {
    /// Both readings, each id once.
    fn and(mut self, other: Self) -> Self {
        for (mine, theirs) in [
            (&mut self.messages, other.messages),
            (&mut self.marked, other.marked),
            (&mut self.cases, other.cases),
        ] {
            for id in theirs {
                if !mine.contains(&id) {
                    mine.push(id);
                }
            }
        }
        self
    }
}

/// What replica `pid` holds claimed at `at`, read on one connection kept
/// open for the run (a `psql` started every few milliseconds would load
/// the cores the replicas run on).
async fn held(db: &tokio_postgres::Client, pid: u32, at: SystemTime) -> Held {
    let ms = i64::try_from(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit");
    let owner = format!("{pid}-%");
    let rows = db
        .query(
            "SELECT 'm', id::text, EXISTS (SELECT 1 FROM delivered d WHERE d.id = outbox.id)
               FROM outbox WHERE lease_owner LIKE $1 AND lease_until > $2
             UNION ALL SELECT 'c', encode(case_key, 'escape'), false
               FROM cases WHERE lease_owner LIKE $1 AND lease_until > $2",
            &[&owner, &ms],
        )
        .await
        .expect("read what the replica holds");
    let mut h = Held::default();
    for row in rows {
        let (kind, id, marked): (&str, String, bool) = (row.get(0), row.get(1), row.get(2));
        if kind == "m" {
            if marked {
                h.marked.push(id.clone());
            }
            h.messages.push(id);
        } else {
            h.cases.push(
                id.split_once("\\000")
                    .map_or(id.as_str(), |(_, id)| id)
                    .to_owned(),
            );
        }
    }
    h
}

#[tokio::test]
async fn kill_one_replica_mid_burst() {
    let Some(cluster) = postgres() else { return };
    let Some(bin) = smtp_sink() else { return };
    let _alone = ONE_AT_A_TIME.lock().await;
    const LEASE_SECS: f64 = 3.0;
    let kills: usize = env_or("TIDINGS_REPLICA_KILLS", 5);
    let seed: u64 = env_or("TIDINGS_REPLICA_SEED", 1);
    let burst: usize = env_or("TIDINGS_REPLICA_BURST", 150);
    let burst_puts: usize = env_or("TIDINGS_REPLICA_BURST_PUTS", 30);
    let when_holding = env_or("TIDINGS_REPLICA_KILL_WHEN_HOLDING", 1) == 1;
    let into_burst_ms: u64 = env_or("TIDINGS_REPLICA_INTO_BURST_MS", 100);
    let gap: (u64, u64) = (
        env_or("TIDINGS_REPLICA_GAP_MIN_MS", 1000),
        env_or("TIDINGS_REPLICA_GAP_MAX_MS", 4000),
    );
    let max_dup_pct: f64 = env_or(
        "TIDINGS_REPLICA_MAX_DUP_PCT",
        if kills >= 20 { 0.1 } else { 100.0 },
    );
    let db = cluster.database();
    let (watch, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    let sink = Sink::start(&bin).await;
    // Per case an acknowledgement, and one progress update 10 s after it:
    // one and no more, so none is superseded by a newer one or goes stale
    // while the burst (or a lease) holds it back, and every message due
    // is owed.
    let rules = "rules:\n  - name: once\n    when: { status: [open] }\n    every: 10s\n    max_updates: 1\n    channels: [email]\n    template: progress\non:\n  created: { template: acknowledgement, channels: [email] }\n";
    let setup = Setup::on_store(rules, TestStore::on(&db))
        .smtp(sink.port)
        .lease("3s")
        .extra("digest:\n  window: 0s\n");
    let imported: Vec<String> = (1..=burst).map(|i| format!("B-{i}")).collect();
    import(&setup, &imported);

    let mut replicas: Vec<Daemon> = (0..REPLICAS).map(|_| setup.clone().launch()).collect();
    for d in &mut replicas {
        d.wait_ready().await;
    }
    let urls: Vec<String> = replicas.iter().map(|d| d.url("")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(urls.clone(), stop.clone()));

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kill_at = Vec::new();
    let mut restart_ms = Vec::new();
    let mut per_replica = [0.0; REPLICAS];
    let started = Instant::now();
    let mut victim = 0;
    let mut held_at_kill = Vec::new();
    let mut bursts = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(gap.0..=gap.1))).await;
        victim = k % REPLICAS;
        let pid = replicas[victim].child.as_ref().expect("running").id();
        per_replica[victim] += scrape_sent(&replicas[victim]).await;
        // A burst of new cases (their acknowledgements due at once, their
        // updates 10 s later), and the kill while the replica holds some
        // of it claimed.
        let ids = (1..=burst_puts)
            .map(|i| format!("P{}-{i}", k + 1))
            .collect();
        bursts.push(tokio::spawn(put_cases(urls.clone(), ids, 6)));
        // Into the burst by a random time (the replica first seen holding
        // claims is nearly always just starting its first sends: killed
        // then, it would die at one phase of a send, not at any).
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=into_burst_ms))).await;
        // What it holds is read just before the kill and right after it
        // (the others may take it over as soon as its session is gone).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = held(&watch, pid, SystemTime::now()).await;
        while when_holding && before.messages.is_empty() {
            assert!(
                Instant::now() < deadline,
                "replica {victim} (pid {pid}) held no claimed message for 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            before = held(&watch, pid, SystemTime::now()).await;
        }
        kill_at.push(SystemTime::now());
        replicas[victim].kill();
        let after = held(&watch, pid, *kill_at.last().expect("a kill")).await;
        held_at_kill.push(before.and(after));
        if k + 1 < kills {
            let t = Instant::now();
            replicas[victim].spawn().await;
            restart_ms.push(t.elapsed().as_millis());
        }
    }
    // The last one killed stays down; no more new cases.
    let last_kill = Instant::now();
    stop.store(true, Ordering::SeqCst);
    // What it held claimed in the outbox is settled by the others.
    let claimed = held_at_kill
        .last()
        .map(|h| h.messages.clone())
        .unwrap_or_default();
    let settled_after = if claimed.is_empty() {
        Duration::ZERO
    } else {
        let ids = claimed
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("SELECT count(*) FROM outbox WHERE id IN ({ids})");
        while cluster.psql(&db.name, &sql).trim() != "0" {
            assert!(
                last_kill.elapsed() < Duration::from_secs(60),
                "the last killed replica's claimed messages still in the outbox a minute later: {claimed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last_kill.elapsed()
    };
    let mut answers = loader.await.expect("the loader");
    for b in bursts {
        answers.extend(b.await.expect("a burst"));
    }
    let run = started.elapsed();
    let survivors: Vec<String> = (0..REPLICAS)
        .filter(|i| *i != victim)
        .map(|i| urls[i].clone())
        .collect();

    // Every case answered 2xx (and every imported one): its acknowledgement
    // and its update sent.
    let acked: Vec<String> = imported
        .iter()
        .cloned()
        .chain(
            answers
                .iter()
                .filter(|(_, a)| a.as_ref().is_ok_and(|s| (200..300).contains(s)))
                .map(|(id, _)| id.clone()),
        )
        .collect();
    let refused = answers.len() + burst - acked.len();
    // A replica down refuses the connection (or a kill cuts the answer
    // off); one starting may answer 503; nothing else.
    let odd: Vec<&(String, Answer)> = answers
        .iter()
        .filter(|(_, a)| {
            a.as_ref()
                .is_ok_and(|s| !(200..300).contains(s) && *s != 503)
        })
        .collect();
    assert!(odd.is_empty(), "PUTs answered neither 2xx nor 503: {odd:?}");
    assert!(acked.len() > burst, "no PUT was answered 2xx");
    // A PUT that got no answer (a kill cut it off) may have been stored:
    // then its messages are owed as well.
    let unanswered: Vec<String> = answers
        .iter()
        .filter(|(_, a)| a.is_err())
        .map(|(id, _)| id.clone())
        .collect();
    let asked: Vec<String> = acked.iter().chain(&unanswered).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let cases = loop {
        for (i, d) in replicas.iter_mut().enumerate() {
            let exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                i == victim || exited.is_none(),
                "replica {i} exited ({exited:?}); its log's tail:\n{}",
                d.log()
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        let mut cases = get_cases(&survivors, &asked).await;
        for id in &acked {
            assert!(
                cases[id].is_some(),
                "{id} was acknowledged and is not stored"
            );
        }
        cases.retain(|_, c| c.is_some());
        let mut waiting = Vec::new();
        for (id, c) in &cases {
            let c = c.as_ref().expect("stored");
            for m in messages(c).iter().filter(|m| m["status"] != "sent") {
                waiting.push(format!(
                    "{id} {} {} {} ({}); the case's messages: {}",
                    m["id"],
                    m["kind"],
                    m["status"],
                    m["error"],
                    messages(c)
                        .iter()
                        .map(|m| format!(
                            "{} {} due {} sent {} promised {}",
                            m["kind"],
                            m["status"],
                            m["due_at"],
                            m["sent_at"],
                            m["promised_next_update_at"]
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            if c["next_update_at"].is_string() {
                waiting.push(format!("{id} next_update_at {}", c["next_update_at"]));
            }
        }
        if waiting.is_empty() {
            break cases;
        }
        assert!(
            Instant::now() < deadline,
            "{} messages not sent 90 s after the last kill: {:?}",
            waiting.len(),
            &waiting[..waiting.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let all_done = last_kill.elapsed();
    let mut marks = [0.0; 3];
    for (i, d) in replicas.iter_mut().enumerate() {
        if i != victim {
            let (sent, m) = scrape(d).await;
            per_replica[i] += sent;
            marks = [marks[0] + m[0], marks[1] + m[1], marks[2] + m[2]];
            d.stop();
        }
    }

    // What arrived, against the histories.
    let mails = sink.mails();
    let arrivals = Arrivals::of(&mails);
    let mut recorded: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut lost = Vec::new();
    for (id, c) in &cases {
        let msgs = messages(c.as_ref().expect("stored"));
        let kinds: Vec<&str> = msgs.iter().filter_map(|m| m["kind"].as_str()).collect();
        let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(
            (count("created"), count("progress")),
            (1, 1),
            "{id}: {kinds:?}"
        );
        for m in msgs {
            let mid = m["id"].as_str().expect("a message id").to_owned();
            if !arrivals.at.contains_key(&mid) {
                lost.push(format!("{id}: {mid} ({})", m["kind"]));
            }
            let due = instant(&m["due_at"]).unwrap_or_else(|| panic!("due_at in {m}"));
            recorded.insert(mid, due);
        }
    }
    // Every mail belongs to a stored case that records it.
    let unknown: Vec<&String> = arrivals
        .at
        .keys()
        .filter(|mid| !recorded.contains_key(*mid))
        .collect();
    assert!(
        unknown.is_empty(),
        "arrived, and no case records them: {unknown:?}"
    );
    let of_unanswered = unanswered
        .iter()
        .filter(|id| cases.contains_key(*id))
        .count();

    // How long after each kill the last message due at that instant arrived.
    let finish: Vec<f64> = kill_at
        .iter()
        .map(|k| {
            let at = DateTime::<Utc>::from(*k);
            recorded
                .iter()
                .filter(|(_, due)| **due <= at)
                .filter_map(|(mid, _)| arrivals.first(mid))
                .map(|t| since(t, *k))
                .fold(0.0, f64::max)
        })
        .collect();
    // How long after each kill the last of what the killed replica held
    // claimed arrived: its outbox entries, and the updates of the due cases
    // it had claimed.
    let mut never = Vec::new();
    let taken_over: Vec<f64> = kill_at
        .iter()
        .zip(&held_at_kill)
        .map(|(k, h)| {
            let case_updates = h.cases.iter().filter_map(|id| {
                let c = cases.get(id)?.as_ref()?;
                let m = messages(c).iter().find(|m| m["kind"] == "progress")?;
                Some(m["id"].as_str()?.to_owned())
            });
            let mut latest = 0.0_f64;
            for mid in h.messages.iter().cloned().chain(case_updates) {
                // A copy sent again by the replica taking over, if any.
                match arrivals.last(&mid) {
                    Some(t) => latest = latest.max(since(t, *k)),
                    None => never.push(mid),
                }
            }
            latest
        })
        .collect();
    let last_finish = finish.last().copied().unwrap_or_default();
    let last_taken_over = taken_over.last().copied().unwrap_or_default();
    let worst = finish.iter().copied().fold(0.0, f64::max);
    let duplicates = arrivals.same_id_copies();
    // Where each duplicate came from: its copies against the kill nearest
    // its first one, and whether the killed replica held it unmarked.
    let mut explained = 0;
    for (mid, t) in arrivals.at.iter().filter(|(_, t)| t.len() > 1) {
        let Some(i) = (0..kill_at.len()).min_by(|a, b| {
            since(t[0], kill_at[*a])
                .abs()
                .total_cmp(&since(t[0], kill_at[*b]).abs())
        }) else {
            continue;
        };
        let h = &held_at_kill[i];
        let held = match (h.messages.contains(mid), h.marked.contains(mid)) {
            (true, true) => ", held it, its delivered mark on file",
            (true, false) => ", held it, no delivered mark yet",
            _ => "",
        };
        explained += usize::from(h.messages.contains(mid) && !h.marked.contains(mid));
        println!(
            "replicas: duplicate {mid}: kill {} (replica {}{held}): copies {} s from it",
            i + 1,
            i % REPLICAS,
            t.iter()
                .map(|t| format!("{:+.2}", since(*t, kill_at[i])))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if held.is_empty() {
            // Not a kill's: what the replicas logged of it (every life).
            for (r, d) in replicas.iter().enumerate() {
                for line in d.log().lines().filter(|l| l.contains(mid.as_str())) {
                    println!("replicas:   replica {r}: {line}");
                }
            }
        }
    }
    let ratio = 100.0 * duplicates as f64 / recorded.len().max(1) as f64;
    println!(
        "replicas: seed {seed}, {kills} kill -9 (replicas in turn) over {:.1} s, lease {LEASE_SECS} s; {burst} cases imported, {} PUT, {refused} not answered 2xx",
        run.as_secs_f64(),
        answers.len()
    );
    println!(
        "replicas: restart to ready at most {} ms",
        restart_ms.iter().max().copied().unwrap_or_default()
    );
    let last_held = held_at_kill
        .last()
        .map_or((0, 0), |h| (h.messages.len(), h.cases.len()));
    println!(
        "replicas: after the last kill, the killed replica's claims ({} messages, {} due cases) arrived within {last_taken_over:.2} s, what was due at it within {last_finish:.2} s (bound {:.0} s); all work done after {:.1} s",
        last_held.0,
        last_held.1,
        LEASE_SECS + 5.0,
        all_done.as_secs_f64()
    );
    println!(
        "replicas: the last killed replica's {} claimed outbox entries were settled by the others {:.2} s after the kill (bound {:.0} s)",
        claimed.len(),
        settled_after.as_secs_f64(),
        LEASE_SECS + 5.0
    );
    println!(
        "replicas: kills at (s from the first): {}",
        kill_at
            .iter()
            .map(|k| format!("{:.2}", since(*k, kill_at[0])))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "replicas: per kill, claims held (messages+cases) and when the last arrived (s): {}",
        held_at_kill
            .iter()
            .zip(&taken_over)
            .map(|(h, t)| format!("{}+{} {t:.1}", h.messages.len(), h.cases.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "replicas: per kill, what was due at it arrived within (s): {}; worst {worst:.2}",
        finish
            .iter()
            .map(|f| format!("{f:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "replicas: delivered marks on file {:.1} ms after the sink's acceptance on average, {:.0} of {:.0} within 10 ms (the survivors' last lives, tidings_delivered_mark_seconds)",
        1000.0 * marks[0] / marks[1].max(1.0),
        marks[2],
        marks[1]
    );
    println!(
        "replicas: sent per replica (tidings_messages_total, each life scraped before its kill): {}",
        per_replica.map(|v| format!("{v:.0}")).join(" / ")
    );
    println!(
        "replicas: {} messages recorded as sent, {} arrivals; {of_unanswered} cases stored though a kill cut their PUT's answer off",
        recorded.len(),
        arrivals.total
    );
    println!(
        "replicas: duplicates {duplicates} ({ratio:.3} %), each with the same Message-ID; {explained} of them held by the killed replica, accepted by the sink before the kill with no delivered mark on file at it"
    );
    println!("replicas: lost {}", lost.len());
    assert!(lost.is_empty(), "recorded as sent, never arrived: {lost:?}");
    assert!(
        never.is_empty(),
        "claimed by a killed replica, never arrived: {never:?}"
    );
    assert!(
        settled_after.as_secs_f64() <= LEASE_SECS + 5.0,
        "the survivors settled the last killed replica's claims after {settled_after:?}"
    );
    assert!(
        last_taken_over <= LEASE_SECS + 5.0,
        "the survivors took {last_taken_over:.2} s to finish the last killed replica's claims"
    );
    assert!(
        last_finish <= LEASE_SECS + 5.0,
        "the survivors took {last_finish:.2} s to finish what was due at the last kill"
    );
    assert!(
        ratio < max_dup_pct,
        "duplicates {ratio:.3} % ≥ {max_dup_pct} %"
    );
}
