//! Problems found in files the operator wrote (config, rules, templates),
//! each with its `file:line:column`: what `check` prints, one a line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

/// A problem found in a file the operator wrote, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl Diagnostic {
    /// A diagnostic is one line of `check`'s output, however the message
    /// came about: line breaks and other control characters in it (a value
    /// quoted from the file, a library's multi-line error) are escaped.
    pub fn new(file: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.contains(char::is_control) {
            message = message
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
        }
        Self {
            file: file.to_owned(),
            line: line.max(1),
            column: column.max(1),
            message,
        }
    }

    pub fn at<T>(file: &Path, spanned: &Spanned<T>, message: impl Into<String>) -> Self {
        Self::new(
            file,
            spanned.referenced.line(),
            spanned.referenced.column(),
            message,
        )
    }

    /// Turns a YAML parse error into a diagnostic with its position.
    pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> Self {
        let (line, column) = err.location().map_or((1, 1), |l| (l.line(), l.column()));
        let text = err.to_string();
        // The rendered error repeats the position and adds a snippet; keep
        // the first line and drop the position suffix.
        let first = text.lines().next().unwrap_or("invalid YAML");
        let message = first
            .split(" at line ")
            .next()
            .unwrap_or(first)
            .trim_start_matches("error: ")
            .to_owned();
        Self::new(file, line, column, message)
    }
}

/// A list of diagnostics: what `check` prints, one a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Self(vec![d])
    }
}

/// Parses a humantime duration (`90s`, `4h`, `2d`), naming the key on error.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("{key}: `{value}` is not a duration such as 90s, 4h or 2d ({e})"))
}
