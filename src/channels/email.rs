//! Email over SMTP (lettre, pooled, STARTTLS/TLS) or into `.eml` files.

use std::str::FromStr;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{
    Address, AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

use super::Outcome;
use crate::config::{EmailConfig, EmailTransport};
use crate::store::OutboxEntry;

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Sends outbox entries as email.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(cfg: &EmailConfig) -> Result<Self, String> {
        let transport = match &cfg.transport {
            EmailTransport::File { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Transport::File(AsyncFileTransport::new(dir))
            }
            EmailTransport::Smtp {
                url,
                credentials,
                pool_size,
                timeout,
            } => {
                let mut b = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| format!("email.smtp_url: {e}"))?
                    .pool_config(PoolConfig::new().max_size(*pool_size))
                    .timeout(Some(*timeout));
                if let Some(c) = credentials {
                    b = b.credentials(Credentials::new(c.username.clone(), c.password.clone()));
                }
                Transport::Smtp(b.build())
            }
        };
        Ok(Self {
            transport,
            from: cfg.from.clone(),
        })
    }

    /// Builds the MIME message for an entry. The `Message-ID` comes from
    /// the entry, so a resend after a crash carries the same one.
    pub fn build(&self, entry: &OutboxEntry) -> Result<Message, String> {
        let to = Address::from_str(&entry.to).map_err(|e| format!("recipient: {e}"))?;
        let to = Mailbox::new(Some(entry.to_name.clone()).filter(|n| !n.is_empty()), to);
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(entry.content.subject.clone())
            .message_id(Some(entry.message_id.clone()));
        // RFC 2369 and RFC 8058: mail clients offer a one-click unsubscribe.
        let builder = match &entry.unsubscribe_url {
            Some(url) => builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{url}>"),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                )),
            None => builder,
        };
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(entry.content.text.clone());
        let msg = match &entry.content.html {
            Some(html) => builder.multipart(
                MultiPart::alternative().singlepart(text).singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html.clone()),
                ),
            ),
            None => builder.singlepart(text),
        };
        msg.map_err(|e| format!("building message: {e}"))
    }

    /// One delivery attempt.
    pub async fn send(&self, entry: &OutboxEntry) -> Outcome {
        let msg = match self.build(entry) {
            Ok(m) => m,
            Err(e) => return Outcome::permanent(e),
        };
        match &self.transport {
            Transport::File(t) => match t.send(msg).await {
                Ok(_) => Outcome::sent(),
                Err(e) => Outcome::transient(format!("file transport: {e}")),
            },
            Transport::Smtp(t) => match t.send(msg).await {
                Ok(_) => Outcome::sent(),
                Err(e) if e.is_permanent() => Outcome::permanent(smtp_reason(&e)),
                Err(e) => Outcome::transient(smtp_reason(&e)),
            },
        }
    }
}

/// The server's reply (code and text) without addresses: lettre's error
/// text carries the server's words, which may echo the recipient.
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    let text = crate::redact::redact(&e.to_string());
    match e.status() {
        Some(code) => format!("SMTP {code}: {text}"),
        None if e.is_timeout() => format!("timeout: {text}"),
        None => format!("connection: {text}"),
    }
}
