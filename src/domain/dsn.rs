//! Delivery status notifications (RFC 3464): which of our messages a
//! returned mail is about, for which recipient, and whether for good.
//!
//! The message is named by the VERP token in the address the report was
//! sent to (`bounces+TOKEN@domain`, the envelope sender tidings used): the
//! report's `To`, `Delivered-To` or `X-Original-To`, or Postfix's
//! `X-Postfix-Sender`. The verdict comes from the per-recipient fields of
//! the `message/delivery-status` part: `Action: failed` with a 5.x.x
//! `Status` is hard; `Action: delayed`, or failed with 4.x.x, is soft.

use mail_parser::{MessageParser, MimeHeaders};

/// What a report says of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// `Final-Recipient` (or `Original-Recipient`), the address alone.
    pub address: Option<String>,
    pub action: String,
    pub status: String,
    pub diagnostic: Option<String>,
}

/// How a recipient's report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The message will not arrive: fail it and fall back.
    Hard,
    /// The mail system is still trying, or gave up on a temporary error.
    Soft,
    /// Delivered, relayed or expanded: nothing to do.
    None,
}

impl Recipient {
    pub fn verdict(&self) -> Verdict {
        let class = self.status.trim().chars().next();
        match self.action.trim().to_ascii_lowercase().as_str() {
            "failed" if class == Some('5') => Verdict::Hard,
            "failed" | "delayed" => Verdict::Soft,
            _ => Verdict::None,
        }
    }
}

/// A delivery status notification, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What follows `+` in each address the report was sent to: candidate
    /// VERP tokens, to be verified.
    pub tokens: Vec<String>,
    pub recipients: Vec<Recipient>,
}

/// Reads `raw` as a delivery status notification; an error names what is
/// missing.
pub fn read(raw: &[u8]) -> Result<Report, String> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or("not a mail message")?;
    let status = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("delivery-status"))
            })
        })
        .ok_or("no message/delivery-status part: not a delivery status notification")?;
    let text = String::from_utf8_lossy(status.contents());
    let blocks = blocks(&text);
    let mut tokens = Vec::new();
    for name in ["To", "Delivered-To", "X-Original-To"] {
        for value in msg.header_values(name) {
            if let Some(list) = value.as_address() {
                for addr in list.iter() {
                    if let Some(a) = addr.address() {
                        push_token(&mut tokens, a);
                    }
                }
            } else if let Some(t) = value.as_text() {
                push_token(&mut tokens, t);
            }
        }
    }
    for block in &blocks {
        if let Some(sender) = field(block, "X-Postfix-Sender") {
            push_token(&mut tokens, typed_address(sender));
        }
    }
    let recipients: Vec<Recipient> = blocks
        .iter()
        .filter_map(|b| {
            let action = field(b, "Action")?;
            Some(Recipient {
                address: field(b, "Final-Recipient")
                    .or_else(|| field(b, "Original-Recipient"))
                    .map(|a| typed_address(a).to_owned()),
                action: action.to_owned(),
                status: field(b, "Status").unwrap_or_default().to_owned(),
                diagnostic: field(b, "Diagnostic-Code").map(str::to_owned),
            })
        })
        .collect();
    if recipients.is_empty() {
        return Err("the delivery-status part names no recipient with an Action".into());
    }
    Ok(Report { tokens, recipients })
}

/// The part after the last `+` of an address's local part.
fn push_token(tokens: &mut Vec<String>, address: &str) {
    let address = address.trim().trim_matches(['<', '>']);
    let local = address.split('@').next().unwrap_or_default();
    if let Some((_, token)) = local.rsplit_once('+')
        && !token.is_empty()
        && !tokens.iter().any(|t| t == token)
    {
        tokens.push(token.to_owned());
    }
}

/// `rfc822; someone@example.com` → `someone@example.com`.
fn typed_address(value: &str) -> &str {
    value
        .split_once(';')
        .map_or(value, |(_, a)| a)
        .trim()
        .trim_matches(['<', '>'])
}

/// The header-like blocks of a delivery-status body, folded lines joined:
/// the per-message block, then one per recipient.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/dsn")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn postfix_hard_bounce() {
        let r = read(&fixture("postfix-5.1.1.eml")).expect("a DSN");
        assert_eq!(r.tokens, ["TOKEN"]);
        assert_eq!(r.recipients.len(), 1);
        let rcpt = &r.recipients[0];
        assert_eq!(rcpt.address.as_deref(), Some("maria.hernandez@example.com"));
        assert_eq!(
            (rcpt.action.as_str(), rcpt.status.as_str()),
            ("failed", "5.1.1")
        );
        assert_eq!(rcpt.verdict(), Verdict::Hard);
        assert!(
            rcpt.diagnostic
                .as_deref()
                .is_some_and(|d| d.contains("User unknown"))
        );
    }

    #[test]
    fn a_report_postfix_wrote_itself() {
        let r = read(&fixture("postfix-live-5.3.0.eml")).expect("a DSN");
        assert_eq!(r.tokens, ["TOKEN"]);
        assert_eq!(r.recipients.len(), 1);
        let rcpt = &r.recipients[0];
        assert_eq!(rcpt.address.as_deref(), Some("maria@example.com"));
        assert_eq!(
            (rcpt.action.as_str(), rcpt.status.as_str()),
            ("failed", "5.3.0")
        );
        assert_eq!(rcpt.verdict(), Verdict::Hard);
    }

    #[test]
    fn postfix_delay_is_soft() {
        let r = read(&fixture("postfix-delayed.eml")).expect("a DSN");
        assert_eq!(r.recipients[0].verdict(), Verdict::Soft);
        assert_eq!(r.tokens, ["TOKEN"]);
    }

    #[test]
    fn exim_hard_bounce() {
        let r = read(&fixture("exim-5.0.0.eml")).expect("a DSN");
        assert_eq!(r.tokens, ["TOKEN"]);
        assert_eq!(r.recipients[0].verdict(), Verdict::Hard);
        assert_eq!(
            r.recipients[0].address.as_deref(),
            Some("maria.hernandez@example.com")
        );
    }

    #[test]
    fn a_large_providers_hard_bounce() {
        let r = read(&fixture("gmail-5.1.1.eml")).expect("a DSN");
        assert_eq!(r.tokens, ["TOKEN"]);
        assert_eq!(r.recipients[0].verdict(), Verdict::Hard);
    }

    #[test]
    fn anything_else_is_named() {
        let err = read(b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
            .expect_err("a plain message");
        assert!(err.contains("no message/delivery-status part"), "{err}");
        assert!(read(b"").is_err());
    }
}
