//! SMS segments: `count` agrees with the encoding rules, and `truncate`
//! fits the budget, keeps a fitting text whole and otherwise cuts it to a
//! prefix followed by the ellipsis of the result's encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::domain::segments::{Encoding, count, truncate};

fuzz_target!(|input: (String, u8)| {
    let (text, max) = input;
    let max = usize::from(max % 8);
    let budget = max.max(1);

    let whole = count(&text);
    assert!(whole.count >= 1);
    match whole.encoding {
        Encoding::Ucs2 => assert_eq!(whole.units, text.encode_utf16().count()),
        Encoding::Gsm7 => {
            assert!(whole.units >= text.chars().count());
            assert!(whole.units <= 2 * text.chars().count());
        }
    }
    let (single, part) = match whole.encoding {
        Encoding::Gsm7 => (160, 153),
        Encoding::Ucs2 => (70, 67),
    };
    if whole.units <= single {
        assert_eq!(whole.count, 1, "{whole:?}");
    } else {
        assert!(whole.count >= whole.units.div_ceil(part), "{whole:?}");
        // Greedy packing wastes at most one unit a part (an escape or a
        // surrogate pair that would straddle the boundary).
        assert!(whole.count <= whole.units.div_ceil(part - 1), "{whole:?}");
    }

    let out = truncate(&text, max);
    let cut = count(&out);
    assert!(
        cut.count <= budget,
        "{} segments > {budget}: {out:?}",
        cut.count
    );
    if whole.count <= budget {
        assert_eq!(out, text);
    } else {
        let ellipsis = match cut.encoding {
            Encoding::Gsm7 => "...",
            Encoding::Ucs2 => "…",
        };
        let kept = out
            .strip_suffix(ellipsis)
            .unwrap_or_else(|| panic!("no {ellipsis:?} at the end: {out:?}"));
        assert!(text.starts_with(kept), "not a prefix: {out:?}");
        assert!(kept.len() < text.len());
    }
});
