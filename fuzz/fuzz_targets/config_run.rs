//! A generated config that validates starts the proxy and forwards one
//! connection without a panic, a failed start or a hang. Every input is
//! parsed and validated; every 50th valid one is started
//! (`FUZZ_RUN_EVERY=N` changes that), as a start costs milliseconds.
#![no_main]

#[path = "../../tests/fuzz_config/case.rs"]
mod case;
#[path = "../../tests/fuzz_config/generate.rs"]
mod generate;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

static FIXTURES: OnceLock<generate::Fixtures> = OnceLock::new();
static RUN_EVERY: OnceLock<u64> = OnceLock::new();
static VALID: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let fixtures = FIXTURES.get_or_init(|| {
        let dir = std::env::temp_dir().join("failoverd-fuzz-fixtures");
        generate::Fixtures::create_in(dir).expect("fuzz fixture files")
    });
    let every = *RUN_EVERY.get_or_init(|| {
        std::env::var("FUZZ_RUN_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50u64)
            .max(1)
    });
    let Ok(text) = generate::config_text(&mut Unstructured::new(data), fixtures) else {
        return;
    };
    if case::check(&text, false) != Ok(case::Outcome::Valid) {
        return;
    }
    if VALID.fetch_add(1, Ordering::Relaxed) % every != 0 {
        return;
    }
    if let Err(defect) = case::check(&text, true) {
        panic!("{defect}\nconfig:\n{text}");
    }
});
