//! What SQLite keeps only in a table's `CREATE` statement: its options and its CHECK
//! constraints, found by a small scan that skips what is quoted or commented out.

use super::collapse;

/// `table`, with the options written after its columns (`table WITHOUT ROWID`); a virtual
/// table as its statement.
pub(super) fn table_description(sql: &str) -> String {
    if sql.starts_with("CREATE VIRTUAL TABLE") {
        return collapse(sql);
    }
    let shape = structure(sql);
    let options = body(&shape)
        .map(|(_, end)| collapse(&sql[end + 1..]).to_ascii_uppercase())
        .unwrap_or_default();
    if options.is_empty() {
        "table".to_owned()
    } else {
        format!("table {options}")
    }
}

/// `view AS SELECT ...`.
pub(super) fn view_description(sql: &str) -> String {
    let shape = structure(sql).to_ascii_uppercase();
    let at = find_word(&shape, 0, "AS").unwrap_or(0);
    format!("view {}", collapse(&sql[at..]))
}

/// `sql` with what is quoted blanked (its quotes kept) and comments blanked, byte for byte, so
/// that the parentheses, commas and words found in it are the statement's own.
fn structure(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        let (end, keep_quotes) = match bytes[i] {
            q @ (b'\'' | b'"' | b'`') => {
                let mut j = i + 1;
                while j < bytes.len() {
                    if bytes[j] == q {
                        if bytes.get(j + 1) == Some(&q) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                (j, true)
            }
            b'[' => (sql[i..].find(']').map_or(bytes.len(), |e| i + e), true),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                (sql[i..].find('\n').map_or(bytes.len(), |e| i + e), false)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => (
                sql[i..].find("*/").map_or(bytes.len(), |e| i + e + 1),
                false,
            ),
            _ => {
                i += 1;
                continue;
            }
        };
        // `end` is the closing quote or the comment's last byte; past the end when unclosed.
        let (from, to) = if keep_quotes {
            (i + 1, end.min(bytes.len()))
        } else {
            (i, (end + 1).min(bytes.len()))
        };
        for b in out.iter_mut().take(to).skip(from) {
            *b = b' ';
        }
        i = end + 1;
    }
    // Every blanked run starts after an ASCII delimiter and ends at one or at the end, so it
    // holds whole characters and this is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The byte offsets of the first `(` of `shape` and the `)` that closes it.
fn body(shape: &str) -> Option<(usize, usize)> {
    let open = shape.find('(')?;
    closing(shape, open).map(|close| (open, close))
}

/// The offset of the `)` closing the `(` at `open`.
fn closing(shape: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in shape.bytes().enumerate().skip(open) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The offset of `word` (upper case) as a whole word in `shape` (upper case) from `from`.
fn find_word(shape: &str, from: usize, word: &str) -> Option<usize> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = shape.as_bytes();
    let mut at = from;
    while let Some(found) = shape[at..].find(word) {
        let start = at + found;
        let end = start + word.len();
        let before = start == 0 || !is_word(bytes[start - 1]);
        let after = end >= bytes.len() || !is_word(bytes[end]);
        if before && after {
            return Some(start);
        }
        at = end;
    }
    None
}

/// The words of `shape[from..to]` outside parentheses, as offset ranges.
fn words(shape: &str, from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, b) in shape.bytes().enumerate().take(to).skip(from) {
        let boundary = b.is_ascii_whitespace() || b == b'(' || b == b')' || b == b',';
        if boundary || depth > 0 {
            if let Some(s) = start.take() {
                out.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, to));
    }
    out
}

/// A name as written, without its quotes.
fn unquote(name: &str) -> String {
    let inner = match name.as_bytes().first() {
        Some(b'"' | b'`' | b'[' | b'\'') if name.len() >= 2 => &name[1..name.len() - 1],
        _ => name,
    };
    inner.replace("\"\"", "\"")
}

/// The CHECK constraints of a `CREATE TABLE` statement, name → `CHECK (expression)`. SQLite
/// keeps no record of them besides the statement. An unnamed one gets the name PostgreSQL
/// would give it: `TABLE_COLUMN_check` on a column, `TABLE_check` on the table (then
/// `TABLE_check1`, ...).
pub(super) fn checks(table: &str, sql: &str) -> Vec<(String, String)> {
    let shape = structure(sql);
    let upper = shape.to_ascii_uppercase();
    let Some((open, close)) = body(&shape) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut start = open + 1;
    let mut depth = 0usize;
    let mut parts = Vec::new();
    for (i, b) in shape.bytes().enumerate().take(close).skip(open + 1) {
        match b {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                parts.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push((start, close));
    for (from, to) in parts {
        let words = words(&shape, from, to);
        let Some(&(first_start, first_end)) = words.first() else {
            continue;
        };
        let first = &upper[first_start..first_end];
        let column = (!["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"].contains(&first))
            .then(|| unquote(&sql[first_start..first_end]));
        for (n, &(s, e)) in words.iter().enumerate() {
            if &upper[s..e] != "CHECK" {
                continue;
            }
            let Some(open) = shape[e..to].find('(').map(|o| e + o) else {
                continue;
            };
            let Some(close) = closing(&shape, open) else {
                continue;
            };
            let named = n
                .checked_sub(2)
                .map(|c| words[c])
                .filter(|&(cs, ce)| &upper[cs..ce] == "CONSTRAINT")
                .map(|_| unquote(&sql[words[n - 1].0..words[n - 1].1]));
            let name = named.unwrap_or_else(|| {
                let base = match &column {
                    Some(c) => format!("{table}_{c}_check"),
                    None => format!("{table}_check"),
                };
                let mut name = base.clone();
                let mut count = 0;
                while out.iter().any(|(n, _)| *n == name) {
                    count += 1;
                    name = format!("{base}{count}");
                }
                name
            });
            out.push((name, format!("CHECK {}", collapse(&sql[open..=close]))));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_found_in_the_statement_named_as_postgresql_would() {
        let sql = "CREATE TABLE \"order\" (
            id INTEGER PRIMARY KEY,
            amount REAL NOT NULL CHECK (amount > 0), -- a comment with CHECK (x)
            note TEXT DEFAULT 'CHECK (no), really' CHECK (length(note) < 100),
            [odd, name] TEXT,
            CONSTRAINT sane CHECK (amount < 1e9),
            CHECK (note <> ''),
            CHECK (id > 0)
        ) WITHOUT ROWID";
        assert_eq!(
            checks("order", sql),
            [
                ("order_amount_check".into(), "CHECK (amount > 0)".into()),
                (
                    "order_note_check".into(),
                    "CHECK (length(note) < 100)".into()
                ),
                ("sane".into(), "CHECK (amount < 1e9)".into()),
                ("order_check".into(), "CHECK (note <> '')".into()),
                ("order_check1".into(), "CHECK (id > 0)".into()),
            ] as [(String, String); 5]
        );
        assert_eq!(table_description(sql), "table WITHOUT ROWID");
        assert_eq!(
            view_description("CREATE VIEW paid AS\n  SELECT * FROM \"order\""),
            "view AS SELECT * FROM \"order\""
        );
    }
}
