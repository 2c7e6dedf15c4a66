//! WhatsApp messages from the template set.
//!
//! `{template}.whatsapp.j2` (under a locale folder like every template)
//! may define three kinds of block:
//! - `text`: the free-form body, sent inside WhatsApp's 24-hour
//!   customer-service window. Without it the SMS template's text is used.
//! - `content_sid`: the approved template (Twilio Content API, `HX` and 32
//!   hex digits) sent outside the window, in the customer's language.
//! - `var_1`, `var_2`, …: the values of the approved template's numbered
//!   variables (`ContentVariables`), rendered from the case like any
//!   template text.
//!
//! Without a `content_sid` block (or without the file) the message has no
//! approved template, and outside the window the update goes on the
//! customer's next channel.

use std::collections::BTreeMap;

use minijinja::value::Serde;

use super::{MessageContext, RenderError, Templates, describe, one_line};
use crate::domain::{ApprovedTemplate, Locale};

/// The longest variable value sent: WhatsApp caps a template with its
/// values at 1,024 characters.
pub const MAX_VARIABLE_CHARS: usize = 200;

/// Variables looked for: `var_1` to `var_20`.
const MAX_VARIABLES: usize = 20;

/// What `{template}.whatsapp.j2` says for one message.
#[derive(Debug, Default)]
pub struct WhatsAppParts {
    /// The `text` block, when the file has one.
    pub body: Option<String>,
    /// The `content_sid` block and its variables, when the file has one.
    pub template: Option<ApprovedTemplate>,
}

/// Whether `sid` is a Content API template SID: `HX` and 32 hex digits.
pub fn is_content_sid(sid: &str) -> bool {
    crate::domain::is_twilio_sid(sid, "HX")
}

impl Templates {
    /// Renders the blocks of `{template}.whatsapp.j2` in `locale`; empty
    /// parts when there is no such file.
    pub fn render_whatsapp(
        &self,
        template: &str,
        locale: &Locale,
        ctx: &MessageContext,
    ) -> Result<WhatsAppParts, RenderError> {
        let file = format!("{template}.whatsapp.j2");
        let Some(name) = self.resolve(&file, locale) else {
            return Ok(WhatsAppParts::default());
        };
        let err = |e: minijinja::Error| RenderError::Template {
            name: name.clone(),
            message: describe(&e),
        };
        let tmpl = self.env.get_template(&name).map_err(err)?;
        let parts = whatsapp_blocks(&tmpl, ctx).map_err(err)?;
        if let Some(t) = &parts.template
            && !is_content_sid(&t.content_sid)
        {
            return Err(RenderError::Template {
                name,
                message: "the content_sid block must be HX followed by 32 hexadecimal digits"
                    .into(),
            });
        }
        Ok(parts)
    }
}

/// The blocks of a WhatsApp template, rendered; a block the template does
/// not define is left out.
pub(super) fn whatsapp_blocks(
    tmpl: &minijinja::Template<'_, '_>,
    ctx: &MessageContext,
) -> Result<WhatsAppParts, minijinja::Error> {
    let mut captured = tmpl.render_captured(Serde(ctx))?;
    captured.with_state_mut(|state| {
        let mut block = |name: &str| match state.render_block(name) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == minijinja::ErrorKind::UnknownBlock => Ok(None),
            Err(e) => Err(e),
        };
        let body = block("text")?.map(|t| super::sms_tidy(&t));
        let sid = block("content_sid")?
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let mut variables = BTreeMap::new();
        for n in 1..=MAX_VARIABLES {
            if let Some(v) = block(&format!("var_{n}"))? {
                variables.insert(n.to_string(), variable(&v));
            }
        }
        Ok(WhatsAppParts {
            body,
            template: sid.map(|content_sid| ApprovedTemplate {
                content_sid,
                variables,
            }),
        })
    })
}

/// A variable's value as WhatsApp takes it: one line (no line breaks, tabs
/// or runs of spaces), never empty, at most `MAX_VARIABLE_CHARS`.
fn variable(raw: &str) -> String {
    let line = one_line(raw);
    if line.is_empty() {
        return "-".to_owned();
    }
    match line.char_indices().nth(MAX_VARIABLE_CHARS - 1) {
        Some((cut, _)) => format!("{}…", line[..cut].trim_end()),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sids() {
        assert!(is_content_sid("HXb5b62575e6e4ff6129ad7c8efe1f983e"));
        assert!(!is_content_sid("HXb5b62575e6e4ff6129ad7c8efe1f983"));
        assert!(!is_content_sid("MGb5b62575e6e4ff6129ad7c8efe1f983e"));
        assert!(!is_content_sid("HXb5b62575e6e4ff6129ad7c8efe1f98zz"));
    }

    #[test]
    fn variables_are_one_short_line_and_never_empty() {
        assert_eq!(variable("  a\n\tb   c "), "a b c");
        assert_eq!(variable(" \n "), "-");
        let long = variable(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_VARIABLE_CHARS);
        assert!(long.ends_with('…'));
    }
}
