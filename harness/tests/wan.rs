//! Latency mitigations on the tiny random model: speculative decoding gives
//! plain greedy decoding's tokens, and a link that turns slow mid-generation
//! (emulated with `harness::netem`) is left within a few tokens.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::session::{Session, SessionConfig, SessionEvent};
use client::speculative::generate_greedy;
use client::Hop;
use harness::netem::{LinkSettings, WanProxy};
use models::model_id::{model_id, ModelId};
use models::testing::{tiny_gemma3_config, write_random_gemma3};
use models::Model;
use node::{serve, NodeConfig};
use wire::Encoding;

const PROMPT: [u32; 8] = [2, 17, 101, 45, 17, 101, 45, 17];
const TOKENS: usize = 48;
const TEST_LIMIT: Duration = Duration::from_secs(120);

struct TempModel {
    dir: PathBuf,
    path: PathBuf,
    id: ModelId,
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_model(name: &str) -> TempModel {
    let dir = std::env::temp_dir().join(format!("zkinfer-wan-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("tiny.gguf");
    write_random_gemma3(&path, &tiny_gemma3_config(), 31).expect("model");
    let mut reader = BufReader::new(File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let id = model_id(&content, &mut reader).expect("id");
    TempModel { dir, path, id }
}

async fn start_node(model: &TempModel, layers: Range<usize>) -> Hop {
    let mut reader = BufReader::new(File::open(&model.path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let shard =
        Model::from_gguf(&content, &mut reader, &Device::Cpu, layers.clone()).expect("load");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = NodeConfig::new(model.id, layers.clone());
    tokio::spawn(serve(listener, Arc::new(shard), config));
    Hop {
        addr: addr.into(),
        layers,
    }
}

fn config(remeasure_every: usize) -> SessionConfig {
    SessionConfig {
        encoding: Encoding::F32,
        io_timeout: Duration::from_secs(10),
        remeasure_every,
        activation_bytes: 64 * 4,
        ..SessionConfig::default()
    }
}

async fn session(hops: Vec<Hop>, model: &TempModel, request: u64, remeasure: usize) -> Session {
    Session::connect(
        hops,
        tiny_gemma3_config().layers,
        model.id,
        config(remeasure),
        request,
    )
    .await
    .expect("session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_decoding_gives_the_greedy_tokens_in_fewer_forwards() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("speculative");
        let hops = vec![
            start_node(&model, 0..3).await,
            start_node(&model, 3..7).await,
        ];
        let mut plain = session(hops.clone(), &model, 100, 0).await;
        let (expected, stats) = generate_greedy(&mut plain, &PROMPT, TOKENS, 0, &[], |_| {})
            .await
            .expect("plain");
        assert_eq!(expected.len(), TOKENS);
        assert_eq!(stats.forwards, TOKENS - 1);
        assert_eq!(stats.drafted, 0);

        for k in [1, 4, 8] {
            let mut fast = session(hops.clone(), &model, 200 + k as u64, 0).await;
            let (tokens, stats) = generate_greedy(&mut fast, &PROMPT, TOKENS, k, &[], |_| {})
                .await
                .expect("speculative");
            assert_eq!(tokens, expected, "k = {k}");
            assert_eq!(stats.forwards + stats.accepted, TOKENS - 1, "{stats:?}");
            eprintln!(
                "k = {k}: {} forwards for {TOKENS} tokens, {}/{} drafts accepted",
                stats.forwards, stats.accepted, stats.drafted
            );
            fast.end().await;
        }
        // A stop token ends generation where plain decoding would.
        let stop = expected[TOKENS / 2];
        let first = expected.iter().position(|&t| t == stop).expect("present");
        let mut fast = session(hops.clone(), &model, 300, 0).await;
        let (tokens, _) = generate_greedy(&mut fast, &PROMPT, TOKENS, 4, &[stop], |_| {})
            .await
            .expect("speculative");
        assert_eq!(tokens, expected[..=first]);
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_turns_slow_is_left_within_a_few_tokens() {
    tokio::time::timeout(TEST_LIMIT, async {
        let model = write_model("adaptive");
        let first = start_node(&model, 0..3).await;
        let a = start_node(&model, 3..7).await;
        let b = start_node(&model, 3..7).await;
        let fast = LinkSettings::rtt(Duration::from_millis(2));
        let proxy_a = WanProxy::start(a.addr.socket().unwrap(), fast)
            .await
            .expect("proxy");
        let proxy_b = WanProxy::start(b.addr.socket().unwrap(), fast)
            .await
            .expect("proxy");
        let candidates = vec![
            first,
            Hop {
                addr: proxy_a.addr.into(),
                layers: 3..7,
            },
            Hop {
                addr: proxy_b.addr.into(),
                layers: 3..7,
            },
        ];
        let mut reference = session(candidates.clone(), &model, 400, 0).await;
        let (expected, _) = generate_greedy(&mut reference, &PROMPT, 32, 0, &[], |_| {})
            .await
            .expect("reference");
        reference.end().await;

        // Remeasuring only every 1,000 tokens: only the latency watch can
        // trigger the move.
        let mut s = session(candidates, &model, 500, 1000).await;
        let in_use = |s: &Session| s.route()[1].addr.socket();
        let mut tokens = Vec::new();
        let mut slowed = None;
        let mut moved_after = None;
        let mut logits = s.feed(&PROMPT).await.expect("prompt");
        for i in 0..32 {
            let token = node::greedy_token(&logits).expect("token");
            tokens.push(token);
            if i == 8 {
                let proxy = if in_use(&s) == Some(proxy_a.addr) {
                    &proxy_a
                } else {
                    &proxy_b
                };
                proxy.set(LinkSettings::rtt(Duration::from_millis(150)));
                slowed = Some(proxy.addr);
            }
            logits = s.feed(&[token]).await.expect("feed");
            if let (Some(slow), None) = (slowed, moved_after) {
                if in_use(&s) != Some(slow) {
                    moved_after = Some(i - 8);
                }
            }
        }
        assert_eq!(tokens, expected);
        let moved = moved_after.expect("the client left the slow link");
        assert!(moved <= 3, "moved after {moved} tokens");
        let reroutes = s
            .take_events()
            .iter()
            .filter(|e| matches!(e, SessionEvent::Reroute { .. }))
            .count();
        assert!(reroutes >= 1);
        eprintln!("moved off the slowed link {moved} token(s) after it slowed");
    })
    .await
    .expect("within the time limit");
}
