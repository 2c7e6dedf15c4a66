//! The shipped systemd unit: `systemd-analyze security --offline=yes` must
//! rate it 1.5 or lower, and it must keep what the daemon relies on.
//!
//! Skipped (with the reason printed) when `systemd-analyze` is not
//! installed, unless `TIDINGS_E2E_REQUIRED=1`.

mod peers;

use std::path::Path;
use std::process::Command;

const MAX_EXPOSURE: f64 = 1.5;

fn unit_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tidings.service")
}

/// The figure in `→ Overall exposure level for tidings.service: 1.1 OK`.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, rest) = line.rsplit_once(": ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn unit_rates_at_most_one_and_a_half_in_systemd_analyze_security() {
    let ran = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit_path())
        .output()
        .ok();
    let Some(out) = peers::peer_or_skip(ran, "systemd-analyze", "apt-get install systemd") else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Unknown section"),
        "systemd ignores part of the unit:\n{stderr}"
    );
    let rating = exposure(&stdout)
        .unwrap_or_else(|| panic!("no exposure level in the report:\n{stdout}\n{stderr}"));
    println!("systemd-analyze security exposure level: {rating:.1} (limit {MAX_EXPOSURE})");
    assert!(
        rating <= MAX_EXPOSURE,
        "exposure {rating} is above {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn unit_keeps_what_the_daemon_relies_on() {
    let unit = std::fs::read_to_string(unit_path()).expect("unit file");
    let lines: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=tidings",
        "ConfigurationDirectory=tidings",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(lines.contains(&want), "the unit lacks `{want}`");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("WatchdogSec=")),
        "the unit lacks WatchdogSec="
    );
    // Every credential the unit can load is one the config can name.
    for name in [
        "api-token",
        "admin-token",
        "smtp-user",
        "smtp-password",
        "twilio-token",
    ] {
        assert!(
            unit.contains(&format!("LoadCredential={name}:")),
            "the unit does not document the `{name}` credential"
        );
    }
}

#[test]
fn exposure_is_read_from_the_summary_line() {
    let report =
        "✗ PrivateNetwork= ... 0.5\n\n→ Overall exposure level for tidings.service: 1.1 OK 🙂\n";
    assert_eq!(exposure(report), Some(1.1));
    assert_eq!(exposure("nothing"), None);
}
