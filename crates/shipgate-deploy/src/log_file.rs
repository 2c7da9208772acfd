//! An instance's log file: where its output goes and how its end is read back.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{DriverError, InstanceId};

/// Lines shown in an error about an instance that failed to start.
const ERROR_TAIL_LINES: usize = 20;
const CHUNK: u64 = 8192;

/// Reads a log from `offset` to its end (at most 1 MiB), or without an offset its last `lines`
/// lines; returns the text and the offset to read from next.
pub fn read_log(path: &Path, offset: Option<u64>, lines: usize) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    match offset {
        Some(from) => {
            let from = from.min(len);
            file.seek(SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            file.take(1 << 20).read_to_end(&mut buf)?;
            Ok((
                String::from_utf8_lossy(&buf).into_owned(),
                from + buf.len() as u64,
            ))
        }
        None => {
            let tail = tail_lines(path, lines)?;
            Ok((tail.into_iter().map(|l| l + "\n").collect(), len))
        }
    }
}

/// Returns the last `n` lines of a log file (used for errors and `shipgate logs`).
///
/// Reads backwards from the end, so a large log costs only the bytes of its last lines.
pub fn tail_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let mut start = file.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    // n + 1 newlines guarantee n whole lines after the (possibly partial) first one.
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let step = start.min(CHUNK);
        start -= step;
        let mut chunk = vec![0; step as usize]; // step <= CHUNK, so it fits
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|line| line.to_string()).collect())
}

/// The end of the log, ready to append to an error message.
pub(crate) fn error_tail(path: &Path) -> String {
    match tail_lines(path, ERROR_TAIL_LINES) {
        Ok(lines) if lines.is_empty() => "(log is empty)".to_string(),
        Ok(lines) => lines.join("\n"),
        Err(err) => format!("(could not read {}: {err})", path.display()),
    }
}

/// Opens the log for appending, creating it and its parent directories.
pub(crate) fn open_append(path: &Path) -> Result<File, DriverError> {
    let io_err = |source| DriverError::Io {
        context: format!("opening log file {}", path.display()),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    // Logs may hold what an app prints of its secrets: only the server's user reads them.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io_err)?;
    Ok(file)
}

/// Appends the line that marks each (re)start, so a reader can tell runs apart.
pub(crate) fn write_marker(mut file: &File, instance_id: &InstanceId, pid: u32, port: u16) {
    let line =
        format!("--- shipgate: started instance {instance_id} (pid {pid}, port {port}) ---\n");
    if let Err(err) = file.write_all(line.as_bytes()) {
        tracing::warn!(%instance_id, %err, "could not write start marker to log");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_last_lines_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(
            tail_lines(&path, 3).unwrap(),
            ["line 4997", "line 4998", "line 4999"]
        );
        assert_eq!(tail_lines(&path, 5000).unwrap().len(), 5000);
        assert!(tail_lines(&path, 0).unwrap().is_empty());
    }

    #[test]
    fn tail_of_short_file_without_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "a\nb").unwrap();
        assert_eq!(tail_lines(&path, 20).unwrap(), ["a", "b"]);
    }
}
