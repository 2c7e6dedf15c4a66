//! The HTTP server loop: axum's router behind hyper, with the limits a
//! public-facing daemon needs and `axum::serve` does not set.
//!
//! - A connection must send its first byte within `FIRST_BYTE`, and a
//!   request's header within `HEADER_READ` (hyper's timer), so idle and
//!   slow-loris connections are closed instead of held.
//! - Shutdown stops accepting at once, lets requests in flight finish, and
//!   waits for them no longer than `DRAIN`.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a new connection may stay silent.
pub const FIRST_BYTE: Duration = Duration::from_secs(10);
/// How long a request's line and header may take (and an idle keep-alive
/// connection may wait for the next request).
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    // Connections that have not sent their first byte are not waited for.
    let closing = tokio_util::sync::CancellationToken::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin; the connections already open keep working.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let closing = closing.clone();
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte; a connection
            // that never sends one is closed here, and at once when the
            // server shuts down (its watcher would hold the drain up).
            let mut probe = [0u8; 1];
            tokio::select! {
                first = tokio::time::timeout(FIRST_BYTE, stream.peek(&mut probe)) => match first {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                () = closing.cancelled() => return,
            }
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    closing.cancel();
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the shutdown deadline were cut");
    }
    Ok(())
}
