//! Durations as written in the config and on the command line: `500ms`, `30s`, `10m`, `1h30m`.

use std::fmt;

/// What [`Duration::parse`] accepts (around white space it trims), for the API's schemas: one or
/// more parts, each a number of 1 to 9 digits and a unit.
pub const DURATION_PATTERN: &str = "^([0-9]{1,9}(ms|s|m|h|d))+$";

/// [`DURATION_PATTERN`] above zero: some number in it is not 0.
pub const NONZERO_DURATION_PATTERN: &str = "^(?=.*[1-9])([0-9]{1,9}(ms|s|m|h|d))+$";

/// A length of time parsed from text such as `1h30m`; the type is the proof it was well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// Parses one or more `<number><unit>` parts, numbers of at most 9 digits (no sum of them
    /// can overflow), units `ms`, `s`, `m`, `h`, `d`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a duration: write a number and a unit (ms, s, m, h, d), for example \"30s\", \"10m\" or \"1h30m\""
            )
        };
        let mut total = std::time::Duration::ZERO;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            if digits > 9 {
                return Err(format!(
                    "`{s}` is not a duration: its numbers have at most 9 digits; use a larger unit (\"90d\", not \"7776000000ms\")"
                ));
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let millis = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            // At most 999_999_999 times 86_400_000: far below u64::MAX.
            total = total
                .checked_add(std::time::Duration::from_millis(n * millis))
                .ok_or_else(bad)?;
            rest = &rest[unit_len..];
        }
        Ok(Self(total))
    }
    /// Wraps a std duration.
    pub fn from_std(d: std::time::Duration) -> Self {
        Self(d)
    }
    /// The std duration, for tokio.
    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut left = ms;
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if left >= size {
                write!(f, "{}{unit}", left / size)?;
                left %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(Duration::parse("1h30m").unwrap().as_std().as_secs(), 5400);
        assert_eq!(Duration::parse("250ms").unwrap().as_std().as_millis(), 250);
        assert_eq!(Duration::parse("10m").unwrap().to_string(), "10m");
        for bad in ["", "10", "m", "10 minutes", "-1s", "1.5s", "1234567890s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
        assert!(Duration::parse(" 999999999d ").is_ok());
    }

    /// The patterns, without the lookahead regex-lite lacks, against `parse` on the text
    /// around each part's edge cases.
    #[test]
    fn the_patterns_accept_what_parse_accepts() {
        let any = regex_lite::Regex::new(DURATION_PATTERN).unwrap();
        let above_zero = NONZERO_DURATION_PATTERN.replace("(?=.*[1-9])", "");
        assert_ne!(above_zero, NONZERO_DURATION_PATTERN);
        let above_zero = regex_lite::Regex::new(&above_zero).unwrap();
        let numbers = [
            "",
            "0",
            "00",
            "1",
            "000000001",
            "999999999",
            "0000000000",
            "1234567890",
        ];
        let units = ["", "ms", "s", "m", "h", "d", "x", "sm"];
        for n in numbers {
            for unit in units {
                for text in [
                    format!("{n}{unit}"),
                    format!("1h{n}{unit}"),
                    format!("{n}{unit}0s"),
                ] {
                    let parsed = Duration::parse(&text);
                    assert_eq!(any.is_match(&text), parsed.is_ok(), "`{text}`");
                    let nonzero = text.contains(|c: char| ('1'..='9').contains(&c));
                    assert_eq!(
                        above_zero.is_match(&text) && nonzero,
                        parsed.is_ok_and(|d| !d.as_std().is_zero()),
                        "`{text}`"
                    );
                }
            }
        }
    }
}
