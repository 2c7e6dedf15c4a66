//! Personal data left in files: a byte-for-byte search of every file
//! under a folder (the store, an outbox), for the erasure suites.

use std::path::{Path, PathBuf};

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// How often `needle` occurs in `hay`.
pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Every needle in every file under `dir`: (file, needle, occurrences).
pub fn scan(dir: &Path, needles: &[(&str, &str)]) -> (usize, u64, Vec<(String, String, usize)>) {
    let files = files_under(dir);
    let mut bytes = 0u64;
    let mut found = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_default();
        bytes += data.len() as u64;
        for (what, needle) in needles {
            let n = count(&data, needle.as_bytes());
            if n > 0 {
                let rel = f.strip_prefix(dir).unwrap_or(f).display().to_string();
                found.push((rel, (*what).to_owned(), n));
            }
        }
    }
    (files.len(), bytes, found)
}
