//! `zkinfer bench runtime`: what the sharded runtime costs on this machine, in one run.
//!
//! On one model, one prompt and `--tokens` greedy tokens it measures:
//! - generation tokens/s (prefill timed apart) of a single process on 1 and 2 threads, each a
//!   child `zkinfer bench runtime --in-process THREADS` (candle sizes its thread pool once per
//!   process); of 2- and 3-shard loopback chains of `zkinfer serve --threads 1` children, driven
//!   by a [`Session`] as `zkinfer generate --nodes` drives them; and of llama.cpp on 2 threads and on 1
//!   (`scripts/llama_cpp_bench.py`, embedded in this binary);
//! - per activation encoding on the 2-shard chain: bytes per generated token on each hop, sent
//!   and received, counted by a loopback proxy in front of each node; and the log-prob drift
//!   against the single process, along the single process's own tokens (teacher forcing, so a
//!   drift is never confounded by a divergence), with how many greedy choices still agree;
//! - failover: three nodes, two of which serve the same range; the one in use is killed (by
//!   process id) halfway through; the latency of the token during which it died against the
//!   median token of the same run, and whether the tokens equal a no-fault run.
//!
//! Every child is killed on every exit path: by a guard when it drops (errors included), by
//! `PR_SET_PDEATHSIG` (Linux) when the bench itself dies, and by the terminal's Ctrl-C, which
//! reaches the whole process group.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use client::session::{Session, SessionConfig};
use client::Hop;
use harness::netem::{LinkSettings, WanProxy};
use models::generate::Generator;
use models::model_id::ModelId;
use models::testing::TempDir;
use models::tokenizer::Tokenizer;
use models::{argmax, Model, ModelShape};
use wire::Encoding;

use super::model::{open_gguf, packaged_model_path};
use super::serve::{set_threads, tokio_runtime};
use super::CliError;
use crate::cli::{BenchCommand, BenchRuntimeArgs};

/// The prompt of docs/model.md and of the llama.cpp fixture.
pub const PROMPT: &str = "The quick brown fox jumps over the lazy dog. In the beginning";
/// The llama.cpp driver, run with `--python` (on 2 threads, then on 1).
const LLAMA_CPP_BENCH: &str = include_str!("../../scripts/llama_cpp_bench.py");
const INSTALL_LLAMA_CPP: &str =
    "python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install cmake ninja llama-cpp-python";
/// Threads of the single-process run compared with llama.cpp (same count on both sides).
const COMPARE_THREADS: usize = 2;
/// How long a node may take to answer one frame.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// The targets each figure is held to (docs/runtime-bench.md).
const TARGET_VS_LLAMA_CPP: f64 = 0.5;
const TARGET_CHAIN_VS_SINGLE: f64 = 0.85;
const TARGET_Q8_BYTES: f64 = 0.27;
const TARGET_Q8_DRIFT: f64 = 0.01;
const TARGET_FAILOVER: f64 = 3.0;

pub fn run(command: BenchCommand) -> Result<ExitCode, CliError> {
    match command {
        BenchCommand::Runtime(args) => runtime_bench(args),
        BenchCommand::Conformance(args) => super::conformance::run(args),
        BenchCommand::Throughput(args) => super::throughput::run(args),
    }
}

/// One greedy (or teacher-forced) generation: timings, tokens and log-probs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Run {
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

/// Something that turns tokens into next-token logits.
trait Feed {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CliError>;
    /// Called before generated token `i` is fed.
    fn before(&mut self, _i: usize) -> Result<(), CliError> {
        Ok(())
    }
}

/// Prefill, then `n` tokens one forward each: greedy, or `teacher`'s tokens.
fn decode(
    backend: &mut dyn Feed,
    prompt: &[u32],
    n: usize,
    teacher: Option<&[u32]>,
) -> Result<Run, CliError> {
    let start = Instant::now();
    let mut logits = backend.feed(prompt)?;
    let mut run = Run {
        prompt_tokens: prompt.len(),
        prefill_s: start.elapsed().as_secs_f64(),
        ..Run::default()
    };
    for i in 0..n {
        let best = argmax(&logits);
        let token = match teacher {
            Some(t) => *t
                .get(i)
                .ok_or_else(|| CliError::failed("teacher tokens too short"))?,
            None => best,
        };
        run.argmax_matches += usize::from(best == token);
        run.logprobs.push(logprob(&logits, token));
        run.tokens.push(token);
        backend.before(i)?;
        let start = Instant::now();
        logits = backend.feed(&[token])?;
        run.token_s.push(start.elapsed().as_secs_f64());
    }
    Ok(run)
}

struct Local<'a>(Generator<'a>);

impl Feed for Local<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CliError> {
        self.0.feed(tokens).map_err(CliError::from)
    }
}

/// `--in-process THREADS`: the single-process measurement, printed as JSON.
fn in_process(args: &BenchRuntimeArgs, threads: usize) -> Result<ExitCode, CliError> {
    set_threads(Some(threads));
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&path)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let shape = Model::shape_of(&content)?;
    let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..shape.layers)?;
    let prompt = tokenizer.encode(PROMPT, true);
    let new = || Generator::new(&model).map_err(CliError::from);
    // Untimed warm-up of the same shapes: first-use allocations do not count.
    decode(&mut Local(new()?), &prompt, 1, None)?;
    let run = decode(&mut Local(new()?), &prompt, args.tokens, None)?;
    println!("{}", serde_json::to_string(&run)?);
    Ok(ExitCode::SUCCESS)
}

/// A command whose process is killed when this one dies (Linux), so that no
/// child outlives the bench, whatever ends it.
pub(super) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    #[allow(unused_mut)]
    let mut cmd = Command::new(program);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A `zkinfer serve` child, killed and reaped on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    layers: Range<usize>,
    /// Kept open: the node must never write to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Node {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn hop(&self) -> Hop {
        Hop {
            addr: self.addr,
            layers: self.layers.clone(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills and reaps children that are not yet wrapped in a [`Node`].
fn kill_all(children: &mut [(Child, Range<usize>, PathBuf)]) {
    for (child, _, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Starts one `zkinfer serve --threads 1` per range on ephemeral loopback
/// ports (loading in parallel) and waits until each listens.
fn start_nodes(model: &Path, ranges: &[Range<usize>], dir: &Path) -> Result<Vec<Node>, CliError> {
    let exe = std::env::current_exe()?;
    let mut started = Vec::new();
    for layers in ranges {
        let log = dir.join(format!(
            "serve-{}-{}-{}.log",
            layers.start,
            layers.end,
            started.len()
        ));
        let spawned = std::fs::File::create(&log)
            .map_err(|e| format!("{}: {e}", log.display()))
            .and_then(|stderr| {
                command(&exe)
                    .args(["serve", "--model"])
                    .arg(model)
                    .args(["--layers", &format!("{}..{}", layers.start, layers.end)])
                    .args(["--listen", "127.0.0.1:0", "--threads", "1"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(stderr)
                    .spawn()
                    .map_err(|e| format!("starting zkinfer serve: {e}"))
            });
        match spawned {
            Ok(child) => started.push((child, layers.clone(), log)),
            Err(e) => {
                kill_all(&mut started);
                return Err(CliError::failed(e));
            }
        }
    }
    let mut nodes = Vec::new();
    let mut pending: Vec<_> = started.into_iter().rev().collect();
    while let Some((mut child, layers, log)) = pending.pop() {
        let mut line = String::new();
        let stdout = child.stdout.take().map(BufReader::new);
        let read = stdout.map(|mut out| (out.read_line(&mut line), out));
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(": ").next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, addr) {
            (Some((Ok(_), stdout)), Some(addr)) => nodes.push(Node {
                child,
                addr,
                layers,
                _stdout: stdout,
            }),
            _ => {
                // The nodes already started die with `nodes`.
                let _ = child.kill();
                let _ = child.wait();
                kill_all(&mut pending);
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(CliError::failed(format!(
                    "zkinfer serve --layers {}..{} did not start: {}",
                    layers.start,
                    layers.end,
                    log.trim()
                )));
            }
        }
    }
    Ok(nodes)
}

/// What the bench needs of the model, read once.
struct Setup {
    model: PathBuf,
    shape: ModelShape,
    id: ModelId,
    prompt: Vec<u32>,
    runtime: tokio::runtime::Runtime,
    tokens: usize,
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
    ) -> Result<Session, CliError> {
        let bytes_per_value = match encoding {
            Encoding::F32 => 4,
            Encoding::F16 => 2,
            Encoding::Q8 => 1,
        };
        let defaults = SessionConfig::default();
        let config = SessionConfig {
            encoding,
            io_timeout: NODE_TIMEOUT,
            activation_bytes: self.shape.hidden * bytes_per_value,
            remeasure_every: if remeasure {
                defaults.remeasure_every
            } else {
                0
            },
            ..defaults
        };
        self.next_request = self.next_request.wrapping_add(1 << 20);
        self.runtime
            .block_on(Session::connect(
                hops,
                self.shape.layers,
                self.id,
                config,
                self.next_request,
            ))
            .map_err(|e| CliError::failed(format!("connecting the chain: {e}")))
    }
}

/// A chain of nodes behind a [`Session`], with an optional node to kill.
struct Remote<'a> {
    runtime: &'a tokio::runtime::Runtime,
    session: Session,
    /// Kill the node serving `layer` before generated token `at`.
    kill: Option<(usize, usize, &'a mut [Node])>,
    killed: Option<(SocketAddr, Range<usize>)>,
    /// The generated token whose forward failed over.
    failover_at: Option<usize>,
    current: Option<usize>,
    /// Byte-counting proxies in front of the hops.
    proxies: Vec<WanProxy>,
    /// Counts at the first generated token.
    at_decode: Vec<(u64, u64)>,
}

impl<'a> Remote<'a> {
    fn new(runtime: &'a tokio::runtime::Runtime, session: Session) -> Self {
        Remote {
            runtime,
            session,
            kill: None,
            killed: None,
            failover_at: None,
            current: None,
            proxies: Vec::new(),
            at_decode: Vec::new(),
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
        self.runtime.block_on(self.session.end());
    }
}

impl Feed for Remote<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CliError> {
        let failovers = self.session.stats().failovers;
        let logits = self
            .runtime
            .block_on(self.session.feed(tokens))
            .map_err(CliError::from);
        for event in self.session.take_events() {
            progress(&format!("  {event}"));
        }
        if self.session.stats().failovers > failovers && self.failover_at.is_none() {
            self.failover_at = self.current;
        }
        logits
    }

    fn before(&mut self, i: usize) -> Result<(), CliError> {
        self.current = Some(i);
        if i == 0 {
            self.at_decode = self.proxies.iter().map(WanProxy::bytes).collect();
        }
        if let Some((at, layer, nodes)) = self.kill.as_mut() {
            if *at == i {
                let hop = self
                    .session
                    .route()
                    .iter()
                    .find(|h| h.layers.contains(layer))
                    .cloned()
                    .ok_or_else(|| CliError::failed("no hop serves the layer to kill"))?;
                let node = nodes
                    .iter_mut()
                    .find(|n| n.addr == hop.addr)
                    .ok_or_else(|| CliError::failed("the hop in use is not one of ours"))?;
                progress(&format!(
                    "  killing node {} (layers {}..{}, pid {}) before token {i}",
                    node.addr,
                    node.layers.start,
                    node.layers.end,
                    node.child.id()
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

/// A throughput row.
struct Speed {
    name: String,
    run: Option<Run>,
    /// Why there is no run.
    note: String,
}

impl Speed {
    fn tokens_per_s(&self) -> Option<f64> {
        self.run.as_ref().map(Run::tokens_per_s)
    }
}

/// Runs the single process in a child on `threads` threads.
fn single_in_child(setup: &Setup, threads: usize) -> Result<Run, CliError> {
    let exe = std::env::current_exe()?;
    let out = command(exe)
        .args(["bench", "runtime", "--model"])
        .arg(&setup.model)
        .args(["--tokens", &setup.tokens.to_string()])
        .args(["--in-process", &threads.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::failed(format!("starting the single-process run: {e}")))?;
    if !out.status.success() {
        return Err(CliError::failed(format!(
            "single process on {threads} threads: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::failed(format!("single-process output: {e}")))
}

/// llama.cpp through the embedded script, or why not.
fn llama_cpp(setup: &Setup, python: &Path, dir: &Path, threads: usize) -> Result<Run, String> {
    let script = dir.join("llama_cpp_bench.py");
    std::fs::write(&script, LLAMA_CPP_BENCH).map_err(|e| format!("{}: {e}", script.display()))?;
    let out = command(python)
        .arg(&script)
        .arg(&setup.model)
        .args(["--prompt", PROMPT])
        .args(["--tokens", &setup.tokens.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run {}: {e}; install llama-cpp-python ({INSTALL_LLAMA_CPP}) and pass --python",
                python.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            format!(
                "{} {} failed: {}",
                python.display(),
                script.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        })?;
    if value["measured"] != json!(true) {
        return Err(format!(
            "{} (with {})",
            value["reason"].as_str().unwrap_or("llama_cpp unavailable"),
            python.display()
        ));
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
    parse().ok_or_else(|| format!("unexpected llama.cpp output: {stdout}"))
}

/// A timed greedy run over a chain of nodes, after an untimed warm-up request.
fn chain_speed(setup: &mut Setup, nodes: &[Node]) -> Result<Run, CliError> {
    let hops: Vec<Hop> = nodes.iter().map(Node::hop).collect();
    let warm = setup.session(hops.clone(), Encoding::F32, true)?;
    let mut remote = Remote::new(&setup.runtime, warm);
    decode(&mut remote, &setup.prompt, 1, None)?;
    remote.end();
    let session = setup.session(hops, Encoding::F32, true)?;
    let mut remote = Remote::new(&setup.runtime, session);
    let run = decode(&mut remote, &setup.prompt, setup.tokens, None)?;
    remote.end();
    Ok(run)
}

/// One encoding on the 2-shard chain, teacher-forced with `reference`'s tokens.
struct EncodingRow {
    encoding: Encoding,
    /// Per hop: layers, bytes sent to and received from the node per token.
    hops: Vec<(Range<usize>, f64, f64)>,
    mean_drift: f64,
    max_drift: f64,
    greedy_matches: usize,
    steps: usize,
}

impl EncodingRow {
    /// Hidden-state bytes per token crossing the cut(s): received from every
    /// hop but the last, sent to every hop but the first.
    fn hidden_bytes(&self) -> f64 {
        let n = self.hops.len();
        let received: f64 = self.hops[..n - 1].iter().map(|h| h.2).sum();
        let sent: f64 = self.hops[1..].iter().map(|h| h.1).sum();
        received + sent
    }

    /// Hidden-state bytes per token the client sends in its chosen encoding.
    fn hidden_bytes_sent(&self) -> f64 {
        self.hops[1..].iter().map(|h| h.1).sum()
    }
}

fn encoding_run(
    setup: &mut Setup,
    nodes: &[Node],
    encoding: Encoding,
    reference: &Run,
) -> Result<EncodingRow, CliError> {
    let mut hops = Vec::new();
    let mut proxies = Vec::new();
    for node in nodes {
        let proxy = setup
            .runtime
            .block_on(WanProxy::start(node.addr, LinkSettings::default()))
            .map_err(|e| CliError::failed(format!("starting a byte-counting proxy: {e}")))?;
        hops.push(Hop {
            addr: proxy.addr,
            layers: node.layers.clone(),
        });
        proxies.push(proxy);
    }
    let session = setup.session(hops, encoding, false)?;
    let mut remote = Remote::new(&setup.runtime, session);
    remote.proxies = proxies;
    let run = decode(
        &mut remote,
        &setup.prompt,
        setup.tokens,
        Some(&reference.tokens),
    )?;
    let bytes = remote.bytes_per_token(setup.tokens);
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

/// The failover measurement.
struct Failover {
    killed: String,
    at: Option<usize>,
    failover_token_s: f64,
    median_token_s: f64,
    no_fault_median_token_s: f64,
    tokens_match: bool,
    replayed_positions: usize,
}

fn failover(setup: &mut Setup, nodes: &mut [Node], layer: usize) -> Result<Failover, CliError> {
    let hops: Vec<Hop> = nodes.iter().map(Node::hop).collect();
    progress("failover: no-fault run");
    let session = setup.session(hops.clone(), Encoding::F32, true)?;
    let mut remote = Remote::new(&setup.runtime, session);
    let clean = decode(&mut remote, &setup.prompt, setup.tokens, None)?;
    remote.end();
    let at = setup.tokens / 2;
    progress(&format!(
        "failover: a node of layer {layer} dies before token {at}"
    ));
    let session = setup.session(hops, Encoding::F32, true)?;
    let runtime = &setup.runtime;
    let mut remote = Remote::new(runtime, session);
    remote.kill = Some((at, layer, nodes));
    let run = decode(&mut remote, &setup.prompt, setup.tokens, None)?;
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
        replayed_positions: setup.prompt.len() + at,
    })
}

fn runtime_bench(args: BenchRuntimeArgs) -> Result<ExitCode, CliError> {
    if let Some(threads) = args.in_process {
        return in_process(&args, threads.max(1));
    }
    if args.tokens < 4 {
        return Err(CliError::failed("--tokens must be at least 4"));
    }
    let model = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&model)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let shape = Model::shape_of(&content)?;
    if shape.layers < 3 {
        return Err(CliError::failed(format!(
            "{}: {} layers cannot be split three ways",
            model.display(),
            shape.layers
        )));
    }
    let id = models::model_id::model_id(&content, &mut reader)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", model.display())))?;
    drop(reader);
    let dir =
        TempDir::new("bench").map_err(|e| CliError::failed(format!("a scratch directory: {e}")))?;
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = PathBuf::from("/tmp/llvenv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let mut setup = Setup {
        prompt: tokenizer.encode(PROMPT, true),
        model,
        shape,
        id,
        runtime: tokio_runtime()?,
        tokens: args.tokens,
        next_request: u64::from(std::process::id()) << 32,
    };
    let started = Instant::now();
    let load_before = load_average();
    let n = shape.layers;
    let mut speeds = Vec::new();

    progress("single process, 1 thread");
    let single1 = single_in_child(&setup, 1)?;
    progress("single process, 2 threads");
    let single2 = single_in_child(&setup, COMPARE_THREADS)?;
    let mut llama = Vec::new();
    for threads in [COMPARE_THREADS, 1] {
        progress(&format!(
            "llama.cpp, {threads} thread(s) ({})",
            python.display()
        ));
        let run = llama_cpp(&setup, &python, dir.path(), threads);
        if let Err(why) = &run {
            progress(&format!("llama.cpp not measured: {why}"));
        }
        llama.push((threads, run));
    }

    let half = n / 2;
    let two_ranges = [0..half, half..n];
    let three_ranges = [0..n / 3, n / 3..2 * n / 3, 2 * n / 3..n];
    progress(&format!("2-shard chain {}..{} | {}..{}", 0, half, half, n));
    let mut two = start_nodes(&setup.model, &two_ranges, dir.path())?;
    let chain2 = chain_speed(&mut setup, &two)?;
    progress("activation encodings on the 2-shard chain");
    let mut encodings = Vec::new();
    for encoding in [Encoding::F32, Encoding::F16, Encoding::Q8] {
        progress(&format!("  {}", Encoding::name(encoding)));
        encodings.push(encoding_run(&mut setup, &two, encoding, &single1)?);
    }
    // A second node for the second range: failover has somewhere to go.
    two.extend(start_nodes(
        &setup.model,
        std::slice::from_ref(&two_ranges[1]),
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
    let three = start_nodes(&setup.model, &three_ranges, dir.path())?;
    let chain3 = chain_speed(&mut setup, &three)?;
    drop(three);

    let show = |r: &[Range<usize>]| {
        r.iter()
            .map(|l| format!("{}..{}", l.start, l.end))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    speeds.push(Speed {
        name: "single process, 1 thread".into(),
        run: Some(single1.clone()),
        note: String::new(),
    });
    speeds.push(Speed {
        name: format!("single process, {COMPARE_THREADS} threads"),
        run: Some(single2.clone()),
        note: String::new(),
    });
    speeds.push(Speed {
        name: format!("2-shard chain {} (serve --threads 1)", show(&two_ranges)),
        run: Some(chain2),
        note: String::new(),
    });
    speeds.push(Speed {
        name: format!("3-shard chain {} (serve --threads 1)", show(&three_ranges)),
        run: Some(chain3),
        note: String::new(),
    });
    for (threads, run) in llama {
        let (run, note) = match run {
            Ok(run) => (Some(run), String::new()),
            Err(why) => (None, format!("not measured: {why}")),
        };
        speeds.push(Speed {
            name: format!(
                "llama.cpp, {threads} thread{}",
                if threads == 1 { "" } else { "s" }
            ),
            run,
            note,
        });
    }

    let report = Report {
        model: setup.model.display().to_string(),
        prompt_tokens: setup.prompt.len(),
        tokens: setup.tokens,
        speeds,
        encodings,
        failover,
        reference: single1,
        elapsed_s: started.elapsed().as_secs_f64(),
        load: [load_before, load_average()],
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything measured.
struct Report {
    model: String,
    prompt_tokens: usize,
    tokens: usize,
    speeds: Vec<Speed>,
    encodings: Vec<EncodingRow>,
    failover: Failover,
    /// The single-process 1-thread run: the reference of tokens and drift.
    reference: Run,
    elapsed_s: f64,
    /// The 1-minute load average at the start and at the end (other work on
    /// the machine skews every figure, two threads most).
    load: [Option<f64>; 2],
}

/// One target: what was measured against what was asked.
struct Target {
    name: &'static str,
    measured: Option<f64>,
    bound: f64,
    at_most: bool,
    detail: String,
}

impl Target {
    fn met(&self) -> Option<bool> {
        self.measured.map(|m| {
            if self.at_most {
                m <= self.bound
            } else {
                m >= self.bound
            }
        })
    }

    fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        }
    }
}

impl Report {
    fn speed(&self, i: usize) -> Option<f64> {
        self.speeds.get(i).and_then(Speed::tokens_per_s)
    }

    fn targets(&self) -> Vec<Target> {
        let (single1, single2, chain2, llama) =
            (self.speed(0), self.speed(1), self.speed(2), self.speed(4));
        let best_single = match (single1, single2) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let f32_row = self.encodings.iter().find(|e| e.encoding == Encoding::F32);
        let q8_row = self.encodings.iter().find(|e| e.encoding == Encoding::Q8);
        let q8_sent = match (q8_row, f32_row) {
            (Some(q), Some(f)) => Some(q.hidden_bytes_sent() / f.hidden_bytes_sent()),
            _ => None,
        };
        let q8_both = match (q8_row, f32_row) {
            (Some(q), Some(f)) => Some(q.hidden_bytes() / f.hidden_bytes()),
            _ => None,
        };
        let fo = &self.failover;
        vec![
            Target {
                name: "single process (2 threads) / llama.cpp (2 threads), tokens/s",
                measured: ratio(single2, llama),
                bound: TARGET_VS_LLAMA_CPP,
                at_most: false,
                detail: format!(
                    "1 thread each: {}",
                    fmt_opt(ratio(single1, self.speed(5)), 2)
                ),
            },
            Target {
                name: "2-shard chain / best single process, tokens/s",
                measured: ratio(chain2, best_single),
                bound: TARGET_CHAIN_VS_SINGLE,
                at_most: false,
                detail: format!(
                    "vs 1 thread {}, vs 2 threads {}",
                    fmt_opt(ratio(chain2, single1), 2),
                    fmt_opt(ratio(chain2, single2), 2)
                ),
            },
            Target {
                name: "q8 / f32 hidden-state bytes sent to the second shard",
                measured: q8_sent,
                bound: TARGET_Q8_BYTES,
                at_most: true,
                detail: "the client's chosen encoding".into(),
            },
            Target {
                name: "q8 / f32 hidden-state bytes across the cut, both legs",
                measured: q8_both,
                bound: TARGET_Q8_BYTES,
                at_most: true,
                detail: "first shard's answer and second shard's input, framing included".into(),
            },
            Target {
                name: "q8 mean |Δ log-prob| vs single process f32, nats",
                measured: q8_row.map(|q| q.mean_drift),
                bound: TARGET_Q8_DRIFT,
                at_most: true,
                detail: String::new(),
            },
            Target {
                name: "failover token / median token, latency",
                measured: (fo.median_token_s > 0.0 && fo.at.is_some())
                    .then(|| fo.failover_token_s / fo.median_token_s),
                bound: TARGET_FAILOVER,
                at_most: true,
                detail: format!("replays {} positions chunk by chunk", fo.replayed_positions),
            },
        ]
    }

    fn json(&self) -> Value {
        let reference = &self.reference.tokens;
        let speeds: Vec<Value> = self
            .speeds
            .iter()
            .map(|s| match &s.run {
                Some(r) => json!({
                    "name": s.name,
                    "measured": true,
                    "prefill_s": r.prefill_s,
                    "tokens_per_s": r.tokens_per_s(),
                    "median_token_ms": median(&r.token_s) * 1e3,
                    "tokens_equal_single_process": agree(&r.tokens, reference),
                }),
                None => json!({"name": s.name, "measured": false, "note": s.note}),
            })
            .collect();
        let encodings: Vec<Value> = self
            .encodings
            .iter()
            .map(|e| {
                json!({
                    "encoding": Encoding::name(e.encoding),
                    "hops": e.hops.iter().map(|(l, s, r)| json!({
                        "layers": [l.start, l.end],
                        "sent_bytes_per_token": s,
                        "received_bytes_per_token": r,
                    })).collect::<Vec<_>>(),
                    "hidden_bytes_per_token": e.hidden_bytes(),
                    "hidden_bytes_sent_per_token": e.hidden_bytes_sent(),
                    "mean_abs_logprob_drift": e.mean_drift,
                    "max_abs_logprob_drift": e.max_drift,
                    "greedy_matches": e.greedy_matches,
                    "steps": e.steps,
                })
            })
            .collect();
        let fo = &self.failover;
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "measured": t.measured,
                    "target": t.bound,
                    "at_most": t.at_most,
                    "verdict": t.verdict(),
                    "detail": t.detail,
                })
            })
            .collect();
        json!({
            "model": self.model,
            "prompt": PROMPT,
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.tokens,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "throughput": speeds,
            "encodings": encodings,
            "failover": {
                "killed": fo.killed,
                "failover_token": fo.at,
                "failover_token_ms": fo.failover_token_s * 1e3,
                "median_token_ms": fo.median_token_s * 1e3,
                "no_fault_median_token_ms": fo.no_fault_median_token_s * 1e3,
                "ratio": fo.failover_token_s / fo.median_token_s,
                "tokens_equal_no_fault_run": fo.tokens_match,
                "replayed_positions": fo.replayed_positions,
            },
            "targets": targets,
            "elapsed_s": self.elapsed_s,
            "load_average_1min": self.load,
        })
    }

    fn print(&self) {
        let reference = &self.reference.tokens;
        println!(
            "zkinfer bench runtime: {}\n{} prompt tokens, {} greedy tokens, {} cores, load average {} -> {}, {:.0} s in all\n",
            self.model,
            self.prompt_tokens,
            self.tokens,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            fmt_opt(self.load[0], 2),
            fmt_opt(self.load[1], 2),
            self.elapsed_s
        );
        println!(
            "{:<56} {:>9} {:>9} {:>10}  tokens = single process",
            "generation", "prefill s", "tokens/s", "ms/token"
        );
        for s in &self.speeds {
            match &s.run {
                Some(r) => println!(
                    "{:<56} {:>9.3} {:>9.2} {:>10.1}  {}",
                    s.name,
                    r.prefill_s,
                    r.tokens_per_s(),
                    median(&r.token_s) * 1e3,
                    agree(&r.tokens, reference)
                ),
                None => println!("{:<56} {}", s.name, s.note),
            }
        }
        println!(
            "\n{:<8} {:>28} {:>28} {:>11} {:>11} {:>8}",
            "encoding",
            "bytes/token first hop",
            "bytes/token second hop",
            "mean |Δlp|",
            "max |Δlp|",
            "greedy"
        );
        if let Some(e) = self.encodings.first() {
            let head = |i: usize| {
                e.hops
                    .get(i)
                    .map(|(l, _, _)| format!("{}..{} sent / received", l.start, l.end))
                    .unwrap_or_default()
            };
            println!("{:<8} {:>28} {:>28}", "", head(0), head(1));
        }
        for e in &self.encodings {
            let hop = |i: usize| {
                e.hops
                    .get(i)
                    .map(|(_, s, r)| format!("{s:.0} / {r:.0}"))
                    .unwrap_or_default()
            };
            println!(
                "{:<8} {:>28} {:>28} {:>11.5} {:>11.5} {:>8}",
                Encoding::name(e.encoding),
                hop(0),
                hop(1),
                e.mean_drift,
                e.max_drift,
                format!("{}/{}", e.greedy_matches, e.steps)
            );
        }
        let fo = &self.failover;
        println!(
            "\nfailover: killed {} before token {}; that token took {:.0} ms, the median token {:.1} ms \
             ({:.1} ms without a fault): {:.1}x; tokens {} the no-fault run",
            fo.killed,
            fo.at.map_or("-".into(), |i| i.to_string()),
            fo.failover_token_s * 1e3,
            fo.median_token_s * 1e3,
            fo.no_fault_median_token_s * 1e3,
            fo.failover_token_s / fo.median_token_s,
            if fo.tokens_match { "equal" } else { "DIFFER from" }
        );
        println!(
            "\n{:<62} {:>9} {:>9}  verdict",
            "target", "measured", "bound"
        );
        for t in self.targets() {
            println!(
                "{:<62} {:>9} {:>9}  {}{}",
                t.name,
                fmt_opt(t.measured, 3),
                format!("{}{}", if t.at_most { "<= " } else { ">= " }, t.bound),
                t.verdict(),
                if t.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.detail)
                }
            );
        }
    }
}

/// The 1-minute load average (Linux), if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// "yes", or where the tokens first part.
fn agree(tokens: &[u32], reference: &[u32]) -> String {
    match tokens.iter().zip(reference).position(|(a, b)| a != b) {
        None if tokens.len() == reference.len() => "yes".into(),
        None => format!(
            "{} of {}",
            tokens.len().min(reference.len()),
            reference.len()
        ),
        Some(i) => format!("first {i} of {}", reference.len()),
    }
}
