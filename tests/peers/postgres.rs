//! A throwaway PostgreSQL cluster for the tests: `initdb` and `postgres`
//! from Debian's `postgresql` package, run as the `postgres` user in a temp
//! dir, listening on loopback only on a free port. One cluster per test
//! process (`postgres()`), one fresh database per test (`database()`).
//!
//! The server runs under a shell that stops it (fast shutdown) when its
//! standard input closes, which happens when the test process ends however
//! it ends: no cluster (nor its dir) outlives its tests.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, is_root, peer_or_skip};

/// Where Debian installs PostgreSQL 15's programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The cluster this test process shares.
pub struct PgCluster {
    pub port: u16,
    /// Holds the server's shell; closes with the process.
    _stdin: std::sync::Mutex<ChildStdin>,
    _child: std::sync::Mutex<Child>,
    _dir: tempfile::TempDir,
}

/// A database of its own for one test.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

/// The shared cluster, or `None` when the test skips (PostgreSQL is not
/// installed).
pub fn postgres() -> Option<&'static PgCluster> {
    peer_or_skip(
        Path::new(BIN).join("initdb").is_file().then_some(()),
        "PostgreSQL 15",
        "apt-get install postgresql",
    )?;
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    Some(SHARED.get_or_init(PgCluster::start))
}

/// `cmd` as the `postgres` user when the tests run as root (PostgreSQL
/// refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn bin(name: &str) -> PathBuf {
    Path::new(BIN).join(name)
}

impl PgCluster {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tidings-pg-")
            .tempdir()
            .expect("a temp dir for the cluster");
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(ok.success(), "chown the cluster's dir to postgres");
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let server = format!(
            "{} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=300",
            bin("postgres").display(),
            data.display(),
            dir.path().display()
        );
        // The server stops when the test process (our stdin's writer) ends,
        // and its dir goes with it. A line on stdin stops it (an outage,
        // `stop_server`), the next one starts it again (`start_server`).
        let script = format!(
            "while :; do {server} >>{log} 2>&1 & pid=$!; \
             if ! read _; then kill -INT $pid; wait $pid; break; fi; \
             kill -INT $pid; wait $pid; read _ || break; done; rm -rf {dir}",
            log = dir.path().join("log").display(),
            dir = dir.path().display()
        );
        let mut child = as_postgres(Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let stdin = child.stdin.take().expect("the server's stdin");
        let cluster = Self {
            port,
            _stdin: std::sync::Mutex::new(stdin),
            _child: std::sync::Mutex::new(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(cluster._dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(super::POLL);
        }
        cluster
    }

    fn ready(&self) -> bool {
        Command::new(bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Tells the server's shell to stop or start it; waits until it
    /// answers as it should (`up`).
    fn toggle(&self, up: bool) {
        use std::io::Write;
        let mut stdin = self._stdin.lock().unwrap_or_else(|e| e.into_inner());
        stdin.write_all(b"\n").expect("tell the server's shell");
        stdin.flush().expect("tell the server's shell");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready() != up {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not {}",
                if up { "start again" } else { "stop" }
            );
            std::thread::sleep(super::POLL);
        }
    }

    /// Stops the server (fast shutdown: every session ends), keeping its
    /// data: a database outage. Only for a test process of its own.
    pub fn stop_server(&self) {
        self.toggle(false);
    }

    /// Starts the server stopped by `stop_server` again.
    pub fn start_server(&self) {
        self.toggle(true);
    }

    /// The cluster's data directory (its table files and WAL).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Runs one SQL command as the superuser in database `db`; its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh, empty database.
    pub fn database(&self) -> PgDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDatabase {
            url: format!(
                "postgres://postgres@127.0.0.1:{}/{name}?connect_timeout=10",
                self.port
            ),
            name,
        }
    }
}
