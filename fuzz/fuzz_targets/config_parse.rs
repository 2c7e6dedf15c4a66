//! A config file of any text: parsing (which also resolves secrets from
//! the environment and from files) never panics, and every error is a
//! one-line `fuzz.yaml:LINE:COLUMN: message` diagnostic inside the file.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tidings::config::Config;

fuzz_target!(|text: &str| {
    if let Err(errors) = Config::parse(Path::new("fuzz.yaml"), text) {
        tidings_fuzz::assert_diagnostics("fuzz.yaml", text, &errors);
    }
});
