//! The audit chain: each event's hash covers the previous event's hash and its own content, so
//! a changed, removed or reordered record is detected by `shipgate audit --verify`.

use sha2::{Digest as _, Sha256};

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The content of one event that its hash covers.
#[derive(Debug, Clone, Copy)]
pub struct EventContent<'a> {
    /// Sequence number (1-based, no gaps).
    pub id: i64,
    /// RFC 3339 time.
    pub at: &'a str,
    /// Who caused it (token name, `shipgate` for the server itself).
    pub actor: &'a str,
    /// What happened (`promotion.succeeded`, `release.created`, ...).
    pub kind: &'a str,
    /// Human-readable sentence.
    pub message: &'a str,
    /// Structured details as JSON text.
    pub data: &'a str,
}

/// The hex sha256 of the previous hash and the event's fields, each length-prefixed so no two
/// different events hash alike.
pub fn chain_hash(prev: &str, e: &EventContent<'_>) -> String {
    let mut h = Sha256::new();
    let id = e.id.to_string();
    for field in [prev, id.as_str(), e.at, e.actor, e.kind, e.message, e.data] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_field_changes_the_hash() {
        let e = EventContent {
            id: 1,
            at: "t",
            actor: "a",
            kind: "k",
            message: "m",
            data: "{}",
        };
        let base = chain_hash(GENESIS, &e);
        assert_ne!(base, chain_hash(GENESIS, &EventContent { actor: "b", ..e }));
        assert_ne!(
            base,
            chain_hash(
                GENESIS,
                &EventContent {
                    message: "mm",
                    data: "{}",
                    ..e
                }
            )
        );
        assert_ne!(base, chain_hash(&base, &e));
    }
}
