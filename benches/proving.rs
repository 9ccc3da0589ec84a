//! Criterion benches: proving and verifying decode steps vs vocabulary V and
//! steps per proof T.
//!
//! `cargo bench --bench proving` measures V in {4096} and T in {1, 4} by default
//! (a proof takes about a minute at k = 17 on 2 cores, and criterion wants ten).
//! Choose others with `ZKINFER_BENCH_VOCAB=4096,32000 ZKINFER_BENCH_BATCH=1,16`
//! and the lanes with `ZKINFER_BENCH_LANES` (default 4). For one-shot numbers
//! over many shapes, `zkinfer cost` is quicker.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use halo2_proofs::plonk::BatchVerifier;

use circuits::{CircuitShape, DecodeStepCircuit, FixedPoint};
use prover::Prover;
use verifier::ParamsCache;

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn bench(c: &mut Criterion) {
    let cache = ParamsCache::new(ParamsCache::default_dir());
    let lanes = list("ZKINFER_BENCH_LANES", &[4])[0];
    let mut prove = c.benchmark_group("prove");
    prove
        .sample_size(10)
        .measurement_time(Duration::from_secs(60));
    let mut verify_cases = Vec::new();
    for vocab in list("ZKINFER_BENCH_VOCAB", &[4096]) {
        for batch in list("ZKINFER_BENCH_BATCH", &[1, 4]) {
            let shape = CircuitShape::new(vocab, FixedPoint::default(), batch, lanes).unwrap();
            let prover = Prover::setup(shape, &cache, false).unwrap();
            let witnesses = prover::synthetic_steps(shape, 0x9E37_79B9_7F4A_7C15);
            let id = format!("V={vocab}/T={batch}/L={lanes}");
            prove.bench_function(BenchmarkId::from_parameter(&id), |b| {
                b.iter(|| prover.prove(witnesses.clone()).unwrap())
            });
            let statements: Vec<_> = witnesses.iter().map(|w| w.statement).collect();
            let proof = prover.prove(witnesses).unwrap().bytes;
            verify_cases.push((id, prover, DecodeStepCircuit::instance(&statements), proof));
        }
    }
    prove.finish();

    // 16 proofs per batch verification: the per-proof cost is what a client pays.
    let mut verify = c.benchmark_group("verify_batch_of_16");
    for (id, prover, instance, proof) in &verify_cases {
        verify.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let mut batch = BatchVerifier::new();
                for _ in 0..16 {
                    batch.add_proof(vec![vec![instance.clone()]], proof.clone());
                }
                assert!(batch.finalize(&prover.params, prover.pk.get_vk()));
            })
        });
    }
    verify.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
