//! Service configuration, in layers: command-line flags > environment > configuration
//! file > defaults. Every default is stated with its reason; the resolved configuration
//! is printed at start-up with secrets redacted (see [`Settings`]'s `Display`).
//!
//! | file key | environment | flag | default |
//! | --- | --- | --- | --- |
//! | | `LEDGER_CONFIG` | `--config` | `usage-ledger.toml` if present |
//! | `store.database_url` | `DATABASE_URL` | `--database-url` | unset: embedded SQLite |
//! | `store.data_dir` | `LEDGER_DATA_DIR` | `--data-dir` | `data` |
//! | `store.catalog_path` | `LEDGER_CATALOG_PATH` | `--catalog-path` | embedded catalog |
//! | `http.bind` | `LEDGER_BIND` | `--bind` | `127.0.0.1:3333` |
//! | `http.body_bytes_max` | `LEDGER_BODY_BYTES_MAX` | `--body-bytes-max` | 1 MiB |
//! | `http.header_read_timeout_ms` | `LEDGER_HTTP_HEADER_READ_TIMEOUT_MS` | | 10,000 |
//! | `http.request_timeout_ms` | `LEDGER_HTTP_REQUEST_TIMEOUT_MS` | | 30,000 |
//! | `http.close_timeout_ms` | `LEDGER_HTTP_CLOSE_TIMEOUT_MS` | | 600,000 |
//! | `http.connections_max` | `LEDGER_HTTP_CONNECTIONS_MAX` | | 10,000 |
//! | `http.drain_deadline_ms` | `LEDGER_HTTP_DRAIN_DEADLINE_MS` | | 10,000 |
//! | `http.requests_per_second_per_credential` | `LEDGER_HTTP_REQUESTS_PER_SECOND_PER_CREDENTIAL` | | 5,000 (0: none) |
//! | `auth.mode` | `LEDGER_MODE` | `--mode` | `development` |
//! | `auth.jwt_algorithm` | `LEDGER_JWT_ALGORITHM` | `--jwt-algorithm` | `HS256` |
//! | `auth.jwt_secret` | `LEDGER_JWT_SECRET` | (none: argv is visible to every user) | dev: `<data_dir>/jwt-secret` |
//! | `metrics.token` | `LEDGER_METRICS_TOKEN` | (none, as secrets) | unset: `/metrics` needs an admin credential |
//! | `metrics.brand_series_max` | `LEDGER_METRICS_BRAND_SERIES_MAX` | | 500 |
//! | `auth.jwt_public_key_path` | `LEDGER_JWT_PUBLIC_KEY_PATH` | `--jwt-public-key-path` | unset |
//! | `auth.jwt_private_key_path` | `LEDGER_JWT_PRIVATE_KEY_PATH` | `--jwt-private-key-path` | unset |
//! | `auth.issuer` | `LEDGER_JWT_ISSUER` | `--jwt-issuer` | unset: not checked |
//! | `auth.audience` | `LEDGER_JWT_AUDIENCE` | `--jwt-audience` | unset: not checked |
//! | `auth.token_ttl` | `LEDGER_TOKEN_TTL` | `--ttl` (`token` only) | `1h` |
//! | `ledger.late_usage_grace_hours` | `LEDGER_LATE_USAGE_GRACE_HOURS` | `--late-usage-grace-hours` | 72 |
//! | `engine.queue_commands_max` | `LEDGER_ENGINE_QUEUE_COMMANDS_MAX` | | 65,536 |
//! | `engine.batch_commands_max` | `LEDGER_ENGINE_BATCH_COMMANDS_MAX` | | 1,024 |
//! | `engine.batch_linger_us` | `LEDGER_ENGINE_BATCH_LINGER_US` | | 500 |
//! | `engine.cache_streams_max` | `LEDGER_ENGINE_CACHE_STREAMS_MAX` | | 100,000 |
//! | `engine.idempotency_cache_max` | `LEDGER_ENGINE_IDEMPOTENCY_CACHE_MAX` | | 100,000 |
//! | `engine.writer_shards` | `LEDGER_ENGINE_WRITER_SHARDS` | | 1 |
//! | `engine.refusal_window_seconds` | `LEDGER_ENGINE_REFUSAL_WINDOW_SECONDS` | | 60 (0: every refusal alone) |
//! | `engine.refusal_windows_max` | `LEDGER_ENGINE_REFUSAL_WINDOWS_MAX` | | 100,000 |
//! | `read_models.cache_periods_max` | `LEDGER_READ_MODELS_CACHE_PERIODS_MAX` | | 100,000 |
//! | `read_models.flush_interval_ms` | `LEDGER_READ_MODELS_FLUSH_INTERVAL_MS` | | 1,000 |
//! | `read_models.flush_rows_max` | `LEDGER_READ_MODELS_FLUSH_ROWS_MAX` | | 10,000 |
//! | `stripe.secret_key` | `LEDGER_STRIPE_SECRET_KEY` | (none, as secrets) | unset: no checkout |
//! | `stripe.webhook_secret` | `LEDGER_STRIPE_WEBHOOK_SECRET` | (none) | unset: webhook answers 503 |
//! | `stripe.webhook_secret_previous` | `LEDGER_STRIPE_WEBHOOK_SECRET_PREVIOUS` | (none) | unset |
//! | `stripe.api_base` | `LEDGER_STRIPE_API_BASE` | | `https://api.stripe.com` |
//! | `stripe.redirect_origins` | `LEDGER_STRIPE_REDIRECT_ORIGINS` | | unset: no redirect URL accepted |
//! | `stripe.success_url` | `LEDGER_STRIPE_SUCCESS_URL` | | unset: the caller must give one |
//! | `stripe.cancel_url` | `LEDGER_STRIPE_CANCEL_URL` | | unset: the caller must give one |
//! | `stripe.checkout_ttl_minutes` | `LEDGER_STRIPE_CHECKOUT_TTL_MINUTES` | | 60 |
//! | `notify.allow_http` | `LEDGER_NOTIFY_ALLOW_HTTP` | | false: receivers are https |
//! | `notify.allow_private_addresses` | `LEDGER_NOTIFY_ALLOW_PRIVATE_ADDRESSES` | | false |
//! | `notify.dashboard_url` | `LEDGER_NOTIFY_DASHBOARD_URL` | | unset: notices carry no link |
//! | `notify.smtp_host` | `LEDGER_NOTIFY_SMTP_HOST` | | unset: no e-mail |
//! | `notify.smtp_port` | `LEDGER_NOTIFY_SMTP_PORT` | | 587 |
//! | `notify.smtp_tls` | `LEDGER_NOTIFY_SMTP_TLS` | | `starttls` (`tls`, `none`) |
//! | `notify.smtp_from` | `LEDGER_NOTIFY_SMTP_FROM` | | `alertes@localhost` |
//! | `notify.smtp_username` | `LEDGER_NOTIFY_SMTP_USERNAME` | | unset |
//! | `notify.smtp_password` | `LEDGER_NOTIFY_SMTP_PASSWORD` | (none, as secrets) | unset |
//! | `notify.claim_lease_seconds` | `LEDGER_NOTIFY_CLAIM_LEASE_SECONDS` | | 60 |
//! | `log.format` | `LEDGER_LOG_FORMAT` | | `text` (`json`: one JSON object a line) |
//! | `sentry.dsn` | `LEDGER_SENTRY_DSN` | (none, as secrets) | unset: nothing is reported |
//! | `sentry.environment` | `LEDGER_SENTRY_ENVIRONMENT` | | `auth.mode` |
//!
//! An environment variable set to the empty string counts as unset.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use ledger_aggregates::period::{LedgerRules, LATE_USAGE_GRACE_HOURS_DEFAULT};
use serde::Deserialize;

use crate::auth::{JwtAlgorithm, TokenTtl};
use crate::engine::EngineConfig;
use crate::secret::Secret;
use crate::tail::projector::{ReadModelsConfig, CACHE_PERIODS_MIN};

/// The original served on 3333; callers and dashboards keep that port.
pub const DEFAULT_BIND: &str = "127.0.0.1:3333";
/// A batch of 1,000 usage records at a few hundred bytes each fits with room to spare;
/// anything larger is a mistake or an attack, refused before it is buffered.
pub const BODY_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// The largest body limit the configuration accepts: the whole body is buffered in
/// memory per request, so a typo such as an extra zero must not become gigabytes.
pub const BODY_BYTES_LIMIT_MAX: usize = 64 * 1024 * 1024;
/// The longest grace after a period's end the configuration accepts: 31 days. Longer,
/// a period would still take usage after the next one has ended, and a typo (720 for
/// 72) would keep invoices open for a month unnoticed.
pub const LATE_USAGE_GRACE_HOURS_MAX: i64 = 31 * 24;
/// Read from the working directory when present and no file is named.
pub const CONFIG_FILE_DEFAULT: &str = "usage-ledger.toml";
/// The admin token printed at a development start-up: a working day of local trials.
pub const DEV_ADMIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Environment variables and the setting each one sets. `DATABASE_URL` keeps its
/// conventional name; the others share the `LEDGER_` prefix.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("DATABASE_URL", "store.database_url"),
    ("LEDGER_DATA_DIR", "store.data_dir"),
    ("LEDGER_CATALOG_PATH", "store.catalog_path"),
    ("LEDGER_BIND", "http.bind"),
    ("LEDGER_BODY_BYTES_MAX", "http.body_bytes_max"),
    (
        "LEDGER_HTTP_HEADER_READ_TIMEOUT_MS",
        "http.header_read_timeout_ms",
    ),
    ("LEDGER_HTTP_REQUEST_TIMEOUT_MS", "http.request_timeout_ms"),
    ("LEDGER_HTTP_CLOSE_TIMEOUT_MS", "http.close_timeout_ms"),
    ("LEDGER_HTTP_CONNECTIONS_MAX", "http.connections_max"),
    ("LEDGER_HTTP_DRAIN_DEADLINE_MS", "http.drain_deadline_ms"),
    (
        "LEDGER_HTTP_REQUESTS_PER_SECOND_PER_CREDENTIAL",
        "http.requests_per_second_per_credential",
    ),
    ("LEDGER_MODE", "auth.mode"),
    ("LEDGER_JWT_ALGORITHM", "auth.jwt_algorithm"),
    ("LEDGER_JWT_SECRET", "auth.jwt_secret"),
    ("LEDGER_METRICS_TOKEN", "metrics.token"),
    (
        "LEDGER_METRICS_BRAND_SERIES_MAX",
        "metrics.brand_series_max",
    ),
    ("LEDGER_JWT_PUBLIC_KEY_PATH", "auth.jwt_public_key_path"),
    ("LEDGER_JWT_PRIVATE_KEY_PATH", "auth.jwt_private_key_path"),
    ("LEDGER_JWT_ISSUER", "auth.issuer"),
    ("LEDGER_JWT_AUDIENCE", "auth.audience"),
    ("LEDGER_TOKEN_TTL", "auth.token_ttl"),
    (
        "LEDGER_LATE_USAGE_GRACE_HOURS",
        "ledger.late_usage_grace_hours",
    ),
    (
        "LEDGER_ENGINE_QUEUE_COMMANDS_MAX",
        "engine.queue_commands_max",
    ),
    (
        "LEDGER_ENGINE_BATCH_COMMANDS_MAX",
        "engine.batch_commands_max",
    ),
    ("LEDGER_ENGINE_BATCH_LINGER_US", "engine.batch_linger_us"),
    (
        "LEDGER_ENGINE_CACHE_STREAMS_MAX",
        "engine.cache_streams_max",
    ),
    (
        "LEDGER_ENGINE_IDEMPOTENCY_CACHE_MAX",
        "engine.idempotency_cache_max",
    ),
    ("LEDGER_ENGINE_WRITER_SHARDS", "engine.writer_shards"),
    (
        "LEDGER_ENGINE_REFUSAL_WINDOW_SECONDS",
        "engine.refusal_window_seconds",
    ),
    (
        "LEDGER_ENGINE_REFUSAL_WINDOWS_MAX",
        "engine.refusal_windows_max",
    ),
    ("LEDGER_STRIPE_SECRET_KEY", "stripe.secret_key"),
    ("LEDGER_STRIPE_WEBHOOK_SECRET", "stripe.webhook_secret"),
    (
        "LEDGER_STRIPE_WEBHOOK_SECRET_PREVIOUS",
        "stripe.webhook_secret_previous",
    ),
    ("LEDGER_STRIPE_API_BASE", "stripe.api_base"),
    ("LEDGER_STRIPE_REDIRECT_ORIGINS", "stripe.redirect_origins"),
    ("LEDGER_STRIPE_SUCCESS_URL", "stripe.success_url"),
    ("LEDGER_STRIPE_CANCEL_URL", "stripe.cancel_url"),
    (
        "LEDGER_STRIPE_CHECKOUT_TTL_MINUTES",
        "stripe.checkout_ttl_minutes",
    ),
    ("LEDGER_NOTIFY_ALLOW_HTTP", "notify.allow_http"),
    (
        "LEDGER_NOTIFY_ALLOW_PRIVATE_ADDRESSES",
        "notify.allow_private_addresses",
    ),
    ("LEDGER_NOTIFY_DASHBOARD_URL", "notify.dashboard_url"),
    ("LEDGER_NOTIFY_SMTP_HOST", "notify.smtp_host"),
    ("LEDGER_NOTIFY_SMTP_PORT", "notify.smtp_port"),
    ("LEDGER_NOTIFY_SMTP_TLS", "notify.smtp_tls"),
    ("LEDGER_NOTIFY_SMTP_FROM", "notify.smtp_from"),
    ("LEDGER_NOTIFY_SMTP_USERNAME", "notify.smtp_username"),
    ("LEDGER_NOTIFY_SMTP_PASSWORD", "notify.smtp_password"),
    (
        "LEDGER_NOTIFY_CLAIM_LEASE_SECONDS",
        "notify.claim_lease_seconds",
    ),
    ("LEDGER_LOG_FORMAT", "log.format"),
    ("LEDGER_SENTRY_DSN", "sentry.dsn"),
    ("LEDGER_SENTRY_ENVIRONMENT", "sentry.environment"),
    (
        "LEDGER_READ_MODELS_CACHE_PERIODS_MAX",
        "read_models.cache_periods_max",
    ),
    (
        "LEDGER_READ_MODELS_FLUSH_INTERVAL_MS",
        "read_models.flush_interval_ms",
    ),
    (
        "LEDGER_READ_MODELS_FLUSH_ROWS_MAX",
        "read_models.flush_rows_max",
    ),
];
/// The variable naming the configuration file.
pub const CONFIG_FILE_ENV: &str = "LEDGER_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    NoFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Bad(String),
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Invalid(Box::new(e))
    }
}

/// How much the service trusts its surroundings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A laptop: a signing secret is created if none is configured and an admin token
    /// is printed at start-up.
    #[default]
    Development,
    /// A server: every key must be configured, and no token is ever printed.
    Production,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Development => "development",
            Mode::Production => "production",
        })
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// PostgreSQL URL. Without it the embedded SQLite store in `data_dir` is used.
    pub database_url: Option<String>,
    /// Directory of the embedded SQLite store (`ledger.db`) and of the development
    /// signing secret.
    pub data_dir: PathBuf,
    /// A plan catalog TOML file replacing the embedded default catalog.
    pub catalog_path: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            data_dir: PathBuf::from("data"),
            catalog_path: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Request bodies above this are answered 413 without being read further.
    pub body_bytes_max: usize,
    /// A request head must arrive within this, and a kept-alive connection idle longer
    /// is closed: 10 s is far above any real client's headers on a LAN or the internet,
    /// and stops slowloris and idle connections from holding descriptors.
    pub header_read_timeout_ms: u64,
    /// A request (body included) not answered within this gets a 503 problem: a write
    /// waits at most for a batch commit, a read for the read models.
    pub request_timeout_ms: u64,
    /// The same for `POST /periods/{period}/close`, which freezes every brand's
    /// invoice in one request.
    pub close_timeout_ms: u64,
    /// Open client connections at most; one beyond waits briefly, then gets a 503.
    /// Lowered at start-up to fit under the open-file limit.
    pub connections_max: usize,
    /// At shutdown, the time requests in flight get to finish before their
    /// connections are cut (Kubernetes waits 30 s before SIGKILL by default).
    pub drain_deadline_ms: u64,
    /// Requests a credential may make per second (bursts of twice that); 0: no limit.
    /// 5,000 is far above any one integration's real rate (the busiest platform service
    /// meters in batches), and keeps one leaked key from taking every core.
    pub requests_per_second_per_credential: u32,
}

/// Bounds of the `[http]` durations: below 1 ms nothing completes, above an hour a
/// typo (seconds for milliseconds) goes unnoticed.
pub const HTTP_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Per-brand gauge sets at most: each brand is a few series per metric, and Prometheus
/// itself slows past a few hundred thousand series per target.
pub const BRAND_SERIES_LIMIT_MAX: usize = 10_000;
/// Connections at most: beyond a million the process runs out of memory first.
pub const HTTP_CONNECTIONS_LIMIT_MAX: usize = 1_000_000;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.parse().expect("the default address parses"),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            close_timeout_ms: 600_000,
            connections_max: 10_000,
            drain_deadline_ms: 10_000,
            requests_per_second_per_credential: 5_000,
        }
    }
}

impl HttpConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let durations = [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
            ("drain_deadline_ms", self.drain_deadline_ms),
        ];
        for (name, ms) in durations {
            if !(1..=HTTP_TIMEOUT_MS_MAX).contains(&ms) {
                return Err(ConfigError::Bad(format!(
                    "http.{name} must be 1 to {HTTP_TIMEOUT_MS_MAX}"
                )));
            }
        }
        if !(1..=HTTP_CONNECTIONS_LIMIT_MAX).contains(&self.connections_max) {
            return Err(ConfigError::Bad(format!(
                "http.connections_max must be 1 to {HTTP_CONNECTIONS_LIMIT_MAX}"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: Mode,
    /// Pinned: tokens signed with any other algorithm are refused.
    pub jwt_algorithm: JwtAlgorithmSetting,
    /// HS256 shared secret (at least 32 bytes).
    pub jwt_secret: Option<Secret>,
    /// RS256 / EdDSA: PEM public key that verifies tokens.
    pub jwt_public_key_path: Option<PathBuf>,
    /// RS256 / EdDSA: PEM private key, only needed to mint tokens here.
    pub jwt_private_key_path: Option<PathBuf>,
    /// Required `iss` of every token, stamped in minted ones.
    pub issuer: Option<String>,
    /// Required `aud` of every token, stamped in minted ones.
    pub audience: Option<String>,
    /// Lifetime of tokens minted by `usage-ledger token` without `--ttl`.
    pub token_ttl: TokenTtl,
}

/// [`JwtAlgorithm`] with the default this configuration gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct JwtAlgorithmSetting(pub JwtAlgorithm);

impl Default for JwtAlgorithmSetting {
    /// HS256 needs nothing but a secret, which development mode can create itself.
    fn default() -> Self {
        Self(JwtAlgorithm::Hs256)
    }
}

/// Ledger rules that are deployment choices, not data of a stream: the engine's
/// [`LedgerRules`]. The service and the CLI's engine must agree on them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Hours after a period's end during which usage stamped in it is still accepted
    /// (flagged `after_close` once the period is closed); later usage is refused.
    pub late_usage_grace_hours: i64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            late_usage_grace_hours: LATE_USAGE_GRACE_HOURS_DEFAULT,
        }
    }
}

impl LedgerConfig {
    pub fn rules(&self) -> LedgerRules {
        LedgerRules {
            late_usage_grace: chrono::Duration::hours(self.late_usage_grace_hours),
        }
    }
}

/// Engine limits a deployment may tune (the `[engine]` section). Each default is the
/// engine's, stated with its reason on [`EngineConfig`]; the bounds below refuse values
/// that would be a typo rather than a choice.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Jobs waiting for the writer; past it callers get 503 at once.
    pub queue_commands_max: usize,
    /// Jobs decided and committed together in one append.
    pub batch_commands_max: usize,
    /// How long a batch may wait for callers that reply at once, in microseconds.
    pub batch_linger_us: u64,
    /// Aggregates kept in memory by the writers.
    pub cache_streams_max: usize,
    /// Recent idempotency outcomes kept in memory.
    pub idempotency_cache_max: usize,
    /// Writer tasks, brands hashed over them.
    pub writer_shards: usize,
    /// Repeated refusals of one metric by one way are appended as one event per this
    /// many seconds; 0 appends each alone.
    pub refusal_window_seconds: u64,
    /// Refusal windows kept in memory; past it refusals are appended alone.
    pub refusal_windows_max: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            queue_commands_max: e.queue_commands_max,
            batch_commands_max: e.batch_commands_max,
            batch_linger_us: e.batch_linger_max.as_micros() as u64,
            cache_streams_max: e.cache_streams_max,
            idempotency_cache_max: e.idempotency_cache_max,
            writer_shards: e.writer_shards,
            refusal_window_seconds: e.refusal_window.as_secs(),
            refusal_windows_max: e.refusal_windows_max,
        }
    }
}

/// The largest engine queue accepted: 16 Mi jobs already hold gigabytes of requests.
pub const ENGINE_QUEUE_COMMANDS_LIMIT_MAX: usize = 16 * 1024 * 1024;
/// The largest batch accepted: one append statement of 64 Ki events is tens of megabytes.
pub const ENGINE_BATCH_COMMANDS_LIMIT_MAX: usize = 65_536;
/// The longest linger accepted: 100 ms added to every command's latency is an outage.
pub const ENGINE_BATCH_LINGER_US_LIMIT_MAX: u64 = 100_000;
/// The largest in-memory caches accepted (aggregates, idempotency outcomes): 10 Mi
/// entries of a few KiB each is tens of gigabytes.
pub const ENGINE_CACHE_ENTRIES_LIMIT_MAX: usize = 10 * 1024 * 1024;
/// Writers beyond this only contend for the same cores and connections.
pub const ENGINE_WRITER_SHARDS_LIMIT_MAX: usize = 64;
/// The longest refusal window accepted: a day's refusals counted in memory only is a
/// day a crash could forget.
pub const ENGINE_REFUSAL_WINDOW_SECONDS_LIMIT_MAX: u64 = 3_600;

impl EngineSettings {
    /// The engine configuration these settings and `rules` give.
    pub fn config(&self, rules: LedgerRules) -> EngineConfig {
        EngineConfig {
            queue_commands_max: self.queue_commands_max,
            batch_commands_max: self.batch_commands_max,
            batch_linger_max: Duration::from_micros(self.batch_linger_us),
            cache_streams_max: self.cache_streams_max,
            idempotency_cache_max: self.idempotency_cache_max,
            writer_shards: self.writer_shards,
            refusal_window: Duration::from_secs(self.refusal_window_seconds),
            refusal_windows_max: self.refusal_windows_max,
            rules,
            ..EngineConfig::default()
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let within = |name: &str, v: u64, max: u64, min: u64| match (min..=max).contains(&v) {
            true => Ok(()),
            false => Err(ConfigError::Bad(format!(
                "engine.{name} must be {min} to {max}; got {v}"
            ))),
        };
        within(
            "queue_commands_max",
            self.queue_commands_max as u64,
            ENGINE_QUEUE_COMMANDS_LIMIT_MAX as u64,
            1,
        )?;
        within(
            "batch_commands_max",
            self.batch_commands_max as u64,
            ENGINE_BATCH_COMMANDS_LIMIT_MAX as u64,
            1,
        )?;
        within(
            "batch_linger_us",
            self.batch_linger_us,
            ENGINE_BATCH_LINGER_US_LIMIT_MAX,
            0,
        )?;
        within(
            "cache_streams_max",
            self.cache_streams_max as u64,
            ENGINE_CACHE_ENTRIES_LIMIT_MAX as u64,
            1,
        )?;
        within(
            "idempotency_cache_max",
            self.idempotency_cache_max as u64,
            ENGINE_CACHE_ENTRIES_LIMIT_MAX as u64,
            1,
        )?;
        within(
            "writer_shards",
            self.writer_shards as u64,
            ENGINE_WRITER_SHARDS_LIMIT_MAX as u64,
            1,
        )?;
        within(
            "refusal_window_seconds",
            self.refusal_window_seconds,
            ENGINE_REFUSAL_WINDOW_SECONDS_LIMIT_MAX,
            0,
        )?;
        within(
            "refusal_windows_max",
            self.refusal_windows_max as u64,
            ENGINE_CACHE_ENTRIES_LIMIT_MAX as u64,
            1,
        )
    }
}

/// Limits of the read models' memory (the `[read_models]` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadModelsSettings {
    /// Brand-periods whose read models are kept in memory.
    pub cache_periods_max: usize,
    /// Changed read models are written at least this often, in milliseconds.
    pub flush_interval_ms: u64,
    /// Changed read models written in one transaction at most.
    pub flush_rows_max: usize,
}

impl Default for ReadModelsSettings {
    fn default() -> Self {
        let r = ReadModelsConfig::default();
        Self {
            cache_periods_max: r.cache_periods_max,
            flush_interval_ms: r.flush_interval.as_millis() as u64,
            flush_rows_max: r.flush_rows_max,
        }
    }
}

/// The longest write interval accepted: a restart folds at most this much log again.
pub const READ_MODELS_FLUSH_INTERVAL_MS_LIMIT_MAX: u64 = 60_000;
/// The most rows one write may carry: 100 Ki rows of a few KiB is a long transaction.
pub const READ_MODELS_FLUSH_ROWS_LIMIT_MAX: usize = 100_000;

impl ReadModelsSettings {
    pub fn config(&self) -> ReadModelsConfig {
        ReadModelsConfig {
            cache_periods_max: self.cache_periods_max,
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            flush_rows_max: self.flush_rows_max,
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError::Bad(format!("read_models.{what}")));
        if !(CACHE_PERIODS_MIN..=ENGINE_CACHE_ENTRIES_LIMIT_MAX).contains(&self.cache_periods_max) {
            return bad(format!(
                "cache_periods_max must be {CACHE_PERIODS_MIN} to {ENGINE_CACHE_ENTRIES_LIMIT_MAX}"
            ));
        }
        if !(1..=READ_MODELS_FLUSH_INTERVAL_MS_LIMIT_MAX).contains(&self.flush_interval_ms) {
            return bad(format!(
                "flush_interval_ms must be 1 to {READ_MODELS_FLUSH_INTERVAL_MS_LIMIT_MAX}"
            ));
        }
        if !(1..=READ_MODELS_FLUSH_ROWS_LIMIT_MAX).contains(&self.flush_rows_max) {
            return bad(format!(
                "flush_rows_max must be 1 to {READ_MODELS_FLUSH_ROWS_LIMIT_MAX}"
            ));
        }
        Ok(())
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub ledger: LedgerConfig,
    pub engine: EngineSettings,
    pub read_models: ReadModelsSettings,
    pub metrics: MetricsConfig,
    pub stripe: StripeConfig,
    pub notify: NotifyConfig,
    pub log: LogConfig,
    pub sentry: SentryConfig,
}

/// How log lines are written to stderr (`docs/operations.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines: a terminal, `journalctl`.
    #[default]
    Text,
    /// One JSON object a line, span fields included: a log shipper.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// Error reports to Sentry (the `[sentry]` section); without a DSN nothing is sent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentryConfig {
    /// The project's DSN (`https://key@host/project`): its key lets anyone post events.
    pub dsn: Option<Secret>,
    /// The environment events are filed under; unset: the `auth.mode`.
    pub environment: Option<String>,
}

impl SentryConfig {
    fn check(&self) -> Result<(), ConfigError> {
        match &self.dsn {
            Some(dsn) if dsn.expose().parse::<sentry::types::Dsn>().is_err() => Err(
                ConfigError::Bad("sentry.dsn is not a DSN (https://key@host/project)".to_owned()),
            ),
            _ => Ok(()),
        }
    }
}

/// Notices out: which receivers brands may configure, the SMTP relay (`docs/alerts.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Accept `http://` receivers (development, tests); production wants https.
    pub allow_http: bool,
    /// Accept loopback, private and link-local receivers; off, so a brand cannot make
    /// the service call into its own network.
    pub allow_private_addresses: bool,
    /// A link to a brand's dashboard page in every notice, `{brand}` replaced.
    pub dashboard_url: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    /// `starttls`, `tls` (SMTPS) or `none` (a relay on loopback only).
    pub smtp_tls: String,
    pub smtp_from: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Secret>,
    /// How long a dispatcher holds a delivery it claimed: a process that dies holding
    /// one leaves it due again after this. Longer than an attempt (10 s), or a slow
    /// attempt may be made twice.
    pub claim_lease_seconds: u64,
}

/// The longest claim lease the configuration accepts: a dead dispatcher's deliveries
/// wait at most this long.
pub const CLAIM_LEASE_SECONDS_MAX: u64 = 3_600;

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allow_private_addresses: false,
            dashboard_url: None,
            smtp_host: None,
            smtp_port: 587,
            smtp_tls: "starttls".to_owned(),
            smtp_from: "alertes@localhost".to_owned(),
            smtp_username: None,
            smtp_password: None,
            claim_lease_seconds: crate::notify::dispatch::CLAIM_LEASE.as_secs(),
        }
    }
}

impl NotifyConfig {
    /// The SMTP relay, when one is configured.
    pub fn smtp(&self) -> Result<Option<crate::notify::SmtpSettings>, ConfigError> {
        use crate::notify::SmtpTls;
        let Some(host) = &self.smtp_host else {
            return Ok(None);
        };
        let tls = match self.smtp_tls.as_str() {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            "none" => SmtpTls::None,
            other => {
                return Err(ConfigError::Bad(format!(
                    "notify.smtp_tls must be starttls, tls or none, not {other}"
                )))
            }
        };
        Ok(Some(crate::notify::SmtpSettings {
            host: host.clone(),
            port: self.smtp_port,
            from: self.smtp_from.clone(),
            username: self.smtp_username.clone(),
            password: self.smtp_password.clone(),
            tls,
        }))
    }

    pub fn url_rules(&self) -> crate::notify::settings::UrlRules {
        crate::notify::settings::UrlRules {
            allow_http: self.allow_http,
            allow_private: self.allow_private_addresses,
        }
    }
}

/// Stripe Checkout top-ups and their webhook (`docs/stripe.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeConfig {
    /// The secret API key (`sk_live_…`, `sk_test_…`). Unset: checkouts answer 503.
    pub secret_key: Option<Secret>,
    /// The webhook endpoint's signing secret (`whsec_…`). Unset: deliveries answer 503,
    /// so Stripe keeps them until it is set.
    pub webhook_secret: Option<Secret>,
    /// The secret being rotated out, accepted beside the current one.
    pub webhook_secret_previous: Option<Secret>,
    /// Stripe's API, or a server speaking its protocol.
    pub api_base: String,
    /// Origins (`https://app.example.com`) the success and cancel URLs may point to,
    /// comma-separated: a checkout never sends a payer to a page of a caller's choosing.
    pub redirect_origins: String,
    /// Where Stripe sends the payer after paying, when the caller names no URL.
    pub success_url: Option<String>,
    /// Where Stripe sends a payer who gives up, when the caller names no URL.
    pub cancel_url: Option<String>,
    /// How long a checkout takes a payment (Stripe accepts 30 minutes to 24 hours).
    pub checkout_ttl_minutes: u32,
}

/// Stripe's own bounds on a Checkout Session's `expires_at`, from its creation.
pub const CHECKOUT_TTL_MINUTES_MIN: u32 = 30;
pub const CHECKOUT_TTL_MINUTES_MAX: u32 = 24 * 60;

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            secret_key: None,
            webhook_secret: None,
            webhook_secret_previous: None,
            api_base: "https://api.stripe.com".to_owned(),
            redirect_origins: String::new(),
            success_url: None,
            cancel_url: None,
            checkout_ttl_minutes: 60,
        }
    }
}

impl StripeConfig {
    /// The redirect origins, one per comma-separated entry.
    pub fn origins(&self) -> Vec<String> {
        self.redirect_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(CHECKOUT_TTL_MINUTES_MIN..=CHECKOUT_TTL_MINUTES_MAX)
            .contains(&self.checkout_ttl_minutes)
        {
            return Err(ConfigError::Bad(format!(
                "stripe.checkout_ttl_minutes must be {CHECKOUT_TTL_MINUTES_MIN} to {CHECKOUT_TTL_MINUTES_MAX}"
            )));
        }
        if !(self.api_base.starts_with("https://") || self.api_base.starts_with("http://")) {
            return Err(ConfigError::Bad(
                "stripe.api_base must be an http(s) URL".to_owned(),
            ));
        }
        for origin in self.origins() {
            if !(origin.starts_with("https://") || origin.starts_with("http://"))
                || origin["https://".len().min(origin.len())..].contains('/')
            {
                return Err(ConfigError::Bad(format!(
                    "stripe.redirect_origins: {origin} is not an origin (scheme://host[:port])"
                )));
            }
        }
        Ok(())
    }
}

/// `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// The bearer token a Prometheus scrape sends (`authorization` of its scrape
    /// config). Unset: the route asks for an admin credential like any admin route.
    pub token: Option<Secret>,
    /// Brands with per-brand gauges of their own: the most recently active ones.
    pub brand_series_max: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            token: None,
            brand_series_max: crate::metrics::BRAND_SERIES_MAX,
        }
    }
}

/// Where settings come from, passed in so tests need not touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The file named by `--config` (beats `LEDGER_CONFIG`).
    pub file: Option<PathBuf>,
    /// Read when no file is named, if it exists.
    pub default_file: Option<PathBuf>,
    /// Environment variables (only those in [`ENVIRONMENT`] and [`CONFIG_FILE_ENV`] are read).
    pub env: Vec<(String, String)>,
    /// `(setting, value)` pairs of the flags given on the command line.
    pub flags: Vec<(&'static str, String)>,
}

impl Sources {
    /// This process's environment and working directory, and the given flags.
    pub fn from_process(file: Option<PathBuf>, flags: Vec<(&'static str, String)>) -> Self {
        Self {
            file,
            default_file: Some(PathBuf::from(CONFIG_FILE_DEFAULT)),
            env: std::env::vars().collect(),
            flags,
        }
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn config_file(&self) -> Result<Option<PathBuf>, ConfigError> {
        let named = self
            .file
            .clone()
            .or_else(|| self.env(CONFIG_FILE_ENV).map(PathBuf::from));
        match named {
            Some(p) if p.is_file() => Ok(Some(p)),
            Some(p) => Err(ConfigError::NoFile(p)),
            None => Ok(self.default_file.clone().filter(|p| p.is_file())),
        }
    }
}

/// One layer of `(setting, value)` pairs under a name that error messages quote
/// ("for key `http.bind` in environment variable LEDGER_BIND").
struct Layer {
    name: String,
    pairs: Vec<(&'static str, String)>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, value) in &self.pairs {
            insert(&mut root, path, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Put `value` at the dotted `path` (`http.bind`), creating the tables on the way.
fn insert(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            dict.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, table) = child {
                insert(table, rest, value);
            }
        }
    }
}

impl Settings {
    /// The environment Sentry files events under: the configured one, else the mode.
    pub fn sentry_environment(&self) -> String {
        self.sentry
            .environment
            .clone()
            .unwrap_or_else(|| self.auth.mode.to_string())
    }

    /// Resolve the layers: defaults, then the file, then the environment, then flags.
    pub fn resolve(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = sources.config_file()? {
            figment = figment.merge(Toml::file_exact(file));
        }
        for (name, key) in ENVIRONMENT {
            if let Some(value) = sources.env(name) {
                figment = figment.merge(Layer {
                    name: format!("environment variable {name}"),
                    pairs: vec![(key, value.to_owned())],
                });
            }
        }
        figment = figment.merge(Layer {
            name: "command-line flags".to_owned(),
            pairs: sources.flags.clone(),
        });
        // Lossy: numbers and booleans may arrive as text from the environment.
        let settings: Settings = figment.extract_lossy()?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(1..=BODY_BYTES_LIMIT_MAX).contains(&self.http.body_bytes_max) {
            return Err(ConfigError::Bad(format!(
                "http.body_bytes_max must be 1 to {BODY_BYTES_LIMIT_MAX}"
            )));
        }
        if !(0..=LATE_USAGE_GRACE_HOURS_MAX).contains(&self.ledger.late_usage_grace_hours) {
            return Err(ConfigError::Bad(format!(
                "ledger.late_usage_grace_hours must be 0 to {LATE_USAGE_GRACE_HOURS_MAX}"
            )));
        }
        self.http.check()?;
        if !(0..=BRAND_SERIES_LIMIT_MAX).contains(&self.metrics.brand_series_max) {
            return Err(ConfigError::Bad(format!(
                "metrics.brand_series_max must be 0 to {BRAND_SERIES_LIMIT_MAX}"
            )));
        }
        self.engine.check()?;
        self.stripe.check()?;
        self.notify.smtp()?;
        if !(1..=CLAIM_LEASE_SECONDS_MAX).contains(&self.notify.claim_lease_seconds) {
            return Err(ConfigError::Bad(format!(
                "notify.claim_lease_seconds must be 1 to {CLAIM_LEASE_SECONDS_MAX}"
            )));
        }
        self.sentry.check()?;
        self.read_models.check()
    }
}

/// Hide the password of a database URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database_url {
            Some(url) => write!(f, "store=postgres url={}", redact_url(url))?,
            None => write!(
                f,
                "store=sqlite path={}",
                self.data_dir.join("ledger.db").display()
            )?,
        }
        match &self.catalog_path {
            Some(p) => write!(f, " catalog={}", p.display()),
            None => write!(f, " catalog=embedded"),
        }
    }
}

/// The database URL may hold a password: `Debug` shows it redacted, like `Display`.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("data_dir", &self.data_dir)
            .field("catalog_path", &self.catalog_path)
            .finish()
    }
}

fn set_or_unset(set: bool) -> &'static str {
    match set {
        true => "set",
        false => "unset",
    }
}

fn or_unset(v: Option<impl fmt::Display>) -> String {
    v.map_or_else(|| "unset".to_owned(), |v| v.to_string())
}

/// One line for the start-up log; secrets appear only as `set` or `unset`.
impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.auth;
        write!(
            f,
            "{} bind={} body_bytes_max={} header_read_timeout_ms={} request_timeout_ms={} \
             close_timeout_ms={} connections_max={} drain_deadline_ms={} requests_per_second_per_credential={} mode={} jwt_algorithm={} jwt_secret={} \
             jwt_public_key_path={} jwt_private_key_path={} issuer={} audience={} token_ttl={} \
             late_usage_grace_hours={} engine: queue_commands_max={} batch_commands_max={} \
             batch_linger_us={} cache_streams_max={} idempotency_cache_max={} writer_shards={} \
             refusal_window_seconds={} refusal_windows_max={} \
             read_models: cache_periods_max={} flush_interval_ms={} flush_rows_max={} \
             metrics_token={} stripe: secret_key={} webhook_secret={} api_base={} redirect_origins={} \
             log_format={} sentry: dsn={} environment={}",
            self.store,
            self.http.bind,
            self.http.body_bytes_max,
            self.http.header_read_timeout_ms,
            self.http.request_timeout_ms,
            self.http.close_timeout_ms,
            self.http.connections_max,
            self.http.drain_deadline_ms,
            self.http.requests_per_second_per_credential,
            a.mode,
            a.jwt_algorithm.0,
            if a.jwt_secret.is_some() {
                "set"
            } else {
                "unset"
            },
            or_unset(a.jwt_public_key_path.as_ref().map(|p| p.display())),
            or_unset(a.jwt_private_key_path.as_ref().map(|p| p.display())),
            or_unset(a.issuer.as_ref()),
            or_unset(a.audience.as_ref()),
            a.token_ttl,
            self.ledger.late_usage_grace_hours,
            self.engine.queue_commands_max,
            self.engine.batch_commands_max,
            self.engine.batch_linger_us,
            self.engine.cache_streams_max,
            self.engine.idempotency_cache_max,
            self.engine.writer_shards,
            self.engine.refusal_window_seconds,
            self.engine.refusal_windows_max,
            self.read_models.cache_periods_max,
            self.read_models.flush_interval_ms,
            self.read_models.flush_rows_max,
            if self.metrics.token.is_some() {
                "set"
            } else {
                "unset"
            },
            set_or_unset(self.stripe.secret_key.is_some()),
            set_or_unset(self.stripe.webhook_secret.is_some()),
            self.stripe.api_base,
            or_unset((!self.stripe.redirect_origins.is_empty()).then_some(&self.stripe.redirect_origins)),
            self.log.format,
            set_or_unset(self.sentry.dsn.is_some()),
            self.sentry_environment(),
        )
    }
}

/// Flags every subcommand shares: the file and the store.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Configuration file (TOML) [env: LEDGER_CONFIG] [default: usage-ledger.toml if present]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL; without it the embedded SQLite store is used [env: DATABASE_URL]
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Directory of the embedded store and the development signing secret
    /// [env: LEDGER_DATA_DIR] [default: data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Plan catalog TOML replacing the embedded one [env: LEDGER_CATALOG_PATH]
    #[arg(long, value_name = "FILE")]
    pub catalog_path: Option<PathBuf>,
    /// Hours after a period's end during which its usage is still accepted, 0 to 744
    /// [env: LEDGER_LATE_USAGE_GRACE_HOURS] [default: 72]
    #[arg(long, value_name = "HOURS")]
    pub late_usage_grace_hours: Option<i64>,
}

impl ConfigArgs {
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        push(&mut f, "store.database_url", self.database_url.as_ref());
        push(
            &mut f,
            "store.data_dir",
            self.data_dir.as_ref().map(|p| p.display()),
        );
        push(
            &mut f,
            "store.catalog_path",
            self.catalog_path.as_ref().map(|p| p.display()),
        );
        push(
            &mut f,
            "ledger.late_usage_grace_hours",
            self.late_usage_grace_hours.as_ref(),
        );
        f
    }

    /// Settings from these flags, this process's environment and the file.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        Settings::resolve(&Sources::from_process(self.config.clone(), self.flags()))
    }
}

/// Flags of the token verifier and minter.
#[derive(Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// `development` creates a signing secret and prints an admin token; `production`
    /// requires configured keys [env: LEDGER_MODE] [default: development]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// HS256, RS256 or EdDSA [env: LEDGER_JWT_ALGORITHM] [default: HS256]
    #[arg(long, value_name = "ALG")]
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// PEM public key for RS256/EdDSA [env: LEDGER_JWT_PUBLIC_KEY_PATH]
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key_path: Option<PathBuf>,
    /// PEM private key for RS256/EdDSA, to mint tokens [env: LEDGER_JWT_PRIVATE_KEY_PATH]
    #[arg(long, value_name = "FILE")]
    pub jwt_private_key_path: Option<PathBuf>,
    /// Required token issuer (iss) [env: LEDGER_JWT_ISSUER]
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Required token audience (aud) [env: LEDGER_JWT_AUDIENCE]
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
}

impl AuthArgs {
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        let mut f = Vec::new();
        push(&mut f, "auth.mode", self.mode.as_ref());
        push(&mut f, "auth.jwt_algorithm", self.jwt_algorithm.as_ref());
        push(
            &mut f,
            "auth.jwt_public_key_path",
            self.jwt_public_key_path.as_ref().map(|p| p.display()),
        );
        push(
            &mut f,
            "auth.jwt_private_key_path",
            self.jwt_private_key_path.as_ref().map(|p| p.display()),
        );
        push(&mut f, "auth.issuer", self.jwt_issuer.as_ref());
        push(&mut f, "auth.audience", self.jwt_audience.as_ref());
        f
    }
}

/// Flags of `serve`.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on [env: LEDGER_BIND] [default: 127.0.0.1:3333]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Largest request body accepted, in bytes [env: LEDGER_BODY_BYTES_MAX] [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub body_bytes_max: Option<usize>,
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl ServeArgs {
    pub fn flags(&self) -> Vec<(&'static str, String)> {
        let mut f = self.config.flags();
        push(&mut f, "http.bind", self.bind.as_ref());
        push(&mut f, "http.body_bytes_max", self.body_bytes_max.as_ref());
        f.extend(self.auth.flags());
        f
    }

    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        Settings::resolve(&Sources::from_process(
            self.config.config.clone(),
            self.flags(),
        ))
    }
}

fn push(
    flags: &mut Vec<(&'static str, String)>,
    key: &'static str,
    value: Option<impl fmt::Display>,
) {
    if let Some(v) = value {
        flags.push((key, v.to_string()));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn database_passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    /// Environment pairs as `Sources` holds them (also used by `auth::keys`' tests).
    pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file_which_beats_defaults() {
        // Proves the precedence of the four layers, setting by setting.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.toml");
        std::fs::write(
            &file,
            "[store]\ndata_dir = \"from-file\"\ncatalog_path = \"file.toml\"\n\
             [http]\nbind = \"127.0.0.1:1001\"\nbody_bytes_max = 1000\n\
             [auth]\nissuer = \"file-iss\"\n",
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            default_file: None,
            env: env(&[
                ("LEDGER_BIND", "127.0.0.1:2002"),
                ("LEDGER_BODY_BYTES_MAX", "2000"),
                ("LEDGER_JWT_ISSUER", "env-iss"),
                ("LEDGER_CATALOG_PATH", ""),
            ]),
            flags: vec![("http.bind", "127.0.0.1:3003".to_owned())],
        };
        let s = Settings::resolve(&sources).unwrap();
        assert_eq!(s.http.bind.port(), 3003, "flag beats environment");
        assert_eq!(s.http.body_bytes_max, 2000, "environment beats file");
        assert_eq!(s.auth.issuer.as_deref(), Some("env-iss"));
        assert_eq!(
            s.store.data_dir,
            PathBuf::from("from-file"),
            "file beats default"
        );
        assert_eq!(
            s.store.catalog_path,
            Some(PathBuf::from("file.toml")),
            "an empty variable counts as unset"
        );
        assert_eq!(s.auth.mode, Mode::Development, "default");
        assert_eq!(s.auth.jwt_algorithm.0, JwtAlgorithm::Hs256, "default");
        assert_eq!(s.auth.token_ttl, TokenTtl::default(), "default");
    }

    #[test]
    fn nothing_configured_gives_the_documented_defaults() {
        // Proves the defaults stated in the module table.
        let s = Settings::resolve(&Sources::default()).unwrap();
        assert_eq!(s.http.bind.to_string(), DEFAULT_BIND);
        assert_eq!(s.http.body_bytes_max, 1024 * 1024);
        assert_eq!(s.store.data_dir, PathBuf::from("data"));
        assert!(s.store.database_url.is_none());
        assert_eq!(s.auth.mode, Mode::Development);
    }

    #[test]
    fn a_typo_in_the_file_or_a_bad_value_is_refused_with_its_source() {
        // Proves unknown keys and unparsable values fail loudly instead of being ignored.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.toml");
        std::fs::write(&file, "[http]\nbindd = \"127.0.0.1:1\"\n").unwrap();
        let typo = Sources {
            file: Some(file),
            ..Sources::default()
        };
        assert!(Settings::resolve(&typo).is_err());

        let bad = Sources {
            env: env(&[("LEDGER_MODE", "staging")]),
            ..Sources::default()
        };
        let e = Settings::resolve(&bad).unwrap_err().to_string();
        assert!(e.contains("LEDGER_MODE"), "{e}");

        let huge = Sources {
            env: env(&[("LEDGER_BODY_BYTES_MAX", "0")]),
            ..Sources::default()
        };
        assert!(Settings::resolve(&huge).is_err());
    }

    #[test]
    fn the_late_usage_grace_is_configurable_up_to_a_month() {
        // Proves the grace reaches the engine's rules from each layer, defaults to 72 h,
        // and a value outside 0..=744 h is refused rather than clamped.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.toml");
        std::fs::write(&file, "[ledger]\nlate_usage_grace_hours = 24\n").unwrap();
        let resolve = |env_value: &str, flag: Option<&str>| {
            Settings::resolve(&Sources {
                file: Some(file.clone()),
                env: env(&[("LEDGER_LATE_USAGE_GRACE_HOURS", env_value)]),
                flags: flag
                    .map(|v| vec![("ledger.late_usage_grace_hours", v.to_owned())])
                    .unwrap_or_default(),
                ..Sources::default()
            })
        };
        let hours = |s: Settings| s.ledger.rules().late_usage_grace.num_hours();
        assert_eq!(hours(Settings::default()), 72, "default");
        assert_eq!(hours(resolve("", None).unwrap()), 24, "file");
        assert_eq!(hours(resolve("0", None).unwrap()), 0, "environment");
        assert_eq!(hours(resolve("0", Some("744")).unwrap()), 744, "flag");
        for bad in ["745", "-1", "three days"] {
            let e = resolve(bad, None).unwrap_err().to_string();
            assert!(e.contains("late_usage_grace_hours"), "{bad}: {e}");
        }
    }

    #[test]
    fn engine_and_read_model_limits_come_from_every_layer_and_are_bounded() {
        // Proves the [engine] and [read_models] sections reach the engine's and the read
        // models' configuration from file and environment, default to the engine's own
        // defaults, and refuse a value out of bounds rather than clamp it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.toml");
        std::fs::write(
            &file,
            "[engine]\nqueue_commands_max = 1000\nbatch_linger_us = 0\n\
             [read_models]\ncache_periods_max = 5000\nflush_interval_ms = 250\n",
        )
        .unwrap();
        let resolve = |pairs: &[(&str, &str)]| {
            Settings::resolve(&Sources {
                file: Some(file.clone()),
                env: env(pairs),
                ..Sources::default()
            })
        };
        let s = resolve(&[("LEDGER_ENGINE_BATCH_COMMANDS_MAX", "64")]).unwrap();
        let engine = s.engine.config(s.ledger.rules());
        assert_eq!(engine.queue_commands_max, 1000, "file");
        assert_eq!(engine.batch_commands_max, 64, "environment");
        assert_eq!(engine.batch_linger_max, Duration::ZERO);
        assert_eq!(s.read_models.config().cache_periods_max, 5000);
        assert_eq!(
            s.read_models.config().flush_interval,
            Duration::from_millis(250)
        );

        let defaults = Settings::default();
        let engine = defaults.engine.config(defaults.ledger.rules());
        let stock = EngineConfig::default();
        assert_eq!(engine.queue_commands_max, stock.queue_commands_max);
        assert_eq!(engine.cache_streams_max, stock.cache_streams_max);
        assert_eq!(engine.batch_linger_max, stock.batch_linger_max);

        for (var, value, named) in [
            ("LEDGER_ENGINE_WRITER_SHARDS", "0", "engine.writer_shards"),
            (
                "LEDGER_ENGINE_BATCH_LINGER_US",
                "100001",
                "engine.batch_linger_us",
            ),
            (
                "LEDGER_READ_MODELS_CACHE_PERIODS_MAX",
                "10",
                "cache_periods_max",
            ),
            ("LEDGER_READ_MODELS_FLUSH_ROWS_MAX", "0", "flush_rows_max"),
        ] {
            let e = resolve(&[(var, value)]).unwrap_err().to_string();
            assert!(e.contains(named), "{var}={value}: {e}");
        }
    }

    #[test]
    fn log_format_and_sentry_are_configurable_and_a_bad_dsn_is_refused() {
        // Proves the defaults (text logs, no Sentry, environment = mode), the environment
        // variables, and that a DSN that does not parse stops the start rather than
        // silently reporting nothing.
        let s = Settings::resolve(&Sources::default()).unwrap();
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(s.sentry.dsn.is_none());
        assert_eq!(s.sentry_environment(), "development");
        let resolve = |pairs: &[(&str, &str)]| {
            Settings::resolve(&Sources {
                env: env(pairs),
                ..Sources::default()
            })
        };
        let s = resolve(&[
            ("LEDGER_LOG_FORMAT", "json"),
            ("LEDGER_MODE", "production"),
            ("LEDGER_JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
        ])
        .unwrap();
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.sentry_environment(), "production", "the mode by default");
        let s = resolve(&[("LEDGER_SENTRY_ENVIRONMENT", "staging")]).unwrap();
        assert_eq!(s.sentry_environment(), "staging");
        let e = resolve(&[("LEDGER_LOG_FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("LEDGER_LOG_FORMAT"), "{e}");
        let e = resolve(&[("LEDGER_SENTRY_DSN", "not a dsn")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sentry.dsn"), "{e}");
    }

    #[test]
    fn a_named_config_file_that_does_not_exist_is_an_error() {
        // Proves `LEDGER_CONFIG` pointing nowhere is reported, not silently skipped.
        let sources = Sources {
            env: env(&[("LEDGER_CONFIG", "/nonexistent/usage-ledger.toml")]),
            ..Sources::default()
        };
        assert!(matches!(
            Settings::resolve(&sources),
            Err(ConfigError::NoFile(_))
        ));
    }

    #[test]
    fn debug_and_display_never_contain_secrets() {
        // Proves neither the JWT secret nor the database password reaches a log line.
        let s = Settings::resolve(&Sources {
            env: env(&[
                ("LEDGER_JWT_SECRET", "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"),
                ("DATABASE_URL", "postgres://ledger:pa55word@db:5432/ledger"),
                (
                    "LEDGER_SENTRY_DSN",
                    "https://k3y5ecret@sentry.example.com/7",
                ),
            ]),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(
            s.auth.jwt_secret.as_ref().unwrap().expose(),
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t"
        );
        for printed in [format!("{s}"), format!("{s:?}"), format!("{s:#?}")] {
            assert!(!printed.contains("s3cr3t"), "{printed}");
            assert!(!printed.contains("pa55word"), "{printed}");
            assert!(!printed.contains("k3y5ecret"), "{printed}");
        }
        assert!(format!("{s}").contains("jwt_secret=set"));
        assert!(format!("{s}").contains("sentry: dsn=set"));
    }
}
