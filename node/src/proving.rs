//! Proving next to inference.
//!
//! - [`ProofService`], on the node that holds the head: keeps the logits it
//!   answered for each request (within a bound per request and one in all),
//!   takes [`ProveStep`]s (a position, the token
//!   the client chose there and how), and proves them on a worker thread of
//!   its own at the lowest CPU priority, so that forwards never wait for it.
//!   Finished proof bundles wait until the client collects them.
//!
//! The statement proven for each step is the decode-step statement of the
//! `circuits` crate (docs/statement.md) over the logits the node answered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use circuits::fixed_point::{Temperature, TemperatureError};
use circuits::opening::proof_commitments_digest;
use circuits::CircuitShape;
use models::model_id::ModelId;
use prover::{ProveError, Prover, Record, RecordSampler, Records};
use transcript::f32_bytes;
use verifier::receipt::{ProofReceipt, SecretKey};
use verifier::ParamsCache;

use wire::{ProofFailure, ProofsReply, ProveStep, ProvenBundle, TokenSampler};

/// How a node proves.
#[derive(Clone, Debug)]
pub struct ProvingConfig {
    /// The circuit: the model's vocabulary, steps per proof, lanes.
    pub shape: CircuitShape,
    /// Where public parameters are cached.
    pub params_dir: PathBuf,
    /// Threads of the proving pool (they run at the lowest CPU priority).
    pub threads: usize,
    /// Logits rows kept per request; older positions are dropped first.
    pub max_positions: usize,
    /// Logits rows kept over all requests; past it the least recently used
    /// request loses its oldest row first.
    pub max_total_positions: usize,
}

/// A step waiting for the worker, with the logits it is about.
struct Job {
    request: u64,
    step: ProveStep,
    logits: Arc<Vec<f32>>,
}

/// A finished bundle and, per proof, what its receipt names.
struct Finished {
    bytes: Vec<u8>,
    proofs: Vec<ProofNames>,
}

/// What a proof's receipt names besides the node: the digest of the proof's
/// logit commitments, its seed, and its steps' positions and logits digests.
struct ProofNames {
    commitments: [u8; 32],
    seed: [u8; 32],
    steps: Vec<(u64, [u8; 32])>,
}

/// One request's proving state on the node.
#[derive(Default)]
struct RequestProofs {
    /// Logits by the position of the token they choose.
    logits: BTreeMap<u64, Arc<Vec<f32>>>,
    pending: u32,
    bundles: Vec<Finished>,
    failures: Vec<ProofFailure>,
    last_used: Option<Instant>,
}

#[derive(Default)]
struct State {
    requests: HashMap<u64, RequestProofs>,
    queue: VecDeque<Job>,
    /// Set when the keys could not be built: every step fails with it.
    broken: Option<String>,
}

impl State {
    /// Drops logits rows until at most `max` are kept over all requests:
    /// the oldest row of the least recently used other request first, then
    /// `current`'s own oldest.
    fn keep_within(&mut self, current: u64, max: usize) {
        let mut total: usize = self.requests.values().map(|r| r.logits.len()).sum();
        while total > max {
            let victim = self
                .requests
                .iter()
                .filter(|(id, r)| **id != current && !r.logits.is_empty())
                .min_by_key(|(_, r)| r.last_used)
                .map(|(id, _)| *id)
                .unwrap_or(current);
            match self
                .requests
                .get_mut(&victim)
                .and_then(|r| r.logits.pop_first())
            {
                Some(_) => total -= 1,
                None => return,
            }
        }
    }
}

struct Inner {
    config: ProvingConfig,
    state: Mutex<State>,
    wake: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The head node's prover (see the module docs). Dropping it lets the
/// worker finish its current proof and stop.
pub struct ProofService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProofService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofService")
            .field("shape", &self.inner.config.shape.describe())
            .finish()
    }
}

impl Drop for ProofService {
    fn drop(&mut self) {
        self.inner.lock().broken = Some("the node is shutting down".into());
        self.inner.wake.notify_all();
    }
}

impl ProofService {
    /// Starts the worker thread, which first loads (or generates) the public
    /// parameters and builds the keys — minutes for a large vocabulary;
    /// steps submitted meanwhile wait. `on_ready` is told how long that took,
    /// or why it failed.
    pub fn start(
        config: ProvingConfig,
        on_ready: impl FnOnce(Result<Duration, KeysError>) + Send + 'static,
    ) -> ProofService {
        let inner = Arc::new(Inner {
            config,
            state: Mutex::default(),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("zkinfer-prover".into())
            .spawn(move || work(worker, on_ready))
            .expect("spawning the prover thread");
        ProofService { inner }
    }

    /// Keeps the logits that choose the token at `position` of `request`.
    pub fn record_logits(&self, request: u64, position: u64, logits: Vec<f32>) {
        let max = self.inner.config.max_positions.max(1);
        let mut state = self.inner.lock();
        let entry = state.requests.entry(request).or_default();
        entry.logits.insert(position, Arc::new(logits));
        while entry.logits.len() > max {
            entry.logits.pop_first();
        }
        entry.last_used = Some(Instant::now());
        state.keep_within(request, self.inner.config.max_total_positions.max(1));
    }

    /// Forgets the logits kept for positions from `position` on (the
    /// request rewound and they are about to be recomputed, or, from 0, the
    /// request ended).
    pub fn forget_from(&self, request: u64, position: u64) {
        if let Some(entry) = self.inner.lock().requests.get_mut(&request) {
            entry.logits.retain(|&p, _| p < position);
        }
    }

    /// Queues `steps` of `request` (a step whose logits this node does not
    /// hold fails at once) and hands over what is finished, each proof's
    /// receipt signed with `signer` (the node's key and model id) if given.
    pub fn submit(
        &self,
        request: u64,
        steps: Vec<ProveStep>,
        signer: Option<(&SecretKey, ModelId)>,
    ) -> ProofsReply {
        let mut state = self.inner.lock();
        let broken = state.broken.clone();
        let mut queued = Vec::new();
        let entry = state.requests.entry(request).or_default();
        entry.last_used = Some(Instant::now());
        for step in steps {
            let failure = |message: String| ProofFailure {
                position: step.position,
                message,
            };
            if let Some(reason) = &broken {
                entry.failures.push(failure(reason.clone()));
                continue;
            }
            match entry.logits.get(&step.position) {
                Some(logits) => {
                    entry.pending += 1;
                    queued.push(Job {
                        request,
                        step,
                        logits: Arc::clone(logits),
                    });
                }
                None => entry.failures.push(failure(format!(
                    "this node holds no logits for position {} of request {request}",
                    step.position
                ))),
            }
        }
        let bundles = std::mem::take(&mut entry.bundles);
        let reply = ProofsReply {
            pending: entry.pending,
            bundles: Vec::new(),
            failures: std::mem::take(&mut entry.failures),
        };
        let woke = !queued.is_empty();
        state.queue.extend(queued);
        drop(state);
        if woke {
            self.inner.wake.notify_all();
        }
        // Signed outside the lock: a pairing-friendly hash per proof.
        let bundles = bundles
            .into_iter()
            .map(|finished| ProvenBundle {
                signatures: signer.map_or_else(Vec::new, |(key, model_id)| {
                    finished
                        .proofs
                        .into_iter()
                        .map(
                            |ProofNames {
                                 commitments,
                                 seed,
                                 steps,
                             }| {
                                let receipt = ProofReceipt {
                                    model_id: model_id.0,
                                    request_id: request,
                                    commitments,
                                    seed,
                                    steps,
                                };
                                key.sign(&receipt).to_bytes()
                            },
                        )
                        .collect()
                }),
                bytes: finished.bytes,
            })
            .collect();
        ProofsReply { bundles, ..reply }
    }

    /// Forgets requests unused for `idle` with nothing pending.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.inner.lock().requests.retain(|_, r| {
            r.pending > 0 || r.last_used.is_some_and(|t| now.duration_since(t) < idle)
        });
    }
}

/// Why the prover holds no keys for a batch.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("the node's prover could not build its keys: {0}")]
    Setup(#[source] ProveError),
    #[error(transparent)]
    Temperature(#[from] TemperatureError),
    #[error("the keys for temperature {temperature}: {source}")]
    Rebuild {
        temperature: Temperature,
        #[source]
        source: ProveError,
    },
}

/// The worker: keys first, then proofs, one batch of up to `shape.steps`
/// steps of one request at a time. It holds the keys of one temperature and
/// rebuilds them when a request samples at another, so a node holds one
/// proving key whatever its clients ask.
fn work(inner: Arc<Inner>, on_ready: impl FnOnce(Result<Duration, KeysError>)) {
    lower_priority();
    let config = inner.config.clone();
    let cache = ParamsCache::new(&config.params_dir);
    let start = Instant::now();
    let mut prover = match Prover::setup(config.shape, &cache, false) {
        Ok(prover) => {
            on_ready(Ok(start.elapsed()));
            prover
        }
        Err(e) => {
            let error = KeysError::Setup(e);
            let reason = error.to_string();
            on_ready(Err(error));
            let mut state = inner.lock();
            state.broken = Some(reason.clone());
            fail_queued(&mut state, &reason);
            return;
        }
    };
    loop {
        let batch = {
            let mut state = inner.lock();
            loop {
                if let Some(reason) = state.broken.clone() {
                    fail_queued(&mut state, &reason);
                    return;
                }
                if !state.queue.is_empty() {
                    break;
                }
                state = inner.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            take_batch(&mut state.queue, config.shape.steps)
        };
        let request = batch[0].request;
        let positions: Vec<u64> = batch.iter().map(|j| j.step.position).collect();
        let (bundle, failures) = match keys_for(&mut prover, &batch, &cache) {
            Ok(()) => prove_batch(&prover, &batch, config.threads),
            Err(error) => (
                None,
                batch
                    .iter()
                    .map(|j| ProofFailure {
                        position: j.step.position,
                        message: error.to_string(),
                    })
                    .collect(),
            ),
        };
        let mut state = inner.lock();
        let entry = state.requests.entry(request).or_default();
        entry.pending = entry.pending.saturating_sub(positions.len() as u32);
        entry.failures.extend(failures);
        entry.bundles.extend(bundle);
        entry.last_used = Some(Instant::now());
    }
}

/// Makes `prover` hold the keys of the batch's temperature (one request's
/// steps share one).
fn keys_for(prover: &mut Prover, batch: &[Job], cache: &ParamsCache) -> Result<(), KeysError> {
    let temperature = match batch[0].step.sampler {
        TokenSampler::Greedy => Temperature::ONE,
        TokenSampler::Sample { temperature, .. } => Temperature::new(temperature)?,
    };
    if temperature != prover.shape.temperature {
        *prover = Prover::setup(prover.shape.with_temperature(temperature), cache, false).map_err(
            |source| KeysError::Rebuild {
                temperature,
                source,
            },
        )?;
    }
    Ok(())
}

/// The first queued job and up to `max - 1` more of the same request.
fn take_batch(queue: &mut VecDeque<Job>, max: usize) -> Vec<Job> {
    let first = queue.pop_front().expect("a queued job");
    let request = first.request;
    let mut batch = vec![first];
    let mut i = 0;
    while batch.len() < max && i < queue.len() {
        if queue[i].request == request {
            batch.push(queue.remove(i).expect("index in range"));
        } else {
            i += 1;
        }
    }
    batch
}

/// Proves the steps that follow from their logits, in one bundle; the
/// others become failures naming why.
fn prove_batch(
    prover: &Prover,
    batch: &[Job],
    threads: usize,
) -> (Option<Finished>, Vec<ProofFailure>) {
    let mut prepared = Vec::new();
    let mut failures = Vec::new();
    for job in batch {
        let records = Records {
            vocab: job.logits.len(),
            steps: vec![Record {
                position: job.step.position,
                logits: job.logits.as_ref().clone(),
                token: job.step.token,
                sampler: record_sampler(job.step.sampler),
            }],
        };
        let step = if records.vocab == prover.shape.vocab {
            prover::prepare(&records, prover.shape.fixed_point).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "{} logits, but this node proves a vocabulary of {}",
                records.vocab, prover.shape.vocab
            ))
        };
        match step {
            Ok(mut steps) => prepared.append(&mut steps),
            Err(message) => failures.push(ProofFailure {
                position: job.step.position,
                message,
            }),
        }
    }
    if prepared.is_empty() {
        return (None, failures);
    }
    match prover.prove_all(&prepared, 1, threads, false) {
        Ok(bundle) => {
            let digests: HashMap<u64, [u8; 32]> = batch
                .iter()
                .map(|j| {
                    (
                        j.step.position,
                        *blake3::hash(&f32_bytes(&j.logits)).as_bytes(),
                    )
                })
                .collect();
            let proofs = bundle
                .proofs
                .iter()
                .enumerate()
                .map(|(i, proof)| {
                    let commitments =
                        proof_commitments_digest(bundle.shape, &proof.bytes).unwrap_or_default();
                    let steps = bundle
                        .steps()
                        .filter(|(p, _)| *p == i)
                        .map(|(_, s)| (s.position, digests[&s.position]))
                        .collect();
                    ProofNames {
                        commitments,
                        seed: proof.seed,
                        steps,
                    }
                })
                .collect();
            let bytes = bundle.to_bytes();
            (Some(Finished { bytes, proofs }), failures)
        }
        Err(e) => {
            failures.extend(prepared.iter().map(|s| ProofFailure {
                position: s.position,
                message: e.to_string(),
            }));
            (None, failures)
        }
    }
}

fn fail_queued(state: &mut State, reason: &str) {
    for job in std::mem::take(&mut state.queue) {
        let entry = state.requests.entry(job.request).or_default();
        entry.pending = entry.pending.saturating_sub(1);
        entry.failures.push(ProofFailure {
            position: job.step.position,
            message: reason.to_string(),
        });
    }
}

/// The record sampler (the `zkinfer prove --records` form) of a wire sampler.
pub fn record_sampler(sampler: TokenSampler) -> RecordSampler {
    match sampler {
        TokenSampler::Greedy => RecordSampler::Greedy {},
        TokenSampler::Sample { temperature, r } => RecordSampler::Sample {
            temperature,
            r: r.to_string(),
        },
    }
}

/// Puts the calling thread (and the threads it starts, which inherit it) at
/// the lowest CPU priority, so that proving takes only what inference leaves.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; failure only leaves the
    // priority as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_rows(state: &mut State, request: u64, positions: std::ops::Range<u64>, at: Instant) {
        let entry = state.requests.entry(request).or_default();
        for p in positions {
            entry.logits.insert(p, Arc::new(vec![0.0; 4]));
        }
        entry.last_used = Some(at);
    }

    #[test]
    fn kept_logits_stay_within_the_total_least_recently_used_first() {
        let t0 = Instant::now();
        let mut state = State::default();
        with_rows(&mut state, 1, 0..4, t0);
        with_rows(&mut state, 2, 0..4, t0 + Duration::from_secs(1));
        with_rows(&mut state, 3, 0..4, t0 + Duration::from_secs(2));
        state.keep_within(3, 8);
        let kept = |state: &State, r: u64| -> Vec<u64> {
            state.requests[&r].logits.keys().copied().collect()
        };
        // Request 1 was used least recently: it loses all 4 rows, oldest first.
        assert_eq!(kept(&state, 1), Vec::<u64>::new());
        assert_eq!(kept(&state, 2), vec![0, 1, 2, 3]);
        // Then request 2, and the current request last.
        state.keep_within(3, 5);
        assert_eq!(kept(&state, 2), vec![3]);
        assert_eq!(kept(&state, 3), vec![0, 1, 2, 3]);
        state.keep_within(3, 2);
        assert_eq!(kept(&state, 2), Vec::<u64>::new());
        assert_eq!(kept(&state, 3), vec![2, 3]);
    }
}
