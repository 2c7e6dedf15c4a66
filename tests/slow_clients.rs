//! Idle and slow-loris clients: many connections that send nothing, or a
//! request line and then nothing, must neither stop the API answering nor
//! stay open: the server closes them after its first-byte and header
//! timeouts (10 s each). Full run:
//! `TIDINGS_IDLE_CONNECTIONS=10000 cargo test --release --test slow_clients -- --nocapture`.

mod peers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use peers::*;

/// The soft limit on open files, from /proc (no libc needed).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_loris_connections_neither_block_the_api_nor_stay_open() {
    let Some(bin) = smtp_sink() else { return };
    let sink = Sink::start(&bin).await;
    let d = Setup::new(rules("ack-only", &[]))
        .smtp(sink.port)
        .start()
        .await;
    // 2,000 by default (`TIDINGS_IDLE_CONNECTIONS=10000` for the full
    // run), and no more than this process may open (the daemon, its child,
    // has the same limit) with room to spare.
    let want: usize = std::env::var("TIDINGS_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let n = want.min(open_file_limit().saturating_sub(300) / 2 * 2);
    let port = d.port;
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tidings\r\n")
                .expect("partial request");
        }
        conns.push(s);
    }
    let opened = t.elapsed();
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let r = d
            .http
            .get(d.url("/healthz"))
            .send()
            .await
            .expect("the API answers");
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
    }
    println!(
        "slow clients: {n} connections ({} silent, {} slow-loris) opened in {:.1}s; /healthz answered in at most {:.1} ms",
        n / 2,
        n / 2,
        opened.as_secs_f64(),
        worst.as_secs_f64() * 1000.0
    );
    assert!(
        worst < Duration::from_secs(2),
        "the API slowed to {worst:?}"
    );

    // Within the timeouts (10 s) the server closes every one of them.
    let deadline = Instant::now() + Duration::from_secs(32);
    let mut open = n;
    while Instant::now() < deadline {
        open = 0;
        for s in &mut conns {
            s.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 512];
            match s.read(&mut b) {
                Ok(0) => {}
                Ok(_) => {
                    // A 408 or similar before the close is fine; look again.
                    if matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                    {
                        open += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => {}
            }
        }
        if open == 0 {
            break;
        }
        // Polling: reading thousands of sockets is not free.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "slow clients: {open} of {n} still open {:.0}s after they stalled",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(open, 0, "the server keeps stalled connections open");
}
