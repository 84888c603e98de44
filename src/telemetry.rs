//! Logs and error reports: the log subscriber in the configured format, and Sentry.
//!
//! Sentry is started only with a DSN: without one no client exists and every report
//! below is a no-op, so nothing leaves the process. Reported: every internal error
//! answered 500 (tags `route`, `status`, `request_id`) and the live feed's broadcast
//! failures in a row (tag `component=live`). `docs/operations.md` describes both.

use std::borrow::Cow;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};
use crate::http::request_id;

/// How long the guard waits at shutdown for queued events to leave: long enough for a
/// few events on a slow link, short enough not to hold up a restart.
pub const SENTRY_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Install the process's log subscriber: stderr, `RUST_LOG` filter (default `info`), in
/// `format`. JSON lines carry the fields of the spans they are in (`request_id`).
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Start the Sentry client when `settings` has a DSN; keep the guard until the process
/// stops: dropping it flushes the events still queued.
pub fn init_sentry(settings: &Settings) -> Option<sentry::ClientInitGuard> {
    let dsn = settings.sentry.dsn.as_ref()?;
    let dsn = match dsn.expose().parse() {
        Ok(dsn) => dsn,
        // `Settings::check` refuses a bad DSN; this only keeps a defect from panicking.
        Err(e) => {
            tracing::warn!(error = %e, "sentry.dsn does not parse: nothing is reported");
            return None;
        }
    };
    let guard = sentry::init(sentry::ClientOptions {
        dsn: Some(dsn),
        environment: Some(Cow::Owned(settings.sentry_environment())),
        release: Some(Cow::Borrowed(concat!(
            "usage-ledger@",
            env!("CARGO_PKG_VERSION")
        ))),
        shutdown_timeout: SENTRY_FLUSH_TIMEOUT,
        ..Default::default()
    });
    tracing::info!("sentry: reporting internal errors and live feed failures");
    Some(guard)
}

/// Report an internal error answered with `status`, tagged with the request it failed.
pub fn report_internal(cause: &str, status: u16) {
    let request = request_id::current();
    let route = request.as_ref().map_or("none", |r| r.route.as_str());
    let id = request.as_ref().map_or("none", |r| r.id.as_str());
    send(
        format!("internal error: {cause}"),
        &[
            ("route", route),
            ("status", &status.to_string()),
            ("request_id", id),
        ],
    );
}

/// Report that the live feed failed `failures` broadcasts in a row.
pub fn report_live_failures(failures: u32) {
    send(
        format!("live feed: {failures} broadcast failures in a row (slow clients dropped)"),
        &[("component", "live")],
    );
}

fn send(message: String, tags: &[(&str, &str)]) {
    let event = sentry::protocol::Event {
        message: Some(message),
        level: sentry::Level::Error,
        tags: tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    // The process hub, not the thread's: a thread that touched its own hub before the
    // client started would keep a hub without it and drop the event.
    sentry::Hub::main().capture_event(event);
}
