//! Scrubs personal data from text that may reach a log or an error field.
//!
//! Provider replies and library errors can echo a recipient; anything that
//! looks like an email address or a phone number becomes `[redacted]`.

/// Replaces email addresses and phone-number-like digit runs.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(char::is_whitespace) {
        let core = word.trim_end();
        let tail = &word[core.len()..];
        if looks_like_email(core) || looks_like_phone(core) {
            out.push_str("[redacted]");
        } else {
            out.push_str(core);
        }
        out.push_str(tail);
    }
    out
}

fn looks_like_email(w: &str) -> bool {
    let w = w.trim_matches(|c: char| "<>()[]\"',;:".contains(c));
    match w.split_once('@') {
        Some((local, domain)) => !local.is_empty() && domain.contains('.'),
        None => false,
    }
}

fn looks_like_phone(w: &str) -> bool {
    let digits = w.chars().filter(char::is_ascii_digit).count();
    digits >= 7
        && w.chars()
            .all(|c| c.is_ascii_digit() || "+-().<>,;:".contains(c))
        && w.contains('+')
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn scrubs_addresses_and_numbers() {
        assert_eq!(
            redact("550 5.1.1 <maria@example.com>: Recipient address rejected"),
            "550 5.1.1 [redacted] Recipient address rejected"
        );
        assert_eq!(redact("to +12125550143 failed"), "to [redacted] failed");
        assert_eq!(redact("421 try later"), "421 try later");
    }
}
