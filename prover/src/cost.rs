//! What one decode-step configuration costs: keys, proving, verifying, proof
//! size and peak memory, beside the floor circuit (`circuits::floor`) at the
//! same V, T, L and k (docs/costs.md).

use std::time::Instant;

use halo2_proofs::{
    pasta::{EqAffine, Fp},
    plonk::{create_proof, keygen_pk, keygen_vk, BatchVerifier, VerifyingKey},
    poly::commitment::Params,
    transcript::{Blake2bWrite, Challenge255},
};
use rand::rngs::SysRng;
use rand_core::UnwrapErr;
use serde::{Deserialize, Serialize};

use circuits::CircuitShape;

use crate::{synthetic_steps, ParamsCache, ProveError, Prover};

/// One configuration's figures; `None` where not measured (a layout only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CostRow {
    pub vocab: usize,
    pub batch: usize,
    pub lanes: usize,
    pub k: u32,
    pub lane_rows: usize,
    pub advice_columns: usize,
    pub keygen_s: Option<f64>,
    pub prove_s: Option<f64>,
    pub prove_per_token_s: Option<f64>,
    /// One proof verified alone (the first verification in the process).
    pub verify_s: Option<f64>,
    /// Proofs in the batch verified together.
    pub verify_batch_proofs: Option<usize>,
    /// That whole batch.
    pub verify_batch_s: Option<f64>,
    /// What each token beyond the first proof adds to the batch: the batch's
    /// time less one proof's (verified as a batch of one), over the tokens past it.
    pub verify_per_token_s: Option<f64>,
    pub proof_bytes: Option<usize>,
    pub proof_bytes_per_token: Option<f64>,
    pub peak_memory_mib: Option<f64>,
    /// Proving the floor circuit at the same V, T, L and k.
    pub floor_prove_s: Option<f64>,
}

impl CostRow {
    /// The circuit's layout, nothing measured.
    pub fn layout(shape: CircuitShape) -> CostRow {
        CostRow {
            vocab: shape.vocab,
            batch: shape.steps,
            lanes: shape.lanes,
            k: shape.k(),
            lane_rows: shape.lane_rows(),
            advice_columns: shape.advice_columns(),
            ..CostRow::default()
        }
    }

    /// Proving time over the floor's, when both were measured.
    pub fn times_floor(&self) -> Option<f64> {
        self.prove_s.zip(self.floor_prove_s).map(|(p, f)| p / f)
    }

    /// Builds the keys, proves synthetic steps, verifies the proof alone and in
    /// a batch of copies holding at least `verify_tokens` tokens (two proofs at
    /// least), then proves the floor circuit. The peak memory is the process's,
    /// so measure one configuration per process.
    pub fn measure(
        shape: CircuitShape,
        cache: &ParamsCache,
        verify_tokens: usize,
    ) -> Result<CostRow, ProveError> {
        let mut row = CostRow::layout(shape);
        let prover = Prover::setup(shape, cache, false)?;
        row.keygen_s = Some(prover.timings.keygen.as_secs_f64());
        let steps = synthetic_steps(shape, 7);
        let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
        let instance = circuits::DecodeStepCircuit::instance(&statements);
        let start = Instant::now();
        let proof = prover.prove(steps)?.bytes;
        let prove = start.elapsed().as_secs_f64();
        let tokens = shape.steps as f64;
        row.prove_s = Some(prove);
        row.prove_per_token_s = Some(prove / tokens);
        row.proof_bytes = Some(proof.len());
        row.proof_bytes_per_token = Some(proof.len() as f64 / tokens);

        let vk = prover.pk.get_vk();
        let single = verify_seconds(&prover.params, vk, &instance, &proof, 1).ok_or_else(|| {
            ProveError::Proof(format!("the proof of {} did not verify", shape.describe()))
        })?;
        let batch_failed = || ProveError::Proof("batch verification failed".into());
        // Warm now: what a batch adds beyond one proof is measured against this.
        let one =
            verify_seconds(&prover.params, vk, &instance, &proof, 1).ok_or_else(batch_failed)?;
        let n = verify_tokens.div_ceil(shape.steps).max(2);
        let many =
            verify_seconds(&prover.params, vk, &instance, &proof, n).ok_or_else(batch_failed)?;
        row.verify_s = Some(single);
        row.verify_batch_proofs = Some(n);
        row.verify_batch_s = Some(many);
        row.verify_per_token_s = Some((many - one).max(0.0) / ((n - 1) as f64 * tokens));
        row.peak_memory_mib = peak_memory_mib();
        // The floor after the peak is read: it needs less memory than the statement.
        let Prover { params, pk, .. } = prover;
        drop(pk);
        row.floor_prove_s = Some(floor_prove_seconds(shape, &params)?);
        Ok(row)
    }
}

/// Seconds to verify `n` copies of `proof` in one batch; `None` if it fails.
fn verify_seconds(
    params: &Params<EqAffine>,
    vk: &VerifyingKey<EqAffine>,
    instance: &[Fp],
    proof: &[u8],
    n: usize,
) -> Option<f64> {
    let mut batch = BatchVerifier::new();
    for _ in 0..n {
        batch.add_proof(vec![vec![instance.to_vec()]], proof.to_vec());
    }
    let start = Instant::now();
    batch
        .finalize(params, vk)
        .then(|| start.elapsed().as_secs_f64())
}

/// Seconds to prove the floor circuit of `shape` (keys built first, not counted).
fn floor_prove_seconds(shape: CircuitShape, params: &Params<EqAffine>) -> Result<f64, ProveError> {
    let circuit = circuits::floor::FloorCircuit::new(shape);
    let failed = |e: halo2_proofs::plonk::Error| ProveError::Proof(format!("floor circuit: {e:?}"));
    shape.scope(|| {
        let vk = keygen_vk(params, &circuit).map_err(failed)?;
        let pk = keygen_pk(params, vk, &circuit).map_err(failed)?;
        let mut transcript = Blake2bWrite::<_, EqAffine, Challenge255<_>>::init(vec![]);
        let start = Instant::now();
        create_proof(
            params,
            &pk,
            std::slice::from_ref(&circuit),
            &[&[]],
            UnwrapErr(SysRng),
            &mut transcript,
        )
        .map_err(failed)?;
        Ok(start.elapsed().as_secs_f64())
    })
}

/// The process's peak resident memory (VmHWM), where /proc tells it.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
