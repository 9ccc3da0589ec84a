//! The commitment to the logits: the proof's own commitments to the lanes' `z`
//! columns (commit-and-prove), and how whoever holds the logits opens it.
//!
//! halo2 commits to every advice column `c` as the Pedersen vector commitment
//! `C_c = Σ_i v_i G_i + b W` over the column's values `v` on the `2^k` rows. The
//! logit columns hold the logits at the rows [`CircuitShape::logit_cell`] names
//! and 0 on every other usable row; the last `U = blinding_factors + 1` rows and
//! the blind `b` are random. The prover draws that randomness from a stream
//! derived from a 32-byte seed ([`SeedRng`]) and the bundle carries the seed, so
//! anyone holding a proof's logits recomputes its `C_c` ([`logit_commitments`])
//! and compares them with the proof's ([`proof_logit_commitments`]). Equal
//! commitments mean the proof is about exactly those logits: the commitment is
//! binding under the discrete logarithm assumption on Pallas/Vesta (the `G_i`,
//! `W` come from hash-to-curve). Without the logits a commitment reveals nothing
//! a hash of them would not: with the seed it is deterministic, as the Poseidon
//! hash of the logits it replaces was.
//!
//! halo2_proofs 0.4.1's `create_proof` draws, before anything else, the
//! unusable rows of every advice column in column order (`U` scalars each) and
//! then one blind per advice column; `patches/README.md` pins that version, and
//! the round-trip test of `verifier::opening` fails if the order ever changes.

use std::convert::Infallible;

use ff::Field as _;
use group::{Curve as _, GroupEncoding as _};
use halo2_proofs::{
    pasta::{EqAffine, Fp},
    plonk::{Circuit as _, ConstraintSystem},
    poly::{
        commitment::{Blind, Params},
        EvaluationDomain,
    },
};
use rand_core::TryRng;

use crate::{CircuitShape, DecodeStepCircuit};

/// The randomness of one proof: blake3's output stream keyed by the seed.
pub struct SeedRng(blake3::OutputReader);

impl SeedRng {
    pub fn new(seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("zkinfer proof randomness v1");
        hasher.update(seed);
        SeedRng(hasher.finalize_xof())
    }
}

impl TryRng for SeedRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0; 4];
        self.0.fill(&mut bytes);
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0; 8];
        self.0.fill(&mut bytes);
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// What the commitments depend on besides the values: which advice columns hold
/// the logits, how many advice columns there are, how many rows are random.
struct ColumnLayout {
    advice_columns: usize,
    logit_columns: Vec<usize>,
    random_rows: usize,
}

fn column_layout(shape: CircuitShape) -> ColumnLayout {
    let mut cs = ConstraintSystem::<Fp>::default();
    let config = shape.scope(|| DecodeStepCircuit::configure(&mut cs));
    ColumnLayout {
        advice_columns: cs.num_advice_columns(),
        logit_columns: config.logit_columns().iter().map(|c| c.index()).collect(),
        random_rows: cs.blinding_factors() + 1,
    }
}

/// The commitments a proof of `shape` made with `seed` has to its logit
/// columns (one per lane) when its steps' logits are `steps` (`shape.steps`
/// vectors of `shape.vocab`, padding steps included); `None` if the counts do
/// not fit the shape.
pub fn logit_commitments(
    params: &Params<EqAffine>,
    shape: CircuitShape,
    steps: &[&[i64]],
    seed: &[u8; 32],
) -> Option<Vec<EqAffine>> {
    if steps.len() != shape.steps || steps.iter().any(|s| s.len() != shape.vocab) {
        return None;
    }
    let layout = column_layout(shape);
    let n = 1usize << shape.k();
    if params.k() != shape.k() {
        return None;
    }
    // Replay the prover's draws: unusable rows of every column, then blinds.
    let mut rng = SeedRng::new(seed);
    let mut random_rows = vec![Vec::new(); layout.advice_columns];
    for rows in &mut random_rows {
        *rows = (0..layout.random_rows)
            .map(|_| Fp::random(&mut rng))
            .collect();
    }
    let blinds: Vec<Fp> = (0..layout.advice_columns)
        .map(|_| Fp::random(&mut rng))
        .collect();

    let domain = EvaluationDomain::<Fp>::new(1, shape.k());
    let mut columns = vec![domain.empty_lagrange(); shape.lanes];
    for (step, logits) in steps.iter().enumerate() {
        for (index, &z) in logits.iter().enumerate() {
            let (lane, row) = shape.logit_cell(step, index);
            columns[lane][row] = crate::statement::signed(z as i128);
        }
    }
    let commitments = columns
        .iter_mut()
        .zip(&layout.logit_columns)
        .map(|(values, &column)| {
            let start = n - layout.random_rows;
            values[start..].copy_from_slice(&random_rows[column]);
            params
                .commit_lagrange(values, Blind(blinds[column]))
                .to_affine()
        })
        .collect();
    Some(commitments)
}

/// The proof's commitments to the logit columns of `shape`, read from the
/// proof bytes (the prover writes every advice commitment first, in column
/// order); `None` if the bytes are too short or not curve points.
pub fn proof_logit_commitments(shape: CircuitShape, proof: &[u8]) -> Option<Vec<EqAffine>> {
    const POINT: usize = 32;
    column_layout(shape)
        .logit_columns
        .iter()
        .map(|&column| {
            let bytes = proof.get(column * POINT..(column + 1) * POINT)?;
            let mut repr = <EqAffine as group::GroupEncoding>::Repr::default();
            repr.as_mut().copy_from_slice(bytes);
            Option::from(EqAffine::from_bytes(&repr))
        })
        .collect()
}

/// blake3 of a proof's logit commitments ([`proof_logit_commitments`]) as
/// 32-byte compressed points, in lane order: what names the proof in a head
/// node's proof receipt (`verifier::receipt::ProofReceipt`); `None` if the
/// proof's bytes hold no such commitments.
pub fn proof_commitments_digest(shape: CircuitShape, proof: &[u8]) -> Option<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    for c in proof_logit_commitments(shape, proof)? {
        h.update(c.to_bytes().as_ref());
    }
    Some(*h.finalize().as_bytes())
}
