//! Twilio as the tests play it: the account and token the daemon is
//! configured with, webhooks signed the way Twilio signs them (computed
//! here independently of the daemon's own code), and a tap in front of
//! Prism that keeps each request the daemon sent, so a test can read what
//! it asked Twilio for as well as Prism's verdict on it.

use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::{Daemon, Prism, listener};

pub const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token-0001";

/// The SMS part of the config: Twilio at `base_url` (Prism, or a tap in
/// front of it), the auth token in a file in `dir`; `min_gap: 0s` unless
/// `extra` sets one.
pub fn sms_config(base_url: &str, dir: &std::path::Path, extra: &str) -> String {
    let token = dir.join("twilio_token");
    std::fs::write(&token, AUTH_TOKEN).expect("write the token file");
    format!(
        "sms:
  transport: twilio
  base_url: {base_url}
  account_sid: {ACCOUNT}
  auth_token_file: {token:?}
  from: \"+15005550006\"
{gap}{extra}",
        gap = if extra.contains("min_gap") {
            ""
        } else {
            "  min_gap: 0s\n"
        },
    )
}

/// X-Twilio-Signature as Twilio documents it: base64(HMAC-SHA1(token,
/// url + each param name and value, sorted by name)).
pub fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac =
        <Hmac<sha1::Sha1> as Mac>::new_from_slice(AUTH_TOKEN.as_bytes()).expect("hmac key");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Plays Twilio posting a webhook; `signature` overrides the right one.
pub async fn webhook(
    d: &Daemon,
    path_and_query: &str,
    params: &[(&str, &str)],
    signature: Option<Option<&str>>,
) -> (u16, String) {
    let url = d.url(path_and_query);
    let good = twilio_signature(&url, params);
    let mut req = d.http.post(&url).form(params);
    match signature {
        None => req = req.header("X-Twilio-Signature", good),
        Some(Some(s)) => req = req.header("X-Twilio-Signature", s),
        Some(None) => {}
    }
    let r = req.send().await.expect("webhook answered");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Prism saw at least `at_least` Messages requests for `ACCOUNT`, and
/// found nothing in them against Twilio's description.
pub fn assert_prism_happy(prism: &Prism, at_least: usize) {
    let (requests, complaints) = prism.messages_seen(ACCOUNT);
    assert!(
        complaints.is_empty(),
        "Prism flagged requests against Twilio's spec:\n{}",
        complaints.join("\n")
    );
    assert!(
        requests >= at_least,
        "Prism saw {requests} Messages requests, expected at least {at_least}"
    );
}

/// One request the daemon sent to Twilio, as it went: its path and form
/// fields, in order.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub path: String,
    pub form: Vec<(String, String)>,
}

impl Tapped {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A pass-through in front of Prism: every request is kept, then handed
/// to Prism as it came, and Prism's answer goes back unchanged.
pub struct TwilioTap {
    pub port: u16,
    seen: Arc<Mutex<Vec<Tapped>>>,
}

impl TwilioTap {
    pub async fn start(prism: &Prism) -> Self {
        let seen: Arc<Mutex<Vec<Tapped>>> = Arc::default();
        let std_listener = listener();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("address").port();
        let l = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        let upstream = prism.base_url();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let kept = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let (client, upstream, kept) = (client.clone(), upstream.clone(), kept.clone());
                async move {
                    kept.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Tapped {
                            path: uri.path().to_owned(),
                            form: form_urlencoded::parse(&body).into_owned().collect(),
                        });
                    let path = uri.path_and_query().map_or("/", |p| p.as_str());
                    let mut req = client.request(method, format!("{upstream}{path}"));
                    for name in ["authorization", "content-type", "accept"] {
                        if let Some(v) = headers.get(name) {
                            req = req.header(name, v.as_bytes());
                        }
                    }
                    let r = req.body(body).send().await.expect("Prism answered");
                    let status = r.status().as_u16();
                    let kind = r
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_owned();
                    let bytes = r.bytes().await.unwrap_or_default();
                    axum::response::Response::builder()
                        .status(status)
                        .header("content-type", kind)
                        .body(axum::body::Body::from(bytes))
                        .expect("response")
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Self { port, seen }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Messages requests so far whose `To` starts with `to_prefix`.
    pub fn messages(&self, to_prefix: &str) -> Vec<Tapped> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|t| t.path.ends_with("/Messages.json"))
            .filter(|t| t.field("To").is_some_and(|to| to.starts_with(to_prefix)))
            .cloned()
            .collect()
    }
}

/// Plays Twilio's delivery report `params` (an `undelivered` or `failed`
/// one) for message `msg` of case `case`, then waits up to 5 s for the same
/// update by email at `sink`: the one message there, the history entry
/// that files it as the fallback of `msg` (the only one), and how long it
/// took.
pub async fn late_failure_by_email(
    d: &Daemon,
    sink: &super::Sink,
    case: &str,
    msg: &str,
    params: &[(&str, &str)],
) -> (super::Mail, serde_json::Value, std::time::Duration) {
    let query = format!("/v1/sms/status?source=helpdesk&case={case}&msg={msg}");
    let reported = std::time::Instant::now();
    assert_eq!(webhook(d, &query, params, None).await.0, 204);
    let (mails, arrived) = sink
        .wait_for(reported + std::time::Duration::from_secs(5), |m| {
            !m.is_empty()
        })
        .await;
    assert!(arrived, "no email within 5 s of the report");
    let took = reported.elapsed();
    let h = d.messages(case).await;
    let fallback: Vec<&serde_json::Value> = h.iter().filter(|m| m["fallback_for"] == msg).collect();
    assert_eq!(fallback.len(), 1, "{h:?}");
    assert_eq!(fallback[0]["channel"], "email");
    let mail = mails.into_iter().next().expect("one email");
    assert_eq!(mail.id(), fallback[0]["id"].as_str().expect("id"));
    (mail, fallback[0].clone(), took)
}
