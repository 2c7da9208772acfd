//! The README and the pages of `docs/` link each other by path and heading: every such link must
//! land on a file that exists and on a heading it has, the index `docs/README.md` must list every
//! page, and the README must stay a landing page rather than grow back into a manual (issue 29).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The README is a landing page; past this it is turning into a manual again.
const README_MAX_LINES: usize = 150;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `README.md` and every `.md` page of `docs/`, in a stable order.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    let mut all = vec![root.join("README.md")];
    all.extend(docs);
    all
}

/// The lines of a page outside fenced code blocks, numbered from 1: a link or a heading in a
/// code block is an example, not part of the page.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<String> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = marker.len() >= 3 && marker.chars().all(|c| marker.starts_with(c));
        match &fence {
            None if is_fence => fence = Some(marker),
            Some(open) if is_fence && marker.starts_with(open.as_str()) => fence = None,
            None => lines.push((index + 1, line)),
            Some(_) => {}
        }
    }
    lines
}

/// A line with its inline code spans taken out, for the same reason as fenced blocks.
fn without_code(line: &str) -> String {
    let mut kept = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        kept.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let delimiter = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(delimiter) {
            Some(end) => rest = &after[end + ticks..],
            // An unclosed run of backticks is literal text.
            None => {
                kept.push_str(delimiter);
                rest = after;
            }
        }
    }
    kept.push_str(rest);
    kept
}

/// The targets of the links and images on a line of prose: `[text](target "title")`,
/// `![alt](target)`, a reference definition `[name]: target`, and HTML `src="…"`/`href="…"`.
fn targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        if let Some(target) = after[..end].split_whitespace().next() {
            found.push(
                target
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned(),
            );
        }
        rest = &after[end..];
    }
    // A reference definition: the line's first `]` closes the label and a `:` follows it.
    let definition = line
        .trim_start()
        .strip_prefix('[')
        .and_then(|label| label.split_once(']'))
        .and_then(|(_, rest)| rest.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next());
    found.extend(definition.map(str::to_owned));
    for attribute in ["src=\"", "href=\""] {
        let mut rest = line;
        while let Some(start) = rest.find(attribute) {
            let after = &rest[start + attribute.len()..];
            let Some(end) = after.find('"') else { break };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

/// GitHub's anchor of a heading: its text as rendered (code marks and link targets gone),
/// lowercased, with every character but letters, digits, spaces, `-` and `_` dropped, and spaces
/// turned into `-`.
fn anchor(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](target)` renders as `text`.
    while let Some(start) = rest.find("](") {
        text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings; a repeated one gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> HashSet<String> {
    let mut all = HashSet::new();
    for (_, line) in prose(text) {
        let level = line.chars().take_while(|&c| c == '#').count();
        let Some(heading) = line[level..].strip_prefix(' ') else {
            continue;
        };
        if !(1..=6).contains(&level) {
            continue;
        }
        let base = anchor(heading.trim_end().trim_end_matches('#'));
        let mut candidate = base.clone();
        let mut n = 0;
        while !all.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
    }
    all
}

/// What is wrong with a link of `page` to `target`, if anything; paths are told from `root`.
fn broken(root: &Path, page: &Path, target: &str) -> Option<String> {
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(path)
    };
    let shown = file.strip_prefix(root).unwrap_or(&file).display();
    if !file.exists() {
        return Some(format!("there is no file {shown}"));
    }
    let fragment = fragment?;
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Some(format!("{shown} has no headings to link to"));
    };
    if anchors(&text).contains(fragment) {
        None
    } else {
        Some(format!(
            "{shown} has no heading with the anchor #{fragment}"
        ))
    }
}

fn is_external(target: &str) -> bool {
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| target.starts_with(scheme))
}

#[test]
fn every_link_in_the_readme_and_docs_resolves() {
    let root = repository();
    let mut checked = 0;
    let mut problems = Vec::new();
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(&root).unwrap().display().to_string();
        for (number, line) in prose(&text) {
            for target in targets(&without_code(line)) {
                if is_external(&target) {
                    continue;
                }
                checked += 1;
                if let Some(problem) = broken(&root, &page, &target) {
                    problems.push(format!("{name}:{number}: ({target}) {problem}"));
                }
            }
        }
    }
    // The pages link each other dozens of times; finding almost none means the parsing broke.
    assert!(checked > 50, "only {checked} links found");
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_docs_index_links_every_page() {
    let root = repository();
    let index = root.join("docs/README.md");
    let text = std::fs::read_to_string(&index).unwrap();
    let linked: HashSet<String> = prose(&text)
        .into_iter()
        .flat_map(|(_, line)| targets(&without_code(line)))
        .map(|target| target.split('#').next().unwrap_or_default().to_owned())
        .collect();
    let missing: Vec<String> = pages(&root)
        .into_iter()
        .filter(|page| page.parent() == index.parent() && *page != index)
        .map(|page| page.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| !linked.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/README.md does not list {}: give each a line there",
        missing.join(", ")
    );
}

#[test]
fn the_readme_stays_a_landing_page() {
    let text = std::fs::read_to_string(repository().join("README.md")).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to a page of docs/ and link it"
    );
}
