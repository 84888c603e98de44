//! The auditor's replay commands against real PostgreSQL and real SQLite: verify finds
//! a hand edit and rebuild repairs it, an export verifies and an edited byte does not,
//! as-of reads a prefix, and a connection lost mid-replay is a failure.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_replay::Cutoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use usage_ledger::cli::replay::{self, AsOfArgs, ReplayFailure, VerifyExportArgs};
use usage_ledger::store::{PostgresLog, ProjectionStore};

use common::workload::{assert_same, id, replay as replay_models, stored, workload};
use common::{engine_on, manual_clock, Backend, TestDb};

const CATCH_UP: Duration = Duration::from_secs(10);

/// A workload, projected: the stored models are up to date. The replay commands then
/// run on a store of their own, as the operator's process does: the aborted consumer's
/// connections (an abort may cut one mid-transaction) stay with the process that had them.
async fn projected(db: &TestDb, commands: usize) -> Arc<dyn ProjectionStore> {
    let (log, store) = db.stores().await;
    let engine = engine_on(log, manual_clock(), Default::default());
    let projector = common::projector(store.clone()).await.expect("start");
    workload(&engine, 5, commands).await;
    // As the service stops: the refusals it counted are appended before the replay.
    engine.drain().await;
    assert!(projector.persist(CATCH_UP).await);
    projector.abort();
    let (_, fresh) = db.stores().await;
    fresh
}

/// Change one figure of one stored row, as someone with database access might.
async fn edit_a_row_by_hand(db: &TestDb) {
    let sql = "UPDATE read_models SET models = replace(models::text, '\"current\":', '\"current\":1')::json
                WHERE brand_id = 'acme'";
    match &db.backend {
        Backend::Postgres { url, .. } => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let n = sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected();
            assert_eq!(n, 1);
        }
        Backend::Sqlite { .. } => {
            let path = db.sqlite_path().unwrap();
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let n = sqlx::query(&sql.replace("::text", "").replace("::json", ""))
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected();
            assert_eq!(n, 1);
        }
    }
}

async fn verify_finds_a_hand_edit_and_rebuild_repairs_it(db: &TestDb) {
    let store = projected(db, 200).await;
    let mut out = Vec::new();
    let report = replay::verify(store.clone(), &mut out)
        .await
        .expect("clean");
    assert!(report.events > 200, "{report:?}");
    assert!(String::from_utf8_lossy(&out).contains("no differences"));

    edit_a_row_by_hand(db).await;
    let mut out = Vec::new();
    let failure = replay::verify(store.clone(), &mut out).await.unwrap_err();
    let printed = String::from_utf8_lossy(&out);
    assert!(
        matches!(failure, ReplayFailure::Differs(n) if n > 0),
        "{failure}"
    );
    assert!(
        printed.contains("quota_summary/rows/acme/2026-11/") && printed.contains("/current"),
        "each difference is named by its path:\n{printed}"
    );

    let mut out = Vec::new();
    let rebuilt = replay::rebuild(store.clone(), &mut out)
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.events, report.events);
    replay::verify(store.clone(), &mut Vec::new())
        .await
        .expect("verified after the rebuild");
    let (_, models) = stored(store.as_ref()).await;
    assert_same(&models, &replay_models(store.as_ref(), None).await);
}
on_both_stores!(
    verify_finds_a_hand_edit_and_rebuild_repairs_it,
    verify_finds_a_hand_edit_and_rebuild_repairs_it
);

async fn an_export_verifies_and_one_edited_byte_does_not(db: &TestDb) {
    let store = projected(db, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    let summary = replay::export(store.clone(), file).await.expect("export");
    assert_eq!(summary.events, store.log_len().await.unwrap());
    let args = VerifyExportArgs { file: path.clone() };
    assert_eq!(replay::verify_export(&args).expect("verifies"), summary);

    // One byte of one payload changed: a quantity, say.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(b"\"quantity\":".len())
        .position(|w| w == b"\"quantity\":")
        .expect("a usage event")
        + b"\"quantity\":".len();
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    std::fs::write(&path, &bytes).unwrap();
    let failure = replay::verify_export(&args).unwrap_err();
    assert!(matches!(failure, ReplayFailure::Export(_)), "{failure}");
}
on_both_stores!(
    an_export_verifies_and_one_edited_byte_does_not,
    an_export_verifies_and_one_edited_byte_does_not
);

async fn as_of_a_sequence_reads_a_prefix_of_the_stream(db: &TestDb) {
    let store = projected(db, 100).await;
    let stream = "acme:2026-11";
    let records = store.stream_records("usage_period", stream).await.unwrap();
    assert!(records.len() > 3);
    let mut out = Vec::new();
    let args = AsOfArgs {
        brand: id(ledger_aggregates::BrandId::parse, "acme"),
        period: ledger_aggregates::PeriodKey::containing(common::t0()),
        at: Cutoff::Sequence(3),
    };
    replay::as_of(store.as_ref(), &args, &mut out)
        .await
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(printed["models"]["sequence"], 3);
    assert_eq!(printed["asOf"], "3");
    let expected =
        ledger_replay::as_of(&records[..3], &args.brand, args.period, Cutoff::Sequence(3))
            .unwrap()
            .unwrap();
    assert_eq!(printed["models"], serde_json::to_value(expected).unwrap());
}
on_both_stores!(
    as_of_a_sequence_reads_a_prefix_of_the_stream,
    as_of_a_sequence_reads_a_prefix_of_the_stream
);

/// A TCP proxy to PostgreSQL that, once armed, cuts every connection after
/// `cut_after` more bytes from the server: a connection lost in the middle of a read.
struct CuttingProxy {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CuttingProxy {
    async fn start(upstream: u16, cut_after: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let flag = armed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let server = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
                let (armed, sent) = (flag.clone(), sent.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if armed.load(Ordering::SeqCst)
                            && sent.fetch_add(n, Ordering::SeqCst) + n > cut_after
                        {
                            break;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Both directions dropped: the client sees the connection end.
                    up.abort();
                });
            }
        });
        Self { port, armed }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_verify_fails_when_the_connection_drops_mid_replay() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = projected(&db, 2_000).await;
    let len = store.log_len().await.unwrap();
    assert!(len > 2_000, "a log worth several hundred kilobytes");
    let url = db.pg_url().unwrap().to_owned();
    let proxy = CuttingProxy::start(5432, 200 * 1024).await;
    let through_proxy = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(through_proxy, url, "the test URL names 127.0.0.1:5432");
    let cut: Arc<dyn ProjectionStore> =
        Arc::new(PostgresLog::connect(&through_proxy).await.expect("connect"));
    // Through the proxy, unarmed, verify passes: the proxy itself changes nothing.
    replay::verify(cut.clone(), &mut Vec::new())
        .await
        .expect("clean");
    proxy.armed.store(true, Ordering::SeqCst);
    let failure = replay::verify(cut, &mut Vec::new()).await.unwrap_err();
    assert!(
        matches!(failure, ReplayFailure::Store(_)),
        "a lost connection is a read failure, not a result: {failure}"
    );
    db.cleanup().await;
}
