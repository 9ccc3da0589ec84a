//! One generation from prompt to transcript: tokens chosen with the circuit's
//! own sampler, streamed as they come, hop digests and decode records kept,
//! and (on a chain whose head node proves) proofs asked for and collected.
//!
//! Tokens are chosen by `circuits::sample_token` over the logits quantized to
//! the proof's fixed point: the same integer arithmetic the circuit checks,
//! so every token can be proven. On a chain of nodes the head node picks
//! (with the `r` this client derives from its nonce) and sends the token,
//! its log-probability and the digest of the logits, not the logits, unless
//! they are to be kept.

use std::time::{Duration, Instant};

use circuits::fixed_point::{Temperature, TemperatureError};
use circuits::{FixedPoint, Sampler, Tables};
use models::generate::Generator;
use models::model_id::ModelId;
use models::tokenizer::Tokenizer;
use prover::{Record, Records};
use transcript::{
    self, HopRecord, Nonce, ProofReceiptRecord, ProvingPolicy, RecordsRef, Transcript,
    TranscriptError, TranscriptSampler,
};
use verifier::bundle::Bundle;
use wire::{ProveStep, TokenSampler};

use crate::proofs::{ProofCollector, ProofsError, POLL_INTERVAL};
use crate::session::{Session, SessionConfig};
use crate::{ClientError, Hop};

/// Where the model runs: in this process, or on a chain of nodes.
pub enum Backend<'a> {
    Local(Generator<'a>),
    Remote {
        runtime: tokio::runtime::Runtime,
        session: Box<Session>,
    },
}

/// What a generation reports as it goes.
pub trait Observer {
    /// A piece of generated text.
    fn text(&mut self, _piece: &str) {}
    /// A token as it is chosen, before its text.
    fn token(&mut self, _chosen: &Chosen<'_>) {}
    /// Asked after each token is fed: `true` ends the generation there, the
    /// tokens so far its answer (a stop sequence seen, a reader gone).
    fn should_stop(&mut self) -> bool {
        false
    }
    /// A routing event (failover, reroute, route), one line.
    fn event(&mut self, _line: &str) {}
    /// Generation is over, its transcript complete but for the proof
    /// receipts (proofs may still be coming); the tokens took `elapsed`.
    fn generated(&mut self, _transcript: &Transcript, _elapsed: Duration) {}
    /// Proof progress: steps proven and asked for so far.
    fn proofs(&mut self, _proven: usize, _asked: usize) {}
}

/// One generated token.
pub struct Chosen<'a> {
    pub position: u64,
    pub token: u32,
    /// What a proof of the token states: the log-probability at the
    /// sampler's temperature, at the proof's fixed point.
    pub logprob: f64,
    /// The logits it was chosen from: always in this process, from a chain
    /// of nodes only with [`GenerationOptions::observe_logits`] or
    /// [`GenerationOptions::keep_logits`].
    pub logits: Option<&'a [f32]>,
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerationOptions {
    pub max_tokens: usize,
    /// `None`: greedy.
    pub temperature: Option<f64>,
    /// Fixes `r` of every sampled token with `request_id`
    /// ([`transcript::sampling_r`]).
    pub nonce: Nonce,
    pub request_id: u64,
    /// Tokens that end the generation (they are kept as its last token).
    pub stops: Vec<u32>,
    /// Ask the head node for proofs (remote only).
    pub proving: Option<ProvingPolicy>,
    /// Keep every token's logits in the transcript's records (for
    /// `--transcript-logits` and `zkinfer prove --records`): a head node
    /// then sends all `4 * vocab` bytes of them a token instead of its pick.
    pub keep_logits: bool,
    /// Hand every token's logits to the observer without keeping them (a
    /// head node then sends them, as for `keep_logits`).
    pub observe_logits: bool,
}

/// A finished generation.
pub struct Generation {
    /// The transcript, with its decode records inline.
    pub transcript: Transcript,
    pub prompt_time: Duration,
    /// From the first token's sampling to the last token's.
    pub generation_time: Duration,
    /// Proofs, when asked for.
    pub proofs: Option<ProofOutcome>,
}

/// The proofs a generation collected.
pub struct ProofOutcome {
    /// Positions asked for.
    pub asked: Vec<u64>,
    /// All proofs that came back, merged.
    pub bundle: Option<Bundle>,
    /// Positions the node could not prove, and why.
    pub failures: Vec<(u64, String)>,
    /// From the end of generation until the last proof came back.
    pub wait: Duration,
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("{0}")]
    Model(#[from] models::ModelError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("position {position}: {message}")]
    Sampling { position: u64, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Temperature(#[from] TemperatureError),
    #[error(transparent)]
    Transcript(#[from] TranscriptError),
    #[error("proofs: {0}")]
    Proofs(#[from] ProofsError),
    #[error("the prompt is {prompt} tokens and the model's context holds {context}: shorten it to leave room for a generated token")]
    PromptTooLong { prompt: usize, context: usize },
}

impl<'a> Backend<'a> {
    /// Measures `candidates`, connects the cheapest chain over `layers`
    /// layers; the session fails over and reroutes on its own.
    pub fn remote(
        candidates: Vec<Hop>,
        layers: usize,
        model_id: ModelId,
        config: SessionConfig,
    ) -> Result<Backend<'a>, GenerationError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| GenerationError::Usage(format!("starting tokio: {e}")))?;
        // Chain request ids only need to be unique among this client's
        // requests on a node: the time and process id will do.
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        let hash = blake3::hash(seed.as_bytes());
        let first = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let session = runtime.block_on(Session::connect(
            candidates, layers, model_id, config, first,
        ))?;
        Ok(Backend::Remote {
            runtime,
            session: Box::new(session),
        })
    }

    /// Positions fed so far.
    pub fn position(&self) -> u64 {
        match self {
            Backend::Local(g) => g.position() as u64,
            Backend::Remote { session, .. } => session.position(),
        }
    }

    /// Feeds tokens and returns the logits of the last one (remote logits
    /// are final: failover happens inside).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerationError> {
        match self {
            Backend::Local(g) => Ok(g.feed(tokens)?),
            Backend::Remote { runtime, session } => Ok(runtime.block_on(session.feed(tokens))?),
        }
    }

    /// The session of a chain of nodes; `None` in this process.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Backend::Local(_) => None,
            Backend::Remote { session, .. } => Some(session),
        }
    }

    /// Feeds tokens and picks the token after them: here from the logits,
    /// or on the head node, which then sends the token instead of the
    /// logits (unless they are to be kept). Appends the forward's hop
    /// digests and reports the session's routing events.
    fn feed(
        &mut self,
        tokens: &[u32],
        picking: &Picking<'_>,
        hops: &mut Vec<HopRecord>,
        observer: &mut dyn Observer,
    ) -> Result<Pick, GenerationError> {
        let position = self.position();
        let next = position + tokens.len() as u64;
        let sampler = picking.sampler(next);
        let pick = match self {
            Backend::Local(g) => {
                let logits = g.feed(tokens)?;
                hops.push(HopRecord::local(position, picking.layers, tokens, &logits));
                picking.pick(logits, sampler, next)?
            }
            Backend::Remote { runtime, session } => {
                let result = if picking.fetch_logits {
                    runtime
                        .block_on(session.feed(tokens))
                        .map_err(GenerationError::from)
                        .and_then(|logits| picking.pick(logits, sampler, next))
                } else {
                    runtime
                        .block_on(session.feed_sampled(tokens, wire_sampler(sampler)))
                        .map_err(GenerationError::from)
                        .and_then(|s| picking.check_remote(s.token, s.logprob, next))
                };
                report_events(session, observer);
                let pick = result?;
                hops.extend(
                    session
                        .last_hops()
                        .iter()
                        .map(|d| HopRecord::remote(position, d)),
                );
                pick
            }
        };
        Ok(pick)
    }

    /// Asks the head node to prove `steps` (plus any orphaned by a chain
    /// change) and takes in what it has finished.
    fn prove(
        &mut self,
        steps: &[ProveStep],
        collector: &mut ProofCollector,
        observer: &mut dyn Observer,
    ) -> Result<(), GenerationError> {
        let Backend::Remote { runtime, session } = self else {
            return Err(GenerationError::Usage(
                "proofs alongside inference need a chain of nodes (--nodes) whose head node proves; \
                 for single-process generation prove the records with `zkinfer prove`"
                    .into(),
            ));
        };
        let mut ask = steps.to_vec();
        ask.extend(collector.orphaned(session.head_epoch()));
        let result = runtime.block_on(session.prove(&ask));
        report_events(session, observer);
        let (request, reply) = result?;
        collector.asked(request, &ask);
        Ok(collector.absorb(reply)?)
    }

    /// Frees the request's caches on the nodes but keeps the chain for
    /// collecting proofs (best effort).
    fn release(&mut self) {
        if let Backend::Remote { runtime, session } = self {
            runtime.block_on(session.release());
        }
    }

    /// Frees the request's caches on the nodes (best effort).
    pub fn finish(&mut self) {
        if let Backend::Remote { runtime, session } = self {
            runtime.block_on(session.end());
        }
    }

    /// Failover and reroute counts (zero locally).
    pub fn stats(&self) -> crate::session::SessionStats {
        match self {
            Backend::Local(_) => Default::default(),
            Backend::Remote { session, .. } => session.stats(),
        }
    }
}

fn report_events(session: &mut Session, observer: &mut dyn Observer) {
    for event in session.take_events() {
        observer.event(&event.to_string());
    }
}

/// The token after a forward, and the logits it came from when kept.
struct Pick {
    token: u32,
    logprob: f64,
    logits: Option<Vec<f32>>,
}

/// How the token after each forward is chosen: the circuit's sampler at the
/// proof's fixed point, with `r` from the nonce.
struct Picking<'t> {
    tables: &'t Tables,
    fixed_point: FixedPoint,
    /// `None`: greedy.
    temperature: Option<Temperature>,
    nonce: Nonce,
    request_id: u64,
    layers: usize,
    vocab: usize,
    /// Ask a head node for the logits instead of its pick.
    fetch_logits: bool,
}

impl Picking<'_> {
    /// The sampler of the token at `position`.
    fn sampler(&self, position: u64) -> Sampler {
        match self.temperature {
            None => Sampler::Greedy,
            Some(temperature) => Sampler::Sample {
                temperature,
                r: transcript::sampling_r(&self.nonce, self.request_id, position),
            },
        }
    }

    fn pick(
        &self,
        logits: Vec<f32>,
        sampler: Sampler,
        position: u64,
    ) -> Result<Pick, GenerationError> {
        let failed = |message: String| GenerationError::Sampling { position, message };
        let z = self
            .fixed_point
            .quantize_all(&logits)
            .map_err(|e| failed(e.to_string()))?;
        let statement =
            circuits::pick(self.tables, &z, sampler).map_err(|e| failed(e.to_string()))?;
        Ok(Pick {
            token: statement.token,
            logprob: statement.logprob_nats(self.fixed_point.frac_bits),
            logits: Some(logits),
        })
    }

    /// A head node's pick, as far as it can be checked without the logits.
    fn check_remote(
        &self,
        token: u32,
        logprob: f64,
        position: u64,
    ) -> Result<Pick, GenerationError> {
        if token as usize >= self.vocab {
            return Err(GenerationError::Sampling {
                position,
                message: format!(
                    "the head node picked token {token}, outside the vocabulary of {}",
                    self.vocab
                ),
            });
        }
        Ok(Pick {
            token,
            logprob,
            logits: None,
        })
    }
}

/// The prompt: its text (for the transcript) and its tokens.
pub struct Prompt {
    pub text: String,
    pub tokens: Vec<u32>,
}

impl Prompt {
    /// `text` encoded with a BOS token first.
    pub fn encode(tokenizer: &Tokenizer, text: &str) -> Prompt {
        Prompt {
            text: text.to_string(),
            tokens: tokenizer.encode(text, true),
        }
    }
}

/// What the model is: its id (for the transcript), layer count and vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct ModelInfo {
    pub id: Option<ModelId>,
    pub layers: usize,
    pub vocab: usize,
    /// The most positions a request may hold: prompt and generated tokens.
    pub context: usize,
}

/// Generates after `prompt` and returns the transcript; with proving, waits
/// until every asked step is proven or failed. Text is streamed to the
/// observer when a tokenizer is given.
pub fn generate(
    backend: &mut Backend<'_>,
    model: ModelInfo,
    tokenizer: Option<&Tokenizer>,
    prompt: Prompt,
    options: &GenerationOptions,
    observer: &mut dyn Observer,
) -> Result<Generation, GenerationError> {
    let fixed_point = FixedPoint::default();
    let temperature = options.temperature.map(Temperature::new).transpose()?;
    let tables = Tables::new(fixed_point, temperature.unwrap_or(Temperature::ONE));
    let picking = Picking {
        tables: &tables,
        fixed_point,
        temperature,
        nonce: options.nonce,
        request_id: options.request_id,
        layers: model.layers,
        vocab: model.vocab,
        fetch_logits: options.keep_logits || options.observe_logits,
    };
    let transcript_sampler = match options.temperature {
        None => TranscriptSampler::Greedy {},
        Some(temperature) => TranscriptSampler::Sample { temperature },
    };
    let mut collector = options.proving.map(|_| ProofCollector::default());

    let prompt_tokens = prompt.tokens;
    if prompt_tokens.len() >= model.context {
        return Err(GenerationError::PromptTooLong {
            prompt: prompt_tokens.len(),
            context: model.context,
        });
    }
    // Generation stops where the context ends.
    let max_tokens = options.max_tokens.min(model.context - prompt_tokens.len());
    let mut hops = Vec::new();
    let start = Instant::now();
    let mut pick = backend.feed(&prompt_tokens, &picking, &mut hops, observer)?;
    let prompt_time = start.elapsed();
    let mut decoder = tokenizer.map(Tokenizer::stream_decoder);
    let (mut tokens, mut logprobs, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..max_tokens {
        let position = backend.position();
        let token = pick.token;
        tokens.push(token);
        logprobs.push(pick.logprob);
        observer.token(&Chosen {
            position,
            token,
            logprob: pick.logprob,
            logits: pick.logits.as_deref(),
        });
        if let (Some(logits), true) = (pick.logits.take(), options.keep_logits) {
            steps.push(Record {
                position,
                logits,
                token,
                sampler: transcript_sampler.step(&options.nonce, options.request_id, position),
            });
        }
        if let (Some(collector), Some(ProvingPolicy::All)) = (&mut collector, options.proving) {
            let step = ProveStep {
                position,
                token,
                sampler: wire_sampler(picking.sampler(position)),
            };
            backend.prove(&[step], collector, observer)?;
            observer.proofs(collector.proven(), tokens.len());
        }
        let stop = options.stops.contains(&token);
        if let (Some(decoder), false) = (&mut decoder, stop) {
            observer.text(&decoder.push(token));
        }
        // Every token is fed, a stop token and the last one too, so that a
        // signed first hop names it even when no logits are kept.
        pick = backend.feed(&[token], &picking, &mut hops, observer)?;
        if stop || observer.should_stop() {
            break;
        }
    }
    if let Some(mut decoder) = decoder {
        observer.text(&decoder.finish());
    }
    let generation_time = start.elapsed();

    let mut transcript = Transcript {
        version: transcript::VERSION,
        model_id: model.id.map(|id| id.to_string()).unwrap_or_default(),
        prompt: prompt.text,
        prompt_tokens,
        sampler: transcript_sampler,
        client_nonce: options.nonce.to_hex(),
        request_id: options.request_id,
        tokens,
        hops,
        logprobs,
        records: options.keep_logits.then_some(RecordsRef::Inline(Records {
            vocab: model.vocab,
            steps,
        })),
        proving: options.proving,
        proof_receipts: Vec::new(),
        receipts_signature: None,
    };
    transcript.receipts_signature = transcript.aggregate_receipts()?;
    observer.generated(&transcript, generation_time);
    let proofs = match collector {
        Some(mut collector) => {
            let outcome = collect_proofs(backend, &transcript, &mut collector, observer);
            backend.finish();
            let (outcome, receipts) = outcome?;
            transcript.proof_receipts = receipts;
            Some(outcome)
        }
        None => {
            backend.finish();
            None
        }
    };
    Ok(Generation {
        transcript,
        prompt_time,
        generation_time,
        proofs,
    })
}

/// Asks for the challenged steps (policy `challenged`), then polls until
/// nothing asked is outstanding; returns the outcome and the head's proof
/// receipts.
fn collect_proofs(
    backend: &mut Backend<'_>,
    transcript: &Transcript,
    collector: &mut ProofCollector,
    observer: &mut dyn Observer,
) -> Result<(ProofOutcome, Vec<ProofReceiptRecord>), GenerationError> {
    let start = Instant::now();
    let nonce = transcript.nonce()?;
    let tokens: Vec<(u64, u32)> = transcript
        .token_positions()
        .zip(transcript.tokens.iter().copied())
        .collect();
    let asked: Vec<u64> = match transcript.proving {
        Some(ProvingPolicy::Challenged { challenges }) => {
            transcript.challenged_positions(challenges)
        }
        _ => tokens.iter().map(|(p, _)| *p).collect(),
    };
    if let Some(ProvingPolicy::Challenged { .. }) = transcript.proving {
        let steps = tokens
            .iter()
            .filter(|(p, _)| asked.contains(p))
            .map(|&(position, token)| {
                Ok(ProveStep {
                    position,
                    token,
                    sampler: wire_sampler(transcript.sampler_at(&nonce, position)?),
                })
            })
            .collect::<Result<Vec<_>, GenerationError>>()?;
        backend.prove(&steps, collector, observer)?;
    }
    // Everything is asked for: the nodes may free the request's caches
    // while the head proves.
    backend.release();
    let total = asked.len();
    observer.proofs(collector.proven(), total);
    while collector.outstanding() > 0 {
        std::thread::sleep(POLL_INTERVAL);
        backend.prove(&[], collector, observer)?;
        observer.proofs(collector.proven(), total);
    }
    let failures = collector
        .failures()
        .iter()
        .map(|(p, m)| (*p, m.clone()))
        .collect();
    let (bundle, receipts) = std::mem::take(collector).into_bundle();
    let outcome = ProofOutcome {
        asked,
        bundle,
        failures,
        wait: start.elapsed(),
    };
    Ok((outcome, receipts))
}

/// The wire's form of a circuit sampler.
fn wire_sampler(sampler: Sampler) -> TokenSampler {
    match sampler {
        Sampler::Greedy => TokenSampler::Greedy,
        Sampler::Sample { temperature, r } => TokenSampler::Sample {
            temperature: temperature.value(),
            r,
        },
    }
}
