//! The composition root: the one place that opens the store, starts the engine and the
//! log consumers, and wires the HTTP router. `main`, the operator commands, the API
//! tests and the benchmark all start the ledger through it, so the wiring they run is
//! the wiring users run.
//!
//! [`Application::build`] gives a bound but not yet serving service; its
//! [`Application::run_until`] serves until the shutdown future completes, then stops
//! taking requests, drains the engine and stops the consumers. [`open_ledger`] gives
//! the same ledger without HTTP nor consumers, for one-shot commands.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ledger_aggregates::Catalog;

use crate::auth::keys::{verifier, KeyError, KeySource};
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{Settings, StoreConfig};
use crate::engine::Engine;
use crate::http::{router, AppState};
use crate::ledger::Ledger;
use crate::store::{
    ApiKeyStore, EventLog, OutboxStore, PostgresLog, ProjectionStore, SqliteLog, StoreError,
};
use crate::tail::projector::Projector;
use crate::tail::TailError;

/// Why the ledger could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the read models cannot start: {0}")]
    ReadModels(#[from] TailError),
    #[error("cannot read plan catalog {path}: {source}")]
    CatalogRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plan catalog {path}: {detail}")]
    Catalog { path: PathBuf, detail: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The opened store: the event log, the API keys and the read models, in one database.
#[derive(Clone)]
pub struct Stores {
    pub log: Arc<dyn EventLog>,
    pub keys: Arc<dyn ApiKeyStore>,
    /// The same database object as `log`: its consumers wake on `log`'s appends.
    pub projections: Arc<dyn ProjectionStore>,
    /// Notices to deliver and webhook secrets, in the same database.
    pub outbox: Arc<dyn OutboxStore>,
}

/// Open (and migrate) the configured store.
pub async fn open_stores(config: &StoreConfig) -> Result<Stores, StoreError> {
    Ok(match &config.database_url {
        Some(url) => {
            let db = Arc::new(PostgresLog::connect(url).await?);
            Stores {
                log: db.clone(),
                keys: db.clone(),
                outbox: db.clone(),
                projections: db,
            }
        }
        None => {
            let db = Arc::new(SqliteLog::open_in(&config.data_dir).await?);
            Stores {
                log: db.clone(),
                keys: db.clone(),
                outbox: db.clone(),
                projections: db,
            }
        }
    })
}

/// The configured plan catalog, or the embedded one.
pub fn load_catalog(config: &StoreConfig) -> Result<Catalog, StartupError> {
    let Some(path) = &config.catalog_path else {
        return Ok(Catalog::default_catalog());
    };
    let text = std::fs::read_to_string(path).map_err(|source| StartupError::CatalogRead {
        path: path.clone(),
        source,
    })?;
    Catalog::from_toml(&text).map_err(|e| StartupError::Catalog {
        path: path.clone(),
        detail: e.to_string(),
    })
}

/// The engine on the configured store with the configured rules and limits, and the
/// store: what one-shot commands (`brands`, `reset`) write through, exactly as the
/// service does, without the service's consumers.
pub async fn open_engine(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<(Engine, Stores), StartupError> {
    engine_counting(settings, clock, None).await
}

/// [`open_engine`], counting in `metrics` when given (the service's).
async fn engine_counting(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<crate::metrics::EngineMetrics>>,
) -> Result<(Engine, Stores), StartupError> {
    let catalog = Arc::new(load_catalog(&settings.store)?);
    let stores = open_stores(&settings.store).await?;
    let config = crate::engine::EngineConfig {
        metrics,
        ..settings.engine.config(settings.ledger.rules())
    };
    let engine = Engine::start(stores.log.clone(), catalog, clock, config);
    Ok((engine, stores))
}

/// The whole ledger: the engine and the read models' consumer on the configured store.
pub async fn open_ledger(
    settings: &Settings,
    clock: Arc<dyn Clock>,
) -> Result<Ledger, StartupError> {
    ledger_counting(settings, clock, None).await
}

async fn ledger_counting(
    settings: &Settings,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<crate::metrics::EngineMetrics>>,
) -> Result<Ledger, StartupError> {
    let (engine, stores) = engine_counting(settings, clock, metrics).await?;
    let projector = Projector::follow(
        stores.projections.clone(),
        &engine,
        settings.read_models.config(),
    )
    .await?;
    let caches = crate::tail::caches::follow(&engine, stores.projections.clone()).await?;
    Ok(Ledger {
        engine,
        stores,
        projector,
        caches,
        payments: Arc::new(crate::ledger::topups::Payments::from_config(
            &settings.stripe,
        )),
    })
}

/// The service, bound to its address, not yet serving.
pub struct Application {
    listener: tokio::net::TcpListener,
    state: AppState,
    notices: crate::notify::Notices,
    live: crate::tail::live::Live,
    key_source: KeySource,
    limits: crate::http::server::Limits,
}

impl Application {
    /// Resolve the keys, open the store, start the engine and the read-model consumer,
    /// and bind the listener (port 0 picks a free one).
    pub async fn build(settings: &Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let (jwt, key_source) = verifier(settings)?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let ledger = ledger_counting(settings, clock, Some(metrics.engine.clone())).await?;
        let auth = Authenticator::new(jwt, ledger.stores.keys.clone());
        auth.follow_revocations().await?;
        let notices = crate::notify::Notices::start(
            &ledger,
            &settings.notify,
            Some(metrics.deliveries.clone()),
        )
        .await?;
        let live = crate::tail::live::Live::start(&ledger, metrics.live.clone()).await?;
        let addr = settings.http.bind;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let http = &settings.http;
        let ms = std::time::Duration::from_millis;
        let caches = ledger.caches.clone();
        let state = AppState::new(crate::http::Shared {
            ledger,
            auth,
            body_bytes_max: http.body_bytes_max,
            request_timeout: ms(http.request_timeout_ms),
            close_timeout: ms(http.close_timeout_ms),
            draining: Default::default(),
            metrics,
            metrics_token: settings.metrics.token.clone(),
            brand_series_max: settings.metrics.brand_series_max,
            rates: crate::http::rate::CredentialRates::new(http.requests_per_second_per_credential)
                .map(Arc::new),
            url_rules: settings.notify.url_rules(),
            dispatch: notices.dispatcher.wake.clone(),
            live: live.hub.clone(),
            consumers: vec![
                (crate::tail::caches::CACHES_CONSUMER, caches),
                (crate::store::NOTICES_CONSUMER, notices.tail.clone()),
                (crate::tail::live::LIVE_CONSUMER, live.tail.clone()),
            ],
        });
        let limits = crate::http::server::Limits {
            header_read_timeout: ms(http.header_read_timeout_ms),
            connections_max: crate::http::server::fit_connections(http.connections_max),
            drain_deadline: ms(http.drain_deadline_ms),
        };
        Ok(Self {
            listener,
            state,
            notices,
            live,
            key_source,
            limits,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The verifier and minter of this service's tokens.
    pub fn auth(&self) -> &Authenticator {
        &self.state.auth
    }

    /// Where the signing key came from (development mode prints a token for it).
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    pub fn ledger(&self) -> &Ledger {
        &self.state.ledger
    }

    /// Serve until `shutdown` completes; then let the requests in flight finish, drain
    /// the engine (every queued command answered) and stop the consumers.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            state,
            limits,
            notices,
            live,
            ..
        } = self;
        let ledger = state.ledger.clone();
        let draining = state.draining.clone();
        let shutdown = async move {
            shutdown.await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        crate::http::server::serve(listener, router(state), limits, shutdown).await;
        ledger.stop().await;
        notices.stop().await;
        live.stop().await;
        Ok(())
    }
}
