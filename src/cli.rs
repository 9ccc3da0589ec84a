//! Command-line arguments. This is a stable contract: scripts depend on it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ledger::Params;

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
    /// Verify every proof of a bundle, optionally against a transcript. Exit 0 if all are valid,
    /// 1 if any is invalid (or a required token is not proved), 2 if unreadable.
    #[command(
        after_help = "Examples:\n  zkinfer verify answer.zkp --json\n  zkinfer verify --transcript answer.json --bundle answer.zkp --model-id $(zkinfer model info $(zkinfer model path) --json | jq -r .model_id)\n  zkinfer verify --transcript answer.json --bundle answer.zkp --require all\n  zkinfer verify --fraud-proof t.fraud-0.json --model model.gguf"
    )]
    Verify(VerifyArgs),
    /// Print a bundle's circuit configuration and statements without verifying them.
    #[command(after_help = "Example:\n  zkinfer inspect answer.zkp --json")]
    Inspect(InspectArgs),
    /// Generate text with a model in this process, streaming it as it is produced.
    #[command(
        after_help = "Examples:\n  zkinfer generate --prompt \"The quick brown fox\" --max-tokens 32\n  zkinfer generate --prompt \"Once upon a time\" --temperature 0.8 --seed 7 --records records.json\n  zkinfer generate --nodes nodes.toml --activations f16 --prompt \"Hello\"\n  zkinfer generate --nodes nodes.toml --prompt \"Hello\" --transcript t.json --prove challenged --bundle t.zkp\n  zkinfer generate --nodes nodes.toml --prompt \"def f(x):\" --speculative 4\n  zkinfer generate --network --bootstrap /ip4/10.0.0.1/tcp/4000 --prompt \"Hello\"   (docs/network.md)\n\nnodes.toml:\n  [[node]]\n  addr = \"127.0.0.1:7001\"\n  layers = \"0..9\"\n  [[node]]\n  addr = \"127.0.0.1:7002\"\n  layers = \"9..18\""
    )]
    Generate(GenerateArgs),
    /// Serve a layer range of a model to `zkinfer generate --nodes` clients over TCP.
    #[command(
        after_help = "Example (two nodes, then a client):\n  zkinfer serve --model tiny.gguf --layers 0..9 --listen 127.0.0.1:7001\n  zkinfer serve --model tiny.gguf --layers 9..18 --listen 127.0.0.1:7002 --prove\n  zkinfer generate --nodes nodes.toml --model tiny.gguf --prompt \"Hello\"\n\nOn the libp2p network (docs/network.md):\n  zkinfer serve --layers 0..9 --listen 10.0.0.2:4001 --key node.key --network --bootstrap /ip4/10.0.0.1/tcp/4000\n\nPast --max-requests, --max-cache-mb, --max-receiving-mb or the connection limits a node answers\nBusy (error code 9) instead of growing."
    )]
    Serve(ServeArgs),
    /// Serve an OpenAI-compatible HTTP API (chat and text completions, streamed or whole) whose
    /// answers carry their verification: transcripts and proofs to download, /v1/verify to check.
    #[command(
        after_help = "Examples:\n  zkinfer api --listen 127.0.0.1:8080\n  zkinfer api --nodes nodes.toml --prove challenged:4 --max-concurrent 8\n  zkinfer api --network --bootstrap /ip4/10.0.0.1/tcp/4000   (nodes found in the DHT: docs/network.md)\n  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":16,\"seed\":7}'\n  curl -s http://127.0.0.1:8080/v1/proofs/ID -o answer.zkp\n\nEndpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,\nGET /metrics, GET /v1/transcripts/ID, GET /v1/proofs/ID, POST /v1/verify (docs/api.md)."
    )]
    Api(ApiArgs),
    /// Create a node's receipt-signing key (BLS on BN254) and print its public key.
    #[command(
        after_help = "Example:\n  zkinfer keygen --out node.key\n  zkinfer serve --layers 9..18 --listen 127.0.0.1:7002 --key node.key"
    )]
    Keygen(KeygenArgs),
    /// Inspect models: `model info FILE` (architecture and model id), `model path` (the packaged model).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Measure the runtime on this machine (`bench runtime`): tokens/s of a single process, shard
    /// chains and llama.cpp; bytes and log-prob drift per activation encoding; failover latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Measure circuit cost (rows, k, columns, keygen / prove / verify time, proof size, memory).
    #[command(
        after_help = "Example:\n  zkinfer cost --vocab 512,4096 --batch 1,4 --lanes 2 --svg cost.svg"
    )]
    Cost(CostArgs),
    /// Re-execute a transcript's hops on this machine, asking its nodes for what they signed, and
    /// bisect a disputed hop to the first bad layer (a fraud proof). Exit 0 if every hop is
    /// accepted, 1 if any is rejected or a receipt check fails, 2 if unreadable, 3 if ambiguous.
    #[command(
        after_help = "Examples:\n  zkinfer audit --transcript t.json\n  zkinfer audit --transcript t.json --sample 8 --json\n  zkinfer audit --transcript t.json --positions 0,12,13 --fraud-proofs proofs/\n  zkinfer audit --report        (the cheat suite: which route catches which cheat)\n  zkinfer audit --fraud-proof t.fraud-0.json --sign-verdict auditor.key --ledger 0x5FbD.. --result ID\n                                (a committee verdict for `zkinfer ledger challenge committee`)\n\nThe nodes keep what an audit needs for `zkinfer serve --audit-window` seconds (default 600)."
    )]
    Audit(AuditArgs),
    /// Stakes, pending results and their challenge windows in a ledger file (docs/ledger.md).
    Ledger(LedgerArgs),
    /// Run a bootstrap host of the libp2p network: a DHT server (and, with --relay, a circuit
    /// relay) that serves no model. Nodes and clients join through its address (docs/network.md).
    #[command(
        after_help = "Example (a bootstrap host, a node, a client):\n  zkinfer bootstrap --listen 10.0.0.1:4000 --relay\n  zkinfer serve --layers 0..18 --listen 10.0.0.2:4001 --key node.key --network --bootstrap /ip4/10.0.0.1/tcp/4000\n  zkinfer generate --network --bootstrap /ip4/10.0.0.1/tcp/4000 --prompt \"Hello\""
    )]
    Bootstrap(BootstrapArgs),
}

/// Joining the libp2p network (docs/network.md).
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Use the libp2p network: Noise-encrypted, authenticated streams, peers found in its DHT.
    #[arg(long)]
    pub network: bool,
    /// A host to join the network through (repeatable), e.g. `/ip4/10.0.0.1/tcp/4000`, with or
    /// without its `/p2p/ID`.
    #[arg(long, value_name = "MULTIADDR", requires = "network", value_parser = parse_multiaddr)]
    pub bootstrap: Vec<network::host::Multiaddr>,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Other bootstrap hosts to join (repeatable).
    #[arg(long, value_name = "MULTIADDR", value_parser = parse_multiaddr)]
    pub bootstrap: Vec<network::host::Multiaddr>,
    /// Relay circuits for nodes that others cannot dial (`serve --via-relay`).
    #[arg(long)]
    pub relay: bool,
}

fn parse_multiaddr(text: &str) -> Result<network::host::Multiaddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?} is not a multiaddr (e.g. /ip4/10.0.0.1/tcp/4000): {e}"))
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The transcript to audit (`zkinfer generate --transcript`).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["report", "fraud_proof"],
        conflicts_with_all = ["report", "fraud_proof"]
    )]
    pub transcript: Option<PathBuf>,
    /// The model to re-execute with [default: the packaged model]. With --report: run the cheat
    /// suite on this model (split in half; no model swap and no proofs) instead of tiny ones.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Re-execute only the forwards at these positions (every earlier forward of a node is still
    /// revealed: attention reads them).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "P,..",
        conflicts_with = "sample"
    )]
    pub positions: Vec<u64>,
    /// Re-execute K forward positions drawn at random (the nodes cannot know which in advance).
    #[arg(long, value_name = "K")]
    pub sample: Option<usize>,
    /// Where to write fraud proofs [default: next to the transcript, as T.fraud-N.json].
    #[arg(long, value_name = "DIR")]
    pub fraud_proofs: Option<PathBuf>,
    /// Seconds allowed per question to a node.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub timeout: u64,
    /// With --network: reach the transcript's `/p2p/` nodes through the libp2p network.
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Also open the commitments of the head's proofs in this bundle (`generate --bundle`)
    /// against the logits the head reveals: a proof, and the head's signed receipt for it, about
    /// other logits than the head signed is a rejection. Check the proofs themselves with
    /// `zkinfer verify`.
    #[arg(long, value_name = "FILE", conflicts_with = "report")]
    pub bundle: Option<PathBuf>,
    /// Run the cheat suite instead (tiny random models, or --model) and print the detection table.
    #[arg(long, conflicts_with = "fraud_proof")]
    pub report: bool,
    /// Re-execute this fraud proof (as `verify --fraud-proof` does) and, when it holds, sign the
    /// committee verdict that the ledger slashes on (with --sign-verdict, --ledger, --result).
    #[arg(long, value_name = "FILE", requires = "sign_verdict")]
    pub fraud_proof: Option<PathBuf>,
    /// Sign, with this auditor key (`zkinfer keygen`, registered with `zkinfer ledger register`),
    /// a committee verdict against every node the audit proves false: the signer of each fraud
    /// proof, and a head whose signed proof receipt does not open to the logits it signed.
    #[arg(long, value_name = "FILE", requires_all = ["ledger", "result"])]
    pub sign_verdict: Option<PathBuf>,
    /// The ledger contract's address (`zkinfer ledger show` prints it).
    #[arg(long, value_name = "ADDRESS", requires = "sign_verdict")]
    pub ledger: Option<String>,
    /// The id of the result the verdict is about (as `zkinfer ledger submit` took it).
    #[arg(long, value_name = "ID", requires = "sign_verdict")]
    pub result: Option<String>,
    /// Where to write the signed verdict [default: next to the fraud proof, as F.verdict.json].
    #[arg(long, value_name = "FILE", requires = "fraud_proof")]
    pub verdict_out: Option<PathBuf>,
    /// Honest tokens the cheat suite generates and audits, with --report.
    #[arg(long, default_value_t = 1000, value_name = "N", requires = "report")]
    pub honest_tokens: usize,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (a BOS token is prepended).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate at most (generation also stops at end-of-sequence).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_tokens: usize,
    /// Sample at this temperature instead of greedy decoding.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Seed of the sampling randomness. r at position p is blake3(client nonce, request id, p)
    /// (docs/transcript.md); a seed fixes nonce and request id so sampling repeats, without one
    /// both are fresh for every generation.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// The in-process model's device and threads (with --nodes, each node picks its own device).
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Write the decode records (full logits per generated token) for `zkinfer prove --records`.
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// Write a transcript (JSON, see docs/transcript.md): model id, prompt tokens, sampler, client
    /// nonce, tokens, per-hop blake3 digests of the activations sent and received, and the decode
    /// records of every generated token.
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// Keep every token's logits in a compact little-endian side file `<FILE>.logits.bin`
    /// (referenced from the transcript by name and blake3), so that `verify --transcript` and
    /// `audit` check each token against them. Without it the transcript keeps their digests
    /// only, and a head node sends its pick (about 140 bytes a token) instead of the logits
    /// (4 bytes per vocabulary entry, 1 MiB a token for the packaged model).
    #[arg(long, requires = "transcript")]
    pub transcript_logits: bool,
    /// Run the model on remote nodes (`zkinfer serve`) listed in this TOML file instead of in this
    /// process: `[[node]]` tables with `addr = "127.0.0.1:7001"` and `layers = "0..9"`; several
    /// nodes may serve the same range. The client pings every node (RTT and throughput), uses the
    /// cheapest chain that covers all layers, re-measures every 16 tokens (switching to a chain
    /// cheaper by 20%), and on a node failure bans it for 60 s, moves to another node serving that
    /// range and replays the history; each change is one stderr line. The tokenizer and
    /// model id still come from --model (or the packaged model).
    #[arg(long, value_name = "FILE", conflicts_with = "network")]
    pub nodes: Option<PathBuf>,
    /// With --network: find the nodes of the model in the DHT instead of a nodes file.
    #[command(flatten)]
    pub network: NetworkArgs,
    /// With --network: the model to find nodes of [default: the id of --model, whose tokenizer
    /// is used]; a different id is refused.
    #[arg(long, value_name = "ID", requires = "network")]
    pub model_id: Option<String>,
    /// How hidden states travel between nodes (with --nodes). `auto`: f32 when every node is on
    /// loopback, q6o otherwise.
    #[arg(long, value_enum, default_value_t = ActivationEncoding::Auto, value_name = "ENC")]
    pub activations: ActivationEncoding,
    /// Mirror every span to a second node of the same layers where nodes.toml lists one, so that a
    /// node that dies is replaced within the token, with nothing replayed (those spans are
    /// computed twice).
    #[arg(long, requires = "nodes")]
    pub standby: bool,
    /// Ask the head node (`zkinfer serve --prove`) for proofs: of every token as it is generated
    /// (`all`), or after generation of --challenges positions drawn from the transcript's hash
    /// (`challenged`: the node cannot pick them). Waits for the proofs and writes them to --bundle.
    #[arg(long, value_enum, value_name = "POLICY", requires_all = ["nodes", "transcript", "bundle"])]
    pub prove: Option<ProvePolicyArg>,
    /// Positions to prove with `--prove challenged`.
    #[arg(long, default_value_t = 4, value_name = "K")]
    pub challenges: usize,
    /// Where to write the proofs (with --prove).
    #[arg(long, value_name = "FILE", requires = "prove")]
    pub bundle: Option<PathBuf>,
    /// Speculative greedy decoding through the nodes: up to K tokens drafted by prompt lookup are
    /// checked in one trip through the chain (same tokens as plain greedy decoding, fewer round
    /// trips on slow links). Greedy only; keeps no logits, so no records, transcript or proofs.
    #[arg(long, value_name = "K", requires = "nodes",
          conflicts_with_all = ["temperature", "records", "transcript", "prove"])]
    pub speculative: Option<usize>,
}

/// Which tokens to have proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProvePolicyArg {
    /// Every generated token, while generating.
    All,
    /// K positions drawn from the transcript after generation.
    Challenged,
}

/// Wire encodings of hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivationEncoding {
    /// f32 when every node is on loopback, q6o otherwise.
    Auto,
    /// IEEE binary32, exact.
    F32,
    /// IEEE binary16, half the bytes.
    F16,
    /// 8-bit with a per-row scale, about a quarter of the bytes.
    Q8,
    /// Each row's 16 largest values exact, the rest in 6 bits (0.26x the bytes of f32 at d = 640;
    /// docs/runtime-bench.md measures its drift).
    Q6o,
}

/// Where a model runs: `cpu`, `cuda` (the first GPU) or `cuda:N`. CUDA needs a binary built with
/// `--features cuda` (docs/gpu.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// An NVIDIA GPU by ordinal, as `nvidia-smi` numbers them.
    Cuda(usize),
}

/// The model a command loads.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A GGUF model [default: the packaged model, see `zkinfer model path`]
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

impl ModelArgs {
    pub fn path(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(models::packaged_model_path)
    }
}

/// Where a model runs.
#[derive(Debug, Args)]
pub struct ComputeArgs {
    /// The device: cpu, cuda or cuda:N.
    #[arg(long, value_parser = parse_device, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceKind,
    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s.split_once(':') {
        None if s == "cpu" => Ok(DeviceKind::Cpu),
        None if s == "cuda" => Ok(DeviceKind::Cuda(0)),
        Some(("cuda", n)) => n
            .parse()
            .map(DeviceKind::Cuda)
            .map_err(|_| format!("expected a GPU number after cuda:, got {n:?}")),
        _ => Err(format!(
            "unknown device {s:?}: expected cpu, cuda or cuda:N"
        )),
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (created with mode 0600; an existing file is never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The layers to serve, `a..b` (layer a up to but not including b).
    #[arg(long, value_parser = client::nodes::parse_layers, value_name = "A..B")]
    pub layers: std::ops::Range<usize>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Seconds a request's cache (or a silent connection) is kept unused.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub idle_timeout: u64,
    /// Sign a receipt for every hop served with this key (`zkinfer keygen`); clients put the
    /// receipts in their transcripts and `verify --transcript` checks them.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Seconds a signing node keeps what it computed for a request (the hidden states at every
    /// layer) after its last use, so that `zkinfer audit` can re-execute and bisect its hops.
    #[arg(long, default_value_t = node::DEFAULT_AUDIT_WINDOW.as_secs(), value_name = "S", requires = "key")]
    pub audit_window: u64,
    /// Prove tokens alongside inference when clients ask (`generate --prove`): this node must
    /// serve the last layers. Keys are built at start-up (minutes for a large vocabulary, with
    /// public parameters cached on disk); proofs run on --prove-threads threads at the lowest CPU
    /// priority, so generation goes first.
    #[arg(long)]
    pub prove: bool,
    #[command(flatten)]
    pub circuit: CircuitArgs,
    /// Threads that prove [default: all cores; they run at the lowest CPU priority].
    #[arg(long, value_name = "N")]
    pub prove_threads: Option<usize>,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub capacity: CapacityArgs,
    /// With --network: serve over libp2p on --listen (TCP with Noise and yamux) instead of plain
    /// TCP, and announce this node in the DHT. Needs --key: the announcement binds the libp2p
    /// identity (derived from the key) to the receipt key.
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Reserve a circuit on every bootstrap host that relays (`bootstrap --relay`) and announce
    /// it: for a node behind NAT or a firewall.
    #[arg(long, requires = "network")]
    pub via_relay: bool,
    /// The node's stake account on the ledger contract (`zkinfer ledger account`), announced.
    #[arg(long, value_name = "0xADDRESS", requires = "network", value_parser = parse_account)]
    pub stake_account: Option<[u8; 20]>,
}

fn parse_account(text: &str) -> Result<[u8; 20], String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{text:?} is not 40 hex digits"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not 40 hex digits"))
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("chain").args(["nodes", "network"]))]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// The model file (read for its tokenizer and id also with --nodes).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Generate on a chain of these nodes (the file of `generate --nodes`) instead of in this
    /// process.
    #[arg(long, value_name = "FILE", conflicts_with = "network")]
    pub nodes: Option<PathBuf>,
    /// With --network: generate on nodes of --model's id found in the DHT instead of in this
    /// process (docs/network.md).
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Encoding of hidden states between nodes.
    #[arg(long, value_enum, default_value = "auto", requires = "chain")]
    pub activations: ActivationEncoding,
    /// Mirror every hop to a second node of its span, so a node that dies costs no replay.
    #[arg(long, requires = "chain")]
    pub standby: bool,
    /// What the head node proves of each answer: `none`, `challenged:K` (K positions drawn from
    /// the transcript) or `all`. Needs --nodes (or --network) whose head node runs `serve --prove`.
    #[arg(long, default_value = "none", value_parser = parse_required, value_name = "POLICY")]
    pub prove: RequiredProofs,
    /// Re-execute K randomly drawn forward positions of every answer against the nodes' audit
    /// trails, in the background, as `zkinfer audit --sample K` does; the verdicts go to /metrics.
    /// The nodes must sign (`serve --key`). The weights of --model are loaded for re-execution.
    #[arg(long, value_name = "K", requires = "nodes")]
    pub audit_sample: Option<usize>,
    /// Generations at a time; more get 429 with Retry-After.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_concurrent: usize,
    /// Answers still waiting for their proofs at a time; more get 429.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_proving: usize,
    /// The largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_tokens: usize,
    /// Seconds an answer's transcript and proofs stay downloadable.
    #[arg(long, default_value_t = 3600, value_name = "S")]
    pub retention: u64,
    /// Answers kept at most (the oldest go first).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_stored: usize,
    /// MiB of transcripts and proofs kept at most (the oldest go first).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub max_stored_mb: usize,
    /// The model's name in /v1/models [default: the model file's name without .gguf].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// What a node holds for its peers at most; past a limit it answers Busy.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// Requests that may hold a KV cache at once.
    #[arg(long, default_value_t = node::Capacity::default().requests, value_name = "N")]
    pub max_requests: usize,
    /// MiB of KV cache over all requests.
    #[arg(long, default_value_t = node::Capacity::default().cache_bytes >> 20, value_name = "MIB")]
    pub max_cache_mb: usize,
    /// MiB a signing node keeps of its forwards for `zkinfer audit` (least recently used dropped
    /// first).
    #[arg(long, default_value_t = node::Capacity::default().trail_bytes >> 20, value_name = "MIB")]
    pub max_trail_mb: usize,
    /// MiB of frames being received at once, over all connections.
    #[arg(long, default_value_t = node::Capacity::default().frame_bytes >> 20, value_name = "MIB")]
    pub max_receiving_mb: usize,
    /// Open connections in all.
    #[arg(long, default_value_t = node::Capacity::default().connections, value_name = "N")]
    pub max_connections: usize,
    /// Open connections from one IP address.
    #[arg(long, default_value_t = node::Capacity::default().connections_per_peer, value_name = "N")]
    pub max_connections_per_peer: usize,
}

impl CapacityArgs {
    pub fn capacity(&self) -> node::Capacity {
        node::Capacity {
            connections: self.max_connections,
            connections_per_peer: self.max_connections_per_peer,
            frame_bytes: self.max_receiving_mb << 20,
            requests: self.max_requests,
            cache_bytes: self.max_cache_mb << 20,
            trail_bytes: self.max_trail_mb << 20,
        }
    }
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

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Single process vs shard chains vs llama.cpp, encodings, failover (docs/runtime-bench.md).
    ///
    /// One run on the packaged model (or --model), the prompt "The quick brown fox jumps over the
    /// lazy dog. In the beginning" and --tokens greedy tokens: generation tokens/s (prefill apart)
    /// of a single process on 1 and 2 threads, of 2- and 3-shard loopback chains of
    /// `zkinfer serve --threads 2` children, and of llama.cpp on 2 threads and on 1; per activation encoding
    /// on the 2-shard chain, bytes per token per hop and log-prob drift against the single process;
    /// the latency of the token during which a node is killed. Each figure is held to its
    /// target (docs/runtime-bench.md). Progress goes to stderr, the report to stdout.
    #[command(
        after_help = "Examples:\n  zkinfer bench runtime\n  zkinfer bench runtime --tokens 32 --json > bench.json\n  zkinfer bench runtime --python ~/.cache/zkinfer-llama-venv/bin/python"
    )]
    Runtime(BenchRuntimeArgs),
    /// Compare a candidate device or configuration with a reference (docs/gpu.md): per fixed
    /// prompt, the largest logit and final-hidden-state differences, teacher-forced on the
    /// reference's greedy tokens, whether greedy tokens agree, and the audit tolerances the
    /// figures recommend. Exit 1 if a greedy token differs.
    #[command(
        after_help = "Examples:\n  zkinfer bench conformance --candidate cuda\n  zkinfer bench conformance --candidate cpu --reference-threads 2 --candidate-threads 1 --json"
    )]
    Conformance(BenchConformanceArgs),
    /// Tokens/s and per-token latency of one process on one device: the packaged model (or
    /// --model), or a random-weight Llama of 1.1 B parameters built in memory (--random), with
    /// bf16 matrices. Peak memory of the process (and, on CUDA, what nvidia-smi sees) is up to the
    /// caller (scripts/gpu_run.sh samples it).
    #[command(
        after_help = "Examples:\n  zkinfer bench throughput --device cuda --tokens 128\n  zkinfer bench throughput --random --device cuda --json\n  zkinfer bench throughput --random --threads 16 --tokens 16"
    )]
    Throughput(BenchThroughputArgs),
    /// What `zkinfer api` costs (docs/api.md): greedy tokens/s and time to first token in this
    /// process and streamed through the API on loopback (target: the API at >= 0.95x), then
    /// --clients concurrent clients sending short chat requests for --seconds: latency
    /// percentiles, 429s, errors, and resident memory before and after.
    #[command(
        after_help = "Examples:\n  zkinfer bench api\n  zkinfer bench api --clients 32 --seconds 30 --max-concurrent 4 --json"
    )]
    Api(BenchApiArgs),
}

#[derive(Debug, Args)]
pub struct BenchApiArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Greedy tokens per generation of the speed comparison.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub tokens: usize,
    /// Runs of each side of the comparison; the best is kept.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub runs: usize,
    /// Concurrent clients of the load test.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub clients: usize,
    /// Seconds the load test runs.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub seconds: u64,
    /// max_tokens of each load request.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub load_tokens: usize,
    /// The server's generation slots.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_concurrent: usize,
    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchThroughputArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A random-weight Llama of 1.1 B parameters (16 layers, d = 2048, feed-forward 8192, 32 heads
    /// over 8 kv heads, vocabulary 32,000), matrices in bf16, generated in memory.
    #[arg(long, conflicts_with = "model")]
    pub random: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Greedy tokens to generate after the prompt (at least 2).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchConformanceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Device of the reference run: cpu, cuda or cuda:N.
    #[arg(long, value_parser = parse_device, default_value = "cpu", value_name = "DEVICE")]
    pub reference: DeviceKind,
    /// Device of the candidate run: cpu, cuda or cuda:N.
    #[arg(long, value_parser = parse_device, default_value = "cpu", value_name = "DEVICE")]
    pub candidate: DeviceKind,
    /// CPU threads of the reference [default: all cores].
    #[arg(long, value_name = "N")]
    pub reference_threads: Option<usize>,
    /// CPU threads of the candidate [default: all cores].
    #[arg(long, value_name = "N")]
    pub candidate_threads: Option<usize>,
    /// Prompts to compare (repeat the flag) [default: three fixed prompts].
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// Greedy tokens generated (by the reference) and compared after each prompt.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the candidate side in this process: a plan on stdin, raw figures on stdout (used by
    /// `bench conformance` itself: candle sizes its thread pool once per process).
    #[arg(long, hide = true)]
    pub in_process: bool,
}

#[derive(Debug, Args)]
pub struct BenchRuntimeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Greedy tokens generated per measurement (at least 4).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// A Python with llama-cpp-python, for the llama.cpp row [default:
    /// ~/.cache/zkinfer-llama-venv/bin/python, where scripts/llama_cpp.sh installs it, if it
    /// exists, else python3]. Without llama_cpp the row says "not measured".
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Measure a single process on this many threads, in this process, and print it as JSON
    /// (used by `bench runtime` itself: candle sizes its thread pool once per process).
    #[arg(long, hide = true, value_name = "THREADS")]
    pub in_process: Option<usize>,
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
    /// Logit lanes side by side (L): more lanes, fewer rows [default: the fewest that keep k = 17,
    /// e.g. 1 at V = 4,096, 4 at V = 262,144].
    #[arg(long, value_name = "L")]
    pub lanes: Option<usize>,
    /// Fractional bits F of the logits.
    #[arg(long, default_value_t = 11, value_name = "F")]
    pub frac_bits: u32,
    /// Bits Q of the exponential table.
    #[arg(long, default_value_t = 30, value_name = "Q")]
    pub exp_bits: u32,
}

impl CircuitArgs {
    /// The circuit for a vocabulary of `vocab`.
    pub fn shape(&self, vocab: usize) -> Result<circuits::CircuitShape, circuits::ShapeError> {
        let fixed_point = circuits::FixedPoint {
            frac_bits: self.frac_bits,
            exp_bits: self.exp_bits,
        };
        match self.lanes {
            Some(lanes) => circuits::CircuitShape::new(vocab, fixed_point, self.batch, lanes),
            None => circuits::CircuitShape::fitted(vocab, fixed_point, self.batch),
        }
    }
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
    #[arg(value_name = "BUNDLE", required_unless_present_any = ["bundle_flag", "fraud_proof"])]
    pub bundle: Option<PathBuf>,
    /// The proof bundle (the same as the positional argument).
    #[arg(long = "bundle", value_name = "FILE", conflicts_with = "bundle")]
    pub bundle_flag: Option<PathBuf>,
    /// Check the proofs against a generation transcript (`generate --transcript`): every proven
    /// token, log-probability and sampler must be the transcript's, with r recomputed from its
    /// nonce; reports each generated token as proved / not proved / invalid.
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// The model id the transcript must name (`zkinfer model info`), with --transcript.
    #[arg(long, value_name = "HEX", requires = "transcript")]
    pub model_id: Option<String>,
    /// Which generated tokens must be proven, with --transcript: `all`, `challenged:K` (the K
    /// positions drawn from the transcript's hash, as `generate --prove challenged --challenges K`
    /// asks) or `none`. The transcript's own `proving` field does not decide this.
    #[arg(long, value_name = "POLICY", default_value = transcript::answer::DEFAULT_REQUIRED, value_parser = parse_required, requires = "transcript")]
    pub require: RequiredProofs,
    /// Check a fraud proof (`zkinfer audit`) instead: the node's signature on the step and its
    /// re-execution with --model. Exit 0 if it shows fraud, 1 if it does not, 2 if unreadable.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bundle", "bundle_flag", "transcript"])]
    pub fraud_proof: Option<PathBuf>,
    /// The model a fraud proof is checked with [default: the packaged model].
    #[arg(long, value_name = "FILE", requires = "fraud_proof")]
    pub model: Option<PathBuf>,
    /// Print the verdicts as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The proofs `verify --transcript` requires (`None`: none).
#[derive(Clone, Copy, Debug)]
pub struct RequiredProofs(pub Option<transcript::ProvingPolicy>);

fn parse_required(text: &str) -> Result<RequiredProofs, String> {
    transcript::ProvingPolicy::parse_required(text).map(RequiredProofs)
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
    /// Vocabulary sizes to measure [default: 512,4096,32000,262144].
    #[arg(long, value_delimiter = ',')]
    pub vocab: Vec<usize>,
    /// Steps per proof to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize])]
    pub batch: Vec<usize>,
    /// Lane counts to measure [default: the fewest that keep k = 17 for each V and T].
    #[arg(long, value_delimiter = ',')]
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
    /// Tokens verified in one batch (copies of the proof, two at least) to measure what each
    /// token adds beyond the first proof.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub verify_tokens: usize,
    /// Measure one configuration in this process (used by `cost` itself, one child per configuration).
    #[arg(long, hide = true)]
    pub in_process: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("chain").args(["state", "rpc"])),
    after_help = "The ledger is a contract (ledger/contracts/Ledger.sol, docs/ledger.md). --state runs it in an\nEVM in this process, its state in FILE (locked while in use); --rpc on any Ethereum JSON-RPC\nendpoint. Amounts are in wei. --from dev:N is development account N (0-9) that anvil and the\nembedded chain fund; on a public chain give a file holding your account's hex secret key.\n\nExamples:\n  zkinfer ledger --state ledger.json init --window-s 3600 --min-stake 100\n  zkinfer ledger --state ledger.json --from dev:1 register --key node.key\n  zkinfer ledger --state ledger.json --from dev:1 deposit 500\n  zkinfer ledger --state ledger.json submit $(b3sum --no-names t.json) NODE_ADDRESS_OR_KEY...\n  zkinfer ledger --state ledger.json --from dev:4 challenge committee ID --verdict v1.json --verdict v2.json\n  zkinfer ledger --state ledger.json finalize\n  zkinfer ledger --rpc http://127.0.0.1:8545 --contract 0x5FbD.. show --json"
)]
pub struct LedgerArgs {
    /// Run the contract in this process, its state in FILE (created by `init`) [default:
    /// ledger.json, when --rpc is not given].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Run the contract on this Ethereum JSON-RPC endpoint.
    #[arg(long, value_name = "URL")]
    pub rpc: Option<String>,
    /// The ledger contract's address, with --rpc (`init` prints it).
    #[arg(long, value_name = "ADDRESS", requires = "rpc")]
    pub contract: Option<String>,
    /// The account that sends: dev:N, or a file holding a hex secp256k1 secret key.
    #[arg(
        long,
        global = true,
        default_value = "dev:0",
        value_name = "dev:N|FILE"
    )]
    pub from: String,
    /// The block time of the operation in unix seconds [default: the chain's own clock]. A
    /// chain's clock never goes back; a public chain refuses any.
    #[arg(long, global = true, value_name = "UNIX_S")]
    pub now: Option<u64>,
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Deploy a ledger contract with these rules; prints its address and rules.
    Init {
        /// How long a result can be challenged after submission, in seconds (at most ten years).
        #[arg(long, default_value_t = Params::default().challenge_window_s)]
        window_s: u64,
        /// What a valid challenge takes from the accused node's stake.
        #[arg(long, default_value_t = Params::default().slash_amount)]
        slash: u128,
        /// What a challenger must hold, and loses if its evidence fails.
        #[arg(long, default_value_t = Params::default().challenge_bond)]
        bond: u128,
        /// The stake each node of a submitted result, and each auditor of a verdict, must hold.
        #[arg(long, default_value_t = Params::default().min_stake)]
        min_stake: u128,
        /// How many auditors must sign a verdict for committee slashing.
        #[arg(long, default_value_t = Params::default().committee_threshold)]
        threshold: u32,
    },
    /// Bind the sending account to a node's (or auditor's) BLS key, with a proof of possession.
    Register {
        /// The key file (`zkinfer keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Stake AMOUNT wei of the sending account's funds; prints the new stake.
    Deposit { amount: u128 },
    /// Take AMOUNT wei of stake back (refused while a pending result locks it); prints the stake left.
    Withdraw { amount: u128 },
    /// Record a result (its transcript's 32-byte digest in hex) and the nodes accountable for it,
    /// each an address or a registered BLS public key; prints its challenge deadline.
    Submit {
        id: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Slash a node with evidence: a valid challenge slashes, evidence that fails costs the bond.
    #[command(subcommand)]
    Challenge(ChallengeCommand),
    /// Record as final the results whose challenge window has closed; prints their ids.
    Finalize,
    /// Print the sending account's address.
    Account,
    /// Print the rules, stakes and results.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChallengeCommand {
    /// Two hop receipts one node signed for one input with different outputs (the contract checks
    /// the signatures itself).
    Equivocation {
        /// The evidence file (docs/ledger.md).
        #[arg(long, value_name = "FILE")]
        evidence: PathBuf,
        /// Send evidence that fails the local check too (the contract will burn the bond).
        #[arg(long)]
        unchecked: bool,
    },
    /// Auditors' verdicts that a fraud proof against a node of result ID holds (`zkinfer audit
    /// --fraud-proof F --sign-verdict KEY`); at least the committee threshold of them.
    Committee {
        id: String,
        #[arg(long = "verdict", required = true, value_name = "FILE")]
        verdicts: Vec<PathBuf>,
        /// Send verdicts that fail the local check too (the contract will burn the bond).
        #[arg(long)]
        unchecked: bool,
    },
}
