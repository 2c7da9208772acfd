//! Feature flags' sticky buckets: where a targeting key falls in a fractional rollout. The
//! bucket is the murmur3 (x86, 32 bit, seed 0) hash of the flag key followed by the targeting
//! key, as flagd buckets, scaled to [0, 100): the same key always lands in the same place, and
//! widening a rollout only adds keys to it.

/// Where `targeting_key` falls for `flag_key`, in [0, 100).
pub fn bucket(flag_key: &str, targeting_key: &str) -> f64 {
    let text = format!("{flag_key}{targeting_key}");
    // Reading from memory cannot fail.
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(text.as_bytes()), 0).unwrap_or(0);
    f64::from(hash) / (f64::from(u32::MAX) + 1.0) * 100.0
}

/// The variant of a fractional split that `targeting_key` is served: the variants in order,
/// each taking its weight's share of [0, 100); None when no weight is above 0.
pub fn split<'a>(
    flag_key: &str,
    targeting_key: &str,
    weights: &'a [(String, u32)],
) -> Option<&'a str> {
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let at = bucket(flag_key, targeting_key);
    let mut upto = 0.0;
    for (variant, weight) in weights {
        upto += f64::from(*weight) * 100.0 / total as f64;
        if at < upto {
            return Some(variant);
        }
    }
    weights
        .iter()
        .rev()
        .find(|(_, w)| *w > 0)
        .map(|(v, _)| v.as_str())
}

/// `percent`% to `on`, the rest to `off`: the split of `flag set --rollout 10%`.
pub fn rollout(percent: u32, on: &str, off: &str) -> Vec<(String, u32)> {
    let percent = percent.min(100);
    vec![(on.to_owned(), percent), (off.to_owned(), 100 - percent)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_murmur3_x86_32_with_seed_0() {
        // The reference vector of MurmurHash3_x86_32("hello", seed 0).
        let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(b"hello"), 0).unwrap();
        assert_eq!(hash, 613_153_351);
        assert!((bucket("hel", "lo") - 613_153_351.0 / 4_294_967_296.0 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn ten_percent_of_ten_thousand_keys_is_within_a_point_and_twenty_keeps_every_one_of_them() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let on_at = |percent: u32| -> Vec<bool> {
            let weights = rollout(percent, "on", "off");
            keys.iter()
                .map(|k| split("new-checkout", k, &weights) == Some("on"))
                .collect()
        };
        let ten = on_at(10);
        let share = ten.iter().filter(|on| **on).count() as f64 / keys.len() as f64 * 100.0;
        assert!((share - 10.0).abs() <= 1.0, "{share}% served on");
        let twenty = on_at(20);
        assert!(
            ten.iter()
                .zip(&twenty)
                .all(|(before, after)| !before || *after),
            "a key on at 10% is on at 20%"
        );
        let share = twenty.iter().filter(|on| **on).count() as f64 / keys.len() as f64 * 100.0;
        assert!((share - 20.0).abs() <= 1.0, "{share}% served on");
    }

    #[test]
    fn a_key_is_sticky_and_flags_bucket_apart() {
        let weights = rollout(50, "on", "off");
        let first = split("a", "user-7", &weights);
        assert!((0..10).all(|_| split("a", "user-7", &weights) == first));
        let differ = (0..1000)
            .filter(|i| {
                let k = format!("user-{i}");
                split("a", &k, &weights) != split("b", &k, &weights)
            })
            .count();
        assert!(differ > 300, "flags are bucketed independently: {differ}");
        assert_eq!(split("a", "x", &rollout(0, "on", "off")), Some("off"));
        assert_eq!(split("a", "x", &rollout(100, "on", "off")), Some("on"));
        assert_eq!(split("a", "x", &[]), None);
    }
}
