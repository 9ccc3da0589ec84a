//! One libp2p host per process: TCP with Noise and yamux, Kademlia for
//! discovery, identify, ping, circuit relay (client, and server where asked)
//! with direct connection upgrade, and the wire protocol on plain streams.
//!
//! The swarm runs in its own task; [`Host`] talks to it through commands and
//! opens streams through a `libp2p_stream::Control`, which dials the peer
//! when no connection is open.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

pub use libp2p::core::multiaddr::Protocol;
pub use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig, store::RecordStore};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    behaviour::toggle::Toggle, ConnectionId, DialError, NetworkBehaviour, SwarmEvent,
};
use libp2p::{dcutr, identify, noise, ping, relay, tcp, yamux, StreamProtocol, Swarm};
pub use libp2p::{Multiaddr, PeerId};
use models::model_id::ModelId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use wire::transport::{Dial, Duplex, NodeAddr, Opening, PeerKey, PeerRoute};

use crate::announcement::{self, peer_id_of, peer_key_of, unix_now, SignedAnnouncement};

/// The protocol wire frames travel on, one stream per link.
pub const WIRE_PROTOCOL: StreamProtocol = StreamProtocol::new("/zkinfer/wire/1");
/// The Kademlia protocol name: a DHT of zkinfer nodes only.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/zkinfer/kad/1");
/// How long one DHT query may run.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Records and provider records a host keeps for others.
const MAX_RECORDS: usize = 4096;
const MAX_PROVIDERS_PER_KEY: usize = 256;

/// What a host does in the DHT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Answers DHT queries and stores records (nodes, bootstrap nodes).
    Server,
    /// Only asks (clients).
    Client,
}

/// How to start a host.
pub struct HostConfig {
    pub keypair: Keypair,
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4001`.
    pub listen: Vec<Multiaddr>,
    /// Hosts to join the DHT through.
    pub bootstrap: Vec<Multiaddr>,
    pub role: Role,
    /// Relay circuits for others (a bootstrap node with a public address).
    pub relay_server: bool,
    /// Reserve a circuit on every bootstrap host and announce it: for a node
    /// that others cannot dial.
    pub via_relay: bool,
}

/// Why a host could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("starting the libp2p host: {0}")]
    Start(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dialing bootstrap {addr}: {reason}")]
    Bootstrap { addr: Multiaddr, reason: String },
    #[error("the libp2p host has stopped")]
    Stopped,
    #[error("no bootstrap host answered within {0:?}")]
    NoBootstrap(Duration),
}

/// Streams other peers open for the wire protocol: `(peer, stream)`. Up to
/// 64 wait to be taken, more are dropped (patches/README.md).
pub struct Incoming(libp2p_stream::IncomingStreams);

impl Incoming {
    /// The next stream, with its authenticated peer; `None` when the host stops.
    pub async fn next(&mut self) -> Option<(PeerKey, Box<dyn Duplex>)> {
        loop {
            let (peer, stream) = self.0.next().await?;
            // Only ed25519 peers can announce; others cannot be served.
            match peer_key_of_id(&peer) {
                Some(key) => return Some((key, Box::new(stream.compat()))),
                None => eprintln!("network: refusing a stream from {peer}: not an ed25519 peer"),
            }
        }
    }
}

/// A running host.
#[derive(Clone)]
pub struct Host {
    key: PeerKey,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    _task: Arc<AbortOnDrop>,
}

enum Command {
    Announce(Box<SignedAnnouncement>),
    Discover {
        model: ModelId,
        reply: oneshot::Sender<Vec<SignedAnnouncement>>,
    },
    Addresses(oneshot::Sender<Vec<Multiaddr>>),
    /// Answers once a connection to the peer is open, or cannot be.
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl Host {
    /// Starts the host: listens, dials every bootstrap address and waits
    /// (up to `QUERY_TIMEOUT`) until one answers, then joins the DHT.
    pub async fn start(config: HostConfig) -> Result<Host, NetworkError> {
        let key = peer_key_of(&config.keypair.public())
            .ok_or_else(|| NetworkError::Start("the keypair is not ed25519".into()))?;
        let role = config.role;
        let relay_server = config.relay_server;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetworkError::Start(e.to_string()))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| NetworkError::Start(e.to_string()))?
            .with_behaviour(|keypair, relay_client| {
                Behaviour::new(keypair, relay_client, role, relay_server)
            })
            .map_err(|e| NetworkError::Start(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetworkError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        let control = swarm.behaviour().stream.new_control();
        let (commands, receiver) = mpsc::channel(64);
        let (joined_tx, joined_rx) = oneshot::channel();
        let (listening_tx, listening_rx) = oneshot::channel();
        let needs_listen = !config.listen.is_empty();
        let needs_join = !config.bootstrap.is_empty();
        let mut bootstrap_dials = HashSet::new();
        for addr in &config.bootstrap {
            let dial = DialOpts::unknown_peer_id().address(addr.clone()).build();
            bootstrap_dials.insert(dial.connection_id());
            swarm.dial(dial).map_err(|e| NetworkError::Bootstrap {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        let driver = Driver {
            swarm,
            bootstrap_dials,
            bootstrapped: false,
            connecting: HashMap::new(),
            via_relay: config.via_relay,
            relay_server,
            joined: needs_join.then_some(joined_tx),
            listening: needs_listen.then_some(listening_tx),
            loopback_peers: HashSet::new(),
            relayed: HashSet::new(),
            announcement: None,
            discoveries: HashMap::new(),
            provider_queries: HashMap::new(),
            record_queries: HashMap::new(),
            next_discovery: 0,
        };
        let task = tokio::spawn(driver.run(receiver));
        let host = Host {
            key,
            commands,
            control,
            _task: Arc::new(AbortOnDrop(task)),
        };
        if needs_listen {
            match tokio::time::timeout(QUERY_TIMEOUT, listening_rx).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NetworkError::Stopped),
                Err(_) => {
                    return Err(NetworkError::Start(format!(
                        "no listen address came up within {QUERY_TIMEOUT:?}"
                    )))
                }
            }
        }
        if needs_join {
            match tokio::time::timeout(QUERY_TIMEOUT, joined_rx).await {
                Ok(Ok(())) => {}
                // Every bootstrap dial failed, or the host stopped.
                Ok(Err(_)) | Err(_) => return Err(NetworkError::NoBootstrap(QUERY_TIMEOUT)),
            }
        }
        Ok(host)
    }

    /// This host's identity.
    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(self.key)
    }

    /// The addresses it can be dialed at now, each ending in `/p2p/<id>`:
    /// its listen addresses (loopback last) and relay circuits.
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Addresses(reply)).await?;
        answer.await.map_err(|_| NetworkError::Stopped)
    }

    /// Publishes (or refreshes) this node's announcement: the record under
    /// its peer key, and a provider record under its model's key.
    pub async fn announce(&self, signed: SignedAnnouncement) -> Result<(), NetworkError> {
        self.command(Command::Announce(Box::new(signed))).await
    }

    /// Every node announcing `model` that the DHT knows and whose
    /// announcement verifies; the others are logged and left out.
    pub async fn discover(&self, model: ModelId) -> Result<Vec<SignedAnnouncement>, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Discover { model, reply }).await?;
        answer.await.map_err(|_| NetworkError::Stopped)
    }

    /// Takes the wire streams other peers open. Once per host.
    pub fn incoming(&self) -> Result<Incoming, NetworkError> {
        self.control
            .clone()
            .accept(WIRE_PROTOCOL)
            .map(Incoming)
            .map_err(|_| NetworkError::Start("wire streams are already taken".into()))
    }

    /// The address of the node `signed` announces, reached through this
    /// host; its receipts must be signed with the announced key.
    pub fn node_addr(&self, signed: &SignedAnnouncement) -> NodeAddr {
        NodeAddr::Peer(Arc::new(PeerRoute {
            key: signed.announcement.peer,
            host: Arc::new(self.clone()),
            signer: Some(signed.announcement.signer.to_bytes()),
        }))
    }

    async fn command(&self, command: Command) -> Result<(), NetworkError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetworkError::Stopped)
    }
}

impl Dial for Host {
    fn open(&self, peer: PeerKey) -> Opening {
        let mut control = self.control.clone();
        let commands = self.commands.clone();
        Box::pin(async move {
            // Connected first, by the swarm's task: libp2p_stream, asked for a
            // stream while a connection to the peer is coming up, can wait
            // for a dial that never happens.
            let (reply, connected) = oneshot::channel();
            let stopped =
                || io::Error::new(io::ErrorKind::NotConnected, "the libp2p host has stopped");
            commands
                .send(Command::Connect {
                    peer: peer_id_of(peer),
                    reply,
                })
                .await
                .map_err(|_| stopped())?;
            connected
                .await
                .map_err(|_| stopped())?
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
            let stream = control
                .open_stream(peer_id_of(peer), WIRE_PROTOCOL)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))?;
            Ok(Box::new(stream.compat()) as Box<dyn Duplex>)
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    fn new(
        keypair: &Keypair,
        relay_client: relay::client::Behaviour,
        role: Role,
        relay_server: bool,
    ) -> Behaviour {
        let id = keypair.public().to_peer_id();
        let mut config = kad::Config::new(KAD_PROTOCOL);
        config
            .set_query_timeout(QUERY_TIMEOUT)
            // Every record and provider record is checked before it is stored.
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_record_ttl(Some(announcement::LIFETIME))
            .set_provider_record_ttl(Some(announcement::LIFETIME))
            .set_max_packet_size(64 << 10);
        let store = MemoryStore::with_config(
            id,
            MemoryStoreConfig {
                max_records: MAX_RECORDS,
                max_value_bytes: announcement::MAX_LEN,
                max_providers_per_key: MAX_PROVIDERS_PER_KEY,
                max_provided_keys: 16,
            },
        );
        let mut kad = kad::Behaviour::with_config(id, store, config);
        // A private network has no external address for kad to confirm, so
        // the role is set rather than detected.
        kad.set_mode(Some(match role {
            Role::Server => kad::Mode::Server,
            Role::Client => kad::Mode::Client,
        }));
        Behaviour {
            kad,
            identify: identify::Behaviour::new(identify::Config::new(
                "/zkinfer/1".into(),
                keypair.public(),
            )),
            ping: ping::Behaviour::default(),
            relay_client,
            relay: relay_server
                .then(|| relay::Behaviour::new(id, relay_config()))
                .into(),
            dcutr: dcutr::Behaviour::new(id),
            stream: libp2p_stream::Behaviour::new(),
        }
    }
}

/// Circuits long and large enough for a generation: relayed hidden states
/// of the packaged model are a few KiB per token (libp2p's defaults, two
/// minutes and 128 KiB, end a generation part way).
fn relay_config() -> relay::Config {
    relay::Config {
        max_circuit_duration: Duration::from_secs(3600),
        max_circuit_bytes: 1 << 30,
        ..relay::Config::default()
    }
}

/// The DHT key a model's nodes provide.
pub fn model_key(model: &ModelId) -> kad::RecordKey {
    kad::RecordKey::new(&blake3::derive_key("zkinfer.dht.model.v1", &model.0))
}

/// The DHT key a node's announcement is stored under.
pub fn announcement_key(peer: PeerKey) -> kad::RecordKey {
    let mut key = b"/zkinfer/announce/1/".to_vec();
    key.extend_from_slice(&peer.0);
    kad::RecordKey::new(&key)
}

fn peer_of_announcement_key(key: &kad::RecordKey) -> Option<PeerKey> {
    let rest = key
        .as_ref()
        .strip_prefix(b"/zkinfer/announce/1/".as_slice())?;
    Some(PeerKey(rest.try_into().ok()?))
}

fn peer_key_of_id(peer: &PeerId) -> Option<PeerKey> {
    peer.to_base58().parse().ok()
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

struct Discovery {
    model: ModelId,
    reply: oneshot::Sender<Vec<SignedAnnouncement>>,
    providers: HashSet<PeerId>,
    pending: usize,
    found: Vec<SignedAnnouncement>,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    /// Bootstrap dials not yet answered; the host has joined once none is
    /// left and one of them connected.
    bootstrap_dials: HashSet<ConnectionId>,
    bootstrapped: bool,
    /// Who waits for a connection to a peer ([`Command::Connect`]).
    connecting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    via_relay: bool,
    joined: Option<oneshot::Sender<()>>,
    listening: Option<oneshot::Sender<()>>,
    /// Relays circuits: its listen addresses are what it hands out in
    /// reservations, so they are its external addresses.
    relay_server: bool,
    /// Peers reached over loopback: only their loopback addresses are usable.
    loopback_peers: HashSet<PeerId>,
    /// Relays a circuit was asked of.
    relayed: HashSet<PeerId>,
    announcement: Option<SignedAnnouncement>,
    discoveries: HashMap<u64, Discovery>,
    provider_queries: HashMap<kad::QueryId, u64>,
    record_queries: HashMap<kad::QueryId, (u64, PeerKey)>,
    next_discovery: u64,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Announce(signed) => {
                let peer = signed.announcement.peer;
                let model = signed.announcement.model_id;
                let record = kad::Record::new(announcement_key(peer), signed.encode());
                let kad = &mut self.swarm.behaviour_mut().kad;
                if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                    eprintln!("network: storing the announcement: {e}");
                }
                if let Err(e) = kad.start_providing(model_key(&model)) {
                    eprintln!("network: providing the model key: {e}");
                }
                self.announcement = Some(*signed);
            }
            Command::Discover { model, reply } => {
                let id = self.next_discovery;
                self.next_discovery += 1;
                let query = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(model_key(&model));
                self.provider_queries.insert(query, id);
                self.discoveries.insert(
                    id,
                    Discovery {
                        model,
                        reply,
                        providers: HashSet::new(),
                        pending: 0,
                        found: Vec::new(),
                    },
                );
            }
            Command::Connect { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let waiting = self.connecting.entry(peer).or_default();
                waiting.push(reply);
                if waiting.len() > 1 {
                    return;
                }
                let dial = DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(dial) {
                    // Already being dialed: its outcome answers.
                    Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => self.connected(peer, Err(e.to_string())),
                }
            }
            Command::Addresses(reply) => {
                let me = *self.swarm.local_peer_id();
                let mut addrs: Vec<Multiaddr> = self
                    .swarm
                    .listeners()
                    .chain(self.swarm.external_addresses())
                    .cloned()
                    .collect();
                addrs.sort_by_key(is_loopback);
                addrs.dedup();
                let addrs = addrs
                    .into_iter()
                    .map(|a| match a.iter().last() {
                        Some(Protocol::P2p(id)) if id == me => a,
                        _ => a.with(Protocol::P2p(me)),
                    })
                    .collect();
                let _ = reply.send(addrs);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let remote = endpoint.get_remote_address();
                if is_loopback(remote) {
                    self.loopback_peers.insert(peer_id);
                }
                self.connected(peer_id, Ok(()));
                if self.bootstrap_dials.remove(&connection_id) {
                    self.bootstrapped = true;
                    let bare: Multiaddr = remote
                        .iter()
                        .filter(|p| !matches!(p, Protocol::P2p(_)))
                        .collect();
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, bare.clone());
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    if self.via_relay && self.relayed.insert(peer_id) {
                        let circuit = bare.with(Protocol::P2p(peer_id)).with(Protocol::P2pCircuit);
                        if let Err(e) = self.swarm.listen_on(circuit.clone()) {
                            eprintln!("network: asking {peer_id} for a relay circuit: {e}");
                        }
                    }
                    self.bootstrap_settled();
                }
            }
            SwarmEvent::NewListenAddr { address, .. }
                if !address.iter().any(|p| matches!(p, Protocol::P2pCircuit)) =>
            {
                // A relay hands its external addresses to the peers it
                // reserves circuits for; with none, reservations fail.
                if self.relay_server && !is_loopback(&address) {
                    self.swarm.add_external_address(address);
                }
                if let Some(listening) = self.listening.take() {
                    let _ = listening.send(());
                }
            }
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                eprintln!("network: a listener closed: {e}");
            }
            SwarmEvent::ListenerError { error, .. } => {
                eprintln!("network: listener error: {error}");
            }
            SwarmEvent::NewListenAddr { .. } => {
                // A node behind a relay has joined once it can be reached.
                if let Some(joined) = self.joined.take() {
                    let _ = joined.send(());
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                if self.bootstrap_dials.remove(&connection_id) {
                    eprintln!("network: bootstrap dial failed: {error}");
                    self.bootstrap_settled();
                }
                if let Some(peer) = peer_id.filter(|p| !self.swarm.is_connected(p)) {
                    self.connected(peer, Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if !info.protocols.contains(&KAD_PROTOCOL) {
                    return;
                }
                let local = self.loopback_peers.contains(&peer_id);
                for addr in info.listen_addrs {
                    // A peer's loopback address is only ours to dial when we
                    // reached it over loopback, and then nothing else is.
                    if is_loopback(&addr) == local {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            _ => {}
        }
    }

    /// Answers whoever waits for a connection to `peer`.
    fn connected(&mut self, peer: PeerId, outcome: Result<(), String>) {
        for reply in self.connecting.remove(&peer).unwrap_or_default() {
            let _ = reply.send(outcome.clone());
        }
    }

    /// Once every bootstrap dial is answered: joined if one connected (a
    /// node behind a relay joins when its circuit is up instead); if none
    /// did, [`Host::start`] fails.
    fn bootstrap_settled(&mut self) {
        if !self.bootstrap_dials.is_empty() {
            return;
        }
        if !self.bootstrapped {
            self.joined = None;
        } else if !self.via_relay {
            if let Some(joined) = self.joined.take() {
                let _ = joined.send(());
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => match check_record(&record) {
                    Ok(()) => {
                        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                            eprintln!("network: not storing {source}'s record: {e}");
                        }
                    }
                    Err(reason) => {
                        eprintln!("network: ignoring a record from {source}: {reason}");
                    }
                },
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => {
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .kad
                        .store_mut()
                        .add_provider(record)
                    {
                        eprintln!("network: not storing a provider record: {e}");
                    }
                }
                _ => {}
            },
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(result) => {
                    let Some(&discovery) = self.provider_queries.get(&id) else {
                        return;
                    };
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                        if let Some(d) = self.discoveries.get_mut(&discovery) {
                            d.providers.extend(providers);
                        }
                    }
                    if step.last {
                        self.provider_queries.remove(&id);
                        self.fetch_announcements(discovery);
                    }
                }
                kad::QueryResult::GetRecord(result) => {
                    let Some(&(discovery, peer)) = self.record_queries.get(&id) else {
                        return;
                    };
                    let mut done = step.last;
                    if let Ok(kad::GetRecordOk::FoundRecord(found)) = result {
                        if let Some(d) = self.discoveries.get_mut(&discovery) {
                            match SignedAnnouncement::decode_from(
                                &found.record.value,
                                peer_id_of(peer),
                                &d.model,
                                unix_now(),
                            ) {
                                Ok(signed) => {
                                    for addr in &signed.announcement.addrs {
                                        self.swarm.add_peer_address(peer_id_of(peer), addr.clone());
                                    }
                                    d.found.push(signed);
                                    done = true;
                                    if let Some(mut q) =
                                        self.swarm.behaviour_mut().kad.query_mut(&id)
                                    {
                                        q.finish();
                                    }
                                }
                                Err(e) => {
                                    eprintln!("network: ignoring peer {}: {e}", peer_id_of(peer))
                                }
                            }
                        }
                    }
                    if done && self.record_queries.remove(&id).is_some() {
                        self.finish_one(discovery);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn fetch_announcements(&mut self, discovery: u64) {
        let me = *self.swarm.local_peer_id();
        let Some(d) = self.discoveries.get_mut(&discovery) else {
            return;
        };
        let providers: Vec<PeerId> = d.providers.iter().copied().filter(|p| *p != me).collect();
        d.pending = 0;
        for peer in providers {
            let Some(key) = peer_key_of_id(&peer) else {
                eprintln!("network: ignoring provider {peer}: not an ed25519 peer");
                continue;
            };
            let query = self
                .swarm
                .behaviour_mut()
                .kad
                .get_record(announcement_key(key));
            self.record_queries.insert(query, (discovery, key));
            if let Some(d) = self.discoveries.get_mut(&discovery) {
                d.pending += 1;
            }
        }
        self.finish_one_if_done(discovery);
    }

    fn finish_one(&mut self, discovery: u64) {
        if let Some(d) = self.discoveries.get_mut(&discovery) {
            d.pending = d.pending.saturating_sub(1);
        }
        self.finish_one_if_done(discovery);
    }

    fn finish_one_if_done(&mut self, discovery: u64) {
        if self
            .discoveries
            .get(&discovery)
            .is_some_and(|d| d.pending == 0)
        {
            if let Some(d) = self.discoveries.remove(&discovery) {
                let _ = d.reply.send(d.found);
            }
        }
    }
}

/// Whether a record someone asks this host to store is an announcement
/// stored under its own peer's key.
fn check_record(record: &kad::Record) -> Result<(), String> {
    let peer = peer_of_announcement_key(&record.key)
        .ok_or_else(|| "its key is not an announcement's".to_string())?;
    let signed = SignedAnnouncement::decode(&record.value).map_err(|e| e.to_string())?;
    if signed.announcement.peer != peer {
        return Err(format!(
            "stored under peer {peer}'s key, announced by {}",
            signed.announcement.peer
        ));
    }
    let now = unix_now();
    SignedAnnouncement::decode_from(
        &record.value,
        peer_id_of(peer),
        &signed.announcement.model_id,
        now,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
