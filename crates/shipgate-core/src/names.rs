//! Names a user types: apps, environments, versions, digests and `app@version` references.
//! Each type parses its text once; holding one is the proof that it is well formed.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused, with what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

fn check_identifier(kind: &str, s: &str) -> Result<(), NameError> {
    let ok_first = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if s.is_empty() || s.len() > 63 || !ok_first || !ok_rest {
        return Err(NameError(format!(
            "`{s}` is not a valid {kind} name: use 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
        )));
    }
    Ok(())
}

macro_rules! text_impls {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}
/// The OpenAPI schema of a name: a string with the pattern its `parse` accepts.
macro_rules! string_schema {
    ($name:ident, $pattern:expr, $description:expr) => {
        #[cfg(feature = "schema")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .description(Some($description))
                    .into()
            }
        }
        #[cfg(feature = "schema")]
        impl utoipa::ToSchema for $name {}
    };
}

/// What [`AppName::parse`] and [`EnvName::parse`] accept.
pub const IDENTIFIER_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";
/// What [`Version::parse`] accepts.
pub const VERSION_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$";

string_schema!(
    AppName,
    IDENTIFIER_PATTERN,
    "an app of the config: 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
);
string_schema!(
    EnvName,
    IDENTIFIER_PATTERN,
    "an environment of the config, named like an app"
);
string_schema!(
    Version,
    VERSION_PATTERN,
    "1 to 128 letters, digits, `.`, `-`, `_` or `+`, starting with a letter or digit"
);
string_schema!(
    Digest,
    "^sha256:[0-9a-f]{64}$",
    "the sha256 of the artifact as uploaded"
);
string_schema!(
    ReleaseRef,
    "^[a-z0-9][a-z0-9_-]{0,62}@[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$",
    "APP@VERSION"
);

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses a name, refusing characters that could not be used in paths and host names.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_identifier($kind, s)?;
                Ok(Self(s.to_owned()))
            }
            /// The name as typed.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        text_impls!($name);
    };
}

identifier!(
    /// The name of an app, as in `[apps.web]`.
    AppName,
    "app"
);
identifier!(
    /// The name of an environment, as in `[environments.staging]`.
    EnvName,
    "environment"
);

/// What [`HostName::parse`] accepts.
pub const HOST_NAME_PATTERN: &str = "^(?!local$)[a-z0-9][a-z0-9-]{0,62}$";

string_schema!(
    HostName,
    HOST_NAME_PATTERN,
    "a host agents join as: 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit, and not `local`"
);

/// The name of a host an agent joins as (`shipgate host add web-1`): a DNS label, since it
/// goes into the host's certificate, and never `local`, which names the server's own machine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);

impl HostName {
    /// Parses a host's name.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let label = s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !label || s == "local" {
            return Err(NameError(format!(
                "`{s}` cannot name a host: use 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit (`local` is the server's own machine)"
            )));
        }
        Ok(Self(s.to_owned()))
    }
    /// The name as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
text_impls!(HostName);

string_schema!(
    EnvScope,
    "^[a-z0-9][a-z0-9_-]{0,62}\\*?$",
    "an environment a token is limited to, or a prefix followed by `*` (`preview-*`) for every environment whose name starts with it"
);

/// An environment a token is limited to: a name, or a prefix and `*` (`preview-*`), which
/// covers every environment named so, on-demand ones included.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvScope(String);

impl EnvScope {
    /// Parses `NAME` or `PREFIX*`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let name = s.strip_suffix('*').unwrap_or(s);
        check_identifier("environment", name).map_err(|_| {
            NameError(format!(
                "`{s}` is not an environment or a prefix of one: write a name (staging) or a prefix followed by `*` (preview-*)"
            ))
        })?;
        Ok(Self(s.to_owned()))
    }
    /// The scope as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether it covers `env`.
    pub fn covers(&self, env: &EnvName) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => env.as_str().starts_with(prefix),
            None => self.0 == env.as_str(),
        }
    }
    /// The environment it names, unless it is a prefix.
    pub fn env(&self) -> Option<EnvName> {
        EnvName::parse(&self.0).ok()
    }
}
text_impls!(EnvScope);

/// A release version as registered (`1.4.2`, `2026.11.22-3`, `v7+build.5`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(String);

impl Version {
    /// Parses a version: 1 to 128 characters among letters, digits, `.`, `-`, `_` and `+`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
        if !ok {
            return Err(NameError(format!(
                "`{s}` is not a valid version: use letters, digits, `.`, `-`, `_` or `+`, starting with a letter or digit (for example 1.4.2)"
            )));
        }
        Ok(Self(s.to_owned()))
    }
    /// The version as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The sha256 digest of a release artifact, written `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let hex = s.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Err(NameError(format!(
                "`{s}` is not a digest: expected `sha256:` followed by 64 lowercase hex digits"
            )));
        }
        Ok(Self(s.to_owned()))
    }
    /// Builds a digest from the 32 bytes of a sha256 sum.
    pub fn from_sha256(bytes: &[u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(bytes)))
    }
    /// The full text, `sha256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The hex part alone, used as the artifact's file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
    /// The first 12 hex digits, for people.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

text_impls!(Version);
text_impls!(Digest);

/// `app@version`, as typed in `shipgate promote web@1.4.2 --to testing`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseRef {
    /// The app.
    pub app: AppName,
    /// The version of that app.
    pub version: Version,
}

impl ReleaseRef {
    /// Parses `app@version`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (app, version) = s.split_once('@').ok_or_else(|| {
            NameError(format!(
                "`{s}` names no version: write APP@VERSION, for example web@1.4.2"
            ))
        })?;
        Ok(Self {
            app: AppName::parse(app)?,
            version: Version::parse(version)?,
        })
    }
}

/// The sequence number the store gave a promotion; the key every step of it is recorded under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", schema(value_type = i64))]
pub struct PromotionId(pub i64);

impl fmt::Display for PromotionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The key of one process the server runs for a promotion: an instance of the release
/// (`web-production-12-1733150000-1`) or one of its verification tests (`web-production-12-test-1`).
/// Every operation on the process, its log file and the marker in its environment use it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "schema", schema(value_type = String, example = "web-production-12-1733150000-1"))]
pub struct InstanceId(String);

impl InstanceId {
    /// Instance `attempt` of promotion `promotion` of `app` into `env`, started by the server
    /// that booted at `boot` (so a restarted server never reuses a key).
    pub fn instance(
        app: &AppName,
        env: &EnvName,
        promotion: PromotionId,
        boot: i64,
        attempt: &str,
    ) -> Self {
        Self(format!("{app}-{env}-{promotion}-{boot}{attempt}"))
    }

    /// The process of verification test `n` (1-based) of a promotion.
    pub fn test(app: &AppName, env: &EnvName, promotion: PromotionId, n: usize) -> Self {
        Self(format!("{app}-{env}-{promotion}-test-{n}"))
    }

    /// A key read back from the store or a driver, as it was recorded.
    pub fn recorded(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it names a verification test's process rather than an instance of a release.
    pub fn is_test(&self) -> bool {
        self.0
            .rsplit_once("-test-")
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.app, self.version)
    }
}

impl Serialize for ReleaseRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReleaseRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for ReleaseRef {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_refuse_path_characters() {
        assert!(AppName::parse("web").is_ok());
        assert!(AppName::parse("../web").is_err());
        assert!(EnvName::parse("Prod").is_err());
        assert!(Version::parse("1.4.2").is_ok());
        assert!(Version::parse("1/2").is_err());
        assert!(Version::parse("..").is_err());
        assert!(HostName::parse("web-1").is_ok());
        for bad in ["local", "web_1", "-web", "", "Web"] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn release_ref_needs_an_at() {
        let r = ReleaseRef::parse("web@1.4.2").unwrap();
        assert_eq!(r.to_string(), "web@1.4.2");
        let e = ReleaseRef::parse("web").unwrap_err();
        assert!(e.0.contains("APP@VERSION"));
    }

    #[test]
    fn digest_shape() {
        let d = Digest::from_sha256(&[0xab; 32]);
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(d.short(), "abababababab");
        assert!(Digest::parse("sha256:ABC").is_err());
    }

    proptest! {
        /// The patterns the API document states accept exactly what `parse` accepts.
        #[test]
        fn the_documented_patterns_agree_with_parse(s in "[a-zA-Z0-9._+@/ -]{0,70}|\\PC{0,8}") {
            let identifier = regex_lite::Regex::new(IDENTIFIER_PATTERN).unwrap();
            let version = regex_lite::Regex::new(VERSION_PATTERN).unwrap();
            prop_assert_eq!(identifier.is_match(&s), AppName::parse(&s).is_ok());
            prop_assert_eq!(version.is_match(&s), Version::parse(&s).is_ok());
            // regex-lite has no lookahead: the pattern without `(?!local$)`, and `local` apart.
            let label = HOST_NAME_PATTERN.replace("(?!local$)", "");
            prop_assert_ne!(&label, HOST_NAME_PATTERN);
            let label = regex_lite::Regex::new(&label).unwrap();
            prop_assert_eq!(label.is_match(&s) && s != "local", HostName::parse(&s).is_ok());
        }

        #[test]
        fn parsed_versions_never_contain_separators(s in "\\PC{0,20}") {
            if let Ok(v) = Version::parse(&s) {
                prop_assert!(!v.as_str().contains('/') && !v.as_str().starts_with('.'));
            }
        }
    }
}
