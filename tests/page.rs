//! The customer's own case page, in process on a manual clock: the link
//! from a delivered email opens the case in the customer's language and
//! zone; hostile links are refused alike; a `GET` of every link in the
//! mail changes nothing; preferences posted on the page steer what the
//! mail server receives next.

mod common;
mod peers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Mail, SmtpMode, TestApp};
use peers::{OTHER_TOKEN, TOKEN, rules};
use serde_json::{Value, json};
use tidings::domain::clock::ManualClock;

/// Friday 2027-01-15 09:00 UTC, 04:00 in New York.
fn t0() -> DateTime<Utc> {
    "2027-01-15T09:00:00Z".parse().expect("instant")
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

const SETTLE: Duration = Duration::from_secs(6);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn app() -> (Arc<ManualClock>, TestApp) {
    app_on("email").await
}

/// The daemon with progress updates every 4 h on `progress` (channels).
async fn app_on(progress: &str) -> (Arc<ManualClock>, TestApp) {
    let clock = ManualClock::at(t0());
    let app = TestApp::spawn_on_clock(
        &rules("updates", &[("every", "4h"), ("progress", progress)]),
        SmtpMode::Accept,
        Arc::clone(&clock),
    )
    .await;
    (clock, app)
}

/// Maria's case on email only, at `email`, in `locale` and `tz`.
fn case(email: &str, locale: &str, tz: &str) -> Value {
    let mut c = peers::case_on(&["email"]);
    c["customer"]["email"] = json!(email);
    c["customer"]["locale"] = json!(locale);
    c["customer"]["timezone"] = json!(tz);
    c
}

/// Every link to this daemon in a mail's text.
fn links(app: &TestApp, mail: &Mail) -> Vec<String> {
    mail.text()
        .split_whitespace()
        .filter(|w| w.starts_with(&app.base))
        .map(str::to_owned)
        .collect()
}

fn page_link(app: &TestApp, mail: &Mail) -> String {
    links(app, mail)
        .into_iter()
        .find(|l| l.contains("/c/"))
        .unwrap_or_else(|| panic!("no page link in:\n{}", mail.text()))
}

async fn mails_to(app: &TestApp, to: &str, n: usize) -> Vec<Mail> {
    let to = to.to_owned();
    app.wait_mails(SETTLE, |m| {
        m.iter().filter(|m| m.to.contains(&to)).count() >= n
    })
    .await
    .into_iter()
    .filter(|m| m.to.contains(&to))
    .collect()
}

async fn get(url: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let r = client().get(url).send().await.expect("answer");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.expect("body"))
}

/// The hidden form token on a page.
fn csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a form token") + 19;
    html[at..].split('"').next().expect("value").to_owned()
}

async fn post(url: &str, form: &[(&str, &str)]) -> reqwest::Response {
    client().post(url).form(form).send().await.expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_in_a_delivered_email_shows_the_promise_in_the_customers_zone_and_language() {
    let (_clock, app) = app().await;
    for (id, email, locale, tz) in [
        ("EN-1", "en@example.com", "en", "America/New_York"),
        ("PL-1", "pl@example.com", "pl", "Europe/Warsaw"),
        ("ID-1", "id@example.com", "id", "Asia/Jakarta"),
        ("TL-1", "tl@example.com", "tl", "Asia/Manila"),
    ] {
        let r = app.put_case(id, &case(email, locale, tz)).await;
        assert_eq!(r.status(), 201);
        let mail = mails_to(&app, email, 1).await.remove(0);
        let (status, headers, html) = get(&page_link(&app, &mail)).await;
        assert_eq!(status, 200, "{html}");
        // 13:00 UTC: Friday 08:00 in New York, 14:00 in Warsaw, 20:00 in
        // Jakarta, 9 PM in Manila.
        let promise = match locale {
            "en" => "Next update by <strong>Friday 08:00</strong>",
            "pl" => "Następna wiadomość do: <strong>piątek 14:00</strong>",
            "id" => "Kabar berikutnya paling lambat <strong>Jumat 20.00</strong>",
            _ => "Susunod na update bago ang <strong>Biyernes 9:00 PM</strong>",
        };
        assert!(html.contains(promise), "{locale}: {html}");
        assert!(html.contains(&format!("<html lang=\"{locale}\">")));
        let city = tz.rsplit('/').next().expect("a city");
        assert!(html.contains(city), "{locale}: the zone is named");
        for pii in [email, "12125550143", "Hernandez", "Maria"] {
            assert!(!html.contains(pii), "{pii} on the page");
        }
        for (name, value) in [
            ("referrer-policy", "no-referrer"),
            ("cache-control", "private, no-store"),
            ("x-robots-tag", "noindex, nofollow"),
        ] {
            assert_eq!(headers[name], value, "{name}");
        }
        let csp = headers["content-security-policy"].to_str().expect("ascii");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(!html.contains("<script"), "no scripts");
    }
    let (status, headers, css) = get(&app.url("/c/page.css")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/css; charset=utf-8");
    assert!(css.contains("max-width"));
}

/// The median time of `rounds` GETs of each url, taken in turn so that
/// load on the machine weighs on every kind alike; and the statuses seen.
async fn timed(urls: &[(&str, String)], rounds: usize) -> Vec<(String, Duration, Vec<u16>)> {
    let http = client();
    let mut took: Vec<Vec<Duration>> = vec![Vec::new(); urls.len()];
    let mut statuses: Vec<Vec<u16>> = vec![Vec::new(); urls.len()];
    for _ in 0..rounds {
        for (i, (_, url)) in urls.iter().enumerate() {
            let started = Instant::now();
            let r = http.get(url).send().await.expect("answer");
            let status = r.status().as_u16();
            let _ = r.text().await;
            took[i].push(started.elapsed());
            statuses[i].push(status);
        }
    }
    urls.iter()
        .zip(took)
        .zip(statuses)
        .map(|(((what, _), mut t), s)| {
            t.sort();
            ((*what).to_owned(), t[rounds / 2], s)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_truncated_expired_and_erased_links_are_refused_alike() {
    let (clock, app) = app().await;
    app.put_case("KEEP-1", &case("keep@example.com", "en", "UTC"))
        .await;
    app.put_case("GONE-1", &case("gone@example.com", "en", "UTC"))
        .await;
    app.put_case("OLD-1", &case("old@example.com", "pl", "UTC"))
        .await;
    let keep = page_link(&app, &mails_to(&app, "keep@example.com", 1).await[0]);
    let gone = page_link(&app, &mails_to(&app, "gone@example.com", 1).await[0]);
    let old = page_link(&app, &mails_to(&app, "old@example.com", 1).await[0]);
    let token = keep.rsplit('/').next().expect("token").to_owned();

    // Erased: 410.
    let r = app
        .client
        .delete(app.url("/v1/cases/GONE-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let (status, _, html) = get(&gone).await;
    assert_eq!(status, 410);
    assert!(!html.contains("Replacement router"), "nothing of the case");

    // Expired: closed more than 30 days ago.
    let r = app
        .event("OLD-1", json!({ "type": "status", "status": "closed" }))
        .await;
    assert_eq!(r.status(), 200);
    let (status, _, _) = get(&old).await;
    assert_eq!(status, 200, "still valid just after closing");
    clock.advance(chrono::Duration::days(31));
    let (status, _, html) = get(&old).await;
    assert_eq!(status, 404);
    assert!(
        html.contains("Ten link wygasł"),
        "in the customer's language: {html}"
    );

    let mut flipped: Vec<char> = token.chars().collect();
    flipped[3] = if flipped[3] == 'A' { 'B' } else { 'A' };
    let forged: String = flipped.into_iter().collect();
    let base = app.url("/c/");
    let hostile = [
        ("forged", format!("{base}{forged}")),
        ("truncated", format!("{base}{}", &token[..token.len() - 4])),
        ("unknown", format!("{base}{}", "Q".repeat(token.len()))),
        ("oversized", format!("{base}{}", "Q".repeat(600))),
        ("expired", old.clone()),
    ];
    let medians = timed(&hostile, 15).await;
    for (what, median, statuses) in &medians {
        assert!(statuses.iter().all(|s| *s == 404), "{what}: {statuses:?}");
        assert!(
            *median >= tidings::http::page::REFUSAL_FLOOR,
            "{what}: {median:?}"
        );
    }
    for (what, url) in &hostile {
        // A POST to a hostile link changes nothing and answers the same.
        let r = post(url, &[("action", "stop")]).await;
        assert_eq!(r.status(), 404, "{what}");
    }
    // A link that names no customer answers in the browser's language.
    let r = client()
        .get(&hostile[0].1)
        .header("accept-language", "pl-PL,pl;q=0.9,en;q=0.5")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    assert!(r.text().await.expect("body").contains("Nieprawidłowy link"));
    let fastest = medians.iter().map(|(_, d, _)| *d).min().expect("some");
    let slowest = medians.iter().map(|(_, d, _)| *d).max().expect("some");
    let shown: Vec<(&str, Duration)> = medians.iter().map(|(w, d, _)| (w.as_str(), *d)).collect();
    println!("refusals, median of 15 each: {shown:?}");
    assert!(
        slowest - fastest < Duration::from_millis(25),
        "timing tells refusals apart: {shown:?}"
    );
    let (status, _, _) = get(&keep).await;
    assert_eq!(status, 200, "the good link still opens");

    // The expired page sends a fresh link to the address on file, once a day.
    let (_, _, html) = get(&old).await;
    let form = [("action", "fresh"), ("csrf", &csrf(&html))];
    let r = post(&old, &form).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .expect("body")
            .contains("Nowy link jest w drodze")
    );
    let mails = mails_to(&app, "old@example.com", 2).await;
    let fresh = page_link(&app, &mails[1]);
    assert_ne!(fresh, old);
    let (status, _, html) = get(&fresh).await;
    assert_eq!(status, 200, "the fresh link opens the closed case: {html}");
    let r = post(&old, &form).await;
    assert_eq!(r.status(), 200, "the same answer the second time");
    let h = common_wait_history(&app, "OLD-1", TOKEN, 2).await;
    assert_eq!(h.len(), 2, "one fresh link a day: {h:?}");
}

/// What the history says of a case's messages: (channel, status).
async fn history(app: &TestApp, id: &str, token: &str) -> Vec<(String, String)> {
    let case: Value = app
        .client
        .get(app.url(&format!("/v1/cases/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    case["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap_or_default().to_owned(),
                m["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetcher_that_gets_every_link_in_fifty_messages_changes_nothing() {
    let (clock, app) = app().await;
    let ids: Vec<String> = (0..10).map(|i| format!("PRE-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let r = app
            .put_case(id, &case(&format!("c{i}@example.com"), "en", "UTC"))
            .await;
        assert_eq!(r.status(), 201);
    }
    app.wait_mails(SETTLE, |m| m.len() >= 10).await;
    for round in 1..=4 {
        clock.advance(hours(4));
        app.wait_mails(SETTLE, |m| m.len() >= 10 + 10 * round).await;
    }
    let mails = app.mails();
    assert_eq!(mails.len(), 50);
    let mut fetched = 0;
    for mail in &mails {
        let mut all = links(&app, mail);
        if let Some(h) = mail.header("List-Unsubscribe") {
            all.push(h.trim_matches(['<', '>']).to_owned());
        }
        for link in all {
            let (status, _, _) = get(&link).await;
            assert!(status.is_success(), "{link}: {status}");
            fetched += 1;
        }
    }
    println!("prefetch: {fetched} links in 50 messages fetched");
    assert!(fetched >= 100, "a page and an unsubscribe link each");
    // Every case still gets its next update.
    clock.advance(hours(4));
    app.wait_mails(SETTLE, |m| m.len() >= 60).await;
    for id in &ids {
        let h = common_wait_history(&app, id, TOKEN, 6).await;
        assert!(h.iter().all(|(_, s)| s == "sent"), "{id}: {h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsubscribe_link_asks_first_and_only_a_post_opts_out() {
    let (clock, app) = app().await;
    app.put_case("UNSUB-1", &case("u@example.com", "en", "UTC"))
        .await;
    let mail = mails_to(&app, "u@example.com", 1).await.remove(0);
    let link = links(&app, &mail)
        .into_iter()
        .find(|l| l.contains("/unsubscribe/"))
        .expect("an unsubscribe link");
    let (status, headers, html) = get(&link).await;
    assert_eq!(status, 200);
    assert!(html.contains("<form method=\"post\""), "{html}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    clock.advance(hours(4));
    mails_to(&app, "u@example.com", 2).await;
    let r = post(&link, &[("List-Unsubscribe", "One-Click")]).await;
    assert_eq!(r.status(), 200);
    clock.advance(hours(4));
    let h = common_wait_history(&app, "UNSUB-1", TOKEN, 3).await;
    assert_eq!(h[2].1, "cancelled", "opted out: {h:?}");
    assert_eq!(app.mails().len(), 2, "no mail after the POST");
}

/// Waits until the case's history holds `n` messages, none pending.
async fn common_wait_history(
    app: &TestApp,
    id: &str,
    token: &str,
    n: usize,
) -> Vec<(String, String)> {
    peers::eventually(SETTLE, "history", async || {
        let h = history(app, id, token).await;
        if h.len() >= n && h.iter().all(|(_, s)| s != "pending") {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_posted_on_the_page_steer_the_next_messages() {
    let (clock, app) = app_on("email, sms").await;
    let mut both = case("p@example.com", "en", "America/New_York");
    both["customer"]["channels"] = json!(["email", "sms"]);
    app.put_case("PREF-1", &both).await;
    let mail = mails_to(&app, "p@example.com", 1).await.remove(0);
    let url = page_link(&app, &mail);
    let (_, _, html) = get(&url).await;
    let token = csrf(&html);

    // Refused: no form token, a cross-site origin, an unknown action.
    let r = post(&url, &[("action", "stop")]).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").starts_with("csrf:"));
    let r = client()
        .post(&url)
        .header("origin", "https://evil.example")
        .form(&[("action", "stop"), ("csrf", &token)])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 403);
    let r = post(&url, &[("action", "explode"), ("csrf", &token)]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").starts_with("action:"));
    let r = post(
        &url,
        &[("action", "pause"), ("until", "soon"), ("csrf", &token)],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").starts_with("until:"));

    // SMS only for this case: the next update does not come by email.
    let r = post(
        &url,
        &[("action", "channels"), ("channel", "sms"), ("csrf", &token)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let (_, _, html) = get(&format!("{url}?done=channels")).await;
    assert!(html.contains("Saved: your channels"), "{html}");
    clock.advance(hours(4));
    let h = common_wait_history(&app, "PREF-1", TOKEN, 2).await;
    assert_eq!(h.last().map(|(c, _)| c.as_str()), Some("sms"), "{h:?}");
    assert_eq!(mails_to(&app, "p@example.com", 1).await.len(), 1);

    // Back to email, then a pause until Wednesday: a confirmation that says
    // when updates resume, nothing more before 09:00 New York time that day
    // (14:00 UTC), the update right then.
    post(
        &url,
        &[
            ("action", "channels"),
            ("channel", "email"),
            ("csrf", &token),
        ],
    )
    .await;
    let r = post(
        &url,
        &[
            ("action", "pause"),
            ("until", "2027-01-20"),
            ("csrf", &token),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let (_, _, html) = get(&url).await;
    assert!(
        html.contains("Updates paused until <strong>Wednesday 09:00</strong>"),
        "{html}"
    );
    let confirmation = mails_to(&app, "p@example.com", 2).await.remove(1);
    let text = confirmation.text();
    assert!(
        text.contains("we have paused updates")
            && text.contains("Wednesday, January 20, 2027 at 9:00 AM EST"),
        "{text}"
    );
    let resume: DateTime<Utc> = "2027-01-20T14:00:00Z".parse().expect("instant");
    while clock_now(&app) + hours(4) < resume {
        clock.advance(hours(4));
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert_eq!(
        mails_to(&app, "p@example.com", 2).await.len(),
        2,
        "no email during the pause"
    );
    clock.set(resume);
    let mails = mails_to(&app, "p@example.com", 3).await;
    assert_eq!(mails.len(), 3);
    let case = app.get_case("PREF-1").await;
    let last = case["messages"]
        .as_array()
        .expect("messages")
        .last()
        .cloned();
    assert_eq!(last.expect("a message")["due_at"], "2027-01-20T14:00:00Z");

    // Stop this case: the next update does not come.
    let r = post(&url, &[("action", "stop"), ("csrf", &token)]).await;
    assert_eq!(r.status(), 303);
    clock.advance(chrono::Duration::days(2));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(app.mails().len(), 3, "no email after stop");
}

fn clock_now(app: &TestApp) -> DateTime<Utc> {
    use tidings::domain::clock::Clock;
    app.clock.as_ref().expect("manual clock").now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_help_desk_leaves_the_other_help_desks_updates() {
    let (clock, app) = app().await;
    let body = case("s@example.com", "en", "UTC");
    app.put_case("DESK-A", &body).await;
    let r = app
        .client
        .put(app.url("/v1/cases/DESK-B"))
        .bearer_auth(OTHER_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let mails = mails_to(&app, "s@example.com", 2).await;
    let a = page_link(&app, &mails[0]);
    // Which desk's page is it? The page names the case id.
    let (_, _, html) = get(&a).await;
    let (url, stopped, kept) = if html.contains("DESK-A") {
        (a, ("DESK-A", TOKEN), ("DESK-B", OTHER_TOKEN))
    } else {
        (a, ("DESK-B", OTHER_TOKEN), ("DESK-A", TOKEN))
    };
    let r = post(&url, &[("action", "stop_source"), ("csrf", &csrf(&html))]).await;
    assert_eq!(r.status(), 303);
    clock.advance(hours(4));
    let kept_h = common_wait_history(&app, kept.0, kept.1, 2).await;
    let stopped_h = common_wait_history(&app, stopped.0, stopped.1, 2).await;
    assert_eq!(kept_h[1].1, "sent", "{kept_h:?}");
    assert_eq!(stopped_h[1].1, "cancelled", "{stopped_h:?}");
    assert_eq!(mails_to(&app, "s@example.com", 3).await.len(), 3);
    let (_, _, html) = get(&url).await;
    assert!(
        html.contains("You stopped all updates from Example Support"),
        "{html}"
    );
}

/// The page link in the first `.eml` the daemon wrote.
async fn link_from_eml(d: &peers::Daemon) -> String {
    let dir = d.dir.path().join("data/mail");
    peers::eventually(SETTLE, "an .eml file", async || {
        let file = std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
            .ok_or("no .eml yet")?;
        let raw = std::fs::read(file.path()).map_err(|e| e.to_string())?;
        let text = mail_parser::MessageParser::default()
            .parse(&raw)
            .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
            .ok_or("no text part")?;
        text.split_whitespace()
            .find(|w| w.contains("/c/"))
            .map(str::to_owned)
            .ok_or_else(|| format!("no page link in:\n{text}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_page_from_an_eml_and_logs_no_personal_data_or_token() {
    let d = peers::Setup::new(rules("updates", &[("every", "1h")]))
        .start()
        .await;
    d.put_case("LOG-1", &peers::case_on(&["email", "sms"]))
        .await;
    let url = link_from_eml(&d).await;
    let token = url.rsplit('/').next().expect("token").to_owned();
    let (status, _, html) = get(&url).await;
    assert_eq!(status, 200);
    for pii in [peers::EMAIL, peers::PHONE, "2125550143", "Hernandez"] {
        assert!(!html.contains(pii), "{pii} in the page source");
    }
    let r = post(
        &url,
        &[
            ("action", "pause"),
            ("until", "2099-01-01"),
            ("csrf", &csrf(&html)),
        ],
    )
    .await;
    assert_eq!(r.status(), 400, "more than a year ahead");
    let r = post(&url, &[("action", "stop_source"), ("csrf", &csrf(&html))]).await;
    assert_eq!(r.status(), 303);
    let (status, _, _) = get(&format!("{url}x")).await;
    assert_eq!(status, 404);
    let log = d.log();
    assert!(log.contains("case page preference saved"), "{log}");
    for secret in [peers::EMAIL, peers::PHONE, "2125550143", &token, TOKEN] {
        assert!(!log.contains(secret), "the log holds `{secret}`:\n{log}");
    }
}
