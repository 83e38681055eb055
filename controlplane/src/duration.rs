//! Durations as written in files and flags: a number with a unit, `ms`, `s`, `m` or `h`
//! (`500ms`, `1.5s`, `2m`), or `0`.

use std::time::Duration;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (expected a number with ms, s, m or h, as 500ms or 30s)")]
pub struct DurationError(pub String);

/// Parses a duration.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_owned());
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(err)?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Formats a duration in the syntax [`parse`] reads: whole hours, minutes or seconds when
/// exact, else milliseconds, else fractional seconds.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if d.is_zero() {
        "0".into()
    } else if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(3600) {
        format!("{}h", d.as_secs() / 3600)
    } else if d.subsec_nanos() == 0 && d.as_secs().is_multiple_of(60) {
        format!("{}m", d.as_secs() / 60)
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)) == d {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "-1s", "1e3s", "ms5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for (d, text) in [
            (Duration::ZERO, "0"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(3500), "3500ms"),
            (Duration::from_micros(1500), "0.0015s"),
        ] {
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d));
        }
    }
}
