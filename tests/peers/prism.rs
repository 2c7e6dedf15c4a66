//! Prism serving Twilio's own OpenAPI description: every request the
//! daemon sends to the Messages API is validated against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A Prism mock server, shared by every test in the process (it takes
/// seconds to load Twilio's description). A watchdog shell stops it within
/// a second of the test process ending.
pub struct Prism {
    pub port: u16,
    pub log: PathBuf,
    /// The watchdog shell; it outlives the process by design.
    _watchdog: Child,
}

impl Prism {
    /// The shared server, or `None` when Prism is not installed (tests ask
    /// `prism()`, which reports the skip).
    pub(super) fn shared() -> Option<&'static Prism> {
        static PRISM: std::sync::OnceLock<Option<Prism>> = std::sync::OnceLock::new();
        PRISM.get_or_init(Prism::start).as_ref()
    }

    fn binary() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os("TIDINGS_PRISM").map(PathBuf::from),
            Some(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers/node_modules/.bin/prism"),
            ),
        ];
        candidates.into_iter().flatten().find(|p| p.is_file())
    }

    fn start() -> Option<Prism> {
        let bin = Self::binary()?;
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/twilio_api_v2010.yaml");
        let port = free_port();
        let log = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/peers/prism-{}.log", std::process::id()));
        let script = format!(
            "{bin:?} mock -h 127.0.0.1 -p {port} {spec:?} > {log:?} 2>&1 & p=$!; \
             while kill -0 {me} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.5; done; kill $p",
            me = std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Prism");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Prism is listening") {
                break;
            }
            assert!(Instant::now() < deadline, "Prism did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(Prism {
            port,
            log,
            _watchdog: watchdog,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests Prism received for `account`'s Messages resource, and the
    /// validation complaints among all the lines about them.
    pub fn messages_seen(&self, account: &str) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let path = format!("/Accounts/{account}/Messages.json");
        let mut requests = 0;
        let mut complaints = Vec::new();
        let mut ours = false;
        for line in text.lines() {
            if line.contains("[HTTP SERVER]") {
                ours = line.contains(&path);
                if ours && line.contains("Request received") {
                    requests += 1;
                }
            }
            if ours && (line.contains('✖') || line.contains('⚠')) {
                complaints.push(line.to_owned());
            }
        }
        (requests, complaints)
    }
}
