//! A node served over libp2p on loopback: a chain over encrypted,
//! authenticated streams gives the single-process model's logits, and a
//! request belongs to the peer that opened it.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::{Chain, Hop};
use models::gemma3::Gemma3;
use models::generate::Generator;
use models::model_id::{model_id, ModelId};
use models::testing::{tiny_gemma3_config, write_random_gemma3, TempDir};
use models::Model;
use network::host::{Keypair, Multiaddr};
use network::{Host, HostConfig, Role};
use node::{serve_network_until, NodeConfig};
use wire::transport::{NodeAddr, NodeLink, PeerRoute};
use wire::{Encoding, ErrorCode, Forward, ForwardInput, Frame, HeadReply, Message, WireError};

const LAYERS: usize = 7;
const SPLIT: usize = 3;
const PROMPT: [u32; 6] = [2, 17, 101, 45, 300, 7];
const TEST_LIMIT: Duration = Duration::from_secs(120);
const IO: Duration = Duration::from_secs(10);

fn load(path: &std::path::Path, layers: Range<usize>) -> Gemma3 {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load")
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

async fn host(role: Role, listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>) -> Host {
    Host::start(HostConfig {
        keypair: Keypair::generate_ed25519(),
        listen,
        bootstrap,
        role,
        relay_server: false,
        via_relay: false,
    })
    .await
    .expect("start host")
}

/// A node host serving `layers`, and the address it can be dialed at.
async fn start_node(
    path: &std::path::Path,
    id: ModelId,
    layers: Range<usize>,
) -> (Host, Multiaddr) {
    let host = host(Role::Server, vec![loopback()], Vec::new()).await;
    let addr = host.addresses().await.expect("addresses")[0].clone();
    let incoming = host.incoming().expect("incoming");
    let model = Arc::new(Model::from(load(path, layers.clone())));
    let config = NodeConfig::new(id, layers);
    tokio::spawn(serve_network_until(
        incoming,
        model,
        config,
        std::future::pending(),
    ));
    (host, addr)
}

/// `node` reached through `client`, whatever key it signs with.
fn peer(client: &Host, node: &Host) -> NodeAddr {
    NodeAddr::Peer(Arc::new(PeerRoute {
        key: node.key(),
        host: Arc::new(client.clone()),
        signer: None,
    }))
}

fn tiny_model(dir: &TempDir) -> (std::path::PathBuf, ModelId) {
    let path = dir.path().join("tiny.gguf");
    write_random_gemma3(&path, &tiny_gemma3_config(), 11).expect("write model");
    let mut reader = BufReader::new(File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let id = model_id(&content, &mut reader).expect("model id");
    (path, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_over_libp2p_streams_gives_the_single_process_logits() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("node-p2p-chain").expect("temp dir");
        let (path, id) = tiny_model(&dir);
        let (first, first_addr) = start_node(&path, id, 0..SPLIT).await;
        let (second, second_addr) = start_node(&path, id, SPLIT..LAYERS).await;
        let client = host(Role::Client, Vec::new(), vec![first_addr, second_addr]).await;
        let hops = vec![
            Hop {
                addr: peer(&client, &first),
                layers: 0..SPLIT,
            },
            Hop {
                addr: peer(&client, &second),
                layers: SPLIT..LAYERS,
            },
        ];
        let mut chain = Chain::connect(hops, LAYERS, id, Encoding::F32, IO)
            .await
            .expect("connect over libp2p");
        let logits = chain.forward(1, 0, &PROMPT).await.expect("forward");
        let model = Model::from(load(&path, 0..LAYERS));
        let expected = Generator::new(&model)
            .expect("generator")
            .feed(&PROMPT)
            .expect("reference");
        assert_eq!(logits, expected);
        // Digests name the nodes by peer id.
        let digests = chain.last_hops();
        assert_eq!(digests[0].addr, format!("/p2p/{}", first.peer_id()));
    })
    .await
    .expect("within the test limit");
}

fn forward(id: ModelId, tokens: &[u32]) -> Frame {
    Frame::new(
        42,
        0,
        Message::Forward(Forward {
            model_id: id,
            layers: 0..SPLIT as u32,
            reply: Encoding::F32,
            head: HeadReply::LastLogits,
            input: ForwardInput::Tokens(tokens.to_vec()),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_for_another_peers_request_is_refused() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("node-p2p-owner").expect("temp dir");
        let (path, id) = tiny_model(&dir);
        let (node, addr) = start_node(&path, id, 0..SPLIT).await;
        let owner = host(Role::Client, Vec::new(), vec![addr.clone()]).await;
        let stranger = host(Role::Client, Vec::new(), vec![addr]).await;
        let mut mine = NodeLink::connect(peer(&owner, &node), IO)
            .await
            .expect("owner");
        let mut theirs = NodeLink::connect(peer(&stranger, &node), IO)
            .await
            .expect("stranger");
        let at = |frame: Frame, position: u64| Frame { position, ..frame };

        let answer = mine
            .call(&forward(id, &PROMPT))
            .await
            .expect("the owner's prompt");
        assert!(matches!(answer, Message::Output(_)), "{answer:?}");
        // The stranger knows the request id, but the request is not theirs:
        // neither a Forward nor an End from them touches it.
        let refused = theirs
            .call(&at(forward(id, &[5]), PROMPT.len() as u64))
            .await
            .expect_err("another peer's request");
        assert_eq!(refused.code(), ErrorCode::Forbidden, "{refused}");
        assert!(matches!(refused, WireError::Remote { .. }));
        theirs
            .send(&Frame::new(42, 0, Message::End))
            .await
            .expect("End");
        let answer = mine
            .call(&at(forward(id, &[5]), PROMPT.len() as u64))
            .await
            .expect("the owner goes on");
        assert!(matches!(answer, Message::Output(_)), "{answer:?}");
        // The stranger's own request (the same id from another peer is
        // refused; a fresh id is theirs).
        let own = Frame {
            request_id: 43,
            ..forward(id, &PROMPT)
        };
        let answer = theirs.call(&own).await.expect("the stranger's own request");
        assert!(matches!(answer, Message::Output(_)), "{answer:?}");
    })
    .await
    .expect("within the test limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_opens_too_many_streams_is_refused_and_others_are_served() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new("node-p2p-streams").expect("temp dir");
        let (path, id) = tiny_model(&dir);
        let (node, addr) = start_node(&path, id, 0..SPLIT).await;
        let greedy = host(Role::Client, Vec::new(), vec![addr.clone()]).await;
        let other = host(Role::Client, Vec::new(), vec![addr]).await;
        let hello = || {
            Frame::new(
                0,
                0,
                Message::Hello(wire::Hello {
                    model_id: id,
                    layers: 0..SPLIT as u32,
                }),
            )
        };
        let per_peer = node::Capacity::default().connections_per_peer;
        let mut open = Vec::new();
        for _ in 0..per_peer {
            let mut link = NodeLink::connect(peer(&greedy, &node), IO)
                .await
                .expect("stream");
            link.call(&hello()).await.expect("admitted");
            open.push(link);
        }
        // One stream more than a peer may hold: Busy, then closed.
        let mut extra = NodeLink::connect(peer(&greedy, &node), IO)
            .await
            .expect("stream");
        let refused = extra.call(&hello()).await.expect_err("over the limit");
        assert_eq!(refused.code(), ErrorCode::Busy, "{refused}");
        // Another peer is not held back by it.
        let mut link = NodeLink::connect(peer(&other, &node), IO)
            .await
            .expect("stream");
        link.call(&hello()).await.expect("another peer is served");
    })
    .await
    .expect("within the test limit");
}
