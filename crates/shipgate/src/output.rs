//! All terminal output goes through [`Printer`]: text for people, JSON for scripts, progress
//! on stderr (plain timestamped lines when it is not a terminal).

use std::io::IsTerminal;

use serde::Serialize;

use crate::cli::OutputFormat;

/// Knows the output format and whether stderr is a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    json: bool,
    progress: bool,
}

impl Printer {
    /// For the chosen format.
    pub fn new(format: OutputFormat) -> Self {
        Self {
            json: format == OutputFormat::Json,
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// True when the caller asked for JSON.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints `value` as JSON, or the text `render` makes of it.
    pub fn print<T: Serialize>(&self, value: &T, render: impl FnOnce(&T) -> String) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot print JSON: {e}"),
            }
        } else {
            let text = render(value);
            print!("{text}");
            if !text.is_empty() && !text.ends_with('\n') {
                println!();
            }
        }
    }

    /// A warning on stderr, in both modes (JSON goes to stdout): something worked, but not all
    /// of it, and the line says what to do.
    pub fn warn(&self, line: &str) {
        eprintln!("warning: {line}");
    }

    /// A progress line on stderr, in text mode: indented on a terminal; on anything else (a CI
    /// log) one plain line per change, with the time, so a long wait is not silent.
    pub fn progress(&self, line: &str) {
        if self.json {
            return;
        }
        if self.progress {
            eprintln!("  {line}");
        } else {
            eprintln!(
                "{} {line}",
                jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ")
            );
        }
    }
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// The text, or `-` where there is none.
pub fn dash(text: Option<&str>) -> String {
    text.map_or_else(|| "-".to_owned(), str::to_owned)
}
