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

use std::process::Command;

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
    if TestStore::sled_only(
        "storage.reserve_mib and a full data_dir are sled's (PostgreSQL refuses the write itself)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    if !mount(&data, "24m", false) {
        // Mounting is a permission of the machine, not a peer to install:
        // skipped even where TIDINGS_E2E_REQUIRED=1.
        skip("cannot mount a tmpfs here (needs root and mount rights)");
        return;
    }
    let _unmount = Unmount(data.clone());
    // The shipped rules; file transports; 8 MiB kept free on the 24 MiB disk.
    let shipped = std::fs::read_to_string(repo("rules/default.yaml")).expect("shipped rules");
    let mut d = Setup::new(shipped)
        .data_dir(&data)
        .email("file_dir: mail")
        .extra("sms: { file_dir: sms }\nstorage: { reserve_mib: 8 }\n")
        .start()
        .await;

    let mut body = case_on(&["email"]);
    body["priority"] = json!("normal");
    body["fields"] = json!({ "pad": "x".repeat(40_000) });
    let put = |n: usize, body: serde_json::Value| {
        let http = d.http.clone();
        let url = d.url(&format!("/v1/cases/FULL-{n}"));
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
    let text = d.log();
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
    let check = async |d: &Daemon| {
        for n in &acked {
            d.get_case(&format!("FULL-{n}")).await;
        }
    };
    check(&d).await;
    d.kill();
    d.spawn().await;
    check(&d).await;
    println!(
        "full disk: {} writes acknowledged, then 503 storage_full ({refused} refused), one log line; intake resumed when space returned; all {} acknowledged cases present after a restart",
        acked.len() - 1,
        acked.len()
    );
}
