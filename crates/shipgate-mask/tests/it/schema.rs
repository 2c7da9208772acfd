//! Schemas read from real databases (a PostgreSQL 15 cluster started for the test, SQLite
//! files): each kind of thing as one line, and each change between two databases as exactly
//! the lines it touches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shipgate_core::config::DataLocation;
use shipgate_mask::schema::schema_of;
use shipgate_store::cluster::TempCluster;
use sqlx::{Connection, PgConnection, SqliteConnection};

/// The keys whose lines differ between `a` and `b`, or that only one of them has.
fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

const PG_SHOP: &str = "
    CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
    CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE);
    CREATE TABLE orders (
        id bigserial PRIMARY KEY,
        customer_id bigint NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        status order_status NOT NULL DEFAULT 'new',
        amount numeric(10, 2) NOT NULL CHECK (amount > 0),
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX orders_created_idx ON orders (created_at);
    CREATE VIEW paid_orders AS SELECT id, amount FROM orders WHERE status = 'paid';
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
    CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
    CREATE SCHEMA audit;
    CREATE TABLE audit.log (at timestamptz, what text);";

async fn pg_database(cluster: &TempCluster, sql: &str) -> DataLocation {
    let url = cluster.fresh_database("schema").await.unwrap();
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    DataLocation::Postgres(url)
}

async fn pg_alter(location: &DataLocation, sql: &str) {
    let DataLocation::Postgres(url) = location else {
        unreachable!("a PostgreSQL location")
    };
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn postgres_each_thing_is_one_line_and_a_column_added_is_one_difference() {
    let cluster = TempCluster::shared().unwrap();
    let staging = pg_database(cluster, PG_SHOP).await;
    let production = pg_database(cluster, PG_SHOP).await;
    let a = schema_of(&staging).await.unwrap();
    assert_eq!(
        differences(&a, &schema_of(&production).await.unwrap()),
        Vec::<String>::new()
    );

    let line = |k: &str| {
        a.get(k)
            .unwrap_or_else(|| panic!("no {k} in {a:#?}"))
            .as_str()
    };
    assert_eq!(line("schema.orders"), "table");
    assert_eq!(line("schema.audit.log"), "table");
    assert_eq!(line("schema.audit.log.column.what"), "text");
    assert_eq!(
        line("schema.orders.column.status"),
        "order_status NOT NULL DEFAULT 'new'::order_status"
    );
    assert_eq!(
        line("schema.orders.column.amount"),
        "numeric(10,2) NOT NULL"
    );
    assert_eq!(
        line("schema.orders.column.id"),
        "bigint NOT NULL DEFAULT nextval('orders_id_seq'::regclass)"
    );
    assert_eq!(
        line("schema.orders.index.orders_created_idx"),
        "CREATE INDEX orders_created_idx ON orders USING btree (created_at)"
    );
    assert_eq!(
        line("schema.orders.constraint.orders_pkey"),
        "PRIMARY KEY (id)"
    );
    assert_eq!(
        line("schema.orders.constraint.orders_customer_id_fkey"),
        "FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE"
    );
    assert_eq!(
        line("schema.orders.constraint.orders_amount_check"),
        "CHECK ((amount > (0)::numeric))"
    );
    assert_eq!(
        line("schema.customers.constraint.customers_email_key"),
        "UNIQUE (email)"
    );
    assert!(
        !a.contains_key("schema.orders.index.orders_pkey"),
        "a constraint's own index is the constraint's line"
    );
    assert_eq!(
        line("schema.orders.trigger.orders_touch"),
        "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch()"
    );
    assert!(
        line("schema.paid_orders").starts_with("view AS SELECT orders.id,"),
        "{a:#?}"
    );
    assert_eq!(line("schema.enum.order_status"), "new, paid, shipped");

    pg_alter(
        &staging,
        "ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT ''",
    )
    .await;
    let a = schema_of(&staging).await.unwrap();
    let b = schema_of(&production).await.unwrap();
    assert_eq!(differences(&a, &b), ["schema.orders.column.note"]);
    assert_eq!(
        a["schema.orders.column.note"],
        "text NOT NULL DEFAULT ''::text"
    );
}

#[tokio::test]
async fn postgres_an_index_a_constraint_and_an_enum_value_each_show() {
    let cluster = TempCluster::shared().unwrap();
    let staging = pg_database(cluster, PG_SHOP).await;
    let production = pg_database(cluster, PG_SHOP).await;
    pg_alter(
        &production,
        "DROP INDEX orders_created_idx; CREATE INDEX orders_created_idx ON orders (created_at DESC);
         ALTER TABLE customers ADD CONSTRAINT customers_email_lower CHECK (email = lower(email));
         ALTER TYPE order_status ADD VALUE 'refunded';",
    )
    .await;
    let a = schema_of(&staging).await.unwrap();
    let b = schema_of(&production).await.unwrap();
    assert_eq!(
        differences(&a, &b),
        [
            "schema.customers.constraint.customers_email_lower",
            "schema.enum.order_status",
            "schema.orders.index.orders_created_idx",
        ]
    );
    assert_eq!(
        b["schema.enum.order_status"],
        "new, paid, shipped, refunded"
    );
    assert_eq!(
        b["schema.orders.index.orders_created_idx"],
        "CREATE INDEX orders_created_idx ON orders USING btree (created_at DESC)"
    );
}

#[tokio::test]
async fn postgres_200_tables_are_read_with_one_query_per_kind() {
    let cluster = TempCluster::shared().unwrap();
    let mut sql = String::new();
    for t in 0..200 {
        sql.push_str(&format!(
            "CREATE TABLE t{t} (id bigint PRIMARY KEY, name text NOT NULL, n int CHECK (n >= 0));
             CREATE INDEX t{t}_name_idx ON t{t} (name);"
        ));
    }
    let db = pg_database(cluster, &sql).await;
    let started = std::time::Instant::now();
    let lines = schema_of(&db).await.unwrap();
    let took = started.elapsed();
    // A table, 3 columns, an index, a primary key and a check each.
    assert_eq!(lines.len(), 200 * 7);
    assert!(took.as_secs_f64() < 1.0, "reading 200 tables took {took:?}");
}

#[tokio::test]
async fn a_database_that_cannot_be_read_says_why() {
    let missing = DataLocation::Sqlite(PathBuf::from("/nonexistent/shop.db"));
    let e = schema_of(&missing).await.unwrap_err().to_string();
    assert!(
        e.contains("reading the schema of /nonexistent/shop.db") && e.contains("No such file"),
        "{e}"
    );
    let refused = DataLocation::Postgres("postgres://app:hunter2@127.0.0.1:1/shop".into());
    let e = schema_of(&refused).await.unwrap_err().to_string();
    assert!(
        e.contains("connecting to postgres://app:***@127.0.0.1:1/shop"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

const SQLITE_SHOP: &str = "
    CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
    CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        customer_id INTEGER NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
        status TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'paid', 'shipped')),
        amount REAL NOT NULL,
        created_at TEXT NOT NULL,
        CONSTRAINT positive CHECK (amount > 0)
    );
    CREATE INDEX orders_created_idx ON orders (created_at);
    CREATE VIEW paid_orders AS SELECT id, amount FROM orders WHERE status = 'paid';
    CREATE TRIGGER orders_touch AFTER UPDATE ON orders BEGIN SELECT 1; END;";

async fn sqlite_file(dir: &Path, name: &str, sql: &str) -> DataLocation {
    let path = dir.join(name);
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    DataLocation::Sqlite(path)
}

#[tokio::test]
async fn sqlite_each_thing_is_one_line_and_each_change_is_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let staging = sqlite_file(dir.path(), "staging.db", SQLITE_SHOP).await;
    let production = sqlite_file(dir.path(), "production.db", SQLITE_SHOP).await;
    let a = schema_of(&staging).await.unwrap();
    assert_eq!(
        differences(&a, &schema_of(&production).await.unwrap()),
        Vec::<String>::new()
    );
    let expected = [
        ("schema.customers", "table"),
        ("schema.customers.column.email", "TEXT NOT NULL"),
        ("schema.customers.column.id", "INTEGER"),
        (
            "schema.customers.constraint.customers_email_key",
            "UNIQUE (email)",
        ),
        (
            "schema.customers.constraint.customers_pkey",
            "PRIMARY KEY (id)",
        ),
        ("schema.orders", "table"),
        ("schema.orders.column.amount", "REAL NOT NULL"),
        ("schema.orders.column.created_at", "TEXT NOT NULL"),
        ("schema.orders.column.customer_id", "INTEGER NOT NULL"),
        ("schema.orders.column.id", "INTEGER"),
        ("schema.orders.column.status", "TEXT NOT NULL DEFAULT 'new'"),
        (
            "schema.orders.constraint.orders_customer_id_fkey",
            "FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE",
        ),
        ("schema.orders.constraint.orders_pkey", "PRIMARY KEY (id)"),
        (
            "schema.orders.constraint.orders_status_check",
            "CHECK (status IN ('new', 'paid', 'shipped'))",
        ),
        ("schema.orders.constraint.positive", "CHECK (amount > 0)"),
        (
            "schema.orders.index.orders_created_idx",
            "CREATE INDEX orders_created_idx ON orders (created_at)",
        ),
        (
            "schema.orders.trigger.orders_touch",
            "CREATE TRIGGER orders_touch AFTER UPDATE ON orders BEGIN SELECT 1; END",
        ),
        (
            "schema.paid_orders",
            "view AS SELECT id, amount FROM orders WHERE status = 'paid'",
        ),
    ];
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(a, expected);

    let DataLocation::Sqlite(path) = &staging else {
        unreachable!("a SQLite location")
    };
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::raw_sql(
        "ALTER TABLE orders ADD COLUMN note TEXT NOT NULL DEFAULT '';
         DROP INDEX orders_created_idx; CREATE INDEX orders_created_idx ON orders (created_at, id);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let a = schema_of(&staging).await.unwrap();
    let b = schema_of(&production).await.unwrap();
    assert_eq!(
        differences(&a, &b),
        [
            "schema.orders.column.note",
            "schema.orders.index.orders_created_idx"
        ]
    );
    assert_eq!(a["schema.orders.column.note"], "TEXT NOT NULL DEFAULT ''");
}
