//! `zkinfer bootstrap`, and the libp2p hosts of `serve --network` and
//! `generate --network` (docs/network.md).

use std::net::SocketAddr;
use std::ops::Range;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use client::Hop;
use models::model_id::ModelId;
use network::announcement::{self, keypair_for, peer_key_of, unix_now, Announcement};
use network::host::{Multiaddr, Protocol};
use network::{Host, HostConfig, Role};
use verifier::receipt::SecretKey;

use super::serve::tokio_runtime;
use super::CliError;
use crate::cli::BootstrapArgs;

/// How often a node signs and publishes its announcement again: well within
/// its lifetime, so a missed refresh does not make it vanish.
const REFRESH: Duration = Duration::from_secs(announcement::LIFETIME.as_secs() / 4);
/// How long a client looks for nodes covering every layer.
const DISCOVERY_WAIT: Duration = Duration::from_secs(20);

/// `/ip4/A/tcp/P` (or `/ip6/…`) for a socket address.
pub fn tcp_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => Protocol::Ip4(ip),
        std::net::IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

fn network_error(e: network::NetworkError) -> CliError {
    CliError::failed(e.to_string())
}

pub fn bootstrap(args: BootstrapArgs) -> Result<ExitCode, CliError> {
    let runtime = tokio_runtime()?;
    runtime.block_on(async {
        let host = Host::start(HostConfig {
            keypair: network::host::Keypair::generate_ed25519(),
            listen: vec![tcp_multiaddr(args.listen)],
            bootstrap: args.bootstrap,
            role: Role::Server,
            relay_server: args.relay,
            via_relay: false,
        })
        .await
        .map_err(network_error)?;
        for addr in host.addresses().await.map_err(network_error)? {
            println!("listening on {addr}");
        }
        println!(
            "bootstrap host {}{}",
            host.peer_id(),
            if args.relay {
                ", relaying circuits"
            } else {
                ""
            }
        );
        std::future::pending::<()>().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// What a node announces, besides its keys and addresses.
pub struct NodeOffer {
    pub model_id: ModelId,
    pub layers: Range<usize>,
    pub throughput: f32,
    pub stake_account: Option<[u8; 20]>,
}

/// Starts a node's host on `listen`, joined through `bootstrap`, and keeps
/// its announcement fresh in the DHT for as long as the host runs.
pub async fn start_node_host(
    signer: &SecretKey,
    listen: SocketAddr,
    bootstrap: Vec<Multiaddr>,
    via_relay: bool,
    offer: NodeOffer,
) -> Result<(Host, network::Incoming), CliError> {
    let keypair = keypair_for(signer);
    let host = Host::start(HostConfig {
        keypair: keypair.clone(),
        listen: vec![tcp_multiaddr(listen)],
        bootstrap,
        role: Role::Server,
        relay_server: false,
        via_relay,
    })
    .await
    .map_err(network_error)?;
    let incoming = host.incoming().map_err(network_error)?;
    let layers = u32::try_from(offer.layers.start)
        .and_then(|start| Ok(start..u32::try_from(offer.layers.end)?))
        .map_err(|_| CliError::failed("layer index past u32"))?;
    let peer = peer_key_of(&keypair.public())
        .ok_or_else(|| CliError::failed("the derived libp2p key is not ed25519"))?;
    let publisher = host.clone();
    let signer = signer.clone();
    tokio::spawn(async move {
        loop {
            let addrs = match publisher.addresses().await {
                Ok(addrs) => addrs,
                Err(_) => return,
            };
            let announcement = Announcement {
                peer,
                signer: signer.public(),
                model_id: offer.model_id,
                layers: layers.clone(),
                throughput: offer.throughput,
                stake_account: offer.stake_account,
                issued_at: unix_now(),
                addrs: addrs.into_iter().take(announcement::MAX_ADDRS).collect(),
            };
            match announcement.sign(&keypair, &signer) {
                Ok(signed) => {
                    if publisher.announce(signed).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("network: signing the announcement: {e}"),
            }
            tokio::time::sleep(REFRESH).await;
        }
    });
    Ok((host, incoming))
}

/// A client's host (a fresh identity, no listener), joined through `bootstrap`.
async fn client_host(bootstrap: Vec<Multiaddr>) -> Result<Host, CliError> {
    if bootstrap.is_empty() {
        return Err(CliError::unreadable(
            "--network needs at least one --bootstrap address",
        ));
    }
    Host::start(HostConfig {
        keypair: network::host::Keypair::generate_ed25519(),
        listen: Vec::new(),
        bootstrap,
        role: Role::Client,
        relay_server: false,
        via_relay: false,
    })
    .await
    .map_err(network_error)
}

/// Starts a client's host on `runtime` (which must outlive it), joined
/// through `bootstrap`, and finds the nodes of `model_id` until they cover
/// `0..layers` (or the wait runs out). Call it from outside the runtime.
pub fn discover_nodes(
    runtime: &tokio::runtime::Handle,
    bootstrap: Vec<Multiaddr>,
    model_id: ModelId,
    layers: usize,
) -> Result<(Host, Vec<Hop>), CliError> {
    runtime.block_on(async {
        let host = client_host(bootstrap).await?;
        let start = Instant::now();
        loop {
            let found = host.discover(model_id).await.map_err(network_error)?;
            let hops: Vec<Hop> = found
                .iter()
                .map(|signed| {
                    let a = &signed.announcement;
                    Hop {
                        addr: host.node_addr(signed),
                        layers: a.layers.start as usize..a.layers.end as usize,
                    }
                })
                .collect();
            if covers(&hops, layers) {
                eprintln!(
                    "[network: {} nodes of model {model_id} found in {:.2} s]",
                    hops.len(),
                    start.elapsed().as_secs_f64()
                );
                return Ok((host, hops));
            }
            if start.elapsed() > DISCOVERY_WAIT {
                return Err(CliError::failed(format!(
                    "the network's {} announced nodes of model {model_id} do not cover layers 0..{layers} (waited {} s)",
                    hops.len(),
                    DISCOVERY_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Starts a client's host on `runtime`, joined through `bootstrap`, that
/// knows where the nodes of `model_id` announce they are: what `audit
/// --network` reaches a transcript's `/p2p/` nodes through.
pub fn peer_host(
    runtime: &tokio::runtime::Handle,
    bootstrap: Vec<Multiaddr>,
    model_id: ModelId,
) -> Result<Host, CliError> {
    runtime.block_on(async {
        let host = client_host(bootstrap).await?;
        let found = host.discover(model_id).await.map_err(network_error)?;
        eprintln!(
            "[network: {} nodes of model {model_id} announced]",
            found.len()
        );
        Ok(host)
    })
}

/// Whether some chain of `hops` runs from layer 0 to `layers`.
fn covers(hops: &[Hop], layers: usize) -> bool {
    let mut reach = vec![false; layers + 1];
    reach[0] = true;
    for at in 0..layers {
        if reach[at] {
            for hop in hops.iter().filter(|h| h.layers.start == at) {
                if hop.layers.end <= layers {
                    reach[hop.layers.end] = true;
                }
            }
        }
    }
    reach[layers]
}
