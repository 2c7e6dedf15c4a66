//! The tidy test: the architecture written down in ARCHITECTURE.md, checked
//! against the source tree on every `cargo test` (alone:
//! `cargo test --test tidy`).
//!
//! It reads `src/` and ARCHITECTURE.md as text, with no compiler involved,
//! and runs six checks; an invariant bullet names them as `tidy::NAME`:
//!
//! - `layers`: every `.rs` file under `src/` (but `src/lib.rs`, which only
//!   declares modules) sits in exactly one row of the table in the
//!   `## Layers` section of ARCHITECTURE.md; every row's path exists;
//!   `src/lib.rs` declares no module without a row; and a file refers to
//!   another layer's modules (`crate::x`, `tidings::x`, a `super::` that
//!   climbs out of its folder) only if its layer's "may import" column names
//!   that layer.
//! - `cycles`: no cycle among the sibling modules of one folder (`http::api
//!   -> http::consent -> http::api`), and none among layers.
//! - `clock`: the wall clock and time-based ids (`Utc::now`, `Local::now`,
//!   `SystemTime::now`, `now_v7`, `Uuid::new_v4`/`new_v7`,
//!   `Timestamp::now`) are read only in `src/domain/clock.rs`, so tests
//!   control time. `Instant::now`, which only measures durations, is fine.
//! - `file_length`: no file under `src/` is longer than 600 lines, unless
//!   `LONG_FILES` below lists it with the reason it stays whole.
//! - `confined`: what only one place may know or do (`CONFINED`): sled
//!   (and `tokio_postgres`) only under `src/store/`, `.commit(`/`.commit_many(` only in the store
//!   and `src/service.rs` (the one write path).
//! - `invariants`: every bullet of `## Architecture invariants` ends with
//!   `Checked by:` and backticked references to tidy checks
//!   (`tidy::layers`) or tests that exist (`tests/FILE.rs::fn_name`,
//!   `src/PATH.rs::fn_name`).
//!
//! Reading a failure: `tidy_main_tree` prints every violation, sorted, one
//! per line, as `path:line: what is wrong`, then fails with their count.
//! For example `src/engine/plan.rs:17: engine may not import store
//! (crate::store::CaseRecord)` means line 17 names a module of the `store`
//! layer, and the `engine` row of the table does not allow it: move the code
//! to the layer that owns it, or pass the value in from above. If the
//! architecture changed on purpose, change the table or the invariant in
//! ARCHITECTURE.md in the same commit, so the document stays true.
//!
//! What ARCHITECTURE.md must hold, parsed rather than copied here:
//!
//! ```text
//! ## Layers
//!
//! | layer | path | may import |
//! | --- | --- | --- |
//! | domain | `src/domain/` | — |
//! | engine | `src/engine/` | domain |
//!
//! ## Architecture invariants
//!
//! - The engine is pure: the clock is passed in.
//!   Checked by: `tidy::clock`, `tests/engine.rs::due_is_pure`.
//! ```
//!
//! A path ending in `/` is a folder (`src/x/mod.rs` or `src/x.rs`, and
//! everything under `src/x/`), any other path one file; `—` or an empty cell
//! allows nothing. A layer may always use itself.
//!
//! How the source is read: comments (`//`, `///`, `//!`, nested `/* */`)
//! and string, raw-string, byte and char literals are blanked out before any
//! check looks at code, so a path in a doc comment or a log message is not
//! an import. What is left is cut into identifiers and punctuation, and paths
//! are followed through grouped `use` trees (`use crate::{a::X, b::{Y, Z}};`,
//! over as many lines as they take). A unit-test module (`#[cfg(test)]`
//! then `mod tests {`) and everything after it is left out of `layers`,
//! `cycles` and `clock`: tests may use any layer's helpers and their own
//! clock. Not seen: paths built by macros from
//! fragments, `#[path]` attributes, and a name used through a glob import of
//! another module's re-exports. Each check has self-tests at the bottom of
//! this file that seed a small tree with one violation and expect it found.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::path::Path;

/// A check reads the tree at a root (holding `src/` and ARCHITECTURE.md)
/// and returns its violations, each `path:line: what is wrong`.
type Check = fn(&Path) -> Vec<String>;

/// Every check, by the name an invariant's `Checked by:` uses
/// (`tidy::layers`).
const CHECKS: &[(&str, Check)] = &[
    ("layers", layers),
    ("cycles", cycles),
    ("clock", clock),
    ("file_length", file_length),
    ("invariants", invariants),
    ("confined", confined),
];

/// Token sequences allowed only under some paths: what only one part of
/// the daemon may know or do. Each: the tokens, the path prefixes allowed,
/// and what it means.
const CONFINED: &[(&[&str], &[&str], &str)] = &[
    (
        &["sled", "::"],
        &["src/store/"],
        "only the store knows sled",
    ),
    (
        &["tokio_postgres", "::"],
        &["src/store/"],
        "only the store knows PostgreSQL",
    ),
    (
        &[".", "commit", "("],
        &["src/service.rs", "src/store/"],
        "a case changes only through Service::change",
    ),
    (
        &[".", "commit_many", "("],
        &["src/service.rs", "src/store/"],
        "a case changes only through Service::change",
    ),
];

/// The only file that may read the wall clock or mint time-based ids.
const CLOCK_FILE: &str = "src/domain/clock.rs";

/// Token sequences that read the wall clock (or mint an id from it).
const CLOCK_READS: &[&[&str]] = &[
    &["Utc", "::", "now"],
    &["Local", "::", "now"],
    &["SystemTime", "::", "now"],
    &["Uuid", "::", "new_v4"],
    &["Uuid", "::", "new_v7"],
    // `Uuid::now_v7`, and also a bare `now_v7` after `use uuid::Uuid as ..`.
    &["now_v7"],
    // uuid's `Timestamp::now(context)` reads the system clock as well.
    &["Timestamp", "::", "now"],
];

/// Files longer than this many lines are split, or listed in `LONG_FILES`.
const MAX_LINES: usize = 600;

/// Files allowed past `MAX_LINES`, each with the reason it stays whole.
/// An entry for a file that is gone, or back under the limit, is itself a
/// violation, so the list only ever shrinks to what is true.
const LONG_FILES: &[(&str, &str)] = &[
    (
        "src/config/mod.rs",
        "one file format: each raw YAML shape sits beside the validation that turns it into settings, with one diagnostics path",
    ),
    (
        "src/domain/segments.rs",
        "the GSM-7 basic and extension alphabets are tables; counting and cutting read them",
    ),
    (
        "src/store/sled.rs",
        "the sled backend's trees, its one transaction and the index maintenance inside it are one unit; walks, backup and sealing already live in sled/",
    ),
    (
        "src/engine/plan.rs",
        "every trigger (created, event, due, digest, fallback) plans through one message builder; its tests live in plan/tests.rs",
    ),
    (
        "src/engine/render.rs",
        "templates, locale lookup and the SMS shortening loop share one environment; about a third is its tests",
    ),
    (
        "src/http/api.rs",
        "the case routes with their utoipa annotations: the OpenAPI document is generated from this file; about a sixth is its tests",
    ),
];

/// The library crate's name: `src/main.rs` reaches the layers through it.
const LIB: &str = env!("CARGO_PKG_NAME");

#[test]
fn tidy_main_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let violations = run_all(root);
    if !violations.is_empty() {
        panic!(
            "\n{}\n\ntidy: {} violation(s) of the architecture (see the top of tests/tidy.rs)\n",
            violations.join("\n"),
            violations.len()
        );
    }
}

/// Every check's violations for the tree at `root`, sorted.
fn run_all(root: &Path) -> Vec<String> {
    sorted(CHECKS.iter().flat_map(|(_, check)| check(root)).collect())
}

/// Sorts by path, then line number as a number, then text; drops repeats.
fn sorted(mut violations: Vec<String>) -> Vec<String> {
    fn key(v: &str) -> (&str, usize, &str) {
        let (path, rest) = v.split_once(':').unwrap_or((v, ""));
        let numbered = rest
            .split_once(':')
            .and_then(|(n, tail)| Some((n.parse().ok()?, tail)));
        let (line, tail) = numbered.unwrap_or((0, rest));
        (path, line, tail)
    }
    violations.sort_by(|a, b| key(a).cmp(&key(b)));
    violations.dedup();
    violations
}

// ---------------------------------------------------------------------------
// The checks

/// `tidy::layers`: the layer table, file membership, `src/lib.rs`, imports.
fn layers(root: &Path) -> Vec<String> {
    let table = match read_layers(root) {
        Ok(table) => table,
        Err(problems) => return problems,
    };
    let tree = Tree::load(root);
    let mut v = table_problems(root, &table);
    let (layer_of, membership) = assign(&table, &tree);
    v.extend(membership);

    if let Some(lib) = tree.files.iter().find(|f| f.path == "src/lib.rs") {
        let t = &lib.tokens;
        for (i, tok) in t.iter().enumerate() {
            let is_decl = tok.text == "mod"
                && t.get(i + 1).is_some_and(|n| is_ident(&n.text))
                && t.get(i + 2).is_some_and(|s| s.text == ";");
            if !is_decl {
                continue;
            }
            let name = &t[i + 1].text;
            let (dir, file) = (format!("src/{name}/"), format!("src/{name}.rs"));
            if !table.iter().any(|l| l.path == dir || l.path == file) {
                v.push(format!(
                    "src/lib.rs:{}: declares module {name}, which has no row in the layer table of ARCHITECTURE.md",
                    tok.line
                ));
            }
        }
    }

    for file in &tree.files {
        let Some(&own) = layer_of.get(file.path.as_str()) else {
            continue;
        };
        let own = &table[own];
        let mut seen = BTreeSet::new();
        for r in &file.refs {
            let Some((len, target)) = tree.resolve(&r.abs) else {
                continue;
            };
            let Some(&other) = layer_of.get(target.path.as_str()) else {
                continue;
            };
            let other = &table[other];
            if other.name == own.name || own.may_import.contains(&other.name) {
                continue;
            }
            let line = r.lines[len - 1];
            if seen.insert((line, other.name.clone())) {
                v.push(format!(
                    "{}:{line}: {} may not import {} ({})",
                    file.path, own.name, other.name, r.text
                ));
            }
        }
    }
    v
}

/// `tidy::cycles`: among sibling modules of a folder, and among layers.
fn cycles(root: &Path) -> Vec<String> {
    let tree = Tree::load(root);
    let mut v = Vec::new();

    // Modules: an edge joins the two children of the deepest module that
    // contains both ends, so `http::api::openapi` using `http::consent` is
    // `http::api -> http::consent`. A module's reference to its own parent or
    // child is no edge: `super::Name`, where `Name` is an item and not a
    // sibling file or folder, points at the parent, and `mod x;` or
    // `pub use x::Y` in a `mod.rs` points at a child. Both are how a folder
    // module is built, not a cycle. Top-level modules are layers (or inside
    // one): the layer graph below covers them.
    let mut modules: Graph<Vec<String>> = BTreeMap::new();
    for file in &tree.files {
        for r in &file.refs {
            let Some((len, _)) = tree.resolve(&r.abs) else {
                continue;
            };
            let target = &r.abs[..len];
            let common = file
                .module
                .iter()
                .zip(target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == 0 || common >= file.module.len() || common >= target.len() {
                continue;
            }
            modules
                .entry(file.module[..=common].to_vec())
                .or_default()
                .entry(target[..=common].to_vec())
                .or_insert_with(|| Evidence::new(file, r, r.lines[common]));
        }
    }
    for cycle in find_cycles(&modules) {
        v.push(describe_cycle("modules", &cycle, &modules, |m| {
            m.join("::")
        }));
    }

    // Layers: from what the code refers to, whatever the table allows. A
    // table that cannot be read is reported by `tidy::layers`.
    if let Ok(table) = read_layers(root) {
        let (layer_of, _) = assign(&table, &tree);
        let mut layer_graph: Graph<String> = BTreeMap::new();
        for file in &tree.files {
            let Some(&from) = layer_of.get(file.path.as_str()) else {
                continue;
            };
            for r in &file.refs {
                let Some((len, target)) = tree.resolve(&r.abs) else {
                    continue;
                };
                let Some(&to) = layer_of.get(target.path.as_str()) else {
                    continue;
                };
                if table[from].name != table[to].name {
                    layer_graph
                        .entry(table[from].name.clone())
                        .or_default()
                        .entry(table[to].name.clone())
                        .or_insert_with(|| Evidence::new(file, r, r.lines[len - 1]));
                }
            }
        }
        for cycle in find_cycles(&layer_graph) {
            v.push(describe_cycle(
                "layers",
                &cycle,
                &layer_graph,
                String::clone,
            ));
        }
    }
    v
}

/// `tidy::clock`: wall-clock reads only in `CLOCK_FILE`.
fn clock(root: &Path) -> Vec<String> {
    let tree = Tree::load(root);
    let mut v = Vec::new();
    for file in tree.files.iter().filter(|f| f.path != CLOCK_FILE) {
        let t = &file.code;
        for i in 0..t.len() {
            for read in CLOCK_READS {
                let hit = read.len() <= t.len() - i
                    && read
                        .iter()
                        .zip(&t[i..])
                        .all(|(want, tok)| tok.text == *want);
                if !hit {
                    continue;
                }
                let mut what = read.concat();
                if read.len() == 1 && i >= 2 && t[i - 1].text == "::" && is_ident(&t[i - 2].text) {
                    what = format!("{}::{what}", t[i - 2].text);
                }
                v.push(format!(
                    "{}:{}: reads the clock ({what}) outside {CLOCK_FILE}",
                    file.path, t[i].line
                ));
            }
        }
    }
    v
}

/// `tidy::confined`: each `CONFINED` token sequence only where allowed.
fn confined(root: &Path) -> Vec<String> {
    let tree = Tree::load(root);
    let mut v = Vec::new();
    for file in &tree.files {
        let t = &file.code;
        for (seq, allowed, why) in CONFINED {
            if allowed.iter().any(|a| file.path.starts_with(a)) {
                continue;
            }
            for i in 0..t.len() {
                let hit = seq.len() <= t.len() - i
                    && seq.iter().zip(&t[i..]).all(|(want, tok)| tok.text == *want);
                if hit {
                    v.push(format!(
                        "{}:{}: `{}` outside {}: {why}",
                        file.path,
                        t[i].line,
                        seq.concat(),
                        allowed.join(", ")
                    ));
                }
            }
        }
    }
    v
}

/// `tidy::file_length`, with the allow-list in force.
fn file_length(root: &Path) -> Vec<String> {
    file_length_allowing(root, LONG_FILES)
}

/// No file under `src/` longer than `MAX_LINES` unless `allowed` says why;
/// no entry in `allowed` that is no longer needed.
fn file_length_allowing(root: &Path, allowed: &[(&str, &str)]) -> Vec<String> {
    let mut v = Vec::new();
    let lengths: BTreeMap<String, usize> = rust_files(root)
        .into_iter()
        .map(|path| {
            let lines = read(root, &path).lines().count();
            (path, lines)
        })
        .collect();
    for (path, &lines) in &lengths {
        if lines > MAX_LINES && !allowed.iter().any(|(p, _)| p == path) {
            v.push(format!(
                "{path}: {lines} lines, more than {MAX_LINES}: split it, or list it in LONG_FILES in tests/tidy.rs with the reason it stays whole"
            ));
        }
    }
    for (path, why) in allowed {
        match lengths.get(*path) {
            None => v.push(format!(
                "tests/tidy.rs: LONG_FILES lists {path}, which does not exist: remove the entry"
            )),
            Some(&lines) if lines <= MAX_LINES => v.push(format!(
                "tests/tidy.rs: LONG_FILES lists {path}, which has {lines} lines (at most {MAX_LINES} need no entry): remove the entry"
            )),
            Some(_) if why.trim().is_empty() => v.push(format!(
                "tests/tidy.rs: LONG_FILES lists {path} without a reason it stays whole"
            )),
            Some(_) => {}
        }
    }
    v
}

/// `tidy::invariants`: each invariant names the checks or tests behind it.
fn invariants(root: &Path) -> Vec<String> {
    const TITLE: &str = "## Architecture invariants";
    let Some(arch) = read_architecture(root) else {
        return vec!["ARCHITECTURE.md: does not exist".to_owned()];
    };
    let Some((heading, section)) = section(&arch, TITLE) else {
        return vec![format!("ARCHITECTURE.md: no `{TITLE}` section")];
    };

    // A bullet starts at `- ` (or `* `) in the first column and goes on over
    // the indented lines below it.
    let mut bullets: Vec<Vec<(usize, &str)>> = Vec::new();
    let mut open = false;
    for &(n, line) in &section {
        if line.starts_with("- ") || line.starts_with("* ") {
            bullets.push(vec![(n, &line[2..])]);
            open = true;
        } else if line.trim().is_empty() {
            continue;
        } else if open && line.starts_with([' ', '\t']) {
            if let Some(b) = bullets.last_mut() {
                b.push((n, line.trim()));
            }
        } else {
            open = false;
        }
    }
    if bullets.is_empty() {
        return vec![format!(
            "ARCHITECTURE.md:{heading}: `{TITLE}` has no bullets"
        )];
    }

    const MARK: &str = "Checked by:";
    let mut v = Vec::new();
    for bullet in bullets {
        let text = bullet
            .iter()
            .map(|(_, l)| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        let start = bullet[0].0;
        let Some(at) = text.rfind(MARK) else {
            let words: Vec<&str> = text.split_whitespace().take(6).collect();
            v.push(format!(
                "ARCHITECTURE.md:{start}: invariant \"{} …\" has no `{MARK}` naming the tidy checks or tests behind it",
                words.join(" ")
            ));
            continue;
        };
        let line = bullet
            .iter()
            .rev()
            .find(|(_, l)| l.contains(MARK))
            .map_or(start, |(n, _)| *n);
        let list = text[at + MARK.len()..].trim();
        let list = list.strip_suffix('.').unwrap_or(list);
        for item in list.split(',').map(str::trim) {
            let reference = item
                .strip_prefix('`')
                .and_then(|i| i.strip_suffix('`'))
                .filter(|r| !r.is_empty() && !r.contains('`'));
            match reference {
                None => v.push(format!(
                    "ARCHITECTURE.md:{line}: `{MARK}` wants backticked references separated by commas, not {item:?}"
                )),
                Some(r) => {
                    if let Some(problem) = check_reference(root, r) {
                        v.push(format!("ARCHITECTURE.md:{line}: `{r}` {problem}"));
                    }
                }
            }
        }
    }
    v
}

/// What is wrong with one `Checked by:` reference, if anything.
fn check_reference(root: &Path, reference: &str) -> Option<String> {
    if let Some(name) = reference.strip_prefix("tidy::") {
        if CHECKS.iter().any(|(n, _)| *n == name) {
            return None;
        }
        let names: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
        return Some(format!(
            "is not a tidy check (there are: {})",
            names.join(", ")
        ));
    }
    let well_formed = reference.rsplit_once("::").filter(|(file, func)| {
        (file.starts_with("tests/") || file.starts_with("src/"))
            && file.ends_with(".rs")
            && !file.contains("..")
            && is_ident(func)
    });
    let Some((file, func)) = well_formed else {
        return Some(
            "is none of `tidy::CHECK`, `tests/FILE.rs::fn_name`, `src/PATH.rs::fn_name`".to_owned(),
        );
    };
    let Ok(text) = fs::read_to_string(root.join(file)) else {
        return Some(format!("names {file}, which does not exist"));
    };
    let t = tokens(&mask(&text));
    let defined = t
        .windows(3)
        .any(|w| w[0].text == "fn" && w[1].text == func && (w[2].text == "(" || w[2].text == "<"));
    (!defined).then(|| format!("names a test that does not exist: no `fn {func}(` in {file}"))
}

// ---------------------------------------------------------------------------
// ARCHITECTURE.md

/// One row of the layer table.
#[derive(Debug)]
struct Layer {
    name: String,
    /// `src/x/` for a folder (its module and everything under it), else one
    /// file, `src/x.rs`.
    path: String,
    may_import: Vec<String>,
    /// Line of the row in ARCHITECTURE.md.
    line: usize,
}

impl Layer {
    /// Whether the file at `path` (`src/...`) belongs to this layer. A folder
    /// row owns `src/x/mod.rs` and everything under `src/x/`, and also
    /// `src/x.rs`, the other way to write the folder's own module.
    fn owns(&self, path: &str) -> bool {
        match self.path.strip_suffix('/') {
            Some(dir) => path.starts_with(&self.path) || path == format!("{dir}.rs"),
            None => path == self.path,
        }
    }
}

fn read_architecture(root: &Path) -> Option<String> {
    fs::read_to_string(root.join("ARCHITECTURE.md")).ok()
}

/// The lines (numbered from 1) under the heading `title`, up to the next
/// heading of the same or a higher level; and the heading's line.
fn section<'a>(doc: &'a str, title: &str) -> Option<(usize, Vec<(usize, &'a str)>)> {
    let mut lines = doc.lines().enumerate().map(|(i, l)| (i + 1, l));
    let (heading, _) = lines
        .by_ref()
        .find(|(_, l)| l.trim().eq_ignore_ascii_case(title))?;
    let body = lines
        .take_while(|(_, l)| !(l.starts_with("# ") || l.starts_with("## ")))
        .collect();
    Some((heading, body))
}

/// Parses the table of `## Layers`:
///
/// ```text
/// | layer | path | may import |
/// | --- | --- | --- |
/// | engine | `src/engine/` | domain |
/// ```
///
/// Backticks around any cell are dropped; "may import" is a comma-separated
/// list, where `—`, `-` or an empty cell mean nothing.
fn read_layers(root: &Path) -> Result<Vec<Layer>, Vec<String>> {
    const TITLE: &str = "## Layers";
    const HEADER: [&str; 3] = ["layer", "path", "may import"];
    let Some(arch) = read_architecture(root) else {
        return Err(vec!["ARCHITECTURE.md: does not exist".to_owned()]);
    };
    let Some((heading, section)) = section(&arch, TITLE) else {
        return Err(vec![format!("ARCHITECTURE.md: no `{TITLE}` section")]);
    };
    let table: Vec<(usize, Vec<String>)> = section
        .iter()
        .skip_while(|(_, l)| !l.trim_start().starts_with('|'))
        .take_while(|(_, l)| l.trim_start().starts_with('|'))
        .map(|&(n, l)| (n, cells(l)))
        .collect();
    let shape = format!("| {} |\n| --- | --- | --- |", HEADER.join(" | "));
    let header_ok = table
        .first()
        .is_some_and(|(_, h)| h.iter().map(|c| c.to_lowercase()).eq(HEADER));
    let rule_ok = table.get(1).is_some_and(|(_, r)| {
        r.len() == HEADER.len()
            && r.iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
    });
    if !header_ok || !rule_ok {
        return Err(vec![format!(
            "ARCHITECTURE.md:{heading}: `{TITLE}` should hold a table that starts\n{shape}"
        )]);
    }
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (line, row) in &table[2..] {
        let [name, path, may_import] = row.as_slice() else {
            problems.push(format!(
                "ARCHITECTURE.md:{line}: a layer row has {} cells, not 3 ({})",
                row.len(),
                HEADER.join(" | ")
            ));
            continue;
        };
        let may_import = may_import
            .split(',')
            .map(|n| n.trim().trim_matches('`').to_owned())
            .filter(|n| !matches!(n.as_str(), "" | "—" | "–" | "-"))
            .collect();
        rows.push(Layer {
            name: name.clone(),
            path: path.clone(),
            may_import,
            line: *line,
        });
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// The cells of a markdown table row, trimmed and without backticks.
fn cells(row: &str) -> Vec<String> {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    row.split('|')
        .map(|c| c.trim().trim_matches('`').trim().to_owned())
        .collect()
}

/// Rows that repeat a name, name a path that is not there, or allow a layer
/// the table does not have.
fn table_problems(root: &Path, table: &[Layer]) -> Vec<String> {
    let mut v = Vec::new();
    let names: BTreeSet<&str> = table.iter().map(|l| l.name.as_str()).collect();
    let mut seen = BTreeSet::new();
    for layer in table {
        let (name, line, path) = (&layer.name, layer.line, &layer.path);
        if !seen.insert(name.as_str()) {
            v.push(format!(
                "ARCHITECTURE.md:{line}: layer {name} has a second row"
            ));
        }
        let is_file = path.ends_with(".rs");
        if !path.starts_with("src/") || !(is_file || path.ends_with('/')) {
            v.push(format!(
                "ARCHITECTURE.md:{line}: layer {name}: path {path} should be a folder `src/x/` or a file `src/x.rs`"
            ));
        } else if (is_file && !root.join(path).is_file()) || (!is_file && !root.join(path).is_dir())
        {
            v.push(format!(
                "ARCHITECTURE.md:{line}: layer {name}: {path} does not exist"
            ));
        }
        for other in &layer.may_import {
            if !names.contains(other.as_str()) {
                v.push(format!(
                    "ARCHITECTURE.md:{line}: layer {name} may import {other}, which is not a layer of the table"
                ));
            }
        }
    }
    v
}

/// Which row owns each file (by index into `table`), and the files in no row
/// or in more than one.
fn assign<'t>(table: &[Layer], tree: &'t Tree) -> (BTreeMap<&'t str, usize>, Vec<String>) {
    let mut layer_of = BTreeMap::new();
    let mut problems = Vec::new();
    for file in tree.files.iter().filter(|f| f.path != "src/lib.rs") {
        let owners: Vec<usize> = (0..table.len())
            .filter(|&i| table[i].owns(&file.path))
            .collect();
        match owners.as_slice() {
            [] => problems.push(format!(
                "{}: not in the layer table of ARCHITECTURE.md",
                file.path
            )),
            [one] => {
                layer_of.insert(file.path.as_str(), *one);
            }
            many => {
                let names: Vec<&str> = many.iter().map(|&i| table[i].name.as_str()).collect();
                problems.push(format!(
                    "{}: in more than one layer of ARCHITECTURE.md ({})",
                    file.path,
                    names.join(", ")
                ));
            }
        }
    }
    (layer_of, problems)
}

// ---------------------------------------------------------------------------
// Dependency graphs

/// Where an edge was seen first: `src/x.rs:12 crate::y::Z`.
struct Evidence(String);

impl Evidence {
    fn new(file: &SourceFile, r: &Ref, line: usize) -> Self {
        Evidence(format!("{}:{line} {}", file.path, r.text))
    }
}

/// node -> node -> the first reference that makes the edge.
type Graph<N> = BTreeMap<N, BTreeMap<N, Evidence>>;

/// A cycle, and the other nodes tied into it by further cycles (its
/// strongly connected component), which one report should name as well:
/// breaking the one cycle shown may leave them tangled.
struct Cycle<N> {
    /// `a, b, a`: starts and ends at the component's smallest node.
    path: Vec<N>,
    tangled: Vec<N>,
}

/// One cycle per strongly connected component: the shortest one through the
/// component's smallest node.
fn find_cycles<N: Ord + Clone>(graph: &Graph<N>) -> Vec<Cycle<N>> {
    let successors = |n: &N| -> Vec<N> {
        graph
            .get(n)
            .map(|to| to.keys().cloned().collect())
            .unwrap_or_default()
    };
    let reach = |from: &N| -> BTreeSet<N> {
        let mut seen = BTreeSet::new();
        let mut stack = successors(from);
        while let Some(n) = stack.pop() {
            if seen.insert(n.clone()) {
                stack.extend(successors(&n));
            }
        }
        seen
    };
    let nodes: BTreeSet<N> = graph
        .iter()
        .flat_map(|(from, to)| std::iter::once(from).chain(to.keys()))
        .cloned()
        .collect();
    let reachable: BTreeMap<N, BTreeSet<N>> = nodes.iter().map(|n| (n.clone(), reach(n))).collect();

    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for start in &nodes {
        if done.contains(start) || !reachable[start].contains(start) {
            continue;
        }
        let component: BTreeSet<N> = reachable[start]
            .iter()
            .filter(|n| reachable[*n].contains(start))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());

        // Breadth first from `start` until an edge leads back to it.
        let mut previous: BTreeMap<N, N> = BTreeMap::new();
        let mut queue = VecDeque::from([start.clone()]);
        let mut last = None;
        'search: while let Some(n) = queue.pop_front() {
            for next in successors(&n) {
                if next == *start {
                    last = Some(n);
                    break 'search;
                }
                if component.contains(&next) && !previous.contains_key(&next) {
                    previous.insert(next.clone(), n.clone());
                    queue.push_back(next);
                }
            }
        }
        let Some(mut n) = last else { continue };
        let mut cycle = vec![start.clone()];
        while n != *start {
            cycle.push(n.clone());
            n = previous[&n].clone();
        }
        cycle.push(start.clone());
        cycle.reverse();
        let tangled = component
            .into_iter()
            .filter(|n| !cycle.contains(n))
            .collect();
        found.push(Cycle {
            path: cycle,
            tangled,
        });
    }
    found
}

/// `path:line: <kind> in a cycle: a -> b -> a (evidence of each edge)`,
/// at the first edge's reference, then any nodes tied in by other cycles.
fn describe_cycle<N: Ord>(
    kind: &str,
    cycle: &Cycle<N>,
    graph: &Graph<N>,
    name: impl Fn(&N) -> String,
) -> String {
    let names: Vec<String> = cycle.path.iter().map(&name).collect();
    let evidence: Vec<&str> = cycle
        .path
        .windows(2)
        .map(|w| graph[&w[0]][&w[1]].0.as_str())
        .collect();
    let at = evidence
        .first()
        .and_then(|e| e.split_once(' '))
        .map_or("src", |(at, _)| at);
    let mut report = format!(
        "{at}: {kind} in a cycle: {} ({})",
        names.join(" -> "),
        evidence.join("; ")
    );
    if !cycle.tangled.is_empty() {
        let tangled: Vec<String> = cycle.tangled.iter().map(&name).collect();
        report.push_str(&format!("; further cycles tie in {}", tangled.join(", ")));
    }
    report
}

// ---------------------------------------------------------------------------
// Reading the source tree

/// The `.rs` files under `src/`, as `src/a/b.rs`, sorted.
fn rust_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = format!("{rel}/{name}");
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if name.ends_with(".rs") {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("src"), "src", &mut out);
    out.sort();
    out
}

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path)).expect("a file listed under src/ is readable UTF-8")
}

/// The `.rs` files under `src/`, read and cut into tokens.
struct Tree {
    files: Vec<SourceFile>,
    /// Module path (`["http", "api"]`) -> index into `files`.
    modules: BTreeMap<Vec<String>, usize>,
}

struct SourceFile {
    /// `src/http/api.rs`
    path: String,
    /// `["http", "api"]`; empty for the crate roots `src/lib.rs` and
    /// `src/main.rs`.
    module: Vec<String>,
    /// All tokens outside comments and literals.
    tokens: Vec<Tok>,
    /// The tokens before the `#[cfg(test)]` module, if any.
    code: Vec<Tok>,
    /// The paths `code` refers to.
    refs: Vec<Ref>,
}

impl Tree {
    fn load(root: &Path) -> Tree {
        let mut files = Vec::new();
        let mut modules = BTreeMap::new();
        for path in rust_files(root) {
            let masked = mask(&read(root, &path));
            let tokens = tokens(&masked);
            let end = test_module_line(&masked).unwrap_or(usize::MAX);
            let code: Vec<Tok> = tokens.iter().filter(|t| t.line < end).cloned().collect();
            let module = module_of(&path);
            let refs = references(&module, &code);
            if !module.is_empty() {
                modules.insert(module.clone(), files.len());
            }
            files.push(SourceFile {
                path,
                module,
                tokens,
                code,
                refs,
            });
        }
        Tree { files, modules }
    }

    /// The file of the longest prefix of `path` that is a module of the
    /// tree, and that prefix's length. `None` for the crate root's own items.
    fn resolve(&self, path: &[String]) -> Option<(usize, &SourceFile)> {
        (1..=path.len()).rev().find_map(|len| {
            self.modules
                .get(&path[..len])
                .map(|&i| (len, &self.files[i]))
        })
    }
}

/// `src/http/api.rs` -> `http::api`; `src/http/mod.rs` -> `http`.
fn module_of(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut segments: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    if segments == ["lib"] || segments == ["main"] {
        segments.clear();
    }
    segments
}

/// The line (from 1) where the unit-test module starts: a line that is
/// exactly `#[cfg(test)]`, whose item (past further attributes) is a
/// `mod ... {`. Everything from there to the end of the file is left out of
/// `layers`, `cycles` and `clock`: unit tests may use test helpers from any
/// layer and a fixed clock of their own, and house style keeps the test
/// module last, so nothing after it is production code.
fn test_module_line(masked: &str) -> Option<usize> {
    let lines: Vec<&str> = masked.lines().map(str::trim).collect();
    (0..lines.len()).find_map(|i| {
        if lines[i] != "#[cfg(test)]" {
            return None;
        }
        let item = lines[i + 1..]
            .iter()
            .find(|l| !l.is_empty() && !l.starts_with("#["))?;
        let item = match item.strip_prefix("pub") {
            Some(rest) => rest.split_once(' ').map_or("", |(_, r)| r),
            None => item,
        };
        (item.starts_with("mod ") && item.ends_with('{')).then_some(i + 1)
    })
}

/// A word or one punctuation character (`::` is one token), with its line.
#[derive(Clone, Debug)]
struct Tok {
    text: String,
    line: usize,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The text with comments and string, byte-string, raw-string and char
/// literals replaced by spaces; lines and columns stay where they were.
fn mask(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, part: &[char]| {
        out.extend(part.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    // Index just past the `"` closing a string whose body starts at `from`.
    let string_end = |from: usize| {
        let mut j = from;
        while j < c.len() {
            match c[j] {
                '\\' => j += 2,
                '"' => return j + 1,
                _ => j += 1,
            }
        }
        c.len()
    };
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let end = if ch == '/' && next == Some('/') {
            (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
        } else if ch == '/' && next == Some('*') {
            let (mut depth, mut j) = (0, i);
            while j < c.len() {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j.min(c.len())
        } else if ch == '"' {
            string_end(i + 1)
        } else if ch == '\'' {
            if next == Some('\\') {
                // '\n', '\'', '\u{1F600}': up to the next quote after the escape.
                (i + 3..c.len())
                    .find(|&j| c[j] == '\'')
                    .map_or(c.len(), |j| j + 1)
            } else if c.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                // A lifetime or a label.
                out.push(ch);
                i += 1;
                continue;
            }
        } else if is_word_char(ch) && (i == 0 || !is_word_char(c[i - 1])) {
            let word_end = (i..c.len())
                .find(|&j| !is_word_char(c[j]))
                .unwrap_or(c.len());
            let word: String = c[i..word_end].iter().collect();
            let hashes = (word_end..c.len())
                .find(|&j| c[j] != '#')
                .unwrap_or(c.len())
                - word_end;
            let quote_at = word_end + hashes;
            if matches!(word.as_str(), "r" | "br" | "cr") && c.get(quote_at) == Some(&'"') {
                // A raw string ends at the first `"` followed by as many `#`.
                let closes =
                    |j: usize| c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#'));
                (quote_at + 1..c.len())
                    .find(|&j| closes(j))
                    .map_or(c.len(), |j| j + 1 + hashes)
            } else if matches!(word.as_str(), "b" | "c")
                && hashes == 0
                && c.get(word_end) == Some(&'"')
            {
                string_end(word_end + 1)
            } else {
                // A word, or `b` before a byte literal, which the next round blanks.
                out.push_str(&word);
                i = word_end;
                continue;
            }
        } else {
            out.push(ch);
            i += 1;
            continue;
        };
        blank(&mut out, &c[i..end]);
        i = end;
    }
    out
}

/// Words (identifiers, keywords, numbers) and punctuation of masked text.
fn tokens(masked: &str) -> Vec<Tok> {
    let c: Vec<char> = masked.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if is_word_char(ch) {
            let end = (i..c.len())
                .find(|&j| !is_word_char(c[j]))
                .unwrap_or(c.len());
            out.push(Tok {
                text: c[i..end].iter().collect(),
                line,
            });
            i = end;
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok {
                text: "::".to_owned(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// A path a file refers to, resolved to the crate root.
#[derive(Debug)]
struct Ref {
    /// `crate::store::{A, B}` gives `["store", "A"]` and `["store", "B"]`;
    /// `super::x` in `http::api` gives `["http", "x"]`.
    abs: Vec<String>,
    /// The line of each segment of `abs` (segments that `super`/`self`
    /// stand for take the line of that keyword).
    lines: Vec<usize>,
    /// As written, with use-groups flattened: `crate::store::A`.
    text: String,
}

/// Every path in `toks` that starts at `crate::`, `tidings::` (the library,
/// from `src/main.rs`), `self::` or `super::`, with `use` groups expanded.
/// `module` is the file's module; inline `mod x { .. }` blocks extend it for
/// the paths inside them.
fn references(module: &[String], toks: &[Tok]) -> Vec<Ref> {
    let mut refs = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    let mut i = 0;
    while i < toks.len() {
        match text(i) {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            "mod" if is_ident(text(i + 1)) && text(i + 2) == "{" => {
                depth += 1;
                inline.push((text(i + 1).to_owned(), depth));
                i += 3;
                continue;
            }
            _ => {}
        }
        let root = text(i);
        let starts_path = matches!(root, "crate" | "self" | "super") || root == LIB;
        if !starts_path || text(i + 1) != "::" || (i > 0 && text(i - 1) == "::") {
            i += 1;
            continue;
        }
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        let mut base = match root {
            "self" | "super" => here,
            _ => Vec::new(),
        };
        let mut written = root.to_owned();
        let mut j = i + 2;
        if root == "super" {
            let mut climbed = base.pop().is_some();
            while text(j) == "super" && text(j + 1) == "::" {
                climbed &= base.pop().is_some();
                written.push_str("::super");
                j += 2;
            }
            if !climbed {
                // `super` above the crate root: not a path we can follow.
                i = j;
                continue;
            }
        }
        let start = Start {
            base: &base,
            line: toks[i].line,
            written: &written,
        };
        i = use_tree(toks, j, Vec::new(), false, &start, &mut refs);
    }
    refs
}

/// Where a path starts: the module its root stands for, as written.
struct Start<'a> {
    base: &'a [String],
    line: usize,
    written: &'a str,
}

/// Follows a path (or `use` tree) from `toks[j]`, just past a `::`, after the
/// segments in `segments`; pushes one `Ref` per leaf and returns the index
/// after it.
fn use_tree(
    toks: &[Tok],
    mut j: usize,
    mut segments: Vec<(String, usize)>,
    in_group: bool,
    start: &Start,
    out: &mut Vec<Ref>,
) -> usize {
    let text = |i: usize| toks.get(i).map_or("", |t| t.text.as_str());
    // `self` opening a group item names the group's prefix itself.
    if in_group && text(j) == "self" {
        j += 1;
    }
    loop {
        if text(j) == "{" {
            j += 1;
            loop {
                match text(j) {
                    "" => return j,
                    "}" => return j + 1,
                    "," => j += 1,
                    _ => {
                        let item = j;
                        j = use_tree(toks, j, segments.clone(), true, start, out);
                        // Past `as alias` and anything else up to `,` or `}`.
                        let mut depth = 0;
                        loop {
                            match text(j) {
                                "" => break,
                                "," | "}" if depth == 0 => break,
                                "{" => depth += 1,
                                "}" => depth -= 1,
                                _ => {}
                            }
                            j += 1;
                        }
                        if j == item {
                            j += 1;
                        }
                    }
                }
            }
        }
        if is_ident(text(j)) {
            segments.push((text(j).to_owned(), toks[j].line));
            j += 1;
            if text(j) == "::" {
                j += 1;
                continue;
            }
        }
        let mut abs = start.base.to_vec();
        let mut lines = vec![start.line; abs.len()];
        let mut written = start.written.to_owned();
        for (segment, line) in segments {
            written.push_str("::");
            written.push_str(&segment);
            abs.push(segment);
            lines.push(line);
        }
        out.push(Ref {
            abs,
            lines,
            text: written,
        });
        return j;
    }
}

// ---------------------------------------------------------------------------
// Self-tests: a small clean tree, then the same tree with one violation
// seeded, which the matching check must report, exactly.

/// ARCHITECTURE.md of the clean tree.
const ARCH: &str = "\
# Architecture

Bird's-eye view.

## Layers

| layer | path | may import |
| --- | --- | --- |
| domain | `src/domain/` | — |
| store | `src/store/` | domain |
| http | `src/http/` | domain, store |
| main | `src/main.rs` | http |

## Architecture invariants

- The domain is pure: the clock is passed in. Checked by: `tidy::clock`,
  `tidy::layers`.
- Only the store writes to disk, and opens its files once.
  Checked by: `tests/disk.rs::only_store_writes`,
  `src/store/mod.rs::opens_once`.

## Glossary

- A bullet outside the invariants needs no `Checked by:`.
";

/// The clean tree: every reference allowed, traps for each check in
/// comments, strings, test modules and parent/child references.
const CLEAN: &[(&str, &str)] = &[
    ("ARCHITECTURE.md", ARCH),
    (
        "src/lib.rs",
        "//! Declares the layers.\n\npub mod domain;\npub mod http;\npub mod store;\n",
    ),
    ("src/domain/mod.rs", "pub mod case;\npub mod clock;\n"),
    (
        "src/domain/case.rs",
        r##"//! Cases. Not `crate::store::Store`, never `Utc::now()`.
use super::clock::Clock;
use chrono::{DateTime, Utc};

/* A block comment: crate::http::api, SystemTime::now()
   /* nested */ crate::store::Store */
pub struct Case<'a> {
    pub subject: &'a str,
    pub at: DateTime<Utc>,
}

pub fn describe(c: &Case<'_>, _clock: &Clock) -> String {
    let quote = '"';
    let _raw = r#"a "quoted" crate::store::Store"#;
    let _bytes = b"crate::http::api";
    format!("{quote}crate::store::{}{quote} \" Utc::now()", c.subject)
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[test]
    fn fixed_clock() {
        let _ = (chrono::Utc::now(), Store);
    }
}
"##,
    ),
    (
        "src/domain/clock.rs",
        "pub struct Clock;\n\npub fn now() -> chrono::DateTime<chrono::Utc> {\n    chrono::Utc::now()\n}\n\npub fn id() -> uuid::Uuid {\n    uuid::Uuid::now_v7()\n}\n",
    ),
    (
        "src/store/mod.rs",
        "pub mod disk;\n\npub use disk::Disk;\nuse self::disk::open;\nuse crate::domain::case::Case;\n\npub struct Store;\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn opens_once() {}\n}\n",
    ),
    (
        "src/store/disk.rs",
        "use super::Store;\n\npub struct Disk;\n\npub fn open() -> std::time::Instant {\n    std::time::Instant::now()\n}\n",
    ),
    ("src/http/mod.rs", "pub mod api;\npub mod consent;\n"),
    (
        "src/http/api.rs",
        "use crate::{\n    domain::case::Case,\n    store::{Disk, Store},\n};\nuse super::consent::Hook;\n\npub struct Api;\n\npub fn run() {}\n",
    ),
    (
        "src/http/consent.rs",
        "pub struct Hook;\n\npub fn check() {\n    let _ = crate::store::disk::open();\n}\n",
    ),
    (
        "src/main.rs",
        "fn main() {\n    tidings::http::api::run();\n}\n",
    ),
    ("tests/disk.rs", "#[test]\nfn only_store_writes() {}\n"),
];

/// The clean tree with `changes` written over it (or added).
fn tree(changes: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, text) in CLEAN.iter().chain(changes) {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().expect("a file has a parent"))
            .expect("create the fixture's folders");
        fs::write(&path, text).expect("write a fixture file");
    }
    dir
}

/// The line (from 1) of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .expect("the needle is in the text")
}

#[test]
fn clean_tree_passes_every_check() {
    let dir = tree(&[]);
    // `file_length` is checked with an empty allow-list below: the real
    // one names files the fixture does not have.
    for (name, check) in CHECKS.iter().filter(|(n, _)| *n != "file_length") {
        assert_eq!(check(dir.path()), Vec::<String>::new(), "tidy::{name}");
    }
    assert_eq!(file_length_allowing(dir.path(), &[]), Vec::<String>::new());
}

#[test]
fn layers_reports_an_import_the_table_does_not_allow() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "src/domain/case.rs",
            "use crate::store::Store;\n",
            "src/domain/case.rs:1: domain may not import store (crate::store::Store)",
        ),
        (
            "src/domain/case.rs",
            "// A grouped use over several lines.\nuse crate::{\n    domain::clock::Clock,\n    http::{api::Api, consent},\n};\n",
            "src/domain/case.rs:4: domain may not import http (crate::http::api::Api)",
        ),
        (
            "src/store/disk.rs",
            "pub fn open() {\n    let _ = \"crate::http\";\n    crate::http::api::run();\n}\n",
            "src/store/disk.rs:3: store may not import http (crate::http::api::run)",
        ),
        (
            "src/store/disk.rs",
            "use super::super::http::api::Api;\n",
            "src/store/disk.rs:1: store may not import http (super::super::http::api::Api)",
        ),
        (
            "src/main.rs",
            "fn main() {\n    tidings::store::open();\n}\n",
            "src/main.rs:2: main may not import store (tidings::store::open)",
        ),
        (
            "src/domain/case.rs",
            "// Only a test *module* is skipped, not a test helper.\n#[cfg(test)]\npub fn helper() {\n    let _ = crate::store::Store;\n}\n",
            "src/domain/case.rs:4: domain may not import store (crate::store::Store)",
        ),
    ];
    for (path, text, expected) in cases {
        let dir = tree(&[(path, text)]);
        assert_eq!(
            layers(dir.path()),
            vec![expected.to_string()],
            "{path}:\n{text}"
        );
    }
}

#[test]
fn layers_reports_a_file_outside_the_table() {
    let dir = tree(&[("src/util.rs", "pub fn help() {}\n")]);
    assert_eq!(
        layers(dir.path()),
        vec!["src/util.rs: not in the layer table of ARCHITECTURE.md"]
    );
}

#[test]
fn layers_reports_a_file_in_two_layers() {
    let arch = ARCH.replace(
        "| main |",
        "| disk | `src/store/disk.rs` | domain |\n| main |",
    );
    let dir = tree(&[("ARCHITECTURE.md", &arch)]);
    assert_eq!(
        layers(dir.path()),
        vec!["src/store/disk.rs: in more than one layer of ARCHITECTURE.md (store, disk)"]
    );
}

#[test]
fn layers_reports_a_row_whose_path_does_not_exist() {
    let arch = ARCH.replace("| main |", "| cli | `src/cli/` | http |\n| main |");
    let dir = tree(&[("ARCHITECTURE.md", &arch)]);
    assert_eq!(
        layers(dir.path()),
        vec![format!(
            "ARCHITECTURE.md:{}: layer cli: src/cli/ does not exist",
            line_of(&arch, "| cli |")
        )]
    );
}

#[test]
fn layers_reports_an_unknown_layer_in_may_import() {
    let arch = ARCH.replace(
        "| main | `src/main.rs` | http |",
        "| main | `src/main.rs` | http, cli |",
    );
    let dir = tree(&[("ARCHITECTURE.md", &arch)]);
    assert_eq!(
        layers(dir.path()),
        vec![format!(
            "ARCHITECTURE.md:{}: layer main may import cli, which is not a layer of the table",
            line_of(&arch, "http, cli")
        )]
    );
}

#[test]
fn layers_reports_a_module_of_lib_rs_without_a_row() {
    let lib = "pub mod domain;\npub mod http;\npub mod store;\npub mod util;\n";
    let dir = tree(&[("src/lib.rs", lib)]);
    assert_eq!(
        layers(dir.path()),
        vec![
            "src/lib.rs:4: declares module util, which has no row in the layer table of ARCHITECTURE.md"
        ]
    );
}

#[test]
fn layers_reports_a_missing_or_misshapen_table() {
    let dir = tree(&[("ARCHITECTURE.md", &ARCH.replace("## Layers", "## Strata"))]);
    assert_eq!(
        layers(dir.path()),
        vec!["ARCHITECTURE.md: no `## Layers` section"]
    );

    let arch = ARCH.replace("| layer | path | may import |", "| layer | folder | uses |");
    let dir = tree(&[("ARCHITECTURE.md", &arch)]);
    let found = layers(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(&format!(
            "ARCHITECTURE.md:{}: `## Layers` should hold a table",
            line_of(&arch, "## Layers")
        )),
        "{found:?}"
    );
}

#[test]
fn cycles_reports_sibling_modules_that_use_each_other() {
    // api.rs uses `super::consent::Hook` (line 5) in the clean tree.
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("src/http/consent.rs", "use super::api::Api;\n")],
            "src/http/api.rs:5: modules in a cycle: http::api -> http::consent -> http::api \
             (src/http/api.rs:5 super::consent::Hook; src/http/consent.rs:1 super::api::Api)",
        ),
        (
            &[(
                "src/http/consent.rs",
                "pub struct Hook;\n\npub fn state() -> crate::http::api::Api {\n    crate::http::api::Api\n}\n",
            )],
            "src/http/api.rs:5: modules in a cycle: http::api -> http::consent -> http::api \
             (src/http/api.rs:5 super::consent::Hook; src/http/consent.rs:3 crate::http::api::Api)",
        ),
        (
            // A child of `api` using `consent` is `api` using it.
            &[
                ("src/http/api/openapi.rs", "pub fn spec() {}\n"),
                (
                    "src/http/consent.rs",
                    "pub struct Hook;\n\npub fn doc() {\n    crate::http::api::openapi::spec();\n}\n",
                ),
            ],
            "src/http/api.rs:5: modules in a cycle: http::api -> http::consent -> http::api \
             (src/http/api.rs:5 super::consent::Hook; src/http/consent.rs:4 crate::http::api::openapi::spec)",
        ),
    ];
    for (changes, expected) in cases {
        let dir = tree(changes);
        assert_eq!(
            cycles(dir.path()),
            vec![expected.to_string()],
            "{changes:?}"
        );
    }
}

#[test]
fn cycles_reports_layers_that_use_each_other() {
    // The table allows it, so `tidy::layers` is content; the graph is not.
    let arch = ARCH.replace(
        "| store | `src/store/` | domain |",
        "| store | `src/store/` | domain, http |",
    );
    let disk = "use crate::http::api::Api;\n";
    let dir = tree(&[("ARCHITECTURE.md", &arch), ("src/store/disk.rs", disk)]);
    assert_eq!(layers(dir.path()), Vec::<String>::new());
    assert_eq!(
        cycles(dir.path()),
        vec![
            "src/http/api.rs:3: layers in a cycle: http -> store -> http \
             (src/http/api.rs:3 crate::store::Disk; src/store/disk.rs:1 crate::http::api::Api)"
        ]
    );
}

#[test]
fn clock_reports_each_way_of_reading_it() {
    let cases = [
        ("let now = Utc::now();", "Utc::now"),
        ("let now = chrono::Utc::now();", "Utc::now"),
        ("let now = chrono::Local::now();", "Local::now"),
        ("let now = std::time::SystemTime::now();", "SystemTime::now"),
        ("let id = Uuid::now_v7();", "Uuid::now_v7"),
        ("let id = uuid::Uuid::new_v4();", "Uuid::new_v4"),
        ("let id = Uuid::new_v7(ts);", "Uuid::new_v7"),
        ("let ts = uuid::Timestamp::now(ctx);", "Timestamp::now"),
    ];
    for (line, what) in cases {
        let disk = format!("pub fn open() {{\n    {line}\n}}\n");
        let dir = tree(&[("src/store/disk.rs", &disk)]);
        assert_eq!(
            clock(dir.path()),
            vec![format!(
                "src/store/disk.rs:2: reads the clock ({what}) outside src/domain/clock.rs"
            )],
            "{line}"
        );
    }
}

#[test]
fn file_length_reports_long_files_and_stale_entries() {
    let long = "//\n".repeat(MAX_LINES + 1);
    let limit = "//\n".repeat(MAX_LINES);
    let dir = tree(&[("src/store/disk.rs", &long), ("src/http/api.rs", &limit)]);
    assert_eq!(
        file_length_allowing(dir.path(), &[]),
        vec![format!(
            "src/store/disk.rs: {} lines, more than {MAX_LINES}: split it, or list it in LONG_FILES in tests/tidy.rs with the reason it stays whole",
            MAX_LINES + 1
        )]
    );
    let reason = "one state machine, read top to bottom";
    assert_eq!(
        file_length_allowing(dir.path(), &[("src/store/disk.rs", reason)]),
        Vec::<String>::new()
    );
    assert_eq!(
        file_length_allowing(
            dir.path(),
            &[
                ("src/store/disk.rs", " "),
                ("src/http/api.rs", reason),
                ("src/gone.rs", reason),
            ]
        ),
        vec![
            "tests/tidy.rs: LONG_FILES lists src/store/disk.rs without a reason it stays whole"
                .to_owned(),
            format!(
                "tests/tidy.rs: LONG_FILES lists src/http/api.rs, which has {MAX_LINES} lines (at most {MAX_LINES} need no entry): remove the entry"
            ),
            "tests/tidy.rs: LONG_FILES lists src/gone.rs, which does not exist: remove the entry"
                .to_owned(),
        ]
    );
}

#[test]
fn invariants_reports_an_unbacked_or_broken_bullet() {
    let cases = [
        (
            "- Channels know nothing of storage.\n",
            "Channels know",
            "invariant \"Channels know nothing of storage. …\" has no `Checked by:` naming the tidy checks or tests behind it",
        ),
        (
            "- Reloads are atomic. Checked by: `tests/disk.rs::reload_is_atomic`.\n",
            "Reloads",
            "`tests/disk.rs::reload_is_atomic` names a test that does not exist: no `fn reload_is_atomic(` in tests/disk.rs",
        ),
        (
            "- Reloads are atomic. Checked by: `tests/reload.rs::atomic`.\n",
            "Reloads",
            "`tests/reload.rs::atomic` names tests/reload.rs, which does not exist",
        ),
        (
            "- Names are short.\n  Checked by: `tidy::layers`, `tidy::naming`\n",
            "Checked by: `tidy::layers`, `tidy::naming`",
            "`tidy::naming` is not a tidy check (there are: layers, cycles, clock, file_length, invariants, confined)",
        ),
        (
            "- Names are short. Checked by: `naming`\n",
            "Names",
            "`naming` is none of `tidy::CHECK`, `tests/FILE.rs::fn_name`, `src/PATH.rs::fn_name`",
        ),
        (
            "- Names are short. Checked by: review\n",
            "Names",
            "`Checked by:` wants backticked references separated by commas, not \"review\"",
        ),
    ];
    for (bullet, needle, expected) in cases {
        let arch = ARCH.replace("\n## Glossary", &format!("{bullet}\n## Glossary"));
        let dir = tree(&[("ARCHITECTURE.md", &arch)]);
        assert_eq!(
            invariants(dir.path()),
            vec![format!(
                "ARCHITECTURE.md:{}: {expected}",
                line_of(&arch, needle)
            )],
            "{bullet}"
        );
    }
}

#[test]
fn invariants_does_not_count_a_commented_out_test() {
    let dir = tree(&[("tests/disk.rs", "// fn only_store_writes() {}\n")]);
    assert_eq!(
        invariants(dir.path()),
        vec![format!(
            "ARCHITECTURE.md:{}: `tests/disk.rs::only_store_writes` names a test that does not exist: no `fn only_store_writes(` in tests/disk.rs",
            line_of(ARCH, "Checked by: `tests/disk.rs")
        )]
    );
}

#[test]
fn invariants_reports_a_missing_section() {
    let arch = ARCH.replace("## Architecture invariants", "## Rules");
    let dir = tree(&[("ARCHITECTURE.md", &arch)]);
    assert_eq!(
        invariants(dir.path()),
        vec!["ARCHITECTURE.md: no `## Architecture invariants` section"]
    );
}

#[test]
fn mask_blanks_comments_and_literals_only() {
    let text = "let a = '\"'; // crate::x\nlet b = r#\"x\"y\"#; /* a /* b */ c */ 'l: loop {}\nlet c = b'\\''; let d: &'static str = \"\\\"\";\n";
    let masked = mask(text);
    assert_eq!(masked.len(), text.len());
    let words: Vec<String> = tokens(&masked)
        .into_iter()
        .filter(|t| is_ident(&t.text))
        .map(|t| t.text)
        .collect();
    assert_eq!(
        words,
        [
            "let", "a", "let", "b", "l", "loop", "let", "c", "b", "let", "d", "static", "str"
        ]
    );
}

#[test]
fn violations_sort_by_path_then_line_number() {
    let v = sorted(vec![
        "src/b.rs:3: x".to_owned(),
        "src/a.rs:120: x".to_owned(),
        "src/a.rs:17: x".to_owned(),
        "src/a.rs: x".to_owned(),
    ]);
    assert_eq!(
        v,
        [
            "src/a.rs: x",
            "src/a.rs:17: x",
            "src/a.rs:120: x",
            "src/b.rs:3: x"
        ]
    );
}

#[test]
fn cycles_name_every_module_tied_into_one() {
    // a <-> b, b <-> c: one tangle, shown as its shortest cycle through `a`.
    let mut graph: Graph<String> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("c", "d")] {
        graph.entry(from.to_owned()).or_default().insert(
            to.to_owned(),
            Evidence(format!("src/{from}.rs:1 crate::{to}")),
        );
    }
    let found = find_cycles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        describe_cycle("layers", &found[0], &graph, String::clone),
        "src/a.rs:1: layers in a cycle: a -> b -> a (src/a.rs:1 crate::b; src/b.rs:1 crate::a); \
         further cycles tie in c"
    );
}

#[test]
fn confined_reports_sled_and_commits_outside_their_place() {
    let cases = [
        (
            "src/http/api.rs",
            "pub fn open() {\n    let _ = sled::open(\"db\");\n}\n",
            "src/http/api.rs:2: `sled::` outside src/store/: only the store knows sled",
        ),
        (
            "src/http/consent.rs",
            "pub fn file(store: &S) {\n    store.commit(&key, &c);\n}\n",
            "src/http/consent.rs:2: `.commit(` outside src/service.rs, src/store/: a case changes only through Service::change",
        ),
        (
            "src/domain/case.rs",
            "pub fn digest(store: &S) {\n    store.commit_many(&all);\n}\n",
            "src/domain/case.rs:2: `.commit_many(` outside src/service.rs, src/store/: a case changes only through Service::change",
        ),
    ];
    for (path, text, want) in cases {
        let dir = tree(&[(path, text)]);
        assert_eq!(confined(dir.path()), vec![want.to_owned()], "{path}");
    }
    // Where they belong, and in comments, they are fine.
    let dir = tree(&[(
        "src/store/disk.rs",
        "// store.commit(&key, &c) and sled::open\npub fn open() {\n    let _ = sled::open(\"db\");\n}\n",
    )]);
    assert_eq!(confined(dir.path()), Vec::<String>::new());
}
