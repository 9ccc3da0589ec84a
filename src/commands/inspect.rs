//! `zkinfer inspect`: a bundle's circuit and statements, unverified.

use std::process::ExitCode;

use serde_json::json;

use circuits::Sampler;

use super::{input, CliError};
use crate::cli::InspectArgs;

pub fn run(args: InspectArgs) -> Result<ExitCode, CliError> {
    let bundle = input::read_bundle(&args.bundle)?;
    let shape = bundle.shape;
    let frac_bits = shape.fixed_point.frac_bits;
    let steps: Vec<_> = bundle
        .proofs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.steps
                .iter()
                .enumerate()
                .map(move |(j, s)| (i, s, p.is_padding(j)))
        })
        .collect();
    if args.json {
        let steps: Vec<_> = steps
            .iter()
            .map(|(proof, s, padding)| {
                json!({
                    "proof": proof,
                    "position": s.position,
                    "padding": padding,
                    "token": s.token,
                    "logprob": s.logprob_nats(frac_bits),
                    "logprob_fixed": s.logprob,
                    "sampler": sampler_json(s.sampler),
                })
            })
            .collect();
        let out = json!({
            "format_version": verifier::bundle::FORMAT_VERSION,
            "circuit": {
                "vocab": shape.vocab,
                "frac_bits": shape.fixed_point.frac_bits,
                "exp_bits": shape.fixed_point.exp_bits,
                "steps_per_proof": shape.steps,
                "lanes": shape.lanes,
                "k": shape.k(),
                "description": shape.describe(),
            },
            "vk_digest": verifier::hex(&bundle.vk_digest),
            "proofs": bundle.proofs.iter().map(|p| p.bytes.len()).collect::<Vec<_>>(),
            "logit_commitments": bundle.proofs.iter().map(|p| logit_commitments_hex(shape, p)).collect::<Vec<_>>(),
            "steps": steps,
        });
        println!("{out}");
    } else {
        println!("circuit:   {} (k = {})", shape.describe(), shape.k());
        println!("vk digest: {}", verifier::hex(&bundle.vk_digest));
        println!("proofs:    {}", bundle.proofs.len());
        for (proof, s, padding) in steps {
            println!(
                "  proof {proof}: position {} token {} logprob {:.6} {}{}",
                s.position,
                s.token,
                s.logprob_nats(frac_bits),
                s.sampler,
                if padding { " (padding)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn sampler_json(sampler: Sampler) -> serde_json::Value {
    match sampler {
        Sampler::Greedy => json!({"greedy": {}}),
        Sampler::Sample { temperature, r } => json!({"sample": {
            "temperature": temperature.value(),
            "r": r.to_string(),
        }}),
    }
}

/// A proof's commitments to its logit columns (one per lane), as hex; empty
/// when the proof bytes do not start with curve points.
fn logit_commitments_hex(shape: circuits::CircuitShape, proof: &verifier::Proof) -> Vec<String> {
    use halo2_proofs::pasta::group::GroupEncoding as _;
    circuits::opening::proof_logit_commitments(shape, &proof.bytes)
        .unwrap_or_default()
        .iter()
        .map(|c| verifier::hex(c.to_bytes().as_ref()))
        .collect()
}
