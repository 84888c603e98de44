//! The connection loop under the router: what `axum::serve` leaves unbounded. A client
//! that sends its headers slowly (slowloris) or keeps a connection idle is closed after
//! [`Limits::header_read_timeout`]; at most [`Limits::connections_max`] connections are
//! open at once, and one beyond waits [`CONNECTION_WAIT_MAX`] for a slot, then gets a
//! 503 problem instead of a hang; at shutdown, accepting stops and the connections in
//! flight get [`Limits::drain_deadline`] to finish their requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How long a connection beyond the cap waits for another to close before it is
/// refused: enough to ride out a burst, short enough that the client hears at once.
pub const CONNECTION_WAIT_MAX: Duration = Duration::from_millis(100);
/// After `accept` fails (out of file descriptors), the loop pauses this long instead
/// of spinning on the error and filling the log.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// File descriptors kept for everything but client connections: the database pool,
/// the SQLite files, logs.
pub const FDS_RESERVED: u64 = 256;

/// The connection limits, from `[http]` of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole request head must arrive within this; it also bounds how long a
    /// kept-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    pub connections_max: usize,
    pub drain_deadline: Duration,
}

/// The problem a connection beyond the cap is answered with.
const OVER_CAPACITY_BODY: &str = r#"{"type":"urn:usage-ledger:problem:unavailable","title":"Service Unavailable","status":503,"detail":"too many open connections; retry shortly"}"#;

/// The whole answer to a connection beyond the cap, written on the socket as is.
fn over_capacity() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OVER_CAPACITY_BODY}",
        OVER_CAPACITY_BODY.len()
    )
    .into_bytes()
}

/// Raise the open-file soft limit to the hard one, and the connection cap that fits
/// under it: a cap above the limit would turn into `accept` errors for everyone.
pub fn fit_connections(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            return wanted;
        }
    };
    let room = usize::try_from(limit.saturating_sub(FDS_RESERVED)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            wanted,
            open_files_max = limit,
            "the connection cap is lowered to fit the open-file limit"
        );
    }
    wanted.min(room).max(1)
}

/// Serve `app` on `listener` until `shutdown` completes, then drain (see the module).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    // Each connection's task holds a receiver: the drain waits until all are dropped.
    // (hyper-util's `GracefulShutdown` does not watch connections that may upgrade.)
    let (draining, _) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = tokio::time::timeout(CONNECTION_WAIT_MAX, slots.clone().acquire_owned()).await;
        let Ok(Ok(slot)) = slot else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        // Upgrades: the live feed's WebSockets (`http::live`); an upgraded connection
        // leaves this loop (and its slot) once handed over.
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut drain = draining.subscribe();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = drain.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // Errors here are the client's (a reset, a header timeout): nothing to answer.
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let open = draining.receiver_count();
    draining.send_replace(true);
    if tokio::time::timeout(limits.drain_deadline, draining.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            deadline_ms = limits.drain_deadline.as_millis() as u64,
            "connections still open at the drain deadline are cut"
        );
    }
}

/// Answer a connection beyond the cap and close it.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(&over_capacity()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_a_well_formed_problem() {
        let answer = over_capacity();
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
    }
}
