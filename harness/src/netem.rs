//! An emulated wide-area link on loopback, for tests and benches: a TCP
//! proxy in front of a node that delays, throttles and (by retransmission
//! stalls) "loses" what crosses it, in both directions.
//!
//! Kernel netem needs network namespaces and root, which CI machines do not
//! grant, so this is userspace. It only ever listens on and connects to
//! loopback addresses, and each direction is modelled as a link:
//!
//! - every chunk read from one side is delivered to the other `delay`
//!   (± a uniform `jitter`) after it was read, in order, so a round trip
//!   through the proxy costs `2 × delay` plus the node's own time;
//! - `bandwidth` bytes per second serializes chunks one after another on
//!   the link (a chunk occupies it `len / bandwidth` seconds);
//! - `loss`: the probability that a chunk is delivered one retransmission
//!   timeout late ([`RETRANSMIT`] + the round trip), which is what a lost
//!   segment costs a TCP stream (TCP never loses bytes).
//!
//! Settings can change while connections are open (raising one link's delay
//! mid-generation is how adaptive routing is tested). A proxy counts the
//! bytes it carries each way ([`WanProxy::bytes`]; with the default settings
//! it is a plain byte counter). It is bounded: it carries at most
//! [`TRAFFIC_BUDGET`] bytes in all, then closes its connections, and it stops
//! when dropped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes a proxy carries (both directions, all connections) before it
/// closes everything: an emulated link never becomes an open relay.
pub const TRAFFIC_BUDGET: u64 = 4 << 30;

/// Linux's minimum retransmission timeout.
pub const RETRANSMIT: Duration = Duration::from_millis(200);

/// One direction's behaviour (both directions use the same settings).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkSettings {
    /// One-way delay.
    pub delay: Duration,
    /// Uniform jitter in `[-jitter, +jitter]` on the delay (order is kept).
    pub jitter: Duration,
    /// Bytes per second; `None` is unlimited.
    pub bandwidth: Option<u64>,
    /// Probability in `[0, 1]` that a chunk waits a retransmission timeout.
    pub loss: f64,
}

impl LinkSettings {
    /// A link with round-trip time `rtt` and nothing else.
    pub fn rtt(rtt: Duration) -> LinkSettings {
        LinkSettings {
            delay: rtt / 2,
            ..LinkSettings::default()
        }
    }
}

/// Bytes a proxy has carried, by direction.
#[derive(Debug, Default)]
struct Traffic {
    to_node: AtomicU64,
    to_client: AtomicU64,
}

impl Traffic {
    fn total(&self) -> u64 {
        self.to_node.load(Ordering::Relaxed) + self.to_client.load(Ordering::Relaxed)
    }
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct WanProxy {
    /// Where clients connect instead of the node.
    pub addr: SocketAddr,
    settings: Arc<Mutex<LinkSettings>>,
    traffic: Arc<Traffic>,
    task: JoinHandle<()>,
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WanProxy {
    /// Starts a proxy on `127.0.0.1` in front of `target`, which must be a
    /// loopback address.
    pub async fn start(target: SocketAddr, settings: LinkSettings) -> io::Result<WanProxy> {
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the emulated link only fronts loopback nodes, not {target}"),
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let settings = Arc::new(Mutex::new(settings));
        let shared = Arc::clone(&settings);
        let traffic = Arc::new(Traffic::default());
        let carried = Arc::clone(&traffic);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if carried.total() >= TRAFFIC_BUDGET {
                    break;
                }
                let settings = Arc::clone(&shared);
                let carried = Arc::clone(&carried);
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pump(
                        cr,
                        sw,
                        Arc::clone(&settings),
                        Arc::clone(&carried),
                        Direction::ToNode,
                    ));
                    let down = tokio::spawn(pump(sr, cw, settings, carried, Direction::ToClient));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(WanProxy {
            addr,
            settings,
            traffic,
            task,
        })
    }

    /// Changes the link for every open and future connection.
    pub fn set(&self, settings: LinkSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
    }

    /// Bytes carried so far, `(to the node, to the client)`, over all
    /// connections.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.traffic.to_node.load(Ordering::Relaxed),
            self.traffic.to_client.load(Ordering::Relaxed),
        )
    }

    /// The current settings.
    pub fn settings(&self) -> LinkSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToNode,
    ToClient,
}

/// Moves bytes from `from` to `to` through the emulated link: a reader
/// stamps each chunk with its delivery time, a writer delivers in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    settings: Arc<Mutex<LinkSettings>>,
    traffic: Arc<Traffic>,
    direction: Direction,
) {
    let counter = match direction {
        Direction::ToNode => &traffic.to_node,
        Direction::ToClient => &traffic.to_client,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (&from as *const _ as u64);
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    // When the link is free to start sending the next chunk, and when the
    // last chunk is delivered (delivery stays in order).
    let mut link_free = Instant::now();
    let mut last_delivery = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if traffic.total() > TRAFFIC_BUDGET {
            break;
        }
        let s = *settings.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let start = link_free.max(now);
        let serialization = s
            .bandwidth
            .map(|bps| Duration::from_secs_f64(n as f64 / bps.max(1) as f64))
            .unwrap_or_default();
        link_free = start + serialization;
        let jitter = s.jitter.as_secs_f64() * (2.0 * uniform() - 1.0);
        let mut delay = (s.delay.as_secs_f64() + jitter).max(0.0);
        if s.loss > 0.0 && uniform() < s.loss {
            delay += RETRANSMIT.as_secs_f64() + 2.0 * s.delay.as_secs_f64();
        }
        let at = (link_free + Duration::from_secs_f64(delay)).max(last_delivery);
        last_delivery = at;
        if tx.send((at, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr, bytes: usize) -> Duration {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let data = vec![7u8; bytes];
        let start = Instant::now();
        s.write_all(&data).await.expect("write");
        let mut back = vec![0u8; bytes];
        s.read_exact(&mut back).await.expect("read");
        assert_eq!(back, data);
        start.elapsed()
    }

    #[tokio::test]
    async fn delay_and_bandwidth_shape_round_trips_and_can_change_live() {
        let echo = echo_server().await;
        let proxy = WanProxy::start(echo, LinkSettings::rtt(Duration::from_millis(40)))
            .await
            .expect("proxy");
        let t = round_trip(proxy.addr, 100).await;
        assert!(t >= Duration::from_millis(40), "{t:?}");
        proxy.set(LinkSettings::rtt(Duration::from_millis(120)));
        let t = round_trip(proxy.addr, 100).await;
        assert!(t >= Duration::from_millis(120), "{t:?}");
        // 50 KB at 500 KB/s takes 0.1 s to cross one way (the way back may
        // overlap with it, chunk by chunk).
        proxy.set(LinkSettings {
            bandwidth: Some(500_000),
            ..LinkSettings::default()
        });
        let t = round_trip(proxy.addr, 50_000).await;
        assert!(t >= Duration::from_millis(95), "{t:?}");
        // Every byte is counted once each way: three round trips of 100,
        // 100 and 50,000 bytes.
        assert_eq!(proxy.bytes(), (50_200, 50_200));
        assert!(WanProxy::start(
            "10.0.0.1:80".parse().expect("addr"),
            LinkSettings::default()
        )
        .await
        .is_err());
    }
}
