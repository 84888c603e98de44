//! JSON logs on the real binary: with `LEDGER_LOG_FORMAT=json` every stderr line is a
//! JSON object, and a request's lines carry its `X-Request-Id` as `request_id`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "json-logs-test-secret-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_usage-ledger");

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn json_logs_are_json_lines_and_carry_the_request_id() {
    // Proves the format switch reaches `main`'s subscriber and the request span's field
    // reaches the lines logged inside it.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .env("LEDGER_MODE", "production")
        .env("LEDGER_JWT_SECRET", SECRET)
        .env("LEDGER_DATA_DIR", dir.path())
        .env("LEDGER_BIND", format!("127.0.0.1:{port}"))
        .env("LEDGER_LOG_FORMAT", "json")
        // The request span's own line ("answered") is at debug.
        .env("RUST_LOG", "info,usage_ledger=debug")
        .env_remove("DATABASE_URL")
        .env_remove("LEDGER_CONFIG")
        .env_remove("LEDGER_SENTRY_DSN")
        .current_dir(dir.path())
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..300 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the service did not come up");
    // An unauthenticated admin route: answered 401, and its refusal is logged at info.
    let res = client
        .get(format!("{base}/api/v1/usage-billing/plans"))
        .header("x-request-id", "t-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "t-1");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    let in_request = lines.iter().any(|l| {
        l["span"]["request_id"] == "t-1"
            || l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["request_id"] == "t-1"))
    });
    assert!(in_request, "no line carries request_id t-1:\n{stderr}");
}
