//! Atlassian Document Format (Jira Cloud comment bodies) to plain text.
//!
//! ADF, as <https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/>
//! describes it: a JSON tree of nodes, each an object with a `type`; block
//! nodes (`doc`, `paragraph`, `heading`, `bulletList`, `orderedList`,
//! `listItem`, `codeBlock`, `blockquote`, `panel`, `table`, ...) hold a
//! `content` array of nodes; inline nodes are `text` (with `text` and
//! optional `marks`, a `link` mark carrying `attrs.href`), `hardBreak`,
//! `mention` (`attrs.text`, "the textual representation of the mention,
//! including a leading @"), `emoji` (`attrs.shortName`, optional
//! `attrs.text`), `status` (`attrs.text`) and `inlineCard` (`attrs.url`).
//! Traversing it in order and concatenating yields the content in order.

use serde_json::Value;

use super::text::Emitter;

/// Deeper nodes than this are skipped: a bound on recursion for values not
/// built by serde_json's parser (which stops at 128 levels itself).
const MAX_DEPTH: usize = 100;

/// A Jira comment body in Atlassian Document Format as plain text. Accepts
/// any JSON value and never panics: a `doc` node (or any node, or an array
/// of nodes) is walked in order. `paragraph`, `heading`, `blockquote`,
/// `codeBlock` (its spacing kept), `panel`, `table` and other blocks end
/// with a blank line; table rows, their cells separated by a space, with a
/// line break; `listItem`s and task or decision items start a line with
/// `- ` (`1. ` in an `orderedList`, counting from its `attrs.order`),
/// indented two spaces a level of nesting. `hardBreak` is a line break,
/// `mention` reads as its `attrs.text`, `emoji` as its `attrs.text` or
/// `attrs.shortName`, `status` as its `attrs.text`, cards as their URL, and
/// link text is followed by its `href` in parentheses when the two differ.
/// Unknown nodes contribute their `content`, if any; nodes nested deeper
/// than 100 levels are skipped. A JSON string (a Jira REST v2 body, which
/// is wiki markup) is taken as text with its line breaks; other values give
/// "". Whitespace is collapsed as in `html_to_text`.
pub fn adf_to_text(doc: &Value) -> String {
    let mut out = Emitter::default();
    match doc {
        Value::String(s) => {
            for (n, line) in s.lines().enumerate() {
                if n > 0 {
                    out.hard_break();
                }
                out.text(line);
            }
        }
        _ => node(doc, 0, &mut out),
    }
    out.finish()
}

fn node(v: &Value, depth: usize, out: &mut Emitter) {
    if depth > MAX_DEPTH {
        return;
    }
    let obj = match v {
        Value::Array(nodes) => {
            for n in nodes {
                node(n, depth + 1, out);
            }
            return;
        }
        Value::Object(obj) => obj,
        _ => return,
    };
    let attr = |name: &str| -> Option<&str> {
        obj.get("attrs")
            .and_then(|a| a.get(name))
            .and_then(Value::as_str)
    };
    let children = |out: &mut Emitter| {
        if let Some(content) = obj.get("content") {
            node(content, depth + 1, out);
        }
    };
    match obj.get("type").and_then(Value::as_str).unwrap_or_default() {
        "text" => {
            let text = obj.get("text").and_then(Value::as_str).unwrap_or_default();
            out.text(text);
            if let Some(href) = link(obj.get("marks"))
                && !href.trim().is_empty()
                && href.trim() != text.trim()
            {
                out.space();
                out.ch('(');
                out.text(href);
                out.ch(')');
            }
        }
        "hardBreak" => out.hard_break(),
        "mention" | "status" => out.text(attr("text").unwrap_or_default()),
        "emoji" => out.text(
            attr("text")
                .or_else(|| attr("shortName"))
                .unwrap_or_default(),
        ),
        "inlineCard" => out.text(attr("url").unwrap_or_default()),
        "blockCard" | "embedCard" => {
            out.block(true);
            out.text(attr("url").unwrap_or_default());
            out.block(true);
        }
        "bulletList" | "taskList" | "decisionList" => {
            out.open_list(false, 1);
            children(out);
            out.close_list();
        }
        "orderedList" => {
            let start = obj
                .get("attrs")
                .and_then(|a| a.get("order"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            out.open_list(true, start);
            children(out);
            out.close_list();
        }
        "listItem" | "taskItem" | "decisionItem" => {
            out.item();
            children(out);
            out.end_item();
        }
        "codeBlock" => {
            out.block(true);
            out.preformatted(true);
            children(out);
            out.preformatted(false);
            out.block(true);
        }
        "expand" | "nestedExpand" => {
            out.block(true);
            out.text(attr("title").unwrap_or_default());
            out.block(false);
            children(out);
            out.block(true);
        }
        "tableRow" => {
            out.block(false);
            children(out);
            out.block(false);
        }
        "tableCell" | "tableHeader" => {
            out.cell(true);
            children(out);
            out.cell(false);
        }
        "paragraph" | "heading" | "blockquote" | "panel" | "rule" | "table" | "mediaSingle"
        | "mediaGroup" | "layoutSection" | "layoutColumn" => {
            out.block(true);
            children(out);
            out.block(true);
        }
        _ => children(out),
    }
}

/// The `href` of a `link` mark among a text node's marks.
fn link(marks: Option<&Value>) -> Option<&str> {
    marks?
        .as_array()?
        .iter()
        .find(|m| m.get("type").and_then(Value::as_str) == Some("link"))?
        .get("attrs")?
        .get("href")?
        .as_str()
}
