//! `tidings import` as an operator runs it: a JSON-lines file loaded into
//! a stopped daemon's store, every good line a case the daemon then
//! serves (and acknowledges), every bad line named with its position and
//! field; and a refusal while the daemon holds the store.

mod peers;

use std::time::Duration;

use peers::{Daemon, Setup, TOKEN, case_named, eventually, free_port, rules, tidings};
use serde_json::{Value, json};

/// A line of the file: `case` with its `id`.
fn line(id: &str, case: &Value) -> String {
    let mut case = case.clone();
    case["id"] = json!(id);
    serde_json::to_string(&case).expect("a JSON line")
}

/// A daemon's dir with its config written, not started.
fn stopped_daemon() -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("tidings-import-")
        .tempdir()
        .expect("daemon dir");
    let port = free_port();
    Setup::new(rules("updates", &[])).write(dir.path(), port);
    Daemon::at(dir, port)
}

#[tokio::test]
async fn good_lines_become_cases_the_daemon_serves_and_bad_lines_are_named() {
    let mut d = stopped_daemon();
    let maria = case_named("maria");
    let mut bad_phone = maria.clone();
    bad_phone["customer"]["phone"] = json!("12");
    let mut renamed = maria.clone();
    renamed["subject"] = json!("Router replaced, awaiting confirmation");
    let lines = [
        line("T-1", &maria),                                      // 1
        line("T-2", &maria),                                      // 2
        line("T-3", &bad_phone),                                  // 3: customer.phone
        String::new(),                                            // 4: blank, skipped
        line("T-4", &maria).replace("\"assignee\"", "\"owner\""), // 5: unknown field
        r#"{"id":"T-5","subject":"half a line""#.into(),          // 6: broken JSON
        line("T 6", &maria),                                      // 7: bad id
        line("T-1", &renamed),                                    // 8: T-1 again, later wins
        line("T-7", &maria),                                      // 9
    ];
    let file = d.dir.path().join("cases.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write the cases");
    let file_arg = file.display().to_string();

    let (code, out, err) = tidings(&["import", "--config", &d.config_arg(), &file_arg], &[]);

    assert_eq!(code, 1, "rejected lines make exit code 1:\n{out}{err}");
    assert!(
        out.contains("4 cases imported (3 new, 1 replaced), 4 lines rejected"),
        "{out}"
    );
    let rejected: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{file_arg}:")))
        .collect();
    let col = |text: &str, key: &str| text.find(key).expect("key in line") + 1;
    assert_eq!(
        rejected.len(),
        4,
        "one diagnostic per rejected line:\n{err}"
    );
    assert!(
        rejected[0].starts_with(&format!(
            "{file_arg}:3:{}: customer.phone: ",
            col(&lines[2], "\"phone\"")
        )),
        "{err}"
    );
    assert!(
        rejected[1].starts_with(&format!(
            "{file_arg}:5:{}: owner: unknown field",
            col(&lines[4], "\"owner\"")
        )),
        "{err}"
    );
    assert!(
        rejected[2].starts_with(&format!("{file_arg}:6:"))
            && rejected[2].contains("not valid JSON"),
        "{err}"
    );
    assert!(
        rejected[3].starts_with(&format!("{file_arg}:7:")) && rejected[3].contains(": id: "),
        "{err}"
    );
    assert!(
        err.contains("import: 8 lines read"),
        "the progress line: {err}"
    );
    assert!(
        !err.contains("maria.hernandez") && !err.contains("Replacement router"),
        "no line's content on the terminal: {err}"
    );

    d.spawn().await;
    for id in ["T-1", "T-2", "T-7"] {
        let case = d.get_case(id).await;
        assert_eq!(case["customer"]["name"], "Maria Hernandez", "{id}: {case}");
    }
    assert_eq!(
        d.get_case("T-1").await["subject"],
        "Router replaced, awaiting confirmation",
        "the later line for one case wins"
    );
    for id in ["T-3", "T-4", "T-5"] {
        let status = d
            .http
            .get(d.url(&format!("/v1/cases/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("an answer")
            .status();
        assert_eq!(
            status, 404,
            "{id} was rejected, so the daemon has no such case"
        );
    }
    // Each new case's acknowledgement was queued with it, as for the API,
    // and the daemon sends it.
    eventually(
        Duration::from_secs(20),
        "three acknowledgements",
        async || {
            let sent = d.emails().len();
            if sent == 3 {
                Ok(())
            } else {
                Err(format!("{sent} emails"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_import_is_refused_while_the_daemon_holds_the_store() {
    let mut d = stopped_daemon();
    d.spawn().await;
    let file = d.dir.path().join("cases.jsonl");
    std::fs::write(&file, line("T-1", &case_named("maria")) + "\n").expect("write the cases");

    let (code, out, err) = tidings(
        &[
            "import",
            "--config",
            &d.config_arg(),
            &file.display().to_string(),
        ],
        &[],
    );

    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is in use (is the daemon running?)"), "{err}");
    let status = d
        .http
        .get(d.url("/v1/cases/T-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("an answer")
        .status();
    assert_eq!(status, 404, "nothing was imported");
}
