//! The zkinfer prover: turns decode records (logits, token, sampler per step) into
//! a proof bundle that `verifier` checks.
//!
//! - [`records`]: the `zkinfer prove --records` JSON format;
//! - [`prepare`]: quantization and witnesses, refusing tokens that do not follow;
//! - [`Prover`]: keys for one circuit shape, and proofs of batches of steps;

pub mod cost;
mod progress;
pub mod records;

use std::time::{Duration, Instant};

use halo2_proofs::{
    pasta::EqAffine,
    plonk::{create_proof, keygen_pk, ProvingKey},
    poly::commitment::Params,
    transcript::{Blake2bWrite, Challenge255},
};
use rand::rngs::SysRng;
use rand_core::{Rng as _, UnwrapErr};
use rayon::prelude::*;

use circuits::opening::SeedRng;
use circuits::{
    fixed_point::Temperature, CircuitShape, DecodeStepCircuit, FixedPoint, Sampler, StepWitness,
    Tables,
};
use verifier::bundle::{Bundle, Proof};
use verifier::ParamsCache;

pub use progress::Progress;
pub use records::{Record, RecordError, RecordSampler, Records};

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("step at position {position}: {source}")]
    Step {
        position: u64,
        #[source]
        source: circuits::StepError,
    },
    #[error("step at position {position}: logit {value} at vocabulary index {index} is out of range (|logit| * 2^{frac_bits} must be below 2^23 and finite)")]
    OutOfRange {
        position: u64,
        index: usize,
        value: f64,
        frac_bits: u32,
    },
    #[error("step at position {position}: {message}")]
    Record { position: u64, message: String },
    #[error(transparent)]
    Sampler(#[from] RecordError),
    #[error("step at position {position} is {sampler}, but these keys prove temperature {keys}")]
    OtherTemperature {
        position: u64,
        sampler: Sampler,
        keys: Temperature,
    },
    #[error("{0}")]
    Shape(#[from] circuits::ShapeError),
    #[error("no steps to prove")]
    Empty,
    #[error("public parameters: {0}")]
    Params(#[from] std::io::Error),
    #[error("{0}")]
    Keys(String),
    #[error("proving failed: {0}")]
    Proof(String),
}

/// A step ready to prove.
#[derive(Clone, Debug)]
pub struct PreparedStep {
    pub position: u64,
    pub witness: StepWitness,
}

/// Quantizes the records and builds each step's witness, refusing a record whose
/// token does not follow from its logits under its sampler, or records of more
/// than one temperature ([`Records::temperature`]).
pub fn prepare(
    records: &Records,
    fixed_point: FixedPoint,
) -> Result<Vec<PreparedStep>, ProveError> {
    let temperature = records.temperature()?;
    let tables = Tables::new(fixed_point, temperature);
    records
        .steps
        .par_iter()
        .map(|record| {
            let position = record.position;
            if record.logits.len() != records.vocab {
                return Err(ProveError::Record {
                    position,
                    message: format!(
                        "{} logits, but the records declare a vocabulary of {}",
                        record.logits.len(),
                        records.vocab
                    ),
                });
            }
            let logits =
                fixed_point
                    .quantize_all(&record.logits)
                    .map_err(|e| ProveError::OutOfRange {
                        position,
                        index: e.index,
                        value: e.value,
                        frac_bits: e.frac_bits,
                    })?;
            let sampler = record.sampler().map_err(|e| RecordError::AtStep {
                position,
                source: Box::new(e),
            })?;
            let mut witness = StepWitness::new(&tables, logits, record.token, sampler)
                .map_err(|source| ProveError::Step { position, source })?;
            witness.statement.position = position;
            Ok(PreparedStep { position, witness })
        })
        .collect()
}

/// Keys for one circuit shape.
pub struct Prover {
    pub shape: CircuitShape,
    pub params: Params<EqAffine>,
    pub pk: ProvingKey<EqAffine>,
    pub vk_digest: [u8; 32],
    pub timings: SetupTimings,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetupTimings {
    pub params: Duration,
    pub keygen: Duration,
}

impl Prover {
    /// Loads (or generates and caches) the parameters and builds the keys.
    pub fn setup(
        shape: CircuitShape,
        cache: &ParamsCache,
        progress: bool,
    ) -> Result<Prover, ProveError> {
        let start = Instant::now();
        let k = shape.k();
        let bar = Progress::spinner(progress, format!("loading public parameters (k = {k})"));
        let params = cache.load_or_generate(k, |k| {
            bar.set_message(format!(
                "generating public parameters for k = {k} (minutes; cached in {} afterwards)",
                cache.dir().display()
            ))
        })?;
        let params_time = start.elapsed();
        bar.set_message(format!("building keys for {}", shape.describe()));
        let start = Instant::now();
        let circuit = DecodeStepCircuit::placeholder(shape);
        let (key, _) = verifier::keys::load_or_build(cache.dir(), &circuit, &params)
            .map_err(|e| ProveError::Keys(e.to_string()))?;
        let pk = shape
            .scope(|| keygen_pk(&params, key.vk, &circuit))
            .map_err(|e| ProveError::Keys(format!("proving key: {e:?}")))?;
        bar.finish();
        Ok(Prover {
            shape,
            params,
            pk,
            vk_digest: key.digest,
            timings: SetupTimings {
                params: params_time,
                keygen: start.elapsed(),
            },
        })
    }

    /// Proves exactly `shape.steps` steps. The proof's randomness comes from a
    /// fresh seed, returned with it: the seed and the steps' logits open the
    /// proof's commitments to those logits (`circuits::opening`).
    pub fn prove(&self, steps: Vec<StepWitness>) -> Result<Proof, ProveError> {
        let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
        let instance = DecodeStepCircuit::instance(&statements);
        let circuit = DecodeStepCircuit::new(self.shape, steps);
        let mut seed = [0u8; 32];
        UnwrapErr(SysRng).fill_bytes(&mut seed);
        let mut transcript = Blake2bWrite::<_, EqAffine, Challenge255<_>>::init(vec![]);
        self.shape
            .scope(|| {
                create_proof(
                    &self.params,
                    &self.pk,
                    &[circuit],
                    &[&[&instance]],
                    SeedRng::new(&seed),
                    &mut transcript,
                )
            })
            .map_err(|e| ProveError::Proof(format!("{e:?}")))?;
        Ok(Proof {
            steps: statements,
            seed,
            bytes: transcript.finalize(),
        })
    }

    /// Proves all steps in batches of `shape.steps` (the last batch padded by
    /// repeating its last step, which readers skip), `jobs` proofs at a time on
    /// a pool of `threads` threads (halo2 parallelizes inside each proof, so one
    /// job already uses every thread).
    pub fn prove_all(
        &self,
        steps: &[PreparedStep],
        jobs: usize,
        threads: usize,
        progress: bool,
    ) -> Result<Bundle, ProveError> {
        if steps.is_empty() {
            return Err(ProveError::Empty);
        }
        if let Some(step) = steps
            .iter()
            .find(|s| s.witness.statement.sampler.temperature() != self.shape.temperature)
        {
            return Err(ProveError::OtherTemperature {
                position: step.position,
                sampler: step.witness.statement.sampler,
                keys: self.shape.temperature,
            });
        }
        let batch = self.shape.steps;
        let batches = steps.len().div_ceil(batch);
        let bar = Progress::counter(progress, batches as u64, "proofs");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| ProveError::Proof(e.to_string()))?;
        let chunks: Vec<&[PreparedStep]> = steps.chunks(batch).collect();
        let mut proofs = Vec::with_capacity(batches);
        for group in chunks.chunks(jobs.max(1)) {
            let mut done = pool.install(|| {
                group
                    .par_iter()
                    .map(|chunk| {
                        let mut witnesses: Vec<StepWitness> =
                            chunk.iter().map(|s| s.witness.clone()).collect();
                        witnesses.resize(batch, witnesses.last().expect("non-empty").clone());
                        let proof = self.prove(witnesses)?;
                        bar.inc();
                        Ok(proof)
                    })
                    .collect::<Result<Vec<_>, ProveError>>()
            })?;
            proofs.append(&mut done);
        }
        bar.finish();
        Ok(Bundle {
            shape: self.shape,
            vk_digest: self.vk_digest,
            proofs,
        })
    }
}

/// Random steps of `shape` for benchmarks and cost measurements: logits uniform in
/// ±9.8 nats, sampled at the shape's temperature; at temperature 1 even
/// positions are greedy.
pub fn synthetic_steps(shape: CircuitShape, seed: u64) -> Vec<StepWitness> {
    let tables = shape.tables();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..shape.steps)
        .map(|position| {
            let z: Vec<i64> = (0..shape.vocab)
                .map(|_| (next() % 40_000) as i64 - 20_000)
                .collect();
            let sampler = if position % 2 == 0 && shape.temperature == Temperature::ONE {
                Sampler::Greedy
            } else {
                Sampler::Sample {
                    temperature: shape.temperature,
                    r: next(),
                }
            };
            let token = circuits::sample_token(&tables, &z, sampler).expect("logits in range");
            let mut step = StepWitness::new(&tables, z, token, sampler).expect("a valid step");
            step.statement.position = position as u64;
            step
        })
        .collect()
}

/// The sampler of a record: its temperature must be a multiple of 0.001.
pub fn sampler_of(sampler: &RecordSampler) -> Result<Sampler, RecordError> {
    match sampler {
        RecordSampler::Greedy {} => Ok(Sampler::Greedy),
        RecordSampler::Sample { temperature, r } => {
            let temperature = Temperature::new(*temperature)?;
            let r = r
                .trim()
                .parse::<u64>()
                .map_err(|_| RecordError::NotDecimal(r.clone()))?;
            Ok(Sampler::Sample { temperature, r })
        }
    }
}
