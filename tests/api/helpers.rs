//! The API test harness: the real router on port 0, a fresh database per test, and
//! tokens minted with the test's own signing secret.

use std::sync::Arc;

use ledger_aggregates::BrandId;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use usage_ledger::auth::jwt::{Jwt, JwtKey, TokenTtl};
use usage_ledger::auth::{Authenticator, Role};
use usage_ledger::clock::ManualClock;
use usage_ledger::config::{Mode, Settings};
use usage_ledger::secret::Secret;
use usage_ledger::startup::Application;

use crate::common::{self, Backend, TestDb};

/// The test's HS256 signing secret (32 bytes, the minimum).
const TEST_SECRET: &str = "test-secret-0123456789abcdef0123";

pub const PREFIX: &str = "/api/v1/usage-billing";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub auth: Authenticator,
    pub admin: String,
}

/// An answer: status, content type and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Assert this is a problem+json answer with `status` and a `type` ending in `kind`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{:#}", self.body);
        let t = self.body["type"].as_str().unwrap_or_default();
        assert!(
            t.ends_with(&format!(":{kind}")),
            "type {t} is not {kind}: {:#}",
            self.body
        );
        assert!(
            !self.body["detail"].as_str().unwrap_or_default().is_empty(),
            "a problem says what is wrong: {:#}",
            self.body
        );
    }
}

/// The settings a test's service runs with: the test's database, its own secret, port 0.
pub fn test_settings(db: &TestDb) -> Settings {
    let mut settings = Settings::default();
    match &db.backend {
        Backend::Postgres { url, .. } => settings.store.database_url = Some(url.clone()),
        Backend::Sqlite { dir } => settings.store.data_dir = dir.path().to_owned(),
    }
    settings.auth.mode = Mode::Production;
    settings.auth.jwt_secret = Some(Secret::new(TEST_SECRET));
    settings.http.bind = "127.0.0.1:0".parse().expect("a loopback address");
    settings
}

/// The settings of [`test_settings`] on [`common::blocking_renders_toml`]'s catalog,
/// written in `dir`.
pub fn blocking_renders_settings(db: &TestDb, dir: &std::path::Path) -> Settings {
    let path = dir.join("catalog.toml");
    std::fs::write(&path, common::blocking_renders_toml()).expect("write the catalog");
    let mut settings = test_settings(db);
    settings.store.catalog_path = Some(path);
    settings
}

/// The service as `main` builds it (the composition root), on the test's database and
/// a clock the test moves.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(&test_settings(db)).await
}

pub async fn spawn_app_with(settings: &Settings) -> TestApp {
    let clock = common::manual_clock();
    let app = Application::build(settings, clock.clone())
        .await
        .expect("the service starts");
    let addr = app.local_addr();
    let auth = app.auth().clone();
    tokio::spawn(async move {
        app.run_until(std::future::pending()).await.expect("serve");
    });
    let admin = mint(&auth, Role::Admin, &[]);
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        clock,
        auth,
        admin,
    }
}

impl TestApp {
    /// `GET /metrics` as the admin: the Prometheus text.
    pub async fn scrape_metrics(&self) -> String {
        let res = self
            .client
            .get(format!("{}/metrics", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("scrape");
        assert_eq!(res.status(), 200);
        res.text().await.expect("a text body")
    }

    pub fn token(&self, role: Role, brands: &[&str]) -> String {
        mint(&self.auth, role, brands)
    }

    /// A request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            format!("{}{PREFIX}/{path}", self.base)
        };
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Answer {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// Set `brand`'s gauge `metric` to `level` as admin.
    pub async fn set_gauge(&self, brand: &str, metric: &str, level: u64) -> Answer {
        let path = format!("brands/{brand}/gauges/{metric}");
        self.put(&path, &self.admin, serde_json::json!({ "level": level }))
            .await
    }

    /// Register `brand` on `plan` as admin.
    pub async fn register(&self, brand: &str, plan: &str) {
        let a = self
            .call(
                Method::PUT,
                &format!("brands/{brand}"),
                Some(&self.admin),
                Some(json!({ "plan": plan })),
            )
            .await;
        assert!(a.status.is_success(), "register {brand}: {:#}", a.body);
    }

    /// Every event of the brand's current period, as the audit trail shows them.
    pub async fn audit(&self, brand: &str) -> Vec<Value> {
        let a = self
            .get(
                &format!("brands/{brand}/periods/2026-11/events?limit=1000"),
                &self.admin,
            )
            .await;
        assert_eq!(a.status, 200, "{:#}", a.body);
        a.body["events"].as_array().cloned().unwrap_or_default()
    }
}

/// `body` without its `requestId`: two requests' problems differ by their ids alone
/// when they say the same thing.
pub fn without_request_id(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("requestId");
    }
    body
}

pub async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status();
    let headers = res.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = res.text().await.unwrap_or_default();
    Answer {
        status,
        content_type,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn jwt(secret: &str) -> Jwt {
    Jwt::new(JwtKey::Hs256(Secret::new(secret)), None, None).expect("test key")
}

/// A token for `role` over `brands`, with subject `<role>-test`.
pub fn mint(auth: &Authenticator, role: Role, brands: &[&str]) -> String {
    mint_with(auth.jwt(), role, brands)
}

fn mint_with(jwt: &Jwt, role: Role, brands: &[&str]) -> String {
    let brands: Vec<BrandId> = brands.iter().map(|b| BrandId::parse(b).unwrap()).collect();
    let subject = format!(
        "{}-test",
        serde_json::to_value(role).unwrap().as_str().unwrap()
    );
    jwt.mint(role, &brands, &subject, TokenTtl::from_secs(600).unwrap())
        .expect("mint")
}

/// An admin token signed with another secret than the app's.
pub fn forged_token() -> String {
    mint_with(&jwt("another-secret-0123456789abcdef0"), Role::Admin, &[])
}

/// The real binary in production mode on SQLite in `dir`, listening on `port`, with its
/// output discarded; a test adds the settings of what it exercises.
pub fn ledger_process(dir: &std::path::Path, port: u16) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_usage-ledger"));
    c.env("LEDGER_MODE", "production")
        .env("LEDGER_JWT_SECRET", "process-test-secret-0123456789abcdef")
        .env("LEDGER_DATA_DIR", dir)
        .env("LEDGER_BIND", format!("127.0.0.1:{port}"))
        .env_remove("DATABASE_URL")
        .env_remove("LEDGER_CONFIG")
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

/// Start `command` (the real binary, configured) as `serve` and wait until `/healthz`
/// answers on `port`.
pub async fn serving(mut command: std::process::Command, port: u16) -> std::process::Child {
    let mut child = command.arg("serve").spawn().expect("the binary starts");
    for _ in 0..300 {
        let up = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
        if up.is_ok_and(|r| r.status() == 200) {
            return child;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the service did not come up on port {port}");
}
