//! Parsing and validation of any config text never panic: each input is
//! read both as a file (raw bytes) and as the choices of the structured
//! generator (keys failoverd knows, with valid, boundary and wrong values).
#![no_main]

#[path = "../../tests/fuzz_config/case.rs"]
mod case;
#[path = "../../tests/fuzz_config/generate.rs"]
mod generate;

use std::sync::OnceLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

static FIXTURES: OnceLock<generate::Fixtures> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fixtures = FIXTURES.get_or_init(|| {
        let dir = std::env::temp_dir().join("failoverd-fuzz-fixtures");
        generate::Fixtures::create_in(dir).expect("fuzz fixture files")
    });
    let raw = String::from_utf8_lossy(data);
    let _ = case::check(&raw, false);
    if let Ok(text) = generate::config_text(&mut Unstructured::new(data), fixtures) {
        let _ = case::check(&text, false);
    }
});
