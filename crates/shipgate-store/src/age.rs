//! Files encrypted with the `age` command to this server, decrypted natively: a user encrypts a
//! file of secrets on their own machine with `age -r <recipient>`, and only the server that holds
//! the matching identity can read it. Only X25519 recipients (what `age-keygen` makes) are read;
//! the format is age-encryption.org/v1 (c2sp.org/age), binary or ASCII-armored.
//!
//! The identity is the file `secrets.age-identity` in the data directory, in the format
//! `age-keygen` writes, readable by the server's user alone; it is made on first use. This
//! module only decrypts: nothing here encrypts, so no secret leaves the server through it.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::seal::{create_private_file, read_private_file};

/// The name of the identity's file in the data directory.
const IDENTITY_FILE: &str = "secrets.age-identity";
/// The human-readable part of an identity (written in upper case).
const SECRET_KEY_HRP: &str = "age-secret-key-";
/// How an identity's line starts.
const SECRET_KEY_PREFIX: &str = "AGE-SECRET-KEY-1";
/// The human-readable part of a recipient.
const RECIPIENT_HRP: &str = "age";
/// The first line of every age file that shipgate reads.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1";
/// How the first line of an age file of any version starts.
const VERSION_PREFIX: &[u8] = b"age-encryption.org/";
/// The armor's first line.
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
/// The armor's last line.
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";
/// The width of the armor's and the stanzas' base64 lines.
const COLUMNS: usize = 64;
/// HKDF's info for the key that unwraps an X25519 stanza.
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// The file key's length.
const FILE_KEY_LEN: usize = 16;
/// The payload's nonce, before the first chunk.
const PAYLOAD_NONCE_LEN: usize = 16;
/// A chunk of plaintext; every chunk but the last is this long.
const CHUNK: usize = 64 * 1024;
/// Poly1305's tag after each chunk.
const TAG: usize = 16;

/// This server's age identity: an X25519 key pair. Files encrypted to its
/// [`recipient`](AgeIdentity::recipient) can be decrypted here and nowhere else.
///
/// Its `Debug` shows only the recipient.
pub struct AgeIdentity {
    /// The identity (the secret half).
    secret: StaticSecret,
    /// The recipient's key (the public half).
    public: PublicKey,
    /// The recipient, `age1…`.
    recipient: String,
}

impl fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeIdentity({})", self.recipient)
    }
}

/// Why an age file was not decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgeError {
    /// The data is neither a binary nor an ASCII-armored age file.
    #[error(
        "this is not an age file (it starts with neither `age-encryption.org/v1` nor `-----BEGIN AGE ENCRYPTED FILE-----`): encrypt it with `age -r {recipient} -o FILE` (shipgate secret recipient prints it)"
    )]
    NotAge {
        /// This server's recipient.
        recipient: String,
    },
    /// An age file of a format version other than v1.
    #[error(
        "this age file has the format version `{0}`, and shipgate reads age-encryption.org/v1: encrypt it again with a current `age`"
    )]
    UnsupportedVersion(String),
    /// The ASCII armor around the file is damaged.
    #[error(
        "the ASCII-armored age file is damaged ({0}): copy it again whole, from `-----BEGIN AGE ENCRYPTED FILE-----` to `-----END AGE ENCRYPTED FILE-----`"
    )]
    Armor(String),
    /// The header does not follow the format.
    #[error("the age file's header is malformed ({0}): encrypt the file again with `age`")]
    Header(String),
    /// No stanza of the header is addressed to this server's identity.
    #[error(
        "not encrypted to this server's recipient {recipient}: encrypt it with `age -r {recipient} -o FILE` (shipgate secret recipient prints it)"
    )]
    NotForRecipient {
        /// This server's recipient.
        recipient: String,
    },
    /// The file was encrypted with a passphrase, which nobody can type for a server.
    #[error(
        "the age file is encrypted with a passphrase (`age -p`), which a server cannot type: encrypt it to this server's recipient instead, with `age -r {recipient} -o FILE` (shipgate secret recipient prints it)"
    )]
    Passphrase {
        /// This server's recipient.
        recipient: String,
    },
    /// The header's MAC does not match: the header was changed.
    #[error(
        "the age file's header was changed after it was encrypted (its MAC does not match): copy the file again, or encrypt it again"
    )]
    HeaderChanged,
    /// The file ends before its last chunk.
    #[error("the age file is truncated (it ends before its last chunk): copy the whole file again")]
    Truncated,
    /// A chunk of the payload does not authenticate.
    #[error(
        "the age file was changed or truncated after it was encrypted (its chunk {chunk} does not authenticate): copy the file again, or encrypt it again"
    )]
    Changed {
        /// The chunk's number, from 0.
        chunk: u64,
    },
    /// The last chunk is empty although others come before it, which `age` never writes.
    #[error(
        "the age file ends with an empty chunk, which `age` never writes: encrypt the file again with `age`"
    )]
    EmptyLastChunk,
    /// Bytes follow the last chunk.
    #[error("the age file goes on after its last chunk: copy exactly the file `age` wrote")]
    TrailingData,
}

/// One recipient stanza of the header.
struct Stanza<'a> {
    /// The arguments after `->`, the type first.
    args: Vec<&'a str>,
    /// The decoded body.
    body: Vec<u8>,
}

/// A parsed header, and the payload after it.
struct Header<'a> {
    /// The stanzas, in order.
    stanzas: Vec<Stanza<'a>>,
    /// The bytes the MAC covers: the header up to and including `---`.
    mac_input: &'a [u8],
    /// The MAC, decoded.
    mac: Vec<u8>,
    /// Everything after the header.
    payload: &'a [u8],
}

impl AgeIdentity {
    /// The identity in `data_dir/secrets.age-identity`, made (with mode 0600) when missing. Any
    /// file in the format `age-keygen` writes is read: `#` comments, blank lines, and the first
    /// `AGE-SECRET-KEY-1…` line is the identity. A file others could read is refused.
    pub fn load_or_create(data_dir: &Path) -> Result<AgeIdentity, String> {
        let path = data_dir.join(IDENTITY_FILE);
        if let Some(text) = read_private_file(&path)? {
            let secret = parse_identity_file(&text).map_err(|why| {
                format!(
                    "{} {why}; restore it from a backup (files encrypted to its recipient can be read with it alone)",
                    path.display()
                )
            })?;
            return AgeIdentity::from_secret(secret);
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| {
            format!("the operating system gave no randomness for a new age identity: {e}")
        })?;
        let identity = AgeIdentity::from_secret(secret)?;
        create_private_file(&path, &identity.file_text(jiff::Timestamp::now())?)?;
        Ok(identity)
    }

    /// The identity of these 32 secret bytes.
    fn from_secret(secret: [u8; 32]) -> Result<AgeIdentity, String> {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        let recipient =
            bech32::encode_lower::<Bech32>(Hrp::parse_unchecked(RECIPIENT_HRP), public.as_bytes())
                .map_err(|e| format!("writing the age recipient: {e}"))?;
        Ok(AgeIdentity {
            secret,
            public,
            recipient,
        })
    }

    /// The identity file's text, as `age-keygen` writes it.
    fn file_text(&self, created: jiff::Timestamp) -> Result<String, String> {
        let key = bech32::encode_upper::<Bech32>(
            Hrp::parse_unchecked(SECRET_KEY_HRP),
            self.secret.as_bytes(),
        )
        .map_err(|e| format!("writing the age identity: {e}"))?;
        Ok(format!(
            "# created: {}\n# public key: {}\n{key}\n",
            created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            self.recipient
        ))
    }

    /// The recipient to encrypt files to for this server: `age1…` (safe to show and share).
    pub fn recipient(&self) -> String {
        self.recipient.clone()
    }

    /// The plaintext of an age file (binary or ASCII-armored) encrypted to this identity's
    /// recipient, checked whole: its header's MAC and every chunk of its payload.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, AgeError> {
        let dearmored;
        let data = if data.trim_ascii_start().starts_with(ARMOR_BEGIN.as_bytes()) {
            dearmored = dearmor(data)?;
            dearmored.as_slice()
        } else {
            data
        };
        let header = parse_header(data, &self.recipient)?;
        let mut file_key = None;
        for stanza in &header.stanzas {
            if let Some(key) = self.unwrap_file_key(stanza)? {
                file_key = Some(key);
                break;
            }
        }
        let Some(file_key) = file_key else {
            let recipient = self.recipient.clone();
            return Err(if header.stanzas.iter().any(|s| s.args[0] == "scrypt") {
                AgeError::Passphrase { recipient }
            } else {
                AgeError::NotForRecipient { recipient }
            });
        };
        let mac_key = hkdf(&file_key, &[], b"header");
        // HMAC takes a key of any length, so making one cannot fail.
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&mac_key)
            .expect("HMAC takes a key of any length");
        mac.update(header.mac_input);
        mac.verify_slice(&header.mac)
            .map_err(|_| AgeError::HeaderChanged)?;
        decrypt_payload(&file_key, header.payload)
    }

    /// The file key, when `stanza` is an X25519 stanza addressed to this identity; None for any
    /// other stanza. A malformed X25519 stanza is refused, as the format requires.
    fn unwrap_file_key(&self, stanza: &Stanza<'_>) -> Result<Option<[u8; FILE_KEY_LEN]>, AgeError> {
        if stanza.args[0] != "X25519" {
            return Ok(None);
        }
        if stanza.args.len() != 2 {
            return Err(AgeError::Header(format!(
                "an X25519 stanza has {} arguments instead of 2",
                stanza.args.len()
            )));
        }
        let share: [u8; 32] = STANDARD_NO_PAD
            .decode(stanza.args[1])
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| {
                AgeError::Header(
                    "an X25519 stanza's ephemeral share is not 32 bytes in canonical base64".into(),
                )
            })?;
        // Checked before any decryption, so a crafted body cannot probe the identity.
        if stanza.body.len() != FILE_KEY_LEN + TAG {
            return Err(AgeError::Header(format!(
                "an X25519 stanza's body is {} bytes instead of 32",
                stanza.body.len()
            )));
        }
        let share = PublicKey::from(share);
        let shared = self.secret.diffie_hellman(&share);
        if !shared.was_contributory() {
            return Err(AgeError::Header(
                "an X25519 stanza's ephemeral share is a low-order point, which `age` never writes"
                    .into(),
            ));
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(share.as_bytes());
        salt[32..].copy_from_slice(self.public.as_bytes());
        let wrap_key = hkdf(shared.as_bytes(), &salt, X25519_INFO);
        let cipher = ChaCha20Poly1305::new(&Key::from(wrap_key));
        let Ok(file_key) = cipher.decrypt(&Nonce::from([0u8; 12]), stanza.body.as_slice()) else {
            // Addressed to another recipient.
            return Ok(None);
        };
        Ok(file_key.try_into().ok())
    }
}

/// HKDF-SHA-256 of `ikm` with `salt` and `info`, 32 bytes long.
fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    // Expanding fails only past 255 blocks of SHA-256's 32 bytes; this is one block.
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut okm)
        .expect("32 bytes is within HKDF-SHA-256's output limit");
    okm
}

/// The binary age file inside an ASCII armor: the strict PEM of RFC 7468, with whitespace
/// allowed before and after it and CRLF line ends accepted.
fn dearmor(data: &[u8]) -> Result<Vec<u8>, AgeError> {
    let text = std::str::from_utf8(data.trim_ascii())
        .map_err(|_| AgeError::Armor("it holds bytes that are not text".into()))?;
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect();
    let [begin, body @ .., end] = lines.as_slice() else {
        return Err(AgeError::Armor("it has no end line".into()));
    };
    if *begin != ARMOR_BEGIN {
        return Err(AgeError::Armor(format!(
            "its first line is not `{ARMOR_BEGIN}`"
        )));
    }
    if *end != ARMOR_END {
        return Err(AgeError::Armor(format!(
            "it does not end with `{ARMOR_END}`"
        )));
    }
    let Some((last, full)) = body.split_last() else {
        return Err(AgeError::Armor("it holds no data".into()));
    };
    if full.iter().any(|line| line.len() != COLUMNS) || last.is_empty() || last.len() > COLUMNS {
        return Err(AgeError::Armor(format!(
            "its lines are not {COLUMNS} columns wide"
        )));
    }
    STANDARD
        .decode(body.concat())
        .map_err(|_| AgeError::Armor("its base64 is not valid".into()))
}

/// The next line of `data` without its LF, and what follows it; None when no LF is left.
fn next_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.iter().position(|&b| b == b'\n')?;
    Some((&data[..end], &data[end + 1..]))
}

/// Whether every byte is one of standard base64's 64 characters (no padding).
fn is_base64(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The header of a binary age file; `recipient` is named when the data is no age file at all.
fn parse_header<'a>(data: &'a [u8], recipient: &str) -> Result<Header<'a>, AgeError> {
    let not_age = || AgeError::NotAge {
        recipient: recipient.to_owned(),
    };
    let malformed = |why: &str| AgeError::Header(why.to_owned());
    let (version, mut rest) = next_line(data).ok_or_else(not_age)?;
    if version != VERSION_LINE {
        return Err(match version.strip_prefix(VERSION_PREFIX) {
            Some(v) => AgeError::UnsupportedVersion(String::from_utf8_lossy(v).into_owned()),
            None => not_age(),
        });
    }
    let mut stanzas = Vec::new();
    loop {
        let offset = data.len() - rest.len();
        let (line, after) =
            next_line(rest).ok_or_else(|| malformed("it ends before its MAC line"))?;
        if let Some(args) = line.strip_prefix(b"-> ") {
            let args = std::str::from_utf8(args)
                .ok()
                .map(|args| args.split(' ').collect::<Vec<_>>())
                .filter(|args| {
                    args.iter()
                        .all(|arg| !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_graphic()))
                })
                .ok_or_else(|| malformed("a stanza's arguments are not printable words"))?;
            rest = after;
            let mut body = Vec::new();
            loop {
                let (line, after) =
                    next_line(rest).ok_or_else(|| malformed("it ends inside a stanza"))?;
                if line.len() > COLUMNS || !is_base64(line) {
                    return Err(malformed(
                        "a stanza's body is not base64 in lines of 64 columns",
                    ));
                }
                body.extend_from_slice(line);
                rest = after;
                if line.len() < COLUMNS {
                    break;
                }
            }
            let body = STANDARD_NO_PAD
                .decode(&body)
                .map_err(|_| malformed("a stanza's body is not canonical base64"))?;
            stanzas.push(Stanza { args, body });
        } else if line.starts_with(b"---") {
            let mac = line
                .strip_prefix(b"--- ")
                .filter(|mac| mac.len() == 43 && is_base64(mac))
                .and_then(|mac| STANDARD_NO_PAD.decode(mac).ok())
                .ok_or_else(|| malformed("its MAC line is not `--- ` and 43 base64 characters"))?;
            if stanzas.is_empty() {
                return Err(malformed("it has no recipient stanza"));
            }
            return Ok(Header {
                stanzas,
                mac_input: &data[..offset + 3],
                mac,
                payload: after,
            });
        } else {
            return Err(malformed("a line starts with neither `-> ` nor `---`"));
        }
    }
}

/// The payload's plaintext: a 16-byte nonce, then chunks of 64 KiB, each with its tag, the last
/// one marked as last (and shorter, or empty if the whole plaintext is).
fn decrypt_payload(file_key: &[u8; FILE_KEY_LEN], payload: &[u8]) -> Result<Vec<u8>, AgeError> {
    if payload.len() < PAYLOAD_NONCE_LEN {
        return Err(AgeError::Truncated);
    }
    let (nonce, mut rest) = payload.split_at(PAYLOAD_NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(&Key::from(hkdf(file_key, nonce, b"payload")));
    let open = |counter: u64, last: bool, chunk: &[u8]| {
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = u8::from(last);
        cipher.decrypt(&Nonce::from(nonce), chunk).ok()
    };
    let mut plaintext = Vec::with_capacity(payload.len());
    let mut counter: u64 = 0;
    loop {
        if rest.len() < TAG {
            return Err(AgeError::Truncated);
        }
        if rest.len() > CHUNK + TAG {
            let (chunk, after) = rest.split_at(CHUNK + TAG);
            let Some(opened) = open(counter, false, chunk) else {
                return Err(match open(counter, true, chunk) {
                    Some(_) => AgeError::TrailingData,
                    None => AgeError::Changed { chunk: counter },
                });
            };
            plaintext.extend_from_slice(&opened);
            rest = after;
            counter += 1;
            continue;
        }
        let Some(opened) = open(counter, true, rest) else {
            return Err(
                if rest.len() == CHUNK + TAG && open(counter, false, rest).is_some() {
                    AgeError::Truncated
                } else {
                    AgeError::Changed { chunk: counter }
                },
            );
        };
        if opened.is_empty() && counter > 0 {
            return Err(AgeError::EmptyLastChunk);
        }
        plaintext.extend_from_slice(&opened);
        return Ok(plaintext);
    }
}

/// The secret key of an identity file's text: its first `AGE-SECRET-KEY-1…` line. The error
/// says what is wrong without repeating the key.
fn parse_identity_file(text: &str) -> Result<[u8; 32], String> {
    let line = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find(|line| line.starts_with(SECRET_KEY_PREFIX))
        .ok_or_else(|| {
            format!("holds no `{SECRET_KEY_PREFIX}…` line (the line `age-keygen` writes)")
        })?;
    let invalid = || {
        format!(
            "holds an `{SECRET_KEY_PREFIX}…` line that is no age identity (its checksum or length is wrong)"
        )
    };
    let checked = CheckedHrpstring::new::<Bech32>(line).map_err(|_| invalid())?;
    let hrp = Hrp::parse_unchecked(SECRET_KEY_HRP);
    if checked.hrp() != hrp {
        return Err(invalid());
    }
    let key: [u8; 32] = checked
        .byte_iter()
        .collect::<Vec<u8>>()
        .try_into()
        .map_err(|_| invalid())?;
    // Only the one canonical spelling of a key is accepted (no stray padding bits).
    match bech32::encode_upper::<Bech32>(hrp, &key) {
        Ok(canonical) if canonical == line => Ok(key),
        _ => Err(invalid()),
    }
}

/// The variables of an env file, in order: `NAME=value` lines, optionally after `export `;
/// blank lines and lines starting with `#` are skipped. A value in matching single quotes is
/// taken as it is; in double quotes, `\n`, `\"` and `\\` are unescaped. Errors name the line,
/// never a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut lines_of: Vec<usize> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export")
            .filter(|rest| rest.starts_with([' ', '\t']))
            .map_or(line, str::trim_start);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!(
                "line {number}: expected NAME=value, and the line has no `=`"
            ));
        };
        let name = name.trim_end();
        if !is_variable_name(name) {
            return Err(format!(
                "line {number}: the name before `=` is not a variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        let value = unquote(value.trim_start()).map_err(|why| format!("line {number}: {why}"))?;
        if value.contains('\0') {
            return Err(format!(
                "line {number}: the value of {name} holds a NUL byte, which no environment variable can"
            ));
        }
        if let Some(first) = vars.iter().position(|(n, _)| n == name) {
            return Err(format!(
                "line {number}: {name} is given twice (first on line {}); keep one",
                lines_of[first]
            ));
        }
        vars.push((name.to_owned(), value));
        lines_of.push(number);
    }
    Ok(vars)
}

/// Whether `name` is `[A-Za-z_][A-Za-z0-9_]*`.
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value without its quotes: single quotes as they are, double quotes with `\n`, `\"` and
/// `\\` unescaped (any other backslash stays). The error never repeats the value.
fn unquote(value: &str) -> Result<String, String> {
    let unclosed = |quote: char| {
        format!(
            "the value opens a {quote} quote and does not close it at the end of the line (a value is one line; inside double quotes write a newline as \\n)"
        )
    };
    if let Some(rest) = value.strip_prefix('\'') {
        return rest
            .strip_suffix('\'')
            .map(str::to_owned)
            .ok_or_else(|| unclosed('\''));
    }
    let Some(rest) = value.strip_prefix('"') else {
        return Ok(value.trim_end().to_owned());
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.as_str().is_empty() => return Ok(out),
            '"' => {
                return Err(
                    "the double-quoted value has a `\"` inside; write it as \\\" (or quote the value with ')"
                        .into(),
                );
            }
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err(unclosed('"')),
            },
            c => out.push(c),
        }
    }
    Err(unclosed('"'))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// `age` or `age-keygen` with these arguments; their output, or a panic that says what failed.
    fn run(program: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
        let output = match Command::new(program).args(args).output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`{program}` is not on PATH: install age (apt-get install age)")
            }
            Err(e) => panic!("running {program}: {e}"),
        };
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// `plaintext` encrypted by `age` to these recipients, armored with `armor`.
    fn age_encrypt(recipients: &[&str], plaintext: &[u8], armor: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("plain");
        let output = dir.path().join("sealed.age");
        std::fs::write(&input, plaintext).unwrap();
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        for r in recipients {
            args.push("-r".as_ref());
            args.push(r.as_ref());
        }
        if armor {
            args.push("-a".as_ref());
        }
        args.extend(["-o".as_ref(), output.as_os_str(), input.as_os_str()]);
        run("age", &args);
        std::fs::read(output).unwrap()
    }

    /// A new identity in a directory of its own (kept alive with it).
    fn identity() -> (tempfile::TempDir, AgeIdentity) {
        let dir = tempfile::tempdir().unwrap();
        let identity = AgeIdentity::load_or_create(dir.path()).unwrap();
        (dir, identity)
    }

    /// A recipient made by `age-keygen` that is not ours.
    fn other_recipient() -> String {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("other");
        run("age-keygen", &["-o".as_ref(), key.as_os_str()]);
        let public = run("age-keygen", &["-y".as_ref(), key.as_os_str()]);
        String::from_utf8(public).unwrap().trim().to_owned()
    }

    /// Where the payload starts in a binary age file.
    fn payload_start(file: &[u8]) -> usize {
        let mac = file.windows(4).position(|w| w == b"\n---").unwrap() + 1;
        mac + file[mac..].iter().position(|&b| b == b'\n').unwrap() + 1
    }

    /// Plaintext that differs from byte to byte.
    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn an_identity_is_made_with_mode_0600_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let made = AgeIdentity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("secrets.age-identity");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("# created: "), "{text}");
        lines[0]["# created: ".len()..]
            .parse::<jiff::Timestamp>()
            .unwrap();
        assert_eq!(lines[1], format!("# public key: {}", made.recipient()));
        assert!(lines[2].starts_with("AGE-SECRET-KEY-1"), "{text}");
        assert_eq!(lines[2].len(), 74, "{text}");

        let recipient = made.recipient();
        assert!(recipient.starts_with("age1"), "{recipient}");
        assert_eq!(recipient.len(), 62, "{recipient}");
        assert_eq!(recipient, recipient.to_lowercase());
        assert_eq!(format!("{made:?}"), format!("AgeIdentity({recipient})"));
        let read = AgeIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(read.recipient(), recipient);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_identity_file_others_can_read_is_refused() {
        let (dir, _) = identity();
        let path = dir.path().join("secrets.age-identity");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AgeIdentity::load_or_create(dir.path()).unwrap_err();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
    }

    #[test]
    fn the_age_command_accepts_the_identity_file_made_here() {
        let (dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], b"from age to age", false);
        let sealed_path = dir.path().join("f.age");
        std::fs::write(&sealed_path, sealed).unwrap();
        let key: PathBuf = dir.path().join("secrets.age-identity");
        let opened = run(
            "age",
            &[
                "-d".as_ref(),
                "-i".as_ref(),
                key.as_os_str(),
                sealed_path.as_os_str(),
            ],
        );
        assert_eq!(opened, b"from age to age");
        let public = run("age-keygen", &["-y".as_ref(), key.as_os_str()]);
        assert_eq!(String::from_utf8(public).unwrap().trim(), ours.recipient());
    }

    #[test]
    fn a_key_made_by_age_keygen_is_read_with_its_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.age-identity");
        run("age-keygen", &["-o".as_ref(), key.as_os_str()]);
        // age-keygen makes the file 0600 itself; make sure, since the test is about the format.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let identity = AgeIdentity::load_or_create(dir.path()).unwrap();
        let public = run("age-keygen", &["-y".as_ref(), key.as_os_str()]);
        assert_eq!(
            identity.recipient(),
            String::from_utf8(public).unwrap().trim()
        );
        let sealed = age_encrypt(&[&identity.recipient()], b"DB_PASSWORD=x\n", false);
        assert_eq!(identity.decrypt(&sealed).unwrap(), b"DB_PASSWORD=x\n");
    }

    #[test]
    fn identity_files_with_comments_and_blank_lines_are_read() {
        let (_dir, ours) = identity();
        let text = ours.file_text(jiff::Timestamp::UNIX_EPOCH).unwrap();
        let key_line = text.lines().last().unwrap();
        let loose = format!("\n# a comment\n\n  {key_line}  \r\nAGE-SECRET-KEY-1ANOTHER\n");
        let secret = parse_identity_file(&loose).unwrap();
        assert_eq!(
            AgeIdentity::from_secret(secret).unwrap().recipient(),
            ours.recipient()
        );
        assert!(
            text.starts_with("# created: 1970-01-01T00:00:00Z\n"),
            "{text}"
        );

        let err = parse_identity_file("# only a comment\n").unwrap_err();
        assert!(err.contains("holds no `AGE-SECRET-KEY-1…` line"), "{err}");
        let mut broken = key_line.to_owned();
        broken.replace_range(20..21, if &key_line[20..21] == "Q" { "P" } else { "Q" });
        let err = parse_identity_file(&broken).unwrap_err();
        assert!(err.contains("no age identity"), "{err}");
        assert!(!err.contains(&key_line[16..]), "{err}");
        let err = parse_identity_file(&key_line.to_lowercase()).unwrap_err();
        assert!(err.contains("holds no"), "{err}");
    }

    #[test]
    fn a_binary_file_from_age_decrypts() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], b"hello, shipgate\n", false);
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert_eq!(ours.decrypt(&sealed).unwrap(), b"hello, shipgate\n");
    }

    #[test]
    fn an_armored_file_from_age_decrypts() {
        let (_dir, ours) = identity();
        let text = plaintext(5000);
        let sealed = age_encrypt(&[&ours.recipient()], &text, true);
        assert!(sealed.starts_with(ARMOR_BEGIN.as_bytes()));
        assert_eq!(ours.decrypt(&sealed).unwrap(), text);

        let crlf = String::from_utf8(sealed.clone())
            .unwrap()
            .replace('\n', "\r\n");
        let padded = format!("\n  {crlf}\n\n");
        assert_eq!(ours.decrypt(padded.as_bytes()).unwrap(), text);

        let s = String::from_utf8(sealed).unwrap();
        let no_end = s.trim_end().rsplit_once('\n').unwrap().0;
        let err = ours.decrypt(no_end.as_bytes()).unwrap_err();
        assert!(matches!(err, AgeError::Armor(_)), "{err}");
        let joined = s.replacen('\n', "", 2);
        let err = ours.decrypt(joined.as_bytes()).unwrap_err();
        assert!(matches!(err, AgeError::Armor(_)), "{err}");
    }

    #[test]
    fn payloads_of_several_chunks_decrypt() {
        let (_dir, ours) = identity();
        for len in [200_000, CHUNK, 2 * CHUNK, CHUNK + 1] {
            let text = plaintext(len);
            let sealed = age_encrypt(&[&ours.recipient()], &text, false);
            assert_eq!(ours.decrypt(&sealed).unwrap(), text, "{len} bytes");
            let armored = age_encrypt(&[&ours.recipient()], &text, true);
            assert_eq!(ours.decrypt(&armored).unwrap(), text, "{len} bytes armored");
        }
    }

    #[test]
    fn an_empty_payload_decrypts() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], b"", false);
        assert_eq!(ours.decrypt(&sealed).unwrap(), b"");
    }

    #[test]
    fn a_file_for_several_recipients_decrypts_with_ours() {
        let (_dir, ours) = identity();
        let other = other_recipient();
        let sealed = age_encrypt(&[&other, &ours.recipient()], b"shared", false);
        assert_eq!(ours.decrypt(&sealed).unwrap(), b"shared");
    }

    #[test]
    fn a_file_for_another_recipient_is_refused_naming_ours() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&other_recipient()], b"not yours", false);
        let err = ours.decrypt(&sealed).unwrap_err();
        assert_eq!(
            err,
            AgeError::NotForRecipient {
                recipient: ours.recipient()
            }
        );
        let r = ours.recipient();
        assert_eq!(
            err.to_string(),
            format!(
                "not encrypted to this server's recipient {r}: encrypt it with `age -r {r} -o FILE` (shipgate secret recipient prints it)"
            )
        );
    }

    #[test]
    fn a_changed_payload_is_refused() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], &plaintext(200_000), false);
        let start = payload_start(&sealed);
        for (at, chunk) in [
            (start, 0),
            (start + 16 + 10, 0),
            (start + 16 + CHUNK + TAG + 5, 1),
            (sealed.len() - 1, 3),
        ] {
            let mut changed = sealed.clone();
            changed[at] ^= 0x40;
            let err = ours.decrypt(&changed).unwrap_err();
            assert_eq!(err, AgeError::Changed { chunk }, "byte {at}");
        }
    }

    #[test]
    fn a_changed_header_is_refused() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], b"x", false);
        let start = payload_start(&sealed);
        let mut changed = sealed.clone();
        // Inside the MAC's base64, where any letter is canonical.
        changed[start - 10] = if changed[start - 10] == b'A' {
            b'B'
        } else {
            b'A'
        };
        assert_eq!(ours.decrypt(&changed).unwrap_err(), AgeError::HeaderChanged);

        // An extra stanza (of a type ignored here) changes what the MAC covers.
        let text = String::from_utf8_lossy(&sealed[..start]).into_owned();
        let extra = text.replacen("\n-> ", "\n-> grease x\n\n-> ", 1);
        let mut changed = extra.into_bytes();
        changed.extend_from_slice(&sealed[start..]);
        assert_eq!(ours.decrypt(&changed).unwrap_err(), AgeError::HeaderChanged);
    }

    #[test]
    fn a_truncated_file_or_trailing_data_is_refused() {
        let (_dir, ours) = identity();
        let sealed = age_encrypt(&[&ours.recipient()], &plaintext(200_000), false);
        let start = payload_start(&sealed);
        let without_last = start + 16 + 3 * (CHUNK + TAG);
        assert_eq!(
            ours.decrypt(&sealed[..without_last]).unwrap_err(),
            AgeError::Truncated
        );
        assert_eq!(
            ours.decrypt(&sealed[..without_last + 5]).unwrap_err(),
            AgeError::Truncated
        );
        assert_eq!(
            ours.decrypt(&sealed[..sealed.len() - 1]).unwrap_err(),
            AgeError::Changed { chunk: 3 }
        );
        assert_eq!(
            ours.decrypt(&sealed[..start + 10]).unwrap_err(),
            AgeError::Truncated
        );
        let err = ours.decrypt(&sealed[..start - 1]).unwrap_err();
        assert!(matches!(err, AgeError::Header(_)), "{err}");

        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(
            ours.decrypt(&longer).unwrap_err(),
            AgeError::Changed { chunk: 3 }
        );
        let full = age_encrypt(&[&ours.recipient()], &plaintext(CHUNK), false);
        let mut longer = full.clone();
        longer.extend_from_slice(b"more");
        assert_eq!(ours.decrypt(&longer).unwrap_err(), AgeError::TrailingData);
    }

    #[test]
    fn what_is_no_age_file_is_refused_with_what_to_do() {
        let (_dir, ours) = identity();
        let r = ours.recipient();
        for data in [&b""[..], b"DB_PASSWORD=hunter2\n", b"age-encryption.org/v1"] {
            let err = ours.decrypt(data).unwrap_err();
            assert_eq!(
                err,
                AgeError::NotAge {
                    recipient: r.clone()
                }
            );
            assert!(
                err.to_string().contains(&format!("age -r {r} -o FILE")),
                "{err}"
            );
        }
        let err = ours
            .decrypt(b"age-encryption.org/v2\n-> X\n\n")
            .unwrap_err();
        assert_eq!(err, AgeError::UnsupportedVersion("v2".into()));
    }

    #[test]
    fn a_passphrase_file_is_refused_with_what_to_do() {
        let (_dir, ours) = identity();
        let header = "age-encryption.org/v1\n-> scrypt c2FsdHNhbHRzYWx0c2FsdA 18\nqRS0AMjdjPvZ/WT08U2KL4G+PIooA3hy38SvLpvaC1E\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n";
        let err = ours.decrypt(header.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            AgeError::Passphrase {
                recipient: ours.recipient()
            }
        );
        assert!(err.to_string().contains("age -r"), "{err}");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let (_dir, ours) = identity();
        let cases = [
            "age-encryption.org/v1\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> X25519\nqRS0AMjdjPvZ/WT08U2KL4G+PIooA3hy38SvLpvaC1E\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> X25519 short\nqRS0AMjdjPvZ/WT08U2KL4G+PIooA3hy38SvLpvaC1E\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> X25519 XEl0dJ6y3C7KZkgmgWUicg63EyXJiwBJW8PdYJ/cYBE\nqRS0\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> X25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nqRS0AMjdjPvZ/WT08U2KL4G+PIooA3hy38SvLpvaC1E\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> x\nqRS0=\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> x\n\n---HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
            "age-encryption.org/v1\n-> x\n\nhello\n",
            "age-encryption.org/v1\n->  x\n\n--- HK2NmOBN9Dpq0Gw6xMCuhFcQlQLvZ/wQUi/2scLG75s\n",
        ];
        for case in cases {
            let err = ours.decrypt(case.as_bytes()).unwrap_err();
            assert!(matches!(err, AgeError::Header(_)), "{case:?}: {err}");
        }
    }

    #[test]
    fn an_env_file_parses() {
        let text = "\
# database
DB_HOST=db.internal
export DB_PASSWORD='p@ss word'  
\tAPI_KEY = \"line1\\nline2 \\\"quoted\\\" back\\\\slash \\t\"
EMPTY=
_UNDER_1=a=b=c
QUOTED_EMPTY=\"\"

   # indented comment
SINGLE='keeps \\n as is'
";
        let vars = parse_env_file(text).unwrap();
        let expected = [
            ("DB_HOST", "db.internal"),
            ("DB_PASSWORD", "p@ss word"),
            ("API_KEY", "line1\nline2 \"quoted\" back\\slash \\t"),
            ("EMPTY", ""),
            ("_UNDER_1", "a=b=c"),
            ("QUOTED_EMPTY", ""),
            ("SINGLE", "keeps \\n as is"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(vars, expected);
        assert_eq!(parse_env_file("").unwrap(), vec![]);
        assert_eq!(
            parse_env_file("exported=1\r\nexport\tX=2\n").unwrap(),
            vec![("exported".into(), "1".into()), ("X".into(), "2".into())]
        );
    }

    #[test]
    fn env_file_errors_name_the_line_and_never_the_value() {
        let cases = [
            (
                "A=1\n\nB=2\nA=3\n",
                "line 4: A is given twice (first on line 1)",
            ),
            ("A=1\nsecretvalue\n", "line 2: expected NAME=value"),
            (
                "1A=x\n",
                "line 1: the name before `=` is not a variable name",
            ),
            (
                "A-B=x\n",
                "line 1: the name before `=` is not a variable name",
            ),
            (
                "=secretvalue\n",
                "line 1: the name before `=` is not a variable name",
            ),
            ("export =secretvalue\n", "line 1: the name"),
            ("A=\"secretvalue\n", "line 1: the value opens a \" quote"),
            ("A='secretvalue\n", "line 1: the value opens a ' quote"),
            (
                "A=\"secret\"value\"\n",
                "line 1: the double-quoted value has a `\"` inside",
            ),
            (
                "A=\"secretvalue\\\"\n",
                "line 1: the value opens a \" quote",
            ),
            (
                "\n\nA=secret\0value\n",
                "line 3: the value of A holds a NUL byte",
            ),
            (
                "A=\"secret\\\0value\"\n",
                "line 1: the value of A holds a NUL byte",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_env_file(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
            assert!(!err.contains("secret"), "{text:?}: {err}");
        }
    }
}
