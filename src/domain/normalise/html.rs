//! HTML to plain text by a small hand-written tokenizer, after the shape of
//! the WHATWG tokenizer's states (data, tag open, tag name, attributes,
//! comments, raw text) without building a tree. Linear in the input; every
//! index it slices at is a character boundary, since it only ever stops at
//! ASCII bytes or steps over whole characters.

use super::entities::ENTITIES;
use super::text::Emitter;

/// Elements whose content is not text: dropped with it.
const RAW: &[&str] = &["script", "style", "title", "template", "noscript"];

/// Blocks that end a paragraph: a blank line before and after.
const PARAGRAPHS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "hr",
    "address",
    "figure",
    "dl",
];

/// Blocks that only start a new line.
const LINES: &[&str] = &[
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "nav",
    "aside",
    "tr",
    "dt",
    "dd",
    "center",
    "form",
    "fieldset",
    "details",
    "summary",
    "caption",
    "figcaption",
    "body",
];

/// Entity names a browser also takes without the `;`, as sloppy HTML
/// writes them (`AT&amp T`).
const WITHOUT_SEMICOLON: &[&str] = &["amp", "lt", "gt", "quot", "nbsp"];

/// Longest entity name looked up; longer runs of letters are text.
const MAX_ENTITY_NAME: usize = 32;

/// What `&#128;` to `&#159;` mean in practice: Windows-1252, as the WHATWG
/// numeric character reference table maps them (a zero is kept as is).
const WINDOWS_1252: [u16; 32] = [
    0x20ac, 0, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039,
    0x0152, 0, 0x017d, 0, 0, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc,
    0x2122, 0x0161, 0x203a, 0x0153, 0, 0x017e, 0x0178,
];

/// A help-desk comment body in HTML as plain text. Accepts any string,
/// well-formed or not, and never panics: tags, comments and the content of
/// `script`, `style`, `title`, `template` and `noscript` are dropped;
/// paragraphs, headings, block quotes, `pre` and tables end with a blank
/// line; `div`, `br`, table rows and other blocks with a line break; list
/// items start a line with `- ` (`1. `, `2. ` in an `ol`), indented two
/// spaces a level of nesting; `td`/`th` are separated by a space. Named
/// (HTML 4 and `&apos;`) and numeric character references are decoded;
/// whitespace (`&nbsp;` included) collapses to one space outside `pre`;
/// there is no leading or trailing whitespace and never more than one empty
/// line. The result holds no markup: a `<` is never followed by a letter,
/// `/`, `!` or `?` (decoded `&lt;b&gt;` reads `< b>`).
pub fn html_to_text(html: &str) -> String {
    let bytes = html.as_bytes();
    let mut out = Emitter::default();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => i = markup(html, i, &mut out),
            b'&' => i = reference(html, i, &mut out),
            _ => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'<' | b'&'))
                    .map_or(bytes.len(), |n| i + n);
                out.text(&html[i..end]);
                i = end;
            }
        }
    }
    out.finish()
}

/// At a `<`: a tag, end tag, comment or declaration is consumed and acted
/// on; anything else is a literal `<`. Returns where the text goes on.
fn markup(html: &str, at: usize, out: &mut Emitter) -> usize {
    let bytes = html.as_bytes();
    match bytes.get(at + 1) {
        Some(b) if b.is_ascii_alphabetic() => {
            let (name, end) = tag(html, at + 1);
            start_tag(&name, out);
            if RAW.contains(&name.as_str()) {
                skip_raw(html, end, &name)
            } else {
                end
            }
        }
        Some(b'/') => match bytes.get(at + 2) {
            Some(b) if b.is_ascii_alphabetic() => {
                let (name, end) = tag(html, at + 2);
                end_tag(&name, out);
                end
            }
            // `</>` is nothing; `</ 3` and the like are a bogus comment.
            Some(b'>') => at + 3,
            _ => past(html, at + 2, ">"),
        },
        Some(b'!') => {
            if html[at..].starts_with("<!--") {
                let body = at + 4;
                if html[body..].starts_with('>') {
                    body + 1
                } else if html[body..].starts_with("->") {
                    body + 2
                } else {
                    past(html, body, "-->")
                }
            } else {
                past(html, at + 2, ">")
            }
        }
        Some(b'?') => past(html, at + 2, ">"),
        _ => {
            out.ch('<');
            at + 1
        }
    }
}

/// A tag from its name (at `from`) to past its `>`: the name in lower case,
/// and where the text goes on. Attribute values may hold `>` when quoted;
/// a tag the input ends inside is dropped with the rest of the input.
fn tag(html: &str, from: usize) -> (String, usize) {
    let bytes = html.as_bytes();
    let mut i = from;
    while i < bytes.len()
        && !matches!(
            bytes[i],
            b'>' | b'/' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' '
        )
    {
        i += 1;
    }
    // The name ends at an ASCII byte or the end: a character boundary.
    let name = html[from..i].to_ascii_lowercase();
    let mut after_equals = false;
    while i < bytes.len() {
        match bytes[i] {
            b'>' => return (name, i + 1),
            b'=' => after_equals = true,
            b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' => {}
            quote @ (b'"' | b'\'') if after_equals => {
                i = match bytes[i + 1..].iter().position(|&b| b == quote) {
                    Some(n) => i + 1 + n,
                    None => bytes.len(),
                };
                after_equals = false;
            }
            _ => after_equals = false,
        }
        i += 1;
    }
    (name, bytes.len())
}

/// Past the end of a raw-text element's content (`</script>` in any case,
/// however it closes), or the end of the input if it never closes.
fn skip_raw(html: &str, from: usize, name: &str) -> usize {
    let bytes = html.as_bytes();
    let mut i = from;
    while let Some(n) = bytes[i..].windows(2).position(|w| w == b"</") {
        let name_at = i + n + 2;
        let name_end = name_at + name.len();
        let closes = bytes
            .get(name_at..name_end)
            .is_some_and(|s| s.eq_ignore_ascii_case(name.as_bytes()))
            && bytes
                .get(name_end)
                .is_none_or(|b| matches!(b, b'>' | b'/' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' '));
        if closes {
            return tag(html, name_at).1;
        }
        i = name_at;
    }
    bytes.len()
}

/// Past the first `end` at or after `from`, or the end of the input.
fn past(html: &str, from: usize, end: &str) -> usize {
    html.get(from..)
        .and_then(|rest| rest.find(end))
        .map_or(html.len(), |n| from + n + end.len())
}

fn start_tag(name: &str, out: &mut Emitter) {
    match name {
        "br" => out.hard_break(),
        "li" => out.item(),
        "ul" | "menu" | "dir" => out.open_list(false, 1),
        "ol" => out.open_list(true, 1),
        "td" | "th" => out.space(),
        "pre" => {
            out.block(true);
            out.preformatted(true);
        }
        n if PARAGRAPHS.contains(&n) => out.block(true),
        n if LINES.contains(&n) => out.block(false),
        _ => {}
    }
}

fn end_tag(name: &str, out: &mut Emitter) {
    match name {
        // Browsers read `</br>` as `<br>`.
        "br" => out.hard_break(),
        "li" => out.end_item(),
        "ul" | "ol" | "menu" | "dir" => out.close_list(),
        "td" | "th" => out.space(),
        "pre" => {
            out.preformatted(false);
            out.block(true);
        }
        n if PARAGRAPHS.contains(&n) => out.block(true),
        n if LINES.contains(&n) => out.block(false),
        _ => {}
    }
}

/// At a `&`: a character reference is decoded; anything else is a literal
/// `&`. Returns where the text goes on.
fn reference(html: &str, at: usize, out: &mut Emitter) -> usize {
    let bytes = html.as_bytes();
    if bytes.get(at + 1) == Some(&b'#') {
        if let Some((c, end)) = numeric(bytes, at + 2) {
            out.ch(c);
            return end;
        }
    } else {
        let from = at + 1;
        let len = bytes[from..]
            .iter()
            .take(MAX_ENTITY_NAME + 1)
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if (1..=MAX_ENTITY_NAME).contains(&len) {
            let name = &html[from..from + len];
            let semicolon = bytes.get(from + len) == Some(&b';');
            if (semicolon || WITHOUT_SEMICOLON.contains(&name))
                && let Ok(k) = ENTITIES.binary_search_by(|(n, _)| n.cmp(&name))
            {
                out.ch(ENTITIES[k].1);
                return from + len + usize::from(semicolon);
            }
        }
    }
    out.ch('&');
    at + 1
}

/// A numeric character reference after its `&#`: decimal digits, or `x`
/// and hex digits, and an optional `;`. Zero, surrogates and values past
/// U+10FFFF read as U+FFFD; 128–159 as Windows-1252.
fn numeric(bytes: &[u8], from: usize) -> Option<(char, usize)> {
    let (radix, digits_at) = match bytes.get(from) {
        Some(b'x' | b'X') => (16, from + 1),
        _ => (10, from),
    };
    let mut value: u32 = 0;
    let mut i = digits_at;
    while let Some(d) = bytes.get(i).and_then(|&b| char::from(b).to_digit(radix)) {
        value = value.saturating_mul(radix).saturating_add(d);
        i += 1;
    }
    if i == digits_at {
        return None;
    }
    if bytes.get(i) == Some(&b';') {
        i += 1;
    }
    let value = match value {
        0x80..=0x9f => match WINDOWS_1252[(value - 0x80) as usize] {
            0 => value,
            mapped => u32::from(mapped),
        },
        v => v,
    };
    let c = match value {
        0 => '\u{fffd}',
        v => char::from_u32(v).unwrap_or('\u{fffd}'),
    };
    Some((c, i))
}
