//! Durations as the config writes them: a number and a unit ("250ms", "2s",
//! "1m", "1h"), at most [`MAX_DURATION`], so that adding any configured
//! duration to an `Instant` can never overflow.

use std::time::Duration;

/// The longest duration a config may hold: one year (SPEC.md: Validation).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a duration with a unit: "250ms", "2s", "1m", "1h".
///
/// The number may have a decimal fraction ("1.5s"); it may not be negative
/// and the unit is required. The error names the bad value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration \"{text}\": {why}");
    if text.is_empty() {
        return Err(bad(
            "empty (expected e.g. \"500ms\", \"2s\", \"1m\", \"1h\")",
        ));
    }
    if text.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(bad("missing number (expected e.g. \"500ms\", \"2s\")"));
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        "" => return Err(bad("missing unit (use ms, s, m or h)")),
        _ => return Err(bad(&format!("unknown unit \"{unit}\" (use ms, s, m or h)"))),
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad("malformed number"));
    }
    if fraction.len() > 9 {
        return Err(bad("too many decimal places"));
    }
    let too_large = || bad("too large");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| bad("malformed number"))?;
        let scale = 10u128.pow(fraction.len() as u32);
        nanos = nanos
            .checked_add(digits * unit_nanos / scale)
            .ok_or_else(too_large)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is < 1e9, so it fits in u32.
    let sub = (nanos % 1_000_000_000) as u32;
    let duration = Duration::new(secs, sub);
    if duration > MAX_DURATION {
        return Err(bad("too large (at most 1 year, \"8760h\")"));
    }
    Ok(duration)
}

/// Format a duration the way the config file writes it: "0s", "250ms",
/// "2s", "1m", "1h"; the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    const MS: u128 = 1_000_000;
    const S: u128 = 1_000 * MS;
    const M: u128 = 60 * S;
    const H: u128 = 60 * M;
    if nanos == 0 {
        "0s".to_string()
    } else if nanos.is_multiple_of(H) {
        format!("{}h", nanos / H)
    } else if nanos.is_multiple_of(M) {
        format!("{}m", nanos / M)
    } else if nanos.is_multiple_of(S) {
        format!("{}s", nanos / S)
    } else if nanos.is_multiple_of(MS) {
        format!("{}ms", nanos / MS)
    } else {
        format!("{d:?}")
    }
}
