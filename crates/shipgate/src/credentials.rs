//! What `shipgate login` keeps: a session token per server, in
//! `$XDG_CONFIG_HOME/shipgate/credentials.json` (`~/.config/shipgate/` by default), readable
//! by its owner only.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One server's session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    /// The session token (`sgs_...`).
    pub token: String,
    /// When the server ends the session at the latest.
    pub expires_at: jiff::Timestamp,
}

/// Server URL → its session.
type Credentials = BTreeMap<String, Stored>;

/// The credentials file, when a home or config folder is known.
pub fn path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("shipgate").join("credentials.json"))
}

fn read() -> Credentials {
    path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The stored session token for `server`, unless it has expired.
pub fn token_for(server: &str) -> Option<String> {
    read()
        .remove(server)
        .filter(|s| s.expires_at > jiff::Timestamp::now())
        .map(|s| s.token)
}

/// Keeps `stored` for `server` beside the others (a new file, mode 0600, renamed over the old
/// one, so a crash leaves one or the other whole). Returns the file's path.
pub fn keep(server: &str, stored: Stored) -> anyhow::Result<PathBuf> {
    let path = path().context(
        "neither XDG_CONFIG_HOME nor HOME is set, so there is nowhere to keep the session",
    )?;
    let dir = path
        .parent()
        .context("the credentials file has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let mut all = read();
    all.insert(server.to_owned(), stored);
    let json = serde_json::to_vec_pretty(&all).context("writing the credentials")?;
    let fresh = path.with_extension(format!("json.{}.new", std::process::id()));
    shipgate_agent::replace_private(&path, &fresh, &json)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
