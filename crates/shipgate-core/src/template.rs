//! `${NAME}` substitution in `run` and `verify.tests` commands.

use std::collections::BTreeMap;

/// Replaces every `${NAME}` whose NAME is a key of `vars`; any other `${...}` is left for the
/// shell, so `${HOME}` keeps working.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) if vars.contains_key(&after[..end]) => {
                out.push_str(&vars[&after[..end]]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_names_only() {
        let vars = BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]);
        assert_eq!(
            expand("./web --port ${PORT} ${HOME} ${", &vars),
            "./web --port 8080 ${HOME} ${"
        );
    }
}
