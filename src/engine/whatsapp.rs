//! WhatsApp's 24-hour customer-service window, decided.
//!
//! A business may write free-form WhatsApp messages to a customer only
//! within 24 hours of the customer's last message to it; outside that
//! window only a template Meta approved may go (Twilio: `ContentSid` and
//! `ContentVariables`, no `Body`). A WhatsApp message is rendered both
//! ways when it is planned; which one goes is decided here, at send time,
//! from when the customer last wrote to us on WhatsApp. Without an
//! approved template outside the window the message does not go, and the
//! update falls back to the customer's next channel.

use chrono::{DateTime, Duration, Utc};

use crate::domain::{Locale, WhatsAppText};
use crate::engine::render::{MessageContext, RenderError, Templates};

/// The longest free-form body Twilio's Messages API takes.
pub const MAX_BODY_CHARS: usize = 1600;

/// SMS segments a free-form body made from the SMS template may take
/// (about 1,530 characters: within `MAX_BODY_CHARS`).
const BODY_SEGMENTS: usize = 10;

/// WhatsApp's customer-service window: 24 hours from the customer's last
/// message.
pub fn window() -> Duration {
    Duration::hours(24)
}

/// Whether the window is open at `now`, the customer having last written
/// at `last_inbound` (never: closed). It closes exactly 24 hours after.
pub fn window_open(last_inbound: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_inbound.is_some_and(|at| now < at + window())
}

/// What goes out for a WhatsApp message at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Inside the window: the free-form body, alone.
    FreeForm(WhatsAppText),
    /// Outside it: the approved template, alone (no body).
    Template(WhatsAppText),
    /// Outside it with no approved template: nothing may go; the update
    /// takes the next channel.
    NoTemplate,
}

/// Why a message without an approved template did not go.
pub const NO_TEMPLATE: &str =
    "outside WhatsApp's 24-hour window and no approved template (content_sid) for this message";

/// Decides what a WhatsApp message sends at `now`.
pub fn decide(
    text: &WhatsAppText,
    last_inbound: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Decision {
    if window_open(last_inbound, now) {
        return Decision::FreeForm(WhatsAppText {
            body: text.body.clone(),
            template: None,
        });
    }
    match &text.template {
        Some(t) => Decision::Template(WhatsAppText {
            body: String::new(),
            template: Some(t.clone()),
        }),
        None => Decision::NoTemplate,
    }
}

/// Renders a WhatsApp message in the customer's language: the free-form
/// body (the `text` block of `{template}.whatsapp.j2`, else the SMS
/// template's text) and the approved template, when one is named.
pub fn render(
    templates: &Templates,
    template: &str,
    locale: &Locale,
    ctx: &MessageContext,
) -> Result<WhatsAppText, RenderError> {
    let parts = templates.render_whatsapp(template, locale, ctx)?;
    let body = match parts.body {
        Some(b) if !b.is_empty() => b,
        _ => crate::engine::page::render_sms_with_link(
            templates,
            template,
            locale,
            ctx,
            BODY_SEGMENTS,
        )
        .map_err(|e| match e {
            RenderError::Missing { template, .. } => RenderError::Missing {
                template,
                channel: "whatsapp",
            },
            e => e,
        })?,
    };
    Ok(WhatsAppText {
        body: clip(&body, MAX_BODY_CHARS),
        template: parts.template,
    })
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ApprovedTemplate;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("instant")
    }

    fn text(template: bool) -> WhatsAppText {
        WhatsAppText {
            body: "Your case CASE-1: next update by 5 PM.".into(),
            template: template.then(|| ApprovedTemplate {
                content_sid: "HXb5b62575e6e4ff6129ad7c8efe1f983e".into(),
                variables: [("1".to_owned(), "CASE-1".to_owned())].into(),
            }),
        }
    }

    #[test]
    fn the_window_is_open_for_24_hours_after_the_customer_wrote() {
        let wrote = at("2026-03-01T10:00:00Z");
        assert!(!window_open(None, wrote));
        assert!(window_open(Some(wrote), wrote));
        assert!(window_open(Some(wrote), at("2026-03-02T09:59:59Z")));
        // Closed at the boundary itself, and after.
        assert!(!window_open(Some(wrote), at("2026-03-02T10:00:00Z")));
        assert!(!window_open(Some(wrote), at("2026-03-05T10:00:00Z")));
    }

    #[test]
    fn inside_the_window_the_free_form_body_goes_alone() {
        let wrote = at("2026-03-01T10:00:00Z");
        let now = at("2026-03-02T09:59:59Z");
        for with_template in [true, false] {
            let Decision::FreeForm(out) = decide(&text(with_template), Some(wrote), now) else {
                panic!("free-form inside the window");
            };
            assert_eq!(out.body, text(true).body);
            assert_eq!(out.template, None);
        }
    }

    #[test]
    fn outside_the_window_only_the_approved_template_goes() {
        let wrote = at("2026-03-01T10:00:00Z");
        for (last, now) in [(Some(wrote), at("2026-03-02T10:00:00Z")), (None, wrote)] {
            let Decision::Template(out) = decide(&text(true), last, now) else {
                panic!("the approved template outside the window");
            };
            assert!(out.body.is_empty());
            assert_eq!(out.template, text(true).template);
        }
    }

    #[test]
    fn outside_the_window_without_a_template_nothing_goes() {
        let wrote = at("2026-03-01T10:00:00Z");
        assert_eq!(
            decide(&text(false), Some(wrote), at("2026-03-02T10:00:00Z")),
            Decision::NoTemplate
        );
        assert_eq!(decide(&text(false), None, wrote), Decision::NoTemplate);
        // One second earlier the body still goes.
        assert!(matches!(
            decide(&text(false), Some(wrote), at("2026-03-02T09:59:59Z")),
            Decision::FreeForm(_)
        ));
    }

    /// The shipped templates, and `progress.whatsapp.j2` with an approved
    /// template but no `text` block.
    fn templates() -> (tempfile::TempDir, Templates) {
        let dir = tempfile::tempdir().expect("dir");
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        for entry in std::fs::read_dir(shipped).expect("templates") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let name = path.file_name().expect("name");
                std::fs::copy(&path, dir.path().join(name)).expect("copy");
            }
        }
        std::fs::write(
            dir.path().join("progress.whatsapp.j2"),
            "{% block content_sid %}HXb5b62575e6e4ff6129ad7c8efe1f983e{% endblock %}\
             {% block var_1 %}{{ case.id }}{% endblock %}",
        )
        .expect("write");
        let t = Templates::load(dir.path(), "en".parse().expect("locale")).expect("load");
        (dir, t)
    }

    fn context() -> MessageContext {
        let case: crate::domain::Case = serde_json::from_value(serde_json::json!({
            "id": "CASE-9", "source": "desk", "subject": "Router", "status": "open",
            "priority": "normal", "assignee": null, "eta": null, "tags": [], "fields": {},
            "latest_note": null, "created_at": "2026-03-01T10:00:00Z",
            "customer": { "name": "Ana Santos", "email": null, "phone": "+12125550143",
                "timezone": "UTC", "locale": "en", "channels": ["whatsapp"] },
        }))
        .expect("a valid case");
        let company = crate::domain::Company {
            name: "Acme".into(),
            support_url: None,
        };
        let now = at("2026-03-01T10:00:00Z");
        MessageContext::new(&case, Some(now + window()), now, &company, String::new())
    }

    #[test]
    fn the_free_form_body_is_the_sms_text_unless_the_template_has_its_own() {
        let (_dir, t) = templates();
        let en = "en".parse().expect("locale");
        let progress = render(&t, "progress", &en, &context()).expect("renders");
        let sms = t
            .render_sms("progress", &en, &context(), BODY_SEGMENTS)
            .expect("the SMS text");
        assert_eq!(progress.body, sms);
        assert!(
            progress.body.starts_with("Acme: Hi Ana,") && progress.body.contains("CASE-9"),
            "{}",
            progress.body
        );
        let approved = progress.template.expect("approved");
        assert_eq!(approved.variables["1"], "CASE-9");
        let reminder = render(&t, "reminder", &en, &context()).expect("renders");
        assert!(reminder.body.contains("CASE-9"), "{}", reminder.body);
        assert_eq!(reminder.template, None);
        // Neither an SMS nor a WhatsApp template: nothing to send.
        let missing = render(&t, "stale-case", &en, &context());
        assert!(
            matches!(
                missing,
                Err(RenderError::Missing {
                    channel: "whatsapp",
                    ..
                })
            ),
            "{missing:?}"
        );
    }

    #[test]
    fn long_bodies_are_clipped_to_what_twilio_takes() {
        assert_eq!(
            clip(&"é".repeat(2000), MAX_BODY_CHARS).chars().count(),
            1600
        );
        assert_eq!(clip("short", MAX_BODY_CHARS), "short");
    }
}
