//! Templates: locale lookup, the variables a template sees, rendering.
//!
//! `{template}.{channel}.j2`, optionally under a locale folder
//! (`templates/id/progress.email.j2` wins for locale `id`). An email template
//! defines the blocks `subject` and `text`; `{template}.email.html.j2`, when
//! present, is the HTML part, rendered with HTML escaping. Case fields are
//! data: they are never evaluated as template code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use crate::domain::{Case, Channel, Customer, EmailText, Locale};
use crate::domain::{Company, Diagnostic, Diagnostics};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no `{template}` template for channel {channel}")]
    Missing {
        template: String,
        channel: &'static str,
    },
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

/// All templates, loaded once and validated.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    names: BTreeSet<String>,
    dir: PathBuf,
    default_locale: Locale,
}

/// The variables a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct MessageContext {
    pub customer: CustomerView,
    pub case: CaseView,
    /// When the customer hears from us next, in their zone and language;
    /// `none` when no further update is planned.
    pub next_update_at: Option<String>,
    /// The same instant written briefly, for SMS.
    pub next_update_at_short: Option<String>,
    pub next_update_at_iso: Option<String>,
    pub unsubscribe_url: String,
    /// The signed link to the customer's own page for the case.
    pub status_url: String,
    pub company: Company,
    /// A digest's cases (the first is `case`); empty otherwise.
    pub cases: Vec<CaseView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub name: String,
    pub first_name: String,
    pub locale: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    pub id: String,
    pub subject: String,
    pub status: &'static str,
    pub priority: &'static str,
    /// Whole days since the case was opened.
    pub age: i64,
    pub eta: Option<String>,
    pub assignee: Option<String>,
    pub tags: Vec<String>,
    pub fields: BTreeMap<String, serde_json::Value>,
    pub latest_note: Option<String>,
    pub latest_note_author: Option<String>,
    /// In a digest, the case's own page link (`status_url` otherwise).
    pub status_url: String,
}

impl MessageContext {
    pub fn new(
        case: &Case,
        next_update_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        company: &Company,
        unsubscribe_url: String,
    ) -> Self {
        Self::for_person(
            case,
            &case.customer,
            next_update_at,
            now,
            company,
            unsubscribe_url,
        )
    }

    /// The context of a message to `c`, one of the case's recipients: the
    /// greeting with their name, times in their zone and language.
    pub fn for_person(
        case: &Case,
        c: &Customer,
        next_update_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        company: &Company,
        unsubscribe_url: String,
    ) -> Self {
        let tz = c.timezone;
        let view = CaseView::for_person(case, c, now);
        Self {
            customer: CustomerView {
                first_name: c
                    .name
                    .split_whitespace()
                    .next()
                    .unwrap_or(&c.name)
                    .to_owned(),
                name: c.name.clone(),
                locale: c.locale.to_string(),
                timezone: tz.name().to_owned(),
            },
            case: view,
            next_update_at: next_update_at.map(|t| format_local(t, tz, &c.locale)),
            next_update_at_short: next_update_at.map(|t| format_short(t, tz, &c.locale)),
            next_update_at_iso: next_update_at.map(|t| t.to_rfc3339()),
            unsubscribe_url,
            status_url: String::new(),
            company: company.clone(),
            cases: Vec::new(),
        }
    }

    /// Limits the free text that ticket systems supply (subject, latest
    /// note) to `max` characters, for an SMS that must stay within budget.
    fn shortened(&self, max: usize) -> Self {
        let mut ctx = self.clone();
        ctx.case.shorten(max);
        for c in &mut ctx.cases {
            c.shorten(max);
        }
        ctx
    }
}

impl CaseView {
    pub fn new(case: &Case, now: DateTime<Utc>) -> Self {
        Self::for_person(case, &case.customer, now)
    }

    /// The case as `c` (one of its recipients) reads it: the estimate in
    /// their zone and language.
    pub fn for_person(case: &Case, c: &Customer, now: DateTime<Utc>) -> Self {
        Self {
            id: case.id.to_string(),
            subject: case.subject.clone(),
            status: case.status.as_str(),
            priority: case.priority.as_str(),
            age: (now - case.created_at).num_days().max(0),
            eta: case.eta.map(|e| format_local(e, c.timezone, &c.locale)),
            assignee: case.assignee.clone(),
            tags: case.tags.clone(),
            fields: case.fields.clone(),
            latest_note: case.latest_note.as_ref().map(|n| n.body.clone()),
            latest_note_author: case.latest_note.as_ref().and_then(|n| n.author.clone()),
            status_url: String::new(),
        }
    }

    fn shorten(&mut self, max: usize) {
        self.subject = clip(&self.subject, max);
        self.latest_note = self.latest_note.as_deref().map(|n| clip(n, max));
    }
}

/// At most `max` characters of `s`, with "..." when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.truncate(out.trim_end().len());
    out.push_str("...");
    out
}

/// An instant on the customer's wall clock, briefly (for SMS).
pub fn format_short(instant: DateTime<Utc>, tz: Tz, locale: &Locale) -> String {
    let local = instant.with_timezone(&tz);
    let (fmt, loc) = match locale.language() {
        "id" => ("%a %-d %b, %H.%M %Z", chrono::Locale::id_ID),
        "pl" => ("%d.%m, %H:%M %Z", chrono::Locale::pl_PL),
        "tl" => ("%a %b %-d, %-I:%M %p %Z", chrono::Locale::tl_PH),
        _ => ("%a %b %-d, %-I:%M %p %Z", chrono::Locale::en_US),
    };
    local.format_localized(fmt, loc).to_string()
}

/// An instant on the customer's wall clock, written the way their language
/// writes dates.
pub fn format_local(instant: DateTime<Utc>, tz: Tz, locale: &Locale) -> String {
    let local = instant.with_timezone(&tz);
    let (fmt, loc) = match locale.language() {
        "id" => ("%A, %-d %B %Y pukul %H.%M %Z", chrono::Locale::id_ID),
        // Polish months take the genitive after a day number; the numeric
        // form avoids the wrong case.
        "pl" => ("%A, %d.%m.%Y, godz. %H:%M %Z", chrono::Locale::pl_PL),
        "tl" => ("%A, %B %-d, %Y, %-I:%M %p %Z", chrono::Locale::tl_PH),
        _ => ("%A, %B %-d, %Y at %-I:%M %p %Z", chrono::Locale::en_US),
    };
    local.format_localized(fmt, loc).to_string()
}

fn template_file_name(template: &str, channel: Channel) -> String {
    format!("{template}.{}.j2", channel.as_str())
}

impl Templates {
    /// Loads every `*.j2` under `dir`, compiling each so syntax errors show
    /// up at start-up with their position.
    pub fn load(dir: &Path, default_locale: Locale) -> Result<Self, Diagnostics> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(200_000));
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html.j2") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let mut names = BTreeSet::new();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files).map_err(|e| {
            Diagnostic::new(dir, 1, 1, format!("cannot read templates folder: {e}"))
        })?;
        for (name, path) in files {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    if let Err(e) = env.add_template_owned(name.clone(), text.clone()) {
                        errors.push(template_diagnostic(&path, &text, &e));
                    } else {
                        names.insert(name);
                    }
                }
                Err(e) => errors.push(Diagnostic::new(&path, 1, 1, format!("cannot read: {e}"))),
            }
        }
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(Self {
            env,
            names,
            dir: dir.to_owned(),
            default_locale,
        })
    }

    /// The template file that serves `locale`: the locale's own folder, its
    /// language's folder, the default locale's folder, then the top level.
    pub fn resolve(&self, file: &str, locale: &Locale) -> Option<String> {
        locale
            .fallbacks()
            .chain(self.default_locale.fallbacks())
            .map(|l| format!("{l}/{file}"))
            .chain(std::iter::once(file.to_owned()))
            .find(|n| self.names.contains(n))
    }

    pub fn has(&self, template: &str, channel: Channel) -> bool {
        self.names
            .iter()
            .any(|n| n.rsplit('/').next() == Some(&template_file_name(template, channel)))
    }

    /// Renders an email in the customer's locale.
    pub fn render_email(
        &self,
        template: &str,
        locale: &Locale,
        ctx: &MessageContext,
    ) -> Result<EmailText, RenderError> {
        let file = template_file_name(template, Channel::Email);
        let name = self
            .resolve(&file, locale)
            .ok_or_else(|| RenderError::Missing {
                template: template.to_owned(),
                channel: "email",
            })?;
        let err = |e: minijinja::Error| RenderError::Template {
            name: name.clone(),
            message: describe(&e),
        };
        let tmpl = self.env.get_template(&name).map_err(err)?;
        let (subject, text) = render_blocks(&tmpl, ctx).map_err(err)?;
        let subject = one_line(&subject);
        let text = tidy(&text);
        let html_name = format!("{}.html.j2", name.trim_end_matches(".j2"));
        let html = if self.names.contains(&html_name) {
            let t = self
                .env
                .get_template(&html_name)
                .map_err(|e| RenderError::Template {
                    name: html_name.clone(),
                    message: describe(&e),
                })?;
            match t.render(Serde(ctx)) {
                Ok(html) => Some(html),
                // The HTML part writes notes line by line, so customer text
                // sets its cost: when long notes (a digest of several)
                // exhaust the fuel, the message goes as text alone rather
                // than not at all.
                Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                    tracing::warn!(template = %html_name, "HTML part out of fuel; sending text only");
                    None
                }
                Err(e) => {
                    return Err(RenderError::Template {
                        name: html_name.clone(),
                        message: describe(&e),
                    });
                }
            }
        } else {
            None
        };
        if subject.is_empty() {
            return Err(RenderError::Template {
                name,
                message: "the subject block rendered empty".into(),
            });
        }
        Ok(EmailText {
            subject,
            text,
            html,
        })
    }

    /// Renders an SMS in the customer's locale within `max_segments`: when
    /// the text runs over, the free text from the ticket system (subject,
    /// latest note) is shortened first, and only then the message itself.
    pub fn render_sms(
        &self,
        template: &str,
        locale: &Locale,
        ctx: &MessageContext,
        max_segments: usize,
    ) -> Result<String, RenderError> {
        let file = template_file_name(template, Channel::Sms);
        let name = self
            .resolve(&file, locale)
            .ok_or_else(|| RenderError::Missing {
                template: template.to_owned(),
                channel: "sms",
            })?;
        let tmpl = self
            .env
            .get_template(&name)
            .map_err(|e| RenderError::Template {
                name: name.clone(),
                message: describe(&e),
            })?;
        let render = |ctx: &MessageContext| {
            tmpl.render(Serde(ctx))
                .map(|t| sms_tidy(&t))
                .map_err(|e| RenderError::Template {
                    name: name.clone(),
                    message: describe(&e),
                })
        };
        let mut text = render(ctx)?;
        for max in [160, 80, 40, 20, 0] {
            if crate::domain::segments::count(&text).count <= max_segments {
                return Ok(text);
            }
            text = render(&ctx.shortened(max))?;
        }
        Ok(crate::domain::segments::truncate(&text, max_segments))
    }

    /// SMS templates that run over `max_segments` when rendered with long
    /// but realistic inputs (`sample`), before any shortening.
    pub fn sms_over_budget(&self, sample: &MessageContext, max_segments: usize) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for name in self.names.iter().filter(|n| n.ends_with(".sms.j2")) {
            let Ok(tmpl) = self.env.get_template(name) else {
                continue;
            };
            let Ok(text) = tmpl.render(Serde(sample)) else {
                continue;
            };
            let seg = crate::domain::segments::count(&sms_tidy(&text));
            if seg.count > max_segments {
                out.push(Diagnostic::new(
                    &self.dir.join(name),
                    1,
                    1,
                    format!(
                        "warning: can take {} SMS segments with long inputs (budget {max_segments}); subject and note will be shortened to fit",
                        seg.count
                    ),
                ));
            }
        }
        out
    }

    /// Renders every template in every locale folder against a sample case,
    /// so a typo in a variable shows up before a customer would see it.
    pub fn check(&self, sample: &MessageContext) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for name in self.names.iter().filter(|n| !is_page(n)) {
            let Ok(tmpl) = self.env.get_template(name) else {
                continue;
            };
            // An email template without a `subject` or `text` block fails
            // here too: rendering a missing block is an error.
            let result = if name.ends_with(".email.j2") {
                render_blocks(&tmpl, sample).map(|_| ())
            } else if name.ends_with(".whatsapp.j2") {
                match whatsapp::whatsapp_blocks(&tmpl, sample) {
                    Ok(parts) => {
                        if let Some(t) = parts.template.filter(|t| !is_content_sid(&t.content_sid))
                        {
                            out.push(Diagnostic::new(
                                &self.dir.join(name),
                                1,
                                1,
                                format!(
                                    "content_sid `{}`: expected HX followed by 32 hexadecimal digits",
                                    one_line(&t.content_sid)
                                ),
                            ));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                tmpl.render(Serde(sample)).map(|_| ())
            };
            if let Err(e) = result {
                out.push(template_diagnostic(&self.dir.join(name), tmpl.source(), &e));
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renders the page template `page/{file}` in `locale`.
    pub fn render_page(
        &self,
        file: &str,
        locale: &Locale,
        ctx: &impl Serialize,
    ) -> Result<String, RenderError> {
        let name = self
            .resolve(&format!("page/{file}"), locale)
            .ok_or_else(|| RenderError::Missing {
                template: file.to_owned(),
                channel: "page",
            })?;
        let err = |e: minijinja::Error| RenderError::Template {
            name: name.clone(),
            message: describe(&e),
        };
        self.env
            .get_template(&name)
            .map_err(err)?
            .render(Serde(ctx))
            .map_err(err)
    }

    /// Renders every page template in every locale folder against the
    /// sample for its file name (`case.html.j2` → `samples["case.html.j2"]`),
    /// and names each of those files missing from the top-level `page/`
    /// folder, the fallback of every locale (a templates folder from before
    /// the case page, say).
    pub fn check_pages(&self, samples: &BTreeMap<&str, serde_json::Value>) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for file in samples.keys() {
            let name = format!("page/{file}");
            if !self.names.iter().any(|n| *n == name) {
                out.push(Diagnostic::new(
                    &self.dir.join(&name),
                    1,
                    1,
                    format!(
                        "the case page needs {name}: copy the shipped templates/page/ folder in"
                    ),
                ));
            }
        }
        for name in self.names.iter().filter(|n| is_page(n)) {
            let file = name.rsplit('/').next().unwrap_or(name);
            let (Some(sample), Ok(tmpl)) = (samples.get(file), self.env.get_template(name)) else {
                continue;
            };
            if let Err(e) = tmpl.render(Serde(sample)) {
                out.push(template_diagnostic(&self.dir.join(name), tmpl.source(), &e));
            }
        }
        out
    }
}

/// Whether a template belongs to the customer's case page.
fn is_page(name: &str) -> bool {
    name.starts_with("page/") || name.contains("/page/")
}

/// An SMS body: trimmed, lines trimmed at the end, no blank-line runs.
fn sms_tidy(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = false;
    for line in s.trim().lines() {
        let line = line.trim_end();
        if line.is_empty() {
            if !blank && !out.is_empty() {
                out.push('\n');
            }
            blank = true;
            continue;
        }
        blank = false;
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
    }
    out
}

/// Renders the `subject` and `text` blocks of an email template.
fn render_blocks(
    tmpl: &minijinja::Template<'_, '_>,
    ctx: &MessageContext,
) -> Result<(String, String), minijinja::Error> {
    let mut captured = tmpl.render_captured(Serde(ctx))?;
    captured
        .with_state_mut(|state| Ok((state.render_block("subject")?, state.render_block("text")?)))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "j2") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, path));
        }
    }
    Ok(())
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg.push_str(": ");
        msg.push_str(detail);
    }
    msg
}

fn template_diagnostic(path: &Path, source: &str, e: &minijinja::Error) -> Diagnostic {
    let line = e.line().unwrap_or(1);
    let column = e
        .range()
        .and_then(|r| {
            let before = source.get(..r.start)?;
            Some(before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1)
        })
        .unwrap_or(1);
    Diagnostic::new(path, line as u64, column as u64, describe(e))
}

/// Collapses a header value to one line: CR, LF and other control
/// characters never reach a header.
pub fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Trims the blank lines that block tags leave at the edges of a body.
fn tidy(s: &str) -> String {
    let mut out = s.trim_matches(['\n', '\r']).to_owned();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_customers_language() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T14:00:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        let f = |tz: &str, l: &str| {
            format_local(t, tz.parse().expect("tz"), &l.parse().expect("locale"))
        };
        assert_eq!(
            f("America/New_York", "en"),
            "Thursday, November 26, 2026 at 9:00 AM EST"
        );
        assert_eq!(
            f("Asia/Jakarta", "id"),
            "Kamis, 26 November 2026 pukul 21.00 WIB"
        );
        assert_eq!(
            f("Europe/Warsaw", "pl"),
            "czwartek, 26.11.2026, godz. 15:00 CET"
        );
        assert_eq!(
            f("Asia/Manila", "tl"),
            "Huwebes, Nobiyembre 26, 2026, 10:00 PM PST"
        );
    }

    #[test]
    fn headers_never_carry_line_breaks() {
        assert_eq!(one_line("Hi\r\nBcc: x@y.z"), "Hi Bcc: x@y.z");
    }

    fn sample(name: &str, subject: &str, note: &str, locale: &str) -> MessageContext {
        let now = Utc::now();
        let c = &mut |s: &str| s.to_owned();
        MessageContext {
            customer: CustomerView {
                name: c(name),
                first_name: c(name.split_whitespace().next().unwrap_or(name)),
                locale: c(locale),
                timezone: c("Asia/Manila"),
            },
            case: CaseView {
                id: c("CASE-20931"),
                subject: c(subject),
                status: "open",
                priority: "high",
                age: 3,
                eta: Some(c("Thursday, November 26, 2026 at 9:00 AM EST")),
                assignee: Some(c(name)),
                tags: Vec::new(),
                fields: BTreeMap::new(),
                latest_note: Some(c(note)),
                latest_note_author: Some(c(name)),
                status_url: String::new(),
            },
            next_update_at: Some(format_local(
                now,
                chrono_tz::Asia::Manila,
                &"tl".parse().expect("locale"),
            )),
            next_update_at_short: Some(format_short(
                now,
                chrono_tz::Asia::Manila,
                &"tl".parse().expect("locale"),
            )),
            next_update_at_iso: Some(now.to_rfc3339()),
            unsubscribe_url: String::new(),
            status_url: String::new(),
            company: Company {
                name: c("Example Support"),
                support_url: None,
            },
            cases: Vec::new(),
        }
    }

    fn shipped() -> Templates {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        Templates::load(&dir, "en".parse().expect("locale")).expect("shipped templates load")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the ticket system sends (long names, subjects and
        /// notes, emoji that force UCS-2), a rendered SMS stays within the
        /// segment budget.
        #[test]
        fn rendered_sms_never_exceeds_the_budget(
            name in "\\PC{0,60}",
            subject in "\\PC{0,300}",
            note in "\\PC{0,800}",
            max in 1usize..=3,
        ) {
            let t = shipped();
            for locale in ["en", "id", "pl", "tl"] {
                let mut ctx = sample(&name, &subject, &note, locale);
                for template in ["acknowledgement", "progress", "reminder", "resolution", "note", "digest"] {
                    if template == "digest" {
                        ctx.cases = vec![ctx.case.clone(), ctx.case.clone(), ctx.case.clone()];
                    }
                    let text = t
                        .render_sms(template, &locale.parse().expect("locale"), &ctx, max)
                        .expect("renders");
                    let n = crate::domain::segments::count(&text).count;
                    proptest::prop_assert!(n <= max, "{template}/{locale}: {n} segments > {max}: {text}");
                }
            }
        }
    }

    /// Found by the `render_hostile` fuzz target: the HTML part writes a
    /// note line by line, and a digest of notes of many short lines (each
    /// within the API's 10,000 characters) ran the engine out of fuel, so
    /// the whole message failed and the customer heard nothing. Now the
    /// text part carries it.
    #[test]
    fn a_digest_of_long_many_line_notes_still_renders() {
        let t = shipped();
        let note = format!("first{}last", "\n".repeat(9_990));
        for locale in ["en", "id", "pl", "tl"] {
            let mut ctx = sample("Maria", "Router", &note, locale);
            ctx.cases = vec![ctx.case.clone(); 4];
            let email = t
                .render_email("digest", &locale.parse().expect("locale"), &ctx)
                .unwrap_or_else(|e| panic!("{locale}: {e}"));
            assert_eq!(email.text.matches("last").count(), 4, "{locale}");
            // One such note alone keeps its HTML part.
            ctx.cases.clear();
            let email = t
                .render_email("progress", &locale.parse().expect("locale"), &ctx)
                .unwrap_or_else(|e| panic!("{locale}: {e}"));
            assert!(email.html.is_some_and(|h| h.contains("last")), "{locale}");
        }
    }

    #[test]
    fn a_long_note_is_shortened_before_the_message_is_cut() {
        let t = Templates {
            env: {
                let mut env = Environment::new();
                env.add_template_owned(
                    "note.sms.j2".to_owned(),
                    "{{ case.latest_note }} Next update by {{ next_update_at_short }}. Reply STOP to opt out.".to_owned(),
                )
                .expect("template");
                env
            },
            names: ["note.sms.j2".to_owned()].into(),
            dir: PathBuf::from("t"),
            default_locale: "en".parse().expect("locale"),
        };
        let ctx = sample("Maria", "Router", &"word ".repeat(200), "en");
        let text = t
            .render_sms("note", &"en".parse().expect("locale"), &ctx, 1)
            .expect("renders");
        assert!(crate::domain::segments::count(&text).count <= 1, "{text}");
        assert!(
            text.ends_with("Reply STOP to opt out."),
            "the promise and opt-out survive: {text}"
        );
    }
}

#[cfg(test)]
mod more_tests;

mod whatsapp;
pub use whatsapp::{MAX_VARIABLE_CHARS, WhatsAppParts, is_content_sid};
