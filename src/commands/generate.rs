//! `zkinfer generate`: generation in this process or on a chain of nodes
//! (`client::generation`), with records, transcripts and proofs written out.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use client::generation::{
    generate, Backend, GenerationOptions, ModelInfo, Observer, Prompt, ProofOutcome,
};
use client::session::SessionConfig;
use client::Hop;
use models::generate::Generator;
use models::tokenizer::Tokenizer;
use models::Model;
use prover::Records;
use transcript::{self, Nonce, ProvingPolicy, RecordsRef, Transcript};
use wire::Encoding;

use super::model::open_gguf;
use super::serve::set_threads;
use super::{model::packaged_model_path, CliError};
use crate::cli::{parse_layers, ActivationEncoding, DeviceKind, GenerateArgs, ProvePolicyArg};

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

/// The session settings of `--nodes` generation.
fn session_config(hidden: usize, encoding: ActivationEncoding) -> (SessionConfig, Encoding) {
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
    (config, encoding)
}

pub fn run(args: GenerateArgs) -> Result<ExitCode, CliError> {
    if args.nodes.is_some() && args.compute.device != DeviceKind::Cpu {
        return Err(CliError::unreadable(
            "--device is for the in-process model: with --nodes each node picks its own (zkinfer serve --device)",
        ));
    }
    set_threads(args.compute.threads);
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&path)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let config = Model::shape_of(&content)?;
    let model_id = if args.transcript.is_some() || args.nodes.is_some() {
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
    let mut backend = match (&args.nodes, model_id) {
        (Some(nodes), Some(id)) => {
            let candidates = read_nodes(nodes)?;
            let (session, encoding) = session_config(config.hidden, args.activations);
            let mut backend = Backend::remote(candidates, config.layers, id, session)
                .map_err(|e| CliError::failed(format!("{}: {e}", nodes.display())))?;
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
        return Ok(ExitCode::SUCCESS);
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
    };
    let model = ModelInfo {
        id: model_id,
        layers: config.layers,
        vocab: config.vocab,
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
    if args.nodes.is_some() {
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
    let RecordsRef::Inline(inline) = &transcript.records else {
        return Err(CliError::failed("generation keeps its records inline"));
    };
    let records = inline.clone();
    if let Some(path) = &args.records {
        let json = serde_json::to_vec(&records)?;
        super::output::write_atomic(path, &json)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
        eprintln!(
            "[decode records for {} tokens written to {}]",
            records.steps.len(),
            path.display()
        );
    }
    if let Some(path) = &args.transcript {
        write_transcript(path, transcript, &records, args.transcript_binary)?;
    }
    if let (Some(outcome), Some(path)) = (&generation.proofs, &args.bundle) {
        write_proofs(path, outcome)?;
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

/// Writes the collected proofs and reports failures, one stderr line each.
fn write_proofs(path: &Path, outcome: &ProofOutcome) -> Result<(), CliError> {
    for (position, message) in &outcome.failures {
        eprintln!("[proof of position {position} failed: {message}]");
    }
    let Some(bundle) = &outcome.bundle else {
        return Err(CliError::failed(format!(
            "no proofs came back for positions {:?}; nothing written to {}",
            outcome.asked,
            path.display()
        )));
    };
    let bytes = bundle.to_bytes();
    super::output::write_atomic(path, &bytes)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    eprintln!(
        "[{} proofs of positions {:?} ({} bytes) written to {} after {:.1} s of waiting]",
        bundle.proofs.len(),
        outcome.asked,
        bytes.len(),
        path.display(),
        outcome.wait.as_secs_f64()
    );
    Ok(())
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
    let inline = records.clone();
    transcript.records = if binary {
        let bytes =
            transcript::encode_logits(inline.vocab, &inline.steps).map_err(|e| failed(&e))?;
        let name = format!(
            "{}.logits.bin",
            path.file_stem().unwrap_or_default().to_string_lossy()
        );
        let side = path.with_file_name(&name);
        super::output::write_atomic(&side, &bytes)
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
    super::output::write_atomic(path, &json)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    eprintln!(
        "[transcript of {} tokens, {} hop records written to {}]",
        transcript.tokens.len(),
        transcript.hops.len(),
        path.display()
    );
    Ok(())
}
