//! The short form of the case page link an SMS carries (`/s/{code}`),
//! through the binary and its SMS file transport: it fits the SMS where
//! the full link would cost a second segment, redirects to the case's
//! page, refuses forged codes like unknown ones, and dies with the case.

mod peers;

use std::time::Duration;

use peers::rules;
use tidings::domain::segments;

const SETTLE: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The body of the first SMS the daemon wrote.
async fn first_sms(d: &peers::Daemon) -> String {
    let dir = d.dir.path().join("data/sms");
    peers::eventually(SETTLE, "an SMS file", async || {
        let file = std::fs::read_dir(&dir)
            .map_err(|e| e.to_string())?
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))
            .ok_or("no SMS yet")?;
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file.path()).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        doc["body"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no body".to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_carries_a_short_link_that_opens_the_case_page_until_the_case_is_erased() {
    let d = peers::Setup::new(rules(
        "updates",
        &[("every", "1h"), ("progress", "sms"), ("created", "sms")],
    ))
    .extra("sms:\n  quiet_hours: off\n")
    .start()
    .await;
    let mut case = peers::case_on(&["sms"]);
    let id = "ZD-481516";
    case["customer"]["name"] = serde_json::json!("Maria");
    d.put_case(id, &case).await;
    let body = first_sms(&d).await;
    let short = body
        .split_whitespace()
        .find(|w| w.contains("/s/"))
        .unwrap_or_else(|| panic!("no short link in the SMS: {body}"))
        .to_owned();
    assert!(!body.contains("/c/"), "{body}");
    let code = short.rsplit('/').next().expect("code");
    assert_eq!(code.len(), 11, "{short}");

    // The short link answers with the case's page.
    let r = client().get(&short).send().await.expect("answer");
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["referrer-policy"],
        "no-referrer",
        "the redirect carries the page headers"
    );
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with("/c/"), "{location}");
    let full = d.url(&location);
    let r = client().get(&full).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    let html = r.text().await.expect("page");
    assert!(html.contains(id), "the page names the case");

    // One segment with the short link; the full link in its place would
    // have cost a second one.
    assert_eq!(segments::count(&body).count, 1, "{body}");
    let with_full = body.replace(&short, &full);
    assert!(
        segments::count(&with_full).count > 1,
        "{} characters with the full link: {with_full}",
        with_full.chars().count()
    );

    // Forged and junk codes are refused like unknown ones.
    let mut forged = code.to_owned().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    for bad in [forged.as_str(), "AAAAAAAAAAA", "short", &format!("{code}x")] {
        let r = client()
            .get(d.url(&format!("/s/{bad}")))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 404, "/s/{bad}");
    }

    // Erased: the code finds nothing any more.
    d.call(
        d.http.delete(d.url(&format!("/v1/cases/{id}"))),
        204,
        "erase",
    )
    .await;
    let r = client().get(&short).send().await.expect("answer");
    assert_eq!(r.status(), 404, "after erasure");
    let log = d.log();
    assert!(!log.contains(code), "the log holds the short code:\n{log}");
}
