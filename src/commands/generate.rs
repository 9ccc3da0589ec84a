//! `zkinfer generate`: single-process generation with provable sampling.
//!
//! Logits are quantized to the proof's fixed point and the token is chosen by
//! `circuits::sample_token`, the same integer arithmetic the circuit checks, so
//! every generated token can be proven from the records this command writes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::Device;

use circuits::{fixed_point::temperature_to_beta, sample_token, FixedPoint, Sampler, Tables};
use prover::{Record, RecordSampler, Records};
use runtime::client::Hop;
use runtime::generate::Generator;
use runtime::model::Model;
use runtime::model_id::ModelId;
use runtime::session::{Session, SessionConfig};
use runtime::tokenizer::Tokenizer;
use runtime::transcript::{self, HopRecord, RecordsRef, Transcript, TranscriptSampler};
use runtime::wire::Encoding;

use super::model::open_gguf;
use super::serve::{set_threads, tokio_runtime};
use super::{model::packaged_model_path, CliError};
use crate::cli::{parse_layers, ActivationEncoding, GenerateArgs};

/// How long a node may take to answer one frame.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// `nodes.toml`: the nodes a client may use.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesFile {
    node: Vec<NodeEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    addr: SocketAddr,
    layers: String,
}

/// Reads a nodes file into candidate hops, in file order.
fn read_nodes(path: &Path) -> Result<Vec<Hop>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::unreadable(format!("reading {}: {e}", path.display())))?;
    let file: NodesFile = toml::from_str(&text)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
    file.node
        .into_iter()
        .map(|n| {
            let layers = parse_layers(&n.layers).map_err(|e| {
                CliError::unreadable(format!("{}: node {}: {e}", path.display(), n.addr))
            })?;
            Ok(Hop {
                addr: n.addr,
                layers,
            })
        })
        .collect()
}

/// Where the model runs: in this process, or on a chain of nodes.
enum Backend<'a> {
    Local(Generator<'a>),
    Remote {
        runtime: tokio::runtime::Runtime,
        session: Box<Session>,
    },
}

impl Backend<'_> {
    /// Measures the nodes in `nodes` and connects the cheapest chain that
    /// covers all `layers` layers; the session fails over and reroutes on
    /// its own, and each such event is printed as one stderr line.
    fn remote(
        nodes: &Path,
        layers: usize,
        hidden: usize,
        id: ModelId,
        encoding: ActivationEncoding,
    ) -> Result<Self, CliError> {
        let candidates = read_nodes(nodes)?;
        let (encoding, bytes_per_value) = match encoding {
            ActivationEncoding::F32 => (Encoding::F32, 4),
            ActivationEncoding::F16 => (Encoding::F16, 2),
            ActivationEncoding::Q8 => (Encoding::Q8, 1),
        };
        let config = SessionConfig {
            encoding,
            io_timeout: NODE_TIMEOUT,
            activation_bytes: hidden * bytes_per_value,
            ..SessionConfig::default()
        };
        // Unique enough among this client's requests: a node keys caches by it.
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        let hash = blake3::hash(seed.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        let runtime = tokio_runtime()?;
        let mut session = runtime
            .block_on(Session::connect(
                candidates,
                layers,
                id,
                config,
                u64::from_le_bytes(first),
            ))
            .map_err(|e| CliError::failed(format!("{}: {e}", nodes.display())))?;
        eprintln!("[activations {encoding:?}]");
        print_events(&mut session);
        Ok(Backend::Remote {
            runtime,
            session: Box::new(session),
        })
    }

    /// Positions fed so far.
    fn position(&self) -> u64 {
        match self {
            Backend::Local(g) => g.position() as u64,
            Backend::Remote { session, .. } => session.position(),
        }
    }

    /// Feeds tokens; returns the logits of the last one. Remote logits are
    /// final when this returns (failover happens inside), so a caller that
    /// prints a token only after sampling it never prints it twice. With
    /// `hops`, appends the forward's per-hop digests (one "local" hop over
    /// `layers` layers for single-process generation).
    fn feed(
        &mut self,
        tokens: &[u32],
        layers: usize,
        hops: Option<&mut Vec<HopRecord>>,
    ) -> Result<Vec<f32>, CliError> {
        let position = self.position();
        match self {
            Backend::Local(g) => {
                let logits = g
                    .feed(tokens)
                    .map_err(|e| CliError::failed(e.to_string()))?;
                if let Some(hops) = hops {
                    hops.push(HopRecord::local(position, layers, tokens, &logits));
                }
                Ok(logits)
            }
            Backend::Remote { runtime, session } => {
                let result = runtime.block_on(session.feed(tokens));
                print_events(session);
                let logits = result.map_err(|e| CliError::failed(e.to_string()))?;
                if let Some(hops) = hops {
                    hops.extend(
                        session
                            .last_hops()
                            .iter()
                            .map(|d| HopRecord::remote(position, d)),
                    );
                }
                Ok(logits)
            }
        }
    }

    /// The request id of the current chain (`None` locally).
    fn request_id(&self) -> Option<u64> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote { session, .. } => Some(session.request_id()),
        }
    }

    /// Frees the request's caches on the nodes (best effort) and prints the
    /// failover and reroute counts.
    fn finish(&mut self) {
        if let Backend::Remote { runtime, session } = self {
            runtime.block_on(session.end());
            let stats = session.stats();
            eprintln!(
                "[{} failovers, {} reroutes]",
                stats.failovers, stats.reroutes
            );
        }
    }
}

/// Prints the session's new events, one stderr line each.
fn print_events(session: &mut Session) {
    for event in session.take_events() {
        eprintln!("[{event}]");
    }
}

/// `r` for `position`: the first 8 bytes of blake3(seed || position), little-endian.
pub fn sampling_r(seed: u64, position: u64) -> u64 {
    transcript::sampling_r(seed, position)
}

pub fn run(args: GenerateArgs) -> Result<ExitCode, CliError> {
    set_threads(args.threads);
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&path)?;
    let tokenizer = Tokenizer::from_gguf(&content).map_err(|e| CliError::failed(e.to_string()))?;
    let config = Model::shape_of(&content).map_err(|e| CliError::failed(e.to_string()))?;
    let local_model;
    let mut model_id = None;
    let mut backend = match &args.nodes {
        None => {
            if args.transcript.is_some() {
                model_id = Some(
                    runtime::model_id::model_id(&content, &mut reader)
                        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?,
                );
            }
            local_model = Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..config.layers)
                .map_err(|e| CliError::failed(e.to_string()))?;
            Backend::Local(
                Generator::new(&local_model).map_err(|e| CliError::failed(e.to_string()))?,
            )
        }
        Some(nodes) => {
            let id = runtime::model_id::model_id(&content, &mut reader)
                .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
            model_id = Some(id);
            Backend::remote(nodes, config.layers, config.hidden, id, args.activations)?
        }
    };
    let fixed_point = FixedPoint::default();
    let tables = Tables::new(fixed_point);
    let beta = args
        .temperature
        .map(temperature_to_beta)
        .transpose()
        .map_err(CliError::failed)?;
    let stops: Vec<u32> = std::iter::once(tokenizer.eos())
        .chain(tokenizer.token_id("<end_of_turn>"))
        .collect();

    let prompt = tokenizer.encode(&args.prompt, true);
    let layers = config.layers;
    let mut hops = args.transcript.as_ref().map(|_| Vec::new());
    let mut tokens = Vec::new();
    let start = Instant::now();
    let mut logits = backend.feed(&prompt, layers, hops.as_mut())?;
    let prompt_time = start.elapsed();
    let mut decoder = tokenizer.stream_decoder();
    let mut records = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut generated = 0;
    for _ in 0..args.max_tokens {
        let position = backend.position();
        let z: Vec<i64> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| fixed_point.quantize(i, l as f64))
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::failed(format!("position {position}: {e}")))?;
        let (sampler, record_sampler) = match beta {
            None => (Sampler::Greedy, RecordSampler::Greedy {}),
            Some(beta) => {
                let r = sampling_r(args.seed, position);
                let temperature = args.temperature.unwrap_or(1.0);
                (
                    Sampler::Sample { beta, r },
                    RecordSampler::Sample {
                        temperature,
                        r: r.to_string(),
                    },
                )
            }
        };
        let token =
            sample_token(&tables, &z, sampler).map_err(|e| CliError::failed(e.to_string()))?;
        generated += 1;
        tokens.push(token);
        if args.records.is_some() || args.transcript.is_some() {
            records.push(Record {
                position,
                logits: std::mem::take(&mut logits),
                token,
                sampler: record_sampler,
            });
        }
        if stops.contains(&token) {
            break;
        }
        let piece = decoder.push(token);
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
        logits = backend.feed(&[token], layers, hops.as_mut())?;
    }
    let _ = writeln!(stdout, "{}", decoder.finish());
    let request_id = backend.request_id();
    backend.finish();
    let gen_time = start.elapsed();
    eprintln!(
        "[{} prompt tokens in {:.2} s; {} tokens in {:.2} s, {:.1} tokens/s]",
        prompt.len(),
        prompt_time.as_secs_f64(),
        generated,
        gen_time.as_secs_f64(),
        generated as f64 / gen_time.as_secs_f64().max(1e-9)
    );
    let records = Records {
        vocab: config.vocab,
        steps: records,
    };
    if let Some(path) = &args.transcript {
        let sampler = match args.temperature {
            None => TranscriptSampler::Greedy {},
            Some(temperature) => TranscriptSampler::Sample {
                temperature,
                seed: args.seed,
            },
        };
        let transcript = Transcript {
            version: transcript::VERSION,
            model_id: model_id.map(|id| id.to_string()).unwrap_or_default(),
            prompt: args.prompt.clone(),
            prompt_tokens: prompt.clone(),
            sampler,
            client_nonce: transcript::client_nonce(),
            request_id,
            tokens,
            hops: hops.unwrap_or_default(),
            records: RecordsRef::Inline(transcript::Records {
                vocab: 0,
                steps: Vec::new(),
            }),
        };
        write_transcript(path, transcript, &records, args.transcript_binary)?;
    }
    if let Some(path) = &args.records {
        let json = serde_json::to_vec(&records).map_err(|e| CliError::failed(e.to_string()))?;
        super::write_atomic(path, &json)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
        eprintln!(
            "[decode records for {} tokens written to {}]",
            records.steps.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `transcript` to `path` with `records` inline, or with `binary` in
/// the side file `<path>.logits.bin` (written first), each atomically.
fn write_transcript(
    path: &Path,
    mut transcript: Transcript,
    records: &Records,
    binary: bool,
) -> Result<(), CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::failed(format!("{}: {e}", path.display()));
    // The prover's records and the transcript's share one JSON shape.
    let value = serde_json::to_value(records).map_err(|e| failed(&e))?;
    let inline: transcript::Records = serde_json::from_value(value).map_err(|e| failed(&e))?;
    transcript.records = if binary {
        let bytes =
            transcript::encode_logits(inline.vocab, &inline.steps).map_err(|e| failed(&e))?;
        let name = format!(
            "{}.logits.bin",
            path.file_stem().unwrap_or_default().to_string_lossy()
        );
        let side = path.with_file_name(&name);
        super::write_atomic(&side, &bytes)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", side.display())))?;
        RecordsRef::File {
            path: name,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            vocab: inline.vocab,
            count: inline.steps.len(),
        }
    } else {
        RecordsRef::Inline(inline)
    };
    let json = serde_json::to_vec(&transcript).map_err(|e| failed(&e))?;
    super::write_atomic(path, &json)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    eprintln!(
        "[transcript of {} tokens, {} hop records written to {}]",
        transcript.tokens.len(),
        transcript.hops.len(),
        path.display()
    );
    Ok(())
}
