use chrono_tz::Tz;
use proptest::prelude::*;
use serde_json::json;

use super::rails_zones::{RAILS_LEGACY_ZONES, RAILS_ZONES};
use super::*;

/// Keys of `ActiveSupport::TimeZone::MAPPING` at the commit cited in
/// `rails_zones.rs`.
const RAILS_ZONES_COUNT: usize = 154;

fn e164(raw: &str, region: Option<&str>) -> Option<String> {
    phone(raw, region).map(|p| p.to_string())
}

fn tag(raw: &str) -> Option<String> {
    locale(raw).map(|l| l.to_string())
}

/// A `<` followed by what would open a tag, comment or declaration.
fn has_markup(text: &str) -> bool {
    text.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'/' | b'!' | b'?')))
}

#[test]
fn every_rails_zone_maps_to_its_iana_zone() {
    assert_eq!(RAILS_ZONES.len(), RAILS_ZONES_COUNT);
    let mut names: Vec<_> = RAILS_ZONES.iter().map(|(n, _)| n.to_lowercase()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len(),
        RAILS_ZONES_COUNT,
        "a Rails name is listed twice"
    );
    for (rails, iana) in RAILS_ZONES.iter().chain(RAILS_LEGACY_ZONES) {
        let known: Tz = iana
            .parse()
            .unwrap_or_else(|_| panic!("chrono-tz does not know {iana} (for {rails:?})"));
        assert_eq!(time_zone(rails), Some(known), "{rails:?}");
        assert_eq!(time_zone(&rails.to_uppercase()), Some(known), "{rails:?}");
    }
}

#[test]
fn rails_zones_spot_checked() {
    for (rails, iana) in [
        ("Casablanca", "Africa/Casablanca"),
        ("Chennai", "Asia/Kolkata"),
        ("Eastern Time (US & Canada)", "America/New_York"),
        ("Mid-Atlantic", "Atlantic/South_Georgia"),
        ("International Date Line West", "Etc/GMT+12"),
        ("Warsaw", "Europe/Warsaw"),
        ("Jakarta", "Asia/Jakarta"),
        ("Kyiv", "Europe/Kyiv"),
        ("Kyev", "Europe/Kyiv"),
        ("Ulaan Bataar", "Asia/Ulaanbaatar"),
        ("  pacific time (us & canada) ", "America/Los_Angeles"),
        ("(GMT-05:00) Eastern Time (US & Canada)", "America/New_York"),
        ("(GMT+05:30) Chennai", "Asia/Kolkata"),
        ("Singapore", "Asia/Singapore"),
    ] {
        assert_eq!(
            time_zone(rails).map(|tz| tz.name()),
            Some(iana),
            "{rails:?}"
        );
    }
}

#[test]
fn iana_names_in_any_case() {
    assert_eq!(time_zone("Europe/Warsaw"), Some(Tz::Europe__Warsaw));
    assert_eq!(time_zone("europe/warsaw"), Some(Tz::Europe__Warsaw));
    assert_eq!(
        time_zone("AMERICA/ARGENTINA/BUENOS_AIRES"),
        Some(Tz::America__Argentina__Buenos_Aires)
    );
    assert_eq!(time_zone("Asia/Manila"), Some(Tz::Asia__Manila));
    assert_eq!(time_zone("UTC"), Some(Tz::Etc__UTC));
}

#[test]
fn unknown_zones_are_none() {
    for name in [
        "",
        "   ",
        "Atlantis",
        "Europe/Atlantis",
        "Eastern Time",
        "(GMT-05:00)",
        "GMT+25",
        "\u{0}",
        &"x".repeat(10_000),
    ] {
        assert_eq!(time_zone(name), None, "{name:?}");
    }
}

#[test]
fn phones_in_international_form() {
    for raw in [
        "+48 601 234 567",
        "+48601234567",
        "+48 (601) 234-567",
        "tel:+48601234567",
        " +48\u{a0}601\u{a0}234\u{3000}567 ",
    ] {
        assert_eq!(e164(raw, None).as_deref(), Some("+48601234567"), "{raw:?}");
        assert_eq!(
            e164(raw, Some("US")).as_deref(),
            Some("+48601234567"),
            "{raw:?}"
        );
    }
    assert_eq!(
        e164("+1 (212) 555-0143", None).as_deref(),
        Some("+12125550143")
    );
    assert_eq!(
        e164("+44 20 7946 0958", None).as_deref(),
        Some("+442079460958")
    );
}

#[test]
fn phones_with_00_for_plus() {
    for (raw, region, want) in [
        ("0061 2 1234 7777", None, "+61212347777"),
        ("0061 2 1234 7777", Some("US"), "+61212347777"),
        ("0061 2 1234 7777", Some("AU"), "+61212347777"),
        ("00 48 601234567", None, "+48601234567"),
        ("00 48 601234567", Some("PL"), "+48601234567"),
        ("0048-601-234-567", Some("DE"), "+48601234567"),
    ] {
        assert_eq!(
            e164(raw, region).as_deref(),
            Some(want),
            "{raw:?} in {region:?}"
        );
    }
}

#[test]
fn phones_in_national_form_with_a_region() {
    for (raw, region, want) in [
        ("(212) 555-0143", "US", "+12125550143"),
        ("212.555.0143", "us", "+12125550143"),
        ("1 212 555 0143", "US", "+12125550143"),
        ("0601 234 567", "PL", "+48601234567"),
        ("601-234-567", "PL", "+48601234567"),
        ("(02) 1234 7777", "AU", "+61212347777"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0812 3456 7890", "ID", "+6281234567890"),
        ("0917 123 4567", "PH", "+639171234567"),
    ] {
        assert_eq!(
            e164(raw, Some(region)).as_deref(),
            Some(want),
            "{raw:?} in {region}"
        );
    }
}

#[test]
fn phones_that_cannot_be_read_are_none() {
    for (raw, region) in [
        ("", None),
        ("   ", Some("US")),
        ("(212) 555-0143", None),
        ("0601 234 567", None),
        ("(212) 555-0143", Some("Narnia")),
        ("+48 601 234 56", None),
        ("+999 123 456", None),
        ("+1 212 555 0143 ext. 12", None),
        ("1-800-FLOWERS", Some("US")),
        ("call me maybe", Some("US")),
        ("+48+601234567", None),
        ("12", Some("US")),
        ("+0", None),
        ("000000000000", Some("PL")),
        ("++++----((((", Some("US")),
        ("\u{0}+48601234567", None),
    ] {
        assert_eq!(e164(raw, region), None, "{raw:?} in {region:?}");
    }
    assert_eq!(e164(&"1".repeat(10_000), Some("US")), None);
}

#[test]
fn locales_as_tags() {
    assert_eq!(tag("en-US").as_deref(), Some("en-US"));
    assert_eq!(tag("en_US").as_deref(), Some("en-US"));
    assert_eq!(tag("en-us").as_deref(), Some("en-US"));
    assert_eq!(tag("pl").as_deref(), Some("pl"));
    assert_eq!(tag("PL").as_deref(), Some("pl"));
    assert_eq!(tag("pt-br").as_deref(), Some("pt-BR"));
    assert_eq!(tag(" id ").as_deref(), Some("id"));
    assert_eq!(tag("pl_PL.UTF-8").as_deref(), Some("pl-PL"));
    assert_eq!(tag("zh-Hant-TW").as_deref(), Some("zh-Hant-TW"));
}

#[test]
fn locales_map_alternative_codes_to_shipped_ones() {
    assert_eq!(tag("fil").as_deref(), Some("tl"));
    assert_eq!(tag("fil-PH").as_deref(), Some("tl-PH"));
    assert_eq!(tag("in").as_deref(), Some("id"));
    assert_eq!(tag("in_ID").as_deref(), Some("id-ID"));
    assert_eq!(tag("tl").as_deref(), Some("tl"));
}

#[test]
fn locales_as_language_names() {
    for (name, want) in [
        ("Polish", "pl"),
        ("polski", "pl"),
        ("English", "en"),
        ("ENGLISH", "en"),
        ("English (United States)", "en"),
        ("Indonesian", "id"),
        ("Bahasa Indonesia", "id"),
        ("Tagalog", "tl"),
        ("Filipino", "tl"),
        ("Español", "es"),
        ("German", "de"),
    ] {
        assert_eq!(tag(name).as_deref(), Some(want), "{name:?}");
    }
}

#[test]
fn unreadable_locales_are_none() {
    for raw in [
        "", " ", "english!", "Klingon", "e", "en-", "en--US", "12", "x-foo", "(en)",
    ] {
        assert_eq!(tag(raw), None, "{raw:?}");
    }
    assert_eq!(tag(&"a".repeat(10_000)), None);
}

#[test]
fn html_blocks_become_lines() {
    let html = "<p>Hello Anna,</p><p>Your laptop is <b>ready</b>.<br>Pick it up at:</p>\
                <div>Desk 4</div><div>Floor 2</div><h2>Next</h2>Bring your ID.";
    assert_eq!(
        html_to_text(html),
        "Hello Anna,\n\nYour laptop is ready.\nPick it up at:\n\nDesk 4\nFloor 2\n\nNext\n\nBring your ID."
    );
}

#[test]
fn html_lists_get_markers() {
    let html = "<p>Steps:</p><ul><li>Restart</li><li>Update<ul><li>BIOS</li></ul></li></ul>\
                <ol><li><p>First</p></li><li>Second</li></ol><p>Done</p>";
    assert_eq!(
        html_to_text(html),
        "Steps:\n\n- Restart\n- Update\n  - BIOS\n1. First\n2. Second\n\nDone"
    );
    assert_eq!(html_to_text("<li>stray</li>"), "- stray");
    assert_eq!(html_to_text("<ul><li></li></ul><p>After</p>"), "After");
    assert_eq!(html_to_text("<ol><li><li>b</ol>"), "2. b");
}

#[test]
fn html_entities_are_decoded() {
    assert_eq!(html_to_text("Tom &amp; Jerry"), "Tom & Jerry");
    assert_eq!(html_to_text("a &lt; b &gt; c"), "a < b > c");
    assert_eq!(
        html_to_text("&quot;hi&quot; &apos;there&#39;"),
        "\"hi\" 'there'"
    );
    assert_eq!(
        html_to_text("caf&eacute; &#233; &#xE9; &#XE9;"),
        "café é é é"
    );
    assert_eq!(
        html_to_text("it&#146;s &#8364;5 &euro;5"),
        "it\u{2019}s €5 €5"
    );
    assert_eq!(
        html_to_text("&#0; &#xD800; &#99999999999;"),
        "\u{fffd} \u{fffd} \u{fffd}"
    );
    assert_eq!(
        html_to_text("AT&T &unknown; & &#; &#x; &amp"),
        "AT&T &unknown; & &#; &#x; &"
    );
    assert_eq!(html_to_text("&copy2024"), "&copy2024");
}

#[test]
fn html_whitespace_collapses() {
    assert_eq!(html_to_text("  a \n\t b&nbsp;&nbsp; c  "), "a b c");
    assert_eq!(html_to_text("<p> </p><p>\n</p><br><br><br><p>x</p>"), "x");
    assert_eq!(html_to_text("a<br><br><br><br>b"), "a\n\nb");
    assert_eq!(html_to_text("a<br/>b<br />c</br>d"), "a\nb\nc\nd");
    assert_eq!(html_to_text("soft\u{ad}hyphen\u{200b}s"), "softhyphens");
}

#[test]
fn html_pre_keeps_its_spacing() {
    assert_eq!(
        html_to_text("<p>Log:</p><pre>line 1\n  indented</pre><p>end</p>"),
        "Log:\n\nline 1\n  indented\n\nend"
    );
}

#[test]
fn html_drops_tags_comments_scripts_and_styles() {
    let html = "<!DOCTYPE html><html><head><title>Ticket</title>\
                <style>p { color: red } </style></head><body>\
                <!-- a comment with <p>tags</p> -->\
                <script type=\"text/javascript\">if (a < b && c > d) { alert('</p>'); }</SCRIPT >\
                <p class=\"x\" title='a > b' data-x=it's>Visible</p><?xml stray?>\
                <o:p>Word</o:p> <span style=\"x\">text</span></body></html>";
    assert_eq!(html_to_text(html), "Visible\n\nWord text");
}

#[test]
fn html_that_is_not_markup_stays_text() {
    assert_eq!(html_to_text("1 < 2 and 3 <= 4"), "1 < 2 and 3 <= 4");
    assert_eq!(html_to_text("a <3 b"), "a <3 b");
    assert_eq!(html_to_text("</>x"), "x");
    assert_eq!(html_to_text("&lt;b&gt;bold&lt;/b&gt;"), "< b>bold< /b>");
    assert_eq!(html_to_text("<!--->x<!-->y"), "xy");
}

#[test]
fn html_that_breaks_off_is_cut_where_the_markup_starts() {
    assert_eq!(html_to_text("text <a href=\"x"), "text");
    assert_eq!(html_to_text("text <!-- never closed"), "text");
    assert_eq!(html_to_text("text <script>var x = 1;"), "text");
    assert_eq!(html_to_text("text </p"), "text");
    assert_eq!(html_to_text("<"), "<");
    assert_eq!(html_to_text("&"), "&");
    assert_eq!(html_to_text("&#"), "&#");
    assert_eq!(html_to_text(""), "");
}

#[test]
fn html_tables_keep_rows_on_lines() {
    let html = "<table><tr><th>Item</th><th>State</th></tr>\
                <tr><td>Laptop</td><td>Ready</td></tr></table>After";
    assert_eq!(html_to_text(html), "Item State\nLaptop Ready\n\nAfter");
}

/// ADF-shaped values: known and unknown node types, nested, with arbitrary
/// text, attributes and link marks.
fn adf_node() -> impl Strategy<Value = serde_json::Value> {
    let types = prop::sample::select(vec![
        "doc",
        "paragraph",
        "heading",
        "text",
        "hardBreak",
        "mention",
        "emoji",
        "status",
        "inlineCard",
        "bulletList",
        "orderedList",
        "listItem",
        "codeBlock",
        "table",
        "tableRow",
        "tableCell",
        "expand",
        "somethingNew",
    ]);
    let leaf = (types.clone(), any::<String>(), any::<Option<u64>>()).prop_map(|(t, text, n)| {
        json!({
            "type": t,
            "text": text,
            "attrs": {"text": text, "shortName": text, "url": text, "order": n, "title": text},
            "marks": [{"type": "link", "attrs": {"href": text}}],
        })
    });
    leaf.prop_recursive(6, 64, 6, move |inner| {
        (types.clone(), prop::collection::vec(inner, 0..6))
            .prop_map(|(t, content)| json!({"type": t, "content": content}))
    })
}

proptest! {
    #[test]
    fn adf_never_panics_nor_leaves_markup(doc in adf_node()) {
        let text = adf_to_text(&doc);
        prop_assert!(!has_markup(&text), "{doc} gave {text:?}");
        prop_assert!(!text.contains("\n\n\n"));
        prop_assert_eq!(text.trim(), text.as_str());
    }

    #[test]
    fn html_never_panics_nor_leaves_markup(input in any::<String>()) {
        let text = html_to_text(&input);
        prop_assert!(!has_markup(&text), "{input:?} gave {text:?}");
        prop_assert!(!text.contains("\n\n\n"));
        prop_assert_eq!(text.trim(), text.as_str());
    }

    #[test]
    fn html_like_input_never_leaves_markup(
        input in r"(<[/!?]?[a-zA-Z]{0,6}( [a-z]+=('[^']*'|\x22[^\x22]*\x22|[^ >]*))?/?>|&[#a-zA-Z0-9]{0,8};?|<!--|-->|[a-z <>&;\n]){0,40}"
    ) {
        let text = html_to_text(&input);
        prop_assert!(!has_markup(&text), "{input:?} gave {text:?}");
        prop_assert!(!text.contains("\n\n\n"));
    }

    #[test]
    fn adf_never_panics_on_any_string(input in any::<String>()) {
        let _ = adf_to_text(&json!(input));
        let value: serde_json::Value = serde_json::from_str(&input).unwrap_or_default();
        let _ = adf_to_text(&value);
    }

    #[test]
    fn phones_zones_and_locales_never_panic(
        input in r"[+0-9 ()./\-a-zA-Z_]{0,30}",
        region in proptest::option::of("[A-Za-z]{0,3}"),
    ) {
        let _ = phone(&input, region.as_deref());
        let _ = time_zone(&input);
        let _ = locale(&input);
    }

    #[test]
    fn phone_like_input_never_panics_and_gives_valid_e164(
        input in r"(\+|00|0)?[0-9 ()\-]{0,24}",
        region in proptest::option::of(prop::sample::select(vec!["US", "PL", "GB", "ID", "PH", "AU", "DE", "IT"])),
    ) {
        if let Some(number) = phone(&input, region) {
            prop_assert!(number.to_string().parse::<E164>().is_ok());
        }
    }
}

/// A comment as Jira Cloud's REST API v3 returns it in `body`.
fn jira_comment() -> serde_json::Value {
    json!({
        "version": 1,
        "type": "doc",
        "content": [
            {"type": "paragraph", "content": [
                {"type": "text", "text": "Hi "},
                {"type": "mention", "attrs": {"id": "5b10ac8d82e05b22cc7d4ef5", "text": "@Anna Nowak", "accessLevel": ""}},
                {"type": "text", "text": ", the "},
                {"type": "text", "text": "replacement", "marks": [{"type": "strong"}]},
                {"type": "text", "text": " shipped "},
                {"type": "emoji", "attrs": {"shortName": ":truck:", "id": "1f69a", "text": "🚚"}},
                {"type": "hardBreak"},
                {"type": "text", "text": "Tracking: "},
                {"type": "text", "text": "DHL", "marks": [{"type": "link", "attrs": {"href": "https://dhl.example/track/123"}}]}
            ]},
            {"type": "heading", "attrs": {"level": 3}, "content": [{"type": "text", "text": "Next steps"}]},
            {"type": "orderedList", "attrs": {"order": 1}, "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Unpack"}]}]},
                {"type": "listItem", "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "Check the box"}]},
                    {"type": "bulletList", "content": [
                        {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "charger"}]}]}
                    ]}
                ]}
            ]},
            {"type": "codeBlock", "attrs": {"language": "text"}, "content": [{"type": "text", "text": "serial: X1\n  rev: 2"}]},
            {"type": "table", "content": [
                {"type": "tableRow", "content": [
                    {"type": "tableHeader", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Item"}]}]},
                    {"type": "tableHeader", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "State"}]}]}
                ]},
                {"type": "tableRow", "content": [
                    {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Laptop"}]}]},
                    {"type": "tableCell", "content": [{"type": "paragraph", "content": [{"type": "status", "attrs": {"text": "DONE", "color": "green"}}]}]}
                ]}
            ]},
            {"type": "mediaSingle", "attrs": {"layout": "center"}, "content": [
                {"type": "media", "attrs": {"id": "abc", "type": "file", "collection": "jira"}}
            ]},
            {"type": "someFutureNode", "content": [{"type": "text", "text": "still read"}]},
            {"type": "paragraph", "content": [
                {"type": "text", "text": "See "},
                {"type": "inlineCard", "attrs": {"url": "https://example.atlassian.net/browse/SUP-1"}}
            ]}
        ]
    })
}

#[test]
fn adf_comment_as_text() {
    assert_eq!(
        adf_to_text(&jira_comment()),
        "Hi @Anna Nowak, the replacement shipped 🚚\n\
         Tracking: DHL (https://dhl.example/track/123)\n\
         \n\
         Next steps\n\
         \n\
         1. Unpack\n\
         2. Check the box\n  \
         - charger\n\
         \n\
         serial: X1\n  \
         rev: 2\n\
         \n\
         Item State\n\
         Laptop DONE\n\
         \n\
         still read\n\
         \n\
         See https://example.atlassian.net/browse/SUP-1"
    );
}

#[test]
fn adf_odd_shapes_are_read_gracefully() {
    assert_eq!(adf_to_text(&json!(null)), "");
    assert_eq!(adf_to_text(&json!(42)), "");
    assert_eq!(adf_to_text(&json!({})), "");
    assert_eq!(
        adf_to_text(&json!({"type": "doc", "content": "not a list"})),
        ""
    );
    assert_eq!(adf_to_text(&json!({"type": "text", "text": 5})), "");
    assert_eq!(
        adf_to_text(&json!({"type": "mention", "attrs": {"id": "x"}})),
        ""
    );
    assert_eq!(
        adf_to_text(
            &json!([{"type": "text", "text": "a"}, {"type": "hardBreak"}, {"text": "ignored"}])
        ),
        "a"
    );
    assert_eq!(
        adf_to_text(
            &json!({"type": "text", "text": "same", "marks": [{"type": "link", "attrs": {"href": "same"}}]})
        ),
        "same"
    );
    assert_eq!(
        adf_to_text(&json!("h1. Title\n\nBody *bold*")),
        "h1. Title\n\nBody *bold*"
    );
    assert_eq!(
        adf_to_text(
            &json!({"type": "orderedList", "attrs": {"order": 3}, "content": [
                {"type": "listItem", "content": [{"type": "text", "text": "c"}]},
                {"type": "listItem", "content": [{"type": "text", "text": "d"}]}
            ]})
        ),
        "3. c\n4. d"
    );
}

#[test]
fn adf_nesting_past_the_limit_is_cut_not_overflowed() {
    let mut deep = json!({"type": "text", "text": "bottom"});
    for _ in 0..10_000 {
        // Built by moves: `json!` would serialise `deep` again (recursively).
        let mut block = serde_json::Map::new();
        block.insert("type".into(), "blockquote".into());
        block.insert("content".into(), serde_json::Value::Array(vec![deep]));
        deep = serde_json::Value::Object(block);
    }
    assert_eq!(adf_to_text(&deep), "");
    // Dropping a `Value` recurses too: leak it rather than overflow the
    // test's stack (not a concern of adf_to_text).
    std::mem::forget(deep);
}
