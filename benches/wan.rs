//! Latency mitigations under an emulated wide-area network, on the packaged
//! model: `cargo bench --bench wan [-- --tokens N]`.
//!
//! Two shard nodes (layers 0..9 and 9..18) run in this process, each behind
//! a `harness::netem` link; the client reaches each node through its link
//! (a star, as in the client-driven pipeline). Prints markdown tables:
//!
//! 1. greedy tokens/s, plain vs speculative decoding (prompt-lookup drafts
//!    of up to 4 tokens), at 0, 20, 50 and 100 ms round trip per hop, with
//!    the drafts' acceptance rate;
//! 2. tokens/s for f32 / f16 / Q8 hidden states on a 20 ms, 1 Mbit/s link.
//!
//! The head answers greedy tokens (4 bytes), not the 1 MiB logits row, in
//! both: sending logits over such links would dominate everything else.
//! Not a criterion bench: each configuration is one timed generation (long
//! enough that loopback jitter does not matter next to emulated delays).

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::session::{Session, SessionConfig};
use client::speculative::{generate_greedy, SpeculativeStats};
use client::Hop;
use harness::netem::{LinkSettings, WanProxy};
use models::tokenizer::Tokenizer;
use models::Model;
use node::{serve, NodeConfig};
use wire::Encoding;

/// Code repeats itself, which is where prompt lookup drafts well.
const PROMPT: &str = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef div(a, b):\n";
const DRAFT: usize = 4;

type Error = Box<dyn std::error::Error>;

struct Setup {
    runtime: tokio::runtime::Runtime,
    proxies: Vec<WanProxy>,
    hops: Vec<Hop>,
    id: models::model_id::ModelId,
    layers: usize,
    hidden: usize,
    prompt: Vec<u32>,
}

fn setup() -> Result<Setup, Error> {
    let path = models::installed_packaged_model()
        .ok_or("the packaged model is not installed: run `bash scripts/setup.sh`")?;
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let shape = Model::shape_of(&content)?;
    let id = models::model_id::model_id(&content, &mut reader)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut proxies = Vec::new();
    let mut hops = Vec::new();
    let split = shape.layers / 2;
    for layers in [0..split, split..shape.layers] {
        let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, layers.clone())?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let config = NodeConfig::new(id, layers.clone());
        runtime.spawn(serve(listener, Arc::new(model), config));
        let proxy = runtime.block_on(WanProxy::start(addr, LinkSettings::default()))?;
        hops.push(Hop {
            addr: proxy.addr.into(),
            layers,
        });
        proxies.push(proxy);
    }
    Ok(Setup {
        runtime,
        proxies,
        hops,
        id,
        layers: shape.layers,
        hidden: shape.hidden,
        prompt: tokenizer.encode(PROMPT, true),
    })
}

/// One timed greedy generation: tokens/s after the prompt, the tokens, stats.
fn run(
    setup: &Setup,
    encoding: Encoding,
    draft: usize,
    tokens: usize,
    request: u64,
) -> Result<(f64, Vec<u32>, SpeculativeStats), Error> {
    let config = SessionConfig {
        remeasure_every: 0,
        ..SessionConfig::for_encoding(encoding, setup.hidden)
    };
    setup.runtime.block_on(async {
        let mut session =
            Session::connect(setup.hops.clone(), setup.layers, setup.id, config, request).await?;
        let mut first = None;
        let result = generate_greedy(&mut session, &setup.prompt, tokens, draft, &[], |_| {
            first.get_or_insert_with(Instant::now);
        })
        .await?;
        let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
        session.end().await;
        // The first token comes with the prompt: the rate is over the rest.
        let rate = (result.0.len().saturating_sub(1)) as f64 / elapsed.as_secs_f64().max(1e-9);
        Ok::<_, Error>((rate, result.0, result.1))
    })
}

fn main() -> Result<(), Error> {
    let mut tokens = 48;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--tokens" {
            tokens = args.next().ok_or("--tokens needs a value")?.parse()?;
        }
    }
    let setup = setup()?;
    let mut request = 1u64;
    let mut next_request = || {
        request += 1;
        request
    };

    println!(
        "## Speculative decoding vs plain greedy decoding ({tokens} tokens, f32 hidden states)\n"
    );
    println!("| RTT per hop | plain tokens/s | speculative tokens/s | speed-up | drafts accepted | forwards | same tokens |");
    println!("|---|---|---|---|---|---|---|");
    for rtt_ms in [0u64, 20, 50, 100] {
        for proxy in &setup.proxies {
            proxy.set(LinkSettings::rtt(Duration::from_millis(rtt_ms)));
        }
        let (plain, expected, _) = run(&setup, Encoding::F32, 0, tokens, next_request())?;
        let (fast, got, stats) = run(&setup, Encoding::F32, DRAFT, tokens, next_request())?;
        println!(
            "| {rtt_ms} ms | {plain:.2} | {fast:.2} | {:.2}x | {}/{} ({:.0} %) | {} | {} |",
            fast / plain,
            stats.accepted,
            stats.drafted,
            100.0 * stats.acceptance(),
            stats.forwards,
            if got == expected { "yes" } else { "NO" }
        );
    }

    let link = LinkSettings {
        delay: Duration::from_millis(10),
        bandwidth: Some(125_000),
        ..LinkSettings::default()
    };
    for proxy in &setup.proxies {
        proxy.set(link);
    }
    println!("\n## Hidden-state encodings on a 20 ms RTT, 1 Mbit/s link per hop ({tokens} tokens, plain greedy)\n");
    println!("| encoding | tokens/s | vs f32 | hidden-state bytes per token per hop |");
    println!("|---|---|---|---|");
    let mut f32_rate = None;
    for encoding in wire::ENCODINGS {
        let name = encoding.name();
        let bytes = SessionConfig::for_encoding(encoding, setup.hidden).activation_bytes;
        let (rate, _, _) = run(&setup, encoding, 0, tokens, next_request())?;
        let base = *f32_rate.get_or_insert(rate);
        println!("| {name} | {rate:.2} | {:.2}x | {bytes} |", rate / base);
    }
    Ok(())
}
