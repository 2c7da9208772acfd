//! Masking rules for staging data: what each column's transformer turns a value into. Every
//! transformer but `shuffle` is a pure function of the project's secret key and the value, so
//! the same input gives the same output in every table and every run: a masked foreign key
//! still joins its masked primary key.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// How one column is masked.
#[derive(Debug, Clone, PartialEq)]
pub enum Transformer {
    /// Copied as is.
    Keep,
    /// Always NULL.
    Null,
    /// A fixed text.
    Redact,
    /// A keyed hash, 16 hex digits.
    Hash,
    /// `u<16 hex>@example.com`.
    Email,
    /// A first and a last name from fixed lists.
    Name,
    /// A first name.
    FirstName,
    /// A last name.
    LastName,
    /// `+1-555-` and seven digits.
    Phone,
    /// Digit for digit, letter for letter (case kept); other characters kept.
    KeepFormat,
    /// A date (`YYYY-MM-DD`, or the date part of a timestamp) moved by 1..=N days either way.
    ShiftDays(u32),
    /// A number moved by up to ± this fraction of itself.
    Noise(f64),
    /// The column's values permuted among its rows.
    Shuffle,
    /// This text.
    Constant(String),
}

/// What `redact` writes.
pub const REDACTED: &str = "[redacted]";

const FIRST: [&str; 24] = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Radia",
    "Tim",
    "Hedy",
    "Donald",
    "Sophie",
    "John",
    "Katherine",
    "Niklaus",
    "Anita",
    "Leslie",
    "Joan",
    "Bjarne",
    "Mary",
    "Guido",
];
const LAST: [&str; 24] = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Perlman",
    "Berners",
    "Lamarr",
    "Knuth",
    "Wilson",
    "Backus",
    "Johnson",
    "Wirth",
    "Borg",
    "Lamport",
    "Clarke",
    "Stroustrup",
    "Shaw",
    "Rossum",
];

impl Transformer {
    /// Parses a rule as the config writes it: a name, or `{ shift_days = 30 }`,
    /// `{ noise = 0.1 }`, `{ constant = "x" }`.
    pub fn parse(value: &toml::Value) -> Result<Self, String> {
        let names = "keep, null, redact, hash, email, name, first_name, last_name, phone, keep_format, shuffle, or { shift_days = N }, { noise = F }, { constant = \"TEXT\" }";
        match value {
            toml::Value::String(s) => Ok(match s.as_str() {
                "keep" => Self::Keep,
                "null" => Self::Null,
                "redact" => Self::Redact,
                "hash" => Self::Hash,
                "email" => Self::Email,
                "name" => Self::Name,
                "first_name" => Self::FirstName,
                "last_name" => Self::LastName,
                "phone" => Self::Phone,
                "keep_format" => Self::KeepFormat,
                "shuffle" => Self::Shuffle,
                other => return Err(format!("`{other}` is not a transformer: use {names}")),
            }),
            toml::Value::Table(t) if t.len() == 1 => {
                let (k, v) = t.iter().next().ok_or("an empty rule")?;
                match (k.as_str(), v) {
                    ("shift_days", toml::Value::Integer(n)) if (1..=36500).contains(n) => {
                        Ok(Self::ShiftDays(*n as u32))
                    }
                    ("noise", toml::Value::Float(f)) if (0.0..=1.0).contains(f) => {
                        Ok(Self::Noise(*f))
                    }
                    ("constant", toml::Value::String(c)) => Ok(Self::Constant(c.clone())),
                    _ => Err(format!(
                        "`{k} = {v}` is not a transformer: shift_days takes 1 to 36500 days, noise a fraction from 0 to 1, constant a text"
                    )),
                }
            }
            _ => Err(format!("not a transformer: use {names}")),
        }
    }

    /// Whether an output may equal its input without that being a leak (the rule allows it).
    pub fn may_equal_input(&self, value: &str) -> bool {
        match self {
            Self::Keep => true,
            // Nothing to change in a value without digits or letters.
            Self::KeepFormat => !value.chars().any(char::is_alphanumeric),
            Self::Constant(c) => c == value,
            Self::Shuffle => true,
            _ => false,
        }
    }

    /// The masked value of `value` (None: SQL NULL). `Shuffle` is applied by the caller, which
    /// sees the whole column; here it keeps the value.
    pub fn apply(&self, key: &MaskKey, value: &str) -> Option<String> {
        let h = |tag: &str| key.hash(tag, value);
        Some(match self {
            Self::Keep | Self::Shuffle => value.to_owned(),
            Self::Null => return None,
            Self::Redact => REDACTED.to_owned(),
            Self::Hash => hex16(&h("hash")),
            Self::Email => format!("u{}@example.com", hex16(&h("email"))),
            Self::Name => {
                let d = h("name");
                format!(
                    "{} {}",
                    FIRST[d[0] as usize % FIRST.len()],
                    LAST[d[1] as usize % LAST.len()]
                )
            }
            Self::FirstName => FIRST[h("first")[0] as usize % FIRST.len()].to_owned(),
            Self::LastName => LAST[h("last")[0] as usize % LAST.len()].to_owned(),
            Self::Phone => {
                let d = h("phone");
                let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
                format!("+1-555-{:07}", n % 10_000_000)
            }
            Self::KeepFormat => keep_format(&h("format"), value),
            Self::ShiftDays(max) => shift_days(&h("shift"), *max, value)?,
            Self::Noise(f) => noise(&h("noise"), *f, value),
            Self::Constant(c) => c.clone(),
        })
    }
}

impl fmt::Display for Transformer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShiftDays(n) => write!(f, "shift_days {n}"),
            Self::Noise(x) => write!(f, "noise {x}"),
            Self::Constant(c) => write!(f, "constant {c:?}"),
            Self::KeepFormat => f.write_str("keep_format"),
            Self::FirstName => f.write_str("first_name"),
            Self::LastName => f.write_str("last_name"),
            other => write!(f, "{}", format!("{other:?}").to_lowercase()),
        }
    }
}

fn hex16(d: &[u8; 32]) -> String {
    hex::encode(&d[..8])
}

fn keep_format(seed: &[u8; 32], value: &str) -> String {
    // A keyed stream: block i is sha256(seed || i).
    let mut stream = (0u32..).flat_map(|i| {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(i.to_be_bytes());
        let block: [u8; 32] = h.finalize().into();
        block
    });
    value
        .chars()
        .map(|c| {
            let b = stream.next().unwrap_or(0);
            if c.is_ascii_digit() {
                char::from(b'0' + b % 10)
            } else if c.is_ascii_lowercase() {
                char::from(b'a' + b % 26)
            } else if c.is_ascii_uppercase() {
                char::from(b'A' + b % 26)
            } else if c.is_alphabetic() {
                char::from(b'a' + b % 26)
            } else {
                c
            }
        })
        .collect()
}

fn shift_days(seed: &[u8; 32], max: u32, value: &str) -> Option<String> {
    let (date_part, rest) = value.split_at(value.len().min(10));
    let Ok(date) = date_part.parse::<jiff::civil::Date>() else {
        // Not a date: masked as a hash rather than passed through.
        return Some(hex16(seed));
    };
    let magnitude = 1 + u32::from_be_bytes([seed[0], seed[1], seed[2], seed[3]]) % max;
    let days = if seed[4].is_multiple_of(2) {
        i64::from(magnitude)
    } else {
        -i64::from(magnitude)
    };
    let moved = date.checked_add(jiff::Span::new().days(days)).ok()?;
    Some(format!("{moved}{rest}"))
}

fn noise(seed: &[u8; 32], fraction: f64, value: &str) -> String {
    let Ok(n) = value.trim().parse::<f64>() else {
        return hex16(seed);
    };
    let unit = u32::from_be_bytes([seed[0], seed[1], seed[2], seed[3]]) as f64 / u32::MAX as f64;
    let factor = 1.0 + fraction * (2.0 * unit - 1.0);
    let moved = n * factor;
    // Never the value itself, or the output would leak it: the smallest step away instead.
    let away = if seed[5].is_multiple_of(2) { 1.0 } else { -1.0 };
    if value.contains('.') || value.contains('e') {
        let out = format!("{moved:.2}");
        if out.parse::<f64>() == Ok(n) {
            format!("{:.2}", n + away * 0.01)
        } else {
            out
        }
    } else {
        let out = moved.round() as i64;
        if out as f64 == n {
            format!("{}", out + away as i64)
        } else {
            format!("{out}")
        }
    }
}

/// The project's masking key: the same key gives the same outputs in every run.
#[derive(Clone)]
pub struct MaskKey([u8; 32]);

impl MaskKey {
    /// From 32 bytes (kept in the data dir).
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// HMAC-SHA256 of `tag` and `value` under the key (RFC 2104).
    pub fn hash(&self, tag: &str, value: &str) -> [u8; 32] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.0.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        inner.update(tag.as_bytes());
        inner.update([0]);
        inner.update(value.as_bytes());
        let inner: [u8; 32] = inner.finalize().into();
        let mut outer = Sha256::new();
        outer.update(opad);
        outer.update(inner);
        outer.finalize().into()
    }
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(..)")
    }
}

/// Whether a column's name looks like it holds personal data.
pub fn looks_personal(column: &str) -> bool {
    const WORDS: [&str; 22] = [
        "email", "mail", "phone", "mobile", "name", "address", "street", "city", "zip", "postcode",
        "ssn", "birth", "dob", "iban", "card", "ip", "passport", "salary", "tax", "note",
        "comment", "password",
    ];
    let lower = column.to_ascii_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|part| {
            WORDS
                .iter()
                .any(|w| part == *w || (w.len() > 3 && part.contains(w)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MaskKey {
        MaskKey::new([9; 32])
    }

    fn rule(s: &str) -> Transformer {
        Transformer::parse(&s.parse::<toml::Table>().unwrap()["r"]).unwrap()
    }

    #[test]
    fn deterministic_and_keyed() {
        let k = key();
        let other = MaskKey::new([1; 32]);
        for t in [
            Transformer::Hash,
            Transformer::Email,
            Transformer::Name,
            Transformer::Phone,
        ] {
            let a = t.apply(&k, "alice@shop.example");
            assert_eq!(a, t.apply(&k, "alice@shop.example"), "{t}");
            assert_ne!(
                a,
                t.apply(&other, "alice@shop.example"),
                "{t} depends on the key"
            );
            assert_ne!(a.as_deref(), Some("alice@shop.example"));
        }
        let email = Transformer::Email.apply(&k, "a@b.c").unwrap();
        assert!(
            email.starts_with('u') && email.ends_with("@example.com") && email.len() == 29,
            "{email}"
        );
    }

    #[test]
    fn formats_dates_and_numbers() {
        let k = key();
        let f = Transformer::KeepFormat.apply(&k, "AB-123 x9").unwrap();
        assert_eq!(f.len(), 9);
        assert!(
            f.chars().zip("AB-123 x9".chars()).all(|(a, b)| {
                (a.is_ascii_uppercase() == b.is_ascii_uppercase())
                    && (a.is_ascii_digit() == b.is_ascii_digit())
                    && (a.is_alphanumeric() || a == b)
            }),
            "{f}"
        );
        let shifted = rule("r = { shift_days = 30 }")
            .apply(&k, "1984-06-02")
            .unwrap();
        let (a, b): (jiff::civil::Date, jiff::civil::Date) =
            (shifted.parse().unwrap(), "1984-06-02".parse().unwrap());
        let days = (a - b).get_days().abs();
        assert!((1..=30).contains(&days), "{shifted}");
        let n: f64 = rule("r = { noise = 0.1 }")
            .apply(&k, "50000")
            .unwrap()
            .parse()
            .unwrap();
        assert!((45000.0..=55000.0).contains(&n), "{n}");
        assert_eq!(Transformer::Null.apply(&k, "x"), None);
        assert_eq!(
            rule("r = { constant = \"n/a\" }").apply(&k, "x").as_deref(),
            Some("n/a")
        );
        assert!(
            Transformer::parse(&toml::Value::String("blur".into()))
                .unwrap_err()
                .contains("is not a transformer")
        );
    }

    #[test]
    fn personal_names() {
        for c in [
            "email",
            "full_name",
            "phone",
            "home_address",
            "ssn",
            "birth_date",
            "iban",
            "card_number",
            "ip",
            "last_login_ip",
        ] {
            assert!(looks_personal(c), "{c}");
        }
        for c in [
            "id",
            "created_at",
            "status",
            "amount",
            "product_id",
            "quantity",
        ] {
            assert!(!looks_personal(c), "{c}");
        }
    }
}
