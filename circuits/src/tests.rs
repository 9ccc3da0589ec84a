//! MockProver tests of the decode-step circuit: honest steps pass, and each kind of
//! cheating is rejected by the constraint that is meant to catch it.

use halo2_proofs::{
    dev::{FailureLocation, MockProver, VerifyFailure},
    pasta::Fp,
};

use crate::fixed_point::FixedPoint;
use crate::statement::Sampler;
use crate::tables::Tables;
use crate::witness::{sample_token, StepWitness};
use crate::{CircuitShape, DecodeStepCircuit};

/// Deterministic pseudo-random logits (xorshift), in fixed point.
pub(crate) fn logits(seed: u64, vocab: usize, spread: f64) -> Vec<i64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..vocab)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            ((unit - 0.5) * spread * 2048.0).round() as i64
        })
        .collect()
}

fn step(seed: u64, vocab: usize, sampler: Sampler) -> StepWitness {
    let fp = FixedPoint::default();
    let tables = Tables::new(fp);
    let z = logits(seed, vocab, 20.0);
    let token = sample_token(fp, &tables, &z, sampler).unwrap();
    StepWitness::new(fp, &tables, z, token, sampler).unwrap()
}

fn run(shape: CircuitShape, steps: Vec<StepWitness>, instance: Vec<Fp>) -> Result<(), Vec<VerifyFailure>> {
    let circuit = DecodeStepCircuit::new(shape, steps);
    shape.scope(|| {
        MockProver::run(shape.k(), &circuit, vec![instance])
            .expect("synthesis")
            .verify()
    })
}

fn honest(steps: Vec<StepWitness>, lanes: usize) -> (CircuitShape, Vec<StepWitness>, Vec<Fp>) {
    let shape = CircuitShape::new(steps[0].rows.len(), FixedPoint::default(), steps.len(), lanes).unwrap();
    let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
    (shape, steps, DecodeStepCircuit::instance(&statements))
}

#[test]
fn honest_greedy_and_sampled_steps_pass() {
    let steps = vec![
        step(1, 1000, Sampler::Greedy),
        step(2, 1000, Sampler::Sample { beta: 731, r: 0x1234_5678_9abc_def0 }),
    ];
    let (shape, steps, instance) = honest(steps, 3);
    assert_eq!(run(shape, steps, instance), Ok(()));
}
