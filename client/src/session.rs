//! A generation session over nodes: routing plus failover around a [`Chain`].
//!
//! The session keeps the request's whole history (every chunk of tokens fed
//! so far). When a hop fails it bans that node, plans a new route with the
//! [`Router`], and replays the history through the new chain with a fresh
//! request id, which rebuilds every node's KV cache; then it feeds the
//! pending tokens, so the caller sees the same logits stream. The history is
//! replayed in its original chunks so that every node computes exactly what
//! it would have computed without the failure (batched and one-at-a-time
//! forwards may round differently), which keeps greedy output identical.
//!
//! With [`SessionConfig::standby`] the chain mirrors each hop to a second
//! node of the same span where one is listed ([`Chain::add_standby`]): both
//! compute every forward, and when the hop's node dies the standby's answer
//! is used within the same forward, so the token costs what a token costs,
//! with no replay and the same tokens. The price is computing those spans
//! twice, and every forward waits for the slower of the two.
//!
//! After each feed, [`Session::last_hops`] gives the per-hop digests of the
//! forward that produced the returned logits. After a failover those are the
//! new chain's hops for the pending tokens only: the replay forwards (and the
//! failed attempt) are not reported, since they produced no logits the
//! caller sees.
//!
//! Every `remeasure_every` tokens it pings all candidates again and switches
//! to a cheaper route when it wins by `switch_margin`; a switch replays the
//! history too. A one-token forward through a hop that takes more than twice
//! that hop's usual time (plus 10 ms) brings the re-measure forward to the
//! next feed, so a link that turns slow is left within a token or two.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};
use wire::transport::NodeAddr;

use crate::routing::{measure, NodeCost, Router};
use crate::{Chain, ClientError, GreedyTokens, HeadAnswer, HeadSample, Hop, Logits};
use models::model_id::ModelId;
use transcript::HopDigest;
use wire::{Encoding, ProofsReply, ProveStep, Sampled, TokenSampler};

/// How a session routes and recovers.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Encoding of hidden states between hops.
    pub encoding: Encoding,
    /// Bound on every network wait (connect, one frame, one ping).
    pub io_timeout: Duration,
    /// How long a failed node is skipped.
    pub ban: Duration,
    /// Re-measure every candidate after this many fed tokens (0: never).
    pub remeasure_every: usize,
    /// Switch routes only when the new one is cheaper by this fraction.
    pub switch_margin: f64,
    /// ... and by at least this much per token, so that measurement noise
    /// between equally fast nodes (loopback jitter) does not cause switches.
    pub switch_min_gain: Duration,
    /// Bytes of hidden state per token (for the throughput term of costs).
    pub activation_bytes: usize,
    /// Mirror every hop to a second node of the same span where a candidate
    /// serves one ([`Chain::add_standby`]): a node that dies costs no replay,
    /// at the price of computing those spans twice.
    pub standby: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            encoding: Encoding::F32,
            io_timeout: Duration::from_secs(60),
            ban: Duration::from_secs(60),
            remeasure_every: 16,
            switch_margin: 0.2,
            switch_min_gain: Duration::from_millis(1),
            activation_bytes: 4096,
            standby: false,
        }
    }
}

impl SessionConfig {
    /// The defaults with hidden states of width `hidden` sent as `encoding`.
    pub fn for_encoding(encoding: Encoding, hidden: usize) -> SessionConfig {
        let row = u32::try_from(hidden)
            .ok()
            .and_then(|cols| encoding.data_len(1, cols))
            .unwrap_or(4 * hidden);
        SessionConfig {
            encoding,
            activation_bytes: row,
            ..SessionConfig::default()
        }
    }
}

/// Something the session did that a user may want to see.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// The first route was chosen.
    Route(Vec<Hop>),
    /// A node failed; the session moved to `route`.
    Failover {
        /// The node that failed.
        failed: NodeAddr,
        /// Why.
        reason: String,
        /// The new route.
        route: Vec<Hop>,
    },
    /// Re-measuring found a cheaper route.
    Reroute {
        /// The new route.
        route: Vec<Hop>,
        /// Old and new cost per token, seconds.
        old_cost: f64,
        /// New cost per token, seconds.
        new_cost: f64,
    },
}

fn show(route: &[Hop]) -> String {
    route
        .iter()
        .map(|h| format!("{} ({}..{})", h.addr, h.layers.start, h.layers.end))
        .collect::<Vec<_>>()
        .join(" -> ")
}

impl fmt::Display for SessionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEvent::Route(route) => write!(f, "chain: {}", show(route)),
            SessionEvent::Failover {
                failed,
                reason,
                route,
            } => write!(
                f,
                "failover: {failed} failed ({reason}); now {}",
                show(route)
            ),
            SessionEvent::Reroute {
                route,
                old_cost,
                new_cost,
            } => write!(
                f,
                "reroute: {} ({:.2} ms/token, was {:.2})",
                show(route),
                new_cost * 1e3,
                old_cost * 1e3
            ),
        }
    }
}

/// Counters for the end-of-run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Route changes after a node failed.
    pub failovers: u64,
    /// Route changes to a cheaper route.
    pub reroutes: u64,
}

/// How much slower than usual a one-token forward must be (beyond twice
/// its usual time) to bring the next re-measure forward: more than
/// loopback or scheduling noise.
const SLOWDOWN_FLOOR: Duration = Duration::from_millis(10);

/// One request fed through whichever chain currently works.
pub struct Session {
    router: Router,
    model_id: ModelId,
    config: SessionConfig,
    /// The open chain and the positions its request holds; `None` after a
    /// failure, until the next feed connects a new one.
    chain: Option<(Chain, u64)>,
    route: Vec<Hop>,
    /// Every chunk fed so far, in order: what a new chain must replay.
    history: Vec<Vec<u32>>,
    request_id: u64,
    since_measure: usize,
    stats: SessionStats,
    events: Vec<SessionEvent>,
    /// Hop digests of the forward behind the last feed's logits.
    last_hops: Vec<HopDigest>,
    /// Typical time of a one-token forward per node (moving average), to
    /// notice a link that became slow before the next scheduled re-measure.
    usual: HashMap<String, Duration>,
    /// Changes whenever the head node does (a new chain, or its standby
    /// taking over): proofs asked of an earlier head must be asked again.
    head_epoch: u64,
}

impl Session {
    /// Measures every candidate (an unreachable one is banned), plans the
    /// cheapest route over `layers` layers and connects it. `request_id`
    /// seeds the request ids; each new chain uses the next one, since End
    /// on the old chain is not ordered with frames on a new connection.
    pub async fn connect(
        candidates: Vec<Hop>,
        layers: usize,
        model_id: ModelId,
        config: SessionConfig,
        request_id: u64,
    ) -> Result<Session, ClientError> {
        let router = Router::new(candidates, layers, config.activation_bytes);
        let mut session = Session {
            router,
            model_id,
            config,
            chain: None,
            route: Vec::new(),
            history: Vec::new(),
            request_id,
            since_measure: 0,
            stats: SessionStats::default(),
            events: Vec::new(),
            last_hops: Vec::new(),
            usual: HashMap::new(),
            head_epoch: 0,
        };
        session.measure_all().await;
        session.open().await?;
        Ok(session)
    }

    /// The current route.
    pub fn route(&self) -> &[Hop] {
        &self.route
    }

    /// Failover and reroute counts so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<SessionEvent> {
        std::mem::take(&mut self.events)
    }

    /// The request id of the current chain (it changes on failover and
    /// reroute).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Which head node proofs are asked of: it changes with the chain and
    /// when the head's standby takes over, so that steps asked of an earlier
    /// head count as orphaned ([`crate::proofs::ProofCollector::orphaned`]).
    pub fn head_epoch(&self) -> u64 {
        self.head_epoch
    }

    /// Per-hop digests (see [`Chain::last_hops`]) of the forward that
    /// produced the logits of the last successful [`Session::feed`]; on
    /// failover, those of the new chain's forward of the fed tokens, not of
    /// the replay.
    pub fn last_hops(&self) -> &[HopDigest] {
        &self.last_hops
    }

    /// Positions fed so far.
    pub fn position(&self) -> u64 {
        self.history.iter().map(|c| c.len() as u64).sum()
    }

    /// Feeds `tokens` after the history and returns the logits of the last
    /// one, failing over as often as there are nodes to fail over to.
    pub async fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ClientError> {
        self.feed_for(tokens, Logits).await
    }

    /// Feeds `tokens` and returns the greedy token after each of them
    /// (node::greedy_token): one pass checks a whole speculative draft.
    pub async fn feed_greedy(&mut self, tokens: &[u32]) -> Result<Vec<u32>, ClientError> {
        self.feed_for(tokens, GreedyTokens).await
    }

    /// Feeds `tokens` and returns the token the head node's `sampler` picks
    /// after the last of them, with its log-probability and the digest of
    /// the logits it was picked from (which the head keeps): a few dozen
    /// bytes instead of the logits.
    pub async fn feed_sampled(
        &mut self,
        tokens: &[u32],
        sampler: TokenSampler,
    ) -> Result<Sampled, ClientError> {
        self.feed_for(tokens, HeadSample(sampler)).await
    }

    /// Forgets the history from position `len` on (rejected draft tokens);
    /// the nodes drop those positions at the next forward.
    pub fn rewind(&mut self, len: u64) {
        let mut at = 0u64;
        self.history.retain_mut(|chunk| {
            let start = at;
            at += chunk.len() as u64;
            if start >= len {
                return false;
            }
            chunk.truncate((len - start).min(chunk.len() as u64) as usize);
            true
        });
        if let Some((_, held)) = self.chain.as_mut() {
            *held = (*held).min(len);
        }
    }

    async fn feed_for<A: HeadAnswer>(
        &mut self,
        tokens: &[u32],
        head: A,
    ) -> Result<A::Answer, ClientError> {
        if tokens.is_empty() {
            return Err(ClientError::Usage("no tokens to feed".into()));
        }
        if self.config.remeasure_every > 0 && self.since_measure >= self.config.remeasure_every {
            self.since_measure = 0;
            self.maybe_reroute().await?;
        }
        loop {
            match self.try_feed(tokens, head).await {
                Ok(answer) => {
                    self.history.push(tokens.to_vec());
                    self.since_measure += tokens.len();
                    if tokens.len() == 1 {
                        self.watch_latency();
                    }
                    return Ok(answer);
                }
                Err(e) => self.recover(e).await?,
            }
        }
    }

    /// The current route's hops with their measured costs.
    pub fn route_costs(&self) -> Vec<(Hop, Option<NodeCost>)> {
        self.route
            .iter()
            .map(|hop| (hop.clone(), self.router.cost(&hop.addr)))
            .collect()
    }

    /// Frees the request's caches on the current chain but keeps it
    /// connected, so that its head can still hand over proofs of steps
    /// already asked for (best effort).
    pub async fn release(&mut self) {
        if let Some((chain, _)) = self.chain.as_mut() {
            let _ = chain.end(self.request_id).await;
        }
    }

    /// Frees the request on the current chain (best effort).
    pub async fn end(&mut self) {
        if let Some((mut chain, _)) = self.chain.take() {
            let _ = chain.end(self.request_id).await;
        }
    }

    /// Asks the head node of the current chain to prove `steps` (none:
    /// only collect) and returns its answer with the [`Session::head_epoch`]
    /// it was asked under. A chain that fails is replaced as in
    /// [`Session::feed`] (the new one replays the history, so its head
    /// holds the logits again); steps asked of the old one must then be
    /// asked again ([`crate::proofs::ProofCollector::orphaned`]).
    pub async fn prove(&mut self, steps: &[ProveStep]) -> Result<(u64, ProofsReply), ClientError> {
        loop {
            let request_id = self.request_id;
            let attempt = async {
                let chain = self.ensure_chain().await?;
                chain.prove(request_id, steps.to_vec()).await
            };
            match attempt.await {
                Ok(reply) => return Ok((self.head_epoch, reply)),
                Err(e) => self.recover(e).await?,
            }
        }
    }

    /// Connects a chain if there is none and replays whatever of the
    /// history it has not seen, chunk by chunk.
    async fn ensure_chain(&mut self) -> Result<&mut Chain, ClientError> {
        if self.chain.is_none() {
            let chain = self.connect_chain(self.route.clone()).await?;
            self.chain = Some((chain, 0));
        }
        let request_id = self.request_id;
        let Some((chain, held)) = self.chain.as_mut() else {
            return Err(ClientError::Usage("no chain".into()));
        };
        let mut at = 0u64;
        for chunk in &self.history {
            let end = at + chunk.len() as u64;
            if end > *held {
                chain.forward(request_id, at, chunk).await?;
                *held = end;
            }
            at = end;
        }
        Ok(chain)
    }

    /// Connects and replays as needed ([`Session::ensure_chain`]), then
    /// feeds `tokens`.
    async fn try_feed<A: HeadAnswer>(
        &mut self,
        tokens: &[u32],
        head: A,
    ) -> Result<A::Answer, ClientError> {
        let at = self.position();
        let request_id = self.request_id;
        let chain = self.ensure_chain().await?;
        let answer = chain.forward_for(request_id, at, tokens, head).await?;
        let last_hops = chain.last_hops().to_vec();
        let promotions = chain.take_promotions();
        if !promotions.is_empty() {
            self.route = chain.hops().cloned().collect();
        }
        for promotion in promotions {
            if promotion.index + 1 == self.route.len() {
                self.head_epoch += 1;
            }
            let failed = promotion.failed.addr;
            self.router
                .ban(failed.clone(), Instant::now() + self.config.ban);
            self.stats.failovers += 1;
            self.events.push(SessionEvent::Failover {
                failed,
                reason: format!("{} (its standby took over)", promotion.reason),
                route: self.route.clone(),
            });
        }
        if let Some((_, held)) = self.chain.as_mut() {
            *held = at + tokens.len() as u64;
        }
        self.last_hops = last_hops;
        Ok(answer)
    }

    /// Compares each hop's one-token forward time with its usual time: a
    /// hop that became much slower (a link's delay rose) brings the next
    /// re-measure forward to the next feed, so the route adapts within a
    /// token or two instead of waiting for `remeasure_every`.
    fn watch_latency(&mut self) {
        if self.config.remeasure_every == 0 {
            return;
        }
        for hop in &self.last_hops {
            let now = hop.elapsed;
            match self.usual.get_mut(&hop.addr) {
                Some(usual) => {
                    if now > *usual * 2 + SLOWDOWN_FLOOR {
                        self.since_measure = self.config.remeasure_every;
                    }
                    *usual = (*usual * 4 + now) / 5;
                }
                None => {
                    self.usual.insert(hop.addr.clone(), now);
                }
            }
        }
    }

    fn router_layers(&self) -> usize {
        self.router.layers()
    }

    /// Bans the node behind `error` and moves to a new route, or gives the
    /// error back when no node is to blame or no route is left.
    async fn recover(&mut self, error: ClientError) -> Result<(), ClientError> {
        let Some(failed) = error.failed_node() else {
            return Err(error);
        };
        self.router
            .ban(failed.clone(), Instant::now() + self.config.ban);
        self.abandon_chain().await;
        self.stats.failovers += 1;
        let route = self.router.plan(Instant::now())?;
        self.route = route.clone();
        self.events.push(SessionEvent::Failover {
            failed,
            reason: error.to_string(),
            route,
        });
        Ok(())
    }

    /// Ends the request on the old chain (best effort: hops may be dead)
    /// and takes the next request id for the new one.
    async fn abandon_chain(&mut self) {
        if let Some((mut chain, _)) = self.chain.take() {
            // Bounded: a dead hop must not stall the failover for long.
            let _ = tokio::time::timeout(
                self.config.io_timeout.min(Duration::from_secs(1)),
                chain.end(self.request_id),
            )
            .await;
        }
        self.request_id = self.request_id.wrapping_add(1);
        self.head_epoch += 1;
    }

    /// Plans the first route (after `measure_all`) and connects it,
    /// banning nodes that refuse until one works or none is left.
    async fn open(&mut self) -> Result<(), ClientError> {
        loop {
            let route = self.router.plan(Instant::now())?;
            self.route = route.clone();
            match self.connect_chain(route.clone()).await {
                Ok(chain) => {
                    self.chain = Some((chain, 0));
                    self.events.push(SessionEvent::Route(route));
                    return Ok(());
                }
                Err(e) => match e.failed_node() {
                    Some(addr) => self.router.ban(addr, Instant::now() + self.config.ban),
                    None => return Err(e),
                },
            }
        }
    }

    /// Connects a chain over `route`, with a standby for each hop where
    /// [`SessionConfig::standby`] asks for one and a live candidate outside
    /// the route serves the same span (the cheapest; one that does not
    /// answer is banned and the hop goes without).
    async fn connect_chain(&mut self, route: Vec<Hop>) -> Result<Chain, ClientError> {
        let mut chain = Chain::connect(
            route.clone(),
            self.router_layers(),
            self.model_id,
            self.config.encoding,
            self.config.io_timeout,
        )
        .await?;
        if !self.config.standby {
            return Ok(chain);
        }
        let now = Instant::now();
        for (i, hop) in route.iter().enumerate() {
            let standby = self
                .router
                .candidates()
                .iter()
                .filter(|c| c.layers == hop.layers && !self.router.is_banned(&c.addr, now))
                .filter(|c| route.iter().all(|r| r.addr != c.addr))
                .min_by(|a, b| {
                    let cost = |h: &Hop| self.router.route_cost(std::slice::from_ref(h));
                    cost(a).total_cmp(&cost(b))
                })
                .cloned();
            if let Some(standby) = standby {
                let addr = standby.addr.clone();
                if chain
                    .add_standby(i, standby, self.config.io_timeout)
                    .await
                    .is_err()
                {
                    self.router.ban(addr, now + self.config.ban);
                }
            }
        }
        Ok(chain)
    }

    /// Pings every unbanned candidate; bans those that do not answer.
    async fn measure_all(&mut self) {
        let now = Instant::now();
        let addrs: Vec<NodeAddr> = self
            .router
            .candidates()
            .iter()
            .map(|h| h.addr.clone())
            .filter(|a| !self.router.is_banned(a, now))
            .collect();
        let mut seen = Vec::new();
        for addr in addrs {
            if seen.contains(&addr) {
                continue;
            }
            seen.push(addr.clone());
            match measure(addr.clone(), self.config.io_timeout).await {
                Ok(cost) => self.router.set_cost(addr, cost),
                Err(_) => self.router.ban(addr, Instant::now() + self.config.ban),
            }
        }
    }

    /// Re-measures and switches to a route cheaper by the margin.
    async fn maybe_reroute(&mut self) -> Result<(), ClientError> {
        self.measure_all().await;
        let Ok(best) = self.router.plan(Instant::now()) else {
            // Nothing covers the model now; let the next forward find out
            // whether the current chain still works.
            return Ok(());
        };
        let old_cost = self.router.route_cost(&self.route);
        let new_cost = self.router.route_cost(&best);
        let cheaper = new_cost < old_cost * (1.0 - self.config.switch_margin)
            && old_cost - new_cost >= self.config.switch_min_gain.as_secs_f64();
        if best != self.route && cheaper {
            self.abandon_chain().await;
            self.stats.reroutes += 1;
            self.route = best.clone();
            self.events.push(SessionEvent::Reroute {
                route: best,
                old_cost,
                new_cost,
            });
        }
        Ok(())
    }
}
