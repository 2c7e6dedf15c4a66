//! What the acknowledged-write guarantee costs: the API answers 2xx only
//! after the store's flush (`flush_async`, an fsync of sled's log). This
//! measures, on the real store on disk and in the same run:
//!
//! - one writer: commit alone vs commit + flush (the price per request);
//! - eight writers at once: commit + flush, where concurrent flushes share
//!   one fsync (sled's group commit), vs eight writers without a flush.
//!
//! Each write is a transaction like an intake's (a sealed 2 KB value under
//! an idempotency key). Run: `cargo bench --bench ack_cost`; it prints the
//! figures and the ratios. `ACK_COST_WRITES` sets writes per measurement
//! (default 2,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tidings::domain::{CaseKey, IdempotentResponse};
use tidings::store::{Commit, SledStore};

fn commit_for(n: usize) -> (CaseKey, Commit) {
    let key = CaseKey::new("bench", format!("B-{n}").parse().expect("valid id"));
    let body = serde_json::json!({
        "subject": "Broken heat pump ".repeat(8),
        "customer": { "name": "Maria Hernandez", "email": "maria@example.com" },
        "note": "x".repeat(1800),
    });
    let commit = Commit {
        idempotency: Some((
            format!("bench-{n}"),
            IdempotentResponse {
                request_sha256: String::new(),
                status: 201,
                body,
                at: Utc::now(),
            },
        )),
        ..Commit::default()
    };
    (key, commit)
}

/// `writers` tasks, `writes` commits in all; per-write latencies.
async fn run(
    store: &Arc<SledStore>,
    writers: usize,
    writes: usize,
    flush: bool,
    base: usize,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..writes).step_by(writers) {
                let (key, commit) = commit_for(base + i);
                let t = Instant::now();
                store.commit(&key, &commit).expect("commit");
                if flush {
                    store.flush().await.expect("flush");
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    all.sort();
    all
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let writes: usize = std::env::var("ACK_COST_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = Arc::new(SledStore::open(dir.path()).expect("open the store"));
    // Warm up: the store's first writes create its files.
    run(&store, 1, 200, true, 10_000_000).await;
    let mut base = 0;
    let mut measure = |writers: usize, flush: bool| {
        base += writes;
        let store = store.clone();
        let b = base;
        async move {
            let t = Instant::now();
            let lat = run(&store, writers, writes, flush, b).await;
            let secs = t.elapsed().as_secs_f64();
            (lat, writes as f64 / secs)
        }
    };
    let (plain1, plain1_rate) = measure(1, false).await;
    let (flush1, flush1_rate) = measure(1, true).await;
    let (plain8, plain8_rate) = measure(8, false).await;
    let (flush8, flush8_rate) = measure(8, true).await;
    for (what, lat, rate) in [
        ("1 writer, commit only", &plain1, plain1_rate),
        ("1 writer, commit + flush", &flush1, flush1_rate),
        ("8 writers, commit only", &plain8, plain8_rate),
        ("8 writers, commit + flush", &flush8, flush8_rate),
    ] {
        println!(
            "ack_cost: {what:<26} median {:.3} ms, p99 {:.3} ms, {rate:.0} writes/s",
            pct(lat, 0.5),
            pct(lat, 0.99)
        );
    }
    println!(
        "ack_cost: the flush costs {:.1}x the commit's median latency with one writer; with eight, throughput is {:.2} of the unflushed rate ({} writes each)",
        pct(&flush1, 0.5) / pct(&plain1, 0.5),
        flush8_rate / plain8_rate,
        writes
    );
}
