//! Checking an ID token from an OpenID Connect provider: its signature against the provider's
//! published keys (the JWKS), and its claims against this sign-in (issuer, client, time, nonce).
//! Also reading group claims and computing the PKCE challenge. Everything here is pure: the
//! caller fetches the key set and passes the time in.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jiff::Timestamp;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde_json::{Map, Value};

/// Base64url as providers write it: without padding as RFC 7515 says, but padded values from
/// looser providers are read too.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an ID token or a key set was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    /// The token or the key set is not what the standards describe (the text says which part).
    #[error("{0}")]
    Malformed(String),
    /// The token is signed with an algorithm other than RS256 or ES256 (`none` and the shared
    /// secret HS* ones included).
    #[error(
        "the ID token is signed with {0}, and shipgate accepts only RS256 and ES256: set the \
         client's ID token signature algorithm at the provider to RS256"
    )]
    UnsupportedAlg(String),
    /// The key set has no key for the token's `kid` (or, for a token without one, not exactly
    /// one key). The provider may have rotated its keys: fetch the key set again and retry once.
    #[error("{}", unknown_key_message(.0.as_deref()))]
    UnknownKey(Option<String>),
    /// The signature does not verify with the key the token names.
    #[error(
        "the ID token's signature does not verify with the provider's key: the token was \
         altered or signed by someone else; sign in again"
    )]
    BadSignature,
    /// The token was issued by another provider (or the configured issuer is spelled otherwise).
    #[error(
        "the ID token was issued by `{found}`, not by `{expected}`: set the issuer in shipgate's \
         config to exactly the `issuer` of the provider's /.well-known/openid-configuration"
    )]
    WrongIssuer {
        /// The token's `iss`.
        found: String,
        /// The issuer shipgate is configured with.
        expected: String,
    },
    /// The token was issued to another client.
    #[error(
        "the ID token was issued to {found}, not to this client ({expected}): set the client id \
         in shipgate's config to the one registered at the provider"
    )]
    WrongAudience {
        /// The token's audience (or its authorized party, when that is the mismatch).
        found: String,
        /// Shipgate's client id.
        expected: String,
    },
    /// The token's `exp` has passed (beyond the allowed clock skew).
    #[error(
        "the ID token expired at {exp}: sign in again (if this keeps happening, check this \
         server's clock)"
    )]
    Expired {
        /// When the token expired.
        exp: Timestamp,
    },
    /// The token's `nbf` or `iat` is later than now (beyond the allowed clock skew).
    #[error(
        "the ID token is not valid yet (issued or valid from a time ahead of this server's \
         clock): check that this server's clock is right, then sign in again"
    )]
    NotYetValid,
    /// The token's `nonce` is not the one this sign-in sent: it belongs to another sign-in, or
    /// it is replayed.
    #[error(
        "the ID token's nonce is not this sign-in's: start the sign-in again from shipgate's \
         sign-in page"
    )]
    NonceMismatch,
    /// A claim shipgate needs is absent.
    #[error(
        "the ID token has no `{0}` claim, which shipgate needs: check the client's settings at \
         the provider"
    )]
    MissingClaim(&'static str),
}

fn unknown_key_message(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!(
            "the provider's key set has no key `{kid}` for the ID token's algorithm: if the \
             provider rotated its keys, fetching the key set again finds it; otherwise check \
             that the issuer in shipgate's config is the provider that signed the token"
        ),
        None => "the ID token names no key (no `kid`) and the provider's key set does not hold \
                 exactly one key for its algorithm: set the provider to include `kid` in ID tokens"
            .to_owned(),
    }
}

/// The provider's signing keys, parsed from its JWKS document: only those that can check an
/// RS256 or ES256 signature. Encryption keys and keys of other types or curves are left out.
#[derive(Debug, Clone)]
pub(crate) struct Jwks {
    keys: Vec<Jwk>,
}

/// One usable key of the set.
#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: PublicKey,
}

/// A public key in the form ring verifies with.
#[derive(Debug, Clone)]
enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros (ring refuses those).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed P-256 point, 0x04 || x || y.
    P256(Vec<u8>),
}

/// The signature algorithms shipgate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Result<Alg, JwtError> {
        match name {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            other => Err(JwtError::UnsupportedAlg(other.to_owned())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

impl PublicKey {
    fn alg(&self) -> Alg {
        match self {
            PublicKey::Rsa { .. } => Alg::Rs256,
            PublicKey::P256(_) => Alg::Es256,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        let checked = match self {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(
                &RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            ),
            PublicKey::P256(point) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, signature)
            }
        };
        checked.map_err(|_| JwtError::BadSignature)
    }
}

impl Jwk {
    /// The key, or `None` when shipgate cannot verify with it (another type or curve, an
    /// encryption key, an RSA key under 2048 bits, or fields that do not decode).
    fn parse(value: &Value) -> Option<Jwk> {
        let field = |name: &str| value.get(name).and_then(Value::as_str);
        if field("use").is_some_and(|usage| usage != "sig") {
            return None;
        }
        let key = match field("kty")? {
            "RSA" => {
                let n = without_leading_zeros(BASE64URL.decode(field("n")?).ok()?);
                let e = without_leading_zeros(BASE64URL.decode(field("e")?).ok()?);
                // RSA_PKCS1_2048_8192_SHA256 takes moduli of 2048 to 8192 bits.
                if !(256..=1024).contains(&n.len()) || e.is_empty() {
                    return None;
                }
                PublicKey::Rsa { n, e }
            }
            "EC" if field("crv")? == "P-256" => {
                let mut point = vec![0x04];
                point.extend(coordinate(field("x")?)?);
                point.extend(coordinate(field("y")?)?);
                PublicKey::P256(point)
            }
            _ => return None,
        };
        if field("alg").is_some_and(|alg| alg != key.alg().name()) {
            return None;
        }
        Some(Jwk {
            kid: field("kid").map(str::to_owned),
            key,
        })
    }
}

fn without_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&byte| byte == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// A P-256 coordinate as 32 bytes, left-padded when a provider dropped leading zeros.
fn coordinate(base64url: &str) -> Option<[u8; 32]> {
    let bytes = BASE64URL.decode(base64url).ok()?;
    let mut padded = [0; 32];
    let start = padded.len().checked_sub(bytes.len())?;
    padded[start..].copy_from_slice(&bytes);
    Some(padded)
}

impl Jwks {
    /// Parses a JWKS document (the body at the provider's `jwks_uri`). Refused when it is not
    /// one, or when none of its keys can check an RS256 or ES256 signature.
    pub(crate) fn parse(json: &[u8]) -> Result<Jwks, JwtError> {
        let document: Value = serde_json::from_slice(json).map_err(|error| {
            JwtError::Malformed(format!(
                "the provider's key set is not JSON ({error}): check that `jwks_uri` in its \
                 /.well-known/openid-configuration points at its JWKS"
            ))
        })?;
        let Some(keys) = document.get("keys").and_then(Value::as_array) else {
            return Err(JwtError::Malformed(
                "the provider's key set has no `keys` array: check that `jwks_uri` in its \
                 /.well-known/openid-configuration points at its JWKS"
                    .to_owned(),
            ));
        };
        let keys: Vec<Jwk> = keys.iter().filter_map(Jwk::parse).collect();
        if keys.is_empty() {
            return Err(JwtError::Malformed(
                "the provider's key set holds no signing key shipgate can use (RSA of 2048 bits \
                 or more, or EC on P-256): set the client's ID token signature algorithm at the \
                 provider to RS256"
                    .to_owned(),
            ));
        }
        Ok(Jwks { keys })
    }

    /// Whether a token naming `kid` would find its key here; for a token without a `kid`,
    /// whether the set holds exactly one key. When not, the provider may have rotated its keys.
    #[cfg(test)]
    pub(crate) fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|key| key.kid.as_deref() == Some(kid)),
            None => self.keys.len() == 1,
        }
    }

    /// The key that verifies a token signed with `alg` naming `kid`.
    fn key_for(&self, kid: Option<&str>, alg: Alg) -> Result<&PublicKey, JwtError> {
        let found = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid) && key.key.alg() == alg),
            None => match self.keys.as_slice() {
                [only] if only.key.alg() == alg => Some(only),
                _ => None,
            },
        };
        found
            .map(|key| &key.key)
            .ok_or_else(|| JwtError::UnknownKey(kid.map(str::to_owned)))
    }
}

/// What an ID token must say to be accepted for this sign-in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    /// The provider's issuer, compared exactly with `iss`.
    pub(crate) issuer: &'a str,
    /// Shipgate's client id at the provider, looked for in `aud`.
    pub(crate) audience: &'a str,
    /// The nonce this sign-in sent, which `nonce` must repeat (`None`: not checked).
    pub(crate) nonce: Option<&'a str>,
    /// The time now.
    pub(crate) now: Timestamp,
    /// Clock skew allowed between the provider and this server, in seconds.
    pub(crate) leeway_secs: i64,
}

/// Verifies a compact-serialized ID token (RS256 or ES256) with the provider's keys, then its
/// claims against `expect`, and returns the claims.
///
/// [`JwtError::UnknownKey`] may mean the provider rotated its keys: fetch the key set again and
/// call this once more.
pub(crate) fn verify(
    token: &str,
    jwks: &Jwks,
    expect: &Expect,
) -> Result<Map<String, Value>, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_part, payload_part, signature_part] = parts[..] else {
        return Err(JwtError::Malformed(if parts.len() == 5 {
            "the ID token is encrypted (JWE), which shipgate does not support: turn off ID token \
             encryption for the client at the provider"
                .to_owned()
        } else {
            format!(
                "the ID token has {} dot-separated parts, not 3: it is not a signed JWT",
                parts.len()
            )
        }));
    };
    let header = json_object(header_part, "header")?;
    if header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "the ID token's header lists critical extensions (`crit`), which shipgate does not \
             understand: turn them off for the client at the provider"
                .to_owned(),
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Alg::parse(alg)?,
        _ => return Err(malformed("the ID token's header has no `alg` string")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(malformed("the ID token's `kid` is not a string")),
    };
    let key = jwks.key_for(kid, alg)?;
    let signature = BASE64URL.decode(signature_part).map_err(|error| {
        malformed(&format!(
            "the ID token's signature is not base64url ({error})"
        ))
    })?;
    // The signed message is the first two parts as they were sent, dot included.
    let signed = &token[..header_part.len() + 1 + payload_part.len()];
    key.verify(signed.as_bytes(), &signature)?;
    let claims = json_object(payload_part, "claims")?;
    check_claims(&claims, expect)?;
    Ok(claims)
}

fn malformed(what: &str) -> JwtError {
    JwtError::Malformed(format!(
        "{what}: the provider sent something that is not a valid ID token; sign in again"
    ))
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = BASE64URL.decode(part).map_err(|error| {
        malformed(&format!(
            "the ID token's {what} part is not base64url ({error})"
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|error| {
        malformed(&format!(
            "the ID token's {what} part is not a JSON object ({error})"
        ))
    })
}

fn check_claims(claims: &Map<String, Value>, expect: &Expect) -> Result<(), JwtError> {
    let issuer = string_claim(claims, "iss")?;
    if issuer != expect.issuer {
        return Err(JwtError::WrongIssuer {
            found: issuer.to_owned(),
            expected: expect.issuer.to_owned(),
        });
    }
    check_audience(claims, expect.audience)?;

    let now = expect.now.as_second();
    let exp = time_claim(claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if exp <= now.saturating_sub(expect.leeway_secs) {
        return Err(JwtError::Expired {
            // In range: it is earlier than now, and later than year -9999.
            exp: Timestamp::from_second(exp).unwrap_or(Timestamp::MIN),
        });
    }
    for name in ["nbf", "iat"] {
        if time_claim(claims, name)?.is_some_and(|at| at > now.saturating_add(expect.leeway_secs)) {
            return Err(JwtError::NotYetValid);
        }
    }

    if let Some(nonce) = expect.nonce
        && string_claim(claims, "nonce")? != nonce
    {
        return Err(JwtError::NonceMismatch);
    }
    Ok(())
}

/// `aud` is the client id or a list holding it; with several audiences, `azp` (when present)
/// must be the client, as OpenID Connect Core 3.1.3.7 asks.
fn check_audience(claims: &Map<String, Value>, audience: &str) -> Result<(), JwtError> {
    let audiences: Vec<&str> = match claims.get("aud") {
        None => return Err(JwtError::MissingClaim("aud")),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        Some(_) => {
            return Err(malformed(
                "the ID token's `aud` is neither a string nor a list",
            ));
        }
    };
    if audiences.is_empty() {
        return Err(JwtError::MissingClaim("aud"));
    }
    if !audiences.contains(&audience) {
        return Err(JwtError::WrongAudience {
            found: audiences.join(", "),
            expected: audience.to_owned(),
        });
    }
    if audiences.len() > 1
        && let Some(party) = claims.get("azp")
        && party.as_str() != Some(audience)
    {
        return Err(JwtError::WrongAudience {
            found: format!("{party} (its authorized party, `azp`)"),
            expected: audience.to_owned(),
        });
    }
    Ok(())
}

fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, JwtError> {
    match claims.get(name) {
        None => Err(JwtError::MissingClaim(name)),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(malformed(&format!(
            "the ID token's `{name}` is not a string"
        ))),
    }
}

/// A NumericDate claim in whole seconds (fractions dropped), `None` when absent.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => match number.as_i64() {
            Some(seconds) => Ok(Some(seconds)),
            // Saturating: a date past i64 seconds is as good as never.
            None => Ok(number.as_f64().map(|seconds| seconds.floor() as i64)),
        },
        Some(_) => Err(malformed(&format!(
            "the ID token's `{name}` is not a number of seconds"
        ))),
    }
}

/// The claim at `path` as a list of strings: a list (its non-string entries left out) or a
/// single string. `path` is a key (`groups`, also one with dots like
/// `https://example.com/groups`, which is looked up whole first) or keys into nested objects
/// joined by dots (`realm_access.roles`). `None` when there is no such claim, or it is neither a
/// string nor a list.
pub(crate) fn claim_strings(claims: &Map<String, Value>, path: &str) -> Option<Vec<String>> {
    match claim_at(claims, path)? {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(many) => Some(
            many.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

fn claim_at<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = object.get(path) {
        return Some(value);
    }
    // Longest key first, so a dotted key (a URL) wins over splitting it.
    path.rmatch_indices('.').find_map(|(dot, _)| {
        let inner = object.get(&path[..dot])?.as_object()?;
        claim_at(inner, &path[dot + 1..])
    })
}

/// Whether the provider left the groups claim at `path` out because the user is in too many
/// groups (Azure AD / Entra ID's "overage"): the claim is absent and `_claim_names` names it, or
/// `hasgroups` is true. The groups must then be read from the provider's API.
pub(crate) fn overage(claims: &Map<String, Value>, path: &str) -> bool {
    if claim_at(claims, path).is_some() {
        return false;
    }
    let first = path.split('.').next().unwrap_or(path);
    let named_elsewhere = claims
        .get("_claim_names")
        .and_then(Value::as_object)
        .is_some_and(|names| names.contains_key(path) || names.contains_key(first));
    let has_groups = match claims.get("hasgroups") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(flag)) => flag == "true",
        _ => false,
    };
    named_elsewhere || has_groups
}

/// The PKCE `code_challenge` for `verifier` with method S256: base64url, unpadded, of its
/// SHA-256 (RFC 7636 section 4.2).
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    };
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example.com/realms/ops";
    const CLIENT: &str = "shipgate";
    const NONCE: &str = "n-0S6_WzA2Mj";
    const NOW: i64 = 1_700_000_000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A provider with one RSA and one P-256 key, which signs tokens as it likes.
    struct Provider {
        rsa: RsaKeyPair,
        ec: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Provider {
        fn new() -> Provider {
            let rng = SystemRandom::new();
            let rsa = RsaKeyPair::from_pkcs8(include_bytes!("test_rsa.pk8")).unwrap();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let ec =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Provider { rsa, ec, rng }
        }

        fn rsa_jwk(&self) -> Value {
            let public = RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public());
            json!({"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
                   "n": b64(&public.n), "e": b64(&public.e)})
        }

        fn ec_jwk(&self) -> Value {
            let point = self.ec.public_key().as_ref();
            json!({"kty": "EC", "kid": "ec-1", "crv": "P-256",
                   "x": b64(&point[1..33]), "y": b64(&point[33..])})
        }

        /// Both keys, plus keys that must be left out.
        fn jwks(&self) -> Jwks {
            let mut encryption = self.rsa_jwk();
            encryption["kid"] = json!("enc-1");
            encryption["use"] = json!("enc");
            let document = json!({"keys": [
                self.rsa_jwk(),
                self.ec_jwk(),
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
                encryption,
            ]});
            Jwks::parse(document.to_string().as_bytes()).unwrap()
        }

        fn sign(&self, header: Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let signature = match header["alg"].as_str() {
                Some("RS256") => {
                    let mut signature = vec![0; self.rsa.public().modulus_len()];
                    self.rsa
                        .sign(
                            &RSA_PKCS1_SHA256,
                            &self.rng,
                            input.as_bytes(),
                            &mut signature,
                        )
                        .unwrap();
                    signature
                }
                Some("ES256") => self
                    .ec
                    .sign(&self.rng, input.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                _ => Vec::new(),
            };
            format!("{input}.{}", b64(&signature))
        }

        fn rs256(&self, claims: &Value) -> String {
            self.sign(
                json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}),
                claims,
            )
        }

        fn es256(&self, claims: &Value) -> String {
            self.sign(json!({"alg": "ES256", "kid": "ec-1"}), claims)
        }
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "u-42", "nonce": NONCE,
            "exp": NOW + 300, "iat": NOW - 5, "nbf": NOW - 5,
            "groups": ["ops", "dev"],
        })
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISSUER,
            audience: CLIENT,
            nonce: Some(NONCE),
            now: Timestamp::from_second(NOW).unwrap(),
            leeway_secs: 60,
        }
    }

    fn with(changes: Value) -> Value {
        let mut claims = claims();
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(name),
                value => claims
                    .as_object_mut()
                    .unwrap()
                    .insert(name.clone(), value.clone()),
            };
        }
        claims
    }

    #[test]
    fn valid_rs256_and_es256_tokens_pass() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        for token in [provider.rs256(&claims()), provider.es256(&claims())] {
            let claims = verify(&token, &jwks, &expect()).unwrap();
            assert_eq!(claims["sub"], "u-42");
        }
    }

    #[test]
    fn the_key_set_keeps_only_signing_keys_it_can_use() {
        let jwks = Provider::new().jwks();
        assert_eq!(jwks.keys.len(), 2);
        assert!(jwks.has(Some("rsa-1")) && jwks.has(Some("ec-1")));
        for left_out in ["enc-1", "hmac", "p384", "other"] {
            assert!(!jwks.has(Some(left_out)), "{left_out}");
        }
        assert!(!jwks.has(None));
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        for document in [
            &b"<html>"[..],
            br#"{"issuer": "x"}"#,
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        ] {
            assert!(matches!(Jwks::parse(document), Err(JwtError::Malformed(_))));
        }
    }

    #[test]
    fn moduli_and_coordinates_with_leading_zeros_are_read() {
        let provider = Provider::new();
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(provider.rsa.public());
        let mut n = vec![0];
        n.extend(&public.n);
        let mut rsa = provider.rsa_jwk();
        rsa["n"] = json!(b64(&n));
        rsa["kid"] = Value::Null;
        let jwks = Jwks::parse(json!({"keys": [rsa]}).to_string().as_bytes()).unwrap();
        assert!(jwks.has(None));
        // A token without a kid uses the only key.
        let token = provider.sign(json!({"alg": "RS256"}), &claims());
        verify(&token, &jwks, &expect()).unwrap();
        let mut one = [0; 32];
        one[31] = 1;
        assert_eq!(coordinate("AQ"), Some(one));
    }

    #[test]
    fn a_token_without_kid_needs_exactly_one_key() {
        let provider = Provider::new();
        let token = provider.sign(json!({"alg": "ES256"}), &claims());
        assert!(matches!(
            verify(&token, &provider.jwks(), &expect()),
            Err(JwtError::UnknownKey(None))
        ));
        let only_ec =
            Jwks::parse(json!({"keys": [provider.ec_jwk()]}).to_string().as_bytes()).unwrap();
        verify(&token, &only_ec, &expect()).unwrap();
    }

    #[test]
    fn an_unknown_kid_asks_for_a_fresh_key_set() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        let token = provider.sign(json!({"alg": "ES256", "kid": "rotated-2"}), &claims());
        let error = verify(&token, &jwks, &expect()).unwrap_err();
        assert!(matches!(&error, JwtError::UnknownKey(Some(kid)) if kid == "rotated-2"));
        assert!(
            error.to_string().contains("fetching the key set again"),
            "{error}"
        );
        // A kid whose key is of the other type does not verify this algorithm either.
        let token = provider.sign(json!({"alg": "RS256", "kid": "ec-1"}), &claims());
        assert!(matches!(
            verify(&token, &jwks, &expect()),
            Err(JwtError::UnknownKey(Some(kid))) if kid == "ec-1"
        ));
    }

    #[test]
    fn alg_none_and_hs256_are_refused() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        for alg in ["none", "HS256", "PS256"] {
            let token = provider.sign(json!({"alg": alg, "kid": "rsa-1"}), &claims());
            assert!(
                matches!(verify(&token, &jwks, &expect()), Err(JwtError::UnsupportedAlg(found)) if found == alg),
                "{alg}"
            );
        }
    }

    #[test]
    fn an_altered_token_fails_its_signature() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        for token in [provider.rs256(&claims()), provider.es256(&claims())] {
            let (signed, signature) = token.rsplit_once('.').unwrap();
            let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            signature[10] ^= 0x01;
            let flipped = format!("{signed}.{}", b64(&signature));
            assert!(matches!(
                verify(&flipped, &jwks, &expect()),
                Err(JwtError::BadSignature)
            ));

            let (header, rest) = token.split_once('.').unwrap();
            let (_, signature) = rest.split_once('.').unwrap();
            let other_claims = b64(with(json!({"sub": "admin"})).to_string().as_bytes());
            let swapped = format!("{header}.{other_claims}.{signature}");
            assert!(matches!(
                verify(&swapped, &jwks, &expect()),
                Err(JwtError::BadSignature)
            ));
        }
    }

    #[test]
    fn tokens_that_are_not_jws_are_malformed() {
        let jwks = Provider::new().jwks();
        for token in ["", "a.b", "a.b.c.d.e", "!!!.e30.e30", "e30.e30.e30"] {
            assert!(
                matches!(verify(token, &jwks, &expect()), Err(JwtError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        let provider = Provider::new();
        let token = provider.rs256(&with(json!({"iss": format!("{ISSUER}/")})));
        let error = verify(&token, &provider.jwks(), &expect()).unwrap_err();
        assert!(
            matches!(&error, JwtError::WrongIssuer { found, expected }
                if *found == format!("{ISSUER}/") && expected == ISSUER),
            "{error}"
        );
    }

    #[test]
    fn the_audience_is_the_client_or_a_list_holding_it() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        let pass = [
            json!({"aud": [CLIENT]}),
            json!({"aud": ["api", CLIENT]}),
            json!({"aud": ["api", CLIENT], "azp": CLIENT}),
        ];
        for changes in pass {
            verify(&provider.es256(&with(changes.clone())), &jwks, &expect())
                .unwrap_or_else(|error| panic!("{changes}: {error}"));
        }
        let refused = [
            json!({"aud": "grafana"}),
            json!({"aud": ["grafana", "api"]}),
            json!({"aud": ["api", CLIENT], "azp": "api"}),
        ];
        for changes in refused {
            let result = verify(&provider.es256(&with(changes.clone())), &jwks, &expect());
            assert!(
                matches!(&result, Err(JwtError::WrongAudience { expected, .. }) if expected == CLIENT),
                "{changes}: {result:?}"
            );
        }
        let result = verify(
            &provider.es256(&with(json!({"aud": null}))),
            &jwks,
            &expect(),
        );
        assert!(matches!(result, Err(JwtError::MissingClaim("aud"))));
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        verify(
            &provider.rs256(&with(json!({"exp": NOW - 30}))),
            &jwks,
            &expect(),
        )
        .unwrap();
        let result = verify(
            &provider.rs256(&with(json!({"exp": NOW - 61}))),
            &jwks,
            &expect(),
        );
        assert!(
            matches!(result, Err(JwtError::Expired { exp }) if exp.as_second() == NOW - 61),
            "{result:?}"
        );
        let result = verify(
            &provider.rs256(&with(json!({"exp": null}))),
            &jwks,
            &expect(),
        );
        assert!(matches!(result, Err(JwtError::MissingClaim("exp"))));
    }

    #[test]
    fn a_token_from_the_future_is_not_valid_yet() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        verify(
            &provider.rs256(&with(json!({"nbf": NOW + 30}))),
            &jwks,
            &expect(),
        )
        .unwrap();
        for changes in [json!({"nbf": NOW + 120}), json!({"iat": NOW + 120})] {
            let result = verify(&provider.rs256(&with(changes)), &jwks, &expect());
            assert!(matches!(result, Err(JwtError::NotYetValid)), "{result:?}");
        }
    }

    #[test]
    fn the_nonce_must_be_this_sign_ins() {
        let provider = Provider::new();
        let jwks = provider.jwks();
        let result = verify(
            &provider.es256(&with(json!({"nonce": "other"}))),
            &jwks,
            &expect(),
        );
        assert!(matches!(result, Err(JwtError::NonceMismatch)));
        let result = verify(
            &provider.es256(&with(json!({"nonce": null}))),
            &jwks,
            &expect(),
        );
        assert!(matches!(result, Err(JwtError::MissingClaim("nonce"))));
        let unchecked = Expect {
            nonce: None,
            ..expect()
        };
        verify(
            &provider.es256(&with(json!({"nonce": null}))),
            &jwks,
            &unchecked,
        )
        .unwrap();
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn claim_strings_reads_paths_and_dotted_keys() {
        let claims = object(json!({
            "groups": ["ops", "dev", 7],
            "role": "admin",
            "realm_access": {"roles": ["deployer"]},
            "https://example.com/groups": ["sre"],
            "https://example.com/claims": {"teams": "web"},
            "https://example": {"com/groups": ["wrong"]},
            "count": 3,
        }));
        let strings = |path| claim_strings(&claims, path);
        assert_eq!(
            strings("groups"),
            Some(vec!["ops".to_owned(), "dev".to_owned()])
        );
        assert_eq!(strings("role"), Some(vec!["admin".to_owned()]));
        assert_eq!(
            strings("realm_access.roles"),
            Some(vec!["deployer".to_owned()])
        );
        assert_eq!(
            strings("https://example.com/groups"),
            Some(vec!["sre".to_owned()])
        );
        assert_eq!(
            strings("https://example.com/claims.teams"),
            Some(vec!["web".to_owned()])
        );
        assert_eq!(strings("realm_access.missing"), None);
        assert_eq!(strings("missing"), None);
        assert_eq!(strings("count"), None);
    }

    #[test]
    fn overage_is_a_missing_claim_named_elsewhere() {
        let azure = object(json!({"_claim_names": {"groups": "src1"},
                                  "_claim_sources": {"src1": {"endpoint": "https://graph"}}}));
        assert!(overage(&azure, "groups"));
        assert!(!overage(&azure, "roles"));
        assert!(overage(&object(json!({"hasgroups": true})), "groups"));
        assert!(!overage(
            &object(json!({"groups": ["ops"], "hasgroups": true})),
            "groups"
        ));
        assert!(!overage(&object(json!({})), "groups"));
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
