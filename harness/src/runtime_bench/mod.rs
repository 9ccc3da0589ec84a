//! `zkinfer bench runtime`: what the sharded runtime costs on this machine, in one run.
//! The command reads the model; [`run`] measures and returns the [`Report`].
//!
//! On one model, one prompt and `--tokens` greedy tokens it measures:
//! - generation tokens/s (prefill timed apart) of a single process on 1 and 2 threads, each a
//!   child `zkinfer bench runtime --in-process THREADS` (candle sizes its thread pool once per
//!   process); of 2- and 3-shard loopback chains of `zkinfer serve --threads 2` children (one
//!   node computes at a time, so each may use every core, as a node on its own machine would),
//!   driven by a [`Session`] as `zkinfer generate --nodes` drives them; and of llama.cpp on 2
//!   threads and on 1 (`scripts/llama_cpp_bench.py`, embedded in this binary);
//! - per activation encoding on the 2-shard chain: bytes per generated token on each hop, sent
//!   and received, counted by a loopback proxy in front of each node; and the log-prob drift
//!   against the single process, along the single process's own tokens (teacher forcing, so a
//!   drift is never confounded by a divergence), with how many greedy choices still agree;
//! - failover: three nodes, two of which serve the same range; the one in use is killed (by
//!   process id) halfway through; the latency of the token during which it died against the
//!   median token of the same run, and whether the tokens equal a no-fault run.
//!
//! Every child is a [`crate::children`] guard: none outlives the bench.

mod report;

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use client::generation::{Backend, GenerationError};
use client::session::{Session, SessionConfig};
use client::Hop;
use models::generate::Generator;
use models::model_id::ModelId;
use models::testing::TempDir;
use models::{argmax, Model, ModelShape};
use wire::{Encoding, TokenSampler};

use crate::children::{command, start_serve_children, ServeChild};
use crate::netem::{LinkSettings, WanProxy};
use report::load_average;
pub use report::{EncodingRow, Failover, HeadPicks, Report, Speed, Speeds};

/// The prompt of docs/model.md and of the llama.cpp fixture.
pub const PROMPT: &str = "The quick brown fox jumps over the lazy dog. In the beginning";
/// The llama.cpp driver, run with `--python` (on 2 threads, then on 1).
const LLAMA_CPP_BENCH: &str = include_str!("../../../scripts/llama_cpp_bench.py");
/// Installs llama-cpp-python into ~/.cache/zkinfer-llama-venv, where `--python` looks by default.
const INSTALL_LLAMA_CPP: &str = "bash scripts/llama_cpp.sh";
/// Threads of the single-process run compared with llama.cpp (same count on both sides).
const COMPARE_THREADS: usize = 2;
/// How long a node may take to answer one frame.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the bench could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Generation(Box<GenerationError>),
    #[error(transparent)]
    Children(#[from] crate::children::ChildError),
}

impl BenchError {
    fn failed(message: impl Into<String>) -> BenchError {
        BenchError::Failed(message.into())
    }
}

impl From<GenerationError> for BenchError {
    fn from(e: GenerationError) -> BenchError {
        BenchError::Generation(Box::new(e))
    }
}

/// One greedy (or teacher-forced) generation: timings, tokens and log-probs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    prompt_tokens: usize,
    prefill_s: f64,
    /// Seconds of each generated token's forward.
    token_s: Vec<f64>,
    tokens: Vec<u32>,
    /// log p(token) at each step, from the logits before it.
    logprobs: Vec<f64>,
    /// Steps whose argmax is the token taken (all of them when greedy).
    argmax_matches: usize,
}

impl Run {
    fn tokens_per_s(&self) -> f64 {
        self.token_s.len() as f64 / self.token_s.iter().sum::<f64>().max(1e-9)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn logprob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits.get(token as usize).map_or(f64::NAN, |&x| x as f64) - max - sum.ln()
}

/// What a forward gives the bench: the logits, or a head node's greedy pick.
enum Next {
    Logits(Vec<f32>),
    Picked { token: u32, logprob: f64 },
}

/// A generation back end as the bench drives it: [`Backend`] as is, or
/// instrumented ([`Remote`]).
trait Feed {
    fn feed(&mut self, tokens: &[u32]) -> Result<Next, BenchError>;
    /// Called before generated token `i` is fed.
    fn before(&mut self, _i: usize) -> Result<(), BenchError> {
        Ok(())
    }
}

impl Feed for Backend<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Next, BenchError> {
        Ok(Next::Logits(self.forward(tokens)?))
    }
}

/// Prefill, then `n` tokens one forward each: greedy, or `teacher`'s tokens.
fn decode(
    backend: &mut dyn Feed,
    prompt: &[u32],
    n: usize,
    teacher: Option<&[u32]>,
) -> Result<Run, BenchError> {
    let start = Instant::now();
    let mut next = backend.feed(prompt)?;
    let mut run = Run {
        prompt_tokens: prompt.len(),
        prefill_s: start.elapsed().as_secs_f64(),
        ..Run::default()
    };
    for i in 0..n {
        let best = match &next {
            Next::Logits(logits) => argmax(logits),
            Next::Picked { token, .. } => *token,
        };
        let token = match teacher {
            Some(t) => *t
                .get(i)
                .ok_or_else(|| BenchError::failed("teacher tokens too short"))?,
            None => best,
        };
        run.argmax_matches += usize::from(best == token);
        run.logprobs.push(match &next {
            Next::Logits(logits) => logprob(logits, token),
            Next::Picked { logprob, .. } if best == token => *logprob,
            Next::Picked { .. } => f64::NAN,
        });
        run.tokens.push(token);
        backend.before(i)?;
        let start = Instant::now();
        next = backend.feed(&[token])?;
        run.token_s.push(start.elapsed().as_secs_f64());
    }
    Ok(run)
}

/// The single-process measurement (`zkinfer bench runtime --in-process`, in
/// a child so that candle sizes its thread pool for it): an untimed warm-up
/// of the same shapes, then the timed greedy run.
pub fn single_process(model: &Model, prompt: &[u32], tokens: usize) -> Result<Run, BenchError> {
    let new = || Ok::<_, BenchError>(Backend::Local(Generator::new(model)?));
    decode(&mut new()?, prompt, 1, None)?;
    decode(&mut new()?, prompt, tokens, None)
}

/// What the bench measures with, and how far.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The `zkinfer` executable the children run (`serve`, `bench runtime --in-process`).
    pub zkinfer: PathBuf,
    pub model: PathBuf,
    pub shape: ModelShape,
    pub model_id: ModelId,
    /// [`PROMPT`] in the model's tokens.
    pub prompt: Vec<u32>,
    /// Greedy tokens per run.
    pub tokens: usize,
    /// The Python that runs llama.cpp (llama-cpp-python).
    pub python: PathBuf,
}

/// The configuration and the network runtime of one bench.
struct Setup {
    config: BenchConfig,
    runtime: tokio::runtime::Runtime,
    /// Request ids: a fresh one per session.
    next_request: u64,
}

impl Setup {
    /// A session over `hops` as `zkinfer generate --nodes` opens one;
    /// `remeasure: false` turns off the periodic pings (so that a byte count
    /// holds forwards only).
    fn session(
        &mut self,
        hops: Vec<Hop>,
        encoding: Encoding,
        remeasure: bool,
        standby: bool,
    ) -> Result<Backend<'static>, BenchError> {
        let defaults = SessionConfig::for_encoding(encoding, self.config.shape.hidden);
        let config = SessionConfig {
            io_timeout: NODE_TIMEOUT,
            remeasure_every: if remeasure {
                defaults.remeasure_every
            } else {
                0
            },
            standby,
            ..defaults
        };
        self.next_request = self.next_request.wrapping_add(1 << 20);
        let runtime = network_runtime()?;
        let session = runtime
            .block_on(Session::connect(
                hops,
                self.config.shape.layers,
                self.config.model_id,
                config,
                self.next_request,
            ))
            .map_err(|e| BenchError::failed(format!("connecting the chain: {e}")))?;
        Ok(Backend::Remote {
            runtime,
            session: Box::new(session),
        })
    }
}

/// A chain of nodes (a remote [`Backend`]), with an optional node to kill.
struct Remote<'a> {
    backend: Backend<'static>,
    /// Kill the node serving `layer` before generated token `at`.
    kill: Option<(usize, usize, &'a mut [ServeChild])>,
    killed: Option<(wire::transport::NodeAddr, Range<usize>)>,
    /// The generated token whose forward failed over.
    failover_at: Option<usize>,
    current: Option<usize>,
    /// Byte-counting proxies in front of the hops.
    proxies: Vec<WanProxy>,
    /// Counts at the first generated token.
    at_decode: Vec<(u64, u64)>,
    /// The head node picks greedily and sends its pick, as `zkinfer
    /// generate --nodes` has it, instead of the logits.
    head_picks: bool,
}

impl<'a> Remote<'a> {
    fn new(backend: Backend<'static>) -> Self {
        Remote {
            backend,
            kill: None,
            killed: None,
            failover_at: None,
            current: None,
            proxies: Vec::new(),
            at_decode: Vec::new(),
            head_picks: false,
        }
    }

    /// Per proxy, bytes (sent, received) per generated token since the first.
    fn bytes_per_token(&self, tokens: usize) -> Vec<(f64, f64)> {
        self.proxies
            .iter()
            .zip(&self.at_decode)
            .map(|(p, &(s0, r0))| {
                let (s, r) = p.bytes();
                (
                    (s - s0) as f64 / tokens as f64,
                    (r - r0) as f64 / tokens as f64,
                )
            })
            .collect()
    }

    fn end(mut self) {
        self.backend.finish();
    }

    fn session(&mut self) -> Result<&mut Session, BenchError> {
        self.backend
            .session_mut()
            .ok_or_else(|| BenchError::failed("the bench's chains run on nodes"))
    }
}

impl Feed for Remote<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Next, BenchError> {
        let failovers = self.backend.stats().failovers;
        let next = if self.head_picks {
            let Backend::Remote { runtime, session } = &mut self.backend else {
                return Err(BenchError::failed("the bench's chains run on nodes"));
            };
            runtime
                .block_on(session.feed_sampled(tokens, TokenSampler::Greedy))
                .map(|s| Next::Picked {
                    token: s.token,
                    logprob: s.logprob,
                })
                .map_err(|e| BenchError::failed(e.to_string()))
        } else {
            self.backend
                .forward(tokens)
                .map(Next::Logits)
                .map_err(BenchError::from)
        };
        for event in self.session()?.take_events() {
            progress(&format!("  {event}"));
        }
        if self.backend.stats().failovers > failovers && self.failover_at.is_none() {
            self.failover_at = self.current;
        }
        next
    }

    fn before(&mut self, i: usize) -> Result<(), BenchError> {
        self.current = Some(i);
        if i == 0 {
            self.at_decode = self.proxies.iter().map(WanProxy::bytes).collect();
        }
        if let Some((at, layer, nodes)) = self.kill.as_mut() {
            if *at == i {
                let hop = self
                    .backend
                    .session_mut()
                    .ok_or_else(|| BenchError::failed("the bench's chains run on nodes"))?
                    .route()
                    .iter()
                    .find(|h| h.layers.contains(layer))
                    .cloned()
                    .ok_or_else(|| BenchError::failed("no hop serves the layer to kill"))?;
                let node = nodes
                    .iter_mut()
                    .find(|n| wire::transport::NodeAddr::from(n.addr) == hop.addr)
                    .ok_or_else(|| BenchError::failed("the hop in use is not one of ours"))?;
                progress(&format!(
                    "  killing node {} (layers {}..{}, pid {}) before token {i}",
                    node.addr,
                    node.layers.start,
                    node.layers.end,
                    node.pid()
                ));
                node.kill();
                self.killed = Some((hop.addr, hop.layers));
            }
        }
        Ok(())
    }
}

fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[bench] {line}");
}

/// Runs the single process in a child on `threads` threads.
fn single_in_child(setup: &Setup, threads: usize) -> Result<Run, BenchError> {
    let out = command(&setup.config.zkinfer)
        .args(["bench", "runtime", "--model"])
        .arg(&setup.config.model)
        .args(["--tokens", &setup.config.tokens.to_string()])
        .args(["--in-process", &threads.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::failed(format!("starting the single-process run: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::failed(format!(
            "single process on {threads} threads: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::failed(format!("single-process output: {e}")))
}

/// llama.cpp through the embedded script, or why not.
fn llama_cpp(setup: &Setup, python: &Path, dir: &Path, threads: usize) -> Result<Run, BenchError> {
    let script = dir.join("llama_cpp_bench.py");
    std::fs::write(&script, LLAMA_CPP_BENCH)
        .map_err(|e| BenchError::failed(format!("{}: {e}", script.display())))?;
    let out = command(python)
        .arg(&script)
        .arg(&setup.config.model)
        .args(["--prompt", PROMPT])
        .args(["--tokens", &setup.config.tokens.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            BenchError::failed(format!(
                "cannot run {}: {e}; install llama-cpp-python with `{INSTALL_LLAMA_CPP}` or pass --python",
                python.display()
            ))
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            BenchError::failed(format!(
                "{} {} failed: {}",
                python.display(),
                script.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        })?;
    if value["measured"] != json!(true) {
        return Err(BenchError::failed(format!(
            "{} (with {})",
            value["reason"].as_str().unwrap_or("llama_cpp unavailable"),
            python.display()
        )));
    }
    let parse = || -> Option<Run> {
        let floats = |key: &str| -> Option<Vec<f64>> {
            value[key].as_array()?.iter().map(Value::as_f64).collect()
        };
        let tokens: Vec<u32> = value["tokens"]
            .as_array()?
            .iter()
            .map(|v| v.as_u64().map(|t| t as u32))
            .collect::<Option<_>>()?;
        Some(Run {
            prompt_tokens: value["prompt_tokens"].as_u64()? as usize,
            prefill_s: value["prefill_s"].as_f64()?,
            token_s: floats("token_s")?,
            argmax_matches: tokens.len(),
            tokens,
            logprobs: floats("logprobs")?,
        })
    };
    parse().ok_or_else(|| BenchError::failed(format!("unexpected llama.cpp output: {stdout}")))
}

/// A timed greedy run over a chain of nodes whose head picks, as `zkinfer
/// generate --nodes` runs, after an untimed warm-up request.
fn chain_speed(setup: &mut Setup, nodes: &[ServeChild]) -> Result<Run, BenchError> {
    let hops: Vec<Hop> = nodes.iter().map(ServeChild::hop).collect();
    let warm = setup.session(hops.clone(), Encoding::F32, true, false)?;
    let mut remote = Remote::new(warm);
    remote.head_picks = true;
    decode(&mut remote, &setup.config.prompt, 1, None)?;
    remote.end();
    let session = setup.session(hops, Encoding::F32, true, false)?;
    let mut remote = Remote::new(session);
    remote.head_picks = true;
    let run = decode(&mut remote, &setup.config.prompt, setup.config.tokens, None)?;
    remote.end();
    Ok(run)
}

/// Bytes per generated token the head node sends the client when it picks
/// (counted by a proxy in front of it), and the greedy tokens it picked.
fn head_pick_bytes(setup: &mut Setup, nodes: &[ServeChild]) -> Result<HeadPicks, BenchError> {
    let mut hops: Vec<Hop> = nodes.iter().map(ServeChild::hop).collect();
    let head = hops
        .last_mut()
        .ok_or_else(|| BenchError::failed("no nodes"))?;
    let proxy = setup
        .runtime
        .block_on(WanProxy::start(
            head.addr
                .socket()
                .ok_or_else(|| BenchError::failed("the head is not a TCP node"))?,
            LinkSettings::default(),
        ))
        .map_err(|e| BenchError::failed(format!("starting a byte-counting proxy: {e}")))?;
    head.addr = proxy.addr.into();
    let session = setup.session(hops, Encoding::F32, false, false)?;
    let mut remote = Remote::new(session);
    remote.head_picks = true;
    remote.proxies = vec![proxy];
    let run = decode(&mut remote, &setup.config.prompt, setup.config.tokens, None)?;
    let bytes = remote.bytes_per_token(setup.config.tokens);
    remote.end();
    Ok(HeadPicks {
        bytes_per_token: bytes.first().map_or(f64::NAN, |b| b.1),
        tokens: run.tokens,
    })
}

fn encoding_run(
    setup: &mut Setup,
    nodes: &[ServeChild],
    encoding: Encoding,
    reference: &Run,
) -> Result<EncodingRow, BenchError> {
    let mut hops = Vec::new();
    let mut proxies = Vec::new();
    for node in nodes {
        let proxy = setup
            .runtime
            .block_on(WanProxy::start(node.addr, LinkSettings::default()))
            .map_err(|e| BenchError::failed(format!("starting a byte-counting proxy: {e}")))?;
        hops.push(Hop {
            addr: proxy.addr.into(),
            layers: node.layers.clone(),
        });
        proxies.push(proxy);
    }
    let session = setup.session(hops, encoding, false, false)?;
    let mut remote = Remote::new(session);
    remote.proxies = proxies;
    let run = decode(
        &mut remote,
        &setup.config.prompt,
        setup.config.tokens,
        Some(&reference.tokens),
    )?;
    let bytes = remote.bytes_per_token(setup.config.tokens);
    remote.end();
    let drifts: Vec<f64> = run
        .logprobs
        .iter()
        .zip(&reference.logprobs)
        .map(|(a, b)| (a - b).abs())
        .collect();
    Ok(EncodingRow {
        encoding,
        hops: nodes
            .iter()
            .zip(bytes)
            .map(|(n, (s, r))| (n.layers.clone(), s, r))
            .collect(),
        mean_drift: drifts.iter().sum::<f64>() / drifts.len().max(1) as f64,
        max_drift: drifts.iter().copied().fold(0.0, f64::max),
        greedy_matches: run.argmax_matches,
        steps: run.tokens.len(),
    })
}

fn failover(
    setup: &mut Setup,
    nodes: &mut [ServeChild],
    layer: usize,
) -> Result<Failover, BenchError> {
    let hops: Vec<Hop> = nodes.iter().map(ServeChild::hop).collect();
    progress("failover: no-fault run");
    let session = setup.session(hops.clone(), Encoding::F32, true, true)?;
    let mut remote = Remote::new(session);
    let clean = decode(&mut remote, &setup.config.prompt, setup.config.tokens, None)?;
    remote.end();
    let at = setup.config.tokens / 2;
    progress(&format!(
        "failover: a node of layer {layer} dies before token {at}"
    ));
    let session = setup.session(hops, Encoding::F32, true, true)?;
    let mut remote = Remote::new(session);
    remote.kill = Some((at, layer, nodes));
    let run = decode(&mut remote, &setup.config.prompt, setup.config.tokens, None)?;
    let failover_at = remote.failover_at;
    let killed = remote
        .killed
        .as_ref()
        .map(|(a, l)| format!("{a} ({}..{})", l.start, l.end))
        .unwrap_or_else(|| "none".into());
    remote.end();
    let failover_token_s = failover_at.map_or(f64::NAN, |i| run.token_s[i]);
    let others: Vec<f64> = run
        .token_s
        .iter()
        .enumerate()
        .filter(|&(i, _)| Some(i) != failover_at)
        .map(|(_, &t)| t)
        .collect();
    Ok(Failover {
        killed,
        at: failover_at,
        failover_token_s,
        median_token_s: median(&others),
        no_fault_median_token_s: median(&clean.token_s),
        tokens_match: run.tokens == clean.tokens,
        // The standby held the span's cache: the failover replays nothing.
        replayed_positions: 0,
    })
}

fn network_runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::failed(format!("starting the network runtime: {e}")))
}

/// Runs every measurement of the bench (see the module docs).
pub fn run(config: BenchConfig) -> Result<Report, BenchError> {
    if config.tokens < 4 {
        return Err(BenchError::failed("--tokens must be at least 4"));
    }
    if config.shape.layers < 3 {
        return Err(BenchError::failed(format!(
            "{}: {} layers cannot be split three ways",
            config.model.display(),
            config.shape.layers
        )));
    }
    let dir = TempDir::new("bench")
        .map_err(|e| BenchError::failed(format!("a scratch directory: {e}")))?;
    let python = config.python.clone();
    let shape = config.shape;
    let runtime = network_runtime()?;
    let mut setup = Setup {
        config,
        runtime,
        next_request: u64::from(std::process::id()) << 32,
    };
    let started = Instant::now();
    let load_before = load_average();
    let n = shape.layers;

    progress("single process, 1 thread");
    let single1 = single_in_child(&setup, 1)?;
    progress("single process, 2 threads");
    let single2 = single_in_child(&setup, COMPARE_THREADS)?;
    let llama = [COMPARE_THREADS, 1].map(|threads| {
        progress(&format!(
            "llama.cpp, {threads} thread(s) ({})",
            python.display()
        ));
        let run = llama_cpp(&setup, &python, dir.path(), threads);
        if let Err(why) = &run {
            progress(&format!("llama.cpp not measured: {why}"));
        }
        (threads, run)
    });

    let half = n / 2;
    let two_ranges = [0..half, half..n];
    let three_ranges = [0..n / 3, n / 3..2 * n / 3, 2 * n / 3..n];
    progress(&format!("2-shard chain {}..{} | {}..{}", 0, half, half, n));
    let mut two = start_serve_children(
        &setup.config.zkinfer,
        &setup.config.model,
        &two_ranges,
        COMPARE_THREADS,
        dir.path(),
    )?;
    let chain2 = chain_speed(&mut setup, &two)?;
    progress("activation encodings on the 2-shard chain");
    let mut encodings = Vec::new();
    for encoding in wire::ENCODINGS {
        progress(&format!("  {}", Encoding::name(encoding)));
        encodings.push(encoding_run(&mut setup, &two, encoding, &single1)?);
    }
    progress("bytes from a head node that picks");
    let head_picks = head_pick_bytes(&mut setup, &two)?;
    // A second node for the second range: failover has somewhere to go.
    two.extend(start_serve_children(
        &setup.config.zkinfer,
        &setup.config.model,
        std::slice::from_ref(&two_ranges[1]),
        COMPARE_THREADS,
        dir.path(),
    )?);
    let failover = failover(&mut setup, &mut two, half)?;
    drop(two);

    progress(&format!(
        "3-shard chain {}..{} | {}..{} | {}..{}",
        three_ranges[0].start,
        three_ranges[0].end,
        three_ranges[1].start,
        three_ranges[1].end,
        three_ranges[2].start,
        three_ranges[2].end
    ));
    let three = start_serve_children(
        &setup.config.zkinfer,
        &setup.config.model,
        &three_ranges,
        COMPARE_THREADS,
        dir.path(),
    )?;
    let chain3 = chain_speed(&mut setup, &three)?;
    drop(three);

    let show = |r: &[Range<usize>]| {
        r.iter()
            .map(|l| format!("{}..{}", l.start, l.end))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let measured = |name: String, run: Run| Speed {
        name,
        run: Some(run),
        note: String::new(),
    };
    let [llama_2, llama_1] = llama.map(|(threads, run)| {
        let name = format!(
            "llama.cpp, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        match run {
            Ok(run) => measured(name, run),
            Err(why) => Speed {
                name,
                run: None,
                note: format!("not measured: {why}"),
            },
        }
    });
    let speeds = Speeds {
        single_1_thread: measured("single process, 1 thread".into(), single1.clone()),
        single_2_threads: measured(
            format!("single process, {COMPARE_THREADS} threads"),
            single2,
        ),
        chain_2_shards: measured(
            format!(
                "2-shard chain {} (serve --threads {COMPARE_THREADS})",
                show(&two_ranges)
            ),
            chain2,
        ),
        chain_3_shards: measured(
            format!(
                "3-shard chain {} (serve --threads {COMPARE_THREADS})",
                show(&three_ranges)
            ),
            chain3,
        ),
        llama_cpp_2_threads: llama_2,
        llama_cpp_1_thread: llama_1,
    };

    let report = Report {
        model: setup.config.model.display().to_string(),
        prompt_tokens: setup.config.prompt.len(),
        tokens: setup.config.tokens,
        speeds,
        encodings,
        head_picks,
        failover,
        reference: single1,
        elapsed_s: started.elapsed().as_secs_f64(),
        load: [load_before, load_average()],
    };
    Ok(report)
}
