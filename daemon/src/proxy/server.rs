//! The accept loop: HTTP/1.1 connections from tools on 127.0.0.1, each served by hyper
//! with a header timeout, at most `max_connections` at once.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Proxy;

pub async fn run(listener: TcpListener, proxy: Arc<Proxy>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(proxy.config.max_connections));
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // SSE chunks are small and latency-sensitive.
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let header_timeout = proxy.config.header_timeout;
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(super::forward::handle(&proxy, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "proxy connection ended");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}
