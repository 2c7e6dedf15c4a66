//! A full disk: the store's `data_dir` on a small tmpfs. Intake must get
//! 503 naming the cause, the log must say so once, nothing acknowledged may
//! be lost, and writes must resume by themselves when space returns (the
//! tmpfs is remounted larger). sled cannot recover from a write that meets
//! a full disk, so the daemon stops writing while free space is below
//! `storage.reserve_mib`.
//!
//! Needs root and the right to mount a tmpfs; skipped (with a message)
//! where the machine does not allow it.

mod peers;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peers::*;
use serde_json::json;

fn mount(dir: &std::path::Path, size: &str, remount: bool) -> bool {
    let opts = if remount {
        format!("remount,size={size}")
    } else {
        format!("size={size}")
    };
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_intake_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    if !mount(&data, "24m", false) {
        // Mounting is a permission of the machine, not a peer to install.
        println!("skipping: cannot mount a tmpfs here (needs root and mount rights)");
        return;
    }
    let _unmount = Unmount(data.clone());
    let port = free_port();
    let cfg = dir.path().join("tidings.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}
data_dir: {data:?}
rules: {rules:?}
templates: {templates:?}
api:
  tokens:
    - source: helpdesk
      token_sha256: b5d56f2eacf505c2639b22468f3a8b1bcaf7d619cadbab47dc6ce515fc4c3612
email: {{ transport: file, file_dir: {mail:?} }}
sms: {{ file_dir: {sms:?} }}
storage: {{ reserve_mib: 8 }}
",
            rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
            templates = concat!(env!("CARGO_MANIFEST_DIR"), "/templates"),
            mail = dir.path().join("mail"),
            sms = dir.path().join("sms"),
        ),
    )
    .expect("config");
    let log = dir.path().join("daemon.log");
    let start = || {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start tidings")
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let ready = || async {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "not ready");
            tokio::time::sleep(POLL).await;
        }
    };
    let mut child = start();
    ready().await;

    let mut body = json!({
        "subject": SUBJECT, "status": "open", "priority": "normal",
        "customer": { "name": "Maria Hernandez", "email": EMAIL, "timezone": "UTC", "locale": "en", "channels": ["email"] },
        "fields": { "pad": "x".repeat(40_000) }
    });
    let put = |n: usize, body: serde_json::Value| {
        let http = http.clone();
        let url = format!("{base}/v1/cases/FULL-{n}");
        async move {
            let r = http
                .put(url)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .expect("answer");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut first_refusal = String::new();
    for n in 0..1500 {
        let (status, text) = put(n, body.clone()).await;
        match status {
            201 => acked.push(n),
            503 => {
                refused += 1;
                if first_refusal.is_empty() {
                    first_refusal = text;
                }
                if refused >= 50 {
                    break;
                }
            }
            other => panic!("intake on a full disk answered {other}: {text}"),
        }
    }
    assert!(refused > 0, "the disk never filled");
    assert!(
        first_refusal.contains("storage_full") && first_refusal.contains("MiB"),
        "{first_refusal}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = text.matches("refusing writes until space is freed").count();
    assert_eq!(
        warnings, 1,
        "one clear log line, not one per request:\n{text}"
    );
    assert!(!text.contains("panicked"), "{text}");

    // Space returns: intake resumes by itself.
    assert!(mount(&data, "96m", true), "remount");
    body["fields"] = json!({});
    let (status, text) = put(9999, body.clone()).await;
    assert_eq!(status, 201, "after space returned: {text}");
    acked.push(9999);

    // Nothing acknowledged is lost, now and after a restart.
    let check = || async {
        for n in &acked {
            let r = http
                .get(format!("{base}/v1/cases/FULL-{n}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status(), 200, "FULL-{n} was acknowledged and is gone");
        }
    };
    check().await;
    let _ = child.kill();
    let _ = child.wait();
    child = start();
    ready().await;
    check().await;
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "full disk: {} writes acknowledged, then 503 storage_full ({refused} refused), one log line; intake resumed when space returned; all {} acknowledged cases present after a restart",
        acked.len() - 1,
        acked.len()
    );
}
