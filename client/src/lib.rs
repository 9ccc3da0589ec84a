//! The client: pushes a request through a chain of nodes that together serve
//! every layer of a model.
//!
//! The client sits between hops (Petals-style): it sends tokens to the first
//! node, takes its hidden states back, sends them to the next node, and so
//! on; the last node answers the logits of the last position. Which node
//! serves which layers is data (a list of [`Hop`]s, chosen by
//! [`routing::Router`]), so routing and failover replace a hop without
//! touching the rest.

pub mod generation;
pub mod nodes;
pub mod proofs;
pub mod routing;
pub mod session;
pub mod speculative;

use std::ops::Range;
use std::time::{Duration, Instant};

use models::model_id::ModelId;
use transcript::HopDigest;
use wire::transport::{NodeAddr, NodeLink};
use wire::{
    Activations, Encoding, ErrorCode, Forward, ForwardInput, Frame, HeadReply, Hello, Message,
    MessageType, Ping, ProofsReply, ProveStep, Sampled, TokenSampler, WireError,
};

/// A head reply and how its answer decodes: [`HeadReply::LastLogits`] to
/// the logits of the last position, [`HeadReply::GreedyTokens`] to one token
/// id per position, [`HeadReply::Sample`] to the token the head picked.
pub trait HeadAnswer: Copy {
    type Answer;
    fn reply(self) -> HeadReply;
    /// The head's answer, an Output or a Sampled message.
    fn decode(self, answer: Message) -> Result<Self::Answer, WireError>;
}

/// The logits of the last position.
#[derive(Clone, Copy, Debug)]
pub struct Logits;

/// The greedy token after every position fed.
#[derive(Clone, Copy, Debug)]
pub struct GreedyTokens;

/// The token the head node's sampler picks after the last position.
#[derive(Clone, Copy, Debug)]
pub struct HeadSample(pub TokenSampler);

fn head_output(answer: Message) -> Result<Activations, WireError> {
    match answer {
        Message::Output(o) => Ok(o.activations),
        other => Err(WireError::Malformed(format!(
            "the head answered {:?}, not Output",
            other.message_type()
        ))),
    }
}

impl HeadAnswer for Logits {
    type Answer = Vec<f32>;
    fn reply(self) -> HeadReply {
        HeadReply::LastLogits
    }
    fn decode(self, answer: Message) -> Result<Vec<f32>, WireError> {
        head_output(answer)?.to_f32()
    }
}

impl HeadAnswer for GreedyTokens {
    type Answer = Vec<u32>;
    fn reply(self) -> HeadReply {
        HeadReply::GreedyTokens
    }
    fn decode(self, answer: Message) -> Result<Vec<u32>, WireError> {
        head_output(answer)?.to_token_ids()
    }
}

impl HeadAnswer for HeadSample {
    type Answer = Sampled;
    fn reply(self) -> HeadReply {
        HeadReply::Sample(self.0)
    }
    fn decode(self, answer: Message) -> Result<Sampled, WireError> {
        match answer {
            Message::Sampled(s) => Ok(s),
            other => Err(WireError::Malformed(format!(
                "the head answered {:?}, not Sampled",
                other.message_type()
            ))),
        }
    }
}

/// One node of a chain: where it listens and the layers it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The node's address.
    pub addr: NodeAddr,
    /// The layers it serves, `start..end`.
    pub layers: Range<usize>,
}

/// What can go wrong building or using a chain.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hops do not cover the model's layers exactly and in order.
    #[error("the nodes do not cover layers 0..{layers}: {problem}")]
    Coverage {
        /// The model's layer count.
        layers: usize,
        /// What is missing or overlapping.
        problem: String,
    },
    /// A node could not be reached.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The node.
        addr: NodeAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Sending to or receiving from a node failed, or it answered an Error.
    #[error("node {addr} (layers {layers:?}): {source}")]
    Node {
        /// The node.
        addr: NodeAddr,
        /// The layers it serves.
        layers: Range<usize>,
        /// What failed; [`WireError::Remote`] for an Error frame.
        source: WireError,
    },
    /// No chain of live, unbanned nodes covers every layer.
    #[error("no live node serves layers {}..{} (first uncovered layer {layer}){}", range.start, range.end, banned_note(banned))]
    NoRoute {
        /// The first layer no chain from layer 0 reaches.
        layer: usize,
        /// The uncovered layers, up to where the next live node starts.
        range: Range<usize>,
        /// Banned nodes, as `addr (a..b)`.
        banned: Vec<String>,
    },
    /// A caller mistake (e.g. no tokens).
    #[error("{0}")]
    Usage(String),
}

fn banned_note(banned: &[String]) -> String {
    if banned.is_empty() {
        String::new()
    } else {
        format!("; banned after failures: {}", banned.join(", "))
    }
}

impl ClientError {
    /// The error code a node answered with, if this is an Error frame.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Node {
                source: WireError::Remote { code, .. },
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// The node to blame when this error means the node is dead, unreachable,
    /// lost the request or is full (I/O error, timeout, close, a bad answer,
    /// or an Error frame of kind Internal / UnknownRequest / WrongModel /
    /// WrongLayers / Busy / Forbidden): the client should ban it and route around it. `None`
    /// for errors another node would repeat (e.g. Malformed: our request is
    /// wrong) and for usage or routing errors.
    pub fn failed_node(&self) -> Option<NodeAddr> {
        match self {
            ClientError::Connect { addr, .. } => Some(addr.clone()),
            ClientError::Node {
                addr,
                source: WireError::Remote { code, .. },
                ..
            } => matches!(
                code,
                ErrorCode::Internal
                    | ErrorCode::UnknownRequest
                    | ErrorCode::WrongModel
                    | ErrorCode::WrongLayers
                    | ErrorCode::Busy
                    | ErrorCode::Forbidden
            )
            .then(|| addr.clone()),
            ClientError::Node { addr, .. } => Some(addr.clone()),
            _ => None,
        }
    }
}

/// Checks that `hops` cover `0..layers` exactly, in order.
pub fn check_coverage(hops: &[Hop], layers: usize) -> Result<(), ClientError> {
    let fail = |problem: String| ClientError::Coverage { layers, problem };
    let mut next = 0;
    for hop in hops {
        if hop.layers.start >= hop.layers.end {
            return Err(fail(format!(
                "{} serves an empty range {:?}",
                hop.addr, hop.layers
            )));
        }
        if hop.layers.start > next {
            return Err(fail(format!(
                "gap: layers {next}..{} are served by no node (next is {} with {:?})",
                hop.layers.start, hop.addr, hop.layers
            )));
        }
        if hop.layers.start < next {
            return Err(fail(format!(
                "overlap: {} serves {:?} but layers up to {next} are already covered",
                hop.addr, hop.layers
            )));
        }
        next = hop.layers.end;
    }
    if next != layers {
        let problem = if next < layers {
            format!("gap: layers {next}..{layers} are served by no node")
        } else {
            format!("the nodes serve layers up to {next}, past the model's end")
        };
        return Err(fail(problem));
    }
    Ok(())
}

/// The receipt key a node answered Hello with, if it is the one the node's
/// announcement named (over libp2p): the transport authenticates the peer,
/// the announcement binds the peer to its receipt key.
fn expected_signer(hop: &Hop, signer: Option<[u8; 64]>) -> Result<Option<[u8; 64]>, WireError> {
    match &hop.addr {
        NodeAddr::Peer(route) if route.signer.is_some() && route.signer != signer => Err(
            WireError::Malformed("the node's receipt key is not the one it announced".into()),
        ),
        _ => Ok(signer),
    }
}

struct Link {
    hop: Hop,
    node: NodeLink,
    /// The node's receipt-signing key, from its HelloAck.
    signer: Option<[u8; 64]>,
}

/// A standby that took over a hop whose node failed mid-forward.
#[derive(Clone, Debug)]
pub struct Promotion {
    /// The hop's index in the chain.
    pub index: usize,
    /// The node that failed.
    pub failed: Hop,
    /// Why.
    pub reason: String,
}

/// Open connections to the hops of one chain, in layer order.
pub struct Chain {
    links: Vec<Link>,
    /// Per hop, a node of the same span that is sent every frame the hop is
    /// sent, so that it holds the same cache and can take over at once.
    standbys: Vec<Option<Link>>,
    promotions: Vec<Promotion>,
    model_id: ModelId,
    encoding: Encoding,
    /// Per-hop digests of the last successful forward.
    last_hops: Vec<HopDigest>,
}

impl Chain {
    /// Connects to every hop and checks with Hello that it serves the model
    /// and layers it is listed for. `layers` is the model's layer count: the
    /// hops must cover `0..layers` in order. Hidden states travel in
    /// `encoding`; every network wait is bounded by `io_timeout`.
    pub async fn connect(
        hops: Vec<Hop>,
        layers: usize,
        model_id: ModelId,
        encoding: Encoding,
        io_timeout: Duration,
    ) -> Result<Chain, ClientError> {
        check_coverage(&hops, layers)?;
        let mut links = Vec::with_capacity(hops.len());
        for hop in hops {
            let node = NodeLink::connect(hop.addr.clone(), io_timeout)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: hop.addr.clone(),
                    source,
                })?;
            links.push(Link {
                hop,
                node,
                signer: None,
            });
        }
        let mut chain = Chain {
            links,
            model_id,
            encoding,
            last_hops: Vec::new(),
            standbys: Vec::new(),
            promotions: Vec::new(),
        };
        chain.standbys.resize_with(chain.links.len(), || None);
        for i in 0..chain.links.len() {
            let hello = Hello {
                model_id,
                layers: chain.wire_layers(i)?,
            };
            match chain
                .call(i, Frame::new(0, 0, Message::Hello(hello)))
                .await?
            {
                Message::HelloAck(ack) => {
                    let signer = expected_signer(&chain.links[i].hop, ack.signer)
                        .map_err(|source| chain.node_error(i, source))?;
                    chain.links[i].signer = signer;
                }
                other => return Err(chain.unexpected(i, &other)),
            }
        }
        Ok(chain)
    }

    /// The hops, in layer order.
    pub fn hops(&self) -> impl Iterator<Item = &Hop> {
        self.links.iter().map(|l| &l.hop)
    }

    /// Connects `standby` as hop `i`'s warm standby: checked with Hello like
    /// a hop, then sent every frame hop `i` is sent, from the next forward
    /// on (so add it before the request's first forward). When the hop's
    /// node fails and the standby answers, the standby takes the hop's place
    /// within that forward, with nothing to replay ([`Chain::take_promotions`]).
    /// The price: the span is computed twice and every frame to it waits for
    /// the slower of the two.
    pub async fn add_standby(
        &mut self,
        i: usize,
        standby: Hop,
        io_timeout: Duration,
    ) -> Result<(), ClientError> {
        if self.links.get(i).map(|l| &l.hop.layers) != Some(&standby.layers) {
            return Err(ClientError::Usage(format!(
                "{} serves {:?}, not the layers of hop {i}",
                standby.addr, standby.layers
            )));
        }
        let fail = |source| ClientError::Node {
            addr: standby.addr.clone(),
            layers: standby.layers.clone(),
            source,
        };
        let mut node = NodeLink::connect(standby.addr.clone(), io_timeout)
            .await
            .map_err(|source| ClientError::Connect {
                addr: standby.addr.clone(),
                source,
            })?;
        let hello = Hello {
            model_id: self.model_id,
            layers: self.wire_layers(i)?,
        };
        let signer = match node.call(&Frame::new(0, 0, Message::Hello(hello))).await {
            Ok(Message::HelloAck(ack)) => expected_signer(&standby, ack.signer).map_err(fail)?,
            Ok(other) => {
                let ty = other.message_type();
                return Err(fail(WireError::Malformed(format!(
                    "unexpected {ty:?} answer"
                ))));
            }
            Err(e) => return Err(fail(e)),
        };
        self.standbys[i] = Some(Link {
            hop: standby,
            node,
            signer,
        });
        Ok(())
    }

    /// The standbys, by hop index.
    pub fn standbys(&self) -> impl Iterator<Item = (usize, &Hop)> {
        self.standbys
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, &s.hop)))
    }

    /// Standbys that took over since the last call.
    pub fn take_promotions(&mut self) -> Vec<Promotion> {
        std::mem::take(&mut self.promotions)
    }

    /// Per-hop digests of the last forward that succeeded, in layer order:
    /// blake3 of the payload bytes sent to each hop (the tokens as u32
    /// little-endian for the first, else the `Activations.data` bytes) and of
    /// the `Output` data bytes it answered. Empty before the first forward.
    pub fn last_hops(&self) -> &[HopDigest] {
        &self.last_hops
    }

    /// Feeds `tokens` at `position..position + tokens.len()` of request
    /// `request_id` through the chain and returns the logits of the last
    /// position. Position `0` starts the request on every node. On success,
    /// [`Chain::last_hops`] holds the digests of this forward.
    pub async fn forward(
        &mut self,
        request_id: u64,
        position: u64,
        tokens: &[u32],
    ) -> Result<Vec<f32>, ClientError> {
        self.forward_for(request_id, position, tokens, Logits).await
    }

    /// [`Chain::forward`] with the head's answer chosen: the logits of the
    /// last position, or the greedy token of every position.
    /// A `position` below what the nodes hold rewinds them first.
    pub async fn forward_for<A: HeadAnswer>(
        &mut self,
        request_id: u64,
        position: u64,
        tokens: &[u32],
        head: A,
    ) -> Result<A::Answer, ClientError> {
        if tokens.is_empty() {
            return Err(ClientError::Usage("no tokens to feed".into()));
        }
        let mut input = ForwardInput::Tokens(tokens.to_vec());
        let mut hops = Vec::with_capacity(self.links.len());
        for i in 0..self.links.len() {
            let sent = input.digest();
            let forward = Forward {
                model_id: self.model_id,
                layers: self.wire_layers(i)?,
                reply: self.encoding,
                head: head.reply(),
                input,
            };
            let frame = Frame::new(request_id, position, Message::Forward(forward));
            let start = Instant::now();
            let answer = self.call_mirrored(i, frame).await?;
            let last = i + 1 == self.links.len();
            let (output, signature) = match &answer {
                Message::Output(o) => (blake3::hash(&o.activations.data), o.signature),
                Message::Sampled(s) if last => (blake3::Hash::from(s.logits_blake3), s.signature),
                other => return Err(self.unexpected(i, other)),
            };
            let link = &self.links[i];
            if link.signer.is_some() && signature.is_none() {
                return Err(self.node_error(
                    i,
                    WireError::Malformed("a signing node sent no receipt".into()),
                ));
            }
            hops.push(HopDigest {
                addr: link.hop.addr.to_string(),
                layers: link.hop.layers.clone(),
                input: sent,
                output,
                elapsed: start.elapsed(),
                request_id,
                position,
                signer: link.signer,
                signature,
            });
            if last {
                let answer = head.decode(answer).map_err(|e| self.node_error(i, e))?;
                self.last_hops = hops;
                return Ok(answer);
            }
            let Message::Output(output) = answer else {
                return Err(self.unexpected(i, &answer));
            };
            input = ForwardInput::Activations(
                self.reencode(output.activations)
                    .map_err(|e| self.node_error(i, e))?,
            );
        }
        Err(ClientError::Usage("a chain with no hops".into()))
    }

    /// Tells every node that `request_id` is over, freeing its caches.
    ///
    /// End has no answer: it is ordered with later frames of this chain
    /// (one connection per hop), but not with another connection's frames,
    /// so a request id should not be reused on another chain right away.
    pub async fn end(&mut self, request_id: u64) -> Result<(), ClientError> {
        for standby in self.standbys.iter_mut().flatten() {
            let _ = standby
                .node
                .send(&Frame::new(request_id, 0, Message::End))
                .await;
        }
        for i in 0..self.links.len() {
            let frame = Frame::new(request_id, 0, Message::End);
            let sent = self.links[i].node.send(&frame).await;
            sent.map_err(|e| self.node_error(i, e))?;
        }
        Ok(())
    }

    /// Asks the last hop (the head) to prove `steps` of `request_id` and
    /// returns what it has finished; no steps only collects.
    pub async fn prove(
        &mut self,
        request_id: u64,
        steps: Vec<ProveStep>,
    ) -> Result<ProofsReply, ClientError> {
        let last = self.links.len() - 1;
        match self
            .call(last, Frame::new(request_id, 0, Message::Prove(steps)))
            .await?
        {
            Message::Proofs(reply) => Ok(reply),
            other => Err(self.unexpected(last, &other)),
        }
    }

    /// Round-trip time to each hop, in layer order.
    pub async fn ping(&mut self) -> Result<Vec<Duration>, ClientError> {
        let mut times = Vec::with_capacity(self.links.len());
        for i in 0..self.links.len() {
            let start = Instant::now();
            let ping = Ping {
                sent_at_micros: 0,
                payload: Vec::new(),
            };
            match self.call(i, Frame::new(0, 0, Message::Ping(ping))).await? {
                Message::Pong(_) => times.push(start.elapsed()),
                other => return Err(self.unexpected(i, &other)),
            }
        }
        Ok(times)
    }

    /// Hidden states for the next hop in the chain's encoding. Output already
    /// in that encoding passes as it is: decoding and re-encoding Q8 would add
    /// rounding for nothing.
    fn reencode(&self, output: Activations) -> Result<Activations, WireError> {
        if output.encoding == self.encoding {
            return Ok(output);
        }
        let values = output.to_f32()?;
        Activations::encode(&values, output.rows, output.cols, self.encoding)
            .or_else(|_| Activations::encode(&values, output.rows, output.cols, Encoding::F32))
    }

    /// Sends a frame to hop `i` and reads its answer; an Error frame becomes
    /// [`WireError::Remote`].
    async fn call(&mut self, i: usize, frame: Frame) -> Result<Message, ClientError> {
        let answer = self.links[i].node.call(&frame).await;
        answer.map_err(|e| self.node_error(i, e))
    }

    /// [`Chain::call`] to hop `i` and its standby at once. The hop's answer
    /// wins; if the hop fails and the standby answers, the standby becomes
    /// the hop. A standby that fails is dropped.
    async fn call_mirrored(&mut self, i: usize, frame: Frame) -> Result<Message, ClientError> {
        let (links, standbys) = (&mut self.links, &mut self.standbys);
        let Some(standby) = standbys[i].as_mut() else {
            return self.call(i, frame).await;
        };
        let (primary, mirror) = tokio::join!(links[i].node.call(&frame), standby.node.call(&frame));
        match (primary, mirror) {
            (Ok(answer), mirror) => {
                if mirror.is_err() {
                    self.standbys[i] = None;
                }
                Ok(answer)
            }
            (Err(e), Ok(answer)) => {
                let reason = self.node_error(i, e).to_string();
                let standby = self.standbys[i].take().expect("the standby answered");
                let failed = std::mem::replace(&mut self.links[i], standby);
                self.promotions.push(Promotion {
                    index: i,
                    failed: failed.hop,
                    reason,
                });
                Ok(answer)
            }
            (Err(e), Err(_)) => Err(self.node_error(i, e)),
        }
    }

    fn wire_layers(&self, i: usize) -> Result<Range<u32>, ClientError> {
        let layers = &self.links[i].hop.layers;
        match (u32::try_from(layers.start), u32::try_from(layers.end)) {
            (Ok(a), Ok(b)) => Ok(a..b),
            _ => Err(ClientError::Usage(format!(
                "layer range {layers:?} is too large"
            ))),
        }
    }

    fn node_error(&self, i: usize, source: WireError) -> ClientError {
        let hop = &self.links[i].hop;
        ClientError::Node {
            addr: hop.addr.clone(),
            layers: hop.layers.clone(),
            source,
        }
    }

    fn unexpected(&self, i: usize, got: &Message) -> ClientError {
        let ty: MessageType = got.message_type();
        self.node_error(i, WireError::Malformed(format!("unexpected {ty:?} answer")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoDial;

    impl wire::transport::Dial for NoDial {
        fn open(&self, _: wire::transport::PeerKey) -> wire::transport::Opening {
            Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
        }
    }

    #[test]
    fn a_peer_must_sign_with_the_key_it_announced() {
        let announced = [3u8; 64];
        let peer = Hop {
            addr: NodeAddr::Peer(std::sync::Arc::new(wire::transport::PeerRoute {
                key: wire::transport::PeerKey([1; 32]),
                host: std::sync::Arc::new(NoDial),
                signer: Some(announced),
            })),
            layers: 0..3,
        };
        assert_eq!(
            expected_signer(&peer, Some(announced)).unwrap(),
            Some(announced)
        );
        for other in [Some([4u8; 64]), None] {
            let refused = expected_signer(&peer, other).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::Malformed, "{refused}");
        }
        // A TCP address binds no key: whatever the node signs with is taken.
        assert_eq!(expected_signer(&hop(7001, 0..3), None).unwrap(), None);
    }

    fn hop(port: u16, layers: Range<usize>) -> Hop {
        Hop {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
            layers,
        }
    }

    #[test]
    fn coverage_names_gaps_and_overlaps() {
        assert!(check_coverage(&[hop(1, 0..3), hop(2, 3..7)], 7).is_ok());
        let gap = check_coverage(&[hop(1, 0..3), hop(2, 4..7)], 7).unwrap_err();
        assert!(gap.to_string().contains("layers 3..4"), "{gap}");
        let tail = check_coverage(&[hop(1, 0..3)], 7).unwrap_err();
        assert!(tail.to_string().contains("layers 3..7"), "{tail}");
        let overlap = check_coverage(&[hop(1, 0..4), hop(2, 3..7)], 7).unwrap_err();
        assert!(overlap.to_string().contains("overlap"), "{overlap}");
    }
}
