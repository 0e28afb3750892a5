//! One suite over both databases: each test runs its statements on a SQLite file and on a
//! private PostgreSQL cluster, and expects the same answers.

use super::*;
use crate::values;
use tally_testpg::TestPg;

/// A SQLite connection, and a PostgreSQL one with the cluster it lives in.
fn each_backend(test: impl Fn(&mut Conn, &dyn Fn() -> Conn)) {
    let dir = std::env::temp_dir().join(format!(
        "tally-db-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("t.db").to_string_lossy().into_owned();
    test(&mut Conn::open(&file).unwrap(), &|| {
        Conn::open(&file).unwrap()
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let pg = TestPg::start();
    let url = pg.database("t");
    test(&mut Conn::open(&url).unwrap(), &|| {
        Conn::open(&url).unwrap()
    });
}

/// The table both suites use, in each database's words.
fn create(c: &mut Conn) {
    let ddl = match c.backend() {
        Backend::Sqlite => {
            "CREATE TABLE t (k TEXT PRIMARY KEY, i INTEGER, r REAL, b BLOB, flag INTEGER, small INTEGER)"
        }
        Backend::Postgres => {
            "CREATE TABLE t (k TEXT PRIMARY KEY, i BIGINT, r DOUBLE PRECISION, b BYTEA, flag BOOLEAN, small INTEGER)"
        }
    };
    c.batch(ddl).unwrap();
}

#[test]
fn values_go_in_and_come_back_alike() {
    each_backend(|c, _| {
        create(c);
        let insert = "INSERT INTO t (k, i, r, b, flag, small) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        let blob: &[u8] = &[0, 1, 2, 255];
        assert_eq!(
            c.execute(insert, values!["a", i64::MAX, 0.25, blob, true, 7])
                .unwrap(),
            1
        );
        c.execute(
            insert,
            values!["b", None::<i64>, None::<f64>, None::<Vec<u8>>, false, -3],
        )
        .unwrap();
        let rows = c
            .query("SELECT k, i, r, b, flag, small FROM t ORDER BY k", &[])
            .unwrap();
        assert_eq!(rows.len(), 2, "{:?}", c.backend());
        let a = &rows[0];
        assert_eq!(a.get::<String>(0).unwrap(), "a");
        assert_eq!(a.get::<i64>(1).unwrap(), i64::MAX);
        assert_eq!(a.get::<f64>(2).unwrap(), 0.25);
        assert_eq!(a.blob(3).unwrap(), blob);
        assert!(a.get::<bool>(4).unwrap());
        assert_eq!(a.get::<i64>(5).unwrap(), 7);
        let b = &rows[1];
        assert_eq!(b.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(b.get::<Option<f64>>(2).unwrap(), None);
        assert_eq!(b.get::<Option<Vec<u8>>>(3).unwrap(), None);
        assert!(!b.get::<bool>(4).unwrap());
        assert_eq!(b.get::<i64>(5).unwrap(), -3);
        // A placeholder used twice, and one value standing for both.
        let one = c
            .query_one(
                "SELECT count(*) FROM t WHERE k = ?1 OR i = ?1",
                values!["a"],
            )
            .map(|r| r.get::<i64>(0).unwrap());
        // PostgreSQL will not compare a bigint with text: the statement is refused, clearly.
        match c.backend() {
            Backend::Sqlite => assert_eq!(one.unwrap(), 1),
            Backend::Postgres => assert!(one.is_err()),
        }
        // Reading a column as what it is not says which and what.
        let err = rows[0].get::<i64>(0).unwrap_err().to_string();
        assert_eq!(err, "column 0: an integer wanted, text found");
        assert!(c.execute("INSERT INTO nowhere VALUES (1)", &[]).is_err());
        assert!(matches!(
            c.query_one("SELECT k FROM t WHERE k = ?1", values!["zz"]),
            Err(DbError::NoRow)
        ));
    });
}

/// Upserts that add, and sums read back as integers (PostgreSQL sums `bigint` as `numeric`).
#[test]
fn upserts_add_and_sums_are_exact() {
    each_backend(|c, _| {
        create(c);
        let add = "INSERT INTO t (k, i, r) VALUES (?1, ?2, ?3)
                   ON CONFLICT (k) DO UPDATE SET i = t.i + excluded.i, r = t.r + excluded.r";
        for n in 1..=100i64 {
            c.execute(
                add,
                values![format!("k{}", n % 3), n * 1_000_000_000_000, 0.5],
            )
            .unwrap();
        }
        let r = c
            .query_one("SELECT sum(i), count(*), sum(r), max(i) FROM t", &[])
            .unwrap();
        assert_eq!(r.get::<i64>(0).unwrap(), 5050 * 1_000_000_000_000);
        assert_eq!(r.get::<i64>(1).unwrap(), 3);
        assert_eq!(r.get::<f64>(2).unwrap(), 50.0);
        let each = c.query("SELECT k, i FROM t ORDER BY k", &[]).unwrap();
        let got: Vec<(String, i64)> = each
            .iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect();
        let want = |m: i64| (1..=100).filter(|n| n % 3 == m).sum::<i64>() * 1_000_000_000_000;
        assert_eq!(
            got,
            vec![
                ("k0".into(), want(0)),
                ("k1".into(), want(1)),
                ("k2".into(), want(2))
            ]
        );
    });
}

#[test]
fn transactions_commit_or_roll_back_whole() {
    each_backend(|c, open| {
        create(c);
        let kept = c.transaction(|tx| {
            tx.execute("INSERT INTO t (k, i) VALUES ('x', 1)", &[])?;
            tx.execute("INSERT INTO t (k, i) VALUES ('y', 2)", &[])
        });
        assert_eq!(kept.unwrap(), 1);
        let failed = c.transaction(|tx| {
            tx.execute("INSERT INTO t (k, i) VALUES ('z', 3)", &[])?;
            // The same key again: the whole transaction goes.
            tx.execute("INSERT INTO t (k, i) VALUES ('x', 4)", &[])
        });
        assert!(failed.is_err());
        // Seen from another connection too.
        let mut other = open();
        let keys: Vec<String> = other
            .query("SELECT k FROM t ORDER BY k", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        assert_eq!(keys, ["x", "y"]);
        // The connection is usable after a rollback.
        c.execute("INSERT INTO t (k, i) VALUES ('w', 5)", &[])
            .unwrap();
    });
}

/// Work meant to run once across replicas takes an advisory lock: one session at a time holds
/// it. SQLite has one collector, and every lock is its own.
#[test]
fn advisory_locks_are_held_by_one_session() {
    each_backend(|c, open| {
        let mut other = open();
        assert!(c.try_lock(42).unwrap());
        match c.backend() {
            Backend::Sqlite => assert!(other.try_lock(42).unwrap()),
            Backend::Postgres => {
                assert!(!other.try_lock(42).unwrap());
                // Another key is free.
                assert!(other.try_lock(43).unwrap());
                c.unlock(42).unwrap();
                assert!(other.try_lock(42).unwrap());
                // A blocking lock waits for the holder: released by a thread a moment later.
                let t = std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    other.unlock(42).unwrap();
                    other
                });
                let start = std::time::Instant::now();
                c.lock(42).unwrap();
                assert!(start.elapsed() >= std::time::Duration::from_millis(150));
                drop(t.join().unwrap());
            }
        }
    });
}

#[test]
fn a_database_that_cannot_be_reached_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Conn::open(&format!("postgres://tally@127.0.0.1:{port}/none"))
        .err()
        .unwrap();
    assert!(matches!(err, DbError::Connect(_)), "{err}");
    assert!(err.to_string().starts_with("cannot reach the database"));
}

/// The PostgreSQL schema: it applies; a retried event (same org, request and timestamp) is
/// stored once, within a month partition and across two; retention drops a month whole; and a
/// read of a day of events reads that month's partition only.
#[test]
fn postgres_schema_partitions_events_by_day() {
    let pg = TestPg::start();
    let mut c = Conn::open(&pg.database("schema")).unwrap();
    for (_, sql) in postgres::MIGRATIONS {
        c.batch(sql).unwrap();
    }
    // A writer at the schema's version (only those may write events).
    let (version, _) = postgres::MIGRATIONS[postgres::MIGRATIONS.len() - 1];
    c.batch(&format!("SET tally.schema_version = {version}"))
        .unwrap();
    c.execute(
        "INSERT INTO orgs (name, key_hash, created_ms) VALUES ('acme', 'h', 0)",
        &[],
    )
    .unwrap();
    let org: i64 = c
        .query_one("SELECT id FROM orgs", &[])
        .unwrap()
        .get(0)
        .unwrap();
    // The generation bumps once per statement.
    let auth: i64 = c
        .query_one("SELECT n FROM auth_generation", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(auth, 1);
    c.execute(
        "INSERT INTO budgets (org_id, name, scope, period, limit_usd, warn_at, action, epoch,
             created_ms, updated_ms) VALUES (?1, 'b', '{}', 'day', 10.0, 0.8, 'alert', 0, 0, 0)",
        values![org],
    )
    .unwrap();
    let budgets: i64 = c
        .query_one("SELECT n FROM budget_generation", &[])
        .unwrap()
        .get(0)
        .unwrap();
    let auth_after: i64 = c
        .query_one("SELECT n FROM auth_generation", &[])
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(
        (budgets, auth_after),
        (1, 1),
        "each trigger bumps its own counter"
    );
    let nov = 1_794_000_000_000; // 2026-11-06
    let dec = 1_796_112_000_000; // 2026-12-01
    assert_eq!(
        postgres::ensure_partitions(&mut c, [nov, dec, dec + 1]).unwrap(),
        ["events_20261106", "events_20261201"]
    );
    // Made once: again changes nothing.
    postgres::ensure_partitions(&mut c, [dec]).unwrap();
    let insert =
        "INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
                      streaming, latency_ms, routed, received_ms, replica, \"user\")
                  VALUES (?1, ?2, ?3, '', 'openai', 'chat', '/', 0, 1.0, 0, 0, 'r1', 'u')
                  ON CONFLICT (org_id, request_id, ts_ms) DO NOTHING";
    for (id, ts) in [
        ("a", nov),
        ("a", nov),
        ("b", dec),
        ("b", dec),
        ("c", dec + 1),
    ] {
        c.execute(insert, values![org, id, ts]).unwrap();
    }
    let count = |c: &mut Conn, table: &str| -> i64 {
        c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0)
            .unwrap()
    };
    assert_eq!(count(&mut c, "events"), 3);
    assert_eq!(count(&mut c, "events_20261106"), 1);
    assert_eq!(count(&mut c, "events_20261201"), 2);
    assert_eq!(count(&mut c, "events_default"), 0);
    // Idempotency rests on the timestamp: the same request id at another time is another row.
    c.execute(insert, values![org, "a", dec]).unwrap();
    assert_eq!(count(&mut c, "events"), 4);
    // A day's events: that day's partition only (pruned by the range on the partition key).
    c.batch("ANALYZE events").unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT seq FROM events WHERE org_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3
             ORDER BY ts_ms DESC LIMIT 100",
            values![org, dec, dec + 86_400_000],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("events_20261201"), "{plan}");
    assert!(!plan.contains("events_20261106"), "pruned: {plan}");
    // Retention: a day goes whole.
    c.batch("DROP TABLE events_20261106").unwrap();
    assert_eq!(count(&mut c, "events"), 3);
}

/// A list is a PostgreSQL array parameter: rows made from columns by `unnest`, nulls and all.
/// SQLite has no arrays, and says so rather than binding something else.
#[test]
fn lists_bind_as_arrays_on_postgresql_only() {
    each_backend(|c, _| {
        create(c);
        let keys = Value::List(vec!["a".into(), "b".into()]);
        let ints = Value::List(vec![Value::Int(1), Value::Null]);
        let sql = "INSERT INTO t (k, i) SELECT unnest(?1::text[]), unnest(?2::bigint[])";
        match c.backend() {
            Backend::Sqlite => {
                let err = c
                    .execute("INSERT INTO t (k, i) VALUES (?1, ?2)", &[keys, ints])
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("SQLite has none"), "{err}");
            }
            Backend::Postgres => {
                assert_eq!(c.execute(sql, &[keys, ints]).unwrap(), 2);
                let rows: Vec<(String, Option<i64>)> = c
                    .query_map("SELECT k, i FROM t ORDER BY k", &[], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap();
                assert_eq!(rows, [("a".to_string(), Some(1)), ("b".to_string(), None)]);
            }
        }
    });
}
