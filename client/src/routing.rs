//! Routing: which nodes a request goes through (the "sequence manager" of a
//! Petals-style client), kept apart from the chain I/O in [`crate`].
//!
//! A [`Router`] knows the candidate nodes (several may serve the same layer
//! range), a measured [`NodeCost`] for each, and bans with an expiry. A route
//! is a min-cost path over layer boundaries: boundaries `0..=L` are the
//! vertices of a DAG, and every live, unbanned node serving `a..b` is an edge
//! `a -> b` weighted by its cost per token.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use wire::transport::NodeAddr;

use crate::{ClientError, Hop};
use wire::transport::NodeLink;
use wire::{Frame, Message, Ping};

/// Filler of the throughput ping: large enough that transfer time dominates
/// the round trip on a real link, small enough to be cheap to send often.
pub const THROUGHPUT_PING_BYTES: usize = 64 << 10;

/// What one node costs, from two pings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeCost {
    /// Round trip of a ping with no filler.
    pub rtt: Duration,
    /// Bytes per second, from the extra time a large ping took.
    pub throughput: f64,
}

impl NodeCost {
    /// Seconds to push `activation_bytes` through this node for one token.
    pub fn per_token(&self, activation_bytes: usize) -> f64 {
        self.rtt.as_secs_f64() + activation_bytes as f64 / self.throughput.max(1.0)
    }
}

/// Measures a node on a connection of its own: a small ping for RTT, then a
/// [`THROUGHPUT_PING_BYTES`] ping (echoed, so twice that crosses the link)
/// for throughput.
pub async fn measure(addr: NodeAddr, timeout: Duration) -> Result<NodeCost, ClientError> {
    let mut link = NodeLink::connect(addr.clone(), timeout)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let node_error = |source| ClientError::Node {
        addr: addr.clone(),
        layers: 0..0,
        source,
    };
    let rtt = ping(&mut link, 0).await.map_err(node_error)?;
    let big = ping(&mut link, THROUGHPUT_PING_BYTES)
        .await
        .map_err(node_error)?;
    // Loopback can make the difference ~0: floor it so throughput stays finite.
    let transfer = big.saturating_sub(rtt).max(Duration::from_micros(1));
    let throughput = (2 * THROUGHPUT_PING_BYTES) as f64 / transfer.as_secs_f64();
    Ok(NodeCost { rtt, throughput })
}

/// One ping of `bytes` filler; returns its round-trip time.
async fn ping(link: &mut NodeLink, bytes: usize) -> Result<Duration, wire::WireError> {
    let frame = Frame::new(
        0,
        0,
        Message::Ping(Ping {
            sent_at_micros: 0,
            payload: vec![0; bytes],
        }),
    );
    let start = Instant::now();
    match link.call(&frame).await? {
        Message::Pong(_) => Ok(start.elapsed()),
        other => Err(wire::WireError::Malformed(format!(
            "unexpected {:?} answer to a ping",
            other.message_type()
        ))),
    }
}

/// Candidate nodes, their costs and bans.
#[derive(Clone, Debug)]
pub struct Router {
    candidates: Vec<Hop>,
    costs: HashMap<NodeAddr, NodeCost>,
    bans: HashMap<NodeAddr, Instant>,
    layers: usize,
    activation_bytes: usize,
}

impl Router {
    /// A router over `candidates` (in preference order for ties) for a model
    /// of `layers` layers whose hidden state is `activation_bytes` per token.
    pub fn new(candidates: Vec<Hop>, layers: usize, activation_bytes: usize) -> Router {
        Router {
            candidates,
            costs: HashMap::new(),
            bans: HashMap::new(),
            layers,
            activation_bytes,
        }
    }

    /// The candidate nodes, as given.
    pub fn candidates(&self) -> &[Hop] {
        &self.candidates
    }

    /// The model's layer count.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Records a measured cost for `addr`.
    pub fn set_cost(&mut self, addr: NodeAddr, cost: NodeCost) {
        self.costs.insert(addr, cost);
    }

    /// The last measured cost of `addr`.
    pub fn cost(&self, addr: &NodeAddr) -> Option<NodeCost> {
        self.costs.get(addr).copied()
    }

    /// Skips `addr` until `until`.
    pub fn ban(&mut self, addr: NodeAddr, until: Instant) {
        self.bans.insert(addr, until);
    }

    /// Whether `addr` is banned at `now`.
    pub fn is_banned(&self, addr: &NodeAddr, now: Instant) -> bool {
        self.bans.get(addr).is_some_and(|&until| now < until)
    }

    /// Cost per token of one node; an unmeasured node counts as slow (1 s)
    /// so that measured nodes win but it can still fill a gap.
    fn node_cost(&self, addr: &NodeAddr) -> f64 {
        self.costs
            .get(addr)
            .map_or(1.0, |c| c.per_token(self.activation_bytes))
    }

    /// Cost per token of a whole route.
    pub fn route_cost(&self, route: &[Hop]) -> f64 {
        route.iter().map(|h| self.node_cost(&h.addr)).sum()
    }

    /// The min-cost chain of unbanned nodes covering `0..layers` at `now`.
    ///
    /// Edges only go forward (start < end), so a DP in boundary order is
    /// Dijkstra on this DAG. Ties keep the path found first: fewer nodes
    /// are not preferred over candidate order, which keeps the choice
    /// deterministic for a given candidate list.
    pub fn plan(&self, now: Instant) -> Result<Vec<Hop>, ClientError> {
        let layers = self.layers;
        let live: Vec<&Hop> = self
            .candidates
            .iter()
            .filter(|h| {
                h.layers.start < h.layers.end
                    && h.layers.end <= layers
                    && !self.is_banned(&h.addr, now)
            })
            .collect();
        // best[b]: cost to reach boundary b, and the edge that got there.
        let mut best: Vec<Option<(f64, usize)>> = vec![None; layers + 1];
        let mut dist = vec![f64::INFINITY; layers + 1];
        dist[0] = 0.0;
        for b in 0..layers {
            if !dist[b].is_finite() {
                continue;
            }
            for (i, hop) in live.iter().enumerate() {
                if hop.layers.start != b {
                    continue;
                }
                let d = dist[b] + self.node_cost(&hop.addr);
                let end = hop.layers.end;
                if d < dist[end] {
                    dist[end] = d;
                    best[end] = Some((d, i));
                }
            }
        }
        if best[layers].is_none() && layers > 0 {
            return Err(self.no_route(&live));
        }
        let mut route = Vec::new();
        let mut at = layers;
        while at > 0 {
            let Some((_, i)) = best[at] else {
                return Err(self.no_route(&live));
            };
            route.push(live[i].clone());
            at = live[i].layers.start;
        }
        route.reverse();
        Ok(route)
    }

    /// The error naming the first layer no chain of `live` nodes reaches.
    fn no_route(&self, live: &[&Hop]) -> ClientError {
        let layers = self.layers;
        // Boundaries reachable from 0; the first uncovered layer is the
        // largest reachable boundary below `layers`.
        let mut reachable = vec![false; layers + 1];
        reachable[0] = true;
        for b in 0..layers {
            if reachable[b] {
                for h in live.iter().filter(|h| h.layers.start == b) {
                    reachable[h.layers.end] = true;
                }
            }
        }
        let first = (0..layers).rev().find(|&b| reachable[b]).unwrap_or(0);
        // The gap ends where the next live node starts (or the model ends).
        let gap_end = live
            .iter()
            .map(|h| h.layers.start)
            .filter(|&s| s > first)
            .min()
            .unwrap_or(layers);
        let now = Instant::now();
        let banned: Vec<String> = self
            .candidates
            .iter()
            .filter(|h| self.is_banned(&h.addr, now))
            .map(|h| format!("{} ({}..{})", h.addr, h.layers.start, h.layers.end))
            .collect();
        ClientError::NoRoute {
            layer: first,
            range: first..gap_end,
            banned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    fn hop(port: u16, layers: Range<usize>) -> Hop {
        Hop {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
            layers,
        }
    }

    fn cost(ms: u64) -> NodeCost {
        NodeCost {
            rtt: Duration::from_millis(ms),
            throughput: 1e9,
        }
    }

    #[test]
    fn picks_the_cheaper_of_two_nodes_for_the_same_range() {
        let mut r = Router::new(vec![hop(1, 0..3), hop(2, 0..3), hop(3, 3..7)], 7, 1024);
        r.set_cost(hop(1, 0..3).addr, cost(20));
        r.set_cost(hop(2, 0..3).addr, cost(2));
        r.set_cost(hop(3, 3..7).addr, cost(2));
        let now = Instant::now();
        assert_eq!(
            r.plan(now).expect("route"),
            vec![hop(2, 0..3), hop(3, 3..7)]
        );
        // Equal costs: candidate order decides.
        r.set_cost(hop(1, 0..3).addr, cost(2));
        assert_eq!(r.plan(now).expect("route")[0], hop(1, 0..3));
    }

    #[test]
    fn throughput_counts_too() {
        let slow_link = NodeCost {
            rtt: Duration::from_millis(1),
            throughput: 1e3,
        };
        let mut r = Router::new(vec![hop(1, 0..7), hop(2, 0..7)], 7, 4096);
        r.set_cost(hop(1, 0..7).addr, slow_link);
        r.set_cost(hop(2, 0..7).addr, cost(3));
        assert_eq!(r.plan(Instant::now()).expect("route"), vec![hop(2, 0..7)]);
    }

    #[test]
    fn two_shards_beat_one_when_cheaper() {
        let mut r = Router::new(vec![hop(1, 0..7), hop(2, 0..3), hop(3, 3..7)], 7, 1024);
        r.set_cost(hop(1, 0..7).addr, cost(30));
        r.set_cost(hop(2, 0..3).addr, cost(5));
        r.set_cost(hop(3, 3..7).addr, cost(5));
        let now = Instant::now();
        assert_eq!(
            r.plan(now).expect("route"),
            vec![hop(2, 0..3), hop(3, 3..7)]
        );
        r.set_cost(hop(1, 0..7).addr, cost(8));
        assert_eq!(r.plan(now).expect("route"), vec![hop(1, 0..7)]);
    }

    #[test]
    fn banned_nodes_are_skipped_until_the_ban_ends() {
        let mut r = Router::new(vec![hop(1, 0..3), hop(2, 0..3), hop(3, 3..7)], 7, 1024);
        for p in 1..=3 {
            r.set_cost(hop(p, 0..1).addr, cost(1));
        }
        let now = Instant::now();
        r.ban(hop(1, 0..3).addr, now + Duration::from_secs(60));
        assert_eq!(r.plan(now).expect("route")[0], hop(2, 0..3));
        // After the ban's expiry the node is eligible again (and first in order).
        let later = now + Duration::from_secs(61);
        assert_eq!(r.plan(later).expect("route")[0], hop(1, 0..3));
    }

    #[test]
    fn no_route_names_the_first_uncovered_layer() {
        let mut r = Router::new(vec![hop(1, 0..3), hop(2, 3..5), hop(3, 6..7)], 7, 1024);
        let err = r.plan(Instant::now()).unwrap_err();
        assert!(
            matches!(&err, ClientError::NoRoute { layer: 5, range, .. } if *range == (5..6)),
            "{err}"
        );
        assert!(err.to_string().contains("layers 5..6"), "{err}");
        let now = Instant::now();
        r.ban(hop(1, 0..3).addr, now + Duration::from_secs(60));
        let err = r.plan(now).unwrap_err();
        assert!(
            matches!(err, ClientError::NoRoute { layer: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
