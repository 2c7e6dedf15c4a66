//! The command line as operators use it: `check`, `preview`, `simulate`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tidings(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .expect("run tidings");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config in a temp dir with the given rules and the shipped templates.
fn setup(rules: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("rules/rules.yaml"), rules).expect("rules");
    let cfg = dir.path().join("tidings.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: ./data\nrules: ./rules\ntemplates: {}\nemail: {{ transport: file, from: \"Support <support@example.com>\" }}\n",
            repo("templates").display()
        ),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    (dir, cfg)
}

#[test]
fn shipped_config_checks_clean() {
    let (code, out, err) = tidings(&[
        "check",
        "--config",
        repo("tidings.yaml").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !err.contains("warning"),
        "the shipped SMS templates fit: {err}"
    );
}

#[test]
fn check_warns_when_an_sms_template_can_run_over_its_segment_budget() {
    let rules = "rules:\n  - name: x\n    every: 4h\n    channels: [sms]\n    template: progress\n";
    let (dir, cfg) = setup(rules);
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
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        &repo("templates").display().to_string(),
        &templates.display().to_string(),
    );
    std::fs::write(&cfg, text + "sms: { max_segments: 1 }\n").expect("config");
    let (code, out, err) = tidings(&["check", "--config", &cfg]);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("progress.sms.j2:1:1: warning: can take") && err.contains("budget 1"),
        "{err}"
    );
}

#[test]
fn bad_rules_are_reported_with_file_line_column() {
    let rules = "rules:\n  - name: x\n    every: soon\n    channels: [email, pigeon]\n    template: progress\n";
    let (_dir, cfg) = setup(rules);
    let (code, _, err) = tidings(&["check", "--config", &cfg]);
    assert_eq!(code, 1, "{err}");
    let first = err.lines().next().expect("a diagnostic");
    assert!(first.contains("rules.yaml:4:"), "{err}");
    assert!(err.contains("pigeon"), "{err}");

    let rules =
        "rules:\n  - name: x\n    every: soon\n    channels: [email]\n    template: progress\n";
    let (_dir, cfg) = setup(rules);
    let (code, _, err) = tidings(&["check", "--config", &cfg]);
    assert_eq!(code, 1);
    assert!(err.contains("rules.yaml:3:12: every:"), "{err}");

    let rules = "rules:\n  - name: x\n    every: 1h\n    channels: [email]\n    template: no-such-template\n";
    let (_dir, cfg) = setup(rules);
    let (code, _, err) = tidings(&["check", "--config", &cfg]);
    assert_eq!(code, 1);
    assert!(
        err.contains("rules.yaml:2:") && err.contains("no-such-template"),
        "{err}"
    );
}

#[test]
fn preview_shows_an_sms_with_its_segment_count() {
    let cfg = repo("tidings.yaml");
    for (case, needle) in [
        ("examples/case-en-newyork.json", "Maria"),
        ("examples/case-id-jakarta.json", "Budi"),
    ] {
        let (code, out, err) = tidings(&[
            "preview",
            "--config",
            cfg.to_str().expect("utf-8"),
            "--case",
            repo(case).to_str().expect("utf-8"),
            "--channel",
            "sms",
        ]);
        assert_eq!(code, 0, "{case}: {err}");
        assert!(out.contains("# channel: sms"), "{out}");
        assert!(out.contains("Segments: 1 (Gsm7"), "{case}: {out}");
        assert!(out.contains(needle), "{case}: {out}");
        assert!(out.contains("STOP"), "{case}: {out}");
    }
    // The Warsaw customer allows email only.
    let (code, _, err) = tidings(&[
        "preview",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--case",
        repo("examples/case-pl-warsaw.json")
            .to_str()
            .expect("utf-8"),
        "--channel",
        "sms",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("does not send sms"), "{err}");
}

#[test]
fn preview_prints_the_rendered_message() {
    let cfg = repo("tidings.yaml");
    for (case, needle) in [
        ("examples/case-en-newyork.json", "Maria"),
        ("examples/case-pl-warsaw.json", "Subject:"),
        ("examples/case-id-jakarta.json", "WIB"),
        ("examples/case-tl-manila.json", "Subject:"),
    ] {
        let (code, out, err) = tidings(&[
            "preview",
            "--config",
            cfg.to_str().expect("utf-8"),
            "--case",
            repo(case).to_str().expect("utf-8"),
            "--channel",
            "email",
        ]);
        assert_eq!(code, 0, "{case}: {err}");
        assert!(out.contains("Message-ID:"), "{out}");
        assert!(out.contains("--- text ---"), "{out}");
        assert!(out.contains(needle), "{case}: {out}");
    }
}

#[test]
fn simulate_a_day_of_a_two_second_rule_honours_quiet_hours() {
    let rules = r#"
rules:
  - name: fast
    when: { status: [open] }
    every: 2s
    channels: [email]
    template: progress
    quiet_hours: { start: "21:00", end: "08:00" }
on:
  created: { template: acknowledgement, channels: [email] }
"#;
    let (dir, cfg) = setup(rules);
    let case = dir.path().join("case.json");
    let mut body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("examples/case-en-newyork.json")).expect("case"),
    )
    .expect("json");
    body["customer"]["timezone"] = "UTC".into();
    std::fs::write(&case, body.to_string()).expect("case");
    let (code, out, err) = tidings(&[
        "simulate",
        "--config",
        &cfg,
        "--case",
        case.to_str().expect("utf-8"),
        "--days",
        "1",
        "--start",
        "2026-11-23T08:00:00Z",
    ]);
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

#[test]
fn serve_tells_systemd_it_is_ready_and_stops_cleanly_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let (dir, cfg) = setup(
        "rules:\n  - name: x\n    every: 1h\n    channels: [email]\n    template: progress\non:\n  created: { template: acknowledgement, channels: [email] }\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("listen: 127.0.0.1:{port}\n{text}")).expect("config");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--config", &cfg])
            .env("NOTIFY_SOCKET", &sock_path)
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log file"))
            .spawn()
            .expect("spawn"),
    );
    let mut buf = [0u8; 256];
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no READY=1 datagram ({e}); log:\n{}", log()));
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the API listens");
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no STOPPING=1 datagram ({e}); log:\n{}", log()));
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
    let exit = child.0.wait().expect("wait");
    assert!(exit.success(), "{exit:?}");
}

/// Kills the child process when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The README's demo: the shipped config (file transport), the README's
/// curl body, and the acknowledgement as an `.eml` file within a second.
/// One HTTP/1.1 exchange over a fresh connection; empty when it fails.
fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut response = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.read_to_string(&mut response).map(|_| ()));
    }
    response
}

#[test]
fn readme_demo_writes_the_acknowledgement_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
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
    let cfg = dir.path().join("tidings.yaml");
    std::fs::write(&cfg, config).expect("config");
    let _child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--config", cfg.to_str().expect("utf-8")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    // Time the request, not the start-up: wait until the daemon is ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !http(
        port,
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never became ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let body = std::fs::read_to_string(repo("examples/case-en-newyork.json")).expect("case");
    let request = format!(
        "PUT /v1/cases/CASE-1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer demo-token-change-me\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let sent = std::time::Instant::now();
    let response = http(port, &request);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let mail_dir = dir.path().join("data/mail");
    let eml = loop {
        let found = std::fs::read_dir(&mail_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"));
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(1),
            "no .eml within 1 s of the request"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    println!(
        "acknowledgement written within {:?} of the request",
        sent.elapsed()
    );
    // The file may still be being written; give it a moment to be whole.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let text = std::fs::read_to_string(&eml).expect("eml");
    let msg = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .expect("a MIME message");
    assert!(
        msg.body_text(0).is_some_and(|t| t.contains("Maria")),
        "{text}"
    );
    assert!(
        msg.subject()
            .is_some_and(|s| s.contains("Replacement router has not shipped"))
    );
}
