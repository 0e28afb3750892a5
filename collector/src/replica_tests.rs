//! Replicas on one PostgreSQL database, always on PostgreSQL (the private cluster the tests of
//! this process share): concurrent ingest of the same and different batches, schema made by
//! replicas starting together, retention by partition, a replica that stops with rows in
//! memory, and keys and orgs across replicas.

use crate::budgets::{self, BudgetSpec, Period};
use crate::rollup::DAY;
use crate::sketch::Sketch;
use crate::store::tests::{expected, labelled_batch, seen};
use crate::store::{Database, EventFilter, Options, Owners, Store};
use std::sync::Arc;
use tally_testpg as testpg;

fn replica(url: &str, name: &str) -> Store {
    let options = Options {
        replica: Some(name.into()),
        ..Default::default()
    };
    Store::open_with(&Database::Postgres(url.into()), options).unwrap()
}

fn count(store: &Store, sql: &str) -> i64 {
    store.conn().value(sql, &[]).unwrap()
}

#[test]
fn two_replicas_ingesting_the_same_and_different_batches_at_once_count_exactly() {
    let url = testpg::shared().database("replicas_ingest");
    let (a, b) = (Arc::new(replica(&url, "a")), Arc::new(replica(&url, "b")));
    let key = a.create_org("acme", 0).unwrap();
    let org = b.org_for_key(&key).unwrap().unwrap();
    let now = crate::api::now_ms();
    let (day, _) = Period::Day.bounds(now);
    // A budget over the org's whole spend, set before the traffic.
    let spec = BudgetSpec {
        name: "all".into(),
        scope: Default::default(),
        period: "day".into(),
        limit_usd: 1e9,
        warn_at: 0.5,
        action: "alert".into(),
    };
    budgets::set(&mut a.conn_for_cli(), org.id, &spec, now)
        .unwrap()
        .unwrap();
    // Today's events, across the day's partition and, for its last ones, tomorrow's.
    let events = labelled_batch(4000, day, DAY + DAY / 4);
    let batches: Vec<Arc<crate::ingest::Batch>> =
        events.chunks(100).map(|c| Arc::new(c.to_vec())).collect();
    // Every batch goes to one replica, and every third also to the other (a filter retrying
    // against another endpoint), from two threads per replica.
    let mut plans: Vec<(Arc<Store>, Vec<Arc<crate::ingest::Batch>>)> = Vec::new();
    for t in 0..4 {
        let mine = if t % 2 == 0 { &a } else { &b };
        let list = batches
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == t || (i % 3 == 0 && (i + 1) % 4 == t))
            .map(|(_, b)| b.clone())
            .collect();
        plans.push((mine.clone(), list));
    }
    let sent: usize = plans
        .iter()
        .map(|(_, l)| l.iter().map(|b| b.len()).sum::<usize>())
        .sum();
    let threads: Vec<_> = plans
        .into_iter()
        .map(|(store, list)| {
            let org = org.clone();
            std::thread::spawn(move || {
                let (mut accepted, mut duplicates) = (0, 0);
                for batch in list {
                    // As the filter does: a batch that fails (two replicas' transactions
                    // waiting on each other's events, which PostgreSQL ends by failing one) is
                    // sent again; a failed transaction stored nothing.
                    let mut tries = 0;
                    let (n, d, _) = loop {
                        match store.insert_owned(Owners::one(org.clone()), batch.clone(), now) {
                            Ok(r) => break r,
                            Err(e) => {
                                tries += 1;
                                assert!(tries < 5, "{e}");
                            }
                        }
                    };
                    accepted += n;
                    duplicates += d;
                }
                (accepted, duplicates)
            })
        })
        .collect();
    let (mut accepted, mut duplicates) = (0, 0);
    for t in threads {
        let (n, d) = t.join().unwrap();
        accepted += n;
        duplicates += d;
    }
    assert_eq!(accepted, events.len(), "every event stored once");
    assert_eq!(duplicates, sent - events.len());
    assert_eq!(count(&a, "SELECT count(*) FROM events"), 4000);
    assert!(count(&a, "SELECT count(DISTINCT replica) FROM events") == 2);
    // What one collector would say, from either replica: counts, sums and the sketches.
    let sqlite_dir = crate::store::tests::temp_dir("replicas-one");
    let one = Store::open(&sqlite_dir).unwrap();
    let one_org = one
        .org_for_key(&one.create_org("acme", 0).unwrap())
        .unwrap()
        .unwrap();
    one.insert_events(&one_org, Arc::new(events.clone()), now)
        .unwrap();
    // A replica's rollup rows reach the database within a second (the housekeeping tick of
    // `serve` writes them); here, at once.
    for s in [&a, &b] {
        s.write_rollups().unwrap();
    }
    let (from, to) = (day, day + 2 * DAY);
    for dim in [
        None,
        Some("team"),
        Some("model"),
        Some("user"),
        Some("namespace"),
    ] {
        let want = expected(&events, |_| true, dim);
        for store in [&a, &b] {
            let (rows, _) = store
                .summary(&org, dim, &EventFilter::default(), from, to, to)
                .unwrap();
            assert_eq!(seen(&rows), want, "{dim:?} from {}", store.replica());
        }
    }
    let total = |s: &Store, o: &crate::store::Org| {
        s.summary(o, None, &EventFilter::default(), from, to, to)
            .unwrap()
            .0
            .remove(0)
            .1
    };
    let (replicated, single) = (total(&a, &org), total(&one, &one_org));
    let mut latencies = Sketch::default();
    for (e, _) in &events {
        latencies.add(e.latency_ms);
    }
    assert_eq!(replicated.latency, latencies);
    assert_eq!(replicated.latency, single.latency);
    assert_eq!(replicated.ttfb, single.ttfb);
    // The budget counted each event once, whichever replica stored it.
    let defined = b.budgets_of(org.id).unwrap();
    let spent = budgets::states(&mut b.reader(), &defined, now).unwrap();
    let want: f64 = events
        .iter()
        .filter(|(_, ts)| *ts < day + DAY)
        .map(|(e, _)| e.cost_usd.unwrap_or(0.0))
        .sum();
    assert!(
        (spent[0].spend_usd - want).abs() < 1e-9,
        "{} {want}",
        spent[0].spend_usd
    );
}

#[test]
fn replicas_starting_together_make_the_schema_once() {
    let url = testpg::shared().database("replicas_start");
    let starts: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || replica(&url, &format!("r{i}")))
        })
        .collect();
    let stores: Vec<Store> = starts.into_iter().map(|t| t.join().unwrap()).collect();
    // Each version made once, in order.
    let versions: Vec<i64> = stores[0]
        .conn()
        .query_map(
            "SELECT version FROM schema_version ORDER BY version",
            &[],
            |r| r.get(0),
        )
        .unwrap();
    let all: Vec<i64> = crate::db::postgres::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(versions, all);
    assert_eq!(count(&stores[0], "SELECT count(*) FROM rollup_progress"), 4);
    // A name in use by a running replica is refused, with what to do.
    let err = Store::open_with(
        &Database::Postgres(url.clone()),
        Options {
            replica: Some("r1".into()),
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("in use") && err.contains("--replica"), "{err}");
}

#[test]
fn a_stopped_replicas_rows_in_memory_are_counted_by_another_once() {
    let url = testpg::shared().database("replicas_stop");
    let b = replica(&url, "b");
    let key = b.create_org("acme", 0).unwrap();
    let org = b.org_for_key(&key).unwrap().unwrap();
    let day = tally::time::parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
    let events = labelled_batch(500, day, DAY);
    {
        // Stored, its rollup rows still in memory when it stops (no write at exit: a crash).
        let a = replica(&url, "a");
        a.insert_events(&org, Arc::new(events[..300].to_vec()), 0)
            .unwrap();
        a.write_rollups().unwrap();
        a.insert_events(&org, Arc::new(events[300..].to_vec()), 0)
            .unwrap();
    }
    assert_eq!(b.recover_replicas().unwrap(), 200);
    assert_eq!(b.recover_replicas().unwrap(), 0, "counted once");
    let (rows, _) = b
        .summary(
            &org,
            Some("team"),
            &EventFilter::default(),
            day,
            day + DAY,
            day + DAY,
        )
        .unwrap();
    assert_eq!(seen(&rows), expected(&events, |_| true, Some("team")));
    // The replica coming back under its name finds its rows counted.
    let a = replica(&url, "a");
    assert_eq!(a.recount_rollups().unwrap(), 0);
}

#[test]
fn retention_drops_whole_day_partitions() {
    let url = testpg::shared().database("replicas_retention");
    let a = replica(&url, "a");
    let key = a.create_org("acme", 0).unwrap();
    let org = a.org_for_key(&key).unwrap().unwrap();
    let day = tally::time::parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
    // Ten events a day over four days.
    let events = labelled_batch(40, day, 4 * DAY);
    a.insert_events(&org, Arc::new(events.clone()), 0).unwrap();
    let partitions = |s: &Store| -> Vec<String> {
        s.conn()
            .query_map(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'events'::regclass ORDER BY 1",
                &[],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        partitions(&a),
        [
            "events_20260105",
            "events_20260106",
            "events_20260107",
            "events_20260108",
            "events_default"
        ]
    );
    // Two days kept, counted from the middle of the 8th: the 5th goes whole; the 6th holds
    // events younger than the cutoff, and stays until all of it is older.
    let now = day + 3 * DAY + DAY / 2;
    assert_eq!(a.prune(2, now).unwrap(), 10);
    assert_eq!(
        partitions(&a),
        [
            "events_20260106",
            "events_20260107",
            "events_20260108",
            "events_default"
        ]
    );
    let now = day + 4 * DAY;
    assert_eq!(a.prune(2, now).unwrap(), 10);
    assert_eq!(
        partitions(&a),
        ["events_20260107", "events_20260108", "events_default"]
    );
    assert_eq!(count(&a, "SELECT count(*) FROM events"), 20);
    // The rollups stay: the four days still add up.
    let (rows, _) = a
        .summary(&org, None, &EventFilter::default(), day, day + 4 * DAY, now)
        .unwrap();
    assert_eq!(rows[0].1.requests, 40);
    // A retried event keeps its time: still a duplicate across partitions and replicas.
    let b = replica(&url, "b");
    let (n, dups, _) = b
        .insert_events(&org, Arc::new(events[30..].to_vec()), 0)
        .unwrap();
    assert_eq!((n, dups), (0, 10));
    let mut moved = events[39].clone();
    moved.1 += DAY;
    moved.0.timestamp = tally::time::format_rfc3339_ms(moved.1);
    // The same request id at another time is another event (the time is in the key).
    assert_eq!(
        b.insert_events(&org, Arc::new(vec![moved]), 0).unwrap().0,
        1
    );
}

#[test]
fn keys_orgs_and_settings_hold_across_replicas() {
    let url = testpg::shared().database("replicas_keys");
    let (a, b) = (replica(&url, "a"), replica(&url, "b"));
    let acme = a.create_org("acme", 0).unwrap();
    let globex = b.create_org("globex", 0).unwrap();
    assert_eq!(b.org_for_key(&acme).unwrap().unwrap().name, "acme");
    let rotated = b.rotate_key("acme").unwrap();
    // The other replica refuses the old key at once: keys are read from the database.
    assert!(a.org_for_key(&acme).unwrap().is_none());
    assert_eq!(a.org_for_key(&rotated).unwrap().unwrap().name, "acme");
    // Each org sees its own events only, whichever replica stored them.
    let day = tally::time::parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
    let acme_org = a.org_for_key(&rotated).unwrap().unwrap();
    let globex_org = a.org_for_key(&globex).unwrap().unwrap();
    a.insert_events(&acme_org, Arc::new(labelled_batch(30, day, DAY)), 0)
        .unwrap();
    b.insert_events(&globex_org, Arc::new(labelled_batch(20, day, DAY)), 0)
        .unwrap();
    let requests = |s: &Store, o: &crate::store::Org| {
        let (rows, _) = s
            .summary(o, None, &EventFilter::default(), day, day + DAY, day + DAY)
            .unwrap();
        rows.first().map_or(0, |r| r.1.requests)
    };
    for s in [&a, &b] {
        s.write_rollups().unwrap();
    }
    for s in [&a, &b] {
        assert_eq!(requests(s, &acme_org), 30);
        assert_eq!(requests(s, &globex_org), 20);
    }
    // Same request ids, other orgs: not duplicates of each other.
    assert_eq!(count(&a, "SELECT count(*) FROM events"), 50);
    // A disabled org is refused by both.
    a.set_disabled("globex", true).unwrap();
    assert!(b.org_for_key(&globex).unwrap().is_none());
}

#[test]
fn a_database_that_restarts_loses_no_event_and_counts_none_twice() {
    // A cluster of its own: the restart cuts every connection to it.
    let pg = testpg::TestPg::start();
    let url = pg.database("restart");
    let (a, b) = (replica(&url, "a"), replica(&url, "b"));
    let key = a.create_org("acme", 0).unwrap();
    let org = a.org_for_key(&key).unwrap().unwrap();
    let day = tally::time::parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
    let events = labelled_batch(600, day, DAY);
    a.insert_events(&org, Arc::new(events[..200].to_vec()), 0)
        .unwrap();
    b.insert_events(&org, Arc::new(events[200..300].to_vec()), 0)
        .unwrap();
    // Down for a second with rows of both replicas in memory; while it is down, a batch fails
    // (the filter would send it again) and the readiness check says so.
    pg.restart(std::time::Duration::from_millis(500));
    // The first use after the restart finds each connection broken and makes it again.
    let again = a.insert_events(&org, Arc::new(events[300..400].to_vec()), 0);
    let again = match again {
        Ok(r) => r,
        Err(_) => a
            .insert_events(&org, Arc::new(events[300..400].to_vec()), 0)
            .unwrap(),
    };
    assert_eq!(again.0, 100);
    a.ready().unwrap();
    // The filter's retry of a batch whose answer was lost: duplicates, stored once.
    let retried = b
        .insert_events(&org, Arc::new(events[200..500].to_vec()), 0)
        .unwrap_or_else(|_| {
            b.insert_events(&org, Arc::new(events[200..500].to_vec()), 0)
                .unwrap()
        });
    assert_eq!((retried.0, retried.1), (100, 200));
    b.insert_events(&org, Arc::new(events[500..].to_vec()), 0)
        .unwrap();
    for s in [&a, &b] {
        s.write_rollups().unwrap();
    }
    assert_eq!(count(&a, "SELECT count(*) FROM events"), 600);
    for s in [&a, &b] {
        // A read connection finds its connection broken at its first use after the restart,
        // and reads again at once on a new one: the first read already answers.
        let read = || {
            s.summary(
                &org,
                Some("model"),
                &EventFilter::default(),
                day,
                day + DAY,
                day + DAY,
            )
        };
        let (rows, _) = read().unwrap();
        assert_eq!(seen(&rows), expected(&events, |_| true, Some("model")));
    }
}

#[test]
fn every_query_of_the_dashboard_reads_an_index_or_the_rollups() {
    let url = testpg::shared().database("replicas_plans");
    let a = replica(&url, "a");
    let key = a.create_org("acme", 0).unwrap();
    let org = a.org_for_key(&key).unwrap().unwrap();
    let day = tally::time::parse_rfc3339_ms("2026-01-05T00:00:00Z").unwrap();
    a.insert_events(&org, Arc::new(labelled_batch(3000, day, 3 * DAY)), 0)
        .unwrap();
    a.write_rollups().unwrap();
    let now = day + 3 * DAY;
    let team = || EventFilter {
        team: Some("pay".into()),
        ..Default::default()
    };
    let two = || EventFilter {
        team: Some("pay".into()),
        app: Some("web".into()),
        limit: 100,
        ..Default::default()
    };
    let statements = crate::db::statements_of(|| {
        let all = EventFilter::default();
        for dim in [None, Some("model"), Some("user"), Some("workload")] {
            a.summary(&org, dim, &all, day, now, now).unwrap();
            a.summary(&org, dim, &team(), day, now, now).unwrap();
            a.summary(&org, dim, &two(), now - 3 * crate::rollup::HOUR, now, now)
                .unwrap();
            a.summary(&org, dim, &two(), day, now, now).unwrap();
        }
        for bucket in [crate::rollup::MINUTE, crate::rollup::HOUR, DAY] {
            a.timeseries(&org, bucket, Some("model"), &all, day, now, now)
                .unwrap();
            a.timeseries(&org, bucket, None, &team(), day, now, now)
                .unwrap();
            a.timeseries(&org, bucket, None, &two(), day, now, now)
                .unwrap();
        }
        let page = a.query_events(&org, &two()).unwrap();
        let last = page.last().unwrap();
        let next = EventFilter {
            before: Some((
                tally::time::parse_rfc3339_ms(&last.timestamp).unwrap(),
                last.request_id.clone(),
            )),
            ..two()
        };
        a.query_events(&org, &next).unwrap();
    });
    let mut reads = 0;
    let mut conn = a.open_reader().unwrap();
    for (sql, values) in statements {
        // The rows a read goes through; the one-row generation tables aside.
        if !sql.trim_start().starts_with("SELECT")
            || !(sql.contains("FROM events") || sql.contains("FROM rollups"))
        {
            continue;
        }
        reads += 1;
        let plan = crate::db::plan(&mut conn, &sql, &values).unwrap();
        assert!(
            !plan.contains("Seq Scan") && plan.contains("Index"),
            "{sql}\n{plan}"
        );
    }
    assert!(reads >= 20, "{reads} reads");
}

/// A rollup write reads the stored sketches of the rows it adds to: one probe of the primary key
/// per row, even in the plan made while the table looked empty, which a replica keeps for the
/// statement (a plan that hashed the keys read all of the replica's rows in every statement).
#[test]
fn the_rollup_write_reads_each_stored_sketch_by_its_key_whatever_the_statistics() {
    let url = testpg::shared().database("replicas_generic_plan");
    let a = replica(&url, "a");
    a.create_org("acme", 0).unwrap();
    let sql = crate::rollup::read_sketches_sql(3);
    let mut values: Vec<crate::db::Value> = vec![1i64.into(), "a".into()];
    for i in 0..3i64 {
        values.extend([
            crate::rollup::HOUR.into(),
            (i * crate::rollup::HOUR).into(),
            "model".into(),
            "gpt-4o".into(),
        ]);
    }
    let mut conn = a.open_reader().unwrap();
    let plan = crate::db::generic_plan(&mut conn, &sql, &values).unwrap();
    assert!(
        plan.contains("Nested Loop") && !plan.contains("Hash") && !plan.contains("Seq Scan"),
        "{plan}"
    );
    // Every column of the key is bound in the probe: none is left to a filter over the rows.
    let probe = plan
        .lines()
        .find(|l| l.contains("Index Cond"))
        .unwrap_or_default();
    for column in [
        "org_id",
        "granularity_ms",
        "dim",
        "bucket_ms",
        "key",
        "replica",
    ] {
        assert!(probe.contains(column), "{column}: {plan}");
    }
}

/// A database made by an older collector (schema version 1) is brought up to date by the first
/// replica that opens it, and keeps its events.
#[test]
fn a_database_at_an_older_schema_version_is_migrated_and_keeps_its_events() {
    let url = testpg::shared().database("replicas_migrate");
    let mut conn = crate::db::Conn::open(&url).unwrap();
    conn.batch(crate::db::postgres::MIGRATIONS[0].1).unwrap();
    conn.batch(
        "INSERT INTO schema_version (version) VALUES (1);
         INSERT INTO orgs (name, key_hash, created_ms) VALUES ('acme', 'h', 0);
         INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
            streaming, latency_ms, routed, received_ms, replica)
         VALUES (1, 'before', 0, '1970-01-01T00:00:00.000Z', 'openai', 'chat_completions',
            '/v1/chat/completions', 0, 1.0, 0, 0, 'old')",
    )
    .unwrap();
    // The keys of the tables and of their partitions (the event above made `events_default`'s).
    let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f'
               AND confrelid = 'orgs'::regclass AND conrelid::regclass::text ~ '^(events|rollups)'";
    assert!(conn.value::<i64>(fks, &[]).unwrap() >= 3);
    let a = replica(&url, "a");
    assert_eq!(count(&a, fks), 0);
    assert_eq!(
        count(&a, "SELECT max(version) FROM schema_version"),
        crate::db::postgres::MIGRATIONS.last().unwrap().0
    );
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM events WHERE request_id = 'before'"
        ),
        1
    );
    // A collector from before version 3 (its connections do not say the version they write)
    // may no longer write events or rollup rows: it would not count users under teams.
    for sql in [
        "INSERT INTO events (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
            streaming, latency_ms, routed, received_ms, replica)
         VALUES (1, 'old', 0, '1970-01-01T00:00:00.000Z', 'openai', 'chat_completions',
            '/v1/chat/completions', 0, 1.0, 0, 0, 'old')",
        "UPDATE rollup_progress SET events_seq = events_seq",
        "DELETE FROM rollups",
    ] {
        let err = conn.execute(sql, &[]).unwrap_err().to_string();
        assert!(err.contains("older than the database's schema"), "{err}");
    }
    assert!(a.ready().is_ok());
    // A replica older than the database's schema is not ready.
    conn.batch("INSERT INTO schema_version (version) VALUES (1000)")
        .unwrap();
    let err = a.ready().unwrap_err().to_string();
    assert!(err.contains("schema version 1000"), "{err}");
    conn.batch("DELETE FROM schema_version WHERE version = 1000")
        .unwrap();
    // Opening it again changes nothing.
    drop(a);
    let a = replica(&url, "a");
    assert_eq!(
        count(&a, "SELECT count(*) FROM schema_version"),
        crate::db::postgres::MIGRATIONS.len() as i64
    );
}
