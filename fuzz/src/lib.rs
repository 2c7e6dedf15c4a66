//! What the fuzz targets share: hostile text built from fragments that
//! matter to tidings (line breaks, template syntax, HTML, characters that
//! change SMS encoding), the check that an operator's file error is a
//! `file:line:column:` diagnostic, and the shipped rules and templates.
//!
//! Nothing here is part of the daemon; the targets only call its public API.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Result, Unstructured};
use tidings::domain::Diagnostics;

/// The repository the fuzz crate lives in (templates, rules, examples).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ sits inside the repository")
        .to_owned()
}

/// Fragments a hostile ticket system (or customer) would try: header
/// injection, template code, markup, and characters at the edges of the
/// GSM-7 alphabet.
pub const FRAGMENTS: &[&str] = &[
    "\r\n",
    "\n",
    "\r",
    "\r\nBcc: victim@example.net",
    "\nBcc: victim@example.net",
    "\r\nSubject: injected",
    "\r\n\r\n<html>body</html>",
    "Content-Type: text/html",
    "=?utf-8?q?=0D=0ABcc:_x@y.z?=",
    "{{ 7*7 }}",
    "{{7*7}}",
    "{{ customer }}",
    "{{ case.id }}",
    "{{ unsubscribe_url }}",
    "{% for c in cases %}X{% endfor %}",
    "{% if true %}T{% endif %}",
    "{% raw %}",
    "{% endraw %}",
    "{# comment #}",
    "{%- set x = 1 -%}",
    "{{ range(100000)|join }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "<script>alert(1)</script>",
    "<SCRIPT src=//evil.example>",
    "<img src=x onerror=alert(1)>",
    "\"><script>",
    "<!--",
    "&amp;",
    "&lt;",
    "'",
    "\"",
    "/",
    "\\",
    "€",
    "^{}[~]|",
    "\u{c}",
    "ł",
    "…",
    "😀",
    "🇵🇱",
    "\u{200b}",
    "\u{2028}",
    "\u{85}",
    "\u{0}",
    "\t",
    " ",
    "   ",
    "Maria Hernandez",
    "Replacement router has not shipped",
    "STOP",
    "49",
];

/// One piece of a hostile string.
#[derive(Debug, Arbitrary)]
enum Piece {
    Text(String),
    Fragment(u8),
    /// A run of one piece, so long inputs (near the API's limits) are cheap
    /// for the fuzzer to reach.
    Repeat(u8, Box<Piece>),
}

impl Piece {
    fn write(&self, out: &mut String, budget: usize) {
        if out.len() >= budget {
            return;
        }
        match self {
            Self::Text(s) => out.push_str(s),
            Self::Fragment(i) => out.push_str(FRAGMENTS[usize::from(*i) % FRAGMENTS.len()]),
            Self::Repeat(n, piece) => {
                for _ in 0..=(usize::from(*n) * 8) {
                    let before = out.len();
                    piece.write(out, budget);
                    // A piece that writes nothing (an empty text, nested)
                    // would otherwise spin here.
                    if out.len() == before || out.len() >= budget {
                        break;
                    }
                }
            }
        }
    }
}

/// A string assembled from arbitrary text and hostile fragments, at most
/// 16 KiB.
#[derive(Debug)]
pub struct Hostile(pub String);

impl<'a> Arbitrary<'a> for Hostile {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let pieces: Vec<Piece> = u.arbitrary()?;
        let mut out = String::new();
        for p in &pieces {
            p.write(&mut out, 16 * 1024);
        }
        Ok(Self(out))
    }
}

/// Every error from parsing an operator's file must be a diagnostic that
/// editors and `tidings check` can show: one line, starting
/// `FILE:LINE:COLUMN: `, the position inside the text.
pub fn assert_diagnostics(file: &str, text: &str, errors: &Diagnostics) {
    assert!(!errors.0.is_empty(), "an error without a diagnostic");
    // Lines as YAML counts them: a position may point just past the end.
    let lines = text.split(['\n', '\r']).count() as u64 + 1;
    for d in &errors.0 {
        let shown = d.to_string();
        let rest = shown
            .strip_prefix(file)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("not prefixed by {file}: {shown:?}"));
        let mut parts = rest.splitn(3, ':');
        let line: u64 = parts
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| panic!("no line number: {shown:?}"));
        let column: u64 = parts
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no column number: {shown:?}"));
        let message = parts.next().unwrap_or_default();
        assert!(line >= 1 && column >= 1, "position below 1:1: {shown:?}");
        assert!(
            line <= lines,
            "line {line} beyond the text's {lines}: {shown:?}"
        );
        assert!(
            message.starts_with(' ') && !message.trim().is_empty(),
            "no message after the position: {shown:?}"
        );
        assert!(
            !shown.contains(['\n', '\r']),
            "a diagnostic spans several lines: {shown:?}"
        );
    }
}
