//! Hostile case fields through every shipped template, for email and for
//! SMS with budgets of 1 to 3 segments, in the locale the input picks (en,
//! id, pl or tl), and one email on through planning and lettre.
//!
//! What must hold whatever a ticket system sends (within the API's limits):
//! - rendering succeeds and never panics;
//! - an email subject is one line: no CR, LF or other control character;
//! - template code in a field is data, never executed. The oracle is
//!   differential: the same case is rendered a second time with `{`/`[`
//!   and `}`/`]` swapped in every field. Both pairs are GSM-7 extension
//!   characters (same SMS cost), neither is whitespace or escaped in HTML,
//!   so a renderer that treats fields as data produces the same output up
//!   to those brackets; one that executed `{{ 7*7 }}` prints `49` where
//!   the swapped run prints `[[ 7*7 ]]`.
//! - customer text never adds markup to the HTML part: the sequence of tags
//!   equals that of a run whose fields have `<` and `>` replaced by `x`,
//!   and in particular no `<script` comes from a field;
//! - an SMS fits its budget (1 to 3 segments);
//! - the MIME message lettre builds from the rendered email (as the daemon
//!   plans it) has exactly one `Subject:`, only the headers tidings sets,
//!   CRLF line ends, and the subject and recipient name read back intact.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use chrono::{DateTime, Duration, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use tidings::channels::email::EmailTransport;
use tidings::channels::email::Mailer;
use tidings::config::Config;
use tidings::domain::{Case, CaseInput, Channel, CustomerInput, EventInput, Locale, Note};
use tidings::domain::{Content, EmailText as EmailContent};
use tidings::engine::plan::Engine;
use tidings::engine::render::{CaseView, MessageContext};
use tidings::engine::rules::RuleSet;
use tidings_fuzz::Hostile;

const LOCALES: [&str; 4] = ["en", "id", "pl", "tl"];
const TEMPLATES: [&str; 7] = [
    "acknowledgement",
    "progress",
    "reminder",
    "resolution",
    "note",
    "digest",
    "stale-case",
];
const ZONES: [&str; 6] = [
    "UTC",
    "America/New_York",
    "Asia/Jakarta",
    "Europe/Warsaw",
    "Asia/Manila",
    "America/St_Johns",
];
const STATUSES: [&str; 5] = ["open", "pending_customer", "on_hold", "resolved", "closed"];
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];

struct Fixture {
    config: Config,
    /// The shipped templates, with one rule per template so that `preview`
    /// plans an email from any of them.
    engine: Engine,
    mailer: Mailer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut config = Config::load(&tidings_fuzz::repo().join("tidings.yaml"))
            .expect("the shipped config loads");
        config.email.transport = EmailTransport::File {
            dir: std::env::temp_dir().join("tidings-fuzz-mail"),
        };
        let mut engine = tidings::cli::engine(&config).expect("the shipped set builds");
        let rules: String = TEMPLATES
            .iter()
            .map(|t| {
                format!("  - {{ name: t-{t}, every: 1d, channels: [email, sms], template: {t} }}\n")
            })
            .collect();
        engine.rules = RuleSet::parse(
            std::path::Path::new("fuzz-rules.yaml"),
            &format!("rules:\n{rules}"),
        )
        .expect("one rule per template");
        engine.email_quiet = None;
        engine.sms_quiet = None;
        let mailer = Mailer::new(&config.email.transport, &config.email.from).expect("file mailer");
        Fixture {
            config,
            engine,
            mailer,
        }
    })
}

#[derive(Debug, Arbitrary)]
struct Input {
    name: Hostile,
    subject: Hostile,
    assignee: Option<Hostile>,
    note: Option<(Hostile, Option<Hostile>)>,
    tags: Vec<Hostile>,
    fields: Vec<(Hostile, Hostile)>,
    status: u8,
    priority: u8,
    zone: u8,
    locale: u8,
    age_days: u16,
    eta_hours: Option<i16>,
    next_update_hours: Option<u16>,
    now_minutes: u32,
    digest_size: u8,
    mail_template: u8,
}

/// How a run rewrites every customer-supplied string.
#[derive(Clone, Copy)]
enum Variant {
    AsSent,
    /// `{`↔`[`, `}`↔`]`.
    SwapBrackets,
    /// `<` and `>` become `x`.
    NoAngles,
}

impl Variant {
    fn apply(self, s: &str) -> String {
        match self {
            Self::AsSent => s.to_owned(),
            Self::SwapBrackets => s
                .chars()
                .map(|c| match c {
                    '{' => '[',
                    '[' => '{',
                    '}' => ']',
                    ']' => '}',
                    c => c,
                })
                .collect(),
            Self::NoAngles => s.replace(['<', '>'], "x"),
        }
    }
}

/// Output up to the swapped brackets.
fn brackets_as_braces(s: &str) -> String {
    s.replace('[', "{").replace(']', "}")
}

/// At most `max` characters, as the API would accept.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn now(input: &Input) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .expect("valid instant")
        + Duration::minutes(i64::from(input.now_minutes % (2 * 366 * 24 * 60)))
}

/// The case as the API would store it: validated by the same code, with
/// free text cut to the API's limits.
fn case(input: &Input, variant: Variant, locale: &str) -> Option<Case> {
    let f = |h: &Hostile, max: usize| variant.apply(&clip(&h.0, max));
    let now = now(input);
    let api = CaseInput {
        subject: f(&input.subject, 500),
        status: serde_json::from_value(serde_json::json!(
            STATUSES[usize::from(input.status) % STATUSES.len()]
        ))
        .ok()?,
        priority: serde_json::from_value(serde_json::json!(
            PRIORITIES[usize::from(input.priority) % PRIORITIES.len()]
        ))
        .ok()?,
        customer: CustomerInput {
            name: f(&input.name, 200),
            email: Some("maria.hernandez@example.com".into()),
            phone: Some("+12125550143".into()),
            timezone: Some(ZONES[usize::from(input.zone) % ZONES.len()].into()),
            locale: Some(locale.into()),
            channels: None,
        },
        cc: Vec::new(),
        assignee: input.assignee.as_ref().map(|a| f(a, 200)),
        eta: input.eta_hours.map(|h| now + Duration::hours(i64::from(h))),
        tags: input
            .tags
            .iter()
            .take(50)
            .map(|t| f(t, 100))
            .filter(|t| !t.trim().is_empty())
            .collect(),
        fields: input
            .fields
            .iter()
            .take(100)
            .map(|(k, v)| (f(k, 100), serde_json::Value::String(f(v, 1000))))
            .collect(),
    };
    let created = now - Duration::days(i64::from(input.age_days % 400));
    let mut case = api
        .into_case(
            "CASE-20931".parse().ok()?,
            "fuzz",
            &defaults(),
            created,
            None,
        )
        .ok()?;
    if let Some((body, author)) = &input.note {
        let event = EventInput::Note {
            body: f(body, 10_000),
            author: author.as_ref().map(|a| f(a, 200)),
        };
        if let Ok(tidings::domain::Event::Note { body, author }) = event.validate() {
            case.latest_note = Some(Note {
                body,
                author,
                at: now,
            });
        }
    }
    Some(case)
}

fn defaults() -> tidings::domain::Defaults {
    fixture().config.defaults()
}

fn context(input: &Input, case: &Case) -> MessageContext {
    let now = now(input);
    let next = input
        .next_update_hours
        .map(|h| now + Duration::hours(i64::from(h)));
    let mut ctx = MessageContext::new(
        case,
        next,
        now,
        &fixture().config.company,
        "http://127.0.0.1:8080/unsubscribe/token".into(),
    );
    let extra = usize::from(input.digest_size % 4);
    if extra > 0 {
        ctx.cases = (0..=extra)
            .map(|i| {
                let mut view = CaseView::new(case, now);
                view.id = format!("CASE-2093{i}");
                view
            })
            .collect();
    }
    ctx
}

/// The names of the tags in an HTML text, in order.
fn tags(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let name: String = rest
            .trim_start_matches(['/', '!'])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() {
            out.push(name.to_ascii_lowercase());
        }
    }
    out
}

fn script_tags(html: &str) -> usize {
    html.to_ascii_lowercase().matches("<script").count()
}

fn check_email(template: &str, a: &EmailContent, b: &EmailContent, c: &EmailContent) {
    assert!(
        !a.subject.chars().any(char::is_control),
        "{template}: control character in the subject: {:?}",
        a.subject
    );
    assert!(!a.subject.is_empty(), "{template}: empty subject");
    assert_eq!(
        brackets_as_braces(&a.subject),
        brackets_as_braces(&b.subject),
        "{template}: a field's template code ran in the subject"
    );
    assert_eq!(
        brackets_as_braces(&a.text),
        brackets_as_braces(&b.text),
        "{template}: a field's template code ran in the text part"
    );
    match (&a.html, &b.html, &c.html) {
        (Some(ha), Some(hb), Some(hc)) => {
            assert_eq!(
                brackets_as_braces(ha),
                brackets_as_braces(hb),
                "{template}: a field's template code ran in the HTML part"
            );
            assert!(
                script_tags(ha) <= script_tags(hc),
                "{template}: a field put a <script> into the HTML part:\n{ha}"
            );
            assert_eq!(
                tags(ha),
                tags(hc),
                "{template}: a field added markup to the HTML part:\n{ha}"
            );
        }
        (None, None, None) => {}
        _ => panic!("{template}: the HTML part comes and goes with the fields"),
    }
}

fn check_mime(input: &Input, case: Case) {
    let fx = fixture();
    let template = TEMPLATES[usize::from(input.mail_template) % TEMPLATES.len()];
    let (_, _, entry) = fx
        .engine
        .preview(
            case,
            Some(&format!("t-{template}")),
            Some(Channel::Email),
            now(input),
        )
        .unwrap_or_else(|e| panic!("{template}: planning failed: {e}"));
    let message = fx
        .mailer
        .build(&entry.message())
        .unwrap_or_else(|e| panic!("{template}: lettre refused the message: {e}"));
    let raw = message.formatted();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    let head = std::str::from_utf8(&raw[..end]).expect("headers are ASCII");
    assert!(head.is_ascii(), "8-bit header: {head}");
    let bytes = head.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(
                bytes.get(i + 1),
                Some(&b'\n'),
                "bare CR in headers: {head:?}"
            ),
            b'\n' => assert_eq!(bytes[i - 1], b'\r', "bare LF in headers: {head:?}"),
            _ => {}
        }
    }
    let allowed = [
        "from",
        "to",
        "subject",
        "message-id",
        "date",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "auto-submitted",
        "in-reply-to",
        "references",
        "reply-to",
    ];
    let mut subjects = 0;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let (name, _) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("not a header line: {line:?}\n{head}"));
        let name = name.to_ascii_lowercase();
        assert!(
            allowed.contains(&name.as_str()),
            "a field injected the header {name:?}:\n{head}"
        );
        subjects += usize::from(name == "subject");
    }
    assert_eq!(subjects, 1, "exactly one Subject:\n{head}");

    let parsed = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("the message parses");
    assert_eq!(
        parsed.subject(),
        match &entry.content {
            Content::Email(e) => Some(e.subject.as_str()),
            Content::Sms(_) | Content::WhatsApp(_) => None,
        },
        "the subject does not read back:\n{head}"
    );
    let to = parsed.to().and_then(|t| t.first()).expect("one recipient");
    assert_eq!(to.address(), Some(entry.to.as_str()));
    if !entry.to_name.is_empty() {
        assert_eq!(
            to.name(),
            Some(entry.to_name.as_str()),
            "the recipient's name does not read back:\n{head}"
        );
    }
}

fuzz_target!(|input: Input| {
    let fx = fixture();
    let templates = &fx.engine.templates;
    let locale_tag = LOCALES[usize::from(input.locale) % LOCALES.len()];
    let locale: Locale = locale_tag.parse().expect("shipped locale");
    let Some(case_a) = case(&input, Variant::AsSent, locale_tag) else {
        return;
    };
    let case_b = case(&input, Variant::SwapBrackets, locale_tag).expect("swapping keeps it valid");
    let case_c = case(&input, Variant::NoAngles, locale_tag).expect("x keeps it valid");
    let (a, b, c) = (
        context(&input, &case_a),
        context(&input, &case_b),
        context(&input, &case_c),
    );
    for template in TEMPLATES {
        if templates.has(template, Channel::Email) {
            let render = |ctx: &MessageContext| {
                templates
                    .render_email(template, &locale, ctx)
                    .unwrap_or_else(|e| panic!("{template}/{locale_tag}: {e}"))
            };
            check_email(template, &render(&a), &render(&b), &render(&c));
        }
        if templates.has(template, Channel::Sms) {
            for max in 1..=3 {
                let render = |ctx: &MessageContext| {
                    templates
                        .render_sms(template, &locale, ctx, max)
                        .unwrap_or_else(|e| panic!("{template}/{locale_tag}: {e}"))
                };
                let (sa, sb) = (render(&a), render(&b));
                let n = tidings::domain::segments::count(&sa).count;
                assert!(
                    n <= max,
                    "{template}/{locale_tag}: {n} segments > {max}: {sa:?}"
                );
                assert_eq!(
                    brackets_as_braces(&sa),
                    brackets_as_braces(&sb),
                    "{template}/{locale_tag}: a field's template code ran in the SMS"
                );
            }
        }
    }
    check_mime(&input, case_a);
});
