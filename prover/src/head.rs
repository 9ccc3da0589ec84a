//! Keys, proofs and verification for the head variant (small models): the head
//! matmul runs in the circuit with the weights as fixed columns, so the verifying
//! key binds the head, and each step's public commitment is `C_h` (see
//! `circuits::head_step`).

use std::sync::Arc;
use std::time::Instant;

use halo2_proofs::{
    pasta::EqAffine,
    plonk::{create_proof, keygen_pk, keygen_vk, BatchVerifier, ProvingKey},
    poly::commitment::Params,
    transcript::{Blake2bWrite, Challenge255},
};
use rand::rngs::SysRng;
use rand_core::UnwrapErr;

use circuits::head_step::random_hidden;
use circuits::{
    HeadDecodeStepCircuit, HeadShape, HeadStepWitness, HeadWeights, Sampler, StepStatement, Tables,
};
use verifier::{Key, ParamsCache};

use crate::{Progress, ProveError, SetupTimings};

/// The verifying key of `shape` with `weights` (its fixed columns), and its digest.
pub fn head_verifying_key(
    shape: HeadShape,
    weights: Arc<HeadWeights>,
    params: &Params<EqAffine>,
) -> Result<Key, ProveError> {
    let circuit = HeadDecodeStepCircuit::placeholder(shape, weights)?;
    key_of(&circuit, params)
}

fn key_of(circuit: &HeadDecodeStepCircuit, params: &Params<EqAffine>) -> Result<Key, ProveError> {
    HeadDecodeStepCircuit::check_weights(&circuit.shape, &circuit.weights)?;
    let vk = circuit
        .shape
        .scope(|| keygen_vk(params, circuit))
        .map_err(|e| {
            ProveError::Keys(format!(
                "building the verifying key for {}: {e:?}",
                circuit.shape.describe()
            ))
        })?;
    let digest = verifier::vk_digest(&vk);
    Ok(Key { vk, digest })
}

/// Keys for one head shape and one set of weights.
pub struct HeadProver {
    pub shape: HeadShape,
    pub weights: Arc<HeadWeights>,
    pub params: Params<EqAffine>,
    pub pk: ProvingKey<EqAffine>,
    pub vk_digest: [u8; 32],
    pub timings: SetupTimings,
}

impl HeadProver {
    /// Loads (or generates and caches) the parameters and builds the keys.
    pub fn setup(
        shape: HeadShape,
        weights: Arc<HeadWeights>,
        cache: &ParamsCache,
        progress: bool,
    ) -> Result<HeadProver, ProveError> {
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
        let circuit = HeadDecodeStepCircuit::placeholder(shape, weights.clone())?;
        let key = key_of(&circuit, &params)?;
        let pk = shape
            .scope(|| keygen_pk(&params, key.vk, &circuit))
            .map_err(|e| ProveError::Keys(format!("proving key: {e:?}")))?;
        bar.finish();
        Ok(HeadProver {
            shape,
            weights,
            params,
            pk,
            vk_digest: key.digest,
            timings: SetupTimings {
                params: params_time,
                keygen: start.elapsed(),
            },
        })
    }

    /// Proves exactly `shape.steps()` steps.
    pub fn prove(&self, steps: Vec<HeadStepWitness>) -> Result<Vec<u8>, ProveError> {
        if steps.len() != self.shape.steps() {
            return Err(ProveError::Proof(format!(
                "{} steps for a circuit of {} steps per proof",
                steps.len(),
                self.shape.steps()
            )));
        }
        let statements: Vec<_> = steps.iter().map(|s| s.statement()).collect();
        let instance = HeadDecodeStepCircuit::instance(&statements);
        let circuit = HeadDecodeStepCircuit::new(self.shape, self.weights.clone(), steps);
        let mut transcript = Blake2bWrite::<_, EqAffine, Challenge255<_>>::init(vec![]);
        self.shape
            .scope(|| {
                create_proof(
                    &self.params,
                    &self.pk,
                    &[circuit],
                    &[&[&instance]],
                    UnwrapErr(SysRng),
                    &mut transcript,
                )
            })
            .map_err(|e| ProveError::Proof(format!("{e:?}")))?;
        Ok(transcript.finalize())
    }

    /// Verifies `copies` copies of one proof in one batch (1 for a single proof).
    pub fn verify(&self, statements: &[StepStatement], proof: &[u8], copies: usize) -> bool {
        let instance = HeadDecodeStepCircuit::instance(statements);
        let mut batch = BatchVerifier::new();
        for _ in 0..copies.max(1) {
            batch.add_proof(vec![vec![instance.clone()]], proof.to_vec());
        }
        batch.finalize(&self.params, self.pk.get_vk())
    }
}

/// Random head steps for benchmarks and cost measurements: hidden states uniform
/// in `±sqrt(3)`, even positions greedy, odd positions sampled at temperature 0.8.
pub fn synthetic_head_steps(
    shape: HeadShape,
    weights: &HeadWeights,
    seed: u64,
) -> Result<Vec<HeadStepWitness>, ProveError> {
    let tables = Tables::new(shape.step.fixed_point);
    (0..shape.steps())
        .map(|position| {
            let hidden = shape
                .format
                .quantize_hidden(&random_hidden(shape.hidden, seed + position as u64))?;
            let sampler = if position % 2 == 0 {
                Sampler::Greedy
            } else {
                Sampler::Sample {
                    beta: 640,
                    r: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ position as u64,
                }
            };
            let mut step =
                HeadStepWitness::sample(weights, &tables, shape.step.fixed_point, hidden, sampler)?;
            step.step.statement.position = position as u64;
            Ok(step)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use circuits::{FixedPoint, HeadFormat};

    /// The shape of the tests: V = 64, d = 16 at k = 17.
    fn shape() -> HeadShape {
        HeadShape::new(64, 16, FixedPoint::default(), 1, 1).unwrap()
    }

    fn weights(seed: u64) -> Arc<HeadWeights> {
        let shape = shape();
        Arc::new(HeadWeights::random(
            shape.vocab(),
            shape.hidden,
            HeadFormat::default_for(shape.step.fixed_point),
            seed,
        ))
    }

    fn params() -> Params<EqAffine> {
        ParamsCache::new(ParamsCache::default_dir())
            .load_or_generate(shape().k(), |k| {
                eprintln!("generating public parameters for k = {k} (cached afterwards)")
            })
            .expect("public parameters")
    }

    #[test]
    fn verifying_key_binds_the_head() {
        let params = params();
        let digest = |w| head_verifying_key(shape(), w, &params).unwrap().digest;
        let a = digest(weights(1));
        // One weight moved by one unit: another key (each key generation at k = 17
        // takes tens of seconds, so the test makes two).
        let mut values: Vec<i64> = (0..64).flat_map(|i| weights(1).row(i).to_vec()).collect();
        values[100] += 1;
        let moved = HeadWeights::new(64, 16, weights(1).format(), values).unwrap();
        assert_ne!(a, digest(Arc::new(moved)));
    }

    #[test]
    fn weights_must_fit_the_shape() {
        let params = params();
        let other = Arc::new(HeadWeights::random(
            64,
            8,
            HeadFormat::default_for(FixedPoint::default()),
            1,
        ));
        let err = head_verifying_key(shape(), other, &params).err().unwrap();
        assert!(err.to_string().contains("d = 8"), "{err}");
    }
}
