//! SIGTERM under load, on the real binary: requests in flight are answered, every
//! acknowledged write is in the log and nothing unacknowledged is, and the process
//! exits 0 within its drain deadline.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "shutdown-test-secret-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_usage-ledger");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ledger(dir: &std::path::Path, port: u16) -> Command {
    let mut c = Command::new(BIN);
    c.env("LEDGER_MODE", "production")
        .env("LEDGER_JWT_SECRET", SECRET)
        .env("LEDGER_DATA_DIR", dir)
        .env("LEDGER_BIND", format!("127.0.0.1:{port}"))
        .env_remove("DATABASE_URL")
        .env_remove("LEDGER_CONFIG")
        .current_dir(dir);
    c
}

async fn start(dir: &std::path::Path, port: u16) -> Child {
    let mut child = ledger(dir, port)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let url = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..300 {
        if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the service did not come up on port {port}");
}

fn token(dir: &std::path::Path, port: u16) -> String {
    let out = ledger(dir, port)
        .args(["token", "--role", "admin"])
        .output()
        .expect("the token command runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_what_is_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port).await;
    let admin = token(dir.path(), port);
    let api = format!("http://127.0.0.1:{port}/api/v1/usage-billing");
    let client = reqwest::Client::new();
    let put = client
        .put(format!("{api}/brands/acme"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "plan": "enterprise" }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());

    let acked = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (client, api, admin) = (client.clone(), api.clone(), admin.clone());
            let (acked, cut) = (acked.clone(), cut.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    let body = serde_json::json!({
                        "brandId": "acme", "metric": "api_calls", "idempotencyKey": format!("w{w}-{n}")
                    });
                    let sent = client.post(format!("{api}/record")).bearer_auth(&admin).json(&body).send().await;
                    match sent {
                        Ok(r) if r.status() == 201 => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        // Draining: readiness and new work may be refused with a 503.
                        Ok(r) if r.status() == 503 => {}
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(e) if e.is_connect() => return,
                        Err(_) => {
                            cut.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = acked.load(Ordering::Relaxed);
    assert!(before > 0, "no write was acknowledged before the signal");
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    for w in writers {
        w.await.unwrap();
    }

    // Every acknowledged record is in the log, and no other: what was cut was never
    // committed (a request the server had read is always answered before it exits).
    let mut again = start(dir.path(), port).await;
    let current: serde_json::Value = client
        .get(format!("{api}/current/acme"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total = acked.load(Ordering::Relaxed);
    assert_eq!(
        current["usage"]["api_calls"],
        total as u64,
        "{current:#}, {} cut",
        cut.load(Ordering::Relaxed)
    );
    again.kill().unwrap();
    let _ = again.wait();
}
