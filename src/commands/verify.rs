//! `zkinfer verify`: a bundle's proofs, against a transcript when given, or a fraud proof.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use verifier::Bundle;

use super::inspect::sampler_json;
use super::{answer, audit, cache, input, model, CliError};
use crate::cli::{CacheArgs, VerifyArgs};

pub fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    if let Some(path) = &args.fraud_proof {
        return verify_fraud_proof(path, args.model.as_deref(), args.json);
    }
    let path = args
        .bundle
        .as_ref()
        .or(args.bundle_flag.as_ref())
        .ok_or_else(|| CliError::unreadable("name the proof bundle to verify"))?;
    // Cheap checks first: a transcript that does not parse fails before any
    // proof is checked.
    let transcript = args
        .transcript
        .as_ref()
        .map(|t| answer::read_transcript(t).map(|parsed| (t, parsed)))
        .transpose()?;
    let bundle = input::read_bundle(path)?;
    let start = Instant::now();
    let (params, report) = verify_proofs(&bundle, &args.cache)?;
    let elapsed = start.elapsed();
    if let Some((path, transcript)) = &transcript {
        return answer::run(&args, path, transcript, &bundle, &report, &params, elapsed);
    }
    let frac_bits = bundle.shape.fixed_point.frac_bits;
    let valid = report.all_valid();
    let steps: Vec<_> = bundle
        .steps()
        .map(|(proof, step)| {
            (
                step,
                if report.proofs[proof] {
                    "valid"
                } else {
                    "invalid"
                },
            )
        })
        .collect();
    if args.json {
        let steps: Vec<_> = steps
            .iter()
            .map(|(s, verdict)| {
                json!({
                    "position": s.position,
                    "token": s.token,
                    "logprob": s.logprob_nats(frac_bits),
                    "sampler": sampler_json(s.sampler),
                    "verdict": verdict,
                })
            })
            .collect();
        println!("{}", json!({"valid": valid, "steps": steps}));
    } else {
        println!(
            "{:>10} {:>8} {:>12}  verdict",
            "position", "token", "logprob"
        );
        for (s, verdict) in &steps {
            println!(
                "{:>10} {:>8} {:>12.6}  {verdict}",
                s.position,
                s.token,
                s.logprob_nats(frac_bits)
            );
        }
        let invalid = report.proofs.iter().filter(|v| !**v).count();
        println!(
            "{}: {} steps in {} proofs, {} invalid ({:.2} s)",
            if valid { "VALID" } else { "INVALID" },
            steps.len(),
            report.proofs.len(),
            invalid,
            elapsed.as_secs_f64()
        );
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Verifies every proof of `bundle`; a key that does not match the bundle's
/// circuit is a failed verification, anything unreadable an unreadable input.
/// Returns the parameters too: checking an answer opens the proofs with them.
fn verify_proofs(
    bundle: &Bundle,
    cache_args: &CacheArgs,
) -> Result<
    (
        halo2_proofs::poly::commitment::Params<halo2_proofs::pasta::EqAffine>,
        verifier::Report,
    ),
    CliError,
> {
    verifier::verify_bundle_keeping_params(bundle, &cache(cache_args)).map_err(|e| match e {
        verifier::VerifyError::KeyMismatch { .. } => CliError::failed(e.to_string()),
        other => CliError::unreadable(other.to_string()),
    })
}

/// `zkinfer verify --fraud-proof`: exit 0 if it shows fraud, 1 if not.
fn verify_fraud_proof(
    path: &Path,
    model: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let proof = read_fraud_proof(path)?;
    let model = model
        .map(Path::to_path_buf)
        .unwrap_or_else(model::packaged_model_path);
    let mut replayer = audit::open_replayer(&model)?;
    let verdict = proof
        .check(&mut replayer)
        .map_err(|e| CliError::failed(format!("re-executing the step: {e}")))?;
    if as_json {
        println!(
            "{}",
            json!({
                "valid": verdict.valid,
                "reason": verdict.reason,
                "comparison": verdict.comparison,
                "node": proof.signer,
                "step": proof.step,
                "position": proof.position,
            })
        );
    } else {
        println!(
            "{}: {}",
            if verdict.valid {
                "fraud shown"
            } else {
                "no fraud shown"
            },
            verdict.reason
        );
        if verdict.valid {
            println!("node: {}", proof.signer);
        }
    }
    Ok(if verdict.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Reads a fraud proof written by `zkinfer audit`.
pub fn read_fraud_proof(path: &Path) -> Result<::audit::fraud::FraudProof, CliError> {
    input::read_json(path, "fraud proof")
}
