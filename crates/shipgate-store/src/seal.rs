//! Encryption at rest of secret values: one [`SecretsKey`] per database seals each value with
//! XChaCha20-Poly1305 before it is stored, and opens it when it is read.
//!
//! The key is kept out of the database on purpose: a copy of the database (a backup, a dump
//! attached to an issue) holds only sealed values. The key comes from an environment variable
//! named in the configuration (several servers of one database must share it) or from the file
//! `secrets.key` in the data directory, made on first start, readable by the server's user
//! alone. Only [`SecretsKey::id`], a short hash, may be shown or stored.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use sha2::Digest as _;

/// The name of the key's file in the data directory.
const KEY_FILE: &str = "secrets.key";
/// XChaCha20's nonce: long enough that random nonces never repeat under one key.
const NONCE_LEN: usize = 24;
/// Poly1305's tag.
const TAG_LEN: usize = 16;
/// What [`SecretsKey::id`] hashes before the key, so the id is no hash of the bare key.
const ID_LABEL: &[u8] = b"shipgate secrets key\0";

/// The 32-byte key that seals the secret values of one database.
///
/// Its `Debug` shows only [`SecretsKey::id`], never the key.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

/// Compared in constant time, so a comparison tells nothing about where two keys differ.
impl PartialEq for SecretsKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretsKey {}

/// Where the secrets key was read from, to name it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The file in the data directory (made there when it was missing).
    File(PathBuf),
    /// The environment variable of this name (`server.secrets_key_env`).
    Env(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "the file {}", path.display()),
            KeySource::Env(name) => write!(f, "the environment variable {name}"),
        }
    }
}

/// A sealed value did not open with this key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a sealed value could not be opened with the secrets key {key_id}: it was sealed with another key (give this server the key the others use), or the record was changed outside shipgate"
)]
pub struct SealError {
    /// [`SecretsKey::id`] of the key that was tried.
    pub key_id: String,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey(id {})", self.id())
    }
}

impl SecretsKey {
    /// A new random key.
    fn random() -> Result<SecretsKey, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            format!("the operating system gave no randomness for a new secrets key: {e}")
        })?;
        Ok(SecretsKey(key))
    }

    /// The first 8 hex digits of sha256 of a fixed label and the key: it tells keys apart in
    /// messages and records, and is safe to show.
    pub fn id(&self) -> String {
        let digest = sha2::Sha256::new()
            .chain_update(ID_LABEL)
            .chain_update(self.0)
            .finalize();
        hex::encode(&digest[..4])
    }

    /// Seals `plaintext`, bound to `aad` (say, the record's name, so a sealed value cannot be
    /// moved to another record): a random 24-byte nonce, then the ciphertext and its tag.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // getrandom(2) blocks until the kernel's generator is seeded and does not fail after
        // that; a machine without randomness cannot seal anything safely, so stopping is right.
        getrandom::fill(&mut nonce).expect("the operating system gave no randomness for a nonce");
        let cipher = XChaCha20Poly1305::new(&Key::from(self.0));
        // Encryption fails only for a plaintext over 256 GiB, which no secret value is.
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("a secret value is shorter than XChaCha20-Poly1305's limit");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`SecretsKey::seal`] made with this key and the same `aad`; refused when the
    /// key, the `aad` or any byte differs.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let refused = || SealError { key_id: self.id() };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| refused())?;
        let cipher = XChaCha20Poly1305::new(&Key::from(self.0));
        cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| refused())
    }
}

/// The secrets key of this server: from the environment variable `key_env` names when it is
/// given (every server of a shared database needs the same key), else from the file
/// `secrets.key` in `data_dir`, which is made with a new random key when missing.
pub fn load_or_create(
    data_dir: &Path,
    key_env: Option<&str>,
) -> Result<(SecretsKey, KeySource), String> {
    if let Some(name) = key_env {
        let value = std::env::var_os(name)
            .map(|v| {
                v.into_string().map_err(|_| {
                    format!(
                        "`server.secrets_key_env` names {name}, whose value is not text; set it to the secrets key every server of this database uses (64 hex digits)"
                    )
                })
            })
            .transpose()?;
        let key = key_from_env(name, value)?;
        return Ok((key, KeySource::Env(name.to_owned())));
    }
    let path = data_dir.join(KEY_FILE);
    let key = match read_private_file(&path)? {
        Some(text) => parse_hex(text.trim()).ok_or_else(|| {
            format!(
                "{} does not hold a secrets key (64 hex digits and a newline); restore it from a backup: without it the stored secrets cannot be opened",
                path.display()
            )
        })?,
        None => {
            let key = SecretsKey::random()?;
            create_private_file(&path, &format!("{}\n", hex::encode(key.0)))?;
            key
        }
    };
    Ok((key, KeySource::File(path)))
}

/// Parses a secrets key written as 64 hex digits, or as the standard base64 of exactly 32
/// bytes; whitespace around it is ignored. The error never repeats the text.
pub fn parse_key(text: &str) -> Result<SecretsKey, String> {
    let text = text.trim();
    if let Some(key) = parse_hex(text) {
        return Ok(key);
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(SecretsKey(key));
    }
    Err(format!(
        "a secrets key is 64 hex digits or the standard base64 of 32 bytes, and this is neither ({} characters); make one with `openssl rand -hex 32`",
        text.chars().count()
    ))
}

/// The key held by the environment variable `name`, whose value is `value` (None: not set).
fn key_from_env(name: &str, value: Option<String>) -> Result<SecretsKey, String> {
    let Some(value) = value else {
        return Err(format!(
            "`server.secrets_key_env` names {name}, which is not set in the server's environment; set it to the secrets key every server of this database uses (64 hex digits)"
        ));
    };
    parse_key(&value).map_err(|why| {
        format!(
            "`server.secrets_key_env` names {name}, which does not hold a secrets key: {why}; set it to the key every server of this database uses"
        )
    })
}

/// 64 hex digits as a key.
fn parse_hex(text: &str) -> Option<SecretsKey> {
    if text.len() != 64 {
        return None;
    }
    let bytes = hex::decode(text).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok().map(SecretsKey)
}

/// The text of a file that holds a key, or None when there is no such file. A file that others
/// could read or write is refused: a key must stay with the server's user.
pub(crate) fn read_private_file(path: &Path) -> Result<Option<String>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; move it away so shipgate can make the key file there",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o600 {
        return Err(format!(
            "{} has permissions {mode:04o}, and a file holding a key must be readable and writable by the server's user alone; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(Some(text))
}

/// Writes `contents` to the new file `path` with mode 0600, whole or not at all: through a
/// temporary file beside it, synced, then renamed into place (and the directory synced), so a
/// crash never leaves a half-written key behind.
pub(crate) fn create_private_file(path: &Path, contents: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory to be made in", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no file name", path.display()))?;
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| {
        format!("the operating system gave no randomness for a temporary file name: {e}")
    })?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    write_new_file(&tmp, dir, path, contents).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("making {}: {e}", path.display())
    })
}

/// The steps of [`create_private_file`], any of which may fail.
fn write_new_file(tmp: &Path, dir: &Path, path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey([byte; 32])
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_aad() {
        let k = key(7);
        let sealed = k.seal(b"hunter2", b"env/production/DB_PASSWORD");
        assert_eq!(sealed.len(), NONCE_LEN + 7 + TAG_LEN);
        assert_eq!(
            k.open(&sealed, b"env/production/DB_PASSWORD").unwrap(),
            b"hunter2"
        );
        assert_ne!(
            sealed,
            k.seal(b"hunter2", b"env/production/DB_PASSWORD"),
            "each seal has a nonce of its own"
        );
        let empty = k.seal(b"", b"");
        assert_eq!(k.open(&empty, b"").unwrap(), b"");
    }

    #[test]
    fn a_changed_byte_another_aad_or_another_key_is_refused() {
        let k = key(7);
        let sealed = k.seal(b"hunter2", b"a");
        for i in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[i] ^= 0x01;
            assert!(k.open(&changed, b"a").is_err(), "byte {i} changed");
        }
        assert!(k.open(&sealed[..sealed.len() - 1], b"a").is_err());
        assert!(k.open(&sealed[..10], b"a").is_err());
        assert!(k.open(&sealed, b"b").is_err());
        let err = key(8).open(&sealed, b"a").unwrap_err();
        assert_eq!(err.key_id, key(8).id());
        let message = err.to_string();
        assert!(message.contains(&key(8).id()), "{message}");
        assert!(message.contains("another key"), "{message}");
    }

    #[test]
    fn the_id_is_short_stable_and_does_not_show_the_key() {
        let k = key(7);
        assert_eq!(k.id().len(), 8);
        assert_eq!(k.id(), key(7).id());
        assert_ne!(k.id(), key(8).id());
        let debug = format!("{k:?}");
        assert_eq!(debug, format!("SecretsKey(id {})", k.id()));
        assert!(!debug.contains("0707"), "{debug}");
    }

    #[test]
    fn a_missing_file_is_made_with_mode_0600_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (made, source) = load_or_create(dir.path(), None).unwrap();
        let path = dir.path().join("secrets.key");
        assert_eq!(source, KeySource::File(path.clone()));
        assert_eq!(source.to_string(), format!("the file {}", path.display()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let (read, _) = load_or_create(dir.path(), None).unwrap();
        assert_eq!(made, read);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left behind"
        );
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), None).unwrap();
        let path = dir.path().join("secrets.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), None).unwrap_err();
        assert!(err.contains("0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        create_private_file(&path, "not a key\n").unwrap();
        let err = load_or_create(dir.path(), None).unwrap_err();
        assert!(err.contains("does not hold a secrets key"), "{err}");
    }

    #[test]
    fn a_key_parses_from_hex_or_base64() {
        let hex_key = "00".repeat(31) + "ff";
        let mut bytes = [0u8; 32];
        bytes[31] = 0xff;
        assert_eq!(parse_key(&hex_key).unwrap(), SecretsKey(bytes));
        assert_eq!(
            parse_key(&format!("  {}\n", hex_key.to_uppercase())).unwrap(),
            SecretsKey(bytes)
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(parse_key(&b64).unwrap(), SecretsKey(bytes));
    }

    #[test]
    fn a_malformed_key_is_refused_without_repeating_it() {
        let short_hex = "ab".repeat(31);
        let short_b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        let not_hex = "zz".repeat(32);
        for text in ["", "secret-words-here", &short_hex, &short_b64, &not_hex] {
            let err = parse_key(text).unwrap_err();
            assert!(err.contains("64 hex digits"), "{err}");
            if !text.is_empty() {
                assert!(!err.contains(text), "{err}");
            }
        }
    }

    #[test]
    fn the_environment_variable_is_read_when_named() {
        let hex_key = "11".repeat(32);
        let key = key_from_env("SHIPGATE_TEST_SEAL_HEX", Some(hex_key)).unwrap();
        assert_eq!(key, SecretsKey([0x11; 32]));
        let b64 = base64::engine::general_purpose::STANDARD.encode([0x22u8; 32]);
        let key = key_from_env("SHIPGATE_TEST_SEAL_B64", Some(b64)).unwrap();
        assert_eq!(key, SecretsKey([0x22; 32]));
        assert_eq!(
            KeySource::Env("SHIPGATE_TEST_SEAL_B64".into()).to_string(),
            "the environment variable SHIPGATE_TEST_SEAL_B64"
        );
    }

    #[test]
    fn an_unset_environment_variable_says_what_to_set() {
        let err = key_from_env("SHIPGATE_TEST_SEAL_MISSING", None).unwrap_err();
        assert_eq!(
            err,
            "`server.secrets_key_env` names SHIPGATE_TEST_SEAL_MISSING, which is not set in the server's environment; set it to the secrets key every server of this database uses (64 hex digits)"
        );
        let via_env = load_or_create(
            Path::new("/nonexistent"),
            Some("SHIPGATE_TEST_SEAL_SURELY_UNSET_4f1c"),
        )
        .unwrap_err();
        assert!(via_env.contains("is not set"), "{via_env}");
    }

    #[test]
    fn a_malformed_environment_variable_is_refused_without_its_value() {
        let err = key_from_env(
            "SHIPGATE_TEST_SEAL_BAD",
            Some("correct horse battery".into()),
        )
        .unwrap_err();
        assert!(err.contains("SHIPGATE_TEST_SEAL_BAD"), "{err}");
        assert!(err.contains("64 hex digits"), "{err}");
        assert!(!err.contains("horse"), "{err}");
    }
}
