//! The plain-text writer behind `html_to_text` and `adf_to_text`: both
//! walk a document and tell it about text, block boundaries, line breaks
//! and list items; it collapses whitespace, owes line breaks until the next
//! visible character (so nothing leads or trails), and writes list markers.

/// At most this many blank-line-free line breaks in a row: a blank line
/// separates paragraphs, more says nothing.
const MAX_NEWLINES: u8 = 2;

/// Nested lists indent their items two spaces a level, up to this depth.
const MAX_INDENT_LEVELS: usize = 8;

/// An open list: bullets, or numbers counting from where it started.
struct List {
    ordered: bool,
    next: u64,
}

/// Builds the plain text. Owed whitespace is written only before the next
/// visible character, so the result never starts or ends with whitespace.
#[derive(Default)]
pub(super) struct Emitter {
    out: String,
    /// Whitespace seen since the last visible character.
    space: bool,
    /// Line breaks owed before the next visible character.
    newlines: u8,
    /// A list marker owed at the start of the next visible character's line.
    marker: Option<String>,
    lists: Vec<List>,
    /// Inside preformatted text (`<pre>`, a code block): spaces and line
    /// breaks are kept as written.
    pre: usize,
    /// Inside a table cell whose blocks run together on the row's line.
    inline: usize,
}

impl Emitter {
    /// Text as it appears in the document: whitespace runs become one
    /// space (outside preformatted text), control characters and invisible
    /// format characters are dropped.
    pub(super) fn text(&mut self, s: &str) {
        for c in s.chars() {
            self.ch(c);
        }
    }

    /// One character of document text.
    pub(super) fn ch(&mut self, c: char) {
        match c {
            '\n' if self.pre > 0 => self.hard_break(),
            ' ' | '\t' if self.pre > 0 => {
                self.flush();
                self.push(c);
            }
            // Soft hyphen, zero-width space, byte order mark: invisible.
            '\u{ad}' | '\u{200b}' | '\u{feff}' => {}
            c if c.is_whitespace() => self.space = true,
            c if c.is_control() => {}
            c => {
                self.flush();
                self.push(c);
            }
        }
    }

    /// Whitespace between two words (table cells, inline nodes).
    pub(super) fn space(&mut self) {
        self.space = true;
    }

    /// The edge of a block: what follows starts a new line; `blank` asks
    /// for an empty line between (paragraphs), which a list item's lines
    /// do not get. Nothing, at the start of a list item that has no text yet.
    pub(super) fn block(&mut self, blank: bool) {
        if self.marker.is_some() {
            return;
        }
        if self.inline > 0 {
            self.space = true;
            return;
        }
        let want = if blank && self.lists.is_empty() {
            MAX_NEWLINES
        } else {
            1
        };
        self.newlines = self.newlines.max(want);
    }

    /// A forced line break (`<br>`, `hardBreak`, a newline in preformatted
    /// text): each one counts, up to one empty line.
    pub(super) fn hard_break(&mut self) {
        if self.marker.is_some() {
            return;
        }
        self.newlines = (self.newlines + 1).min(MAX_NEWLINES);
    }

    /// A list opens; `start` numbers the first item of an ordered one.
    pub(super) fn open_list(&mut self, ordered: bool, start: u64) {
        self.block(false);
        self.lists.push(List {
            ordered,
            next: start,
        });
    }

    /// The innermost list closes (nothing if none is open), and with it an
    /// item that has no text.
    pub(super) fn close_list(&mut self) {
        self.lists.pop();
        self.end_item();
    }

    /// A list item starts: a new line, indented by its depth, with `- ` or
    /// its number. An item outside any list is a bullet.
    pub(super) fn item(&mut self) {
        if self.marker.is_none() {
            self.newlines = self.newlines.max(1);
        }
        let depth = self.lists.len().clamp(1, MAX_INDENT_LEVELS);
        let mut marker = "  ".repeat(depth - 1);
        match self.lists.last_mut() {
            Some(list) if list.ordered => {
                marker.push_str(&format!("{}. ", list.next));
                list.next = list.next.saturating_add(1);
            }
            _ => marker.push_str("- "),
        }
        self.marker = Some(marker);
    }

    /// A list item ends: what follows starts a new line. An item that
    /// ends without text drops its marker.
    pub(super) fn end_item(&mut self) {
        self.marker = None;
        self.block(false);
    }

    /// Preformatted text starts (`true`) or ends (`false`).
    pub(super) fn preformatted(&mut self, on: bool) {
        if on {
            self.pre = self.pre.saturating_add(1);
        } else {
            self.pre = self.pre.saturating_sub(1);
        }
    }

    /// A table cell starts (`true`) or ends (`false`): blocks inside it are
    /// separated by a space, so a row stays on one line.
    pub(super) fn cell(&mut self, on: bool) {
        self.space = true;
        if on {
            self.inline = self.inline.saturating_add(1);
        } else {
            self.inline = self.inline.saturating_sub(1);
        }
    }

    /// The text, without leading or trailing whitespace.
    pub(super) fn finish(self) -> String {
        let trimmed = self.out.trim();
        if trimmed.len() == self.out.len() {
            self.out
        } else {
            trimmed.to_owned()
        }
    }

    /// Writes what is owed before a visible character: line breaks (none
    /// at the very start), a list marker, or one space.
    fn flush(&mut self) {
        if self.out.is_empty() {
            self.newlines = 0;
            self.space = false;
        }
        if self.newlines > 0 {
            for _ in 0..self.newlines {
                self.out.push('\n');
            }
            self.newlines = 0;
            self.space = false;
        }
        if let Some(marker) = self.marker.take() {
            self.out.push_str(&marker);
            self.space = false;
        }
        if self.space {
            self.out.push(' ');
            self.space = false;
        }
    }

    /// Appends one character. A `<` is never followed directly by what
    /// would make it read as a tag (`<b`, `</`, `<!`, `<?`): text such as
    /// `&lt;b&gt;` comes out as `< b>`, so the result holds no markup.
    fn push(&mut self, c: char) {
        if (c.is_ascii_alphabetic() || matches!(c, '/' | '!' | '?')) && self.out.ends_with('<') {
            self.out.push(' ');
        }
        self.out.push(c);
    }
}
