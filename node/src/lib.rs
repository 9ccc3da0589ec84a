//! The node: serves one layer range of one model over TCP, or over libp2p
//! streams (encrypted, the peer authenticated: `network`, docs/network.md).
//!
//! One task per connection reads frames one at a time and answers each
//! (except `End`, which has no answer). Model work runs on tokio's blocking
//! pool so that slow forwards do not stall other connections.
//!
//! # Behaviour
//!
//! - **Hello** is answered with **HelloAck** when the model id and layer range
//!   are exactly the node's, else with an Error (WrongModel / WrongLayers).
//!   A node with a signing key names its public key there and signs a
//!   receipt for every Output (`verifier::receipt`).
//! - **Forward** must name the node's model id and layer range (else
//!   WrongModel / WrongLayers). The shard at layer 0 takes tokens, every
//!   other shard hidden states with `d` columns (else Malformed). The frame's
//!   position must equal the number of positions the request's cache holds:
//!   position `0` with no cache starts a request, a position `> 0` for a
//!   request without a cache is UnknownRequest, a position below what the
//!   cache holds first drops the later positions (speculative decoding
//!   rewinds past rejected drafts), a position beyond it is Malformed, and
//!   positions past the model's context (`<arch>.context_length`) are
//!   Malformed. A Forward that fails inside the model ends the request (its
//!   cache may be half-updated).
//! - **Compute**: a Forward at position 0 (a prompt) runs its rows in
//!   batches of `models::FORWARD_CHUNK` (256) rows, so that its activations
//!   are bounded whatever its length; at a later position row by row, so that several rows compute
//!   exactly what as many one-token Forwards would (the quantized matmul
//!   kernels differ between one row and several): a speculative draft is
//!   checked against the logits plain decoding sees, and a replay after a
//!   failover recomputes the same values.
//! - **Output**: hidden states `[seq, d]` in the Forward's reply encoding
//!   (F32 where F16 would overflow or Q8/Q6o cannot encode a value). The shard with
//!   the head answers the logits of the **last position of the chunk only**,
//!   `[1, vocab]` in F32: that is all a client needs to pick the next token,
//!   and it saves `vocab * 4` bytes per prompt position. It runs the head on
//!   that row alone (the greedy tokens of every row: a chunk of rows at a
//!   time), never on all of a prompt's rows at once.
//! - **Sampled**: for head reply Sample the shard with the head picks the
//!   token from that last row itself (`node::sampling`: the client's own
//!   sampler, with the `r` the client sent) and answers its id, its
//!   log-probability and the blake3 of the logits row, some 140 bytes
//!   instead of `vocab * 4`. It signs, keeps for proofs and keeps in its
//!   audit trail exactly what it would have for the logits themselves.
//! - **End** frees the request's cache; there is no answer, not even for an
//!   unknown request, so a client never has an answer to wait for.
//! - **Ping** is answered by a **Pong** echoing it.
//! - **Prove** (only on a node started with a [`ProofService`], which must
//!   hold the head; others answer Malformed): the node keeps the logits it
//!   answered per request and position (`ProvingConfig::max_positions` per
//!   request and `max_total_positions` in all, the least recently used
//!   dropped first), queues the steps for its prover and
//!   answers **Proofs** at once with whatever is finished (see
//!   [`crate::proving`]). End drops the request's kept logits (a client
//!   asks for its steps before it ends the request); steps already queued
//!   are still proven, and finished proofs wait to be collected until the
//!   request is idle for `idle_timeout` with nothing pending.
//! - A cache unused for `idle_timeout` is freed by a sweeper task.
//! - Errors: a frame that was read whole but does not decode (unknown type,
//!   bad flags or payload) gets an Error and the connection goes on. A bad
//!   header, a checksum mismatch (the length field itself may be corrupt) or
//!   a truncated frame get an Error and the connection is closed, since the
//!   byte stream may be out of step. A connection that stays silent for
//!   `idle_timeout` is closed; one that stalls inside a frame for
//!   `io_timeout` gets an Error (Malformed, "frame stalled") and is closed.
//! - **Limits** (`Capacity`, `zkinfer serve --max-*`): past any of them the
//!   node answers **Busy** (code 9) and holds nothing more. Connections in
//!   all (256) and per peer (32; a peer is an IP address over TCP, a peer id
//!   over libp2p, where each stream counts as a connection): one more gets
//!   Busy before any frame and is closed. Bytes of frames being received (256 MiB): each frame's
//!   whole length is reserved from its header before its payload is read, so
//!   connections that stall inside large frames cannot add up past it; a
//!   frame that does not fit gets Busy and the connection is closed. Requests
//!   holding a KV cache (64) and bytes of KV cache over all of them (4 GiB):
//!   a Forward that would go past them gets Busy, and the request keeps what
//!   it held. A signing node's audit trails (2 GiB): the least recently used
//!   requests' trails are dropped first (`node::trail`).
//! - **A request belongs to the peer that opened it** (its first Forward):
//!   a Forward for it from another peer gets **Forbidden** (code 10), and an
//!   End from another peer frees nothing. Audit frames (TraceRequest,
//!   Reveal) and Prove are open to anyone: what they reveal is what the
//!   receipts already commit to.

pub mod proving;
pub mod sampling;
pub mod trail;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::proving::ProofService;
use crate::trail::{ForwardTrail, Trails};
use models::model_id::ModelId;
use models::Model;
use models::{Cache, FORWARD_CHUNK};
use verifier::receipt::{Receipt, SecretKey};
use wire::transport::{self, Duplex, PeerKey};
use wire::{
    Activations, Encoding, Forward, ForwardInput, Frame, HeadReply, HelloAck, Limits, Message,
    Output, Sampled, WireError,
};

/// What a node serves and how patient it is.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The model id of the GGUF file the shard was loaded from.
    pub model_id: ModelId,
    /// The layers the shard runs, `start..end`.
    pub layers: Range<usize>,
    /// Frame size limit.
    pub limits: Limits,
    /// What the node holds for its peers at most.
    pub capacity: Capacity,
    /// How long a request's cache, or a silent connection, is kept.
    pub idle_timeout: Duration,
    /// How long reading the rest of a started frame, or writing one, may take.
    pub io_timeout: Duration,
    /// The prover of a head node that proves alongside inference.
    pub proving: Option<Arc<ProofService>>,
    /// The key this node signs hop receipts with (`zkinfer keygen`).
    pub signer: Option<Arc<SecretKey>>,
    /// How long a signing node keeps what it computed for a request after
    /// its last forward, for auditors ([`crate::trail`]).
    pub audit_window: Duration,
    /// Misbehaviour, for testing auditors only (the cheat suite of
    /// `zkinfer audit --report`): only with the `faults` feature.
    #[cfg(feature = "faults")]
    pub fault: Option<Fault>,
}

/// How long a signing node keeps trails by default: ten minutes.
pub const DEFAULT_AUDIT_WINDOW: Duration = Duration::from_secs(600);

impl NodeConfig {
    /// A node serving `layers` of model `model_id` that neither signs nor
    /// proves, with the default limits, a 5-minute idle timeout, 30 s for
    /// frame I/O and the default audit window.
    pub fn new(model_id: ModelId, layers: Range<usize>) -> NodeConfig {
        NodeConfig {
            model_id,
            layers,
            limits: Limits::default(),
            capacity: Capacity::default(),
            idle_timeout: Duration::from_secs(300),
            io_timeout: Duration::from_secs(30),
            proving: None,
            signer: None,
            audit_window: DEFAULT_AUDIT_WINDOW,
            #[cfg(feature = "faults")]
            fault: None,
        }
    }

    /// The misbehaviour configured; always none without the `faults` feature.
    fn fault(&self) -> Option<Fault> {
        #[cfg(feature = "faults")]
        return self.fault;
        #[cfg(not(feature = "faults"))]
        None
    }
}

/// What a node holds for its peers at most; past a limit it answers Busy
/// instead of growing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Open connections in all.
    pub connections: usize,
    /// Open connections (libp2p: streams) from one [`Peer`].
    pub connections_per_peer: usize,
    /// Bytes of frames being received, over all connections (each frame's
    /// whole length is reserved once its header is read).
    pub frame_bytes: usize,
    /// Requests holding a KV cache.
    pub requests: usize,
    /// Bytes of KV cache over all requests.
    pub cache_bytes: usize,
    /// Bytes a signing node keeps of its forwards for auditors
    /// ([`crate::trail`]); past it the least recently used trails go first.
    pub trail_bytes: usize,
}

impl Default for Capacity {
    /// 256 connections, 32 per peer, 256 MiB of frames in flight, 64
    /// requests, 4 GiB of KV cache (the packaged model caches 36 KiB per
    /// position: about 110,000 positions) and 2 GiB of audit trails.
    fn default() -> Capacity {
        Capacity {
            connections: 256,
            connections_per_peer: 32,
            frame_bytes: 256 << 20,
            requests: 64,
            cache_bytes: 4 << 30,
            trail_bytes: 2 << 30,
        }
    }
}

/// Ways a node cheats while signing receipts as if it had not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Adds `delta` to every output value of layer `layer` in the forward
    /// at `position` (its last row at a prompt).
    TamperLayer {
        layer: usize,
        position: u64,
        delta: f32,
    },
    /// Embeds `token` in place of the first prompt token it was sent.
    SubstitutePrompt { token: u32 },
}

/// A request's cache. `cache` is `None` while a Forward is using it, so a
/// second Forward for the same request cannot interleave with it.
struct Slot {
    cache: Option<Cache>,
    /// Positions the cache holds, or will hold once the Forward using it
    /// ends: what the slot counts against [`Capacity::cache_bytes`].
    positions: usize,
    last_used: Instant,
    /// Tells this slot from a later one for the same request id (after an
    /// End and a restart while a Forward was in flight), so that a finishing
    /// Forward never puts its cache into a newer request.
    epoch: u64,
    /// The peer that opened the request: the only one that may feed it.
    owner: Peer,
}

/// Who is on the other end of a connection, as far as the transport can
/// tell: an IP address over plain TCP, an authenticated peer over libp2p.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Ip(IpAddr),
    Key(PeerKey),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(ip) => write!(f, "{ip}"),
            Peer::Key(key) => write!(f, "peer {key}"),
        }
    }
}

/// Source of [`Slot::epoch`]s.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(0);

type Caches = Arc<Mutex<HashMap<u64, Slot>>>;

/// Locks the caches, shrugging off poisoning: the map stays consistent
/// because no code panics while holding the lock.
fn lock(caches: &Caches) -> MutexGuard<'_, HashMap<u64, Slot>> {
    caches.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared by every connection of a node.
struct Shared {
    model: Arc<Model>,
    config: NodeConfig,
    /// `config.layers` as on the wire.
    wire_layers: Range<u32>,
    caches: Caches,
    /// What a signing node computed, for auditors.
    trails: Option<Trails>,
    /// [`Capacity::frame_bytes`], in KiB permits.
    frame_budget: Arc<tokio::sync::Semaphore>,
    /// Open connections per peer address.
    peers: Mutex<HashMap<Peer, usize>>,
}

/// A connection counted against [`Capacity`]; uncounted when dropped.
struct Admitted<'a> {
    shared: &'a Shared,
    peer: Peer,
}

impl Shared {
    /// Counts a connection from `peer`, or says which limit it meets.
    fn admit(&self, peer: Peer) -> Result<Admitted<'_>, WireError> {
        let capacity = self.config.capacity;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let open: usize = peers.values().sum();
        let from_peer = peers.get(&peer).copied().unwrap_or(0);
        if open >= capacity.connections {
            return Err(WireError::Busy(format!(
                "{open} connections open, the most this node keeps"
            )));
        }
        if from_peer >= capacity.connections_per_peer {
            return Err(WireError::Busy(format!(
                "{from_peer} connections open from {peer}, the most this node keeps per peer"
            )));
        }
        *peers.entry(peer).or_default() += 1;
        Ok(Admitted { shared: self, peer })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut peers = self.shared.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// Bytes per permit of [`Shared::frame_budget`].
const BUDGET_UNIT: usize = 1024;

/// Serves `model` on `listener` until the task is dropped.
///
/// Accept errors (e.g. out of file descriptors) are reported on stderr and
/// retried after a short pause; nothing a client sends makes this return.
pub async fn serve(listener: TcpListener, model: Arc<Model>, config: NodeConfig) -> io::Result<()> {
    serve_until(listener, model, config, std::future::pending()).await
}

/// Serves `model` on `listener` until `shutdown` completes or the task is
/// dropped; either way the listener and every accepted connection close
/// (connections run in a [`tokio::task::JoinSet`] owned by this future, so
/// dropping it aborts them), which is what a client sees when a node dies.
pub async fn serve_until(
    listener: TcpListener,
    model: Arc<Model>,
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let listener = &listener;
    let accept = move || async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((Peer::Ip(peer.ip()), Box::new(stream) as Box<dyn Duplex>));
                }
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    serve_streams(accept, model, config, shutdown).await
}

/// Serves `model` on the wire streams libp2p peers open to this node's host
/// (`network::Host::incoming`), until `shutdown` completes, the host stops
/// or the task is dropped. Each stream is served as a TCP connection is,
/// with its peer authenticated by the transport.
pub async fn serve_network_until(
    mut incoming: network::Incoming,
    model: Arc<Model>,
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let incoming = &tokio::sync::Mutex::new(&mut incoming);
    let accept = move || async move {
        let (key, stream) = incoming.lock().await.next().await?;
        Some((Peer::Key(key), stream))
    };
    serve_streams(accept, model, config, shutdown).await
}

/// The server behind [`serve_until`] and [`serve_network_until`]: `accept`
/// yields each new connection with its peer, `None` once no more come.
async fn serve_streams<F, Fut>(
    accept: F,
    model: Arc<Model>,
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<(Peer, Box<dyn Duplex>)>>,
{
    let wire_layers = to_wire(&config.layers)?;
    let trails = config.signer.is_some().then(|| {
        Trails::new(
            config.model_id,
            config.layers.clone(),
            model.hidden_size(),
            config.audit_window,
            config.capacity.trail_bytes,
        )
    });
    let permits =
        (config.capacity.frame_bytes / BUDGET_UNIT).min(tokio::sync::Semaphore::MAX_PERMITS);
    let shared = Arc::new(Shared {
        model,
        wire_layers,
        caches: Arc::default(),
        trails,
        frame_budget: Arc::new(tokio::sync::Semaphore::new(permits)),
        peers: Mutex::default(),
        config,
    });
    if shared.config.proving.is_some() && !shared.model.has_head() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only the shard with the head can prove: serve the last layers to prove",
        ));
    }
    let sweeper = tokio::spawn(sweep(Arc::clone(&shared)));
    // Stop the sweeper when `serve` itself is dropped or returns.
    let _sweeper = AbortOnDrop(sweeper);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept() => match accepted {
                Some((peer, stream)) => {
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        match shared.admit(peer) {
                            Ok(_admitted) => connection(stream, peer, &shared).await,
                            Err(busy) => refuse(stream, &busy, shared.config.io_timeout).await,
                        }
                    });
                }
                None => return Ok(()),
            },
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn to_wire(layers: &Range<usize>) -> io::Result<Range<u32>> {
    let convert = |v: usize| {
        u32::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "layer index"))
    };
    Ok(convert(layers.start)?..convert(layers.end)?)
}

/// Frees caches (and proof state) unused for the idle timeout, and trails
/// past the audit window.
async fn sweep(shared: Arc<Shared>) {
    let idle = shared.config.idle_timeout;
    let period = (idle / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        // Busy slots (a Forward in flight) are left alone.
        lock(&shared.caches)
            .retain(|_, slot| slot.cache.is_none() || now.duration_since(slot.last_used) < idle);
        if let Some(proving) = &shared.config.proving {
            proving.sweep(idle);
        }
        if let Some(trails) = &shared.trails {
            trails.sweep();
        }
    }
}

/// Answers `error` on a connection the node does not take, and closes it.
async fn refuse(mut stream: Box<dyn Duplex>, error: &WireError, timeout: Duration) {
    let _ = transport::write_frame(&mut stream, &error.to_frame(0, 0), timeout).await;
    close(stream, timeout).await;
}

/// Closes gracefully, within `timeout`, so that a last error frame arrives:
/// a libp2p stream dropped unclosed is reset, and what it held is lost.
async fn close(mut stream: Box<dyn Duplex>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
}

/// Serves one connection until the peer leaves, times out or breaks framing.
async fn connection(mut stream: Box<dyn Duplex>, peer: Peer, shared: &Shared) {
    serve_frames(&mut stream, peer, shared).await;
    close(stream, shared.config.io_timeout).await;
}

async fn serve_frames(stream: &mut Box<dyn Duplex>, peer: Peer, shared: &Shared) {
    let config = &shared.config;
    loop {
        let start = transport::read_header(
            &mut *stream,
            &config.limits,
            config.idle_timeout,
            config.io_timeout,
        )
        .await;
        let start = match start {
            Ok(start) => start,
            Err(WireError::Closed | WireError::Io(_)) => return,
            Err(e) => {
                // Header unreadable or cut short: answer and close.
                let _ = transport::write_frame(&mut *stream, &e.to_frame(0, 0), config.io_timeout)
                    .await;
                return;
            }
        };
        let (id, pos) = (start.header.request_id, start.header.position);
        // The frame's bytes are reserved before any is read, so stalled
        // frames cannot add up past the budget.
        let units = start.header.frame_len().div_ceil(BUDGET_UNIT);
        let reserved = u32::try_from(units).ok().and_then(|units| {
            Arc::clone(&shared.frame_budget)
                .try_acquire_many_owned(units)
                .ok()
        });
        let Some(_reserved) = reserved else {
            let busy = WireError::Busy(format!(
                "{} bytes of frames are being received; a frame of {} does not fit",
                config.capacity.frame_bytes,
                start.header.frame_len()
            ));
            let _ =
                transport::write_frame(&mut *stream, &busy.to_frame(id, pos), config.io_timeout)
                    .await;
            return;
        };
        let bytes = match transport::read_rest(&mut *stream, start, config.io_timeout).await {
            Ok(bytes) => bytes,
            Err(WireError::Io(_)) => return,
            Err(e) => {
                // Cut short or stalled: answer and close.
                let _ =
                    transport::write_frame(&mut *stream, &e.to_frame(id, pos), config.io_timeout)
                        .await;
                return;
            }
        };
        let reply = match Frame::decode(&bytes, &config.limits) {
            Ok(frame) => handle(shared, peer, frame).await,
            Err(e @ WireError::Checksum) => {
                let _ =
                    transport::write_frame(&mut *stream, &e.to_frame(id, pos), config.io_timeout)
                        .await;
                return;
            }
            Err(e) => Some(e.to_frame(id, pos)),
        };
        if let Some(reply) = reply {
            if transport::write_frame(&mut *stream, &reply, config.io_timeout)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// The answer to one well-formed frame, `None` for `End`.
async fn handle(shared: &Shared, peer: Peer, frame: Frame) -> Option<Frame> {
    let (id, pos) = (frame.request_id, frame.position);
    let message = match frame.message {
        Message::Hello(hello) => match check_span(shared, &hello.model_id, &hello.layers) {
            Ok(()) => Message::HelloAck(HelloAck {
                span: hello,
                signer: shared
                    .config
                    .signer
                    .as_ref()
                    .map(|key| key.public().to_bytes()),
            }),
            Err(e) => return Some(e.to_frame(id, pos)),
        },
        Message::Forward(forward) => match run_forward(shared, peer, id, pos, forward).await {
            Ok(answer) => answer,
            Err(e) => return Some(e.to_frame(id, pos)),
        },
        Message::End => {
            let mut caches = lock(&shared.caches);
            if caches.get(&id).is_some_and(|slot| slot.owner != peer) {
                // Not the sender's to end.
                return None;
            }
            caches.remove(&id);
            drop(caches);
            if let Some(proving) = &shared.config.proving {
                // No step can be asked for any more: keep only what is queued.
                proving.forget_from(id, 0);
            }
            return None;
        }
        Message::Ping(ping) => Message::Pong(ping),
        Message::Prove(steps) => match &shared.config.proving {
            Some(proving) => {
                let signer = shared.config.signer.as_deref();
                let model_id = shared.config.model_id;
                Message::Proofs(proving.submit(id, steps, signer.map(|key| (key, model_id))))
            }
            None => {
                let e = WireError::Malformed(
                    "this node does not prove (start it with `zkinfer serve --prove`)".into(),
                );
                return Some(e.to_frame(id, pos));
            }
        },
        Message::TraceRequest => match (&shared.trails, &shared.config.signer) {
            (Some(trails), Some(key)) => match trails.trace(id, key) {
                Ok(steps) => Message::Trace(steps),
                Err(e) => return Some(e.to_frame(id, pos)),
            },
            _ => return Some(not_signing().to_frame(id, pos)),
        },
        Message::Reveal(boundary) => match &shared.trails {
            Some(trails) => match trails.reveal(id, pos, boundary) {
                Ok(input) => Message::Revealed(input),
                Err(e) => return Some(e.to_frame(id, pos)),
            },
            None => return Some(not_signing().to_frame(id, pos)),
        },
        other => {
            let e = WireError::Malformed(format!(
                "a node does not take {:?} frames",
                other.message_type()
            ));
            return Some(e.to_frame(id, pos));
        }
    };
    Some(Frame::new(id, pos, message))
}

fn not_signing() -> WireError {
    WireError::Malformed(
        "this node signs no receipts, so it keeps nothing to audit (start it with `zkinfer serve --key`)"
            .into(),
    )
}

fn check_span(shared: &Shared, model_id: &ModelId, layers: &Range<u32>) -> Result<(), WireError> {
    if *model_id != shared.config.model_id {
        return Err(WireError::WrongModel {
            served: shared.config.model_id,
            requested: *model_id,
        });
    }
    if *layers != shared.wire_layers {
        return Err(WireError::WrongLayers {
            served: shared.wire_layers.clone(),
            requested: layers.clone(),
        });
    }
    Ok(())
}

/// The model's input, checked against the shard before any cache is touched.
enum Input {
    Tokens(Vec<u32>),
    Hidden { values: Vec<f32>, rows: usize },
}

async fn run_forward(
    shared: &Shared,
    peer: Peer,
    id: u64,
    position: u64,
    forward: Forward,
) -> Result<Message, WireError> {
    check_span(shared, &forward.model_id, &forward.layers)?;
    let model = &shared.model;
    let reply_encoding = forward.reply;
    let head_reply = forward.head;
    if let HeadReply::Sample(sampler) = head_reply {
        // Refused before any cache is touched.
        sampling::circuit_sampler(sampler)?;
    }
    let layers = (forward.layers.start, forward.layers.end);
    let input_digest = forward.input.digest();
    let kept_input = shared.trails.is_some().then(|| forward.input.clone());
    let input = match (model.embeds(), forward.input) {
        (true, ForwardInput::Tokens(tokens)) => {
            let vocab = model.vocab();
            if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(WireError::Malformed(format!(
                    "token {bad} is outside the vocabulary of {vocab}"
                )));
            }
            Input::Tokens(tokens)
        }
        (false, ForwardInput::Activations(a)) => {
            let (rows, cols) = a.shape();
            if cols != model.hidden_size() {
                return Err(WireError::Malformed(format!(
                    "hidden states have {cols} columns, this model {}",
                    model.hidden_size()
                )));
            }
            let values = a.to_f32()?;
            Input::Hidden { values, rows }
        }
        (true, ForwardInput::Activations(_)) => {
            return Err(WireError::Malformed(
                "this shard starts at layer 0 and takes tokens, not hidden states".into(),
            ))
        }
        (false, ForwardInput::Tokens(_)) => {
            return Err(WireError::Malformed(
                "this shard does not start at layer 0: it takes hidden states, not tokens".into(),
            ))
        }
    };
    let fed = match &input {
        Input::Tokens(tokens) => tokens.len(),
        Input::Hidden { rows, .. } => *rows,
    } as u64;
    let context = model.context();
    let end = position.saturating_add(fed);
    if end > context as u64 {
        return Err(WireError::Malformed(format!(
            "positions {position}..{end} are past the model's context of {context}"
        )));
    }
    let (cache, epoch) = take_cache(shared, peer, id, position, fed as usize)?;
    let model = Arc::clone(model);
    let (keep, fault) = (kept_input.is_some(), shared.config.fault());
    let joined = tokio::task::spawn_blocking(move || {
        let mut cache = cache;
        let out = compute(
            &model,
            input,
            position as usize,
            head_reply,
            &mut cache,
            keep,
            fault,
        );
        let picked = match (&out, head_reply) {
            (
                Ok(Computed {
                    answer: Answer::Values { values, .. },
                    ..
                }),
                HeadReply::Sample(s),
            ) if model.has_head() => Some(sampling::pick(values, s)),
            _ => None,
        };
        (cache, out, picked)
    })
    .await;
    let mut caches = lock(&shared.caches);
    // The slot is gone (or replaced) if an End came while the Forward ran:
    // then the cache is dropped here.
    let slot = caches.get_mut(&id).filter(|slot| slot.epoch == epoch);
    match joined {
        Ok((cache, Ok(Computed { answer, boundaries }), picked)) => {
            if let Some(slot) = slot {
                slot.cache = Some(cache);
                slot.last_used = Instant::now();
            }
            drop(caches);
            if let Some(proving) = &shared.config.proving {
                // A rewind makes the logits kept for later positions stale.
                proving.forget_from(id, position + 1);
            }
            let activations = match answer {
                Answer::Tokens(ids) => Activations::of_token_ids(&ids)?,
                Answer::Values { values, rows, cols } => {
                    if let (Some(proving), true) = (&shared.config.proving, shared.model.has_head())
                    {
                        // These logits choose the token at the next position.
                        proving.record_logits(id, position + fed, values.clone());
                    }
                    // Logits always travel as F32. F16 overflow or a non-finite
                    // Q8 row fall back to F32 too, which carries any value.
                    let encoding = if shared.model.has_head() {
                        Encoding::F32
                    } else {
                        reply_encoding
                    };
                    Activations::encode(&values, rows, cols, encoding)
                        .or_else(|_| Activations::encode(&values, rows, cols, Encoding::F32))?
                }
            };
            if let (Some(trails), Some(input)) = (&shared.trails, kept_input) {
                let trail = ForwardTrail {
                    input,
                    boundaries,
                    rows: fed as u32,
                    output: activations.clone(),
                };
                trails.record(id, position, trail);
            }
            let output = *blake3::hash(&activations.data).as_bytes();
            let signature = shared.config.signer.as_ref().map(|key| {
                let receipt = Receipt {
                    model_id: shared.config.model_id.0,
                    layers,
                    request_id: id,
                    position,
                    input: *input_digest.as_bytes(),
                    output,
                };
                key.sign(&receipt).to_bytes()
            });
            Ok(match picked.transpose()? {
                Some(pick) => Message::Sampled(Sampled {
                    token: pick.token,
                    logprob: pick.logprob,
                    logits_blake3: output,
                    signature,
                }),
                None => Message::Output(Output {
                    activations,
                    signature,
                }),
            })
        }
        Ok((_, Err(e), _)) => {
            if slot.is_some() {
                caches.remove(&id);
            }
            Err(WireError::Internal(format!(
                "forward failed, request ended: {e}"
            )))
        }
        Err(e) => {
            if slot.is_some() {
                caches.remove(&id);
            }
            Err(WireError::Internal(format!(
                "forward panicked, request ended: {e}"
            )))
        }
    }
}

/// Takes the request's cache out of the map (leaving its slot busy), or
/// starts one at position 0, once the request's `fed` new positions fit the
/// node's [`Capacity`] (else Busy, and the request keeps what it holds).
fn take_cache(
    shared: &Shared,
    peer: Peer,
    id: u64,
    position: u64,
    fed: usize,
) -> Result<(Cache, u64), WireError> {
    let capacity = shared.config.capacity;
    let end = position as usize + fed;
    let mut caches = lock(&shared.caches);
    let others: usize = caches
        .iter()
        .filter(|(other, _)| **other != id)
        .map(|(_, slot)| slot.positions)
        .sum();
    let needed = (others + end).saturating_mul(shared.model.kv_bytes_per_position());
    let cache_full = || {
        WireError::Busy(format!(
            "the KV caches would take {needed} bytes, more than the {} this node keeps",
            capacity.cache_bytes
        ))
    };
    let fits = needed <= capacity.cache_bytes;
    if caches.get(&id).is_some_and(|slot| slot.owner != peer) {
        return Err(WireError::NotYours(id));
    }
    match caches.get_mut(&id) {
        None if position == 0 => {
            if caches.len() >= capacity.requests {
                return Err(WireError::Busy(format!(
                    "{} requests hold a cache, the most this node keeps",
                    caches.len()
                )));
            }
            if !fits {
                return Err(cache_full());
            }
            let epoch = NEXT_EPOCH.fetch_add(1, Ordering::Relaxed);
            caches.insert(
                id,
                Slot {
                    cache: None,
                    positions: end,
                    last_used: Instant::now(),
                    epoch,
                    owner: peer,
                },
            );
            Ok((Cache::new(), epoch))
        }
        None => Err(WireError::UnknownRequest(id)),
        Some(slot) => match slot.cache.take() {
            None => Err(WireError::Internal(format!(
                "request {id} already has a Forward in flight"
            ))),
            Some(cache) if cache.len() < position as usize => {
                let held = cache.len();
                slot.cache = Some(cache);
                Err(WireError::Malformed(format!(
                    "position {position}, but request {id} holds {held} positions"
                )))
            }
            Some(cache) if !fits => {
                slot.cache = Some(cache);
                Err(cache_full())
            }
            Some(mut cache) => {
                if (position as usize) < cache.len() {
                    let rewound = cache.truncate(position as usize);
                    if let Err(e) = rewound {
                        slot.cache = Some(cache);
                        return Err(WireError::Internal(e.to_string()));
                    }
                }
                slot.positions = end;
                Ok((cache, slot.epoch))
            }
        },
    }
}

/// What [`compute`] produced, and the hidden states at every boundary of the
/// span when asked to keep them.
struct Computed {
    answer: Answer,
    boundaries: Vec<Vec<f32>>,
}

/// A forward's result.
enum Answer {
    /// Hidden states, or the head's logits, row-major `[rows, cols]`.
    Values {
        values: Vec<f32>,
        rows: u32,
        cols: u32,
    },
    /// The head's greedy token after every row.
    Tokens(Vec<u32>),
}

/// Runs the shard (on the shard with the head: the last row of logits, or
/// every row's greedy token); keeps the boundaries if `keep`.
fn compute(
    model: &Model,
    input: Input,
    position: usize,
    head_reply: HeadReply,
    cache: &mut Cache,
    keep: bool,
    fault: Option<Fault>,
) -> models::Result<Computed> {
    let x = match input {
        Input::Tokens(mut tokens) => {
            if let (Some(Fault::SubstitutePrompt { token }), 0) = (fault, position) {
                tokens[0] = token;
            }
            model.embed(&tokens)?
        }
        Input::Hidden { values, rows } => {
            Tensor::from_vec(values, (1, rows, model.hidden_size()), model.device())?
        }
    };
    // The layers, seeing every boundary: `seen[0]` is the input, `seen[1 + i]`
    // the output of the span's layer i, each gathered over the chunks a long
    // input runs in.
    let span = model.layer_range();
    let run = |x: &Tensor, at: usize, cache: &mut Cache| -> models::Result<(Tensor, Vec<Tensor>)> {
        let rows = x.dim(1)?;
        let mut seen: Vec<Vec<Tensor>> = vec![Vec::new(); if keep { span.len() } else { 0 }];
        // Rows that went through every layer: the chunks before this one.
        let mut done = 0;
        let hidden = model.forward_layers_with(x, at, cache, &mut |layer, out| {
            let through = done + out.dim(1)?;
            let out = match fault {
                // The forward's last row: in the last chunk.
                Some(Fault::TamperLayer {
                    layer: l,
                    position: p,
                    delta,
                }) if l == layer && p == at as u64 && through == rows => {
                    tamper_last_row(&out, delta)?
                }
                _ => out,
            };
            if keep {
                seen[layer - span.start].push(out.clone());
            }
            if layer + 1 == span.end {
                done = through;
            }
            Ok(out)
        })?;
        let seen = if keep {
            std::iter::once(Ok(x.clone()))
                .chain(seen.iter().map(|chunks| Tensor::cat(chunks, 1)))
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        Ok((hidden, seen))
    };
    let (hidden, seen) = if position == 0 {
        run(&x, position, cache)?
    } else {
        // Row by row: exactly what one-token Forwards compute. candle's
        // quantized matmul takes other kernels for several rows than for
        // one (logits then differ by up to ~0.9 on the packaged model), and
        // a speculative draft must be checked against the logits plain
        // decoding would have seen.
        let rows = (0..x.dim(1)?)
            .map(|i| run(&x.narrow(1, i, 1)?, position + i, cache))
            .collect::<models::Result<Vec<_>>>()?;
        let outs: Vec<&Tensor> = rows.iter().map(|(out, _)| out).collect();
        let seen = (0..rows[0].1.len())
            .map(|b| Tensor::cat(&rows.iter().map(|(_, s)| &s[b]).collect::<Vec<_>>(), 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        (Tensor::cat(&outs, 1)?, seen)
    };
    let boundaries = seen
        .iter()
        .map(|t| t.flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| models::ModelError::Shape(format!("{v} does not fit a u32")))
    };
    let (_, rows, cols) = hidden.dims3()?;
    let answer = if !model.has_head() {
        Answer::Values {
            values: hidden.flatten_all()?.to_vec1::<f32>()?,
            rows: dim(rows)?,
            cols: dim(cols)?,
        }
    } else if head_reply == HeadReply::GreedyTokens {
        // The head a chunk of rows at a time, never V logits for every row
        // at once; row by row past position 0, as one-token Forwards would.
        let step = if position == 0 { FORWARD_CHUNK } else { 1 };
        let mut tokens = Vec::with_capacity(rows);
        for first in (0..rows).step_by(step) {
            let logits = model.head_forward(&hidden.narrow(1, first, step.min(rows - first))?)?;
            let vocab = logits.dim(2)?;
            for row in logits.flatten_all()?.to_vec1::<f32>()?.chunks_exact(vocab) {
                tokens.push(greedy_token(row)?);
            }
        }
        Answer::Tokens(tokens)
    } else {
        let logits = model.head_forward(&hidden.narrow(1, rows - 1, 1)?)?;
        Answer::Values {
            rows: 1,
            cols: dim(logits.dim(2)?)?,
            values: logits.flatten_all()?.to_vec1::<f32>()?,
        }
    };
    Ok(Computed { answer, boundaries })
}

/// `x` `[1, seq, d]` with `delta` added to its last row.
fn tamper_last_row(x: &Tensor, delta: f32) -> models::Result<Tensor> {
    let (_, seq, d) = x.dims3()?;
    let mut bump = vec![0f32; seq * d];
    bump[(seq - 1) * d..].fill(delta);
    Ok((x + Tensor::from_vec(bump, (1, seq, d), x.device())?)?)
}

/// The greedy token of one row of logits as the client's sampler picks it:
/// the first index of the largest logit at the proof's fixed point.
pub fn greedy_token(logits: &[f32]) -> models::Result<u32> {
    let fixed_point = circuits::FixedPoint::default();
    let mut best: Option<(usize, i64)> = None;
    for (i, &l) in logits.iter().enumerate() {
        let z = fixed_point
            .quantize(i, l as f64)
            .map_err(|e| models::ModelError::Shape(e.to_string()))?;
        if best.is_none_or(|(_, b)| z > b) {
            best = Some((i, z));
        }
    }
    let (index, _) = best.ok_or_else(|| models::ModelError::Shape("no logits".into()))?;
    Ok(index as u32)
}
