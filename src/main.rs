//! `usage-ledger`: the service binary.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ledger_aggregates::BrandId;
use usage_ledger::auth::keys::{verifier, KeySource};
use usage_ledger::auth::{Authenticator, Role, TokenTtl};
use usage_ledger::cli::brands::{self, BrandsArgs};
use usage_ledger::cli::cli_actor;
use usage_ledger::cli::pricing::{self, PricingArgs};
use usage_ledger::cli::replay::{self, ReplayCommand};
use usage_ledger::cli::reset::{self, ResetArgs};
use usage_ledger::cli::stripe::{self, StripeArgs};
use usage_ledger::clock::SystemClock;
use usage_ledger::config::{
    AuthArgs, ConfigArgs, ServeArgs, Settings, Sources, DEV_ADMIN_TOKEN_TTL,
};
use usage_ledger::engine::Engine;
use usage_ledger::http::API_PREFIX;
use usage_ledger::startup::{
    load_catalog, open_engine, open_ledger, open_stores, Application, Stores,
};

#[derive(Parser)]
#[command(
    name = "usage-ledger",
    version,
    about = "Event-sourced usage ledger: quotas, credits, alerts and overage cost",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand the service runs, with these flags.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve(ServeArgs),
    /// Create or upgrade the store schema, then exit.
    Migrate(ConfigArgs),
    /// Print the plan catalog as JSON.
    Plans(ConfigArgs),
    /// Print a JWT signed with the configured key (in development, the local secret).
    Token(TokenArgs),
    /// Register a brand on a plan, change its plan, or show it.
    Brands(BrandsCmd),
    /// The runbook's quota reset, as compensating events: never deletion.
    Reset(ResetCmd),
    /// Auditors: rebuild or verify the read models, replay a period as of a point,
    /// export the log with a hash chain and verify such an export.
    Replay(ReplayCmd),
    /// Stripe top-ups: reconcile the payments whose webhook never arrived.
    Stripe(StripeCmd),
    /// The catalog's prices against Stripe's Prices.
    Pricing(PricingCmd),
}

#[derive(Args)]
struct PricingCmd {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    args: PricingArgs,
}

#[derive(Args)]
struct StripeCmd {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    args: StripeArgs,
}

#[derive(Args)]
struct ReplayCmd {
    /// Store flags go before the subcommand: `replay --data-dir DIR verify`.
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: ReplayCommand,
}

#[derive(Args)]
struct BrandsCmd {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    args: BrandsArgs,
}

#[derive(Args)]
struct ResetCmd {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    args: ResetArgs,
}

#[derive(Args)]
struct TokenArgs {
    /// What the token may do.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// A brand the token is scoped to: exactly one for `brand`, one or more for
    /// `service`, none for `admin`.
    #[arg(long = "brand", value_name = "BRAND")]
    brands: Vec<String>,
    /// Who the token stands for in the audit trail [default: cli:$USER]
    #[arg(long)]
    subject: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 7d (at most 30d) [env: LEDGER_TOKEN_TTL] [default: 1h]
    #[arg(long)]
    ttl: Option<TokenTtl>,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    auth: AuthArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Brand,
    Service,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Brand => Role::Brand,
            RoleArg::Service => Role::Service,
        }
    }
}

/// glibc's allocator was ~13 % of the writer's CPU in a `perf` profile (many small,
/// short-lived allocations per command). Swapping in mimalloc gave no throughput change
/// measurable above this machine's run-to-run noise (docs/performance.md); it is kept as
/// the allocator built for this allocation pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let settings = args.resolve()?;
    tracing::info!("configuration: {settings}");
    // Held until `serve` returns: dropping it flushes the events still queued.
    let _sentry = usage_ledger::telemetry::init_sentry(&settings);
    let app = Application::build(&settings, Arc::new(SystemClock)).await?;
    tracing::info!(jwt_algorithm = %app.auth().jwt().algorithm(), "starting usage-ledger");
    let addr = app.local_addr();
    tracing::info!("listening on http://{addr}");
    if let KeySource::Development { path, created } = app.key_source() {
        print_dev_token(app.auth(), addr, path, *created)?;
    }
    app.run_until(async {
        stop_signal().await;
        tracing::info!("shutting down: finishing requests in flight, draining the engine");
        // A second signal means the operator will not wait: exit at once.
        tokio::spawn(async {
            stop_signal().await;
            tracing::warn!("second stop signal: exiting without draining");
            std::process::exit(130);
        });
    })
    .await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (what systemd, Docker and Kubernetes send) or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "SIGTERM cannot be handled; only Ctrl-C stops the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Development only: a ready admin token and a request to try it with. Production never
/// gets here (its key is always configured), so it never prints a token.
fn print_dev_token(
    auth: &Authenticator,
    addr: SocketAddr,
    secret_path: &std::path::Path,
    created: bool,
) -> Result<(), Failure> {
    let ttl = TokenTtl::from_secs(DEV_ADMIN_TOKEN_TTL.as_secs())?;
    let token = auth.jwt().mint(Role::Admin, &[], "dev-admin", ttl)?;
    let host = match addr.ip().is_unspecified() {
        true => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        false => addr,
    };
    let verb = if created { "created" } else { "reused" };
    println!(
        "development mode: signing secret {verb} at {} (on a server, set LEDGER_MODE=production \
         and LEDGER_JWT_SECRET)\nadmin token, valid {} h:\n  {token}\ntry (registers brand `demo` \
         on plan `starter`):\n  curl -X PUT -H 'Authorization: Bearer {token}' \
         -H 'Content-Type: application/json' -d '{{\"plan\":\"starter\"}}' \
         http://{host}{API_PREFIX}/brands/demo",
        secret_path.display(),
        DEV_ADMIN_TOKEN_TTL.as_secs() / 3600,
    );
    Ok(())
}

fn token(args: TokenArgs) -> Result<(), Failure> {
    let mut flags = args.config.flags();
    flags.extend(args.auth.flags());
    let settings = Settings::resolve(&Sources::from_process(args.config.config.clone(), flags))?;
    let (jwt, _) = verifier(&settings)?;
    let brands = args
        .brands
        .iter()
        .map(|b| BrandId::parse(b))
        .collect::<Result<Vec<_>, _>>()?;
    let subject = args.subject.unwrap_or_else(cli_actor);
    let ttl = args.ttl.unwrap_or(settings.auth.token_ttl);
    println!("{}", jwt.mint(args.role.into(), &brands, &subject, ttl)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Migrate(args)) => {
            let settings = args.resolve()?;
            open_stores(&settings.store).await?;
            println!("store is up to date ({})", settings.store);
            Ok(())
        }
        Some(Command::Plans(args)) => {
            let catalog = load_catalog(&args.resolve()?.store)?;
            println!("{}", serde_json::to_string_pretty(catalog.plans())?);
            Ok(())
        }
        Some(Command::Token(args)) => token(args),
        Some(Command::Brands(cmd)) => {
            let (engine, _) = cli_engine(&cmd.config).await?;
            brands::run(&engine, &cmd.args, &mut std::io::stdout()).await?;
            engine.drain().await;
            Ok(())
        }
        Some(Command::Replay(cmd)) => replay(cmd).await,
        Some(Command::Reset(cmd)) => {
            let (engine, stores) = cli_engine(&cmd.config).await?;
            let log = stores.log.as_ref();
            reset::run(&engine, log, &cmd.args, &mut std::io::stdout()).await?;
            engine.drain().await;
            Ok(())
        }
        Some(Command::Stripe(cmd)) => {
            let ledger = open_ledger(&cmd.config.resolve()?, Arc::new(SystemClock)).await?;
            stripe::run(&ledger, &cmd.args, &mut std::io::stdout()).await?;
            ledger.stop().await;
            Ok(())
        }
        Some(Command::Pricing(cmd)) => {
            let settings = cmd.config.resolve()?;
            let catalog = load_catalog(&settings.store)?;
            let s = &settings.stripe;
            let client = s
                .secret_key
                .clone()
                .map(|key| usage_ledger::stripe::client::StripeClient::new(&s.api_base, key));
            pricing::run(&catalog, client.as_ref(), &cmd.args, &mut std::io::stdout()).await?;
            Ok(())
        }
    }
}

async fn replay(cmd: ReplayCmd) -> Result<(), Failure> {
    let out = &mut std::io::stdout();
    let config = &cmd.config;
    let store = || async move {
        Ok::<_, Failure>(open_stores(&config.resolve()?.store).await?.projections)
    };
    match cmd.command {
        ReplayCommand::Rebuild => drop(replay::rebuild(store().await?, out).await?),
        ReplayCommand::Verify => drop(replay::verify(store().await?, out).await?),
        ReplayCommand::AsOf(args) => replay::as_of(store().await?.as_ref(), &args, out).await?,
        ReplayCommand::Export(args) => {
            let summary = match &args.output {
                Some(path) => {
                    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
                    replay::export(store().await?, file).await?
                }
                None => {
                    let stdout = std::io::BufWriter::new(std::io::stdout());
                    replay::export(store().await?, stdout).await?
                }
            };
            eprintln!(
                "exported {} events in {} streams, digest {}",
                summary.events, summary.streams, summary.digest
            );
        }
        ReplayCommand::VerifyExport(args) => {
            let summary = replay::verify_export(&args)?;
            println!(
                "export verified: {} events in {} streams, digest {}",
                summary.events, summary.streams, summary.digest
            );
        }
    }
    Ok(())
}

/// The engine a one-shot command writes through: the same rules, limits, idempotency
/// and conflict handling as the service, on the configured store.
async fn cli_engine(config: &ConfigArgs) -> Result<(Engine, Stores), Failure> {
    let settings = config.resolve()?;
    Ok(open_engine(&settings, Arc::new(SystemClock)).await?)
}

/// The configuration file the command names, for the log format read before logging.
fn config_file(cli: &Cli) -> Option<std::path::PathBuf> {
    let config = match &cli.command {
        None => &cli.serve.config,
        Some(Command::Serve(a)) => &a.config,
        Some(Command::Migrate(c) | Command::Plans(c)) => c,
        Some(Command::Token(a)) => &a.config,
        Some(Command::Brands(c)) => &c.config,
        Some(Command::Reset(c)) => &c.config,
        Some(Command::Replay(c)) => &c.config,
        Some(Command::Stripe(c)) => &c.config,
        Some(Command::Pricing(c)) => &c.config,
    };
    config.config.clone()
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logging starts before the command resolves its settings, so the format is read
    // from the same file and environment here; settings that do not resolve give text
    // logs, and the command then reports why they do not.
    let format = Settings::resolve(&Sources::from_process(config_file(&cli), Vec::new()))
        .map(|s| s.log.format)
        .unwrap_or_default();
    // Logs go to stderr, so stdout carries only what a command prints (a token, the
    // catalog) and `TOKEN=$(usage-ledger token --role admin)` works.
    usage_ledger::telemetry::init_logs(format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("usage-ledger: {e}");
            ExitCode::FAILURE
        }
    }
}
