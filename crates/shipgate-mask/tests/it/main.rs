//! Refreshes between real SQLite files: foreign keys intact, determinism, uniqueness, refusal
//! of unmasked personal columns with nothing written, a refresh cut off half-way leaving the
//! target as it was, and the leak check catching a weak rule.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};

use shipgate_core::Role;
use shipgate_core::config::{DataConfig, Unlisted};
use shipgate_core::mask::{MaskKey, Transformer};
use shipgate_mask::{MaskError, check_sqlite, refresh_sqlite};
use sqlx::{Connection, SqliteConnection};

async fn connect(path: &Path) -> SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    SqliteConnection::connect_with(&options).await.unwrap()
}

/// A production database: users with personal columns, orders joined on the user's email.
async fn production(dir: &Path, users: i64) -> PathBuf {
    let path = dir.join("production.db");
    let mut db = connect(&path).await;
    sqlx::raw_sql(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, full_name TEXT,
           phone TEXT, birth_date TEXT, salary INTEGER, notes TEXT, status TEXT, door_code TEXT);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, user_email TEXT NOT NULL REFERENCES users (email),
           amount REAL NOT NULL);
         CREATE INDEX orders_user ON orders (user_email);",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    for i in 0..users {
        sqlx::query("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(i)
            .bind(format!("person{i}@mail.example"))
            .bind(format!("Person Number{i}"))
            .bind(format!("+33 6 12 34 {:02} {:02}", i % 100, (i / 100) % 100))
            .bind(format!("19{:02}-0{}-1{}", 50 + i % 40, 1 + i % 9, i % 10))
            .bind(30_000 + i * 7)
            .bind(format!("called on {i}"))
            .bind("active")
            .bind(format!("{}", i % 10))
            .execute(&mut *tx)
            .await
            .unwrap();
        for j in 0..2 {
            sqlx::query("INSERT INTO orders (user_email, amount) VALUES (?, ?)")
                .bind(format!("person{i}@mail.example"))
                .bind(10.5 * (j + 1) as f64)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    path
}

fn rules(pairs: &[(&str, &str, Transformer)]) -> DataConfig {
    let mut data = DataConfig {
        locations: Default::default(),
        unlisted: Unlisted::Refuse,
        mask: Default::default(),
        role: Role::Admin,
    };
    for (t, c, r) in pairs {
        data.mask
            .entry((*t).to_owned())
            .or_default()
            .insert((*c).to_owned(), r.clone());
    }
    data
}

fn full_rules() -> DataConfig {
    rules(&[
        ("users", "email", Transformer::Email),
        ("users", "full_name", Transformer::Name),
        ("users", "phone", Transformer::KeepFormat),
        ("users", "birth_date", Transformer::ShiftDays(30)),
        ("users", "salary", Transformer::Noise(0.1)),
        ("users", "notes", Transformer::Null),
        ("orders", "user_email", Transformer::Email),
    ])
}

fn key() -> MaskKey {
    MaskKey::new([42; 32])
}

/// A key under which `keep_format` leaves at least one of the ten one-digit codes as it was
/// (any key leaves about one in ten; this makes sure of it for the assertions).
fn leaky_key() -> MaskKey {
    (0u8..=255)
        .map(|k| MaskKey::new([k; 32]))
        .find(|k| {
            (0..10).any(|d| Transformer::KeepFormat.apply(k, &d.to_string()) == Some(d.to_string()))
        })
        .unwrap()
}

async fn dump(path: &Path) -> Vec<(i64, String, String, String, i64)> {
    let mut db = connect(path).await;
    sqlx::query_as("SELECT id, email, full_name, phone, salary FROM users ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn masked_keys_still_join_every_run_gives_the_same_data_and_unique_stays_unique() {
    let dir = tempfile::tempdir().unwrap();
    let source = production(dir.path(), 300).await;
    let (a, b) = (
        dir.path().join("staging-a.db"),
        dir.path().join("staging-b.db"),
    );
    let report = refresh_sqlite(&source, &a, &full_rules(), &key(), |_| {})
        .await
        .unwrap();
    refresh_sqlite(&source, &b, &full_rules(), &key(), |_| {})
        .await
        .unwrap();
    assert_eq!(report.tables.iter().map(|t| t.rows).sum::<u64>(), 900);
    assert_eq!(report.leaks.leaked(), 0, "{:?}", report.leaks);
    assert_eq!(
        dump(&a).await,
        dump(&b).await,
        "the same key gives the same data"
    );

    let mut db = connect(&a).await;
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o LEFT JOIN users u ON u.email = o.user_email WHERE u.id IS NULL",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "every masked order still joins its masked user");
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT email) FROM users")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!((n, distinct), (300, 300));
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE '%@mail.example' OR full_name LIKE 'Person%' OR notes IS NOT NULL")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = 7")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "active", "unlisted, not personal: kept");
    let index: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'orders_user'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(index, 1, "indexes come along");
    let other = refresh_sqlite(
        &source,
        &dir.path().join("c.db"),
        &full_rules(),
        &MaskKey::new([1; 32]),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(other.leaks.leaked(), 0);
    assert_ne!(
        dump(&dir.path().join("c.db")).await,
        dump(&a).await,
        "another key, other data"
    );
}

#[tokio::test]
async fn an_unmasked_personal_column_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let source = production(dir.path(), 10).await;
    let target = dir.path().join("staging.db");
    std::fs::write(&target, b"previous staging data").unwrap();
    let mut partial = full_rules();
    partial.mask.get_mut("users").unwrap().remove("phone");
    partial.mask.get_mut("users").unwrap().remove("notes");
    let err = refresh_sqlite(&source, &target, &partial, &key(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, MaskError::Unmasked(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("users.phone, users.notes"), "{message}");
    assert_eq!(std::fs::read(&target).unwrap(), b"previous staging data");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".refresh-"))
        .collect();
    assert!(leftovers.is_empty(), "nothing written");

    let typo = rules(&[("users", "emial", Transformer::Email)]);
    let err = refresh_sqlite(&source, &target, &typo, &key(), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("mask.users.emial names no column of users"),
        "{err}"
    );
}

#[tokio::test]
async fn a_refresh_cut_off_half_way_leaves_the_previous_data() {
    let dir = tempfile::tempdir().unwrap();
    let source = production(dir.path(), 30_000).await;
    let target = dir.path().join("staging.db");
    refresh_sqlite(&source, &target, &full_rules(), &key(), |_| {})
        .await
        .unwrap();
    let before = dump(&target).await;
    let mut db = connect(&source).await;
    sqlx::query("UPDATE users SET status = 'changed'")
        .execute(&mut db)
        .await
        .unwrap();
    drop(db);

    // Cut off at the first progress report, mid-table: the future is dropped at its next
    // await, as when the process stops.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let (all, k) = (full_rules(), key());
    let outcome = tokio::select! {
        done = refresh_sqlite(&source, &target, &all, &k, move |p| {
            if p.rows < p.total
                && let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
        }) => Some(done),
        _ = rx => None,
    };
    assert!(
        outcome.is_none(),
        "the refresh was cut off before it finished"
    );
    assert_eq!(
        dump(&target).await,
        before,
        "staging keeps its previous data"
    );
    let mut db = connect(&target).await;
    let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = 1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "active");
    drop(db);
    let leftovers = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".refresh-"))
            .count()
    };
    assert_eq!(
        leftovers(dir.path()),
        1,
        "the cut-off refresh left its half-written file"
    );
    // The next refresh clears what the cut-off one left and completes.
    refresh_sqlite(&source, &target, &full_rules(), &key(), |_| {})
        .await
        .unwrap();
    assert_eq!(leftovers(dir.path()), 0);
    let mut db = connect(&target).await;
    let status: String = sqlx::query_scalar("SELECT status FROM users WHERE id = 1")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(status, "changed");
}

#[tokio::test]
async fn the_leak_check_catches_a_weak_rule_and_keeps_the_previous_data() {
    let dir = tempfile::tempdir().unwrap();
    let source = production(dir.path(), 50).await;
    let target = dir.path().join("staging.db");
    std::fs::write(&target, b"previous").unwrap();
    let mut weak = full_rules();
    weak.mask
        .get_mut("users")
        .unwrap()
        .insert("door_code".into(), Transformer::KeepFormat);
    // A key under which at least one of the ten codes keeps its digit (any key leaves about
    // one in ten codes as they were; this makes sure of it for the assertion).
    let weak_key = leaky_key();
    let err = refresh_sqlite(&source, &target, &weak, &weak_key, |_| {})
        .await
        .unwrap_err();
    let MaskError::Leaked(report) = &err else {
        panic!("{err}")
    };
    // One digit keeps its format digit for digit: about one value in ten stays as it was.
    let door = report
        .columns
        .iter()
        .find(|c| c.column == "door_code")
        .unwrap();
    assert!(door.leaked > 0 && door.leaked < 50, "{door:?}");
    assert_eq!(report.leaked(), door.leaked, "only the weak rule leaks");
    assert!(
        err.to_string().contains(&format!(
            "users.door_code: {} of 50 values equal the source",
            door.leaked
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"previous");

    // On demand, against a staging refreshed with good rules: nothing leaks.
    refresh_sqlite(&source, &target, &full_rules(), &key(), |_| {})
        .await
        .unwrap();
    let check = check_sqlite(&source, &target, &full_rules()).await.unwrap();
    assert_eq!(check.leaked(), 0);
    assert!(
        check
            .columns
            .iter()
            .all(|c| c.checked == 50 || c.column == "user_email")
    );
}

mod pg;
mod schema;

mod postgres {
    use shipgate_core::mask::Transformer;
    use shipgate_mask::{MaskError, check_postgres, refresh_postgres};
    use sqlx::{Connection, PgConnection};

    use super::pg::Postgres;
    use super::{full_rules, key};

    async fn conn(url: &str) -> PgConnection {
        PgConnection::connect(url).await.unwrap()
    }

    /// `users` and `orders` in `shop`, orders joined to users on the email; a marker table in
    /// `shop_staging` standing for its previous data.
    async fn fill(pg: &Postgres, users: i64) {
        let mut db = conn(&pg.url("shop")).await;
        sqlx::raw_sql(&format!(
            "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, full_name text,
               phone text, birth_date date, salary integer, notes text, status text, door_code text);
             CREATE TABLE orders (id bigint PRIMARY KEY, user_email text NOT NULL REFERENCES users (email),
               amount numeric(10, 2) NOT NULL);
             CREATE INDEX orders_amount ON orders (amount);
             INSERT INTO users SELECT i, 'person' || i || '@mail.example', 'Person Number' || i,
               '+33 6 12 34 ' || lpad((i % 100)::text, 2, '0'), date '1960-01-01' + (i % 9000),
               30000 + i * 7, E'called on\\t' || i, 'active', (i % 10)::text
               FROM generate_series(0, {last}) i;
             INSERT INTO orders SELECT i, 'person' || (i / 2) || '@mail.example', (i % 500) + 0.5
               FROM generate_series(0, {orders}) i;",
            last = users - 1,
            orders = users * 2 - 1
        ))
        .execute(&mut db)
        .await
        .unwrap();
        let mut staging = conn(&pg.url("shop_staging")).await;
        sqlx::raw_sql(
            "CREATE TABLE previous (note text); INSERT INTO previous VALUES ('staging before')",
        )
        .execute(&mut staging)
        .await
        .unwrap();
    }

    async fn fingerprint(url: &str) -> String {
        let mut db = conn(url).await;
        sqlx::query_scalar(
            "SELECT md5(string_agg(id || email || coalesce(full_name, '') || coalesce(phone, '') || coalesce(salary::text, ''), ',' ORDER BY id)) FROM users",
        )
        .fetch_one(&mut db)
        .await
        .unwrap()
    }

    async fn previous_is_there(url: &str) -> bool {
        let mut db = conn(url).await;
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'previous'")
            .fetch_one(&mut db)
            .await
            .unwrap()
            == 1
    }

    #[tokio::test]
    async fn foreign_keys_hold_every_run_is_the_same_and_unique_stays_unique() {
        let pg = Postgres::start().await;
        fill(&pg, 2000).await;
        let (source, target) = (pg.url("shop"), pg.url("shop_staging"));
        let report = refresh_postgres(&source, &target, &full_rules(), &key(), |_| {})
            .await
            .unwrap();
        assert_eq!(report.tables.iter().map(|t| t.rows).sum::<u64>(), 6000);
        assert_eq!(report.leaks.leaked(), 0, "{:?}", report.leaks);
        assert!(
            !previous_is_there(&target).await,
            "staging was replaced as a whole"
        );
        let first = fingerprint(&target).await;
        refresh_postgres(&source, &target, &full_rules(), &key(), |_| {})
            .await
            .unwrap();
        assert_eq!(
            fingerprint(&target).await,
            first,
            "the same key gives the same data"
        );

        let mut db = conn(&target).await;
        let fk: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'public.orders'::regclass")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(
            fk, 1,
            "the foreign key was added back, so every masked order joins its user"
        );
        let (n, distinct, leaked): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT email), count(*) FILTER (WHERE email LIKE '%@mail.example' OR full_name LIKE 'Person%' OR notes IS NOT NULL) FROM users",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!((n, distinct, leaked), (2000, 2000, 0));
        let index: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname = 'orders_amount'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(index, 1);
        let mut src = conn(&source).await;
        let untouched: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE '%@mail.example'")
                .fetch_one(&mut src)
                .await
                .unwrap();
        assert_eq!(untouched, 2000, "production is only read");
        assert_eq!(
            check_postgres(&source, &target, &full_rules())
                .await
                .unwrap()
                .leaked(),
            0
        );
    }

    #[tokio::test]
    async fn refusal_cut_off_and_weak_rules_leave_staging_as_it_was() {
        let pg = Postgres::start().await;
        fill(&pg, 120_000).await;
        let (source, target) = (pg.url("shop"), pg.url("shop_staging"));

        let mut partial = full_rules();
        partial.mask.get_mut("users").unwrap().remove("phone");
        let err = refresh_postgres(&source, &target, &partial, &key(), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, MaskError::Unmasked(ref c) if c == &["users.phone".to_owned()]),
            "{err}"
        );
        assert!(previous_is_there(&target).await);

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut tx = Some(tx);
        let (rules, k) = (full_rules(), key());
        let outcome = tokio::select! {
            done = refresh_postgres(&source, &target, &rules, &k, move |p| {
                if p.rows < p.total
                    && let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
            }) => Some(done),
            _ = rx => None,
        };
        assert!(outcome.is_none(), "cut off mid-table");
        assert!(
            previous_is_there(&target).await,
            "staging keeps its previous data"
        );

        let mut weak = full_rules();
        weak.mask
            .get_mut("users")
            .unwrap()
            .insert("door_code".into(), Transformer::KeepFormat);
        let weak_key = super::leaky_key();
        let err = refresh_postgres(&source, &target, &weak, &weak_key, |_| {})
            .await
            .unwrap_err();
        let MaskError::Leaked(report) = &err else {
            panic!("{err}")
        };
        let door = report
            .columns
            .iter()
            .find(|c| c.column == "door_code")
            .unwrap();
        assert!(door.leaked > 0 && door.leaked < 120_000, "{door:?}");
        assert!(
            previous_is_there(&target).await,
            "a leaking refresh is not swapped in"
        );

        refresh_postgres(&source, &target, &full_rules(), &key(), |_| {})
            .await
            .unwrap();
        assert!(!previous_is_there(&target).await);
        let mut db = conn(&target).await;
        let leftovers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'shipgate_refresh'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(leftovers, 0);
    }
}
