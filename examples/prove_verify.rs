//! Prove and verify a few decode steps end to end, with synthetic logits.
//!
//! `cargo run --release --example prove_verify [-- VOCAB STEPS]` (default 4096 4)
//!
//! The first run generates the public parameters for k = 17 (about 1.5 minutes on
//! 2 cores) and caches them in ~/.cache/zkinfer.

use std::time::Instant;

use circuits::{fixed_point::Temperature, sample_token, CircuitShape, FixedPoint, Tables};
use prover::{prepare, Prover, Record, RecordSampler, Records};
use verifier::ParamsCache;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let vocab: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4096);
    let count: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    let fixed_point = FixedPoint::default();
    let temperature = Temperature::new(0.8)?;
    let tables = Tables::new(fixed_point, temperature);

    // Synthetic logits, sampled at temperature 0.8.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let steps = (0..count)
        .map(|position| {
            let logits: Vec<f32> = (0..vocab)
                .map(|_| (next() % 20_000) as f32 / 1000.0 - 10.0)
                .collect();
            let record_sampler = RecordSampler::Sample {
                temperature: temperature.value(),
                r: next().to_string(),
            };
            let sampler = prover::sampler_of(&record_sampler)?;
            let z = fixed_point.quantize_all(&logits)?;
            let token = sample_token(&tables, &z, sampler)?;
            Ok(Record {
                position,
                logits,
                token,
                sampler: record_sampler,
            })
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let records = Records { vocab, steps };

    let shape = CircuitShape::new(vocab, fixed_point, 2, 2)?.with_temperature(temperature);
    println!(
        "circuit: {} (k = {}, {} advice columns)",
        shape.describe(),
        shape.k(),
        shape.advice_columns()
    );
    let prepared = prepare(&records, fixed_point)?;
    let cache = ParamsCache::new(ParamsCache::default_dir());
    let prover = Prover::setup(shape, &cache, true)?;
    println!(
        "parameters {:.1} s, keys {:.1} s",
        prover.timings.params.as_secs_f64(),
        prover.timings.keygen.as_secs_f64()
    );
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bundle = prover.prove_all(&prepared, 1, threads, true)?;
    let prove_time = start.elapsed();
    let bytes = bundle.to_bytes();

    let start = Instant::now();
    let key = verifier::verifying_key(shape, &prover.params)?;
    let key_time = start.elapsed();
    let start = Instant::now();
    let report =
        verifier::verify_with_key(&verifier::Bundle::from_bytes(&bytes)?, &prover.params, &key)?;
    let verify_time = start.elapsed();

    println!(
        "\n{:>8} {:>8} {:>12}  sampler",
        "position", "token", "logprob"
    );
    for (_, s) in bundle.steps() {
        println!(
            "{:>8} {:>8} {:>12.6}  {}",
            s.position,
            s.token,
            s.logprob_nats(fixed_point.frac_bits),
            s.sampler
        );
    }
    println!(
        "\n{}: {} steps, {} proofs, bundle {} bytes; prove {:.1} s ({:.1} s/token), verifying key {:.1} s, batch verify {:.3} s",
        if report.all_valid() { "VALID" } else { "INVALID" },
        count,
        bundle.proofs.len(),
        bytes.len(),
        prove_time.as_secs_f64(),
        prove_time.as_secs_f64() / count as f64,
        key_time.as_secs_f64(),
        verify_time.as_secs_f64()
    );
    if !report.all_valid() {
        std::process::exit(1);
    }
    Ok(())
}
