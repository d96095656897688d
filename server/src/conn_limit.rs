//! A cap on the connections a gRPC server (the global's KDS, a zone's xDS)
//! holds at once. Each accepted connection takes a permit for its whole
//! life; one accepted while none is left is closed at once (its peer sees
//! the connection end and retries), and the refusals are logged at most
//! once a second with their count. Files and memory stay bounded however
//! many peers connect; the HTTP API has its own cap (`http_serve`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// A connection holding one permit of its server's cap.
pub struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Counts refusals and logs them at most once a second.
struct Refusals {
    what: &'static str,
    max: usize,
    count: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Refusals {
    fn refused(&self) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(
                server = self.what,
                max_connections = self.max,
                refused_so_far = n,
                "connection refused: the server holds its maximum of connections"
            );
        }
    }
}

/// `incoming` with at most `max` connections open at once.
pub fn limit<S, IO, E>(
    incoming: S,
    max: usize,
    what: &'static str,
) -> impl Stream<Item = Result<Limited<IO>, E>> + Send + 'static
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: Send + 'static,
    E: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max.max(1)));
    let refusals = Arc::new(Refusals {
        what,
        max,
        count: AtomicU64::new(0),
        last_log: Mutex::new(None),
    });
    incoming.filter_map(move |accepted| {
        let permits = permits.clone();
        let refusals = refusals.clone();
        async move {
            match accepted {
                Err(e) => Some(Err(e)),
                Ok(io) => match permits.try_acquire_owned() {
                    Ok(permit) => Some(Ok(Limited { io, _permit: permit })),
                    Err(_) => {
                        // Dropping the connection closes it.
                        drop(io);
                        refusals.refused();
                        None
                    }
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_a_freed_permit_admits_again() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<tokio::io::DuplexStream, io::Error>>();
        let mut limited = Box::pin(limit(rx, 2, "test"));
        let connect = || {
            let (ours, peer) = tokio::io::duplex(64);
            tx.unbounded_send(Ok(ours)).unwrap();
            peer
        };
        let _p1 = connect();
        let mut p2 = connect();
        let mut p3 = connect();
        let first = limited.next().await.unwrap().unwrap();
        let mut second = limited.next().await.unwrap().unwrap();
        // The third, accepted while both permits are held, is not handed
        // on (one poll takes it and finds nothing more) and is closed.
        assert!(limited.next().now_or_never().is_none());
        let mut buf = [0u8; 1];
        assert_eq!(p3.read(&mut buf).await.unwrap(), 0, "the third was closed");
        // A fourth, after the first closed, is admitted on its permit.
        drop(first);
        let p4 = connect();
        let mut fourth = limited.next().await.unwrap().unwrap();
        // Admitted connections carry data.
        second.write_all(b"x").await.unwrap();
        p2.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        fourth.write_all(b"y").await.unwrap();
        let mut p4 = p4;
        p4.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"y");
    }
}
