//! Parity between two environments (`shipgate diff`, `require.parity`): every setting and
//! gathered fact of an app in both, each item classed as the same, a declared (expected)
//! difference, an unexpected one, or present on one side only. Secret values never leave here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{AppConfig, Digest, EnvironmentConfig, Version};

/// How one item compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ItemClass {
    /// Equal on both sides.
    Same,
    /// Different, and declared in `differs`.
    Expected,
    /// Different, and not declared.
    Unexpected,
    /// Present only in the first environment (and not declared).
    OnlyInA,
    /// Present only in the second environment (and not declared).
    OnlyInB,
}

impl ItemClass {
    /// True for the classes that make a diff fail (exit 1) and hold a parity gate.
    pub fn is_unexpected(self) -> bool {
        matches!(self, Self::Unexpected | Self::OnlyInA | Self::OnlyInB)
    }
}

/// One compared item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DiffItem {
    /// What is compared: `release.version`, `vars.LOG_LEVEL`, `verify.tests`, `facts.runtime`.
    pub key: String,
    /// How it compares.
    pub class: ItemClass,
    /// The value in the first environment; None when absent or secret.
    pub a: Option<String>,
    /// The value in the second environment; None when absent or secret.
    pub b: Option<String>,
    /// The values are secret: only whether they differ is said.
    pub secret: bool,
}

/// What is known of one environment besides its config.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The live release, if any.
    pub live: Option<(Version, Digest)>,
    /// Each fact's output (or why it has none), by name.
    pub facts: BTreeMap<String, String>,
    /// Each declared flag's state there (`off`, `on (on)`, `rules: ...`), by key.
    pub flags: BTreeMap<String, String>,
    /// For an image release: its manifest digest and how its config runs it (`digest`,
    /// `platform`, `user`, `entrypoint`, `cmd`, `workdir`, `ports`, `env.NAME`), by key.
    pub image: BTreeMap<String, String>,
    /// The app's database schema there, one line per thing (`schema.orders.column.note` →
    /// `text NOT NULL`), or why it could not be read. None when the app's data is not declared
    /// in both environments compared.
    pub schema: Option<Result<BTreeMap<String, String>, String>>,
    /// Each variable that is a secret: its name and versions, never its value
    /// (`DB_PASSWORD version 3 (set ... by ...); the live release has version 2`), by variable.
    pub secrets: BTreeMap<String, String>,
}

/// The prefixes a `differs` entry may name.
const FAMILIES: [&str; 13] = [
    "release", "run", "health", "listen", "vars", "require", "verify", "facts", "settings",
    "flags", "image", "schema", "secrets",
];

/// The item that stands for both schemas when either could not be read.
const SCHEMA_UNREAD: &str = "schema";

/// Checks a `differs` entry: a known item or family, optionally ending in `.*`.
pub fn check_key(key: &str) -> Result<(), String> {
    let family = key.split('.').next().unwrap_or_default();
    if FAMILIES.contains(&family) {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not something environments differ in: start it with one of {} (for example \"vars.DATABASE_URL\" or \"require.*\")",
            FAMILIES.join(", ")
        ))
    }
}

/// Whether `key` is declared by one of `declared` (exact, a family, or `family.*`).
fn declared(key: &str, declared: &BTreeSet<&str>) -> bool {
    declared.iter().any(|d| {
        *d == key
            || d.strip_suffix(".*")
                .is_some_and(|family| key.starts_with(&format!("{family}.")))
            || key.starts_with(&format!("{d}."))
    })
}

/// Whether a variable's value must not be shown.
pub fn is_secret(name: &str, values: &[Option<&str>], declared: &[&String]) -> bool {
    let upper = name.to_ascii_uppercase();
    let named = ["TOKEN", "PASSWORD", "KEY", "SECRET"]
        .iter()
        .any(|s| upper == *s || upper.ends_with(&format!("_{s}")));
    named
        || declared.iter().any(|d| d.as_str() == name)
        || values.iter().flatten().any(|v| has_credentials(v))
}

/// `scheme://user:password@host...`
fn has_credentials(v: &str) -> bool {
    let Some((_, rest)) = v.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .split_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// The settings of one environment as comparable items, by key.
fn settings(app: &AppConfig, env: &EnvironmentConfig, seen: &Observed) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        out.insert(k.to_owned(), v);
    };
    if let Some((version, digest)) = &seen.live {
        put("release.version", version.to_string());
        put("release.digest", digest.to_string());
    }
    put("run", app.run.clone());
    put("health", app.health.clone());
    put("listen", env.listen.to_string());
    for (k, v) in &env.vars {
        put(&format!("vars.{k}"), v.clone());
    }
    for (k, v) in &seen.secrets {
        put(&format!("secrets.{k}"), v.clone());
    }
    let r = &env.require;
    if let Some(a) = &r.approvals {
        let role = a
            .role
            .map(|r| format!(" from the role {r}"))
            .unwrap_or_default();
        put("require.approvals", format!("{}{role}", a.count));
    }
    if let Some(s) = r.soak {
        put("require.soak", s.to_string());
    }
    if !r.windows.is_empty() {
        let w: Vec<&str> = r.windows.iter().map(|w| w.as_str()).collect();
        put("require.window", w.join("; "));
    }
    if let Some(p) = &r.parity {
        put("require.parity", p.to_string());
    }
    let v = &env.verify;
    if !v.tests.is_empty() {
        put("verify.tests", v.tests.join("; "));
    }
    if let Some(t) = v.timeout {
        put("verify.timeout", t.to_string());
    }
    if !v.http.is_empty() {
        let checks: Vec<String> = v
            .http
            .iter()
            .map(|c| {
                let body = c
                    .body
                    .as_ref()
                    .map(|b| format!(" /{b}/"))
                    .unwrap_or_default();
                format!("GET {} → {}{body}", c.path, c.status)
            })
            .collect();
        put("verify.http", checks.join("; "));
    }
    if let Some(w) = &v.watch {
        put("verify.watch", w.watch.to_string());
        if let Some(m) = w.max_error_rate {
            put("verify.max_error_rate", m.to_string());
        }
        if let Some(m) = w.max_p99 {
            put("verify.max_p99", m.to_string());
        }
        put("verify.min_requests", w.min_requests.to_string());
        put(
            "verify.inconclusive",
            format!("{:?}", w.inconclusive).to_lowercase(),
        );
    }
    put("settings.standby", env.standby.to_string());
    put("settings.drain", env.drain.to_string());
    if let Some(t) = env.request_timeout {
        put("settings.request_timeout", t.to_string());
    }
    for (k, v) in &seen.flags {
        put(&format!("flags.{k}"), v.clone());
    }
    for (k, v) in &seen.facts {
        put(&format!("facts.{k}"), v.clone());
    }
    for (k, v) in &seen.image {
        put(&format!("image.{k}"), v.clone());
    }
    out
}

/// What [`Observed::image`] holds for an image of manifest `digest` and `config`.
pub fn image_items(digest: &str, config: &crate::image::ImageConfig) -> BTreeMap<String, String> {
    let c = &config.config;
    let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(" "));
    let mut out = BTreeMap::from([
        ("digest".to_owned(), digest.to_owned()),
        (
            "platform".to_owned(),
            format!("{}/{}", config.os, config.architecture),
        ),
    ]);
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.insert(k.to_owned(), v);
        }
    };
    put("user", c.user.clone().filter(|u| !u.is_empty()));
    put("entrypoint", list(&c.entrypoint));
    put("cmd", list(&c.cmd));
    put("workdir", c.working_dir.clone().filter(|w| !w.is_empty()));
    put(
        "ports",
        c.exposed_ports
            .as_ref()
            .map(|p| p.keys().cloned().collect::<Vec<_>>().join(" ")),
    );
    for line in c.env.iter().flatten() {
        let (k, v) = line.split_once('=').unwrap_or((line.as_str(), ""));
        put(&format!("env.{k}"), Some(v.to_owned()));
    }
    out
}

/// Compares `app` in environment `a` with environment `b`. Declared differences are the union
/// of both environments' `differs`; secret variables are those either declares, or whose name
/// or value looks secret.
pub fn compare(
    app: &AppConfig,
    a: (&EnvironmentConfig, &Observed),
    b: (&EnvironmentConfig, &Observed),
) -> Vec<DiffItem> {
    let (mut sa, mut sb) = (settings(app, a.0, a.1), settings(app, b.0, b.1));
    let (qa, qb) = schema_lines(&a.1.schema, &b.1.schema);
    sa.extend(qa);
    sb.extend(qb);
    let meant: BTreeSet<&str> =
        a.0.differs
            .iter()
            .chain(&b.0.differs)
            .map(String::as_str)
            .collect();
    let secrets: Vec<&String> = a.0.secrets.iter().chain(&b.0.secrets).collect();
    let keys: BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
    keys.into_iter()
        .map(|key| {
            let (va, vb) = (sa.get(key), sb.get(key));
            let class = match (va, vb) {
                // An unread schema is never the same as another, even with the same error.
                (Some(x), Some(y)) if x == y && key != SCHEMA_UNREAD => ItemClass::Same,
                _ if declared(key, &meant) => ItemClass::Expected,
                // Each environment has secrets of its own: their versions differ as meant.
                (Some(_), Some(_)) if key.starts_with("secrets.") => ItemClass::Expected,
                (Some(_), None) => ItemClass::OnlyInA,
                (None, Some(_)) => ItemClass::OnlyInB,
                _ => ItemClass::Unexpected,
            };
            let secret = (key.strip_prefix("vars."))
                .or_else(|| key.strip_prefix("image.env."))
                .is_some_and(|name| {
                    is_secret(
                        name,
                        &[va.map(String::as_str), vb.map(String::as_str)],
                        &secrets,
                    )
                });
            DiffItem {
                key: key.clone(),
                class,
                a: va.filter(|_| !secret).cloned(),
                b: vb.filter(|_| !secret).cloned(),
                secret,
            }
        })
        .collect()
}

/// The schema lines of both sides. A table on one side only is one item: its columns, indexes
/// and constraints are left out rather than repeated as differences of their own. When either
/// side could not be read, one `schema` item says why instead of every line of the other side.
fn schema_lines(
    a: &Option<Result<BTreeMap<String, String>, String>>,
    b: &Option<Result<BTreeMap<String, String>, String>>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let under_a_lone_parent =
        |key: &str, mine: &BTreeMap<String, String>, theirs: &BTreeMap<String, String>| {
            key.match_indices('.')
                .skip(1)
                .map(|(i, _)| &key[..i])
                .any(|parent| mine.contains_key(parent) && !theirs.contains_key(parent))
        };
    let kept = |mine: &BTreeMap<String, String>, theirs: &BTreeMap<String, String>| {
        mine.iter()
            .filter(|(k, _)| !under_a_lone_parent(k, mine, theirs))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let summary = |side: &Option<Result<BTreeMap<String, String>, String>>| {
        let value = match side {
            Some(Ok(lines)) => {
                let tables = lines.values().filter(|v| v.starts_with("table")).count();
                let s = if tables == 1 { "" } else { "s" };
                format!("read ({tables} table{s})")
            }
            Some(Err(e)) => format!("unreadable: {e}"),
            None => return BTreeMap::new(),
        };
        BTreeMap::from([(SCHEMA_UNREAD.to_owned(), value)])
    };
    match (a, b) {
        (Some(Ok(x)), Some(Ok(y))) => (kept(x, y), kept(y, x)),
        _ => (summary(a), summary(b)),
    }
}

/// Whether `key` is a line of a database schema (or the item saying one could not be read).
pub fn is_schema(key: &str) -> bool {
    key == SCHEMA_UNREAD || key.starts_with("schema.")
}

/// What a promotion's parity gate waits on: [`blocking`], without the schema's items unless
/// the entering environment counts them (`parity.schema = true`).
pub fn blocking_entry(items: &[DiffItem], counts_schema: bool) -> Vec<String> {
    let mut keys = blocking(items);
    keys.retain(|k| counts_schema || !is_schema(k));
    keys
}

/// The unexpected differences a parity gate waits on: all but the release being promoted and
/// the `require.parity` that asks for the comparison.
pub fn blocking(items: &[DiffItem]) -> Vec<String> {
    items
        .iter()
        .filter(|i| {
            i.class.is_unexpected() && !i.key.starts_with("release.") && i.key != "require.parity"
        })
        .map(|i| i.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::path::Path;

    fn config(extra_staging: &str, extra_production: &str) -> Config {
        let src = format!(
            "[apps.web]\nrun = \"./web\"\n[environments.staging]\nlisten = \"127.0.0.1:8103\"\n{extra_staging}\n[environments.production]\nafter = \"staging\"\nlisten = \"127.0.0.1:8104\"\n{extra_production}\n"
        );
        Config::parse(&src, Path::new("/p")).unwrap()
    }

    fn diff(c: &Config, a: &Observed, b: &Observed) -> Vec<DiffItem> {
        compare(&c.apps[0], (&c.environments[0], a), (&c.environments[1], b))
    }

    fn class_of<'a>(items: &'a [DiffItem], key: &str) -> &'a DiffItem {
        items
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no {key} in {items:#?}"))
    }

    #[test]
    fn two_images_differ_by_digest_user_entrypoint_and_env_with_secrets_hidden() {
        let c = config("", "");
        let image =
            |json: &str| -> crate::image::ImageConfig { serde_json::from_str(json).unwrap() };
        let observed = |digest: &str, config: &str| Observed {
            image: image_items(digest, &image(config)),
            ..Observed::default()
        };
        let a = observed(
            "sha256:aa",
            r#"{"architecture": "amd64", "os": "linux", "config": {"User": "app",
                "Entrypoint": ["/bin/web"], "Env": ["MODE=fast", "API_TOKEN=one"],
                "ExposedPorts": {"8080/tcp": {}}}}"#,
        );
        let b = observed(
            "sha256:bb",
            r#"{"architecture": "amd64", "os": "linux", "config": {"User": "root",
                "Entrypoint": ["/bin/web", "--debug"], "Env": ["MODE=fast", "API_TOKEN=two"],
                "ExposedPorts": {"8080/tcp": {}}}}"#,
        );
        let items = diff(&c, &a, &b);
        for key in ["image.digest", "image.user", "image.entrypoint"] {
            assert_eq!(class_of(&items, key).class, ItemClass::Unexpected, "{key}");
        }
        for key in ["image.env.MODE", "image.ports", "image.platform"] {
            assert_eq!(class_of(&items, key).class, ItemClass::Same, "{key}");
        }
        let token = class_of(&items, "image.env.API_TOKEN");
        assert!(token.secret && token.a.is_none() && token.b.is_none());
        assert_eq!(token.class, ItemClass::Unexpected);
    }

    #[test]
    fn each_kind_of_item_is_classed() {
        let c = config(
            "mirrors = \"production\"\ndiffers = [\"listen\", \"vars.LOG_LEVEL\", \"require.*\"]\nvars = { LOG_LEVEL = \"debug\", REGION = \"eu\", ONLY_STAGING = \"1\" }",
            "vars = { LOG_LEVEL = \"info\", REGION = \"us\", ONLY_PROD = \"1\" }\nrequire.approvals = 2",
        );
        let digest = Digest::from_sha256(&[7; 32]);
        let a = Observed {
            live: Some((Version::parse("1.1.0").unwrap(), digest.clone())),
            facts: BTreeMap::from([("runtime".to_owned(), "Python 3.11.7".to_owned())]),
            flags: BTreeMap::new(),
            image: BTreeMap::new(),
            schema: None,
            secrets: BTreeMap::new(),
        };
        let b = Observed {
            live: Some((Version::parse("1.1.0").unwrap(), digest)),
            facts: BTreeMap::from([("runtime".to_owned(), "Python 3.9.2".to_owned())]),
            flags: BTreeMap::new(),
            image: BTreeMap::new(),
            schema: None,
            secrets: BTreeMap::new(),
        };
        let items = diff(&c, &a, &b);
        assert_eq!(class_of(&items, "release.version").class, ItemClass::Same);
        assert_eq!(class_of(&items, "run").class, ItemClass::Same);
        assert_eq!(class_of(&items, "listen").class, ItemClass::Expected);
        assert_eq!(
            class_of(&items, "vars.LOG_LEVEL").class,
            ItemClass::Expected
        );
        assert_eq!(
            class_of(&items, "require.approvals").class,
            ItemClass::Expected,
            "require.* is declared"
        );
        assert_eq!(class_of(&items, "vars.REGION").class, ItemClass::Unexpected);
        assert_eq!(
            class_of(&items, "vars.ONLY_STAGING").class,
            ItemClass::OnlyInA
        );
        assert_eq!(class_of(&items, "vars.ONLY_PROD").class, ItemClass::OnlyInB);
        let fact = class_of(&items, "facts.runtime");
        assert_eq!(fact.class, ItemClass::Unexpected);
        assert_eq!(
            (fact.a.as_deref(), fact.b.as_deref()),
            (Some("Python 3.11.7"), Some("Python 3.9.2"))
        );
        assert_eq!(
            blocking(&items),
            [
                "facts.runtime",
                "vars.ONLY_PROD",
                "vars.ONLY_STAGING",
                "vars.REGION"
            ]
        );
    }

    fn schema(lines: &[(&str, &str)]) -> Observed {
        Observed {
            schema: Some(Ok(lines
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect())),
            ..Observed::default()
        }
    }

    #[test]
    fn each_schema_difference_is_one_item_and_a_table_on_one_side_only_is_one() {
        let orders = [
            ("schema.orders", "table"),
            ("schema.orders.column.id", "bigint NOT NULL"),
            ("schema.orders.constraint.orders_pkey", "PRIMARY KEY (id)"),
            ("schema.enum.order_status", "new, paid"),
        ];
        let staging = schema(
            &[
                &orders[..],
                &[
                    (
                        "schema.orders.column.note",
                        "text NOT NULL DEFAULT ''::text",
                    ),
                    ("schema.refunds", "table"),
                    ("schema.refunds.column.id", "bigint"),
                    ("schema.refunds.index.refunds_id_idx", "CREATE INDEX ..."),
                ],
            ]
            .concat(),
        );
        let mut production = schema(&orders);
        if let Some(Ok(lines)) = &mut production.schema {
            lines.insert(
                "schema.enum.order_status".into(),
                "new, paid, shipped".into(),
            );
        }
        let c = config("differs = [\"listen\"]", "parity.schema = true");
        let items = diff(&c, &staging, &production);
        let differing: Vec<(&str, ItemClass)> = items
            .iter()
            .filter(|i| is_schema(&i.key) && i.class != ItemClass::Same)
            .map(|i| (i.key.as_str(), i.class))
            .collect();
        assert_eq!(
            differing,
            [
                ("schema.enum.order_status", ItemClass::Unexpected),
                ("schema.orders.column.note", ItemClass::OnlyInA),
                ("schema.refunds", ItemClass::OnlyInA),
            ]
        );
        assert_eq!(
            class_of(&items, "schema.orders.column.id").class,
            ItemClass::Same
        );
        assert_eq!(blocking_entry(&items, false), Vec::<String>::new());
        assert_eq!(blocking_entry(&items, true).len(), 3);

        let declared = config(
            "differs = [\"listen\", \"schema.orders.*\", \"schema.refunds\", \"schema.enum.order_status\"]",
            "",
        );
        let items = diff(&declared, &staging, &production);
        assert!(blocking(&items).is_empty(), "{items:#?}");
        assert_eq!(
            class_of(&items, "schema.orders.column.note").class,
            ItemClass::Expected
        );
        let everything = config("differs = [\"listen\", \"schema.*\"]", "");
        assert!(blocking(&diff(&everything, &staging, &production)).is_empty());
        assert!(check_key("schema.orders.*").is_ok());
    }

    #[test]
    fn an_unreadable_schema_is_one_item_never_the_same() {
        let c = config("", "");
        let fine = schema(&[("schema.orders", "table")]);
        let broken = Observed {
            schema: Some(Err(
                "connecting to postgres://app:***@db/shop: refused".into()
            )),
            ..Observed::default()
        };
        let items = diff(&c, &fine, &broken);
        let item = class_of(&items, "schema");
        assert_eq!(item.class, ItemClass::Unexpected);
        assert_eq!(item.a.as_deref(), Some("read (1 table)"));
        assert!(
            item.b
                .as_deref()
                .unwrap()
                .starts_with("unreadable: connecting")
        );
        assert!(!items.iter().any(|i| i.key == "schema.orders"));
        let both = diff(&c, &broken, &broken);
        assert_eq!(class_of(&both, "schema").class, ItemClass::Unexpected);
        assert!(
            diff(&c, &Observed::default(), &Observed::default())
                .iter()
                .all(|i| !is_schema(&i.key))
        );
    }

    #[test]
    fn secrets_are_never_carried() {
        let c = config(
            "secrets = [\"SESSION\"]\nvars = { API_TOKEN = \"s-111\", DB_PASSWORD = \"hunter2\", DATABASE_URL = \"postgres://app:pw1@db/shop\", SESSION = \"abc\", PLAIN = \"x\" }",
            "vars = { API_TOKEN = \"p-222\", DB_PASSWORD = \"hunter2\", DATABASE_URL = \"postgres://app:pw2@db/shop\", SESSION = \"def\", PLAIN = \"y\" }",
        );
        let none = Observed::default();
        let items = diff(&c, &none, &none);
        for key in [
            "vars.API_TOKEN",
            "vars.DB_PASSWORD",
            "vars.DATABASE_URL",
            "vars.SESSION",
        ] {
            let item = class_of(&items, key);
            assert!(item.secret, "{key}");
            assert_eq!((&item.a, &item.b), (&None, &None), "{key}");
        }
        assert_eq!(
            class_of(&items, "vars.DB_PASSWORD").class,
            ItemClass::Same,
            "equal secrets still compare"
        );
        assert_eq!(
            class_of(&items, "vars.API_TOKEN").class,
            ItemClass::Unexpected
        );
        let all = format!("{items:?}");
        for leaked in ["s-111", "p-222", "hunter2", "pw1", "pw2", "abc", "def"] {
            assert!(!all.contains(leaked), "{leaked} leaked: {all}");
        }
        assert_eq!(class_of(&items, "vars.PLAIN").a.as_deref(), Some("x"));
        assert!(!has_credentials("https://example.com/a@b"));
    }
}
