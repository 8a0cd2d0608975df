//! Durations as the config writes them, in the humantime style that Go, Envoy and
//! Prometheus users know: one or more `<number><unit>` terms, optionally separated by
//! spaces, e.g. `"250ms"`, `"30s"`, `"1m30s"`, `"1.5s"`, `"500us"`, `"2h 15m"`. Units:
//! `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, `d`. The `humantime` crate would do but
//! for fractions (`1.5s`), which it refuses; this parser is the small part of it we need.

use std::time::Duration;

const HINT: &str =
    "write numbers with units, e.g. \"250ms\", \"1.5s\", \"1m30s\" or \"500us\" (units: ns, us, ms, s, m, h, d)";

/// Nanoseconds in one of each unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return None,
    })
}

/// Parses a duration such as `"1m30s"` or `"1.5s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration {text:?}: {why}");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid(HINT));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if number.is_empty() || unit.is_empty() {
            return Err(invalid(HINT));
        }
        let Some(per_unit) = unit_nanos(unit) else {
            return Err(invalid(&format!("unknown unit {unit:?}; {HINT}")));
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid(HINT));
        }
        let too_large = || invalid("the number is too large");
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut nanos = whole.checked_mul(per_unit).ok_or_else(too_large)?;
        // The fraction's digits, each worth a tenth of the one before it.
        let mut scale = per_unit;
        for digit in fraction.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        rest = after.trim_start();
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| invalid("the number is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration the way the config writes it (for /config and exported rules), in
/// the largest unit that holds it whole.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("7µs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse_duration("40ns"), Ok(Duration::from_nanos(40)));
    }

    #[test]
    fn parses_compounds_and_fractions() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h 15m"), Ok(Duration::from_secs(8100)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "s",
            "10",
            "1..5s",
            "1.2.3s",
            ".s",
            "10 sec",
            "-1s",
            "1m30",
            "1y",
            "99999999999999999999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["250ms", "30s", "5m", "1h", "0s", "500us", "7ns", "90s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
    }
}
