//! The product end to end, on this machine: two shard nodes of the packaged
//! model on loopback (the head node proves), a client that generates, has
//! tokens proven and verifies the proofs against its transcript, then audits
//! every hop (re-execution against what the nodes signed).
//!
//! ```text
//! cargo run --release --example end_to_end [-- --prove all|challenged] [--challenges K]
//!     [--tokens N] [--prompt TEXT] [--temperature T] [--lanes L] [--prove-threads N] [--out DIR]
//! ```
//!
//! Needs the packaged model (`bash scripts/setup.sh` installs it). The first
//! run generates the public parameters for k = 17 (about 1.5 minutes on 2
//! cores, cached in ~/.cache/zkinfer); proving keys are built at node start.
//! Each proof over the full vocabulary of 262,144 takes about a minute on 2 cores:
//! the run prints its progress.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit::fraud::{Replayer, Verdict as AuditVerdict};
use audit::AuditOptions;
use candle_core::quantized::gguf_file;
use candle_core::Device;
use circuits::{CircuitShape, FixedPoint};
use client::generation::{
    generate, Backend, Generation, GenerationOptions, ModelInfo, Observer, Prompt,
};
use client::session::SessionConfig;
use client::Hop;
use models::tokenizer::Tokenizer;
use models::Model;
use node::proving::{ProofService, ProvingConfig};
use node::{serve, NodeConfig};
use transcript::{Nonce, ProvingPolicy, Transcript};
use verifier::answer::{check_answer, LogitOpening, Verdict};
use verifier::receipt::SecretKey;
use verifier::ParamsCache;
use wire::Encoding;

type Error = Box<dyn std::error::Error>;

/// How long the nodes keep what an audit asks for: past generation, the
/// challenged proofs and the verification of this run.
const AUDIT_WINDOW: Duration = Duration::from_secs(3600);

const USAGE: &str = "usage: cargo run --release --example end_to_end -- [--prove all|challenged] [--challenges K] [--tokens N] [--prompt TEXT] [--temperature T] [--lanes L] [--prove-threads N] [--out DIR]";

struct Options {
    policy: ProvingPolicy,
    tokens: usize,
    prompt: String,
    temperature: Option<f64>,
    /// `None`: the fewest lanes that keep k = 17.
    lanes: Option<usize>,
    prove_threads: usize,
    out: PathBuf,
}

fn options() -> Result<Options, Error> {
    let mut o = Options {
        policy: ProvingPolicy::Challenged { challenges: 4 },
        tokens: 32,
        prompt: "The capital of France is".into(),
        temperature: None,
        lanes: None,
        prove_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out: std::env::temp_dir().join("zkinfer-end-to-end"),
    };
    let mut challenges = 4;
    let mut all = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--prove" => match value()?.as_str() {
                "all" => all = true,
                "challenged" => all = false,
                other => return Err(format!("--prove {other}: use all or challenged").into()),
            },
            "--challenges" => challenges = value()?.parse()?,
            "--tokens" => o.tokens = value()?.parse()?,
            "--prompt" => o.prompt = value()?,
            "--temperature" => o.temperature = Some(value()?.parse()?),
            "--lanes" => o.lanes = Some(value()?.parse()?),
            "--prove-threads" => o.prove_threads = value()?.parse()?,
            "--out" => o.out = value()?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
        }
    }
    o.policy = if all {
        ProvingPolicy::All
    } else {
        ProvingPolicy::Challenged { challenges }
    };
    Ok(o)
}

/// Streams text to stdout and proof progress to stderr.
struct Console {
    proven: Option<usize>,
}

impl Observer for Console {
    fn text(&mut self, piece: &str) {
        use std::io::Write;
        print!("{piece}");
        let _ = std::io::stdout().flush();
    }

    fn event(&mut self, line: &str) {
        eprintln!("[{line}]");
    }

    fn generated(&mut self, transcript: &Transcript, elapsed: Duration) {
        let tokens = transcript.tokens.len();
        eprintln!(
            "\n[{tokens} tokens in {:.2} s: {:.2} tokens/s]",
            elapsed.as_secs_f64(),
            tokens as f64 / elapsed.as_secs_f64()
        );
    }

    fn proofs(&mut self, proven: usize, asked: usize) {
        if self.proven != Some(proven) {
            self.proven = Some(proven);
            eprintln!("[proofs: {proven} of {asked} proven]");
        }
    }
}

fn main() -> Result<(), Error> {
    let options = options()?;
    let path = models::installed_packaged_model()
        .ok_or("the packaged model is not installed: run `bash scripts/setup.sh` first")?;
    let mut reader = std::io::BufReader::new(std::fs::File::open(&path)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let shape = Model::shape_of(&content)?;
    let id = models::model_id::model_id(&content, &mut reader)?;
    let split = shape.layers / 2;
    let circuit = match options.lanes {
        Some(lanes) => CircuitShape::new(shape.vocab, FixedPoint::default(), 1, lanes)?,
        None => CircuitShape::fitted(shape.vocab, FixedPoint::default(), 1)?,
    };
    println!(
        "model {} ({} layers, vocabulary {}), id {id}",
        path.display(),
        shape.layers,
        shape.vocab
    );

    // Two nodes on loopback; the head node proves on low-priority threads.
    let nodes = tokio::runtime::Runtime::new()?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut hops = Vec::new();
    for layers in [0..split, split..shape.layers] {
        let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, layers.clone())?;
        let proving = model.has_head().then(|| {
            let ready_tx = ready_tx.clone();
            Arc::new(ProofService::start(
                ProvingConfig {
                    shape: circuit,
                    params_dir: ParamsCache::default_dir(),
                    // The worker runs at the lowest priority, so generation
                    // still goes first.
                    threads: options.prove_threads,
                    max_positions: 1024,
                    max_total_positions: 1024,
                },
                move |ready| {
                    let _ = ready_tx.send(ready);
                },
            ))
        });
        let listener = nodes.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr: SocketAddr = listener.local_addr()?;
        let config = NodeConfig {
            // The audit runs after the proofs, which take 1-2 minutes each on 2
            // cores: the nodes keep their trails long enough for it.
            audit_window: AUDIT_WINDOW,
            idle_timeout: Duration::from_secs(3600),
            io_timeout: Duration::from_secs(60),
            proving,
            // Each node signs its hop receipts; the client checks them all.
            signer: SecretKey::from_seed(
                blake3::hash(format!("{:?} {addr}", Instant::now()).as_bytes()).as_bytes(),
            )
            .map(Arc::new),
            ..NodeConfig::new(id, layers.clone())
        };
        println!("node {addr}: layers {}..{}", layers.start, layers.end);
        nodes.spawn(serve(listener, Arc::new(model), config));
        hops.push(Hop {
            addr: addr.into(),
            layers,
        });
    }
    let keys = Instant::now();
    eprintln!(
        "[head node: public parameters (k = {}) and proving keys for {}: first run generates and caches the parameters (about 1.5 min) and the verifying key; keys then take 10-30 s]",
        circuit.k(),
        circuit.describe()
    );
    let keygen = ready_rx.recv()??;
    eprintln!("[keys ready after {:.1} s]", keys.elapsed().as_secs_f64());

    let model = ModelInfo {
        id: Some(id),
        layers: shape.layers,
        vocab: shape.vocab,
        context: shape.context,
    };
    let nonce = Nonce::fresh();
    let run = |proving: Option<ProvingPolicy>| -> Result<Generation, Error> {
        let session = SessionConfig {
            encoding: Encoding::F32,
            io_timeout: Duration::from_secs(60),
            activation_bytes: shape.hidden * 4,
            ..SessionConfig::default()
        };
        let mut backend = Backend::remote(hops.clone(), shape.layers, id, session)?;
        let generation_options = GenerationOptions {
            max_tokens: options.tokens,
            temperature: options.temperature,
            nonce,
            request_id: nonce.request_id(),
            stops: tokenizer.stop_tokens(),
            proving,
            // The head node sends its pick, not the logits: the transcript
            // keeps their digests and the head's receipts of its proofs.
            keep_logits: false,
            observe_logits: false,
        };
        let prompt = Prompt::encode(&tokenizer, &options.prompt);
        print!("{}", options.prompt);
        let generation = generate(
            &mut backend,
            model,
            Some(&tokenizer),
            prompt,
            &generation_options,
            &mut Console { proven: None },
        )?;
        println!();
        Ok(generation)
    };

    println!("\n== generation without proofs (baseline) ==");
    let baseline = run(None)?;
    println!("\n== generation with proofs ({:?}) ==", options.policy);
    let proven = run(Some(options.policy))?;
    let outcome = proven.proofs.as_ref().ok_or("no proofs")?;
    for (position, message) in &outcome.failures {
        eprintln!("[proof of position {position} failed: {message}]");
    }
    let bundle = outcome.bundle.as_ref().ok_or("no proof came back")?;

    // Write what a client keeps, then verify it as a third party would.
    std::fs::create_dir_all(&options.out)?;
    let transcript_path = options.out.join("answer.json");
    let bundle_path = options.out.join("answer.zkp");
    std::fs::write(&transcript_path, serde_json::to_vec(&proven.transcript)?)?;
    let bundle_bytes = bundle.to_bytes();
    std::fs::write(&bundle_path, &bundle_bytes)?;
    let verify_start = Instant::now();
    let cache = ParamsCache::new(ParamsCache::default_dir());
    let (params, report) = verifier::verify_bundle_keeping_params(bundle, &cache)?;
    let expected =
        proven
            .transcript
            .expected_steps(&options.out, circuit.fixed_point, circuit.vocab)?;
    let required = proven.transcript.required_positions(Some(options.policy));
    let openings = proven
        .transcript
        .proof_openings(bundle, &params, &expected.logits);
    let mut answer = check_answer(bundle, &report, &openings, &expected.steps, &required);
    answer.problems.extend(expected.problems);
    // What the transcript binds by itself: signatures, tokens, the head's logits.
    let receipts = proven.transcript.receipts()?;
    let checks = transcript::binding::check(&proven.transcript, &options.out);
    answer.problems.extend(
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail)),
    );
    let receipts_valid = checks.iter().all(|c| c.passed);
    let verify_time = verify_start.elapsed();

    // The optimistic path: re-execute every hop of the proven generation on
    // this machine, asking the (still running) nodes what they signed.
    let audit_start = Instant::now();
    let mut replayer = Replayer::open(&path, Device::Cpu)?;
    let audit = nodes.block_on(audit::audit(
        &proven.transcript,
        &options.out,
        &mut replayer,
        &AuditOptions::default(),
    ))?;
    // The head revealed the logits it signed: its proofs must open to them.
    let opened = audit.open_proofs(bundle, &params);
    let proofs_open = opened.iter().all(|o| *o == LogitOpening::Opens);
    let audit_time = audit_start.elapsed();

    println!(
        "\n{:>10} {:>8} {:>12}  {:<20} verdict",
        "position", "token", "logprob", "text"
    );
    for t in &answer.tokens {
        let verdict = match &t.verdict {
            Verdict::Proved => "proved".to_string(),
            Verdict::NotProved => "not proved".to_string(),
            Verdict::Invalid(reason) => format!("INVALID: {reason}"),
        };
        let text = format!("{:?}", tokenizer.decode(&[t.token]));
        println!(
            "{:>10} {:>8} {:>12}  {:<20} {verdict}",
            t.position,
            t.token,
            t.logprob.map(|l| format!("{l:.6}")).unwrap_or("-".into()),
            text
        );
    }
    for problem in &answer.problems {
        println!("problem: {problem}");
    }
    println!(
        "receipts: {} hops signed by 2 nodes; signatures, tokens and logits {}",
        receipts.len(),
        if receipts_valid { "bound" } else { "NOT BOUND" }
    );
    let worst = audit
        .hops
        .iter()
        .flat_map(|h| [h.enter, h.span, h.exit])
        .flatten()
        .map(|c| c.max_abs_diff)
        .fold(0f32, f32::max);
    println!(
        "audit: {} hops re-executed, verdict {:?}, largest difference {worst}; {} of {} proofs open against the head's revealed logits",
        audit.hops.len(),
        audit.verdict,
        opened.iter().filter(|o| **o == LogitOpening::Opens).count(),
        opened.len()
    );
    let (proved, not_proved, invalid) = answer.counts();
    println!(
        "\n{}: {proved} proved, {not_proved} not proved, {invalid} invalid",
        if answer.valid() { "VALID" } else { "INVALID" }
    );

    let rate = |g: &Generation| g.transcript.tokens.len() as f64 / g.generation_time.as_secs_f64();
    let proofs = bundle.proofs.len().max(1);
    println!("\ntimings (this machine):");
    println!(
        "  keys (head node start-up)       {:.1} s",
        keygen.as_secs_f64()
    );
    println!(
        "  generation without proofs       {:.2} tokens/s",
        rate(&baseline)
    );
    println!(
        "  generation with proofs asked    {:.2} tokens/s ({:.2}x)",
        rate(&proven),
        rate(&proven) / rate(&baseline)
    );
    println!(
        "  proofs                          {} in {:.1} s after generation ({:.1} s per proof)",
        bundle.proofs.len(),
        outcome.wait.as_secs_f64(),
        outcome.wait.as_secs_f64() / proofs as f64
    );
    println!(
        "  bundle                          {} bytes ({} per proven token)",
        bundle_bytes.len(),
        bundle_bytes.len() / proved.max(1)
    );
    println!(
        "  verify (keys, proofs, answer)   {:.2} s",
        verify_time.as_secs_f64()
    );
    println!(
        "  audit (every hop re-executed)   {:.2} s",
        audit_time.as_secs_f64()
    );
    println!(
        "\nwritten: {} and {}\ncheck again with: zkinfer verify --transcript {} --bundle {} --model-id {id}",
        transcript_path.display(),
        bundle_path.display(),
        transcript_path.display(),
        bundle_path.display()
    );
    if !answer.valid() {
        return Err("the answer did not verify".into());
    }
    if audit.verdict != AuditVerdict::Accept {
        return Err("the audit did not accept every hop".into());
    }
    if !proofs_open {
        return Err("a proof does not open against the logits the head revealed".into());
    }
    Ok(())
}
