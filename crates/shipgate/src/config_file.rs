//! Reading `shipgate.toml` and reporting its problems at `file:line:column`.

use std::path::Path;

use anyhow::Context;
use miette::{Diagnostic, LabeledSpan, NamedSource};
use shipgate_core::{Config, ConfigError, ConfigProblem};

/// A config problem as miette shows it: the source line under the message.
#[derive(Debug)]
struct Located {
    message: String,
    help: Option<String>,
    span: std::ops::Range<usize>,
    src: NamedSource<String>,
}

impl std::error::Error for Located {}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Diagnostic for Located {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::at(
            self.span.clone(),
            "here",
        ))))
    }
}

/// A config that could not be loaded, already rendered for the terminal.
#[derive(Debug)]
pub struct Invalid(pub String);

/// Reads and validates the config file.
pub fn load(path: &Path) -> anyhow::Result<Result<(Config, String), Invalid>> {
    let src = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (create one with `shipgate init`, or point at one with -c FILE)",
            path.display()
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() {
        std::env::current_dir().context("reading the current directory")?
    } else {
        std::path::absolute(base)?
    };
    match Config::parse(&src, &base) {
        Ok(c) => Ok(Ok((c, src))),
        Err(e) => Ok(Err(Invalid(render(&e, &path.display().to_string(), &src)))),
    }
}

/// Plain `file:line:column: message` lines, then each problem drawn under its source line.
pub fn render(e: &ConfigError, file: &str, src: &str) -> String {
    let mut out = e.render(file, src);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        for ConfigProblem {
            span,
            message,
            help,
        } in &e.problems
        {
            let located = Located {
                message: message.clone(),
                help: help.clone(),
                span: span.clone(),
                src: NamedSource::new(file, src.to_owned()),
            };
            out.push_str(&format!("{:?}", miette::Report::new(located)));
        }
    }
    out
}
