//! The command line as operators use it: `check`, `preview`, `simulate`.

mod peers;

use std::time::{Duration, Instant};

use peers::{Daemon, Setup, case_named, eventually, free_port, repo, rules, tidings};

/// Writes `setup` into a temp dir for the command line (no daemon runs on
/// it); returns the dir and the config's path.
fn config(setup: &Setup) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = setup.write(dir.path(), 0);
    (dir, cfg.display().to_string())
}

/// A config in a temp dir with the fixture rules `name`.
fn with_rules(name: &str) -> (tempfile::TempDir, String) {
    config(&Setup::new(rules(name, &[])))
}

#[test]
fn shipped_config_checks_clean() {
    let shipped = repo("tidings.yaml").display().to_string();
    let (code, out, err) = tidings(&["check", "--config", &shipped], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("warning"),
        "the shipped SMS templates fit: {err}"
    );
}

#[test]
fn check_warns_when_an_sms_template_can_run_over_its_segment_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy of the shipped templates with a chatty SMS.
    let templates = dir.path().join("templates");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo("templates"))
        .arg(&templates)
        .status()
        .expect("cp");
    assert!(copy.success());
    std::fs::write(
        templates.join("progress.sms.j2"),
        "Hi {{ customer.name }}, about \"{{ case.subject }}\": {{ case.latest_note }} Next update by {{ next_update_at_short }}. Reply STOP to opt out.",
    )
    .expect("template");
    let cfg = Setup::new(rules("updates", &[("every", "4h"), ("progress", "sms")]))
        .templates(&templates)
        .extra("sms: { max_segments: 1 }\n")
        .write(dir.path(), 0);
    let (code, out, err) = tidings(&["check", "--config", &cfg.display().to_string()], &[]);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("progress.sms.j2:1:1: warning: can take") && err.contains("budget 1"),
        "{err}"
    );
}

#[test]
fn bad_rules_are_reported_with_file_line_column() {
    let (_dir, cfg) = with_rules("broken");
    let (code, _, err) = tidings(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    let first = err.lines().next().expect("a diagnostic");
    assert!(first.contains("rules.yaml:6:"), "{err}");
    assert!(err.contains("pigeon"), "{err}");

    let (_dir, cfg) = with_rules("bad-duration");
    let (code, _, err) = tidings(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("rules.yaml:4:12: every:"), "{err}");

    let (_dir, cfg) = with_rules("unknown-template");
    let (code, _, err) = tidings(&["check", "--config", &cfg], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("rules.yaml:3:") && err.contains("no-such-template"),
        "{err}"
    );
}

/// `tidings preview` of the shipped example `case` on `channel`, with the
/// shipped config.
fn preview(case: &str, channel: &str) -> (i32, String, String) {
    let cfg = repo("tidings.yaml").display().to_string();
    let case = repo(case).display().to_string();
    tidings(
        &[
            "preview",
            "--config",
            &cfg,
            "--case",
            &case,
            "--channel",
            channel,
        ],
        &[],
    )
}

#[test]
fn preview_shows_an_sms_with_its_segment_count() {
    for (case, needle) in [
        ("examples/case-en-newyork.json", "Maria"),
        ("examples/case-id-jakarta.json", "Budi"),
    ] {
        let (code, out, err) = preview(case, "sms");
        assert_eq!(code, 0, "{case}: {err}");
        assert!(out.contains("# channel: sms"), "{out}");
        assert!(out.contains("Segments: 1 (Gsm7"), "{case}: {out}");
        assert!(out.contains(needle), "{case}: {out}");
        assert!(out.contains("STOP"), "{case}: {out}");
    }
    // The Warsaw customer allows email only.
    let (code, _, err) = preview("examples/case-pl-warsaw.json", "sms");
    assert_ne!(code, 0);
    assert!(err.contains("does not send sms"), "{err}");
}

#[test]
fn preview_prints_the_rendered_message() {
    for (case, needle) in [
        ("examples/case-en-newyork.json", "Maria"),
        ("examples/case-pl-warsaw.json", "Subject:"),
        ("examples/case-id-jakarta.json", "WIB"),
        ("examples/case-tl-manila.json", "Subject:"),
    ] {
        let (code, out, err) = preview(case, "email");
        assert_eq!(code, 0, "{case}: {err}");
        assert!(out.contains("Message-ID:"), "{out}");
        assert!(out.contains("--- text ---"), "{out}");
        assert!(out.contains(needle), "{case}: {out}");
    }
}

#[test]
fn simulate_a_day_of_a_two_second_rule_honours_quiet_hours() {
    let (dir, cfg) = with_rules("quiet-hours");
    let case = dir.path().join("case.json");
    let mut body = case_named("maria");
    body["customer"]["timezone"] = "UTC".into();
    std::fs::write(&case, body.to_string()).expect("case");
    let (code, out, err) = tidings(
        &[
            "simulate",
            "--config",
            &cfg,
            "--case",
            case.to_str().expect("utf-8"),
            "--days",
            "1",
            "--start",
            "2026-11-23T08:00:00Z",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("time"))
        .collect();
    // The acknowledgement at 08:00:00, an update every 2 s until 20:59:58
    // (23,399), none in quiet hours, then 08:00 the next day.
    assert_eq!(
        lines.len(),
        1 + 23_399 + 1,
        "{}",
        &out[out.len().saturating_sub(600)..]
    );
    assert!(!lines.iter().any(|l| {
        let hour: u32 = l[11..13].parse().expect("hour");
        !(8..21).contains(&hour)
    }));
    assert!(
        lines
            .last()
            .expect("a line")
            .starts_with("2026-11-24 08:00")
    );
}

#[tokio::test]
async fn serve_tells_systemd_it_is_ready_and_stops_cleanly_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let sock_dir = tempfile::tempdir().expect("tempdir");
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut d = Setup::new(rules("updates", &[]))
        .env("NOTIFY_SOCKET", &sock_path.display().to_string())
        .launch();
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 datagram ({e}); log:\n{}", d.log()));
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", d.port)).expect("the API listens");
    let (_, exit) = d.terminate();
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no STOPPING=1 datagram ({e}); log:\n{}", d.log()));
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    assert!(exit.success(), "{exit:?}");
}

/// The README's demo: the shipped config (file transport), the README's
/// curl body, and the acknowledgement as an `.eml` file within a second.
#[tokio::test]
async fn readme_demo_writes_the_acknowledgement_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let shipped = std::fs::read_to_string(repo("tidings.yaml")).expect("tidings.yaml");
    let config = shipped
        .replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:{port}"),
        )
        .replace(
            "data_dir: ./data",
            &format!("data_dir: {}", dir.path().join("data").display()),
        )
        .replace(
            "rules: ./rules",
            &format!("rules: {}", repo("rules").display()),
        )
        .replace(
            "templates: ./templates",
            &format!("templates: {}", repo("templates").display()),
        );
    std::fs::write(dir.path().join("tidings.yaml"), config).expect("config");
    let mut d = Daemon::at(dir, port);
    // Time the request, not the start-up: wait until the daemon is ready.
    d.spawn().await;
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("examples/case-en-newyork.json")).expect("case"),
    )
    .expect("json");
    let sent = Instant::now();
    d.put_case("CASE-1", &body).await;
    let eml = eventually(
        Duration::from_secs(1),
        "an .eml within 1 s of the request",
        async || d.emails().first().cloned().ok_or_else(|| "none".to_owned()),
    )
    .await;
    println!(
        "acknowledgement written within {:?} of the request",
        sent.elapsed()
    );
    // The file may still be being written: read it until it is whole.
    let text = eventually(Duration::from_secs(5), "a whole message", async || {
        let text = std::fs::read_to_string(&eml).map_err(|e| e.to_string())?;
        let msg = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .ok_or("not a MIME message yet")?;
        match msg.body_text(0) {
            Some(t) if t.contains("Maria") => Ok(text.clone()),
            _ => Err(text.clone()),
        }
    })
    .await;
    let msg = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .expect("a MIME message");
    assert!(
        msg.subject()
            .is_some_and(|s| s.contains("Replacement router has not shipped"))
    );
}
