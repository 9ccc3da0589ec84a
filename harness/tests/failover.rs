//! Routing and failover on loopback with the tiny random model: several nodes
//! per layer range, nodes killed mid-generation, a slow node avoided. The
//! tiny model has no tokenizer, so these work with token ids and logits.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::session::{Session, SessionConfig};
use client::{ClientError, Hop};
use harness::netem::{LinkSettings, WanProxy};
use models::argmax;
use models::gemma3::Gemma3;
use models::generate::Generator;
use models::model_id::{model_id, ModelId};
use models::testing::{tiny_gemma3_config, write_random_gemma3, TempDir};
use models::Model as Shard;
use node::{serve_until, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire::transport::NodeAddr;
use wire::Encoding;

const LAYERS: usize = 7;
const PROMPT: [u32; 6] = [2, 17, 101, 45, 300, 7];
const TOKENS: usize = 64;
/// Bound on every test: a hang is a failure, not a stuck CI job.
const TEST_LIMIT: Duration = Duration::from_secs(120);

struct Model {
    _dir: TempDir,
    path: PathBuf,
    id: ModelId,
}

fn write_model(name: &str) -> Model {
    let dir = TempDir::new(&format!("failover-{name}")).expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    write_random_gemma3(&path, &tiny_gemma3_config(), 11).expect("write model");
    let mut reader = BufReader::new(File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let id = model_id(&content, &mut reader).expect("model id");
    Model {
        _dir: dir,
        path,
        id,
    }
}

fn load(path: &Path, layers: Range<usize>) -> Gemma3 {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load")
}

/// A node in its own task, which can be killed.
struct Node {
    hop: Hop,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Node {
    async fn start(model: &Model, layers: Range<usize>) -> Node {
        let shard = Arc::new(Shard::from(load(&model.path, layers.clone())));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = NodeConfig::new(model.id, layers.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_until(listener, shard, config, async {
            let _ = stopped.await;
        }));
        Node {
            hop: Hop {
                addr: addr.into(),
                layers,
            },
            stop: Some(stop),
            task,
        }
    }

    /// Kills the node: its listener and every connection close.
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// One node per range, in order, and their hops.
async fn start_nodes(
    model: &Model,
    ranges: impl IntoIterator<Item = Range<usize>>,
) -> (Vec<Node>, Vec<Hop>) {
    let mut nodes = Vec::new();
    for layers in ranges {
        nodes.push(Node::start(model, layers).await);
    }
    let hops = nodes.iter().map(|n| n.hop.clone()).collect();
    (nodes, hops)
}

/// The session's events since the last call, printed and returned as text.
fn print_events(session: &mut Session) -> Vec<String> {
    let events: Vec<String> = session
        .take_events()
        .iter()
        .map(|e| e.to_string())
        .collect();
    println!("{}", events.join("\n"));
    events
}

/// Single-process greedy generation of `TOKENS` tokens.
fn reference(path: &Path) -> Vec<u32> {
    let model = Shard::from(load(path, 0..LAYERS));
    let mut generator = Generator::new(&model).expect("generator");
    let mut logits = generator.feed(&PROMPT).expect("feed");
    let mut tokens = Vec::new();
    for _ in 0..TOKENS {
        let token = argmax(&logits);
        tokens.push(token);
        logits = generator.feed(&[token]).expect("feed");
    }
    tokens
}

fn config() -> SessionConfig {
    SessionConfig {
        encoding: Encoding::F32,
        io_timeout: Duration::from_secs(10),
        ban: Duration::from_secs(60),
        remeasure_every: 8,
        switch_margin: 0.2,
        switch_min_gain: Duration::from_millis(1),
        activation_bytes: 64 * 4,
        standby: false,
    }
}

/// Greedy generation through `session`, as the CLI does it: a token is
/// emitted (pushed to `out`) once its logits are final, then fed. `hook`
/// runs before each token's feed with the number emitted so far.
async fn generate<F>(
    session: &mut Session,
    out: &mut Vec<u32>,
    mut hook: F,
) -> Result<(), ClientError>
where
    F: AsyncHook,
{
    let mut logits = session.feed(&PROMPT).await?;
    for _ in 0..TOKENS {
        let token = argmax(&logits);
        out.push(token);
        hook.call(out.len(), session).await;
        logits = session.feed(&[token]).await?;
    }
    Ok(())
}

/// Something to do between tokens (an async closure, spelled as a trait).
trait AsyncHook {
    async fn call(&mut self, emitted: usize, session: &Session);
}

struct NoHook;

impl AsyncHook for NoHook {
    async fn call(&mut self, _: usize, _: &Session) {}
}

/// Kills the node serving layer `layer` of the current route after `at`
/// tokens.
struct KillAt<'a> {
    nodes: &'a mut [Node],
    kills: Vec<(usize, usize)>,
    killed: Vec<NodeAddr>,
}

impl AsyncHook for KillAt<'_> {
    async fn call(&mut self, emitted: usize, session: &Session) {
        for &(at, layer) in &self.kills {
            if emitted != at {
                continue;
            }
            let hop = session
                .route()
                .iter()
                .find(|h| h.layers.contains(&layer))
                .expect("route covers the layer")
                .clone();
            let node = self
                .nodes
                .iter_mut()
                .find(|n| n.hop.addr == hop.addr)
                .expect("a node of the test");
            node.kill().await;
            self.killed.push(hop.addr.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nodes_mid_generation_fails_over_with_identical_tokens() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("kill");
        let expected = reference(&model.path);
        let (mut nodes, hops) = start_nodes(&model, [0..3, 0..3, 3..7, 3..7]).await;

        // The no-fault run through nodes matches the single-process one.
        let mut session = Session::connect(hops.clone(), LAYERS, model.id, config(), 100)
            .await
            .expect("connect");
        let mut clean = Vec::new();
        generate(&mut session, &mut clean, NoHook)
            .await
            .expect("generate");
        session.end().await;
        assert_eq!(clean, expected, "no-fault tokens");
        assert_eq!(session.stats().failovers, 0);

        // Kill the first-range node in use after 20 tokens, the second-range
        // one after 40.
        let mut session = Session::connect(hops, LAYERS, model.id, config(), 200)
            .await
            .expect("connect");
        let mut tokens = Vec::new();
        let mut hook = KillAt {
            nodes: &mut nodes,
            kills: vec![(20, 0), (40, 3)],
            killed: Vec::new(),
        };
        generate(&mut session, &mut tokens, &mut hook)
            .await
            .expect("generation survives the kills");
        let killed = hook.killed.clone();
        let events = print_events(&mut session);
        assert_eq!(tokens, expected, "tokens after failover");
        assert_eq!(killed.len(), 2);
        assert_eq!(session.stats().failovers, 2, "{events:?}");
        for addr in killed {
            assert!(session.route().iter().all(|h| h.addr != addr));
        }
        session.end().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_takes_over_a_dead_node_without_a_replay() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("standby");
        let expected = reference(&model.path);
        let (mut nodes, hops) = start_nodes(&model, [0..3, 3..7, 3..7]).await;
        // No re-measuring: a reroute would replay, and this test is about
        // a failover that does not.
        let config = SessionConfig {
            standby: true,
            remeasure_every: 0,
            ..config()
        };
        let mut session = Session::connect(hops, LAYERS, model.id, config, 300)
            .await
            .expect("connect");
        let mut tokens = Vec::new();
        let mut hook = KillAt {
            nodes: &mut nodes,
            kills: vec![(20, 3)],
            killed: Vec::new(),
        };
        generate(&mut session, &mut tokens, &mut hook)
            .await
            .expect("generation survives the kill");
        let events = print_events(&mut session);
        assert_eq!(tokens, expected, "tokens after the standby took over");
        assert_eq!(session.stats().failovers, 1, "{events:?}");
        assert!(
            events.iter().any(|e| e.contains("its standby took over")),
            "{events:?}"
        );
        // The same request on the same chain: nothing was replayed.
        assert_eq!(session.request_id(), 300);
        let killed = hook.killed[0].clone();
        assert!(session.route().iter().all(|h| h.addr != killed));
        session.end().await;
    })
    .await
    .expect("test timed out");
}

impl<H: AsyncHook> AsyncHook for &mut H {
    async fn call(&mut self, emitted: usize, session: &Session) {
        (**self).call(emitted, session).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_only_node_of_a_range_is_a_clear_error() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("noroute");
        let expected = reference(&model.path);
        let (mut nodes, hops) = start_nodes(&model, [0..3, 0..3, 3..7]).await;
        let mut session = Session::connect(hops, LAYERS, model.id, config(), 300)
            .await
            .expect("connect");
        let mut tokens = Vec::new();
        let hook = KillAt {
            nodes: &mut nodes,
            kills: vec![(10, 3)],
            killed: Vec::new(),
        };
        let err = generate(&mut session, &mut tokens, hook)
            .await
            .expect_err("no node left for 3..7");
        println!("{err}");
        assert!(
            matches!(&err, ClientError::NoRoute { layer: 3, range, .. } if *range == (3..7)),
            "{err}"
        );
        assert!(err.to_string().contains("layers 3..7"), "{err}");
        // Every emitted token once, in order: the reference's first ten.
        assert_eq!(tokens, expected[..10], "emitted tokens");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_prefers_the_faster_node_and_reroutes_when_it_slows() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("slow");
        let expected = reference(&model.path);
        let a = Node::start(&model, 0..3).await;
        let b = Node::start(&model, 0..3).await;
        let c = Node::start(&model, 3..7).await;
        let slow = LinkSettings::rtt(Duration::from_millis(20));
        let fast = LinkSettings::default();
        let link_a = WanProxy::start(a.hop.addr.socket().unwrap(), slow)
            .await
            .expect("proxy");
        let link_b = WanProxy::start(b.hop.addr.socket().unwrap(), fast)
            .await
            .expect("proxy");
        let (via_a, via_b) = (link_a.addr, link_b.addr);
        // The slow one first: candidate order alone would pick it.
        let hops = vec![
            Hop {
                addr: via_a.into(),
                layers: 0..3,
            },
            Hop {
                addr: via_b.into(),
                layers: 0..3,
            },
            c.hop.clone(),
        ];
        let mut session = Session::connect(hops, LAYERS, model.id, config(), 400)
            .await
            .expect("connect");
        assert_eq!(session.route()[0].addr, via_b.into(), "the fast node first");

        /// Makes B slow and A fast after `at` tokens.
        struct Swap {
            at: usize,
            links: [WanProxy; 2],
            settings: [LinkSettings; 2],
        }
        impl AsyncHook for Swap {
            async fn call(&mut self, emitted: usize, _: &Session) {
                if emitted == self.at {
                    self.links[0].set(self.settings[1]);
                    self.links[1].set(self.settings[0]);
                }
            }
        }
        let mut tokens = Vec::new();
        let hook = Swap {
            at: 20,
            links: [link_a, link_b],
            settings: [slow, fast],
        };
        generate(&mut session, &mut tokens, hook)
            .await
            .expect("generate");
        let events = print_events(&mut session);
        assert_eq!(tokens, expected);
        assert_eq!(
            session.route()[0].addr,
            via_a.into(),
            "moved to the now-fast node"
        );
        assert!(session.stats().reroutes >= 1, "{events:?}");
        assert_eq!(session.stats().failovers, 0);
        session.end().await;
    })
    .await
    .expect("test timed out");
}

/// blake3 of values as f32 little-endian (the F32 activation bytes).
fn f32_digest(values: &[f32]) -> blake3::Hash {
    blake3::hash(&transcript::f32_bytes(values))
}

/// What single-process shards compute for the prompt: the hidden states
/// after each of `spans` (all rows) and the logits row of the last position.
fn shard_outputs(path: &Path, spans: &[Range<usize>], tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut x = None;
    let mut outputs = Vec::new();
    for span in spans {
        let shard = load(path, span.clone());
        let mut cache = models::Cache::new();
        let input = match x.take() {
            None => shard.embed(tokens).expect("embed"),
            Some(hidden) => hidden,
        };
        let out = shard.forward(&input, 0, &mut cache).expect("forward");
        let values = if shard.has_head() {
            let seq = out.dim(1).expect("dim");
            out.narrow(1, seq - 1, 1).expect("narrow")
        } else {
            out.clone()
        };
        outputs.push(
            values
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec"),
        );
        x = Some(out);
    }
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_reports_per_hop_digests_that_match_the_shards_and_survive_failover() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("digests");
        let spans = [0..2, 2..5, 5..7];
        let expected = shard_outputs(&model.path, &spans, &PROMPT);
        let (mut nodes, hops) = start_nodes(&model, [0..2, 2..5, 5..7, 5..7]).await;
        let mut session = Session::connect(hops, LAYERS, model.id, config(), 300)
            .await
            .expect("connect");
        assert!(session.last_hops().is_empty());
        let logits = session.feed(&PROMPT).await.expect("feed");
        let digests = session.last_hops().to_vec();
        assert_eq!(digests.len(), 3);
        for (d, span) in digests.iter().zip(&spans) {
            assert_eq!(&d.layers, span);
        }
        assert_eq!(
            digests[0].input,
            blake3::hash(&transcript::u32_bytes(&PROMPT)),
            "first hop: the tokens as u32 LE"
        );
        for i in 0..2 {
            assert_eq!(digests[i].output, digests[i + 1].input, "F32 passes as is");
        }
        assert_eq!(
            digests[2].output,
            f32_digest(&logits),
            "last hop: the logits"
        );
        // Each hop answered exactly what a single-process shard computes.
        for (i, values) in expected.iter().enumerate() {
            assert_eq!(digests[i].output, f32_digest(values), "hop {i}");
        }

        // Kill the last hop in use: the next feed fails over and replays;
        // the digests reported are those of the new chain's forward of the
        // fed token only.
        let token = argmax(&logits);
        let used = digests[2].addr.clone();
        nodes
            .iter_mut()
            .find(|n| n.hop.addr.to_string() == used)
            .expect("node")
            .kill()
            .await;
        let logits = session.feed(&[token]).await.expect("feed after kill");
        assert_eq!(session.stats().failovers, 1);
        let after = session.last_hops().to_vec();
        assert_eq!(after.len(), 3);
        assert_ne!(after[2].addr, used);
        assert_eq!(after[0].input, blake3::hash(&token.to_le_bytes()));
        for i in 0..2 {
            assert_eq!(after[i].output, after[i + 1].input);
        }
        assert_eq!(after[2].output, f32_digest(&logits));
        session.end().await;
    })
    .await
    .expect("test timed out");
}
