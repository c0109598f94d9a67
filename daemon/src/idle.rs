//! Connection tracking for `--idle-timeout`: the daemon may exit once no client has been
//! connected for the whole timeout. Connections, not calls, are counted, so an editor
//! plugin holding a `Watch` stream keeps the daemon alive, and short-lived `qwen` processes
//! stop counting the moment they exit.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tonic::transport::server::Connected;

#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    changed: Notify,
}

impl Connections {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn track(self: &Arc<Self>, stream: UnixStream) -> Tracked {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Tracked {
            inner: stream,
            owner: self.clone(),
        }
    }

    /// Completes once no connection has been open for `timeout` in a row.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register interest before reading the count, so a change between the two
            // is not missed.
            changed.as_mut().enable();
            if self.open() > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => {
                    if self.open() == 0 {
                        return;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

/// A connection that counts itself open until dropped.
#[derive(Debug)]
pub struct Tracked {
    inner: UnixStream,
    owner: Arc<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.owner.open.fetch_sub(1, Ordering::SeqCst);
        self.owner.changed.notify_waiters();
    }
}

impl Connected for Tracked {
    type ConnectInfo = <UnixStream as Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_a_full_quiet_period() {
        let conns = Connections::new();
        let (a, _b) = UnixStream::pair().unwrap();
        let tracked = conns.track(a);
        assert_eq!(conns.open(), 1);
        let waiter = {
            let c = conns.clone();
            tokio::spawn(async move { c.idle_for(Duration::from_secs(10)).await })
        };
        // With a connection open, no amount of time is idle.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        drop(tracked);
        assert_eq!(conns.open(), 0);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!waiter.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        waiter.await.unwrap();
    }
}
