//! The store contract, one body per behaviour run on real PostgreSQL and real SQLite:
//! appends and their conflicts, idempotency keys, stream paging and probes, snapshots,
//! the read models' compare-and-set checkpoint, and API key rows with their limit.

mod common;

use std::sync::Arc;

use ledger_aggregates::BrandId;
use ledger_projections::LogPosition;
use usage_ledger::store::{
    read_log_shared, ApiKeyStore, EventLog, ModelRow, NewApiKey, NewEvent, NewSnapshot,
    PostgresLog, ProjectionStore, SqliteLog, StoreError, StoredEvent, READ_MODELS_PROJECTOR,
};

use common::TestDb;

const STREAM: &str = "usage_period";

/// The three store traits on one new connection pool to the test database.
struct Stores {
    log: Arc<dyn EventLog>,
    models: Arc<dyn ProjectionStore>,
    keys: Arc<dyn ApiKeyStore>,
}

async fn open(db: &TestDb) -> Stores {
    match (db.pg_url(), db.sqlite_path()) {
        (Some(url), _) => {
            let store = Arc::new(PostgresLog::connect(url).await.expect("connect pg"));
            Stores {
                log: store.clone(),
                models: store.clone(),
                keys: store,
            }
        }
        (None, Some(path)) => {
            let store = Arc::new(
                SqliteLog::open(&path.to_string_lossy())
                    .await
                    .expect("open sqlite"),
            );
            Stores {
                log: store.clone(),
                models: store.clone(),
                keys: store,
            }
        }
        (None, None) => unreachable!("a test database is PostgreSQL or SQLite"),
    }
}

fn event(id: &str, sequence: i64) -> NewEvent {
    NewEvent {
        aggregate_type: STREAM,
        aggregate_id: id.to_owned(),
        sequence,
        event_type: "UsageRecorded",
        event_version: "1",
        payload: format!(r#"{{"n":{sequence}}}"#),
        metadata: r#"{"by":"test"}"#.to_owned(),
        idempotency_key: None,
        request_hash: None,
    }
}

fn keyed(id: &str, sequence: i64, key: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        request_hash: Some(format!("hash-of-{key}")),
        ..event(id, sequence)
    }
}

/// What reading back `event(id, sequence)` must give.
fn stored(id: &str, sequence: i64) -> StoredEvent {
    let e = event(id, sequence);
    StoredEvent {
        aggregate_type: e.aggregate_type.to_owned(),
        aggregate_id: e.aggregate_id,
        sequence,
        event_type: e.event_type.to_owned(),
        event_version: e.event_version.to_owned(),
        payload: e.payload,
        metadata: e.metadata,
    }
}

fn sequences(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.sequence).collect()
}

async fn append_stream(log: &Arc<dyn EventLog>, id: &str, len: i64) {
    let events: Vec<NewEvent> = (1..=len).map(|s| event(id, s)).collect();
    log.append(&events, &[]).await.expect("append");
}

async fn an_append_answers_where_each_event_sits_in_the_log(db: &TestDb) {
    // The positions an append answers are those the log is read back with, in the
    // order the events were given, with or without snapshots in the same commit.
    let s = open(db).await;
    let first = [
        event("beta:2026-11", 1),
        event("acme:2026-11", 1),
        event("beta:2026-11", 2),
    ];
    let snapshot = NewSnapshot {
        aggregate_type: STREAM,
        aggregate_id: "acme:2026-11".to_owned(),
        last_sequence: 2,
        payload: r#"{"at":2}"#.to_owned(),
    };
    let second = [event("acme:2026-11", 2), event("gamma:2026-11", 1)];
    let mut answered = s.log.append(&first, &[]).await.expect("append");
    answered.extend(s.log.append(&second, &[snapshot]).await.expect("append"));
    let read = s
        .models
        .read_log(LogPosition::START, None, 100)
        .await
        .expect("read");
    let given: Vec<(String, i64)> = first
        .iter()
        .chain(&second)
        .map(|e| (e.aggregate_id.clone(), e.sequence))
        .collect();
    let at_read: Vec<(String, i64)> = answered
        .iter()
        .map(|&p| {
            let r = read
                .iter()
                .find(|r| r.at.position == p)
                .unwrap_or_else(|| panic!("position {p} is in the log"));
            (r.aggregate_id.clone(), r.sequence)
        })
        .collect();
    assert_eq!(at_read, given);
    assert!(s.log.append(&[], &[]).await.expect("empty").is_empty());
}
on_both_stores!(
    an_append_answers_where_each_event_sits_in_the_log,
    an_append_answers_where_each_event_sits_in_the_log
);

async fn an_append_that_takes_a_used_sequence_writes_nothing(db: &TestDb) {
    // Proves a batch with one sequence already taken fails as a conflict and leaves
    // every stream of the batch as it was, the untouched one included.
    let s = open(db).await;
    append_stream(&s.log, "acme:2026-11", 2).await;
    let batch = [event("beta:2026-11", 1), event("acme:2026-11", 2)];
    let refused = s.log.append(&batch, &[]).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        s.log.stream_version(STREAM, "acme:2026-11").await.unwrap(),
        2
    );
    assert_eq!(
        s.log.stream_version(STREAM, "beta:2026-11").await.unwrap(),
        0
    );
    assert!(
        s.log.append(&[], &[]).await.is_ok(),
        "an empty append is a no-op"
    );
}
on_both_stores!(
    an_append_that_takes_a_used_sequence_writes_nothing,
    an_append_that_takes_a_used_sequence_writes_nothing
);

async fn an_idempotency_key_is_recorded_once_per_stream(db: &TestDb) {
    // Proves a key is unique within its stream (a second use is a conflict), may be
    // reused by another stream, and is found again with its first event.
    let s = open(db).await;
    s.log
        .append(&[keyed("acme:2026-11", 1, "k1")], &[])
        .await
        .unwrap();
    let again = s.log.append(&[keyed("acme:2026-11", 2, "k1")], &[]).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    s.log
        .append(&[keyed("beta:2026-11", 1, "k1")], &[])
        .await
        .unwrap();

    let asked = [
        ("acme:2026-11".to_owned(), "k1".to_owned()),
        ("beta:2026-11".to_owned(), "k1".to_owned()),
        ("acme:2026-11".to_owned(), "k2".to_owned()),
    ];
    let mut found = s.log.find_keyed(STREAM, &asked).await.unwrap();
    found.sort_by(|a, b| a.aggregate_id.cmp(&b.aggregate_id));
    let seen: Vec<_> = found
        .iter()
        .map(|k| {
            let id = k.aggregate_id.as_str();
            (
                id,
                k.idempotency_key.as_str(),
                k.request_hash.as_str(),
                k.sequence,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("acme:2026-11", "k1", "hash-of-k1", 1),
            ("beta:2026-11", "k1", "hash-of-k1", 1)
        ]
    );
    assert_eq!(found[0].payload, event("acme:2026-11", 1).payload);
}
on_both_stores!(
    an_idempotency_key_is_recorded_once_per_stream,
    an_idempotency_key_is_recorded_once_per_stream
);

async fn a_stream_pages_forwards_and_backwards(db: &TestDb) {
    // Proves `read_stream` pages oldest first after a sequence and `read_stream_back`
    // newest first before one, both bounded by the limit and exact to the event.
    let s = open(db).await;
    append_stream(&s.log, "acme:2026-11", 5).await;
    append_stream(&s.log, "beta:2026-11", 1).await;
    let forward = |after| s.log.read_stream(STREAM, "acme:2026-11", after, 2);
    assert_eq!(sequences(&forward(0).await.unwrap()), [1, 2]);
    assert_eq!(sequences(&forward(2).await.unwrap()), [3, 4]);
    assert_eq!(sequences(&forward(4).await.unwrap()), [5]);
    assert!(forward(5).await.unwrap().is_empty());
    let back = |before| s.log.read_stream_back(STREAM, "acme:2026-11", before, 2);
    assert_eq!(sequences(&back(6).await.unwrap()), [5, 4]);
    assert_eq!(sequences(&back(4).await.unwrap()), [3, 2]);
    assert_eq!(sequences(&back(2).await.unwrap()), [1]);
    assert!(back(1).await.unwrap().is_empty());
    assert_eq!(forward(0).await.unwrap()[0], stored("acme:2026-11", 1));
}
on_both_stores!(
    a_stream_pages_forwards_and_backwards,
    a_stream_pages_forwards_and_backwards
);

async fn stream_probes_answer_for_exact_ids(db: &TestDb) {
    // Proves the version, existence and id listing of streams: 0 for a stream without
    // events, exact-case ids only, and ids of one aggregate type in id order.
    let s = open(db).await;
    append_stream(&s.log, "beta:2026-11", 3).await;
    append_stream(&s.log, "acme:2026-11", 1).await;
    let mut other = event("acme", 1);
    other.aggregate_type = "brand";
    s.log.append(&[other], &[]).await.unwrap();

    assert_eq!(
        s.log.stream_version(STREAM, "beta:2026-11").await.unwrap(),
        3
    );
    assert_eq!(
        s.log.stream_version(STREAM, "none:2026-11").await.unwrap(),
        0
    );
    // Many streams' versions in one call, in the order asked, exact on case.
    let keys = [
        (STREAM, "none:2026-11".to_owned()),
        (STREAM, "beta:2026-11".to_owned()),
        (STREAM, "ACME:2026-11".to_owned()),
        ("brand", "acme".to_owned()),
        (STREAM, "beta:2026-11".to_owned()),
    ];
    let acme_brand = s.log.stream_version("brand", "acme").await.unwrap();
    assert_eq!(
        s.log.stream_versions(&keys).await.unwrap(),
        [0, 3, 0, acme_brand, 3]
    );
    assert!(s.log.stream_versions(&[]).await.unwrap().is_empty());
    let asked = ["acme:2026-11", "ACME:2026-11", "none:2026-11"].map(str::to_owned);
    assert_eq!(
        s.log.existing_streams(STREAM, &asked).await.unwrap(),
        ["acme:2026-11"]
    );
    assert_eq!(
        s.log.stream_ids(STREAM).await.unwrap(),
        ["acme:2026-11", "beta:2026-11"]
    );
    assert_eq!(s.log.stream_ids("brand").await.unwrap(), ["acme"]);
}
on_both_stores!(
    stream_probes_answer_for_exact_ids,
    stream_probes_answer_for_exact_ids
);

/// The `(stream, sequence)` of `appended`, sorted: the store answers them in no order.
fn streams_of(appended: Vec<usage_ledger::store::Appended>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = appended
        .into_iter()
        .map(|a| (a.aggregate_id, a.sequence))
        .collect();
    v.sort();
    v
}

/// The log's end and everything the consumers can read now, from one store.
async fn end_and_log(s: &Stores) -> (LogPosition, Vec<ledger_projections::LogRecord>) {
    let end = s.models.log_end().await.unwrap();
    let read = s
        .models
        .read_log(LogPosition::START, None, 10)
        .await
        .unwrap();
    (end, read)
}

async fn the_log_s_end_and_what_was_appended_after_a_position(db: &TestDb) {
    // Proves where a consumer that starts live begins (the last event readable), and
    // the stream and sequence of what was committed after a position, within a limit.
    let s = open(db).await;
    assert_eq!(s.models.log_end().await.unwrap(), LogPosition::START);
    assert!(s
        .log
        .appended_after(LogPosition::START, 10)
        .await
        .unwrap()
        .is_empty());
    let first = s
        .log
        .append(&[event("beta:2026-11", 1), event("acme:2026-11", 1)], &[])
        .await
        .unwrap();
    let after_first = s.models.log_end().await.unwrap();
    assert_eq!(after_first.position, first[1]);
    s.log
        .append(&[event("acme:2026-11", 2), event("gamma:2026-11", 1)], &[])
        .await
        .unwrap();
    let (end, read) = end_and_log(&s).await;
    assert_eq!(end, read.last().unwrap().at);
    assert_eq!(
        streams_of(s.log.appended_after(after_first, 10).await.unwrap()),
        [
            ("acme:2026-11".to_owned(), 2),
            ("gamma:2026-11".to_owned(), 1)
        ]
    );
    let all = s.log.appended_after(LogPosition::START, 10).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|a| a.aggregate_type == STREAM));
    assert_eq!(
        s.log
            .appended_after(LogPosition::START, 3)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(s.log.appended_after(end, 10).await.unwrap().is_empty());
}
on_both_stores!(
    the_log_s_end_and_what_was_appended_after_a_position,
    the_log_s_end_and_what_was_appended_after_a_position
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_committed_past_an_open_transaction_is_appended_after_the_end() {
    // PostgreSQL only (SQLite has one writer at a time): the log's end stops below a
    // transaction still open, but a commit made after it began is already what was
    // appended after that end; the open one's events join once it commits.
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let s = open(&db).await;
    append_stream(&s.log, "acme:2026-11", 1).await;
    let pool = sqlx::PgPool::connect(db.pg_url().unwrap()).await.unwrap();
    let mut open_tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('usage_period', 'late:2026-11', 1, 'UsageRecorded', '1', '{}', '{}')",
    )
    .execute(&mut *open_tx)
    .await
    .unwrap();
    s.log
        .append(&[event("acme:2026-11", 2)], &[])
        .await
        .unwrap();
    let (end, read) = end_and_log(&s).await;
    assert_eq!(read.len(), 1, "nothing is read past the open transaction");
    assert_eq!(end, read[0].at);
    assert_eq!(
        streams_of(s.log.appended_after(end, 10).await.unwrap()),
        [("acme:2026-11".to_owned(), 2)]
    );
    open_tx.commit().await.unwrap();
    assert_eq!(
        streams_of(s.log.appended_after(end, 10).await.unwrap()),
        [
            ("acme:2026-11".to_owned(), 2),
            ("late:2026-11".to_owned(), 1)
        ]
    );
    pool.close().await;
    db.cleanup().await;
}

async fn a_load_starts_after_the_newest_snapshot(db: &TestDb) {
    // Proves a loaded stream carries its newest snapshot and only the events after it,
    // and that a stream without rows comes back empty.
    let s = open(db).await;
    append_stream(&s.log, "acme:2026-11", 2).await;
    let snapshot = |seq: i64| NewSnapshot {
        aggregate_type: STREAM,
        aggregate_id: "acme:2026-11".to_owned(),
        last_sequence: seq,
        payload: format!(r#"{{"at":{seq}}}"#),
    };
    s.log
        .append(&[event("acme:2026-11", 3)], &[snapshot(3)])
        .await
        .unwrap();
    s.log
        .append(
            &[event("acme:2026-11", 4), event("acme:2026-11", 5)],
            &[snapshot(4)],
        )
        .await
        .unwrap();

    let keys = [
        (STREAM, "acme:2026-11".to_owned()),
        (STREAM, "none:2026-11".to_owned()),
    ];
    let mut loaded = s.log.load_streams(&keys).await.unwrap();
    loaded.sort_by(|a, b| a.aggregate_id.cmp(&b.aggregate_id));
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].snapshot, Some((4, r#"{"at":4}"#.to_owned())));
    assert_eq!(loaded[0].events, [stored("acme:2026-11", 5)]);
    assert!(loaded[1].snapshot.is_none() && loaded[1].events.is_empty());
}
on_both_stores!(
    a_load_starts_after_the_newest_snapshot,
    a_load_starts_after_the_newest_snapshot
);

fn row(brand: &str, period: &str, sequence: i64) -> ModelRow {
    ModelRow {
        brand_id: brand.to_owned(),
        period: period.to_owned(),
        sequence,
        models: format!(r#"{{"seq":{sequence}}}"#),
    }
}

async fn the_models_checkpoint_moves_only_from_where_it_was_read(db: &TestDb) {
    // Proves `save_models` writes rows and moves the checkpoint together, and that a
    // save from a stale checkpoint writes nothing; then the model queries and a rebuild.
    let s = open(db).await;
    append_stream(&s.log, "acme:2026-11", 2).await;
    let log = s
        .models
        .read_log(LogPosition::START, None, 10)
        .await
        .unwrap();
    let (first, second) = (log[0].at, log[1].at);
    let start = s.models.checkpoint(READ_MODELS_PROJECTOR).await.unwrap();
    assert_eq!(start, LogPosition::START);

    let rows = [
        row("acme", "2026-11", 1),
        row("acme", "2026-10", 7),
        row("beta", "2026-11", 3),
    ];
    let saved = s
        .models
        .save_models(READ_MODELS_PROJECTOR, start, first, &rows);
    assert!(saved.await.unwrap());
    let stale = [row("acme", "2026-11", 99)];
    let saved = s
        .models
        .save_models(READ_MODELS_PROJECTOR, start, second, &stale);
    assert!(!saved.await.unwrap(), "the checkpoint had moved");
    assert_eq!(
        s.models.checkpoint(READ_MODELS_PROJECTOR).await.unwrap(),
        first
    );

    let keys =
        [("acme", "2026-11"), ("none", "2026-11")].map(|(b, p)| (b.to_owned(), p.to_owned()));
    assert_eq!(
        s.models.load_models(&keys).await.unwrap(),
        [rows[0].clone()]
    );
    assert_eq!(
        s.models.models_of_brand("acme").await.unwrap(),
        [rows[1].clone(), rows[0].clone()]
    );
    assert_eq!(
        s.models.models_in_period("2026-11").await.unwrap(),
        [rows[0].clone(), rows[2].clone()]
    );
    let (at, all) = s
        .models
        .snapshot_models(READ_MODELS_PROJECTOR)
        .await
        .unwrap();
    assert_eq!(at, first);
    assert_eq!(all, [rows[1].clone(), rows[0].clone(), rows[2].clone()]);

    let rebuilt = [row("beta", "2026-11", 4)];
    s.models
        .replace_models(READ_MODELS_PROJECTOR, second, &rebuilt)
        .await
        .unwrap();
    let (at, all) = s
        .models
        .snapshot_models(READ_MODELS_PROJECTOR)
        .await
        .unwrap();
    assert_eq!((at, all), (second, rebuilt.to_vec()));
}
on_both_stores!(
    the_models_checkpoint_moves_only_from_where_it_was_read,
    the_models_checkpoint_moves_only_from_where_it_was_read
);

async fn consumers_woken_together_share_one_read_and_never_a_stale_one(db: &TestDb) {
    // Three readers that ask for the same position in the same moment get one read
    // between them; a reader that asks after an append sees it, never the earlier read.
    let s = open(db).await;
    append_stream(&s.log, "acme:2026-11", 3).await;
    let reads = || {
        let store = s.models.clone();
        async move {
            read_log_shared(store.as_ref(), LogPosition::START, 100)
                .await
                .unwrap()
        }
    };
    let (a, b, c) = tokio::join!(reads(), reads(), reads());
    assert_eq!(a.len(), 3);
    assert!(
        Arc::ptr_eq(&a, &b) && Arc::ptr_eq(&a, &c),
        "one read for the three"
    );
    assert_eq!(s.models.shared_reads().joined(), 2);

    s.log
        .append(&[event("acme:2026-11", 4)], &[])
        .await
        .expect("append");
    let after = reads().await;
    assert_eq!(after.len(), 4, "a later read is a read of its own");
    assert_eq!(s.models.shared_reads().joined(), 2);
}
on_both_stores!(
    consumers_woken_together_share_one_read_and_never_a_stale_one,
    consumers_woken_together_share_one_read_and_never_a_stale_one
);

fn brand(name: &str) -> BrandId {
    BrandId::parse(name).unwrap()
}

fn new_key(brand_name: &str, n: usize) -> NewApiKey {
    NewApiKey {
        brand_id: brand(brand_name),
        label: format!("key {n}"),
        secret_sha256: format!("{brand_name}-{n:0>60}"),
        created_by: "ops".to_owned(),
    }
}

async fn key_rows_are_inserted_within_the_limit_listed_and_revoked(db: &TestDb) {
    // Proves a brand's active keys stop at the limit given, revoked keys free their
    // place, another brand's keys neither count nor list, and a revoked key is not found.
    let s = open(db).await;
    let insert = |brand: &str, n: usize| {
        let (keys, key) = (s.keys.clone(), new_key(brand, n));
        async move { keys.insert_within_limit(&key, 2).await.unwrap() }
    };
    let first = insert("acme", 1).await.expect("room for a first key");
    assert!(insert("beta", 1).await.is_some());
    assert!(insert("acme", 2).await.is_some());
    assert!(
        insert("acme", 3).await.is_none(),
        "acme holds 2 active keys"
    );

    let listed = s.keys.list(&brand("acme")).await.unwrap();
    let labels: Vec<&str> = listed.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["key 2", "key 1"], "newest first");
    assert_eq!(listed[1], first, "read back as created");
    let first_hash = new_key("acme", 1).secret_sha256;
    let found = s.keys.find_active_by_hash(&first_hash).await.unwrap();
    assert_eq!(found, Some(first.clone()));

    assert!(!s.keys.revoke(&brand("beta"), first.id).await.unwrap());
    assert!(s.keys.revoke(&brand("acme"), first.id).await.unwrap());
    assert!(!s.keys.revoke(&brand("acme"), first.id).await.unwrap());
    assert_eq!(s.keys.find_active_by_hash(&first_hash).await.unwrap(), None);
    assert!(
        insert("acme", 3).await.is_some(),
        "the revoked key freed its place"
    );
    let listed = s.keys.list(&brand("acme")).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[2].revoked_at.is_some());
}
on_both_stores!(
    key_rows_are_inserted_within_the_limit_listed_and_revoked,
    key_rows_are_inserted_within_the_limit_listed_and_revoked
);

async fn concurrent_key_inserts_never_pass_the_limit(db: &TestDb) {
    // Proves the count and the insert are one atomic step: many creations racing for
    // the last places of one brand fill them exactly, never one more.
    const RACERS: usize = 16;
    const ACTIVE_MAX: i64 = 5;
    let s = open(db).await;
    let racers = (0..RACERS).map(|n| {
        let keys = s.keys.clone();
        tokio::spawn(async move {
            keys.insert_within_limit(&new_key("acme", n), ACTIVE_MAX)
                .await
        })
    });
    let mut inserted = 0;
    for racer in futures::future::join_all(racers).await {
        if racer.unwrap().unwrap().is_some() {
            inserted += 1;
        }
    }
    assert_eq!(inserted, ACTIVE_MAX);
    assert_eq!(
        s.keys.list(&brand("acme")).await.unwrap().len() as i64,
        ACTIVE_MAX
    );
}
on_both_stores!(
    concurrent_key_inserts_never_pass_the_limit,
    concurrent_key_inserts_never_pass_the_limit
);

async fn a_duplicate_key_hash_is_a_conflict(db: &TestDb) {
    // Proves the store refuses a second row with the same hash, so one secret can never
    // authenticate as two keys.
    let s = open(db).await;
    s.keys
        .insert_within_limit(&new_key("acme", 1), 10)
        .await
        .unwrap();
    let mut twin = new_key("beta", 1);
    twin.secret_sha256 = new_key("acme", 1).secret_sha256;
    let refused = s.keys.insert_within_limit(&twin, 10).await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
}
on_both_stores!(
    a_duplicate_key_hash_is_a_conflict,
    a_duplicate_key_hash_is_a_conflict
);

async fn statistics_are_refreshed_as_the_log_grows(db: &TestDb) {
    // After the first ten thousand rows, the store analyzes its tables by itself, so the
    // planner of a server without autovacuum still picks the indexes.
    let stores = open(db).await;
    for stream in 0..11 {
        append_stream(&stores.log, &format!("b{stream}:2026-11"), 1_000).await;
    }
    for _ in 0..100 {
        let analyzed = match db.pg_url() {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let done: Option<bool> = sqlx::query_scalar(
                    "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'events'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                pool.close().await;
                done == Some(true)
            }
            None => {
                let path = db.sqlite_path().unwrap();
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let rows: Result<i64, _> =
                    sqlx::query_scalar("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'events'")
                        .fetch_one(&pool)
                        .await;
                pool.close().await;
                rows.is_ok_and(|n| n > 0)
            }
        };
        if analyzed {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the events table was not analyzed within 10 s of 11,000 appended rows");
}
on_both_stores!(
    statistics_are_refreshed_as_the_log_grows,
    statistics_are_refreshed_as_the_log_grows
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_wakes_once_for_its_own_commit_and_hears_another_processs() {
    // PostgreSQL only (SQLite has no notifications): a process's own append wakes its
    // consumers once, at once, and its notification does not wake them a second time;
    // another process's append still reaches them through the notification.
    let Some(db) = common::TestDb::postgres().await else {
        return;
    };
    let url = db.pg_url().expect("a PostgreSQL database");
    let here = Arc::new(PostgresLog::connect(url).await.expect("connect"));
    let there = PostgresLog::connect(url)
        .await
        .expect("connect a second process");
    let wake = ProjectionStore::watch_commits(here.as_ref())
        .await
        .expect("listen");
    let (woken, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    let counter = tokio::spawn(async move {
        loop {
            wake.notified().await;
            if woken.send(()).is_err() {
                return;
            }
        }
    });
    let quiet = std::time::Duration::from_millis(500);
    let heard = std::time::Duration::from_secs(5);

    here.append(&[event("acme:2026-11", 1)], &[]).await.unwrap();
    tokio::time::timeout(heard, wakes.recv())
        .await
        .expect("the own commit wakes at once");
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "the own commit's notification must not wake the consumers again"
    );

    there
        .append(&[event("acme:2026-11", 2)], &[])
        .await
        .unwrap();
    tokio::time::timeout(heard, wakes.recv())
        .await
        .expect("another process's commit is heard");
    assert!(
        tokio::time::timeout(quiet, wakes.recv()).await.is_err(),
        "one commit, one wake-up"
    );
    counter.abort();
    here.close().await;
    there.close().await;
    db.cleanup().await;
}
