//! What the server generates with, and one generation on a thread of its
//! own: `client::generation` drives the model (in this process or on a
//! chain of nodes); its observer turns tokens into [`Event`]s for the HTTP
//! side and stops the generation when a stop sequence appears or the
//! reader is gone (the nodes then free the request's caches). The answer is
//! handed over as soon as the tokens are; proofs are collected afterwards
//! on the same thread and settled in the [`Store`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use client::generation::{
    generate, Backend as Generation, Chosen, GenerationError, GenerationOptions, ModelInfo,
    Observer, Prompt,
};
use client::session::SessionConfig;
use client::Hop;
use models::generate::Generator;
use models::tokenizer::{StreamDecoder, Tokenizer};
use models::Model;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use transcript::{ProvingPolicy, Transcript};

use crate::audits::Auditor;
use crate::chat::ChatTemplate;
use crate::metrics::Metrics;
use crate::openai::{ApiError, Checked};
use crate::stop::StopText;
use crate::store::{ProofState, Store};

/// Where generations run.
pub enum Backend {
    /// The whole model in this process.
    Local(Arc<Model>),
    /// A chain of nodes chosen among `nodes` for each request.
    Remote {
        nodes: Vec<Hop>,
        session: SessionConfig,
    },
}

/// The model the server answers with, ready to generate.
pub struct Engine {
    /// The name `/v1/models` lists and requests name.
    pub name: String,
    /// Its id (`models::model_id`), layers, vocabulary and context.
    pub model: ModelInfo,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub backend: Backend,
    /// What the head node is asked to prove (chains of nodes only).
    pub proving: Option<ProvingPolicy>,
    /// Audits answers whose hops are signed (chains of nodes only).
    pub auditor: Option<Auditor>,
}

/// One token as it streams out.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// Text that may be shown now (held back while a stop sequence may be
    /// starting; empty for a stop token).
    pub text: String,
    pub position: u64,
    pub token: u32,
    /// The token's log-probability as a proof states it.
    pub logprob: f64,
    /// The most likely tokens and their (unproven) log-probabilities.
    pub top: Vec<(u32, f64)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop sequence.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The tokens are done.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Complete but for the head's proof receipts.
    pub transcript: Transcript,
    /// Held-back text released at the end.
    pub tail: String,
    pub finish_reason: FinishReason,
    /// From the first token to the last.
    pub elapsed: Duration,
    /// The positions asked to be proven.
    pub proof_positions: Vec<u64>,
    /// [`crate::verification::receipts`] of the transcript.
    pub receipts: serde_json::Value,
}

/// What a generation sends the HTTP side, in order: tokens, then `Done`
/// or `Failed`.
#[derive(Debug)]
pub enum Event {
    Token(TokenOut),
    Done(Box<Finished>),
    Failed(ApiError),
}

/// Slots held by one generation: its generation slot until the tokens are
/// done, its proving slot until the proofs are.
pub struct Permits {
    pub generation: OwnedSemaphorePermit,
    pub proving: Option<OwnedSemaphorePermit>,
}

impl Engine {
    /// Starts generating `prompt` on a thread of its own; the answer is kept
    /// in `store` under `id`.
    pub fn spawn(
        self: &Arc<Self>,
        id: String,
        prompt: Prompt,
        checked: Checked,
        permits: Permits,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> mpsc::Receiver<Event> {
        let (events, receiver) = mpsc::channel(64);
        let engine = Arc::clone(self);
        // Counted from here, so that a generation is running as soon as its
        // slot is taken.
        metrics.started();
        let counts = Arc::clone(&metrics);
        let run = move || engine.run(&id, prompt, checked, permits, events, &store, &metrics);
        if let Err(e) = std::thread::Builder::new()
            .name("generation".into())
            .spawn(run)
        {
            // The receiver sees the channel closed with no Done: a failed answer.
            eprintln!("[api: no thread for a generation: {e}]");
            counts.ended(0, 0, Duration::ZERO);
        }
        receiver
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        id: &str,
        prompt: Prompt,
        checked: Checked,
        permits: Permits,
        events: mpsc::Sender<Event>,
        store: &Store,
        metrics: &Metrics,
    ) {
        let prompt_tokens = prompt.tokens.len();
        let options = GenerationOptions {
            max_tokens: checked.max_tokens,
            temperature: checked.temperature,
            nonce: checked.nonce,
            request_id: checked.nonce.request_id(),
            stops: self.tokenizer.stop_tokens(),
            proving: self.proving,
            keep_logits: false,
            observe_logits: checked.logprobs.is_some_and(|k| k > 0),
        };
        let mut streamer = Streamer {
            auditor: self.auditor.as_ref(),
            stop_tokens: options.stops.clone(),
            events,
            decoder: self.tokenizer.stream_decoder(),
            text: StopText::new(checked.stops.clone()),
            top: checked.logprobs.unwrap_or(0),
            temperature: checked.temperature.unwrap_or(1.0),
            stop_token: false,
            gone: false,
            generated: false,
            generation: Some(permits.generation),
            started: Instant::now(),
            tokens: 0,
            store,
            id,
            metrics,
        };
        let result = self.generate(prompt, &options, &mut streamer);
        if !streamer.generated {
            metrics.ended(prompt_tokens, streamer.tokens, streamer.started.elapsed());
        }
        match result {
            Ok(generation) => {
                if let Some(outcome) = generation.proofs {
                    let proven = outcome.bundle.as_ref().map_or(0, |b| b.steps().count());
                    metrics.proofs(proven, outcome.failures.len(), outcome.wait);
                    store.settle(
                        id,
                        Some(generation.transcript),
                        ProofState::Done {
                            positions: outcome.asked,
                            bundle: outcome.bundle.map(|b| b.to_bytes()),
                            failures: outcome.failures,
                        },
                    );
                }
            }
            Err(e) if streamer.generated => {
                let positions = store
                    .get(id)
                    .map(|s| s.proofs.positions().to_vec())
                    .unwrap_or_default();
                metrics.proofs(0, positions.len(), Duration::ZERO);
                store.settle(
                    id,
                    None,
                    ProofState::Failed {
                        positions,
                        reason: e.to_string(),
                    },
                );
            }
            Err(e) => {
                let _ = streamer.events.blocking_send(Event::Failed(api_error(e)));
            }
        }
        drop(permits.proving);
    }

    // One error per generation at most: its size costs nothing.
    #[allow(clippy::result_large_err)]
    fn generate(
        &self,
        prompt: Prompt,
        options: &GenerationOptions,
        observer: &mut Streamer<'_>,
    ) -> Result<client::generation::Generation, GenerationError> {
        let mut backend = match &self.backend {
            Backend::Local(model) => Generation::Local(Generator::new(model)?),
            Backend::Remote { nodes, session } => {
                let id = self.model.id.ok_or_else(|| {
                    GenerationError::Usage("a chain of nodes needs the model id".into())
                })?;
                let backend =
                    Generation::remote(nodes.clone(), self.model.layers, id, session.clone())?;
                if let Generation::Remote { session, .. } = &backend {
                    for (hop, cost) in session.route_costs() {
                        if let Some(cost) = cost {
                            observer.metrics.hop_rtt(hop.addr.to_string(), cost.rtt);
                        }
                    }
                }
                backend
            }
        };
        generate(&mut backend, self.model, None, prompt, options, observer)
    }
}

/// A generation's error as the API answers it.
fn api_error(e: GenerationError) -> ApiError {
    match e {
        GenerationError::PromptTooLong { .. } => {
            ApiError::invalid(Some("messages"), e.to_string()).with_code("context_length_exceeded")
        }
        GenerationError::Temperature(_) => ApiError::invalid(Some("temperature"), e.to_string()),
        GenerationError::Client(_) => {
            ApiError::unavailable(format!("the chain of nodes failed: {e}"))
        }
        other => ApiError::server(other.to_string()),
    }
}

/// The observer of one generation.
struct Streamer<'a> {
    auditor: Option<&'a Auditor>,
    stop_tokens: Vec<u32>,
    events: mpsc::Sender<Event>,
    decoder: StreamDecoder<'a>,
    text: StopText,
    /// Top log-probabilities per token.
    top: usize,
    temperature: f64,
    stop_token: bool,
    /// The reader went away: stop.
    gone: bool,
    /// The tokens are done and handed over.
    generated: bool,
    generation: Option<OwnedSemaphorePermit>,
    started: Instant,
    tokens: usize,
    store: &'a Store,
    id: &'a str,
    metrics: &'a Metrics,
}

impl Streamer<'_> {
    fn send(&mut self, event: Event) {
        if self.events.blocking_send(event).is_err() {
            self.gone = true;
        }
    }
}

impl Observer for Streamer<'_> {
    fn token(&mut self, chosen: &Chosen<'_>) {
        self.tokens += 1;
        let text = if self.stop_tokens.contains(&chosen.token) {
            self.stop_token = true;
            String::new()
        } else {
            let piece = self.decoder.push(chosen.token);
            self.text.push(&piece)
        };
        let top = match chosen.logits {
            Some(logits) if self.top > 0 => top_logprobs(logits, self.temperature, self.top),
            _ => Vec::new(),
        };
        self.send(Event::Token(TokenOut {
            text,
            position: chosen.position,
            token: chosen.token,
            logprob: chosen.logprob,
            top,
        }));
    }

    fn should_stop(&mut self) -> bool {
        self.gone || self.text.hit()
    }

    fn generated(&mut self, transcript: &Transcript, elapsed: Duration) {
        self.generated = true;
        let tail = if self.text.hit() {
            String::new()
        } else {
            let rest = self.decoder.finish();
            let mut tail = self.text.push(&rest);
            if !self.text.hit() {
                tail.push_str(&self.text.finish());
            }
            tail
        };
        let finish_reason = if self.stop_token || self.text.hit() {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        let proof_positions = transcript.required_positions(transcript.proving);
        let proofs = if transcript.proving.is_some() {
            ProofState::Pending {
                positions: proof_positions.clone(),
            }
        } else {
            ProofState::None
        };
        self.store.insert(self.id, transcript.clone(), proofs);
        if let Some(auditor) = self.auditor {
            if transcript.hops.iter().any(|h| h.receipt.is_some()) {
                auditor.submit(transcript.clone());
            }
        }
        self.metrics.ended(
            transcript.prompt_tokens.len(),
            transcript.tokens.len(),
            elapsed,
        );
        // The slot is free for the next request while the head proves.
        drop(self.generation.take());
        self.send(Event::Done(Box::new(Finished {
            transcript: transcript.clone(),
            tail,
            finish_reason,
            elapsed,
            proof_positions,
            receipts: crate::verification::receipts(transcript),
        })));
    }
}

/// The `k` most likely tokens under `softmax(logits / temperature)`, with
/// their log-probabilities in floating point (not proven).
pub fn top_logprobs(logits: &[f32], temperature: f64, k: usize) -> Vec<(u32, f64)> {
    let scaled = |z: f32| z as f64 / temperature;
    let max = logits
        .iter()
        .map(|&z| scaled(z))
        .fold(f64::NEG_INFINITY, f64::max);
    let log_sum = max
        + logits
            .iter()
            .map(|&z| (scaled(z) - max).exp())
            .sum::<f64>()
            .ln();
    let mut top: Vec<(u32, f64)> = Vec::with_capacity(k + 1);
    for (id, &z) in logits.iter().enumerate() {
        let value = scaled(z);
        if top.len() == k && top.last().is_some_and(|&(_, v)| v >= value) {
            continue;
        }
        // Ties keep the lower id first, as greedy decoding does.
        let at = top.partition_point(|&(_, v)| v >= value);
        top.insert(at, (id as u32, value));
        top.truncate(k);
    }
    top.into_iter().map(|(id, v)| (id, v - log_sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_the_largest_in_order_and_normalised() {
        let logits = [1.0f32, 3.0, 3.0, -2.0, 0.5];
        let top = top_logprobs(&logits, 1.0, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 0]);
        let sum: f64 = logits.iter().map(|&z| (z as f64).exp()).sum();
        assert!((top[0].1 - (3.0 - sum.ln())).abs() < 1e-12);
        assert!((top[2].1 - (1.0 - sum.ln())).abs() < 1e-12);
        let all = top_logprobs(&logits, 0.5, 5);
        let total: f64 = all.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        assert!(top_logprobs(&logits, 1.0, 0).is_empty());
    }
}
