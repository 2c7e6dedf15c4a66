//! A rule file of any text: parsing never panics, and every error is a
//! one-line `fuzz.yaml:LINE:COLUMN: message` diagnostic inside the file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tidings::engine::rules::RuleSet;

fuzz_target!(|text: &str| {
    if let Err(errors) = RuleSet::parse(Path::new("fuzz.yaml"), text) {
        tidings_fuzz::assert_diagnostics("fuzz.yaml", text, &errors);
    }
});
