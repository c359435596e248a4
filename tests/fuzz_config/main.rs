//! Fuzzing the config: for generated config texts (see
//! `generate.rs`), parsing and validation never panic, and a config
//! that validates starts the proxy and forwards one connection without a
//! panic, a failed start or a hang (see `case.rs`).
//!
//! `cargo test` runs a smoke of 300 seeded cases, every valid one
//! started. The long run takes its size from the environment:
//!
//! ```text
//! FUZZ_CASES=1000000 cargo test --release --test fuzz_config -- --nocapture
//! ```
//!
//! starts every 50th valid config (`FUZZ_RUN_EVERY` changes that) and
//! `FUZZ_SEED` moves the seeds. A failure names the seed of the case and
//! prints its config text. The same generator drives the cargo-fuzz
//! targets in `fuzz/` (coverage-guided, needs a nightly feature).

mod case;
mod generate;

use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use arbitrary::Unstructured;
use case::Outcome;
use rand::{RngExt, SeedableRng};

/// Cases of the smoke run in `cargo test`.
const SMOKE_CASES: u64 = 300;

/// In a long run, start every this many valid configs (starting all would
/// take hours; parsing all takes a minute).
const LONG_RUN_EVERY: u64 = 50;

/// Input bytes per case, at most: enough that the generator rarely runs
/// out (it then takes the first choice of everything).
const MAX_INPUT_BYTES: usize = 8192;

/// Panic messages from every thread (tokio tasks included) since the
/// last [`take_panics`].
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Record every panic, on any thread, besides printing it as usual.
fn record_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            if let Ok(mut panics) = PANICS.lock() {
                panics.push(format!("thread {name}: {info}"));
            }
            default(info);
        }));
    });
}

fn take_panics() -> Vec<String> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?}: expected a whole number")),
    )
}

#[derive(Debug, Default)]
struct Tally {
    rejected: u64,
    valid: u64,
    forwarded: u64,
    not_forwarded: u64,
    raw_valid: u64,
}

#[test]
fn config_parsing_and_a_start_with_one_connection_never_panic() {
    record_panics();
    let long = std::env::var("FUZZ_CASES").is_ok();
    let cases = env_u64("FUZZ_CASES").unwrap_or(SMOKE_CASES);
    let run_every = env_u64("FUZZ_RUN_EVERY")
        .unwrap_or(if long { LONG_RUN_EVERY } else { 1 })
        .max(1);
    let base_seed = env_u64("FUZZ_SEED").unwrap_or(0);
    let fixtures_dir = std::env::temp_dir().join(format!("failoverd-fuzz-{}", std::process::id()));
    let fixtures = generate::Fixtures::create_in(fixtures_dir).expect("fuzz fixture files");
    let began = Instant::now();
    let mut tally = Tally::default();
    let mut slowest = (Duration::ZERO, 0u64);
    for i in 0..cases {
        let seed = base_seed + i;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let len = rng.random_range(0..=MAX_INPUT_BYTES);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        let text = generate::config_text(&mut Unstructured::new(&bytes), &fixtures)
            .expect("the generator takes any bytes");
        let start = tally.valid % run_every == 0;
        let case_began = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // The bytes themselves as a file, too: parse only.
            let raw = case::check(&String::from_utf8_lossy(&bytes), false);
            (raw, case::check(&text, start))
        }));
        let took = case_began.elapsed();
        if took > slowest.0 {
            slowest = (took, seed);
        }
        let panics = take_panics();
        let fail = |what: &str| -> ! {
            panic!(
                "case {seed} (FUZZ_SEED={seed} FUZZ_CASES=1): {what}\npanics: {panics:#?}\n\
                 config:\n{text}"
            )
        };
        let (raw, outcome) = match result {
            Ok(outcomes) if panics.is_empty() => outcomes,
            Ok(_) => fail("a thread panicked"),
            Err(_) => fail("parse, validation or the run panicked"),
        };
        if raw == Ok(Outcome::Valid) {
            tally.raw_valid += 1;
        }
        match outcome {
            Ok(Outcome::Rejected) => tally.rejected += 1,
            Ok(Outcome::Valid) => tally.valid += 1,
            Ok(Outcome::Forwarded) => {
                tally.valid += 1;
                tally.forwarded += 1;
            }
            Ok(Outcome::NotForwarded) => {
                tally.valid += 1;
                tally.not_forwarded += 1;
            }
            Err(defect) => fail(&defect),
        }
    }
    eprintln!(
        "fuzz_config: {cases} cases in {:.1?} (seeds {base_seed}..{}): {} rejected, \
         {} valid, started every {run_every}th valid: {} forwarded one connection, {} \
         started but not forwarded; raw input bytes valid: {}; slowest case {:?} (seed {})",
        began.elapsed(),
        base_seed + cases,
        tally.rejected,
        tally.valid,
        tally.forwarded,
        tally.not_forwarded,
        tally.raw_valid,
        slowest.0,
        slowest.1,
    );
    if cases >= SMOKE_CASES {
        // A generator that never gets past validation tests nothing.
        assert!(
            tally.valid >= cases / 20,
            "only {} of {cases} generated configs validate",
            tally.valid
        );
        assert!(
            tally.forwarded > 0,
            "no started config forwarded a connection: {tally:?}"
        );
    }
}
