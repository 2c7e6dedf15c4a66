//! SMS through Twilio's Messages API, or into JSON files (the demo default).
//!
//! `POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json` with
//! `To`, `From` (or `MessagingServiceSid`), `Body` and `StatusCallback`,
//! HTTP Basic auth with the account SID and auth token. Twilio's answers map
//! to outcomes: 2xx sent; 429 and 5xx (and 401/403, a credentials problem
//! the operator can fix) retried, honouring `Retry-After`; any other 4xx is
//! permanent with Twilio's error code, and 21610 means the recipient
//! unsubscribed at the carrier.
//!
//! WhatsApp goes the same way (`Texter::whatsapp`): `To` is
//! `whatsapp:+…`, `From` the WhatsApp sender, and a message outside the
//! 24-hour window carries `ContentSid` and `ContentVariables` (a JSON
//! object of the numbered variables) instead of `Body`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use super::Outcome;
use crate::domain::{Content, Message, WhatsAppText};

/// Twilio's error code for a recipient who replied STOP at the carrier.
pub const TWILIO_UNSUBSCRIBED: u64 = 21610;

/// Twilio credentials, never printed.
#[derive(Clone)]
pub struct TwilioAuth {
    pub account_sid: String,
    pub auth_token: String,
}

impl std::fmt::Debug for TwilioAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TwilioAuth(..)")
    }
}

/// Who an SMS comes from: a number or a messaging service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmsSender {
    From(String),
    MessagingService(String),
}

#[derive(Debug, Clone)]
pub enum SmsTransport {
    Twilio {
        base_url: String,
        sender: SmsSender,
        timeout: Duration,
    },
    /// One JSON file per message in `dir` (the demo default).
    File { dir: PathBuf },
}

#[derive(Clone)]
enum Transport {
    Twilio {
        client: reqwest::Client,
        messages_url: String,
        sender: SmsSender,
        auth: TwilioAuth,
    },
    File {
        dir: PathBuf,
    },
}

/// Sends outbox entries as SMS, or as WhatsApp messages.
#[derive(Clone)]
pub struct Texter {
    transport: Transport,
    /// Where Twilio reports delivery (`{public_url}/v1/sms/status`).
    status_url: String,
    /// Put before the recipient's number: `whatsapp:` for WhatsApp.
    to_prefix: &'static str,
}

impl std::fmt::Debug for Texter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Texter").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TwilioMessage {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<u64>,
    message: Option<String>,
}

impl Texter {
    pub fn new(
        transport: &SmsTransport,
        twilio: Option<&TwilioAuth>,
        public_url: &str,
    ) -> Result<Self, String> {
        let transport = match transport {
            SmsTransport::File { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Transport::File { dir: dir.clone() }
            }
            SmsTransport::Twilio {
                base_url,
                sender,
                timeout,
            } => {
                let auth = twilio
                    .cloned()
                    .ok_or("sms: transport twilio needs account_sid and an auth token")?;
                // reqwest is built without a bundled crypto provider; ring is
                // the one lettre already uses.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .timeout(*timeout)
                    .connect_timeout(Duration::from_secs(10))
                    .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("sms: HTTP client: {e}"))?;
                Transport::Twilio {
                    client,
                    messages_url: format!(
                        "{base_url}/2010-04-01/Accounts/{}/Messages.json",
                        auth.account_sid
                    ),
                    sender: sender.clone(),
                    auth,
                }
            }
        };
        Ok(Self {
            transport,
            status_url: format!("{public_url}/v1/sms/status"),
            to_prefix: "",
        })
    }

    /// A sender of WhatsApp messages: `transport` names the WhatsApp
    /// sender (`whatsapp:+…` or a messaging service); delivery reports
    /// come to the same status callback as SMS.
    pub fn whatsapp(
        transport: &SmsTransport,
        twilio: Option<&TwilioAuth>,
        public_url: &str,
    ) -> Result<Self, String> {
        Ok(Self {
            to_prefix: "whatsapp:",
            ..Self::new(transport, twilio, public_url)?
        })
    }

    /// The callback URL for one message: it names the case and the message,
    /// and Twilio signs it with the rest of the request.
    pub fn status_callback(&self, msg: &Message) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("source", &msg.case.source)
            .append_pair("case", msg.case.id.as_ref())
            .append_pair("msg", &msg.id.to_string())
            .finish();
        format!("{}?{query}", self.status_url)
    }

    /// One delivery attempt.
    pub async fn send(&self, msg: &Message) -> Outcome {
        match &self.transport {
            Transport::File { dir } => {
                let doc = match &msg.content {
                    Content::WhatsApp(w) => serde_json::json!({
                        "message_id": msg.message_id,
                        "to": format!("{}{}", self.to_prefix, msg.to),
                        "body": (w.template.is_none()).then_some(&w.body),
                        "content_sid": w.template.as_ref().map(|t| &t.content_sid),
                        "content_variables": w.template.as_ref().map(|t| &t.variables),
                    }),
                    _ => serde_json::json!({
                        "message_id": msg.message_id,
                        "to": msg.to,
                        "body": msg.content.text(),
                        "segments": crate::domain::segments::count(msg.content.text()).count,
                    }),
                };
                let path = dir.join(format!("{}.json", msg.id));
                let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                match tokio::fs::write(&path, bytes).await {
                    Ok(()) => Outcome::sent(),
                    Err(e) => Outcome::transient(format!("file transport: {e}")),
                }
            }
            Transport::Twilio {
                client,
                messages_url,
                sender,
                auth,
            } => {
                let callback = self.status_callback(msg);
                let to = format!("{}{}", self.to_prefix, msg.to);
                let mut form: Vec<(&str, &str)> =
                    vec![("To", to.as_str()), ("StatusCallback", callback.as_str())];
                // An approved WhatsApp template goes alone: Twilio refuses
                // a `Body` beside it outside the window.
                let variables;
                if let Content::WhatsApp(WhatsAppText {
                    template: Some(t), ..
                }) = &msg.content
                {
                    variables = serde_json::to_string(&t.variables).unwrap_or_default();
                    form.push(("ContentSid", t.content_sid.as_str()));
                    form.push(("ContentVariables", variables.as_str()));
                } else {
                    form.push(("Body", msg.content.text()));
                }
                match sender {
                    SmsSender::From(from) => form.push(("From", from.as_str())),
                    SmsSender::MessagingService(sid) => {
                        form.push(("MessagingServiceSid", sid.as_str()));
                    }
                }
                let response = client
                    .post(messages_url)
                    .basic_auth(&auth.account_sid, Some(&auth.auth_token))
                    .form(&form)
                    .send()
                    .await;
                match response {
                    Ok(r) => classify(r).await,
                    Err(e) if e.is_timeout() => Outcome::transient("Twilio: timeout"),
                    Err(e) => Outcome::transient(format!(
                        "Twilio: connection: {}",
                        crate::domain::redact::redact(&e.without_url().to_string())
                    )),
                }
            }
        }
    }
}

async fn classify(response: reqwest::Response) -> Outcome {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        let sid = serde_json::from_slice::<TwilioMessage>(&body)
            .ok()
            .and_then(|m| m.sid);
        return Outcome::Sent { provider_id: sid };
    }
    let err = serde_json::from_slice::<TwilioError>(&body).ok();
    let code = err.as_ref().and_then(|e| e.code);
    let message = err
        .and_then(|e| e.message)
        .map(|m| crate::domain::redact::redact(&m))
        .unwrap_or_default();
    let reason = match code {
        Some(code) => format!("Twilio {}: error {code}: {message}", status.as_u16()),
        None => format!("Twilio {}: {message}", status.as_u16()),
    };
    let retry = status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || status == StatusCode::REQUEST_TIMEOUT;
    if retry {
        Outcome::Transient {
            reason,
            retry_after,
        }
    } else {
        Outcome::Permanent {
            reason,
            opt_out: code == Some(TWILIO_UNSUBSCRIBED),
        }
    }
}

/// `Retry-After` in seconds (the form Twilio sends); capped at a day.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("999999999"),
            Some(Duration::from_secs(86_400))
        );
    }
}
