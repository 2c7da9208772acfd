//! Secret values never leave shipgate in clear: every text that is stored or shown (test output,
//! facts, gate output) passes through a [`Redactor`] first, which replaces each known secret
//! value with `[secret NAME]`. Secrets shipgate makes (tokens, keys) are random hex, and are
//! stored only as [`hash`].

use crate::config::EnvironmentConfig;
use crate::parity::is_secret;

/// `bytes` random bytes in hex, from the operating system's generator.
pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness available: {e}"))?;
    Ok(hex::encode(buf))
}

/// The hex sha256 under which a secret (a token, a key) is stored; the secret itself never is.
pub fn hash(secret: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Whether `name` may name a token or a key: 1 to 64 letters, digits, `-`, `_`, `.` or `@`
/// (what the API's schemas declare as `^[A-Za-z0-9._@-]{1,64}$`).
pub fn is_credential_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@');
    !name.is_empty() && name.len() <= 64 && name.chars().all(allowed)
}

/// Values shorter than this are not replaced: a one- or two-letter value would blank out
/// ordinary words everywhere, and is no secret worth the name.
const SHORTEST: usize = 4;

/// The secret values of one environment, by variable name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// `(name, value)`, longest value first, so a value containing another is replaced whole.
    secrets: Vec<(String, String)>,
}

impl Redactor {
    /// The secrets of an environment: each variable it declares in `secrets`, or whose name or
    /// value looks secret (`*_PASSWORD`, `user:password@` in a URL), and the password inside
    /// such a URL on its own.
    pub fn of(env: &EnvironmentConfig) -> Self {
        let declared: Vec<&String> = env.secrets.iter().collect();
        let mut secrets = Vec::new();
        for (name, value) in &env.vars {
            if !is_secret(name, &[Some(value)], &declared) {
                continue;
            }
            secrets.push((name.clone(), value.clone()));
            if let Some(password) = url_password(value) {
                secrets.push((name.clone(), password.to_owned()));
            }
        }
        Self::new(secrets)
    }

    /// A redactor of these `(name, value)` pairs.
    pub fn new(mut secrets: Vec<(String, String)>) -> Self {
        secrets.retain(|(_, v)| v.len() >= SHORTEST);
        secrets.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.cmp(b)));
        secrets.dedup_by(|a, b| a.1 == b.1);
        Self { secrets }
    }

    /// This redactor and these `(name, value)` pairs too.
    pub fn with(self, more: Vec<(String, String)>) -> Self {
        Self::new(self.secrets.into_iter().chain(more).collect())
    }

    /// `text` with every secret value replaced by `[secret NAME]`, and every credential
    /// shipgate mints (API, join and experiment tokens, OFREP keys) by `[secret token]`,
    /// whether or not this environment knows its value.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.secrets {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[secret {name}]"));
            }
        }
        minted(&out)
    }
}

/// `text` with each credential shipgate mints replaced by `[secret token]`.
fn minted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sg") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let boundary = before
            .chars()
            .last()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let len = from
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(from.len());
        if boundary && is_minted(&from[..len]) {
            out.push_str("[secret token]");
            rest = &from[len..];
        } else {
            out.push_str("sg");
            rest = &from[2..];
        }
    }
    out.push_str(rest);
    out
}

/// Whether `word` is a credential as shipgate mints them: `sg_` and 64 hex digits (API and
/// join tokens), `sgf_` and 48 (OFREP keys), `sgfi_ENV_` and 40 (instance OFREP keys).
fn is_minted(word: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() >= n && s.chars().all(|c| c.is_ascii_hexdigit());
    if let Some(h) = word.strip_prefix("sg_") {
        return hex(h, 64);
    }
    if let Some(h) = word.strip_prefix("sgf_") {
        return hex(h, 48);
    }
    word.strip_prefix("sgfi_")
        .and_then(|r| r.rsplit_once('_'))
        .is_some_and(|(_, h)| hex(h, 40))
}

/// The password of `scheme://user:password@host...`, if the value has one.
fn url_password(v: &str) -> Option<&str> {
    let (_, rest) = v.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    Some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_credential_shipgate_mints_is_masked_whoever_holds_it() {
        let token = format!("sg_{}", "a1".repeat(32));
        let key = format!("sgf_{}", "0f".repeat(24));
        let instance = format!("sgfi_pr-7_{}", "9".repeat(40));
        let text = format!("SHIPGATE_TOKEN={token}\nkey {key}, {instance}.\nBearer {token}");
        let shown = Redactor::default().redact(&text);
        assert_eq!(
            shown,
            "SHIPGATE_TOKEN=[secret token]\nkey [secret token], [secret token].\nBearer [secret token]"
        );
        // Words that merely start the same way stay.
        for plain in ["sg_short", "msg_0123", "sgfi_env_xyz", "sg-staging"] {
            assert_eq!(Redactor::default().redact(plain), plain);
        }
    }

    fn env(lines: &str) -> EnvironmentConfig {
        let src = format!(
            "[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:8101\"\n{lines}\n"
        );
        crate::Config::parse(&src, std::path::Path::new("/p"))
            .unwrap()
            .environments
            .remove(0)
    }

    #[test]
    fn every_known_secret_value_is_replaced_by_its_name() {
        let r = Redactor::of(&env(
            "secrets = [\"SESSION\"]\nvars = { DB_PASSWORD = \"hunter22\", DATABASE_URL = \"postgres://app:pw-1234@db/shop\", SESSION = \"abcdef\", PLAIN = \"visible\", API_KEY = \"k\" }",
        ));
        let text =
            "pw hunter22; url postgres://app:pw-1234@db/shop; only pw-1234; abcdef; visible; k";
        assert_eq!(
            r.redact(text),
            "pw [secret DB_PASSWORD]; url [secret DATABASE_URL]; only [secret DATABASE_URL]; [secret SESSION]; visible; k"
        );
    }
}
