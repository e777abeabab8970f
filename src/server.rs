//! The accept loop: a connection limit, HTTP/1.1 with a header-read timeout, and a graceful
//! shutdown that gives requests in flight a deadline. The expiry sweeper runs beside it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;
use crate::router;

/// The most a connection's read buffer grows to (hyper's default is about 400 KiB). A chunk's
/// bytes pass through it on their way to the cipher, and while a piece of it is still being
/// sealed hyper reads into a fresh one, so with many uploads in flight these buffers were most
/// of the server's memory. Also the longest request head accepted.
const READ_BUFFER: usize = 128 * 1024;

/// Serves `app` on an already bound listener until `shutdown` resolves, then waits up to the
/// configured grace for requests in flight. Only `main` binds a real address; tests bind
/// `127.0.0.1:0`.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    if let Err(e) = crate::previews::resume(&app) {
        tracing::warn!(error = %e, "cannot queue the previews left from the last run");
    }
    // The expiry sweeper lives as long as the accept loop.
    let (stop_sweeper, stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(crate::expiry::run(Arc::clone(&app), stopped));
    let limit = Arc::new(Semaphore::new(app.config.net.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // Without a timer hyper silently disables the header-read timeout.
    http.timer(TokioTimer::new())
        .header_read_timeout(app.config.net.header_timeout)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => { backoff = Duration::from_millis(5); s }
                Err(e) => {
                    // Out of file descriptors and the like: wait and try again, never give up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |req| router::handle(Arc::clone(&app), peer, req));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_sweeper.send(true);
    let grace = app.config.net.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "requests still running at the shutdown deadline were cut off"
        );
    }
    // A sweep in progress finishes its removal.
    let _ = sweeper.await;
}
