//! Email over SMTP (lettre over our own pooled connections, STARTTLS/TLS)
//! or into `.eml` files.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use email_encoding::headers::writer::EmailWriter;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use lettre::{Address, AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};

use super::Outcome;
use super::smtp::{Relay, SendError};
use crate::domain::{Content, Message as Outgoing};

/// SMTP credentials, never printed.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

#[derive(Debug, Clone)]
pub enum EmailTransport {
    Smtp {
        url: String,
        credentials: Option<Credentials>,
        pool_size: u32,
        timeout: Duration,
        /// Certificates trusted besides the public roots (a relay with a
        /// private certificate authority, `email.tls_ca_file`).
        tls_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    File {
        dir: PathBuf,
    },
}

#[derive(Clone)]
enum Transport {
    Smtp(std::sync::Arc<Relay>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Sends outbox entries as email.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    bounces: Option<Bounces>,
}

/// VERP: each message's envelope sender is `local+TOKEN@domain`, the token
/// naming the message (signed), so a bounce tells which message failed.
#[derive(Clone)]
struct Bounces {
    local: String,
    domain: String,
    key: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(transport: &EmailTransport, from: &Mailbox) -> Result<Self, String> {
        let transport = match transport {
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
                tls_roots,
            } => {
                let credentials = credentials.as_ref().map(|c| {
                    lettre::transport::smtp::authentication::Credentials::new(
                        c.username.clone(),
                        c.password.clone(),
                    )
                });
                let relay = Relay::new(url, credentials, tls_roots, *pool_size as usize, *timeout)
                    .map_err(|e| format!("email.smtp_url: {e}"))?;
                Transport::Smtp(std::sync::Arc::new(relay))
            }
        };
        Ok(Self {
            transport,
            from: from.clone(),
            bounces: None,
        })
    }

    /// Sends customer email with a per-message envelope sender at
    /// `address` (`bounces@example.com` → `bounces+TOKEN@example.com`), the
    /// token signed with `key` (`email.bounce_address`).
    pub fn with_bounces(mut self, address: &Address, key: &[u8]) -> Self {
        self.bounces = Some(Bounces {
            local: address.user().to_owned(),
            domain: address.domain().to_owned(),
            key: key.into(),
        });
        self
    }

    /// The envelope sender for the message with tidings' id `id`, when
    /// bounces are taken.
    pub fn envelope_sender(&self, id: uuid::Uuid) -> Option<Address> {
        let b = self.bounces.as_ref()?;
        let token = crate::domain::signature::bounce_token(&b.key, id.as_bytes());
        Address::new(format!("{}+{token}", b.local), &b.domain).ok()
    }

    /// Builds the MIME message. The `Message-ID` comes from the planned
    /// message, so a resend after a crash carries the same one.
    pub fn build(&self, msg: &Outgoing) -> Result<Message, String> {
        let Content::Email(content) = &msg.content else {
            return Err("an SMS cannot go out by email".into());
        };
        let to = Address::from_str(&msg.to).map_err(|e| format!("recipient: {e}"))?;
        let to = Mailbox::new(Some(msg.to_name.clone()).filter(|n| !n.is_empty()), to);
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .message_id(Some(msg.message_id.clone()));
        let subject = &content.subject;
        let builder = if subject.contains("=?") {
            builder.raw_header(encoded_subject(subject)?)
        } else {
            builder.subject(subject.clone())
        };
        // RFC 2369 and RFC 8058: mail clients offer a one-click unsubscribe.
        let builder = match &msg.unsubscribe_url {
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
        // RFC 3834: an automatic message, so out-of-office replies do not
        // answer it and loop.
        let builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ));
        // RFC 5322 §3.6.4: every later message answers the case's first, so
        // the customer's mail client shows the case as one thread.
        let builder = match &msg.thread {
            Some(first) if *first != msg.message_id => {
                builder.in_reply_to(first.clone()).references(first.clone())
            }
            _ => builder,
        };
        let builder = match msg.reply_to.as_deref().map(Address::from_str) {
            Some(Ok(reply_to)) => builder.reply_to(Mailbox::new(None, reply_to)),
            _ => builder,
        };
        let text = SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(content.text.clone());
        let msg = match &content.html {
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
    pub async fn send(&self, msg: &Outgoing) -> Outcome {
        let sender = self.envelope_sender(msg.id);
        let msg = match self.build(msg) {
            Ok(m) => m,
            Err(e) => return Outcome::permanent(e),
        };
        let envelope = match sender {
            Some(from) => {
                match lettre::address::Envelope::new(Some(from), msg.envelope().to().to_vec()) {
                    Ok(e) => e,
                    Err(e) => return Outcome::permanent(format!("envelope: {e}")),
                }
            }
            None => msg.envelope().clone(),
        };
        match &self.transport {
            Transport::File(t) => match t.send(msg).await {
                Ok(_) => Outcome::sent(),
                Err(e) => Outcome::transient(format!("file transport: {e}")),
            },
            Transport::Smtp(relay) => match relay.send(&envelope, &msg.formatted()).await {
                Ok(()) => Outcome::sent(),
                Err(SendError::Smtp(e)) if e.is_permanent() => Outcome::permanent(smtp_reason(&e)),
                Err(SendError::Smtp(e)) => Outcome::transient(smtp_reason(&e)),
                Err(SendError::Connect(e)) => {
                    Outcome::transient(format!("connection: {}", crate::domain::redact::redact(&e)))
                }
                Err(SendError::Timeout(t)) => Outcome::transient(format!(
                    "timeout: no answer within {}",
                    humantime::format_duration(t)
                )),
            },
        }
    }
}

/// The `Subject` header with the whole text as RFC 2047 encoded words.
/// lettre encodes only words with characters outside printable ASCII, so a
/// subject holding text that merely looks like an encoded word (a
/// customer's `=?utf-8?q?=0D=0ABcc:_x@y.z?=`) would reach mail clients as
/// one and be shown decoded: not what we wrote, line breaks included.
fn encoded_subject(subject: &str) -> Result<HeaderValue, String> {
    const NAME: &str = "Subject";
    let mut encoded = String::new();
    {
        let mut writer = EmailWriter::new(&mut encoded, NAME.len() + ": ".len(), 0, false);
        email_encoding::headers::rfc2047::encode(subject, &mut writer)
            .map_err(|_| "building message: cannot encode the subject".to_owned())?;
    }
    Ok(HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(NAME),
        subject.to_owned(),
        encoded,
    ))
}

/// The server's reply (code and text) without addresses: lettre's error
/// text carries the server's words, which may echo the recipient.
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    let text = crate::domain::redact::redact(&e.to_string());
    match e.status() {
        Some(code) => format!("SMTP {code}: {text}"),
        None if e.is_timeout() => format!("timeout: {text}"),
        None => format!("connection: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CaseKey, EmailText};

    fn entry(subject: &str) -> Outgoing {
        Outgoing {
            id: uuid::Uuid::nil(),
            case: CaseKey::new("helpdesk", "CASE-1".parse().expect("valid id")),
            to_name: "Maria Hernandez".into(),
            to: "maria@example.com".into(),
            content: Content::Email(EmailText {
                subject: subject.into(),
                text: "Hello\n".into(),
                html: None,
            }),
            message_id: "<1@example.com>".into(),
            unsubscribe_url: None,
            thread: None,
            reply_to: None,
        }
    }

    fn mailer() -> Mailer {
        let dir = tempfile::tempdir().expect("temp dir");
        Mailer::new(
            &EmailTransport::File {
                dir: dir.path().to_owned(),
            },
            &"Support <support@example.com>".parse().expect("mailbox"),
        )
        .expect("file mailer")
    }

    #[test]
    fn a_later_message_answers_the_first_and_says_it_is_automatic() {
        let mailer = mailer();
        let mut msg = entry("Case update");
        let first = mailer.build(&msg).expect("builds").formatted();
        let first = String::from_utf8_lossy(&first);
        assert!(
            first.contains("Auto-Submitted: auto-generated\r\n"),
            "{first}"
        );
        assert!(
            !first.contains("In-Reply-To") && !first.contains("Reply-To"),
            "{first}"
        );
        msg.message_id = "<2@example.com>".into();
        msg.thread = Some("<1@example.com>".into());
        msg.reply_to = Some("support+CASE-1@example.com".into());
        let later = mailer.build(&msg).expect("builds").formatted();
        let later = String::from_utf8_lossy(&later);
        for header in [
            "In-Reply-To: <1@example.com>\r\n",
            "References: <1@example.com>\r\n",
            "Reply-To: support+CASE-1@example.com\r\n",
            "Auto-Submitted: auto-generated\r\n",
        ] {
            assert!(later.contains(header), "{header} missing from {later}");
        }
    }

    /// Found by the `render_hostile` fuzz target: a subject that looked
    /// like an encoded word was sent as is, and mail clients showed it
    /// decoded, with a line break and a `Bcc:` in it.
    #[test]
    fn a_subject_that_looks_encoded_reads_back_as_written() {
        let mailer = mailer();
        for subject in [
            "We have received your case: =?utf-8?q?=0D=0ABcc:_x@y.z?= [CASE-1]",
            "=?utf-8?b?QmNjOiB4QHkueg==?=",
            &format!("{}=?x?q?y?= ł", "long words ".repeat(30)),
        ] {
            let raw = mailer.build(&entry(subject)).expect("builds").formatted();
            let parsed = mail_parser::MessageParser::default()
                .parse(&raw)
                .expect("parses");
            assert_eq!(parsed.subject(), Some(subject));
            let text = String::from_utf8_lossy(&raw);
            let head = text.split("\r\n\r\n").next().unwrap_or_default();
            assert_eq!(head.matches("\r\nSubject: ").count(), 1, "{head}");
            assert!(!head.contains("Bcc"), "{head}");
            assert!(head.lines().all(|l| l.len() <= 78), "{head}");
        }
        let raw = mailer
            .build(&entry("Plain subject"))
            .expect("builds")
            .formatted();
        assert!(String::from_utf8_lossy(&raw).contains("\r\nSubject: Plain subject\r\n"));
    }
}
