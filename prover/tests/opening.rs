//! The commitment to the logits is the proof's own: a real proof's commitments
//! to its logit columns are exactly what `circuits::opening` recomputes from the
//! logits and the proof's seed, and nothing else opens them.

use std::collections::BTreeMap;

use circuits::opening::{logit_commitments, proof_logit_commitments};
use circuits::{CircuitShape, FixedPoint};
use prover::{synthetic_steps, Prover};
use verifier::answer::{open_proofs, LogitOpening};
use verifier::{Bundle, ParamsCache};

fn views(logits: &[Vec<i64>]) -> Vec<&[i64]> {
    logits.iter().map(Vec::as_slice).collect()
}

#[test]
fn a_proof_commits_to_its_logits_and_opens_only_to_them() {
    // Two steps over two lanes (the second lane shorter), so the layout of
    // steps and lanes in the columns is exercised.
    let shape = CircuitShape::new(301, FixedPoint::default(), 2, 2).unwrap();
    let prover =
        Prover::setup(shape, &ParamsCache::new(ParamsCache::default_dir()), false).expect("keys");
    let steps = synthetic_steps(shape, 11);
    let logits: Vec<Vec<i64>> = steps.iter().map(|s| s.logits.clone()).collect();
    let proof = prover.prove(steps).expect("proof");
    let params = &prover.params;

    let found = proof_logit_commitments(shape, &proof.bytes).expect("commitments in the proof");
    assert_eq!(found.len(), shape.lanes);
    let expected = logit_commitments(params, shape, &views(&logits), &proof.seed).unwrap();
    assert_eq!(expected, found, "the logits and the seed open the proof");

    // One logit one unit off, in either step and either lane: another commitment.
    for (step, index) in [(0, 0), (1, 150), (1, 300)] {
        let mut other = logits.clone();
        other[step][index] += 1;
        let c = logit_commitments(params, shape, &views(&other), &proof.seed).unwrap();
        assert_ne!(c, found, "step {step} index {index}");
    }
    // The steps in the other order, or another seed: not the proof's.
    let swapped = vec![logits[1].clone(), logits[0].clone()];
    assert_ne!(
        logit_commitments(params, shape, &views(&swapped), &proof.seed).unwrap(),
        found
    );
    let mut seed = proof.seed;
    seed[0] ^= 1;
    assert_ne!(
        logit_commitments(params, shape, &views(&logits), &seed).unwrap(),
        found
    );
    // Wrong counts are refused, not padded.
    assert!(logit_commitments(params, shape, &views(&logits[..1]), &proof.seed).is_none());

    // Through a bundle, as `verify --transcript` opens it.
    let positions: Vec<u64> = proof.steps.iter().map(|s| s.position).collect();
    let bundle = Bundle {
        shape,
        vk_digest: prover.vk_digest,
        proofs: vec![proof],
    };
    let by_position = |l: &[Vec<i64>]| -> BTreeMap<u64, Vec<i64>> {
        positions.iter().copied().zip(l.iter().cloned()).collect()
    };
    assert_eq!(
        open_proofs(&bundle, params, &by_position(&logits)),
        [LogitOpening::Opens]
    );
    let mut other = logits.clone();
    other[0][7] -= 2;
    assert_eq!(
        open_proofs(&bundle, params, &by_position(&other)),
        [LogitOpening::Differs]
    );
    let mut partial = by_position(&logits);
    partial.remove(&positions[1]);
    assert_eq!(
        open_proofs(&bundle, params, &partial),
        [LogitOpening::Unknown]
    );
}
