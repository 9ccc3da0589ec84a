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
        after_help = "Examples:\n  zkinfer generate --prompt \"The quick brown fox\" --max-tokens 32\n  zkinfer generate --prompt \"Once upon a time\" --temperature 0.8 --seed 7 --records records.json"
    )]
    Generate(GenerateArgs),
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
    /// Vocabulary sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [512usize, 4096, 32000, 262144])]
    pub vocab: Vec<usize>,
    /// Steps per proof to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    pub batch: Vec<usize>,
    /// Lane counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [4usize])]
    pub lanes: Vec<usize>,
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
