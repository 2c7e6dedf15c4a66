//! The case page in a real browser: the daemon in process on a manual
//! clock, an email delivered to the test's SMTP server in each of the four
//! shipped locales, and `tests/browser/page.cjs` driving Debian's chromium
//! through Playwright from the link in that email: the promise line, every
//! form, axe-core on every state, a screenshot per locale (saved under
//! `target/tmp/browser/`). Afterwards the mail server must get nothing
//! more for the cases the browser stopped.
//!
//! Needs `/usr/bin/chromium` and `npm install --prefix target/browser
//! playwright-core axe-core` (`.ci/run` installs both); skips without them
//! unless `TIDINGS_E2E_REQUIRED=1`.

mod common;
mod peers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Mail, SmtpMode, TestApp};
use peers::{TOKEN, peer_or_skip, rules};
use serde_json::json;
use tidings::domain::clock::ManualClock;

fn t0() -> DateTime<Utc> {
    "2027-01-15T09:00:00Z".parse().expect("instant")
}

/// Node, chromium and the npm modules, when all are there.
fn browser() -> Option<PathBuf> {
    let modules = std::env::var_os("TIDINGS_BROWSER_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| peers::repo("target/browser/node_modules"));
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let found = node
        && Path::new("/usr/bin/chromium").exists()
        && modules.join("playwright-core").exists()
        && modules.join("axe-core/axe.min.js").exists();
    peer_or_skip(
        found.then_some(modules),
        "chromium with Playwright and axe-core",
        "apt-get install chromium; npm install --prefix target/browser playwright-core axe-core",
    )
}

fn link(app: &TestApp, mail: &Mail, part: &str) -> String {
    mail.text()
        .split_whitespace()
        .find(|w| w.starts_with(&app.base) && w.contains(part))
        .unwrap_or_else(|| panic!("no {part} link in:\n{}", mail.text()))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_chromium_in_every_locale_with_no_serious_accessibility_violation() {
    let Some(modules) = browser() else { return };
    let clock = ManualClock::at(t0());
    let app = TestApp::spawn_on_clock(
        &rules("updates", &[("every", "4h"), ("progress", "email, sms")]),
        SmtpMode::Accept,
        Arc::clone(&clock),
    )
    .await;
    let locales = [
        ("en", "America/New_York", "Next update by Friday 08:00"),
        ("pl", "Europe/Warsaw", "Następna wiadomość do: piątek 14:00"),
        (
            "id",
            "Asia/Jakarta",
            "Kabar berikutnya paling lambat Jumat 20.00",
        ),
        // 21:00 in Manila is within SMS quiet hours: the promise moves to 08:00.
        (
            "tl",
            "Asia/Manila",
            "Susunod na update bago ang Sabado 8:00 AM",
        ),
    ];
    for (locale, tz, _) in locales {
        let mut case = peers::case_on(&["email", "sms"]);
        case["customer"]["email"] = json!(format!("{locale}@example.com"));
        case["customer"]["locale"] = json!(locale);
        case["customer"]["timezone"] = json!(tz);
        let r = app.put_case(&format!("WEB-{locale}"), &case).await;
        assert_eq!(r.status(), 201);
    }
    app.put_case("WEB-GONE", &peers::case_on(&["email"])).await;
    // Closed at once: their links expire 30 days on.
    for (locale, tz, _) in locales {
        let mut case = peers::case_on(&["email"]);
        case["customer"]["email"] = json!(format!("old-{locale}@example.com"));
        case["customer"]["locale"] = json!(locale);
        case["customer"]["timezone"] = json!(tz);
        case["status"] = json!("closed");
        let r = app.put_case(&format!("OLD-{locale}"), &case).await;
        assert_eq!(r.status(), 201);
    }
    let mails = app
        .wait_mails(Duration::from_secs(6), |m| m.len() >= 9)
        .await;
    let mail_to = |to: &str| {
        mails
            .iter()
            .find(|m| m.to.iter().any(|t| t == to))
            .unwrap_or_else(|| panic!("no mail to {to}"))
    };
    let gone = link(&app, mail_to(peers::EMAIL), "/c/");
    let r = app
        .client
        .delete(app.url("/v1/cases/WEB-GONE"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let mut pages = Vec::new();
    for (locale, _, promise) in locales {
        let mail = mail_to(&format!("{locale}@example.com"));
        pages.push(json!({
            "locale": locale,
            "page": link(&app, mail, "/c/"),
            "unsubscribe": link(&app, mail, "/unsubscribe/"),
            "promise": promise,
        }));
    }
    let en = pages[0]["page"].as_str().expect("a link").to_owned();
    let forged = format!("{}x", &en[..en.len() - 1]);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&out).expect("output folder");
    // Links that name no customer, in each browser language.
    let refused: Vec<_> = locales
        .iter()
        .flat_map(|(locale, _, _)| {
            [
                json!({ "state": "not found", "url": forged, "locale": locale, "accept": locale }),
                json!({ "state": "gone", "url": gone, "locale": locale, "accept": locale }),
            ]
        })
        .collect();
    let input = json!({
        "out": out,
        "pause_until": "2027-01-20",
        "locales": pages,
        "refused": refused,
    });
    let expired: Vec<_> = locales
        .iter()
        .map(|(locale, _, _)| {
            let mail = mail_to(&format!("old-{locale}@example.com"));
            json!({ "state": "expired", "url": link(&app, mail, "/c/"), "locale": locale, "fresh": true })
        })
        .collect();
    run_script(&modules, &input).await;
    for (locale, _, _) in locales {
        let shot = out.join(format!("page-{locale}.png"));
        assert!(shot.exists(), "no screenshot {}", shot.display());
    }
    println!("screenshots and report.json in {}", out.display());

    // A month after the close, the closed cases' links have expired: their
    // pages offer a fresh link, which the browser asks for, and it arrives.
    clock.advance(chrono::Duration::days(31));
    let input = json!({
        "out": out, "pause_until": "2027-03-01", "locales": [],
        "refused": expired, "report": "report-expired.json",
    });
    run_script(&modules, &input).await;
    for (locale, _, _) in locales {
        let to = format!("old-{locale}@example.com");
        app.wait_mails(Duration::from_secs(6), |m| {
            m.iter().filter(|m| m.to.contains(&to)).count() == 2
        })
        .await;
    }

    // The browser stopped every case: the next updates do not arrive.
    settled(&app, &locales).await;
    let before = app.mails().len();
    clock.advance(chrono::Duration::hours(4));
    settled(&app, &locales).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.mails().len(),
        before,
        "mail after the browser stopped it"
    );
}

/// Waits until no message of the browser's cases is pending.
async fn settled(app: &TestApp, locales: &[(&str, &str, &str)]) {
    for (locale, _, _) in locales {
        peers::eventually(Duration::from_secs(6), "messages settled", async || {
            let case = app.get_case(&format!("WEB-{locale}")).await;
            let pending = case["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .any(|m| m["status"] == "pending");
            if pending {
                Err("pending".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
    }
}

/// Runs `tests/browser/page.cjs` on `input`; it must pass.
async fn run_script(modules: &Path, input: &serde_json::Value) {
    let script = peers::repo("tests/browser/page.cjs");
    let (modules, input) = (modules.to_owned(), input.to_string());
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(script)
            .env("TIDINGS_BROWSER_INPUT", input)
            .env("TIDINGS_BROWSER_MODULES", modules)
            .output()
            .expect("run node")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(run.status.success(), "{stdout}\n{stderr}");
}
