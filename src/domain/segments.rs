//! SMS segment counting, the way carriers (and Twilio) bill it.
//!
//! A message whose every character is in the GSM 03.38 default alphabet is
//! sent as GSM-7: 160 septets in one segment, 153 per part once it needs
//! more. Extension-table characters (`^ { } \ [ ~ ] | €`, form feed) take
//! two septets, an escape and the character. One character outside both
//! tables switches the whole message to UCS-2: 70 UTF-16 code units in one
//! segment, 67 per part. A part never splits an escape pair or a surrogate
//! pair, so parts are counted by packing characters greedily, not by
//! dividing. This module counts and cuts text; it knows nothing of
//! templates, channels or transports.

/// How a message travels over the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 default alphabet, 7 bits a character.
    Gsm7,
    /// UTF-16, for any text with a character outside the GSM alphabet.
    Ucs2,
}

/// What a text costs as an SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// The encoding the whole message needs.
    pub encoding: Encoding,
    /// Septets for GSM-7 (extension-table characters count 2), UTF-16
    /// code units for UCS-2.
    pub units: usize,
    /// Segments billed; 1 for an empty text.
    pub count: usize,
}

impl Encoding {
    /// Units that fit in a message sent as one segment.
    fn single(self) -> usize {
        match self {
            Self::Gsm7 => 160,
            Self::Ucs2 => 70,
        }
    }

    /// Units that fit in each part of a multipart message (the rest of the
    /// 140 octets carries the concatenation header).
    fn part(self) -> usize {
        match self {
            Self::Gsm7 => 153,
            Self::Ucs2 => 67,
        }
    }

    /// Units `c` takes in this encoding. Only meaningful for GSM-7 when
    /// `c` is in the GSM alphabet.
    fn width(self, c: char) -> usize {
        match self {
            Self::Gsm7 => gsm7_septets(c).unwrap_or(2),
            Self::Ucs2 => c.len_utf16(),
        }
    }

    /// The mark that ends a shortened message.
    fn ellipsis(self) -> &'static str {
        match self {
            Self::Gsm7 => "...",
            Self::Ucs2 => "…",
        }
    }
}

/// The GSM 03.38 basic table, in code-point order (0x1B, the escape, left
/// out).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// Characters reached through the escape to the extension table.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets `c` takes in GSM-7, or `None` when GSM-7 cannot carry it.
fn gsm7_septets(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

fn encoding_of(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_septets(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// Segments for a sequence of character widths: one when the total fits a
/// single segment, otherwise parts filled greedily so that no character is
/// split across two parts.
fn pack(encoding: Encoding, widths: impl Iterator<Item = usize> + Clone) -> (usize, usize) {
    let units: usize = widths.clone().sum();
    if units <= encoding.single() {
        return (units, 1);
    }
    let capacity = encoding.part();
    let mut count = 1;
    let mut used = 0;
    for w in widths {
        if used + w > capacity {
            count += 1;
            used = 0;
        }
        used += w;
    }
    (units, count)
}

/// What `text` costs as an SMS: its encoding, its length in that encoding's
/// units and the number of segments billed.
pub fn count(text: &str) -> Segments {
    let encoding = encoding_of(text);
    let (units, count) = pack(encoding, text.chars().map(move |c| encoding.width(c)));
    Segments {
        encoding,
        units,
        count,
    }
}

/// Segments `prefix` followed by `suffix` would take when sent as
/// `encoding`.
fn count_with(encoding: Encoding, prefix: &str, suffix: &str) -> usize {
    pack(
        encoding,
        prefix
            .chars()
            .chain(suffix.chars())
            .map(move |c| encoding.width(c)),
    )
    .1
}

/// How many characters from the end of a cut are searched for a word
/// boundary.
const WORD_BOUNDARY_WINDOW: usize = 20;

/// `text` unchanged when it fits in `max_segments`; otherwise the longest
/// prefix that fits together with an ellipsis: "..." when the result is
/// GSM-7, "…" when it is UCS-2. A prefix that stops before the text's
/// first non-GSM character may stay GSM-7 and so keep more characters;
/// whichever keeps more wins. The cut then steps back to the last
/// whitespace among the final characters, when there is one, so that words
/// stay whole. A budget of 0 is read as 1: every message takes at least
/// one segment.
pub fn truncate(text: &str, max_segments: usize) -> String {
    let max_segments = max_segments.max(1);
    let whole = count(text);
    if whole.count <= max_segments {
        return text.to_owned();
    }

    // Byte offsets of every char boundary, so cuts never split a char.
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let mut best = (
        longest_fit(text, &boundaries, whole.encoding, max_segments),
        whole.encoding,
    );
    if whole.encoding == Encoding::Ucs2 {
        let gsm_chars = text
            .chars()
            .take_while(|c| gsm7_septets(*c).is_some())
            .count();
        let gsm = longest_fit(
            text,
            &boundaries[..=gsm_chars],
            Encoding::Gsm7,
            max_segments,
        );
        if gsm >= best.0 {
            best = (gsm, Encoding::Gsm7);
        }
    }
    let (kept, encoding) = best;
    let mut cut = boundaries[kept];

    // Step back to a word boundary when one is close, unless the cut
    // already falls just before whitespace.
    let next_is_space = text[cut..].chars().next().is_some_and(char::is_whitespace);
    if !next_is_space {
        let window_start = boundaries[kept.saturating_sub(WORD_BOUNDARY_WINDOW)];
        if let Some((i, _)) = text[window_start..cut]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
        {
            let at = window_start + i;
            if !text[..at].trim_end().is_empty() {
                cut = at;
            }
        }
    }
    let mut out = text[..cut].trim_end().to_owned();
    out.push_str(encoding.ellipsis());
    out
}

/// How many characters of `text` (at most `boundaries.len() - 1`) fit in
/// `max_segments` followed by the ellipsis of `encoding`. The cost of a
/// prefix grows with its length, so the answer is found by bisection.
fn longest_fit(text: &str, boundaries: &[usize], encoding: Encoding, max_segments: usize) -> usize {
    let ellipsis = encoding.ellipsis();
    let (mut lo, mut hi) = (0, boundaries.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if count_with(encoding, &text[..boundaries[mid]], ellipsis) <= max_segments {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segments(text: &str) -> (Encoding, usize, usize) {
        let s = count(text);
        (s.encoding, s.units, s.count)
    }

    #[test]
    fn empty_text_is_one_segment() {
        assert_eq!(segments(""), (Encoding::Gsm7, 0, 1));
    }

    #[test]
    fn gsm7_single_and_multipart_limits() {
        assert_eq!(segments(&"a".repeat(160)), (Encoding::Gsm7, 160, 1));
        assert_eq!(segments(&"a".repeat(161)), (Encoding::Gsm7, 161, 2));
        assert_eq!(segments(&"a".repeat(306)), (Encoding::Gsm7, 306, 2));
        assert_eq!(segments(&"a".repeat(307)), (Encoding::Gsm7, 307, 3));
    }

    #[test]
    fn whole_basic_table_is_gsm7() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        let s = count(GSM7_BASIC);
        assert_eq!((s.encoding, s.units), (Encoding::Gsm7, 127));
        let s = count(GSM7_EXTENSION);
        assert_eq!((s.encoding, s.units), (Encoding::Gsm7, 20));
    }

    #[test]
    fn extension_characters_take_two_septets() {
        assert_eq!(segments(&"€".repeat(80)), (Encoding::Gsm7, 160, 1));
        // 162 septets: 76 euro signs (152 septets) fill the first part, as
        // a 77th would need septets 153 and 154; the other 5 go to part 2.
        assert_eq!(segments(&"€".repeat(81)), (Encoding::Gsm7, 162, 2));
        assert_eq!(segments("{x}"), (Encoding::Gsm7, 5, 1));
    }

    #[test]
    fn escape_pair_is_never_split_across_parts() {
        // Part 1: 152 'a' (the euro sign would straddle septets 153/154),
        // part 2: '€' + 151 'a' = 153 septets, part 3: the last 'a'.
        // Dividing 306 septets by 153 would say 2.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(segments(&text), (Encoding::Gsm7, 306, 3));
        // With the euro sign one place earlier, it ends part 1 exactly.
        let text = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(segments(&text), (Encoding::Gsm7, 306, 2));
    }

    #[test]
    fn ucs2_single_and_multipart_limits() {
        assert_eq!(segments(&"ł".repeat(70)), (Encoding::Ucs2, 70, 1));
        assert_eq!(segments(&"ł".repeat(71)), (Encoding::Ucs2, 71, 2));
        assert_eq!(segments(&"ł".repeat(134)), (Encoding::Ucs2, 134, 2));
        assert_eq!(segments(&"ł".repeat(135)), (Encoding::Ucs2, 135, 3));
    }

    #[test]
    fn one_character_outside_the_alphabet_makes_the_whole_text_ucs2() {
        assert_eq!(segments("See you soon 😀"), (Encoding::Ucs2, 15, 1));
        assert_eq!(segments("ç"), (Encoding::Ucs2, 1, 1));
        // 80 euro signs fit one GSM-7 segment; one 'ł' makes it 81 units
        // of UCS-2, two segments.
        assert_eq!(
            segments(&format!("{}ł", "€".repeat(80))),
            (Encoding::Ucs2, 81, 2)
        );
    }

    #[test]
    fn surrogate_pair_is_never_split_across_parts() {
        // Part 1: 66 'ł' (the emoji would straddle units 67/68), part 2:
        // emoji + 65 'ł' = 67 units, part 3: the last 'ł'. 134 / 67 = 2.
        let text = format!("{}😀{}", "ł".repeat(66), "ł".repeat(66));
        assert_eq!(segments(&text), (Encoding::Ucs2, 134, 3));
        let text = format!("{}😀{}", "ł".repeat(65), "ł".repeat(67));
        assert_eq!(segments(&text), (Encoding::Ucs2, 134, 2));
    }

    #[test]
    fn truncate_leaves_fitting_text_alone() {
        let text = "a".repeat(160);
        assert_eq!(truncate(&text, 1), text);
        assert_eq!(truncate("", 1), "");
    }

    #[test]
    fn truncate_cuts_at_a_word_boundary() {
        let text = "word ".repeat(40);
        let out = truncate(&text, 1);
        assert!(out.ends_with("word..."), "{out}");
        assert_eq!(count(&out).count, 1);
        assert!(count(&out).units >= 150, "{out}");
    }

    #[test]
    fn truncate_cuts_a_long_word_where_it_must() {
        let out = truncate(&"a".repeat(200), 1);
        assert_eq!(out, format!("{}...", "a".repeat(157)));
    }

    #[test]
    fn truncate_ucs2_uses_the_single_character_ellipsis() {
        let out = truncate(&"ł".repeat(100), 1);
        assert_eq!(out, format!("{}…", "ł".repeat(69)));
        // An emoji that would straddle the limit is left out whole.
        let out = truncate(&format!("{}😀😀", "ł".repeat(68)), 1);
        assert_eq!(out, format!("{}…", "ł".repeat(68)));
    }

    #[test]
    fn truncate_keeps_more_by_staying_gsm7_when_it_can() {
        // Cutting before the 'ł' keeps the text GSM-7: 150 characters
        // instead of the 69 that UCS-2 would leave.
        let text = format!("{}ł{}", "a".repeat(150), "a".repeat(100));
        assert_eq!(truncate(&text, 1), format!("{}...", "a".repeat(150)));
        // When the non-GSM character comes early, UCS-2 keeps more.
        let text = format!("ł{}", "a".repeat(200));
        assert_eq!(truncate(&text, 1), format!("ł{}…", "a".repeat(68)));
    }

    #[test]
    fn truncate_to_several_segments() {
        let out = truncate(&"a".repeat(1000), 2);
        assert_eq!(out, format!("{}...", "a".repeat(303)));
        assert_eq!(count(&out).count, 2);
    }

    /// A piece of template source: text (expressions already replaced by
    /// their filler) or the inside of a `{% %}` tag.
    #[derive(Clone)]
    enum Token {
        Text(String),
        Tag(String),
    }

    /// A template reduced to text: literal text, or a choice between
    /// branches (`if`/`elif`/`else`; an `if` without `else` may print
    /// nothing).
    enum Node {
        Text(String),
        Choice(Vec<Vec<Node>>),
    }

    /// Worst-case text for an expression in an SMS template: the longest
    /// value a real message is likely to carry in that place.
    fn filler(expr: &str) -> String {
        if let Some(n) = expr
            .split_once("[:")
            .and_then(|(_, rest)| rest.split_once(']'))
            .and_then(|(n, _)| n.trim().parse::<usize>().ok())
        {
            return "n".repeat(n);
        }
        let table = [
            (
                "map(attribute=\"id\")",
                "SUP-20260042, SUP-20260043, SUP-20260044",
            ),
            ("length", "3"),
            ("customer.first_name", "Christabelle"),
            ("customer.name", "Christabelle Montgomery"),
            ("case.id", "SUP-20260042"),
            ("next_update_at_short", "Wed 25 Nov, 12:00 PM EST"),
            ("latest_note_author", "Maria Fernandez"),
            ("company.name", "Northwind Travel"),
            // Planning leaves the case page link out wherever it would
            // cost a segment (`engine::page::render_sms_with_link`).
            ("status_url", ""),
        ];
        table
            .iter()
            .find(|(key, _)| expr.contains(key))
            .map(|(_, value)| (*value).to_owned())
            .unwrap_or_else(|| panic!("no worst-case filler for `{{{{ {expr} }}}}`"))
    }

    /// Splits a template into text, expressions (already replaced by their
    /// filler) and statement tags, applying `-` whitespace control.
    fn lex(source: &str) -> Vec<Token> {
        let mut out = Vec::new();
        let mut rest = source.strip_suffix('\n').unwrap_or(source);
        let mut trim_next = false;
        loop {
            let open = ["{{", "{%", "{#"].iter().filter_map(|o| rest.find(o)).min();
            let (text, tail) = match open {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let mut text = if trim_next { text.trim_start() } else { text };
            if tail.is_empty() {
                out.push(Token::Text(text.to_owned()));
                return out;
            }
            let close = match &tail[..2] {
                "{{" => "}}",
                "{%" => "%}",
                _ => "#}",
            };
            let end = tail.find(close).expect("unclosed tag") + 2;
            let inner = &tail[2..end - 2];
            if inner.starts_with('-') {
                text = text.trim_end();
            }
            trim_next = inner.ends_with('-');
            out.push(Token::Text(text.to_owned()));
            let inner = inner.trim_matches('-').trim();
            match close {
                "}}" => out.push(Token::Text(filler(inner))),
                "%}" => out.push(Token::Tag(inner.to_owned())),
                _ => {}
            }
            rest = &tail[end..];
        }
    }

    /// Builds the branch tree; `for` bodies count once, `set` prints
    /// nothing.
    fn parse(tokens: &mut std::iter::Peekable<std::vec::IntoIter<Token>>) -> Vec<Node> {
        let mut nodes = Vec::new();
        while let Some(token) = tokens.peek().cloned() {
            let content = match token {
                Token::Text(text) => {
                    tokens.next();
                    nodes.push(Node::Text(text));
                    continue;
                }
                Token::Tag(content) => content,
            };
            let keyword = content.split_whitespace().next().unwrap_or_default();
            match keyword {
                "if" => {
                    tokens.next();
                    let mut branches = vec![parse(tokens)];
                    let mut has_else = false;
                    loop {
                        let Some(Token::Tag(tag)) = tokens.next() else {
                            panic!("unclosed if");
                        };
                        match tag.split_whitespace().next().unwrap_or_default() {
                            "elif" => branches.push(parse(tokens)),
                            "else" => {
                                has_else = true;
                                branches.push(parse(tokens));
                            }
                            "endif" => break,
                            other => panic!("unexpected `{other}` in if"),
                        }
                    }
                    if !has_else {
                        branches.push(Vec::new());
                    }
                    nodes.push(Node::Choice(branches));
                }
                "for" => {
                    tokens.next();
                    nodes.extend(parse(tokens));
                    tokens.next();
                }
                "set" => {
                    tokens.next();
                }
                _ => return nodes,
            }
        }
        nodes
    }

    /// Every text a template can print, one per path through its
    /// branches.
    fn variants(nodes: &[Node]) -> Vec<String> {
        let mut out = vec![String::new()];
        for node in nodes {
            out = match node {
                Node::Text(t) => out.into_iter().map(|o| o + t).collect(),
                Node::Choice(branches) => {
                    let endings: Vec<String> = branches.iter().flat_map(|b| variants(b)).collect();
                    out.iter()
                        .flat_map(|o| endings.iter().map(move |e| format!("{o}{e}")))
                        .collect()
                }
            };
        }
        out
    }

    fn sms_templates() -> Vec<(String, std::path::PathBuf)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut dirs = vec![root.clone()];
        let mut found = Vec::new();
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("templates folder") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.to_string_lossy().ends_with(".sms.j2") {
                    let name = path
                        .strip_prefix(&root)
                        .expect("under templates")
                        .to_string_lossy()
                        .into_owned();
                    found.push((name, path));
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn every_sms_template_fits_one_segment_with_worst_case_values() {
        let templates = sms_templates();
        let mut failures = Vec::new();
        for locale in ["", "id/", "pl/", "tl/"] {
            for name in [
                "acknowledgement",
                "progress",
                "reminder",
                "resolution",
                "note",
            ] {
                let file = format!("{locale}{name}.sms.j2");
                assert!(
                    templates.iter().any(|(n, _)| *n == file),
                    "missing template {file}"
                );
            }
        }
        for (name, path) in &templates {
            let source = std::fs::read_to_string(path).expect("readable template");
            let mut tokens = lex(&source).into_iter().peekable();
            let tree = parse(&mut tokens);
            assert!(tokens.next().is_none(), "{name}: unbalanced tags");
            // A digest names several cases and may take a second segment.
            let budget = if name.ends_with("digest.sms.j2") {
                2
            } else {
                1
            };
            for text in variants(&tree) {
                let s = count(&text);
                if s.encoding != Encoding::Gsm7 || s.count > budget {
                    failures.push(format!(
                        "{name}: {:?} {} units: {text}",
                        s.encoding, s.units
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Characters that exercise every rule: basic table, extension table,
    /// whitespace, BMP characters outside GSM and non-BMP characters.
    fn sms_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => prop::sample::select(GSM7_BASIC.chars().collect::<Vec<_>>()),
            2 => Just(' '),
            1 => prop::sample::select(GSM7_EXTENSION.chars().collect::<Vec<_>>()),
            1 => prop::sample::select(vec!['ł', 'ę', 'ç', '…', 'ñ', 'Ł']),
            1 => prop::sample::select(vec!['😀', '👍', '𝄞', '🇵']),
            1 => any::<char>(),
        ]
    }

    fn sms_text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(sms_char(), 0..700).prop_map(|v| v.into_iter().collect()),
            // Mostly GSM-7, so that long GSM-7 texts are common.
            prop::collection::vec(
                prop_oneof![
                    8 => prop::sample::select(GSM7_BASIC.chars().collect::<Vec<_>>()),
                    1 => prop::sample::select(GSM7_EXTENSION.chars().collect::<Vec<_>>()),
                ],
                0..900
            )
            .prop_map(|v| v.into_iter().collect()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn truncate_always_fits(text in sms_text(), n in 1usize..=4) {
            let out = truncate(&text, n);
            prop_assert!(count(&out).count <= n, "{} segments: {out:?}", count(&out).count);
        }

        #[test]
        fn truncate_keeps_fitting_text_and_cuts_to_a_prefix(text in sms_text(), n in 1usize..=4) {
            let out = truncate(&text, n);
            if count(&text).count <= n {
                prop_assert_eq!(&out, &text);
            } else {
                let kept = out
                    .strip_suffix(count(&out).encoding.ellipsis())
                    .unwrap_or_else(|| panic!("no ellipsis: {out:?}"));
                prop_assert!(text.starts_with(kept));
            }
        }

        #[test]
        fn units_match_the_encoding(text in sms_text()) {
            let s = count(&text);
            match s.encoding {
                Encoding::Ucs2 => prop_assert_eq!(s.units, text.encode_utf16().count()),
                Encoding::Gsm7 => prop_assert!(s.units >= text.chars().count()),
            }
            if s.units <= s.encoding.single() {
                prop_assert_eq!(s.count, 1);
            } else {
                prop_assert!(s.count >= s.units.div_ceil(s.encoding.part()));
            }
        }
    }
}
