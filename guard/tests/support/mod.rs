//! The harness of the guard's tests: the real ledger, started in process through its
//! composition root on a SQLite store in a temp dir, on a runtime of its own so a test
//! can kill it (every task and socket gone at once, as a crashed process) and start it
//! again on the same data and port; and the example service in front of it on port 0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledger_aggregates::BrandId;
use ledger_guard::{BrandIdentity, Credential, Credentials, Guard, GuardConfig};
use render_service::Callers;
use serde_json::{json, Value};
use usage_ledger::auth::jwt::TokenTtl;
use usage_ledger::auth::{Authenticator, Role};
use usage_ledger::clock::SystemClock;
use usage_ledger::config::{Mode, Settings};
use usage_ledger::secret::Secret;
use usage_ledger::startup::{Application, StartupError};

pub const PREFIX: &str = "/api/v1/usage-billing";

/// The test's HS256 signing secret (32 bytes, the ledger's minimum).
const TEST_SECRET: &str = "guard-secret-0123456789abcdef012";

/// Attempts to bind the port of a killed ledger again: its sockets close as its runtime
/// winds down, which takes a moment.
const REBIND_ATTEMPTS_MAX: u32 = 50;

/// The starter plan's renders_3d line of the default catalog, and the same quota blocked:
/// the default charges overage on every counter, and a refusal needs a `block` quota.
const STARTER_CHARGED: &str =
    r#"{ metric = "renders_3d", limit = 10, overage = "charge", overage_rate = 100 },"#;
const STARTER_BLOCKED: &str = r#"{ metric = "renders_3d", limit = 10, overage = "block" },"#;

/// A running ledger, on its own runtime.
pub struct Ledger {
    runtime: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
    settings: Settings,
    pub auth: Authenticator,
    pub admin: String,
    pub base: String,
    http: reqwest::Client,
    /// Holds the store's directory for the test's lifetime.
    _dir: Arc<tempfile::TempDir>,
}

impl Ledger {
    /// A fresh ledger on port 0 whose starter plan blocks renders_3d at 10.
    pub async fn start() -> Ledger {
        let dir = tempfile::tempdir().expect("a temp dir");
        let catalog = dir.path().join("catalog.toml");
        let default = include_str!("../../../aggregates/catalog/default.toml");
        assert!(
            default.contains(STARTER_CHARGED),
            "starter's renders_3d moved"
        );
        std::fs::write(&catalog, default.replace(STARTER_CHARGED, STARTER_BLOCKED))
            .expect("write the catalog");
        let mut settings = Settings::default();
        settings.store.data_dir = dir.path().to_owned();
        settings.store.catalog_path = Some(catalog);
        settings.auth.mode = Mode::Production;
        settings.auth.jwt_secret = Some(Secret::new(TEST_SECRET));
        settings.http.bind = "127.0.0.1:0".parse().expect("a loopback address");
        let (runtime, addr, auth) = serve(&settings).await.expect("the ledger starts");
        settings.http.bind = addr;
        let admin = mint(&auth, Role::Admin, &[]);
        Ledger {
            runtime: Some(runtime),
            addr,
            settings,
            auth,
            admin,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            _dir: Arc::new(dir),
        }
    }

    /// Kill the ledger: its runtime is shut down without waiting, so requests in flight,
    /// connections and the engine go at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Start it again on the same store and port.
    pub async fn restart(&mut self) {
        assert!(
            self.runtime.is_none(),
            "kill the ledger before restarting it"
        );
        for attempt in 1..=REBIND_ATTEMPTS_MAX {
            match serve(&self.settings).await {
                Ok((rt, addr, _)) => {
                    assert_eq!(addr, self.addr);
                    self.runtime = Some(rt);
                    return;
                }
                Err(StartupError::Bind { .. }) if attempt < REBIND_ATTEMPTS_MAX => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the ledger restarts: {e}"),
            }
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{PREFIX}/{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("the ledger answers");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {body:#}");
        body
    }

    /// Register `brand` on the starter plan and create an API key for it.
    pub async fn brand_with_key(&self, brand: &str) -> String {
        self.call(
            reqwest::Method::PUT,
            &format!("brands/{brand}"),
            Some(json!({ "plan": "starter" })),
        )
        .await;
        let key = self
            .call(
                reqwest::Method::POST,
                &format!("brands/{brand}/api-keys"),
                Some(json!({ "label": "render-service" })),
            )
            .await;
        key["key"]
            .as_str()
            .expect("the key is shown once")
            .to_owned()
    }

    /// The ledger's count of `metric` for `brand` this period.
    pub async fn usage(&self, brand: &str, metric: &str) -> u64 {
        let current = self
            .call(reqwest::Method::GET, &format!("current/{brand}"), None)
            .await;
        current["usage"][metric].as_u64().unwrap_or(0)
    }

    /// A service JWT for `brands`.
    pub fn service_token(&self, brands: &[&str]) -> String {
        mint(&self.auth, Role::Service, brands)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Build and serve a ledger on a new runtime; its address and authenticator.
async fn serve(
    settings: &Settings,
) -> Result<(tokio::runtime::Runtime, SocketAddr, Authenticator), StartupError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let settings = settings.clone();
    // The wall clock, as in production: the guard dates each consumption with its own
    // clock (`occurredAt`), which the ledger accepts within a few minutes of its own.
    let clock = Arc::new(SystemClock);
    runtime.spawn(async move {
        match Application::build(&settings, clock).await {
            Ok(app) => {
                let _ = tx.send(Ok((app.local_addr(), app.auth().clone())));
                let _ = app.run_until(std::future::pending()).await;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    match rx.await.expect("the ledger task answers") {
        Ok((addr, auth)) => Ok((runtime, addr, auth)),
        Err(e) => {
            runtime.shutdown_background();
            Err(e)
        }
    }
}

fn mint(auth: &Authenticator, role: Role, brands: &[&str]) -> String {
    let brands: Vec<BrandId> = brands.iter().map(|b| BrandId::parse(b).unwrap()).collect();
    auth.jwt()
        .mint(
            role,
            &brands,
            "guard-test",
            TokenTtl::from_secs(3600).unwrap(),
        )
        .expect("mint")
}

/// The example service in front of `ledger`, on port 0, with one ledger API key per
/// brand and one caller token per brand (`token-<brand>`).
pub struct RenderService {
    pub base: String,
    pub guard: Guard,
    pub http: reqwest::Client,
}

impl RenderService {
    pub async fn start(ledger: &Ledger, keys: &[(&str, &str)]) -> RenderService {
        let keys: HashMap<String, String> = keys
            .iter()
            .map(|(b, k)| (b.to_string(), k.to_string()))
            .collect();
        let callers = Callers::new(
            keys.keys()
                .map(|b| (format!("token-{b}"), BrandIdentity::new(b.clone()).unwrap())),
        );
        let credentials = Credentials::per_brand(move |brand| {
            keys.get(brand.as_str()).cloned().map(Credential::api_key)
        });
        Self::start_with(&ledger.base, credentials, callers).await
    }

    pub async fn start_with(ledger_url: &str, credentials: Credentials, callers: Callers) -> Self {
        let guard = Guard::start(GuardConfig::new(ledger_url, credentials)).expect("the guard");
        let app = render_service::router(&guard, callers);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        RenderService {
            base: format!("http://{addr}"),
            guard,
            http: reqwest::Client::new(),
        }
    }

    /// A request as `brand`'s caller (no credentials when `None`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        brand: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = brand {
            req = req.bearer_auth(format!("token-{b}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        answer(req.send().await.expect("the service answers")).await
    }

    /// `POST /render/3d` with an `X-Request-Id`.
    pub async fn render_with_id(&self, brand: &str, request_id: &str, body: Value) -> Answer {
        let req = self
            .http
            .post(format!("{}/render/3d", self.base))
            .bearer_auth(format!("token-{brand}"))
            .header("x-request-id", request_id)
            .json(&body);
        answer(req.send().await.expect("the service answers")).await
    }

    pub async fn render(&self, brand: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, "/render/3d", Some(brand), Some(body))
            .await
    }

    pub async fn designs(&self, brand: &str) -> Answer {
        self.call(reqwest::Method::GET, "/api/designs", Some(brand), None)
            .await
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    /// The body as sent, for answers that are not JSON.
    pub text: String,
}

impl Answer {
    /// Assert a problem+json answer of `status` whose type ends in `kind`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{:#}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{:#}", self.body);
        assert_eq!(
            self.body["type"],
            format!("urn:ledger-guard:problem:{kind}"),
            "{:#}",
            self.body
        );
    }
}

pub async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
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
        text,
    }
}

/// Poll `f` until it returns `want` or `timeout` passes; the last value.
pub async fn eventually<F, Fut>(timeout: Duration, want: u64, mut f: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = f().await;
        if got == want || tokio::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
