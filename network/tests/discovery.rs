//! Discovery through the DHT on loopback: a client finds a model's nodes
//! through one bootstrap host, and forged announcements are neither stored
//! by honest hosts nor believed by the client.

use std::time::{Duration, Instant};

use models::model_id::ModelId;
use network::announcement::{keypair_for, peer_key_of, unix_now, Announcement};
use network::host::{Keypair, Multiaddr};
use network::{Host, HostConfig, Role, SignedAnnouncement};
use verifier::receipt::SecretKey;

const MODEL: ModelId = ModelId([7; 32]);
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn start(keypair: Keypair, role: Role, bootstrap: Vec<Multiaddr>) -> Host {
    let listen = match role {
        Role::Server => vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        Role::Client => Vec::new(),
    };
    Host::start(HostConfig {
        keypair,
        listen,
        bootstrap,
        role,
        relay_server: false,
        via_relay: false,
    })
    .await
    .expect("start host")
}

/// A node's host and its announcement of `layers`, signed.
async fn node(
    seed: &str,
    bootstrap: &Multiaddr,
    layers: std::ops::Range<u32>,
) -> (Host, SignedAnnouncement) {
    let signer = SecretKey::from_seed(seed.as_bytes()).unwrap();
    let keypair = keypair_for(&signer);
    let host = start(keypair.clone(), Role::Server, vec![bootstrap.clone()]).await;
    let announcement = Announcement {
        peer: peer_key_of(&keypair.public()).unwrap(),
        signer: signer.public(),
        model_id: MODEL,
        layers,
        throughput: 100.0,
        stake_account: None,
        issued_at: unix_now(),
        addrs: host.addresses().await.unwrap(),
    };
    let signed = announcement.sign(&keypair, &signer).unwrap();
    (host, signed)
}

/// What `client` finds once `until` holds, or after the test's patience.
async fn discover_until(
    client: &Host,
    until: impl Fn(&[SignedAnnouncement]) -> bool,
) -> Vec<SignedAnnouncement> {
    let start = Instant::now();
    loop {
        let found = client.discover(MODEL).await.expect("discover");
        if until(&found) || start.elapsed() > Duration::from_secs(15) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_every_node_of_a_model_and_nothing_forged() {
    tokio::time::timeout(TEST_LIMIT, async {
        let bootstrap = start(Keypair::generate_ed25519(), Role::Server, Vec::new()).await;
        let boot = bootstrap.addresses().await.unwrap()[0].clone();
        let (honest_a, a) = node("honest a", &boot, 0..3).await;
        let (honest_b, b) = node("honest b", &boot, 3..7).await;
        honest_a.announce(a.clone()).await.unwrap();
        honest_b.announce(b.clone()).await.unwrap();

        // A forger changes what its own signed announcement says...
        let (forger, own) = node("forger", &boot, 0..1).await;
        let mut widened = own.clone();
        widened.announcement.layers = 0..7;
        forger.announce(widened).await.unwrap();
        // ...and claims to be an honest node, to replace its record.
        let mut impostor = own;
        impostor.announcement.peer = a.announcement.peer;
        forger.announce(impostor).await.unwrap();

        let client = start(Keypair::generate_ed25519(), Role::Client, vec![boot]).await;
        let found = discover_until(&client, |found| found.len() >= 2).await;
        // One more round: anything slower to arrive is in by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = client.discover(MODEL).await.unwrap();
        for found in [found, again] {
            let mut peers: Vec<_> = found.iter().map(|s| s.announcement.clone()).collect();
            peers.sort_by_key(|a| a.layers.start);
            assert_eq!(peers, vec![a.announcement.clone(), b.announcement.clone()]);
        }
        // Another model's client finds none of them.
        assert!(client.discover(ModelId([8; 32])).await.unwrap().is_empty());
    })
    .await
    .expect("within the test limit");
}
