//! Feature flags: what the config declares of each ([`FlagConfig`]), the state each
//! environment gives it at run time ([`FlagState`]: off, on with a variant, or rules), and the
//! evaluation of a flag for an evaluation context, with OpenFeature's reasons and error codes.
//!
//! Fractional rollouts are sticky: the bucket is the murmur3 (x86, 32 bit, seed 0) hash of the
//! flag key followed by the targeting key, as flagd buckets, scaled to [0, 100): the same key
//! always lands in the same place, and widening a rollout only adds keys to it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The type of a flag's values (`type = "boolean"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum FlagType {
    /// `true` or `false`.
    Boolean,
    /// Text.
    String,
    /// An integer or a float.
    Number,
    /// A JSON object (or array).
    Object,
}

impl FlagType {
    /// Parses `boolean`, `string`, `number` or `object`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "boolean" => Ok(Self::Boolean),
            "string" => Ok(Self::String),
            "number" => Ok(Self::Number),
            "object" => Ok(Self::Object),
            other => Err(format!(
                "flag type `{other}` is not one of boolean, string, number, object"
            )),
        }
    }

    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Number => "number",
            Self::Object => "object",
        }
    }

    /// Whether `value` is one of this type.
    pub fn holds(self, value: &Value) -> bool {
        match self {
            Self::Boolean => value.is_boolean(),
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Object => value.is_object() || value.is_array(),
        }
    }
}

/// `[apps.APP.flags.KEY]`: a flag as the config declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagConfig {
    /// The flag's key, as clients ask for it.
    pub key: String,
    /// The type of its values.
    pub kind: FlagType,
    /// What it is for, shown by `flag show` and the dashboard.
    pub description: Option<String>,
    /// Its variants by name (boolean flags have `on` = true and `off` = false unless declared).
    pub variants: BTreeMap<String, Value>,
    /// The variant served when the flag is off or no rule matches.
    pub default_variant: String,
}

impl FlagConfig {
    /// The value of the default variant.
    pub fn default_value(&self) -> &Value {
        &self.variants[&self.default_variant]
    }

    /// The variant a state turns on when none is named: `on` for a boolean flag, else the
    /// only variant besides the default, if there is exactly one.
    pub fn on_variant(&self) -> Option<&str> {
        if self.variants.contains_key("on") {
            return Some("on");
        }
        let mut others = self.variants.keys().filter(|v| **v != self.default_variant);
        match (others.next(), others.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// A flag's state in one environment. A flag no environment set is [`FlagState::Off`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum FlagState {
    /// Serves the default variant to everyone (reason DISABLED): the kill switch.
    #[default]
    Off,
    /// Serves one variant to everyone (reason STATIC).
    On {
        /// The variant served.
        variant: String,
    },
    /// The first rule that matches decides; none matching serves the default (reason DEFAULT).
    Rules {
        /// In order; at least one.
        #[cfg_attr(feature = "schema", schema(min_items = 1))]
        rules: Vec<Rule>,
    },
}

/// One rule: when its condition holds (or always, without one), serve a variant or a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Rule {
    /// The condition on the evaluation context; none matches everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Served to a context that matches: one variant (reason TARGETING_MATCH)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// ...or a sticky fractional split of the variants by weight (reason SPLIT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Weighted>,
}

/// A variant's share of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Weighted {
    /// The variant.
    pub variant: String,
    /// Its weight; shares are weight over the sum of weights.
    #[serde(deserialize_with = "whole_number")]
    #[cfg_attr(
        feature = "schema",
        schema(format = "uint32", maximum = 4294967295_u64)
    )]
    pub weight: u32,
}

/// A u32 written as a JSON integer or as a float without a fraction (`10.0`), which JSON
/// Schema counts as an integer too.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    let whole = n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    });
    whole.and_then(|w| u32::try_from(w).ok()).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "a weight is a whole number from 0 to {}, not {n}",
            u32::MAX
        ))
    })
}

/// What `semver::VersionReq::parse` accepts (a `semver` condition's range), for the API's
/// schemas: `*` alone, or 1 to 32 comparators separated by commas, each an optional operator
/// and a version whose minor and patch may be left out or wildcards; spaces only where the
/// parser skips them, no leading zeros, numbers that fit in 64 bits.
pub const SEMVER_RANGE_PATTERN: &str = concat!(
    "^ *([*xX] *|",
    "(=|>=?|<=?|~|\\^)? *(0|[1-9][0-9]{0,18})",
    "(\\.([*xX](\\.[*xX])?|(0|[1-9][0-9]{0,18})(\\.([*xX]|(0|[1-9][0-9]{0,18})",
    "(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?",
    "(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?))?))? *",
    "(, *(=|>=?|<=?|~|\\^)? *(0|[1-9][0-9]{0,18})",
    "(\\.([*xX](\\.[*xX])?|(0|[1-9][0-9]{0,18})(\\.([*xX]|(0|[1-9][0-9]{0,18})",
    "(-(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?",
    "(\\+[0-9A-Za-z-]+(\\.[0-9A-Za-z-]+)*)?))?))? *){0,31})$"
);

/// An attribute condition: `attribute op value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Condition {
    /// The context attribute (`targetingKey` included).
    pub attribute: String,
    /// How it is compared.
    pub op: Op,
    /// With what: a JSON value (a list for `in`, a range for `semver`, a pattern for `regex`).
    #[cfg_attr(feature = "schema", schema(value_type = Value))]
    pub value: Value,
}

/// How a condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Op {
    /// `==`: the same JSON value (numbers by value).
    Equals,
    /// `in`: one of a list.
    In,
    /// `semver`: a version within a range (`>=2.0.0, <3`).
    Semver,
    /// `regex`: a string matching a pattern.
    Regex,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
}

impl Op {
    const ALL: [(&'static str, Op); 8] = [
        ("==", Op::Equals),
        ("in", Op::In),
        ("semver", Op::Semver),
        ("regex", Op::Regex),
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];

    fn symbol(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("?", |(s, _)| s)
    }
}

/// Why a flag was served what it was, as OpenFeature names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Reason {
    /// The flag is on for everyone.
    Static,
    /// A rule's condition matched.
    TargetingMatch,
    /// A fractional split placed the key.
    Split,
    /// The flag is off.
    Disabled,
    /// No rule matched.
    Default,
}

/// What an evaluation served.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The variant's value.
    pub value: Value,
    /// The variant's name.
    pub variant: String,
    /// Why.
    pub reason: Reason,
}

/// Why a flag could not be evaluated, as OpenFeature's error codes name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A split needs a `targetingKey` and the context has none.
    #[error("flag `{0}` splits by targeting key and the context has no targetingKey")]
    TargetingKeyMissing(String),
    /// The context has an attribute of a kind a rule cannot compare.
    #[error("{0}")]
    InvalidContext(String),
    /// The state names what the config no longer declares.
    #[error("{0}")]
    General(String),
}

impl EvalError {
    /// OpenFeature's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TargetingKeyMissing(_) => "TARGETING_KEY_MISSING",
            Self::InvalidContext(_) => "INVALID_CONTEXT",
            Self::General(_) => "GENERAL",
        }
    }
}

/// Evaluates `flag` in `state` for `context` (an OFREP context: `targetingKey` and
/// attributes).
pub fn evaluate(
    flag: &FlagConfig,
    state: &FlagState,
    context: &Map<String, Value>,
) -> Result<Evaluation, EvalError> {
    let serve = |variant: &str, reason: Reason| match flag.variants.get(variant) {
        Some(value) => Ok(Evaluation {
            value: value.clone(),
            variant: variant.to_owned(),
            reason,
        }),
        None => Err(EvalError::General(format!(
            "flag `{}` serves variant `{variant}`, which the config no longer declares; set the flag again",
            flag.key
        ))),
    };
    match state {
        FlagState::Off => serve(&flag.default_variant, Reason::Disabled),
        FlagState::On { variant } => serve(variant, Reason::Static),
        FlagState::Rules { rules } => {
            for rule in rules {
                if let Some(c) = &rule.when
                    && !matches(c, context)?
                {
                    continue;
                }
                if let Some(variant) = &rule.variant {
                    return serve(variant, Reason::TargetingMatch);
                }
                let Some(key) = context.get("targetingKey").and_then(Value::as_str) else {
                    return Err(EvalError::TargetingKeyMissing(flag.key.clone()));
                };
                let weights: Vec<(String, u32)> = rule
                    .split
                    .iter()
                    .map(|w| (w.variant.clone(), w.weight))
                    .collect();
                if let Some(variant) = split(&flag.key, key, &weights) {
                    return serve(variant, Reason::Split);
                }
            }
            serve(&flag.default_variant, Reason::Default)
        }
    }
}

fn matches(c: &Condition, context: &Map<String, Value>) -> Result<bool, EvalError> {
    let Some(seen) = context.get(&c.attribute) else {
        return Ok(false);
    };
    let number = |v: &Value| v.as_f64();
    Ok(match c.op {
        Op::Equals => same(seen, &c.value),
        Op::In => c
            .value
            .as_array()
            .is_some_and(|list| list.iter().any(|v| same(seen, v))),
        Op::Regex => match (seen.as_str(), c.value.as_str()) {
            (Some(text), Some(pattern)) => regex_lite::Regex::new(pattern)
                .map(|r| r.is_match(text))
                .unwrap_or(false),
            _ => false,
        },
        Op::Semver => {
            let Some(text) = seen.as_str() else {
                return Ok(false);
            };
            let version = semver::Version::parse(text.trim_start_matches('v')).map_err(|e| {
                EvalError::InvalidContext(format!(
                    "attribute `{}` = `{text}` is not a semantic version ({e})",
                    c.attribute
                ))
            })?;
            c.value
                .as_str()
                .and_then(|r| semver::VersionReq::parse(r).ok())
                .is_some_and(|req| req.matches(&version))
        }
        Op::Gt | Op::Ge | Op::Lt | Op::Le => match (number(seen), number(&c.value)) {
            (Some(a), Some(b)) => match c.op {
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                _ => a <= b,
            },
            _ => false,
        },
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Why [`check`] refused a state, in words that say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagRefusal {
    /// The state is not well formed: no rules, a rule with both or neither of a variant and a
    /// split, a split of zero weights, a condition its comparison cannot judge. The API
    /// document states each of these, so a client can tell without asking.
    #[error("{0}")]
    Malformed(String),
    /// The state is well formed but names a variant the flag does not declare: which variants
    /// exist is the config's to say.
    #[error("flag `{flag}` has no variant `{variant}`; its variants are {variants}")]
    UnknownVariant {
        /// The flag's key.
        flag: String,
        /// The variant named.
        variant: String,
        /// Those it declares, comma separated.
        variants: String,
    },
}

/// Checks that `state` is well formed and names only variants `flag` declares.
pub fn check(flag: &FlagConfig, state: &FlagState) -> Result<(), FlagRefusal> {
    well_formed(state).map_err(FlagRefusal::Malformed)?;
    let named: Vec<&str> = match state {
        FlagState::Off => Vec::new(),
        FlagState::On { variant } => vec![variant],
        FlagState::Rules { rules } => rules
            .iter()
            .flat_map(|r| r.variant.iter().chain(r.split.iter().map(|w| &w.variant)))
            .map(String::as_str)
            .collect(),
    };
    match named.into_iter().find(|v| !flag.variants.contains_key(*v)) {
        Some(variant) => Err(FlagRefusal::UnknownVariant {
            flag: flag.key.clone(),
            variant: variant.to_owned(),
            variants: flag.variants.keys().cloned().collect::<Vec<_>>().join(", "),
        }),
        None => Ok(()),
    }
}

/// Checks that every rule of `state` can be judged, whatever the flag.
fn well_formed(state: &FlagState) -> Result<(), String> {
    let FlagState::Rules { rules } = state else {
        return Ok(());
    };
    if rules.is_empty() {
        return Err("rules need at least one rule (or set the flag on or off)".into());
    }
    for rule in rules {
        match (&rule.variant, rule.split.is_empty()) {
            (Some(_), true) => {}
            (None, false) if rule.split.iter().all(|w| w.weight == 0) => {
                return Err("a split needs a weight above 0".into());
            }
            (None, false) => {}
            _ => {
                return Err(
                    "a rule serves either one `variant` or a `split`, not both or neither".into(),
                );
            }
        }
        if let Some(c) = &rule.when {
            check_condition(c)?;
        }
    }
    Ok(())
}

fn check_condition(c: &Condition) -> Result<(), String> {
    let bad = |what: &str| Err(format!("`{} {}`: {what}", c.attribute, c.op.symbol()));
    match c.op {
        Op::Equals => Ok(()),
        Op::In if c.value.is_array() => Ok(()),
        Op::In => bad("`in` takes a list, for example [\"pro\", \"team\"]"),
        Op::Regex => match c.value.as_str().map(regex_lite::Regex::new) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => bad(&format!("the pattern does not compile: {e}")),
            None => bad("`regex` takes a pattern string"),
        },
        Op::Semver => match c.value.as_str().map(semver::VersionReq::parse) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => bad(&format!("the range does not parse: {e}")),
            None => bad("`semver` takes a range string, for example \">=2.0.0\""),
        },
        Op::Gt | Op::Ge | Op::Lt | Op::Le if c.value.is_number() => Ok(()),
        Op::Gt | Op::Ge | Op::Lt | Op::Le => bad("numeric comparisons take a number"),
    }
}

/// Parses a rule as the command line writes it: `ATTRIBUTE OP VALUE -> VARIANT`, for example
/// `plan in ["pro","team"] -> on`, `version semver ">=2.0.0" -> on`, `email regex "@corp$" ->
/// on`, `age >= 18 -> on`. VALUE is JSON, or a bare word taken as a string.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    let usage = || {
        format!(
            "rule `{text}` is not ATTRIBUTE OP VALUE -> VARIANT (OP one of ==, in, semver, regex, >, >=, <, <=), for example 'plan in [\"pro\",\"team\"] -> on'"
        )
    };
    let (condition, variant) = text.rsplit_once("->").ok_or_else(usage)?;
    let variant = variant.trim();
    let condition = condition.trim();
    let (attribute, rest) = condition
        .split_once(char::is_whitespace)
        .ok_or_else(usage)?;
    let rest = rest.trim_start();
    let (op, value) = Op::ALL
        .iter()
        .find_map(|(symbol, op)| rest.strip_prefix(symbol).map(|v| (*op, v.trim())))
        .ok_or_else(usage)?;
    if variant.is_empty() || value.is_empty() {
        return Err(usage());
    }
    // A quoted pattern need not be valid JSON (`"@corp\.example$"` keeps its backslash).
    let value = serde_json::from_str(value).unwrap_or_else(|_| {
        let unquoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        Value::String(unquoted.unwrap_or(value).to_owned())
    });
    let condition = Condition {
        attribute: attribute.to_owned(),
        op,
        value,
    };
    check_condition(&condition)?;
    Ok(Rule {
        when: Some(condition),
        variant: Some(variant.to_owned()),
        split: Vec::new(),
    })
}

/// Parses `10%` (or `10`; whole percents only) into a percent in 0..=100.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_end_matches('%');
    match digits.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!(
            "`{text}` is not a whole percent from 0% to 100%, for example --rollout 10%"
        )),
    }
}

impl fmt::Display for FlagState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlagState::Off => write!(f, "off"),
            FlagState::On { variant } => write!(f, "on ({variant})"),
            FlagState::Rules { rules } => {
                let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
                write!(f, "rules: {}", rules.join("; "))
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.when {
            write!(f, "{} {} {} -> ", c.attribute, c.op.symbol(), c.value)?;
        }
        match &self.variant {
            Some(v) => write!(f, "{v}"),
            None => {
                let total: u64 = self
                    .split
                    .iter()
                    .map(|w| u64::from(w.weight))
                    .sum::<u64>()
                    .max(1);
                let parts: Vec<String> = self
                    .split
                    .iter()
                    .map(|w| format!("{}% {}", u64::from(w.weight) * 100 / total, w.variant))
                    .collect();
                write!(f, "{}", parts.join(" / "))
            }
        }
    }
}

/// A state for `flag set`: the given rules in order, then, with a rollout, `percent`% of
/// targeting keys to `on` and the rest to the flag's default variant.
pub fn with_rollout(
    default_variant: &str,
    mut rules: Vec<Rule>,
    rollout_to: Option<(u32, &str)>,
) -> FlagState {
    if let Some((percent, on)) = rollout_to {
        rules.push(Rule {
            when: None,
            variant: None,
            split: rollout(percent, on, default_variant)
                .into_iter()
                .map(|(variant, weight)| Weighted { variant, weight })
                .collect(),
        });
    }
    FlagState::Rules { rules }
}

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

    fn checkout() -> FlagConfig {
        FlagConfig {
            key: "new-checkout".into(),
            kind: FlagType::Boolean,
            description: None,
            variants: [
                ("on".to_owned(), Value::Bool(true)),
                ("off".to_owned(), Value::Bool(false)),
            ]
            .into_iter()
            .collect(),
            default_variant: "off".into(),
        }
    }

    fn context(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn off_on_and_rules_serve_with_openfeature_reasons() {
        let flag = checkout();
        let ctx = context(
            r#"{"targetingKey":"u1","plan":"pro","version":"2.3.1","age":30,"email":"a@corp.example"}"#,
        );
        let e = evaluate(&flag, &FlagState::Off, &ctx).unwrap();
        assert_eq!(
            (e.value, e.variant.as_str(), e.reason),
            (Value::Bool(false), "off", Reason::Disabled)
        );
        let on = FlagState::On {
            variant: "on".into(),
        };
        assert_eq!(evaluate(&flag, &on, &ctx).unwrap().reason, Reason::Static);
        for rule in [
            r#"plan == "pro" -> on"#,
            r#"plan in ["pro","team"] -> on"#,
            r#"version semver ">=2.0.0, <3" -> on"#,
            r#"email regex "@corp\.example$" -> on"#,
            "age >= 18 -> on",
            "age > 29.5 -> on",
            "plan == pro -> on",
        ] {
            let state = with_rollout(&flag.default_variant, vec![parse_rule(rule).unwrap()], None);
            check(&flag, &state).unwrap();
            let e = evaluate(&flag, &state, &ctx).unwrap();
            assert_eq!(
                (e.variant.as_str(), e.reason),
                ("on", Reason::TargetingMatch),
                "{rule}"
            );
        }
        for rule in [
            r#"plan == "free" -> on"#,
            "age < 18 -> on",
            r#"version semver "<2" -> on"#,
            "missing == 1 -> on",
        ] {
            let state = with_rollout(&flag.default_variant, vec![parse_rule(rule).unwrap()], None);
            let e = evaluate(&flag, &state, &ctx).unwrap();
            assert_eq!(
                (e.variant.as_str(), e.reason),
                ("off", Reason::Default),
                "{rule}"
            );
        }
    }

    #[test]
    fn a_rollout_needs_a_targeting_key_and_bad_states_are_refused() {
        let flag = checkout();
        let state = with_rollout(&flag.default_variant, vec![], Some((10, "on")));
        assert_eq!(
            evaluate(&flag, &state, &context("{}")).unwrap_err().code(),
            "TARGETING_KEY_MISSING"
        );
        assert_eq!(
            evaluate(&flag, &state, &context(r#"{"targetingKey":"k"}"#))
                .unwrap()
                .reason,
            Reason::Split
        );
        let wrong = FlagState::On {
            variant: "blue".into(),
        };
        assert!(
            check(&flag, &wrong)
                .unwrap_err()
                .to_string()
                .contains("variants are off, on")
        );
        assert!(
            parse_rule("plan in pro -> on")
                .unwrap_err()
                .contains("takes a list")
        );
        assert!(parse_rule("version semver \"=>x\" -> on").is_err());
        assert!(
            parse_rule("nonsense")
                .unwrap_err()
                .contains("ATTRIBUTE OP VALUE")
        );
        assert_eq!(parse_percent("10%"), Ok(10));
        assert!(parse_percent("101%").is_err());
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<FlagState>(&text).unwrap(), state);
        let floats = text.replace("10}", "10.0}");
        assert_eq!(
            serde_json::from_str::<FlagState>(&floats).unwrap(),
            state,
            "{floats}"
        );
        assert!(serde_json::from_str::<FlagState>(&text.replace("10}", "10.5}")).is_err());
        assert_eq!(state.to_string(), "rules: 10% on / 90% off");
    }

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

    mod semver_range {
        use super::super::SEMVER_RANGE_PATTERN;
        use proptest::prelude::*;

        fn pieces() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "0",
                "1",
                "01",
                "12",
                "9999999999999999999",
                "18446744073709551616",
                ".",
                ",",
                " ",
                "*",
                "x",
                "X",
                ">=",
                ">",
                "<=",
                "<",
                "=",
                "~",
                "^",
                "-",
                "+",
                "a",
                "rc",
                "-1",
                "\t",
                "_",
            ]);
            prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            /// The range pattern the API document states accepts exactly what the parser
            /// accepts, on text made of the pieces ranges are made of and on any text.
            #[test]
            fn agrees_with_the_parser(text in prop_oneof![pieces(), "\\PC{0,12}"]) {
                let pattern = regex_lite::Regex::new(SEMVER_RANGE_PATTERN).unwrap();
                prop_assert_eq!(
                    pattern.is_match(&text),
                    semver::VersionReq::parse(&text).is_ok(),
                    "{:?}",
                    text
                );
            }
        }
    }

    #[test]
    fn the_semver_range_pattern_takes_ranges_people_write() {
        let pattern = regex_lite::Regex::new(SEMVER_RANGE_PATTERN).unwrap();
        for range in [
            ">=2.0.0, <3",
            "^1.2",
            "~1.2.3-rc.1+build.5",
            "*",
            " 1.x",
            "=1.2.*",
            ">= 1 , < 2",
        ] {
            assert!(pattern.is_match(range), "{range}");
            assert!(semver::VersionReq::parse(range).is_ok(), "{range}");
        }
        let many = vec!["1"; 33].join(",");
        assert!(!pattern.is_match(&many) && semver::VersionReq::parse(&many).is_err());
        let most = vec!["1"; 32].join(",");
        assert!(pattern.is_match(&most) && semver::VersionReq::parse(&most).is_ok());
    }
}
