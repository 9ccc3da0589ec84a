//! The libp2p stack's cost: `cargo bench --bench network [-- --tokens N --traffic-secs S]`.
//!
//! Prints markdown tables (docs/network.md):
//!
//! 1. per-token latency of a two-node chain on loopback, plain TCP vs libp2p
//!    (Noise + yamux), greedy tokens answered by the head, for the tiny
//!    random model (transport overhead alone) and the packaged model when it
//!    is installed; the two transports alternate, three rounds each;
//! 2. time from a client's start (its host, discovery in the DHT, the chain's
//!    Hello, the prompt) to its first token, with 5 and 20 nodes on loopback
//!    (in this process, the tiny model, two layer ranges);
//! 3. per-token latency across network namespaces, each node's link limited
//!    with `tc tbf`: the same two nodes (processes) over plain TCP and over
//!    libp2p, the packaged model when installed (needs root; skipped otherwise);
//! 4. discovery traffic per node while idle, with a bootstrap host and five
//!    `zkinfer serve --network` processes in their own network namespaces,
//!    read from their interfaces' counters (needs root; skipped otherwise).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::session::{Session, SessionConfig};
use client::speculative::generate_greedy;
use client::Hop;
use models::model_id::ModelId;
use models::Model;
use network::announcement::{keypair_for, peer_key_of, unix_now, Announcement};
use network::host::{Keypair, Multiaddr};
use network::{Host, HostConfig, Role};
use node::{serve, serve_network_until, NodeConfig};
use verifier::receipt::SecretKey;
use wire::Encoding;

type Error = Box<dyn std::error::Error>;

const PROMPT: [u32; 8] = [2, 17, 101, 45, 300, 7, 64, 9];

struct Shards {
    id: ModelId,
    layers: usize,
    hidden: usize,
    path: std::path::PathBuf,
}

impl Shards {
    fn open(path: &Path) -> Result<Shards, Error> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
        let content = gguf_file::Content::read(&mut reader)?;
        let shape = Model::shape_of(&content)?;
        let id = models::model_id::model_id(&content, &mut reader)?;
        Ok(Shards {
            id,
            layers: shape.layers,
            hidden: shape.hidden,
            path: path.to_path_buf(),
        })
    }

    fn load(&self, layers: Range<usize>) -> Result<Model, Error> {
        let mut reader = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        let content = gguf_file::Content::read(&mut reader)?;
        Ok(Model::from_gguf(
            &content,
            &mut reader,
            &Device::Cpu,
            layers,
        )?)
    }

    fn spans(&self) -> [Range<usize>; 2] {
        let split = self.layers / 2;
        [0..split, split..self.layers]
    }
}

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().unwrap()
}

async fn start_host(
    keypair: Keypair,
    role: Role,
    bootstrap: Vec<Multiaddr>,
) -> Result<Host, Error> {
    let listen = match role {
        Role::Server => vec![loopback()],
        Role::Client => Vec::new(),
    };
    Ok(Host::start(HostConfig {
        keypair,
        listen,
        bootstrap,
        role,
        relay_server: false,
        via_relay: false,
    })
    .await?)
}

/// A node serving `layers` over libp2p, announced through `bootstrap` (or
/// none); returns its host (kept alive by the caller) and announcement.
async fn network_node(
    shards: &Shards,
    layers: Range<usize>,
    bootstrap: Vec<Multiaddr>,
    seed: usize,
) -> Result<(Host, network::SignedAnnouncement), Error> {
    let signer = SecretKey::from_seed(format!("bench node {seed}").as_bytes()).ok_or("key")?;
    let keypair = keypair_for(&signer);
    let host = start_host(keypair.clone(), Role::Server, bootstrap).await?;
    let model = Arc::new(shards.load(layers.clone())?);
    let incoming = host.incoming()?;
    tokio::spawn(serve_network_until(
        incoming,
        model,
        node_config(shards, layers.clone(), &signer),
        std::future::pending(),
    ));
    let announcement = Announcement {
        peer: peer_key_of(&keypair.public()).ok_or("not ed25519")?,
        signer: signer.public(),
        model_id: shards.id,
        layers: layers.start as u32..layers.end as u32,
        throughput: 1000.0,
        stake_account: None,
        issued_at: unix_now(),
        addrs: host.addresses().await?,
    };
    let signed = announcement.sign(&keypair, &signer)?;
    host.announce(signed.clone()).await?;
    Ok((host, signed))
}

/// Nodes sign their receipts on both transports; over libp2p they must sign
/// with the key they announced.
fn node_config(shards: &Shards, layers: Range<usize>, signer: &SecretKey) -> NodeConfig {
    NodeConfig {
        signer: Some(Arc::new(signer.clone())),
        ..NodeConfig::new(shards.id, layers)
    }
}

fn session_config(shards: &Shards) -> SessionConfig {
    SessionConfig {
        remeasure_every: 0,
        ..SessionConfig::for_encoding(Encoding::F32, shards.hidden)
    }
}

/// Milliseconds per token of a greedy generation of `tokens` after the prompt.
async fn per_token_ms(
    shards: &Shards,
    hops: &[Hop],
    tokens: usize,
    request: u64,
) -> Result<(f64, Vec<u32>), Error> {
    let mut session = Session::connect(
        hops.to_vec(),
        shards.layers,
        shards.id,
        session_config(shards),
        request,
    )
    .await?;
    let mut first = None;
    let (out, _) = generate_greedy(&mut session, &PROMPT, tokens + 1, 0, &[], |_| {
        first.get_or_insert_with(Instant::now);
    })
    .await?;
    let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    session.end().await;
    Ok((elapsed.as_secs_f64() * 1e3 / tokens as f64, out))
}

async fn transport_latency(name: &str, shards: &Shards, tokens: usize) -> Result<(), Error> {
    let mut tcp = Vec::new();
    let mut p2p = Vec::new();
    let mut hosts = Vec::new();
    for (i, layers) in shards.spans().into_iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let model = Arc::new(shards.load(layers.clone())?);
        let signer = SecretKey::from_seed(format!("bench tcp node {i}").as_bytes()).ok_or("key")?;
        tokio::spawn(serve(
            listener,
            model,
            node_config(shards, layers.clone(), &signer),
        ));
        tcp.push(Hop {
            addr: addr.into(),
            layers: layers.clone(),
        });
        let (host, signed) = network_node(shards, layers.clone(), Vec::new(), 100 + i).await?;
        hosts.push((host, signed));
    }
    let bootstrap = first_addresses(&hosts).await?;
    let client = start_host(Keypair::generate_ed25519(), Role::Client, bootstrap).await?;
    for (_, signed) in &hosts {
        p2p.push(Hop {
            addr: client.node_addr(signed),
            layers: signed.announcement.layers.start as usize
                ..signed.announcement.layers.end as usize,
        });
    }
    let (mut over_tcp, mut over_p2p) = (Vec::new(), Vec::new());
    let mut same = true;
    for round in 0..3u64 {
        let (t, a) = per_token_ms(shards, &tcp, tokens, 2 * round + 1).await?;
        let (p, b) = per_token_ms(shards, &p2p, tokens, 2 * round + 2).await?;
        same &= a == b;
        over_tcp.push(t);
        over_p2p.push(p);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t, p) = (median(&mut over_tcp), median(&mut over_p2p));
    println!(
        "| {name} | {t:.3} | {p:.3} | {:.3}x | {} |",
        p / t,
        if same { "yes" } else { "NO" }
    );
    Ok(())
}

async fn first_addresses(
    hosts: &[(Host, network::SignedAnnouncement)],
) -> Result<Vec<Multiaddr>, Error> {
    let mut addrs = Vec::new();
    for (host, _) in hosts {
        addrs.push(host.addresses().await?[0].clone());
    }
    Ok(addrs)
}

/// Seconds from a client's start to its first token with `nodes` nodes.
async fn first_token(shards: &Shards, nodes: usize) -> Result<(f64, f64), Error> {
    let bootstrap = start_host(Keypair::generate_ed25519(), Role::Server, Vec::new()).await?;
    let boot = vec![bootstrap.addresses().await?[0].clone()];
    let mut kept = Vec::new();
    for i in 0..nodes {
        let layers = shards.spans()[i % 2].clone();
        kept.push(network_node(shards, layers, boot.clone(), 1000 * nodes + i).await?);
    }
    let start = Instant::now();
    let client = start_host(Keypair::generate_ed25519(), Role::Client, boot).await?;
    let found = loop {
        let found = client.discover(shards.id).await?;
        if found.len() == nodes {
            break found;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("found {} of {nodes} nodes in 30 s", found.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let discovered = start.elapsed().as_secs_f64();
    let hops: Vec<Hop> = found
        .iter()
        .map(|s| Hop {
            addr: client.node_addr(s),
            layers: s.announcement.layers.start as usize..s.announcement.layers.end as usize,
        })
        .collect();
    let mut session =
        Session::connect(hops, shards.layers, shards.id, session_config(shards), 1).await?;
    generate_greedy(&mut session, &PROMPT, 1, 0, &[], |_| {}).await?;
    let total = start.elapsed().as_secs_f64();
    session.end().await;
    drop(kept);
    Ok((discovered, total))
}

/// A LAN of namespaces with a bootstrap host on it, and the processes
/// started in them: killed, and their scratch directory removed, on drop.
struct Namespaces {
    lan: harness::netns::Lan,
    dir: std::path::PathBuf,
    /// The bootstrap host's multiaddr.
    boot: String,
    children: Vec<std::process::Child>,
}

const BIN: &str = env!("CARGO_BIN_EXE_zkinfer");

impl Namespaces {
    /// `None` (and why, printed) where namespaces cannot be made.
    fn start(tag: &str) -> Result<Option<Namespaces>, Error> {
        let mut lan = match harness::netns::Lan::new() {
            Ok(lan) => lan,
            Err(e) => {
                println!("(skipped: network namespaces are not available: {e})");
                return Ok(None);
            }
        };
        let dir = std::env::temp_dir().join(format!("zkinfer-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let b = lan.add_host()?;
        let mut all = Namespaces {
            boot: format!("/ip4/{}/tcp/4000", b.ip),
            lan,
            dir,
            children: Vec::new(),
        };
        all.spawn(&b, |cmd| {
            cmd.args(["bootstrap", "--listen", &format!("{}:4000", b.ip)]);
        })?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(Some(all))
    }

    /// Starts `zkinfer` in `host`'s namespace with the arguments `args` adds,
    /// its output discarded.
    fn spawn(
        &mut self,
        host: &harness::netns::Host,
        args: impl FnOnce(&mut std::process::Command),
    ) -> Result<(), Error> {
        let mut cmd = self.lan.command(host, BIN);
        args(&mut cmd);
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    /// A new node key (`zkinfer keygen`) in the scratch directory.
    fn key(&self, name: &str) -> Result<std::path::PathBuf, Error> {
        let key = self.dir.join(format!("{name}.key"));
        let out = std::process::Command::new(BIN)
            .args(["keygen", "--out"])
            .arg(&key)
            .output()?;
        if !out.status.success() {
            return Err(format!("keygen: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(key)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Bytes per minute each of five idle nodes sends and receives, in namespaces.
fn discovery_traffic(model: &Path, secs: u64) -> Result<Option<(f64, f64)>, Error> {
    let Some(mut all) = Namespaces::start("traffic")? else {
        return Ok(None);
    };
    let shards = Shards::open(model)?;
    let mut hosts = Vec::new();
    for i in 0..5 {
        let host = all.lan.add_host()?;
        let key = all.key(&format!("n{i}"))?;
        let span = &shards.spans()[i % 2];
        let boot = all.boot.clone();
        all.spawn(&host, |cmd| {
            cmd.args(["serve", "--model"])
                .arg(model)
                .args(["--layers", &format!("{}..{}", span.start, span.end)])
                .args(["--listen", &format!("{}:4000", host.ip), "--key"])
                .arg(&key)
                .args(["--threads", "1", "--network", "--bootstrap", &boot]);
        })?;
        hosts.push(host);
    }
    // Joined and announced; then only the DHT's own upkeep and refreshes.
    std::thread::sleep(Duration::from_secs(5));
    let counters = || -> Result<Vec<(u64, u64)>, String> {
        hosts.iter().map(|h| all.lan.counters(h)).collect()
    };
    let before = counters()?;
    std::thread::sleep(Duration::from_secs(secs));
    let after = counters()?;
    let minutes = secs as f64 / 60.0;
    let n = hosts.len() as f64;
    let rx: u64 = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum();
    let tx: u64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
    Ok(Some((rx as f64 / n / minutes, tx as f64 / n / minutes)))
}

/// Milliseconds per token that `zkinfer generate ARGS` in `host`'s namespace
/// reports (its "[… tokens in … s, R tokens/s]" line).
fn generate_ms_per_token(
    lan: &harness::netns::Lan,
    host: &harness::netns::Host,
    args: &[&str],
) -> Result<f64, Error> {
    let out = lan.command(host, BIN).arg("generate").args(args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("generate failed: {stderr}").into());
    }
    let rate: f64 = stderr
        .lines()
        .find_map(|l| {
            l.strip_suffix(" tokens/s]")?
                .rsplit(", ")
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no tokens/s line: {stderr}"))?;
    Ok(1e3 / rate)
}

/// Per-token latency across namespaces, each node's sending rate-limited to
/// `kbit` with `tc tbf`: the same two nodes served over plain TCP and over
/// libp2p (one process each per namespace), the client in its own.
fn namespace_latency(model: &Path, kbit: u32, tokens: usize) -> Result<Option<(f64, f64)>, Error> {
    let Some(mut all) = Namespaces::start("latency")? else {
        return Ok(None);
    };
    let shards = Shards::open(model)?;
    let mut nodes_toml = String::new();
    for (i, span) in shards.spans().iter().enumerate() {
        let host = all.lan.add_host()?;
        all.lan.rate_limit(&host, kbit)?;
        let key = all.key(&format!("n{i}"))?;
        let layers = format!("{}..{}", span.start, span.end);
        for (port, network) in [(5000, false), (4000, true)] {
            let boot = all.boot.clone();
            all.spawn(&host, |serve| {
                serve
                    .args(["serve", "--model"])
                    .arg(model)
                    .args(["--layers", &layers, "--key"])
                    .arg(&key)
                    .args(["--listen", &format!("{}:{port}", host.ip), "--threads", "1"]);
                if network {
                    serve.args(["--network", "--bootstrap", &boot]);
                }
            })?;
        }
        nodes_toml += &format!(
            "[[node]]\naddr = \"{}:5000\"\nlayers = \"{layers}\"\n",
            host.ip
        );
    }
    let nodes = all.dir.join("nodes.toml");
    std::fs::write(&nodes, nodes_toml)?;
    let client = all.lan.add_host()?;
    // Loaded, listening and announced.
    std::thread::sleep(Duration::from_secs(if shards.layers > 8 { 15 } else { 3 }));
    let model = model.to_str().ok_or("model path is not UTF-8")?;
    let tokens = tokens.to_string();
    let common = [
        "--model",
        model,
        "--prompt",
        "hello world",
        "--max-tokens",
        &tokens,
        "--seed",
        "7",
    ];
    let nodes = nodes.to_str().ok_or("path is not UTF-8")?;
    let (mut tcp, mut p2p) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        tcp.push(generate_ms_per_token(
            &all.lan,
            &client,
            &[&common[..], &["--nodes", nodes]].concat(),
        )?);
        p2p.push(generate_ms_per_token(
            &all.lan,
            &client,
            &[&common[..], &["--network", "--bootstrap", &all.boot]].concat(),
        )?);
    }
    drop(all);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Some((median(tcp), median(p2p))))
}

fn main() -> Result<(), Error> {
    let (mut tokens, mut traffic_secs) = (64usize, 300u64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tokens" => tokens = args.next().ok_or("--tokens needs a value")?.parse()?,
            "--traffic-secs" => {
                traffic_secs = args.next().ok_or("--traffic-secs needs a value")?.parse()?
            }
            _ => {}
        }
    }
    let dir = models::testing::TempDir::new("bench-network")?;
    let tiny_path = dir.path().join("tiny.gguf");
    models::testing::write_random_gemma3(&tiny_path, &models::testing::tiny_gemma3_config(), 3)?;
    let tiny = Shards::open(&tiny_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    println!("## Per-token latency on loopback, two nodes, {tokens} greedy tokens (median of 3)\n");
    println!("| model | plain TCP ms/token | libp2p ms/token | libp2p / TCP | same tokens |");
    println!("|---|---|---|---|---|");
    runtime.block_on(transport_latency(
        "tiny random (7 layers, hidden 64)",
        &tiny,
        tokens,
    ))?;
    match models::installed_packaged_model() {
        Some(path) => {
            let packaged = Shards::open(&path)?;
            runtime.block_on(transport_latency(
                "Gemma 3 270M (packaged)",
                &packaged,
                tokens,
            ))?;
        }
        None => println!("| Gemma 3 270M | (not installed: bash scripts/install_model.sh) | | | |"),
    }

    println!("\n## From a client's start to its first token, nodes on loopback (tiny model)\n");
    println!("| nodes | discovery s | first token s |");
    println!("|---|---|---|");
    for nodes in [5, 20] {
        let (discovered, total) = runtime.block_on(first_token(&tiny, nodes))?;
        println!("| {nodes} | {discovered:.3} | {total:.3} |");
    }

    let kbit = 10_000;
    println!("\n## Per-token latency across namespaces, each node's link limited to {kbit} kbit/s (tc tbf), median of 3\n");
    let model = models::installed_packaged_model().unwrap_or_else(|| tiny_path.clone());
    if let Some((tcp, p2p)) = namespace_latency(&model, kbit, tokens)? {
        println!("| model | plain TCP ms/token | libp2p ms/token | libp2p / TCP |");
        println!("|---|---|---|---|");
        println!(
            "| {} | {tcp:.2} | {p2p:.2} | {:.3}x |",
            model.file_name().unwrap_or_default().to_string_lossy(),
            p2p / tcp
        );
    }

    println!("\n## Discovery traffic per idle node ({traffic_secs} s, five nodes and a bootstrap host in namespaces)\n");
    if traffic_secs == 0 {
        println!("(skipped: --traffic-secs 0)");
    } else if let Some((rx, tx)) = discovery_traffic(&tiny_path, traffic_secs)? {
        println!("| received bytes/min | sent bytes/min |");
        println!("|---|---|");
        println!("| {rx:.0} | {tx:.0} |");
    }
    Ok(())
}
