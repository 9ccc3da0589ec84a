//! `zkinfer verify --transcript T.json --bundle B.zkp`: which generated
//! tokens of a transcript the bundle proves (`verifier::answer`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};
use transcript::binding;
use transcript::{self, Transcript};
use verifier::answer::{check_answer, Verdict};
use verifier::{Bundle, Report};

use super::CliError;
use crate::cli::VerifyArgs;

/// Reads a transcript written by `zkinfer generate --transcript`.
pub fn read_transcript(path: &Path) -> Result<Transcript, CliError> {
    let transcript: Transcript = super::input::read_json(path, "transcript")?;
    if transcript.version != transcript::VERSION {
        return Err(CliError::unreadable(format!(
            "{}: transcript version {}, this zkinfer reads version {}",
            path.display(),
            transcript.version,
            transcript::VERSION
        )));
    }
    Ok(transcript)
}

pub fn run(
    args: &VerifyArgs,
    path: &Path,
    transcript: &Transcript,
    bundle: &Bundle,
    report: &Report,
    params: &Params<EqAffine>,
    elapsed: Duration,
) -> Result<ExitCode, CliError> {
    let mut problems = Vec::new();
    if let Some(expected) = &args.model_id {
        if !expected.eq_ignore_ascii_case(&transcript.model_id) {
            problems.push(format!(
                "the transcript is of model {}, not the expected {expected}",
                transcript.model_id
            ));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let expected = transcript
        .expected_steps(dir, bundle.shape.fixed_point, bundle.shape.vocab)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
    problems.extend(expected.problems);
    let checks = binding::check(transcript, dir);
    problems.extend(
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail)),
    );
    let receipts = receipt_summary(transcript);
    let required = transcript.required_positions(args.require.0);
    let openings = transcript.proof_openings(bundle, params, &expected.logits);
    let mut answer = check_answer(bundle, report, &openings, &expected.steps, &required);
    answer.problems.extend(problems);
    let valid = answer.valid();
    let (proved, not_proved, invalid) = answer.counts();
    let verdict_name = |v: &Verdict| match v {
        Verdict::Proved => "proved",
        Verdict::NotProved => "not proved",
        Verdict::Invalid(_) => "invalid",
    };
    if args.json {
        let tokens: Vec<_> = answer
            .tokens
            .iter()
            .map(|t| {
                json!({
                    "position": t.position,
                    "token": t.token,
                    "logprob": t.logprob,
                    "required": t.required,
                    "verdict": verdict_name(&t.verdict),
                    "reason": match &t.verdict { Verdict::Invalid(r) => Some(r), _ => None },
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "valid": valid,
                "model_id": transcript.model_id,
                "proved": proved,
                "not_proved": not_proved,
                "invalid": invalid,
                "required": required,
                "problems": answer.problems,
                "receipts": receipts.as_ref().ok().map(|r| json!({
                    "signed_hops": r.signed,
                    "unsigned_hops": r.unsigned,
                    "nodes": r.nodes,
                })),
                "checks": checks,
                "tokens": tokens,
            })
        );
    } else {
        println!(
            "{:>10} {:>8} {:>12}  verdict",
            "position", "token", "logprob"
        );
        for t in &answer.tokens {
            let logprob = t
                .logprob
                .map(|l| format!("{l:.6}"))
                .unwrap_or_else(|| "-".into());
            let reason = match &t.verdict {
                Verdict::Invalid(r) => format!(": {r}"),
                Verdict::NotProved if t.required => ": required by the transcript's policy".into(),
                _ => String::new(),
            };
            println!(
                "{:>10} {:>8} {:>12}  {}{reason}",
                t.position,
                t.token,
                logprob,
                verdict_name(&t.verdict)
            );
        }
        for problem in &answer.problems {
            println!("problem: {problem}");
        }
        if let Ok(r) = &receipts {
            println!(
                "receipts: {} hops signed by {} nodes, {} unsigned",
                r.signed, r.nodes, r.unsigned
            );
        }
        for c in &checks {
            println!(
                "check {}: {} ({})",
                c.name,
                if c.passed { "passed" } else { "FAILED" },
                c.detail
            );
        }
        println!(
            "{}: {} tokens: {proved} proved, {not_proved} not proved, {invalid} invalid ({} proofs checked in {:.2} s; model {})",
            if valid { "VALID" } else { "INVALID" },
            answer.tokens.len(),
            report.proofs.len(),
            elapsed.as_secs_f64(),
            transcript.model_id
        );
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How many hops were signed, and by how many nodes (the signatures
/// themselves are [`binding::check`]'s).
struct Receipts {
    signed: usize,
    unsigned: usize,
    nodes: usize,
}

fn receipt_summary(transcript: &Transcript) -> Result<Receipts, transcript::TranscriptError> {
    let signed = transcript.receipts()?;
    let mut nodes: Vec<_> = signed.iter().map(|(k, _)| k.to_hex()).collect();
    nodes.sort();
    nodes.dedup();
    Ok(Receipts {
        signed: signed.len(),
        unsigned: transcript.unsigned_hops(),
        nodes: nodes.len(),
    })
}
