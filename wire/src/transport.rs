//! Async frame I/O over tokio streams, with timeouts.
//!
//! These mirror [`crate::read_frame`] and [`crate::write_frame`]:
//! read the [`HEADER_LEN`]-byte header, [`Header::parse`] it (which enforces
//! the size limit before anything is allocated), read the rest of the frame,
//! then [`Frame::decode`] the whole. No frame coming within the wait
//! surfaces as [`WireError::Io`] with kind [`io::ErrorKind::TimedOut`]; a
//! frame that stops part way as [`WireError::Stalled`].
//!
//! [`NodeLink`] is the one way a client, a router or an auditor talks to a
//! node: a connection on which each frame gets one answer. A node is reached
//! at a [`NodeAddr`]: a TCP address, or a libp2p peer reached through a
//! [`Dial`] (the `network` crate's host), whose streams are encrypted and
//! authenticate the peer.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Frame, Header, Limits, Message, WireError, HEADER_LEN};

/// A byte stream both ways: a TCP connection or a libp2p stream.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

/// A libp2p peer's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub [u8; 32]);

impl PeerKey {
    /// The libp2p peer id's bytes: the identity multihash of the key's
    /// protobuf encoding.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut b = [0u8; 38];
        b[..6].copy_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        b[6..].copy_from_slice(&self.0);
        b
    }
}

impl fmt::Display for PeerKey {
    /// The peer id as libp2p prints it (base58btc).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.peer_id_bytes()).into_string())
    }
}

/// The multihash prefix of an ed25519 peer id: identity hash, 36 bytes,
/// a protobuf public key of type ed25519 and 32 bytes.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

impl std::str::FromStr for PeerKey {
    type Err = String;

    /// Parses an ed25519 peer id as libp2p prints it (`12D3KooW…`).
    fn from_str(text: &str) -> Result<PeerKey, String> {
        let bytes = bs58::decode(text)
            .into_vec()
            .map_err(|e| format!("{text:?} is not a peer id: {e}"))?;
        bytes
            .strip_prefix(&PEER_ID_PREFIX[..])
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .map(PeerKey)
            .ok_or_else(|| format!("{text:?} is not an ed25519 peer id"))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

/// A stream being opened by a [`Dial`].
pub type Opening = Pin<Box<dyn Future<Output = io::Result<Box<dyn Duplex>>> + Send>>;

/// Opens streams to libp2p peers: what a [`NodeAddr::Peer`] is reached
/// through.
pub trait Dial: Send + Sync {
    /// Opens a wire stream to `peer`, authenticated as that peer.
    fn open(&self, peer: PeerKey) -> Opening;
}

impl fmt::Debug for dyn Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dial")
    }
}

impl NodeAddr {
    /// The address a transcript names a node by (its `Display`): `IP:PORT`,
    /// or `/p2p/<peer id>` reached through `peers` with the receipt key
    /// `signer` (None when there is no host to reach peers through).
    pub fn parse(
        text: &str,
        peers: Option<&Arc<dyn Dial>>,
        signer: Option<[u8; 64]>,
    ) -> Result<NodeAddr, String> {
        if let Some(id) = text.strip_prefix("/p2p/") {
            let key = id.parse()?;
            let host = peers
                .ok_or_else(|| format!("{text} is a libp2p peer: reach it with --network"))?
                .clone();
            return Ok(NodeAddr::Peer(Arc::new(PeerRoute { key, host, signer })));
        }
        text.parse::<SocketAddr>()
            .map(NodeAddr::Tcp)
            .map_err(|_| format!("{text:?} is not a node address"))
    }
}

/// Where a node is and how to reach it. Two addresses are equal when they
/// name the same socket or the same peer, whatever host dials it.
#[derive(Clone)]
pub enum NodeAddr {
    Tcp(SocketAddr),
    Peer(Arc<PeerRoute>),
}

/// A libp2p peer and the host that dials it.
pub struct PeerRoute {
    pub key: PeerKey,
    pub host: Arc<dyn Dial>,
    /// The receipt key the peer announced (BLS, as HelloAck carries it): a
    /// node answering with another key is not the node that was found.
    pub signer: Option<[u8; 64]>,
}

impl NodeAddr {
    /// The socket of a TCP address.
    pub fn socket(&self) -> Option<SocketAddr> {
        self.identity().ok().copied()
    }

    fn identity(&self) -> Result<&SocketAddr, &PeerKey> {
        match self {
            NodeAddr::Tcp(addr) => Ok(addr),
            NodeAddr::Peer(route) => Err(&route.key),
        }
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(addr: SocketAddr) -> NodeAddr {
        NodeAddr::Tcp(addr)
    }
}

impl PartialEq for NodeAddr {
    fn eq(&self, other: &NodeAddr) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for NodeAddr {}

impl Hash for NodeAddr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state)
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddr::Tcp(addr) => write!(f, "{addr}"),
            NodeAddr::Peer(route) => write!(f, "/p2p/{}", route.key),
        }
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A connection to a node: a frame out, its answer in, every wait bounded by
/// one timeout.
pub struct NodeLink {
    addr: NodeAddr,
    stream: Box<dyn Duplex>,
    timeout: Duration,
    limits: Limits,
}

impl NodeLink {
    /// Connects to `addr` within `timeout`. TCP goes with Nagle's algorithm
    /// off: frames are answered one at a time, so none should wait to be sent.
    pub async fn connect(addr: impl Into<NodeAddr>, timeout: Duration) -> io::Result<NodeLink> {
        let addr = addr.into();
        let stream: Box<dyn Duplex> = match &addr {
            NodeAddr::Tcp(socket) => {
                let stream = with_timeout(timeout, TcpStream::connect(*socket)).await??;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            NodeAddr::Peer(route) => with_timeout(timeout, route.host.open(route.key)).await??,
        };
        Ok(NodeLink {
            addr,
            stream,
            timeout,
            limits: Limits::default(),
        })
    }

    pub fn addr(&self) -> &NodeAddr {
        &self.addr
    }

    /// Sends `frame` and reads its answer; an `Error` answer is returned as
    /// the error it names.
    pub async fn call(&mut self, frame: &Frame) -> Result<Message, WireError> {
        self.send(frame).await?;
        let reply = read_frame(&mut self.stream, &self.limits, self.timeout).await?;
        match reply.message {
            Message::Error(e) => Err(e.into_error()),
            message => Ok(message),
        }
    }

    /// Sends a frame that has no answer (`End`).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), WireError> {
        write_frame(&mut self.stream, frame, self.timeout).await
    }
}

/// Reads one frame, allowing `timeout` for the whole frame.
///
/// Returns [`WireError::Closed`] when the stream ends before the first byte
/// of a frame and [`WireError::Truncated`] when it ends inside one.
pub async fn read_frame<R>(
    r: &mut R,
    limits: &Limits,
    timeout: Duration,
) -> Result<Frame, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let (_, bytes) = read_raw(r, limits, timeout, timeout).await?;
    Frame::decode(&bytes, limits)
}

/// Reads the bytes of one frame without decoding its payload: waits up to
/// `idle` for the first byte, then up to `io` for the rest of the header and
/// again for the rest of the frame.
///
/// Returns the parsed header and all bytes of the frame (header, payload,
/// checksum), ready for [`Frame::decode`]. Splitting the two lets a server
/// tell errors after which the stream is still in step (a whole frame was
/// consumed; the header says where it belongs) from errors in the header,
/// after which it is not. A peer that stops inside a frame gets
/// [`WireError::Stalled`], one that closes inside it [`WireError::Truncated`].
pub async fn read_raw<R>(
    r: &mut R,
    limits: &Limits,
    idle: Duration,
    io: Duration,
) -> Result<(Header, Vec<u8>), WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let start = read_header(r, limits, idle, io).await?;
    let header = start.header;
    Ok((header, read_rest(r, start, io).await?))
}

/// A frame whose header has been read and parsed; [`read_rest`] reads the rest.
pub struct FrameStart {
    pub header: Header,
    bytes: [u8; HEADER_LEN],
}

/// The first half of [`read_raw`]: waits up to `idle` for the first byte and
/// `io` for the rest of the header, and parses it (which enforces the size
/// limit). A server decides here whether it will hold the frame's
/// [`Header::frame_len`] bytes, before any of them are read.
pub async fn read_header<R>(
    r: &mut R,
    limits: &Limits,
    idle: Duration,
    io: Duration,
) -> Result<FrameStart, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut bytes = [0u8; HEADER_LEN];
    // The first byte may be long in coming on an idle connection; once a
    // frame has started, the rest must follow within `io`.
    let first = with_timeout(idle, r.read(&mut bytes[..1])).await??;
    if first == 0 {
        return Err(WireError::Closed);
    }
    let deadline = tokio::time::Instant::now() + io;
    let mut have = 1;
    while have < HEADER_LEN {
        have += read_by(r, &mut bytes[have..], deadline, HEADER_LEN, have).await?;
    }
    let header = Header::parse(&bytes, limits)?;
    Ok(FrameStart { header, bytes })
}

/// The second half of [`read_raw`]: the payload and checksum, within `io`.
pub async fn read_rest<R>(r: &mut R, start: FrameStart, io: Duration) -> Result<Vec<u8>, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let total = start.header.frame_len();
    let deadline = tokio::time::Instant::now() + io;
    // Grow the buffer as data arrives rather than trusting the claimed
    // length with an allocation up front.
    let mut buf = Vec::with_capacity(total.min(64 << 10));
    buf.extend_from_slice(&start.bytes);
    let mut chunk = vec![0u8; (total - HEADER_LEN).min(64 << 10)];
    while buf.len() < total {
        let want = chunk.len().min(total - buf.len());
        let n = read_by(r, &mut chunk[..want], deadline, total, buf.len()).await?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// One read into `buf` (not empty) by `deadline`, inside a frame of `needed`
/// bytes of which `have` came: the bytes read, never 0.
async fn read_by<R>(
    r: &mut R,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
    needed: usize,
    have: usize,
) -> Result<usize, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match tokio::time::timeout_at(deadline, r.read(buf)).await {
        Err(_) => Err(WireError::Stalled { needed, have }),
        Ok(Ok(0)) => Err(WireError::Truncated { needed, have }),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Writes one frame and flushes it, allowing `timeout` for both.
pub async fn write_frame<W>(w: &mut W, frame: &Frame, timeout: Duration) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let bytes = frame.encode()?;
    with_timeout(timeout, async {
        w.write_all(&bytes).await?;
        w.flush().await
    })
    .await??;
    Ok(())
}

async fn with_timeout<T>(timeout: Duration, f: impl Future<Output = T>) -> io::Result<T> {
    tokio::time::timeout(timeout, f).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress in {timeout:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, Ping};

    #[tokio::test]
    async fn frames_round_trip_over_a_duplex_pipe() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let frame = Frame::new(
            3,
            9,
            Message::Ping(Ping {
                sent_at_micros: 42,
                payload: vec![7; 1000],
            }),
        );
        let t = Duration::from_secs(5);
        write_frame(&mut a, &frame, t).await.expect("write");
        let back = read_frame(&mut b, &Limits::default(), t)
            .await
            .expect("read");
        assert_eq!(back, frame);
        drop(a);
        assert!(matches!(
            read_frame(&mut b, &Limits::default(), t).await,
            Err(WireError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_stalled_frame_times_out_and_a_cut_one_is_truncated() {
        let frame = Frame::new(1, 0, Message::End).encode().expect("encode");
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&frame[..10]).await.expect("write");
        let t = Duration::from_millis(50);
        match read_frame(&mut b, &Limits::default(), t).await {
            Err(
                e @ WireError::Stalled {
                    needed: 28,
                    have: 10,
                },
            ) => {
                assert_eq!(e.code(), crate::ErrorCode::Malformed)
            }
            other => panic!("expected a stall, got {other:?}"),
        }
        // Stalled in the payload: the header said how much was missing.
        let long = Frame::new(
            1,
            0,
            Message::Ping(Ping {
                sent_at_micros: 1,
                payload: vec![0; 100],
            }),
        )
        .encode()
        .expect("encode");
        let (mut c, mut d) = tokio::io::duplex(1 << 16);
        c.write_all(&long[..50]).await.expect("write");
        assert!(matches!(
            read_frame(&mut d, &Limits::default(), t).await,
            Err(WireError::Stalled { have: 50, needed }) if needed == long.len()
        ));
        drop(c);
        // Silence between frames is not a stall.
        let (_e, mut f) = tokio::io::duplex(1 << 16);
        assert!(matches!(
            read_frame(&mut f, &Limits::default(), t).await,
            Err(WireError::Io(e)) if e.kind() == io::ErrorKind::TimedOut
        ));
        drop(a);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&frame[..40]).await.expect("write");
        drop(a);
        assert!(matches!(
            read_frame(&mut b, &Limits::default(), t).await,
            Err(WireError::Truncated { .. })
        ));
    }
}
