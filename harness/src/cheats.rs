//! The cheat suite: two-node chains on the tiny random Gemma 3 where one
//! node misbehaves in each way the verification routes must catch, and
//! honest chains that none may reject. Each scenario generates on loopback,
//! then runs every route on the result:
//!
//! - **receipts**: the transcript's own checks (signatures, the first hop
//!   signed for the transcript's tokens, records equal to the head's
//!   signed logits), the first part of [`audit::audit`];
//! - **audit**: re-execution of every hop and bisection to the first bad
//!   step, with the fraud proof checked on its own ([`FraudProof::check`]);
//! - **ZK proof**: `verifier` on the head node's proof bundle against the
//!   transcript (`verifier::answer::check_answer`).
//!
//! `zkinfer audit --report` prints the table; `tests/cheats.rs` asserts it.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;
use circuits::{CircuitShape, FixedPoint, Sampler};
use verifier::bundle::Bundle;
use verifier::receipt::{SecretKey, Step};
use verifier::ParamsCache;

use audit::fraud::{describe, FraudProof, Replayer, Verdict};
use audit::{audit, AuditOptions, AuditReport};
use client::generation::{generate, Backend, GenerationOptions, ModelInfo, Prompt, Quiet};
use client::session::SessionConfig;
use models::model_id::{model_id, ModelId};
use models::testing::{
    requantize_gguf, tiny_gemma3_config, write_random_gemma3, write_random_gemma3_as,
};
use models::Model;
use node::{Fault, NodeConfig};

use crate::loopback::{spawn_node, test_prover};
use transcript::{Nonce, ProvingPolicy, Transcript};
use wire::Encoding;

/// Where the tiny model's chain splits: node A serves `0..TINY_SPLIT`,
/// node B the rest.
pub const TINY_SPLIT: usize = 4;

/// A way to cheat.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cheat {
    /// Node B serves another model's weights under the model's id.
    ModelSwap,
    /// Node B serves the same weights requantized to Q4_0 (the tiny model is
    /// Q8_0, the packaged one Q4_K_M).
    Requantized,
    /// Node B adds 1.0 to the output of its second layer at one position.
    TamperedActivation,
    /// Node A embeds another first prompt token than it was sent (and
    /// signs what it was sent).
    SubstitutedPrompt,
    /// The client's transcript names another prompt than the nodes ran.
    RewrittenPrompt,
    /// The head node's proof claims another log-probability.
    SpoofedLogprob,
    /// The head node's proof claims another token.
    SpoofedToken,
    /// The head node proves with another sampling randomness `r` than the
    /// client's nonce gives.
    WrongSeed,
}

impl Cheat {
    pub const ALL: [Cheat; 8] = [
        Cheat::ModelSwap,
        Cheat::Requantized,
        Cheat::TamperedActivation,
        Cheat::SubstitutedPrompt,
        Cheat::RewrittenPrompt,
        Cheat::SpoofedLogprob,
        Cheat::SpoofedToken,
        Cheat::WrongSeed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cheat::ModelSwap => "model swap (other weights)",
            Cheat::Requantized => "same weights requantized to Q4_0",
            Cheat::TamperedActivation => "tampered activation (node B's 2nd layer)",
            Cheat::SubstitutedPrompt => "substituted prompt token (node)",
            Cheat::RewrittenPrompt => "substituted prompt (transcript)",
            Cheat::SpoofedLogprob => "spoofed log-probability",
            Cheat::SpoofedToken => "spoofed token",
            Cheat::WrongSeed => "wrong sampling seed",
        }
    }

    /// The first bad step bisection should name, where one exists, for a
    /// chain split at `split`.
    pub fn expected_first_bad(self, split: usize) -> Option<Step> {
        match self {
            Cheat::ModelSwap | Cheat::Requantized => Some(Step::Layer(split as u32)),
            Cheat::TamperedActivation => Some(Step::Layer(split as u32 + 1)),
            Cheat::SubstitutedPrompt => Some(Step::Enter(0)),
            _ => None,
        }
    }

    fn proves(self) -> bool {
        matches!(
            self,
            Cheat::SpoofedLogprob | Cheat::SpoofedToken | Cheat::WrongSeed
        )
    }
}

/// What the routes made of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Caught {
    pub receipts: bool,
    pub audit: bool,
    /// `None` when the run had no proof to check.
    pub zk: Option<bool>,
    /// The step bisection named (its fraud proof checked valid on its own).
    pub first_bad: Option<Step>,
    /// Hops the audit left ambiguous.
    pub ambiguous: usize,
    /// The numbers that decided, in words.
    pub detail: String,
}

impl Caught {
    pub fn any(&self) -> bool {
        self.receipts || self.audit || self.zk == Some(true)
    }
}

/// One row of the detection table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub cheat: &'static str,
    pub caught: Caught,
    pub expected_first_bad: Option<Step>,
}

/// The honest runs: tokens generated and audited, and false rejections.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HonestRuns {
    pub runs: usize,
    pub tokens: usize,
    pub hops: usize,
    pub rejected_hops: usize,
    pub ambiguous_hops: usize,
    pub failed_receipt_checks: usize,
    pub rejected_proofs: usize,
}

impl HonestRuns {
    fn record(&mut self, transcript: &Transcript, report: &AuditReport, proof_rejected: bool) {
        let count = |v: Verdict| report.hops.iter().filter(|h| h.verdict == v).count();
        self.runs += 1;
        self.tokens += transcript.tokens.len();
        self.hops += report.hops.len();
        self.rejected_hops += count(Verdict::Reject);
        self.ambiguous_hops += count(Verdict::Ambiguous);
        self.failed_receipt_checks += report.receipts.iter().filter(|r| !r.passed).count();
        self.rejected_proofs += usize::from(proof_rejected);
    }
}

/// The whole suite.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteReport {
    pub rows: Vec<Row>,
    pub honest: HonestRuns,
}

/// The models of a suite: the honest one and the cheats' weights.
pub struct Models {
    pub honest: PathBuf,
    /// Other weights of the same shape (the model swap), when there are any.
    pub other: Option<PathBuf>,
    /// The honest weights requantized to Q4_0.
    pub requantized: PathBuf,
    /// Node A serves `0..split`, node B `split..layers`.
    pub split: usize,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub context: usize,
}

impl Models {
    /// The tiny random Gemma 3 (seed 31), another one (seed 32) and the
    /// first requantized, written to `dir`.
    pub fn write(dir: &Path) -> models::Result<Models> {
        std::fs::create_dir_all(dir).map_err(candle_core::Error::from)?;
        let config = tiny_gemma3_config();
        let (honest, other, requantized) = (
            dir.join("honest.gguf"),
            dir.join("other.gguf"),
            dir.join("requantized.gguf"),
        );
        write_random_gemma3(&honest, &config, 31)?;
        write_random_gemma3(&other, &config, 32)?;
        write_random_gemma3_as(&requantized, &config, 31, GgmlDType::Q4_0)?;
        Ok(Models {
            honest,
            other: Some(other),
            requantized,
            split: TINY_SPLIT,
            layers: config.layers,
            hidden: config.hidden,
            vocab: config.vocab,
            context: config.context,
        })
    }

    /// The model at `path`, split in half, and its Q4_0 requantization
    /// written to `dir` (no other weights of its shape: no model swap).
    pub fn of(path: &Path, dir: &Path) -> models::Result<Models> {
        std::fs::create_dir_all(dir).map_err(candle_core::Error::from)?;
        let requantized = dir.join("requantized.gguf");
        requantize_gguf(path, &requantized, GgmlDType::Q4_0)?;
        let mut reader = BufReader::new(File::open(path).map_err(candle_core::Error::from)?);
        let shape = Model::shape_of(&gguf_file::Content::read(&mut reader)?)?;
        Ok(Models {
            honest: path.to_path_buf(),
            other: None,
            requantized,
            split: shape.layers / 2,
            layers: shape.layers,
            hidden: shape.hidden,
            vocab: shape.vocab,
            context: shape.context,
        })
    }
}

fn shard(path: &Path, layers: Range<usize>) -> models::Result<(ModelId, Model)> {
    let mut reader = BufReader::new(File::open(path).map_err(candle_core::Error::from)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let id = model_id(&content, &mut reader)?;
    let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, layers)?;
    Ok((id, model))
}

/// One scenario: a two-node chain (one node cheating, or none) and a
/// sampled generation through it.
pub struct Run<'a> {
    pub models: &'a Models,
    pub cheat: Option<Cheat>,
    /// Token ids, BOS first.
    pub prompt: Vec<u32>,
    pub tokens: usize,
    /// Seeds the client nonce.
    pub seed: u64,
    /// Prove one challenged token (with the parameters in this directory).
    pub prove: Option<&'a Path>,
}

/// A generation through a chain whose nodes are still up (until this is
/// dropped), so that auditors can ask them.
pub struct LiveChain {
    /// The nodes' async runtime.
    pub nodes: tokio::runtime::Runtime,
    pub transcript: Transcript,
    /// The head node's proofs, when the run asked for them.
    pub bundle: Option<Bundle>,
}

/// The circuit a proving head node of the suite uses.
fn proof_shape() -> models::Result<CircuitShape> {
    CircuitShape::new(tiny_gemma3_config().vocab, FixedPoint::default(), 1, 1)
        .map_err(|e| models::ModelError::Shape(e.to_string()))
}

impl Run<'_> {
    /// Generates and audits; returns the transcript, the audit and the
    /// head node's bundle when it proved.
    fn go(&self, scratch: &Path) -> Result<(Transcript, AuditReport, Option<Bundle>), SuiteError> {
        let chain = self.start()?;
        let mut replayer = Replayer::open(&self.models.honest, Device::Cpu)?;
        let report = chain.nodes.block_on(audit(
            &chain.transcript,
            scratch,
            &mut replayer,
            &AuditOptions::default(),
        ))?;
        Ok((chain.transcript, report, chain.bundle))
    }

    /// Starts the chain and generates through it.
    pub fn start(&self) -> Result<LiveChain, SuiteError> {
        let m = self.models;
        let nodes = tokio::runtime::Runtime::new()?;
        let (honest_id, _) = shard(&m.honest, 0..1)?;
        let mut hops = Vec::new();
        for (index, range) in [0..m.split, m.split..m.layers].into_iter().enumerate() {
            let weights = match (self.cheat, index) {
                (Some(Cheat::ModelSwap), 1) => m
                    .other
                    .as_ref()
                    .ok_or(SuiteError::Missing("no other weights to swap in"))?,
                (Some(Cheat::Requantized), 1) => &m.requantized,
                _ => &m.honest,
            };
            let (_, model) = shard(weights, range.clone())?;
            let fault = match (self.cheat, index) {
                (Some(Cheat::TamperedActivation), 1) => Some(Fault::TamperLayer {
                    layer: m.split + 1,
                    position: self.prompt.len() as u64 + 2,
                    delta: 1.0,
                }),
                (Some(Cheat::SubstitutedPrompt), 0) => Some(Fault::SubstitutePrompt {
                    token: (self.prompt[1] + 1) % m.vocab as u32,
                }),
                _ => None,
            };
            let proving = match self.prove {
                Some(dir) if model.has_head() => {
                    Some(test_prover(proof_shape()?, dir.to_path_buf()))
                }
                _ => None,
            };
            let config = NodeConfig {
                proving,
                signer: SecretKey::from_seed(&[index as u8 + 1; 32]).map(Arc::new),
                fault,
                ..NodeConfig::new(honest_id, range.clone())
            };
            hops.push(spawn_node(&nodes, model, config)?);
        }
        let session = SessionConfig {
            encoding: Encoding::F32,
            io_timeout: Duration::from_secs(30),
            activation_bytes: m.hidden * 4,
            ..SessionConfig::default()
        };
        let mut backend = Backend::remote(hops, m.layers, honest_id, session)?;
        let nonce = Nonce::from_seed(self.seed);
        let options = GenerationOptions {
            max_tokens: self.tokens,
            temperature: Some(0.9),
            nonce,
            request_id: nonce.request_id(),
            stops: Vec::new(),
            proving: self
                .prove
                .map(|_| ProvingPolicy::Challenged { challenges: 1 }),
            keep_logits: false,
            observe_logits: false,
        };
        let info = ModelInfo {
            id: Some(honest_id),
            layers: m.layers,
            vocab: m.vocab,
            context: m.context,
        };
        let prompt = Prompt {
            text: "(token ids)".into(),
            tokens: self.prompt.clone(),
        };
        let generation = generate(&mut backend, info, None, prompt, &options, &mut Quiet)?;
        let mut transcript = generation.transcript;
        if self.cheat == Some(Cheat::RewrittenPrompt) {
            transcript.prompt_tokens[1] = (transcript.prompt_tokens[1] + 1) % m.vocab as u32;
        }
        let bundle = match generation.proofs {
            Some(proofs) => Some(
                proofs
                    .bundle
                    .ok_or(SuiteError::Missing("the head node proved nothing"))?,
            ),
            None => None,
        };
        Ok(LiveChain {
            nodes,
            transcript,
            bundle,
        })
    }
}

/// What a cheating head node sends instead of its honest bundle.
fn spoof(mut bundle: Bundle, cheat: Cheat) -> Bundle {
    for proof in &mut bundle.proofs {
        for statement in &mut proof.steps {
            match cheat {
                Cheat::SpoofedLogprob => statement.logprob /= 2,
                Cheat::SpoofedToken => statement.token ^= 1,
                Cheat::WrongSeed => {
                    if let Sampler::Sample { r, .. } = &mut statement.sampler {
                        *r ^= 1;
                    }
                }
                _ => {}
            }
        }
    }
    bundle
}

/// Checks proof bundles against transcripts, with the verifying key of each
/// bundle's circuit (one per temperature) from the key cache.
struct ProofChecker {
    params: halo2_proofs::poly::commitment::Params<pasta_curves::EqAffine>,
    params_dir: PathBuf,
}

impl ProofChecker {
    fn new(shape: CircuitShape, params_dir: &Path) -> Result<ProofChecker, SuiteError> {
        let params = ParamsCache::new(params_dir).load_or_generate(shape.k(), |_| {})?;
        Ok(ProofChecker {
            params,
            params_dir: params_dir.to_path_buf(),
        })
    }

    /// Whether `bundle` verifies and proves what `transcript` says.
    fn holds(
        &self,
        transcript: &Transcript,
        dir: &Path,
        bundle: &Bundle,
    ) -> Result<bool, SuiteError> {
        let key = verifier::key_for(bundle, &self.params_dir, &self.params)?;
        let report = verifier::verify_with_key(bundle, &self.params, &key)?;
        let shape = bundle.shape;
        let expected = transcript.expected_steps(dir, shape.fixed_point, shape.vocab)?;
        let openings = transcript.proof_openings(bundle, &self.params, &expected.logits);
        let answer = verifier::answer::check_answer(
            bundle,
            &report,
            &openings,
            &expected.steps,
            &transcript.required_positions(transcript.proving),
        );
        Ok(report.all_valid() && answer.valid() && expected.problems.is_empty())
    }
}

fn caught(report: &AuditReport, zk: Option<bool>) -> Caught {
    let failed: Vec<&str> = report
        .receipts
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    let rejected = report
        .hops
        .iter()
        .filter(|h| h.verdict == Verdict::Reject)
        .count();
    let first = report.hops.iter().find(|h| h.verdict == Verdict::Reject);
    let mut detail = Vec::new();
    if !failed.is_empty() {
        detail.push(format!("receipt checks failed: {}", failed.join(", ")));
    }
    if let Some(hop) = first {
        let worst = [hop.enter, hop.span, hop.exit]
            .into_iter()
            .flatten()
            .map(|c| c.max_abs_diff)
            .fold(0f32, f32::max);
        detail.push(format!(
            "{rejected} hops rejected, first at position {} (layers {}..{}, max abs diff {worst:.3})",
            hop.position, hop.layers[0], hop.layers[1]
        ));
    }
    if let Some(proof) = report.fraud_proofs.first() {
        detail.push(format!("fraud proof: {}", describe(proof.step)));
    }
    if zk == Some(true) {
        detail.push("proof bundle rejected against the transcript".into());
    }
    Caught {
        receipts: !failed.is_empty(),
        audit: rejected > 0,
        zk,
        first_bad: report.fraud_proofs.first().map(|p: &FraudProof| p.step),
        ambiguous: report
            .hops
            .iter()
            .filter(|h| h.verdict == Verdict::Ambiguous)
            .count(),
        detail: detail.join("; "),
    }
}

/// Why the cheat suite could not run.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Generation(Box<client::generation::GenerationError>),
    #[error(transparent)]
    Verify(#[from] verifier::VerifyError),
    #[error(transparent)]
    Transcript(#[from] transcript::TranscriptError),
    #[error("{0}")]
    Missing(&'static str),
}

impl From<client::generation::GenerationError> for SuiteError {
    fn from(e: client::generation::GenerationError) -> SuiteError {
        SuiteError::Generation(Box::new(e))
    }
}

/// Options of [`run_suite`].
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Scratch directory (models, transcripts).
    pub dir: PathBuf,
    /// A real model to run on (split in half; no model swap, and no proofs:
    /// the ZK rows need a proof at the model's vocabulary) instead of the
    /// tiny random ones.
    pub model: Option<PathBuf>,
    /// Public parameters cache, for the proving scenarios.
    pub params_dir: PathBuf,
    /// Honest tokens to generate and audit in all.
    pub honest_tokens: usize,
    /// Tokens per honest run.
    pub tokens_per_run: usize,
}

/// Runs every cheat once and honest chains for `honest_tokens` tokens;
/// `progress` hears about each run.
pub fn run_suite(
    options: &SuiteOptions,
    mut progress: impl FnMut(&str),
) -> Result<SuiteReport, SuiteError> {
    let models = match &options.model {
        None => Models::write(&options.dir),
        Some(path) => {
            progress("requantizing the model to Q4_0");
            Models::of(path, &options.dir)
        }
    }?;
    let prompt = vec![2, 17, 101, 45];
    let mut honest = HonestRuns::default();
    // On the tiny model, one honest run whose head node proves a challenged
    // token: the ZK cheats are what that node would have to send instead of
    // its bundle (no valid proof says anything else about the committed
    // logits).
    let proven = if options.model.is_none() {
        let checker = ProofChecker::new(proof_shape()?, &options.params_dir)?;
        progress("honest run with a proof");
        let run = Run {
            models: &models,
            cheat: None,
            prompt: prompt.clone(),
            tokens: 6,
            seed: 7,
            prove: Some(options.params_dir.as_path()),
        };
        let (transcript, report, bundle) = run.go(&options.dir)?;
        let bundle = bundle.ok_or(SuiteError::Missing("the proving run returned no bundle"))?;
        let rejected = !checker.holds(&transcript, &options.dir, &bundle)?;
        honest.record(&transcript, &report, rejected);
        Some((checker, transcript, report, bundle))
    } else {
        None
    };
    let mut rows = Vec::new();
    for cheat in Cheat::ALL {
        let (report, zk) = match (&proven, cheat) {
            (None, c) if c.proves() => continue,
            (_, Cheat::ModelSwap) if models.other.is_none() => continue,
            (Some((checker, transcript, report, bundle)), c) if c.proves() => {
                progress(cheat.name());
                let spoofed = spoof(bundle.clone(), cheat);
                let zk = !checker.holds(transcript, &options.dir, &spoofed)?;
                (report.clone(), Some(zk))
            }
            _ => {
                progress(cheat.name());
                let run = Run {
                    models: &models,
                    cheat: Some(cheat),
                    prompt: prompt.clone(),
                    tokens: 6,
                    seed: 7,
                    prove: None,
                };
                (run.go(&options.dir)?.1, None)
            }
        };
        rows.push(Row {
            cheat: cheat.name(),
            caught: caught(&report, zk),
            expected_first_bad: cheat.expected_first_bad(models.split),
        });
    }
    let per_run = options.tokens_per_run.max(1);
    let mut seed = 100;
    while honest.tokens < options.honest_tokens {
        progress(&format!(
            "honest tokens {}/{}",
            honest.tokens, options.honest_tokens
        ));
        seed += 1;
        let prompt: Vec<u32> = std::iter::once(2)
            .chain((0..1 + seed % 7).map(|i| (seed * 31 + i * 17) as u32 % 300 + 4))
            .collect();
        let run = Run {
            models: &models,
            cheat: None,
            prompt,
            tokens: per_run.min(options.honest_tokens - honest.tokens),
            seed,
            prove: None,
        };
        let (transcript, report, _) = run.go(&options.dir)?;
        honest.record(&transcript, &report, false);
    }
    Ok(SuiteReport { rows, honest })
}

impl SuiteReport {
    /// The detection table, as Markdown.
    pub fn table(&self) -> String {
        let yes = |b: bool| if b { "caught" } else { "-" };
        let mut out = String::from(
            "| cheat | receipts | audit | ZK proof | first bad step (expected) | numbers |\n\
             |---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let c = &row.caught;
            let first = |s: Option<Step>| s.map_or("-".to_string(), describe);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} ({}) | {} |\n",
                row.cheat,
                yes(c.receipts),
                yes(c.audit),
                c.zk.map_or("not run", |z| if z { "caught" } else { "-" }),
                first(c.first_bad),
                first(row.expected_first_bad),
                c.detail
            ));
        }
        let h = &self.honest;
        out.push_str(&format!(
            "\nHonest: {} runs, {} tokens, {} hops audited: {} rejected, {} ambiguous; \
             {} failed receipt checks; {} rejected proof bundles.\n",
            h.runs,
            h.tokens,
            h.hops,
            h.rejected_hops,
            h.ambiguous_hops,
            h.failed_receipt_checks,
            h.rejected_proofs
        ));
        out
    }
}
