//! Command-line arguments. This is a stable contract: scripts depend on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "zkinfer",
    version,
    about = "Verifiable LLM inference: prove that tokens and log-probabilities follow from committed logits",
    after_help = "Examples:\n  zkinfer prove --records records.json --out answer.zkp --batch 4\n  zkinfer verify answer.zkp --json\n  zkinfer inspect answer.zkp --json\n  zkinfer cost --vocab 4096,32000 --svg cost.svg"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prove decode records (logits, token, sampler per step) into a proof bundle.
    #[command(
        after_help = "Example:\n  zkinfer prove --records records.json --out answer.zkp --batch 4 --lanes 4\n\nRecords JSON: {\"vocab\": V, \"steps\": [{\"position\": p, \"logits\": [...V floats], \"token\": y,\n  \"sampler\": {\"greedy\": {}} | {\"sample\": {\"temperature\": t, \"r\": \"<decimal u64>\"}}}]}"
    )]
    Prove(ProveArgs),
    /// Verify every proof of a bundle. Exit 0 if all are valid, 1 if any is invalid, 2 if unreadable.
    #[command(after_help = "Example:\n  zkinfer verify answer.zkp --json")]
    Verify(VerifyArgs),
    /// Print a bundle's circuit configuration and statements without verifying them.
    #[command(after_help = "Example:\n  zkinfer inspect answer.zkp --json")]
    Inspect(InspectArgs),
    /// Generate text with a model in this process, streaming it as it is produced.
    #[command(
        after_help = "Examples:\n  zkinfer generate --prompt \"The quick brown fox\" --max-tokens 32\n  zkinfer generate --prompt \"Once upon a time\" --temperature 0.8 --seed 7 --records records.json\n  zkinfer generate --nodes nodes.toml --activations f16 --prompt \"Hello\"\n\nnodes.toml:\n  [[node]]\n  addr = \"127.0.0.1:7001\"\n  layers = \"0..9\"\n  [[node]]\n  addr = \"127.0.0.1:7002\"\n  layers = \"9..18\""
    )]
    Generate(GenerateArgs),
    /// Serve a layer range of a model to `zkinfer generate --nodes` clients over TCP.
    #[command(
        after_help = "Example (two nodes, then a client):\n  zkinfer serve --model tiny.gguf --layers 0..9 --listen 127.0.0.1:7001\n  zkinfer serve --model tiny.gguf --layers 9..18 --listen 127.0.0.1:7002\n  zkinfer generate --nodes nodes.toml --model tiny.gguf --prompt \"Hello\""
    )]
    Serve(ServeArgs),
    /// Inspect models: `model info FILE` (architecture and model id), `model path` (the packaged model).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure circuit cost (rows, k, columns, keygen / prove / verify time, proof size, memory).
    #[command(
        after_help = "Example:\n  zkinfer cost --vocab 512,4096 --batch 1,4 --lanes 2 --svg cost.svg"
    )]
    Cost(CostArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A GGUF model [default: the packaged model, see `zkinfer model path`]
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// The prompt (a BOS token is prepended).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate at most (generation also stops at end-of-sequence).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_tokens: usize,
    /// Sample at this temperature instead of greedy decoding.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Seed of the sampling randomness: r at position p is the first 8 bytes of blake3(seed, p).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Compute threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Write the decode records (full logits per generated token) for `zkinfer prove --records`.
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// Write a transcript (JSON, see docs/transcript.md): model id, prompt tokens, sampler, client
    /// nonce, tokens, per-hop blake3 digests of the activations sent and received, and the decode
    /// records of every generated token.
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// Store the transcript's logits in a compact little-endian side file `<FILE>.logits.bin`
    /// (referenced by name and blake3) instead of inline JSON.
    #[arg(long, requires = "transcript")]
    pub transcript_binary: bool,
    /// Run the model on remote nodes (`zkinfer serve`) listed in this TOML file instead of in this
    /// process: `[[node]]` tables with `addr = "127.0.0.1:7001"` and `layers = "0..9"`; several
    /// nodes may serve the same range. The client pings every node (RTT and throughput), uses the
    /// cheapest chain that covers all layers, re-measures every 16 tokens (switching to a chain
    /// cheaper by 20%), and on a node failure bans it for 60 s, moves to another node serving that
    /// range and replays the history; each change is one stderr line. The tokenizer and
    /// model id still come from --model (or the packaged model).
    #[arg(long, value_name = "FILE")]
    pub nodes: Option<PathBuf>,
    /// How hidden states travel between nodes (with --nodes).
    #[arg(long, value_enum, default_value_t = ActivationEncoding::F32, value_name = "ENC")]
    pub activations: ActivationEncoding,
}

/// Wire encodings of hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivationEncoding {
    /// IEEE binary32, exact.
    F32,
    /// IEEE binary16, half the bytes.
    F16,
    /// 8-bit with a per-row scale, about a quarter of the bytes.
    Q8,
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (needs a binary built with CUDA).
    Cuda,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A GGUF model [default: the packaged model, see `zkinfer model path`]
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// The layers to serve, `a..b` (layer a up to but not including b).
    #[arg(long, value_parser = parse_layers, value_name = "A..B")]
    pub layers: std::ops::Range<usize>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Device to run the layers on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Compute threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seconds a request's cache (or a silent connection) is kept unused.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub idle_timeout: u64,
}

/// Parses a layer range `a..b` with `a < b`.
pub fn parse_layers(s: &str) -> Result<std::ops::Range<usize>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected a range like 0..9, got {s:?}"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a >= b {
        return Err(format!(
            "empty layer range {s:?}: the start must be below the end"
        ));
    }
    Ok(a..b)
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the architecture summary and the model id (blake3 Merkle root of tensors and metadata).
    #[command(after_help = "Example:\n  zkinfer model info $(zkinfer model path)")]
    Info {
        /// A GGUF file.
        file: PathBuf,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print where the packaged model (Gemma 3 270M) is installed; exit 1 if it is not.
    Path,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Where public parameters are cached [default: $ZKINFER_CACHE or ~/.cache/zkinfer]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CircuitArgs {
    /// Token steps per proof (T).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub batch: usize,
    /// Logit lanes side by side (L): more lanes, fewer rows.
    #[arg(long, default_value_t = 4, value_name = "L")]
    pub lanes: usize,
    /// Fractional bits F of the logits.
    #[arg(long, default_value_t = 11, value_name = "F")]
    pub frac_bits: u32,
    /// Bits Q of the exponential table.
    #[arg(long, default_value_t = 30, value_name = "Q")]
    pub exp_bits: u32,
}

#[derive(Debug, Args)]
pub struct ProveArgs {
    /// Decode records (JSON).
    #[arg(long, value_name = "FILE")]
    pub records: PathBuf,
    /// Where to write the proof bundle.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub circuit: CircuitArgs,
    /// Proofs built at the same time (each also uses every core internally).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The proof bundle.
    pub bundle: PathBuf,
    /// Print the verdicts as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The proof bundle.
    pub bundle: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// Vocabulary sizes to measure [default: 512,4096,32000,262144; with --head 512,1024,4096].
    #[arg(long, value_delimiter = ',')]
    pub vocab: Vec<usize>,
    /// Steps per proof to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    pub batch: Vec<usize>,
    /// Lane counts to measure [default: 4; with --head 1].
    #[arg(long, value_delimiter = ',')]
    pub lanes: Vec<usize>,
    /// Measure the head variant for small models instead: the head matmul z = W h in the circuit
    /// (random weights as fixed columns), a commitment to the hidden state as the public input.
    #[arg(long)]
    pub head: bool,
    /// Hidden sizes d of the head variant [default: 32,64,128].
    #[arg(long, value_delimiter = ',', requires = "head")]
    pub hidden: Vec<usize>,
    /// Only lay out the circuits (rows, k, columns): no keygen or proving.
    #[arg(long)]
    pub layout_only: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of prove and verify time.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Proofs verified together to measure batch verification per proof.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub verify_batch: usize,
    /// Measure one configuration in this process (used by `cost` itself, one child per configuration).
    #[arg(long, hide = true)]
    pub in_process: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}
