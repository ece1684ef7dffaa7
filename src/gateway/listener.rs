//! The gateway's TCP listener: how many connections it holds, and
//! connections whose writes stall are closed.
//!
//! Every connection costs a file descriptor and memory before it has sent
//! a single header, so connections are limited where they are accepted,
//! before any token is checked: `http.max_connections` in all and
//! `http.max_connections_per_ip` per client address ([`IpKey`]; trusted
//! proxies are exempt, they carry many clients). A connection over a limit
//! is accepted and closed at once — the kernel's queue does not fill with
//! them, so `/healthz` and well-behaved clients still get in. Half-sent
//! requests are closed by the HTTP server's header read timeout
//! (`http.header_read_timeout`, in [`super::server`]).
//!
//! A subscriber that stops reading (or whose machine vanished) leaves the
//! kernel's send buffer full and the server's write pending forever. Every
//! accepted connection is wrapped so that a write that makes no progress
//! for `subscribers.write_timeout` fails, and the HTTP server closes the
//! connection: heartbeats keep idle subscriptions writing, so a healthy
//! client never trips it. The wrapper also holds the connection's place
//! under the limits, so a WebSocket keeps it after leaving the HTTP server.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::metrics::GatewayMetrics;
use super::proxies::{IpKey, TrustedProxies};

/// Counts open connections, in all and per client address.
pub struct ConnectionGate {
    total: Arc<Semaphore>,
    max_per_ip: usize,
    per_ip: Mutex<HashMap<IpKey, usize>>,
    exempt: TrustedProxies,
    metrics: Option<Arc<GatewayMetrics>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `http.max_connections` connections are open.
    Total,
    /// `http.max_connections_per_ip` connections are open from its address.
    PerIp,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerIp => "per_ip",
        }
    }
}

/// A connection's place under the limits; given back when dropped.
pub struct Slot {
    gate: Arc<ConnectionGate>,
    /// None for trusted proxies, which are not counted per address.
    key: Option<IpKey>,
    _total: OwnedSemaphorePermit,
}

impl ConnectionGate {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        exempt: TrustedProxies,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            total: Arc::new(Semaphore::new(max_total)),
            max_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            exempt,
            metrics,
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpKey, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `peer`, or says which limit is
    /// reached.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refused> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        let key = if self.exempt.contains(peer.ip()) {
            None
        } else {
            let key = IpKey::of(peer.ip());
            let mut counts = self.counts();
            let n = counts.entry(key).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
            Some(key)
        };
        if let Some(m) = &self.metrics {
            m.connections.inc();
        }
        Ok(Slot {
            gate: self.clone(),
            key,
            _total: total,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = &self.gate.metrics {
            m.connections.dec();
        }
        if let Some(key) = self.key {
            let mut counts = self.gate.counts();
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// A listener that admits connections through a [`ConnectionGate`] and
/// times out their stalled writes.
pub struct StallListener {
    inner: TcpListener,
    write_timeout: Duration,
    gate: Arc<ConnectionGate>,
}

impl StallListener {
    pub fn new(
        inner: TcpListener,
        write_timeout: Duration,
        gate: Arc<ConnectionGate>,
    ) -> StallListener {
        StallListener {
            inner,
            write_timeout,
            gate,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next connection within the limits; the others are closed as
    /// they come.
    pub async fn accept(&mut self) -> (StallStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let slot = match self.gate.admit(addr) {
                        Ok(slot) => slot,
                        Err(why) => {
                            if let Some(m) = &self.gate.metrics {
                                m.connections_refused
                                    .with_label_values(&[why.label()])
                                    .inc();
                            }
                            tracing::debug!(%addr, limit = why.label(), "connection refused");
                            // Dropping the stream closes it.
                            continue;
                        }
                    };
                    // Events are small and latency matters more than packing.
                    let _ = stream.set_nodelay(true);
                    return (
                        StallStream {
                            inner: stream,
                            timeout: self.write_timeout,
                            stalled: None,
                            _slot: slot,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning (as axum's own listener does).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The client's address, for handlers (`ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A TCP stream whose writes fail after stalling for `timeout`.
pub struct StallStream {
    inner: TcpStream,
    timeout: Duration,
    /// Running while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl StallStream {
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client has not read for the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for StallStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn connections_are_limited_in_all_and_per_address() {
        let proxies = TrustedProxies::new(&["10.9.9.9".into()]);
        let gate = ConnectionGate::new(4, 2, proxies, None);
        let a1 = gate.admit(addr("10.0.0.1:1000")).unwrap();
        let _a2 = gate.admit(addr("10.0.0.1:1001")).unwrap();
        assert_eq!(
            gate.admit(addr("10.0.0.1:1002")).err(),
            Some(Refused::PerIp)
        );
        // The trusted proxy is not counted per address.
        let _p1 = gate.admit(addr("10.9.9.9:1")).unwrap();
        let _p2 = gate.admit(addr("10.9.9.9:2")).unwrap();
        assert_eq!(gate.admit(addr("10.0.0.2:1")).err(), Some(Refused::Total));
        drop(a1);
        assert!(gate.admit(addr("10.0.0.1:1003")).is_ok());
        // Nothing leaks: an address with no connection is forgotten.
        assert_eq!(gate.counts().len(), 1);
    }
}
