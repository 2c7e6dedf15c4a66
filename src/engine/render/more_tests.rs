//! Rendering as specifications: which locale's file serves a customer,
//! what each kind of template mistake reports (at load, at `check`, at
//! send time), dates in each language, SMS tidying and cutting.

use std::path::Path;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tempfile::TempDir;

use super::{CaseView, MessageContext, RenderError, Templates};
use super::{clip, describe, format_short, sms_tidy, tidy};
use crate::domain::{Case, Company, Diagnostics, Locale, segments};

/// Thursday 2026-11-26 14:00 UTC.
fn t() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T14:00:00Z")
        .expect("valid instant")
        .with_timezone(&Utc)
}

fn locale(tag: &str) -> Locale {
    tag.parse().expect("a language tag")
}

/// Templates loaded from a folder holding `files` (name, text).
fn load(files: &[(&str, &str)], default: &str) -> Result<(TempDir, Templates), Diagnostics> {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    let templates = Templates::load(dir.path(), locale(default))?;
    Ok((dir, templates))
}

fn loaded(files: &[(&str, &str)]) -> (TempDir, Templates) {
    load(files, "en").expect("templates load")
}

/// An email template whose subject is `subject`.
fn email(subject: &str) -> String {
    format!("{{% block subject %}}{subject}{{% endblock %}}{{% block text %}}Hi{{% endblock %}}")
}

/// Ana's case, opened 3 days before `t`, with a note, an ETA and an
/// assignee.
fn case(tag: &str, tz: &str) -> Case {
    serde_json::from_value(serde_json::json!({
        "id": "CASE-7", "source": "desk", "subject": "Router", "status": "pending_customer",
        "priority": "high", "assignee": "Jordan", "eta": "2026-11-30T10:00:00Z",
        "tags": ["hardware"], "fields": { "order": "RMA-1" }, "created_at": "2026-11-23T14:00:00Z",
        "latest_note": { "body": "Shipped.", "author": "Jordan", "at": "2026-11-26T13:00:00Z" },
        "customer": { "name": "Ana Maria Santos", "email": "ana@example.com", "phone": null,
            "timezone": tz, "locale": tag, "channels": ["email"] },
    }))
    .expect("a valid case")
}

/// What a template sees of Ana's case at `t`, the next update due a day
/// later.
fn context(tag: &str, tz: &str) -> MessageContext {
    let company = Company {
        name: "Acme".into(),
        support_url: None,
    };
    let next = Some(t() + chrono::Duration::days(1));
    let unsubscribe = "https://u.example/x".to_owned();
    MessageContext::new(&case(tag, tz), next, t(), &company, unsubscribe)
}

#[test]
fn the_context_holds_what_templates_may_show() {
    let ctx = context("pl", "Europe/Warsaw");
    let c = &ctx.customer;
    assert_eq!([&c.name, &c.first_name], ["Ana Maria Santos", "Ana"]);
    assert_eq!([&c.locale, &c.timezone], ["pl", "Europe/Warsaw"]);
    assert_eq!(
        ctx.next_update_at.as_deref(),
        Some("piątek, 27.11.2026, godz. 15:00 CET")
    );
    assert_eq!(
        ctx.next_update_at_short.as_deref(),
        Some("27.11, 15:00 CET")
    );
    assert_eq!(
        ctx.next_update_at_iso.as_deref(),
        Some("2026-11-27T14:00:00+00:00")
    );
    let v = &ctx.case;
    assert_eq!(
        (v.status, v.priority, v.age),
        ("pending_customer", "high", 3)
    );
    assert_eq!(
        v.eta.as_deref(),
        Some("poniedziałek, 30.11.2026, godz. 11:00 CET")
    );
    assert_eq!(v.latest_note.as_deref(), Some("Shipped."));
    assert_eq!(v.latest_note_author.as_deref(), Some("Jordan"));
    assert!(ctx.cases.is_empty());
    // A clock behind the case's opening shows age 0, not a negative one.
    let c = case("en", "UTC");
    let before = c.created_at - chrono::Duration::days(2);
    assert_eq!(CaseView::new(&c, before).age, 0);
}

#[test]
fn short_dates_are_written_the_way_each_language_writes_them() {
    // (zone, locale, as an SMS shows the instant)
    let rows = [
        ("America/New_York", "en", "Thu Nov 26, 9:00 AM EST"),
        ("America/New_York", "fr", "Thu Nov 26, 9:00 AM EST"),
        ("Asia/Jakarta", "id", "Kam 26 Nov, 21.00 WIB"),
        ("Europe/Warsaw", "pl", "26.11, 15:00 CET"),
        ("Asia/Manila", "tl", "Huw Nob 26, 10:00 PM PST"),
    ];
    for (tz, tag, want) in rows {
        let tz: Tz = tz.parse().expect("zone");
        assert_eq!(format_short(t(), tz, &locale(tag)), want, "{tag}");
    }
}

#[test]
fn the_customers_locale_then_its_language_then_the_default_then_the_top_level() {
    let files = [
        ("progress.email.j2", email("top")),
        ("de/progress.email.j2", email("de")),
        ("pt/progress.email.j2", email("pt")),
        ("pt-BR/progress.email.j2", email("pt-BR")),
        ("pt-BR/only.sms.j2", "only".to_owned()),
        ("pt-BR/README.md", "not a template".to_owned()),
    ];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (dir, with_default) = load(&files, "de").expect("loads");
    assert_eq!(with_default.dir(), dir.path());
    let (_dir, top_default) = load(&files, "en").expect("loads");
    // (templates, customer's locale, the subject it gets)
    let rows = [
        (&with_default, "pt-BR", "pt-BR"),
        (&with_default, "pt-PT", "pt"),
        (&with_default, "fr", "de"),
        (&top_default, "fr", "top"),
    ];
    for (templates, tag, subject) in rows {
        let ctx = context(tag, "UTC");
        let got = templates.render_email("progress", &locale(tag), &ctx);
        assert_eq!(got.expect("renders").subject, subject, "{tag}");
    }
    let file = "progress.email.j2";
    let resolved = with_default.resolve(file, &locale("fr"));
    assert_eq!(resolved.as_deref(), Some("de/progress.email.j2"));
    assert!(with_default.has("only", crate::domain::Channel::Sms));
    assert!(!with_default.has("only", crate::domain::Channel::Email));
    // A template only a locale has is missing for other customers.
    let err = with_default.render_sms("only", &locale("fr"), &context("fr", "UTC"), 1);
    let err = err.expect_err("no such file for fr");
    assert_eq!(err.to_string(), "no `only` template for channel sms");
}

#[test]
fn a_template_mistake_at_send_time_names_the_template() {
    let html_fuel = "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}";
    let (_dir, t) = loaded(&[
        ("empty.email.j2", &email("  ")),
        ("typo.email.j2", &email("{{ case.subjet }}")),
        ("noblock.email.j2", "{% block subject %}Hi{% endblock %}"),
        ("html.email.j2", &email("Hi")),
        ("html.email.html.j2", "<p>{{ nope }}</p>"),
        ("costly.email.j2", &email("Costly")),
        ("costly.email.html.j2", html_fuel),
        ("typo.sms.j2", "{{ customer.nam }}"),
    ]);
    let ctx = context("en", "UTC");
    let en = locale("en");
    // (template, what goes wrong)
    let rows = [
        (
            "empty",
            "template empty.email.j2: the subject block rendered empty",
        ),
        ("typo", "template typo.email.j2: undefined value"),
        ("noblock", "template noblock.email.j2: "),
        ("html", "template html.email.html.j2: undefined value"),
        ("nope", "no `nope` template for channel email"),
    ];
    for (name, want) in rows {
        let err = t.render_email(name, &en, &ctx).expect_err("a mistake");
        assert!(err.to_string().starts_with(want), "{name}: {err}");
    }
    // An HTML part that runs out of fuel is left out; the text goes.
    let costly = t.render_email("costly", &en, &ctx).expect("text alone");
    assert_eq!((costly.subject.as_str(), costly.html), ("Costly", None));
    let err = t.render_sms("typo", &en, &ctx, 1).expect_err("a typo");
    assert!(matches!(err, RenderError::Template { ref name, .. } if name == "typo.sms.j2"));
    assert!(err.to_string().contains("undefined value"), "{err}");
}

#[test]
fn an_sms_is_tidied_and_cut_to_its_budget() {
    let long = format!("{{{{ case.subject }}}}: {}", "word ".repeat(200));
    let (_dir, t) = loaded(&[
        (
            "tidy.sms.j2",
            "  Hi {{ customer.first_name }}  \n\n\n\nBye  \n",
        ),
        ("long.sms.j2", &long),
    ]);
    let (ctx, en) = (context("en", "UTC"), locale("en"));
    let text = t.render_sms("tidy", &en, &ctx, 1).expect("renders");
    assert_eq!(text, "Hi Ana\n\nBye");
    // The template's own text runs over: the ticket's text is shortened
    // first (down to "..."), then the message is cut.
    for max in [1, 2, 3] {
        let text = t.render_sms("long", &en, &ctx, max).expect("renders");
        assert!(segments::count(&text).count <= max, "{max}: {text}");
        assert!(
            text.starts_with("...: word") && text.ends_with("..."),
            "{text}"
        );
    }
}

#[test]
fn text_helpers_trim_and_clip() {
    assert_eq!(sms_tidy("  a  \n\n\n b \n"), "a\n\n b");
    assert_eq!(sms_tidy("\n\n"), "");
    assert_eq!(tidy("\n\r\nbody\n\n"), "body\n");
    // (text, at most, clipped)
    let rows = [
        ("hello", 5, "hello"),
        ("hello world", 8, "hello..."),
        ("ab   cd", 6, "ab..."),
        ("żółw żółw", 7, "żółw..."),
        ("abc", 0, "..."),
    ];
    for (s, max, want) in rows {
        assert_eq!(clip(s, max), want, "{s} to {max}");
    }
    let bare = minijinja::Error::from(minijinja::ErrorKind::UndefinedError);
    assert_eq!(describe(&bare), "undefined value");
}

#[test]
fn template_mistakes_are_found_at_load_with_their_position() {
    let err = load(
        &[("ok.sms.j2", "fine"), ("bad.sms.j2", "Hi\n  {% if %}")],
        "en",
    );
    let err = err.map(|_| ()).expect_err("a syntax error").to_string();
    assert!(err.contains("bad.sms.j2:2:9: syntax error: "), "{err}");
    assert!(!err.contains("ok.sms.j2"), "{err}");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("x.sms.j2"), [0xff, 0xfe]).expect("write");
    let err = Templates::load(dir.path(), locale("en")).expect_err("not UTF-8");
    assert!(
        err.to_string().contains("x.sms.j2:1:1: cannot read:"),
        "{err}"
    );
    let missing = dir.path().join("missing");
    let err = Templates::load(&missing, locale("en")).expect_err("no folder");
    assert!(
        err.to_string().contains("cannot read templates folder:"),
        "{err}"
    );
}

#[test]
fn check_renders_every_template_against_a_sample() {
    let (dir, t) = loaded(&[
        ("good.email.j2", &email("{{ case.id }}")),
        ("good.sms.j2", "{{ case.id }}"),
        ("pl/typo.sms.j2", "Hi\n{{ case.idd }}"),
        ("noblock.email.j2", "{% block subject %}Hi{% endblock %}"),
    ]);
    let found: Vec<String> = t
        .check(&context("en", "UTC"))
        .iter()
        .map(|d| d.to_string())
        .collect();
    let at = |name: &str| dir.path().join(name).display().to_string();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with(&format!("{}:1:1: ", at("noblock.email.j2"))),
        "{found:?}"
    );
    assert!(
        found[1].starts_with(&format!("{}:2:", at("pl/typo.sms.j2"))),
        "{found:?}"
    );
    assert!(found[1].contains("undefined value"), "{found:?}");
}

#[test]
fn sms_templates_that_run_over_the_budget_are_warned_of() {
    let long = "{{ case.subject }} ".repeat(40);
    let (dir, t) = loaded(&[
        ("short.sms.j2", "{{ case.id }}"),
        ("long.sms.j2", &long),
        ("typo.sms.j2", "{{ nope }}"),
        ("long.email.j2", &email(&long)),
    ]);
    let warnings = t.sms_over_budget(&context("en", "UTC"), 1);
    let got: Vec<String> = warnings.iter().map(|d| d.to_string()).collect();
    let at = dir.path().join("long.sms.j2").display().to_string();
    let want = format!("{at}:1:1: warning: can take 2 SMS segments with long inputs (budget 1)");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with(&want), "{got:?}");
    assert!(t.sms_over_budget(&context("en", "UTC"), 2).is_empty());
}

#[test]
fn the_shipped_templates_pass_their_own_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let t = Templates::load(&dir, locale("en")).expect("shipped templates load");
    for (tag, tz) in [
        ("en", "America/New_York"),
        ("id", "Asia/Jakarta"),
        ("tl", "Asia/Manila"),
    ] {
        assert_eq!(t.check(&context(tag, tz)), [], "{tag}");
    }
}

const SID_EN: &str = "HXb5b62575e6e4ff6129ad7c8efe1f983e";
const SID_PL: &str = "HX0123456789abcdef0123456789abcdef";

fn approved(sid: &str) -> String {
    format!(
        "{{% block content_sid %}}\n{sid}\n{{% endblock %}}\
         {{% block var_1 %}}{{{{ case.id }}}}{{% endblock %}}\
         {{% block var_2 %}}{{{{ case.subject }}}}\n{{{{ next_update_at_short }}}}{{% endblock %}}"
    )
}

#[test]
fn a_whatsapp_template_names_its_approved_template_per_locale() {
    let pl = format!(
        "{}{{% block text %}}Sprawa {{{{ case.id }}}} w toku.{{% endblock %}}",
        approved(SID_PL)
    );
    let (_dir, tpl) = loaded(&[
        ("progress.sms.j2", "Case {{ case.id }} is open."),
        ("progress.whatsapp.j2", &approved(SID_EN)),
        ("pl/progress.whatsapp.j2", &pl),
        (
            "reminder.whatsapp.j2",
            "{% block text %}Waiting for your reply on {{ case.id }}.{% endblock %}",
        ),
    ]);
    let render = |template: &str, tag: &str| {
        tpl.render_whatsapp(template, &locale(tag), &context(tag, "UTC"))
            .expect("renders")
    };
    // English: no `text` block (the SMS text serves), an approved template.
    let en = render("progress", "en");
    assert_eq!(en.body, None);
    let t = en.template.expect("an approved template");
    assert_eq!(t.content_sid, SID_EN);
    assert_eq!(t.variables["1"], "CASE-7");
    // One line: WhatsApp refuses line breaks in a variable.
    assert_eq!(t.variables["2"], "Router Fri Nov 27, 2:00 PM UTC");
    assert_eq!(t.variables.len(), 2);
    let pl = render("progress", "pl");
    assert_eq!(pl.body.as_deref(), Some("Sprawa CASE-7 w toku."));
    assert_eq!(pl.template.expect("approved").content_sid, SID_PL);
    // A `text` block and no `content_sid`: no approved template.
    let reminder = render("reminder", "en");
    assert_eq!(
        (reminder.body.as_deref(), reminder.template),
        (Some("Waiting for your reply on CASE-7."), None)
    );
    // No `.whatsapp.j2` at all: nothing of its own.
    let note = render("note", "en");
    assert_eq!((note.body, note.template), (None, None));
}

#[test]
fn a_malformed_content_sid_is_reported_at_check_and_never_sent() {
    let (_dir, tpl) = loaded(&[
        ("progress.sms.j2", "Case {{ case.id }}."),
        ("progress.whatsapp.j2", &approved("HX-not-a-sid")),
    ]);
    let ctx = context("en", "UTC");
    let problems = tpl.check(&ctx);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .contains("progress.whatsapp.j2:1:1: content_sid")
    );
    let sent = tpl.render_whatsapp("progress", &locale("en"), &ctx);
    assert!(
        matches!(&sent, Err(RenderError::Template { message, .. }) if message.contains("content_sid")),
        "{sent:?}"
    );
}
