//! Durations as written in the config and on the command line: `500ms`, `30s`, `10m`, `1h30m`.

use std::fmt;

/// A length of time parsed from text such as `1h30m`; the type is the proof it was well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// Parses one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
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
            total += std::time::Duration::from_millis(n.checked_mul(millis).ok_or_else(bad)?);
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
        for bad in ["", "10", "m", "10 minutes", "-1s", "1.5s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }
}
