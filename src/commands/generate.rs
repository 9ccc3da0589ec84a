//! `zkinfer generate`: generation in this process or on a chain of nodes
//! (`client::generation`), with records, transcripts and proofs written out.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use client::generation::{generate, Backend, GenerationOptions, ModelInfo, Observer, Prompt};
use client::session::SessionConfig;
use client::Hop;
use models::generate::Generator;
use models::tokenizer::Tokenizer;
use models::Model;
use transcript::{Nonce, ProvingPolicy, RecordsRef};
use wire::Encoding;

use super::model::open_gguf;
use super::serve::set_threads;
use super::CliError;
use crate::cli::{ActivationEncoding, DeviceKind, GenerateArgs, ProvePolicyArg};

/// How long a node may take to answer one frame.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a nodes file into candidate hops, in file order.
pub fn read_nodes(path: &Path) -> Result<Vec<Hop>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::unreadable(format!("reading {}: {e}", path.display())))?;
    client::nodes::parse_nodes(&text)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))
}

/// Streams text to stdout, events and proof progress to stderr.
struct Console {
    stdout: std::io::StdoutLock<'static>,
    last_proven: Option<usize>,
}

impl Observer for Console {
    fn text(&mut self, piece: &str) {
        let _ = write!(self.stdout, "{piece}");
        let _ = self.stdout.flush();
    }

    fn event(&mut self, line: &str) {
        eprintln!("[{line}]");
    }

    fn proofs(&mut self, proven: usize, asked: usize) {
        if self.last_proven != Some(proven) {
            self.last_proven = Some(proven);
            eprintln!("[proofs: {proven} of {asked} steps proven]");
        }
    }
}

/// The session settings of generation over `candidates`, with hidden
/// states of width `hidden` sent as `activations`.
pub fn session_config(
    hidden: usize,
    activations: ActivationEncoding,
    standby: bool,
    candidates: &[Hop],
) -> (SessionConfig, Encoding) {
    let encoding = match activations {
        ActivationEncoding::Auto
            if candidates
                .iter()
                .all(|h| h.addr.socket().is_some_and(|s| s.ip().is_loopback())) =>
        {
            Encoding::F32
        }
        ActivationEncoding::Auto | ActivationEncoding::Q6o => Encoding::Q6o,
        ActivationEncoding::F32 => Encoding::F32,
        ActivationEncoding::F16 => Encoding::F16,
        ActivationEncoding::Q8 => Encoding::Q8,
    };
    let config = SessionConfig {
        io_timeout: NODE_TIMEOUT,
        standby,
        ..SessionConfig::for_encoding(encoding, hidden)
    };
    (config, encoding)
}

pub fn run(args: GenerateArgs) -> Result<ExitCode, CliError> {
    let remote = args.nodes.is_some() || args.network.network;
    if remote && args.compute.device != DeviceKind::Cpu {
        return Err(CliError::unreadable(
            "--device is for the in-process model: with --nodes each node picks its own (zkinfer serve --device)",
        ));
    }
    set_threads(args.compute.threads);
    let path = args.model.path();
    let (content, mut reader) = open_gguf(&path)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let config = Model::shape_of(&content)?;
    let model_id = if args.transcript.is_some() || remote {
        Some(
            models::model_id::model_id(&content, &mut reader)
                .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?,
        )
    } else {
        None
    };
    let local_model;
    let mut console = Console {
        stdout: std::io::stdout().lock(),
        last_proven: None,
    };
    // The libp2p host and its runtime live as long as the generation.
    let mut _network = None;
    let mut backend = match (remote, model_id) {
        (true, Some(id)) => {
            let (candidates, source) = match &args.nodes {
                Some(nodes) => (read_nodes(nodes)?, nodes.display().to_string()),
                None => {
                    if let Some(wanted) = &args.model_id {
                        if *wanted != id.to_string() {
                            return Err(CliError::unreadable(format!(
                                "--model-id {wanted} is not the id of {} ({id}), whose tokenizer this client uses",
                                path.display()
                            )));
                        }
                    }
                    let runtime = super::serve::tokio_runtime()?;
                    let (host, hops) = super::p2p::discover_nodes(
                        runtime.handle(),
                        args.network.bootstrap.clone(),
                        id,
                        config.layers,
                    )?;
                    _network = Some((runtime, host));
                    (hops, "the network".to_string())
                }
            };
            let (session, encoding) =
                session_config(config.hidden, args.activations, args.standby, &candidates);
            let mut backend = Backend::remote(candidates, config.layers, id, session)
                .map_err(|e| CliError::failed(format!("{source}: {e}")))?;
            eprintln!("[activations {encoding:?}]");
            if let Backend::Remote { session, .. } = &mut backend {
                for event in session.take_events() {
                    console.event(&event.to_string());
                }
            }
            backend
        }
        _ => {
            let device = super::device::open(args.compute.device)?;
            local_model = Model::from_gguf(&content, &mut reader, &device, 0..config.layers)?;
            Backend::Local(Generator::new(&local_model)?)
        }
    };
    if let (Some(k), Backend::Remote { runtime, session }) = (args.speculative, &mut backend) {
        return speculative(runtime, session, &tokenizer, &args, k, &mut console);
    }
    let nonce = match args.seed {
        Some(seed) => Nonce::from_seed(seed),
        None => Nonce::fresh(),
    };
    let options = GenerationOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        nonce,
        request_id: nonce.request_id(),
        stops: tokenizer.stop_tokens(),
        proving: args.prove.map(|policy| match policy {
            ProvePolicyArg::All => ProvingPolicy::All,
            ProvePolicyArg::Challenged => ProvingPolicy::Challenged {
                challenges: args.challenges,
            },
        }),
        keep_logits: args.transcript_logits || args.records.is_some(),
        observe_logits: false,
    };
    let model = ModelInfo {
        id: model_id,
        layers: config.layers,
        vocab: config.vocab,
        context: config.context,
    };
    let prompt = Prompt::encode(&tokenizer, &args.prompt);
    let generation = generate(
        &mut backend,
        model,
        Some(&tokenizer),
        prompt,
        &options,
        &mut console,
    )?;
    let _ = writeln!(console.stdout);
    if remote {
        let stats = backend.stats();
        eprintln!(
            "[{} failovers, {} reroutes]",
            stats.failovers, stats.reroutes
        );
    }
    let transcript = generation.transcript;
    let generated = transcript.tokens.len();
    let gen_time = generation.generation_time;
    eprintln!(
        "[{} prompt tokens in {:.2} s; {} tokens in {:.2} s, {:.1} tokens/s]",
        transcript.prompt_tokens.len(),
        generation.prompt_time.as_secs_f64(),
        generated,
        gen_time.as_secs_f64(),
        generated as f64 / gen_time.as_secs_f64().max(1e-9)
    );
    let records = match transcript.records.clone() {
        Some(RecordsRef::Inline(records)) => Some(records),
        Some(RecordsRef::File { .. }) => {
            return Err(CliError::failed("generation keeps its records inline"))
        }
        None => None,
    };
    if let (Some(path), Some(records)) = (&args.records, &records) {
        let json = serde_json::to_vec(records)?;
        super::output::write_atomic(path, &json)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
        eprintln!(
            "[decode records for {} tokens written to {}]",
            records.steps.len(),
            path.display()
        );
    }
    if let Some(path) = &args.transcript {
        let logits = records.as_ref().filter(|_| args.transcript_logits);
        super::output::write_transcript(path, transcript, logits)?;
    }
    if let (Some(outcome), Some(path)) = (&generation.proofs, &args.bundle) {
        super::output::write_proofs(path, outcome)?;
        if !outcome.failures.is_empty() {
            return Err(CliError::failed(format!(
                "{} of {} asked positions were not proven (see above); the others are in {}",
                outcome.failures.len(),
                outcome.asked.len(),
                path.display()
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Greedy generation with `k` drafted tokens per forward (`--speculative`).
fn speculative(
    runtime: &tokio::runtime::Runtime,
    session: &mut client::session::Session,
    tokenizer: &Tokenizer,
    args: &GenerateArgs,
    k: usize,
    console: &mut Console,
) -> Result<ExitCode, CliError> {
    let prompt = tokenizer.encode(&args.prompt, true);
    let stops: Vec<u32> = tokenizer.stop_tokens();
    let mut decoder = tokenizer.stream_decoder();
    let start = std::time::Instant::now();
    let result = runtime.block_on(client::speculative::generate_greedy(
        session,
        &prompt,
        args.max_tokens,
        k,
        &stops,
        |token| {
            if !stops.contains(&token) {
                console.text(&decoder.push(token));
            }
        },
    ));
    console.text(&decoder.finish());
    let _ = writeln!(console.stdout);
    let (tokens, stats) = result?;
    runtime.block_on(session.end());
    eprintln!(
        "[{} tokens in {:.2} s with {} forwards; {} of {} drafted tokens accepted]",
        tokens.len(),
        start.elapsed().as_secs_f64(),
        stats.forwards + 1,
        stats.accepted,
        stats.drafted
    );
    Ok(ExitCode::SUCCESS)
}
