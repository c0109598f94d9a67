//! Accepting connections without letting clients exhaust the daemon: a bounded number of
//! open connections, a back-off when the process runs out of descriptors (instead of an
//! accept loop spinning at 100% CPU), and a deadline for a connection's first request.
//! Every accepted connection also gets the `:authority` fix (see `authority.rs`).
//!
//! Hand-written because tonic's own accept loop retries a failed `accept` at once, forever.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::authority::AuthorityFix;
use crate::idle::{Connections, Tracked};

pub const ENV_MAX_CONNECTIONS: &str = "QWEND_MAX_CONNECTIONS";
pub const ENV_FIRST_REQUEST_TIMEOUT_MS: &str = "QWEND_FIRST_REQUEST_TIMEOUT_MS";

/// The first back-off after `accept` fails for lack of resources; doubled up to the max.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A connection that has not sent a request by then is closed. Clients reconnect on
    /// their next call, so only a silent or stuck peer notices.
    pub first_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
        }
    }
}

const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Limits {
    /// `QWEND_MAX_CONNECTIONS` (default: half the descriptor limit, at most 512, so the
    /// daemon keeps descriptors for its own files and HTTPS connections) and
    /// `QWEND_FIRST_REQUEST_TIMEOUT_MS` (default 10 s).
    pub fn from_env() -> Result<Self, String> {
        let max_connections = match std::env::var(ENV_MAX_CONNECTIONS) {
            Ok(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{ENV_MAX_CONNECTIONS}={v:?}: expected a number > 0"))?,
            Err(_) => default_max_connections(),
        };
        let first_request_timeout = match std::env::var(ENV_FIRST_REQUEST_TIMEOUT_MS) {
            Ok(v) => {
                Duration::from_millis(v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(
                    || format!("{ENV_FIRST_REQUEST_TIMEOUT_MS}={v:?}: expected milliseconds > 0"),
                )?)
            }
            Err(_) => DEFAULT_FIRST_REQUEST_TIMEOUT,
        };
        Ok(Self {
            max_connections,
            first_request_timeout,
        })
    }
}

fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .clamp(16, 512)
}

/// Out of descriptors or memory: retrying at once cannot succeed.
fn resource_exhausted(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
}

/// The accepted connections, for `serve_with_incoming_shutdown`. Dropping it (when the
/// server stops accepting) ends the accept task and so closes the listener.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

pub fn incoming(listener: UnixListener, connections: Arc<Connections>, limits: Limits) -> Incoming {
    let (tx, rx) = mpsc::channel(1);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let task = tokio::spawn(async move {
        accept_loop(
            || listener.accept(),
            slots,
            |(stream, _addr), permit| {
                Conn::new(
                    connections.track(stream),
                    permit,
                    limits.first_request_timeout,
                )
            },
            tx,
        )
        .await
    });
    Incoming { rx, task }
}

/// Accept while a connection slot is free; back off while the process is out of
/// resources. Ends when the receiver is gone.
async fn accept_loop<A, F, Fut, C>(
    mut accept: F,
    slots: Arc<Semaphore>,
    wrap: impl Fn(A, OwnedSemaphorePermit) -> C,
    tx: mpsc::Sender<C>,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<A>>,
{
    let mut backoff = BACKOFF_MIN;
    let mut warned_full = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                warned_full = false;
                p
            }
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        "connection limit reached ({ENV_MAX_CONNECTIONS}); new clients wait until one closes"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                    _ = tx.closed() => return,
                }
            }
        };
        let res = tokio::select! {
            r = accept() => r,
            _ = tx.closed() => return,
        };
        match res {
            Ok(conn) => {
                backoff = BACKOFF_MIN;
                if tx.send(wrap(conn, permit)).await.is_err() {
                    return;
                }
            }
            Err(e) if resource_exhausted(&e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "cannot accept a connection; pausing");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            // The peer gave up before we got to it (ECONNABORTED and the like).
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

/// One accepted connection: counted for `--idle-timeout`, holding a connection slot, closed
/// if no request arrives in time, its request headers passed through [`AuthorityFix`].
pub struct Conn {
    inner: Tracked,
    fix: AuthorityFix,
    out: Vec<u8>,
    out_at: usize,
    scratch: Box<[u8]>,
    first_request: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(inner: Tracked, slot: OwnedSemaphorePermit, first_request: Duration) -> Self {
        Self {
            inner,
            fix: AuthorityFix::default(),
            out: Vec::new(),
            out_at: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            first_request: Some(Box::pin(tokio::time::sleep(first_request))),
            _slot: slot,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = <Tracked as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.fix.passing_through() {
                this.first_request = None;
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut scratch = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut scratch) {
                Poll::Pending => {
                    if let Some(t) = this.first_request.as_mut() {
                        ready!(t.as_mut().poll(cx));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request in time",
                        )));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if scratch.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let filled = scratch.filled().len();
                    this.fix.feed(&this.scratch[..filled], &mut this.out)?;
                    if this.fix.seen_request() {
                        this.first_request = None;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_backs_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let task = {
            let calls = calls.clone();
            tokio::spawn(accept_loop(
                move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 20 {
                            Err(io::Error::from_raw_os_error(
                                rustix::io::Errno::MFILE.raw_os_error(),
                            ))
                        } else {
                            Ok(7u32)
                        }
                    }
                },
                Arc::new(Semaphore::new(4)),
                |a, _permit| a,
                tx,
            ))
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        // 10 ms doubling to 1 s: about 11 attempts in 5 s, not millions.
        let n = calls.load(Ordering::SeqCst);
        assert!((8..=14).contains(&n), "{n} accept attempts in 5 s");
        // It keeps trying, and accepts once descriptors are free again.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(rx.recv().await, Some(7));
        drop(rx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_accept_beyond_the_connection_limit() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::channel::<OwnedSemaphorePermit>(8);
        let task = {
            let calls = calls.clone();
            tokio::spawn(accept_loop(
                move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok(()) }
                },
                Arc::new(Semaphore::new(2)),
                |(), permit| permit,
                tx,
            ))
        };
        let a = rx.recv().await.unwrap();
        let _b = rx.recv().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a third accept while both are open"
        );
        drop(a);
        let _c = rx.recv().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        drop(rx);
        task.await.unwrap();
    }
}
