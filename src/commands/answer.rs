//! `zkinfer verify --transcript T.json --bundle B.zkp`: which generated
//! tokens of a transcript the bundle proves (`verifier::answer`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use runtime::transcript::{self, Transcript};
use verifier::answer::{check_answer, Verdict};
use verifier::receipt::{verify_aggregate, Signature};
use verifier::{Bundle, Report};

use super::CliError;
use crate::cli::VerifyArgs;

/// Reads a transcript written by `zkinfer generate --transcript`.
pub fn read_transcript(path: &Path) -> Result<Transcript, CliError> {
    let unreadable =
        |e: &dyn std::fmt::Display| CliError::unreadable(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(&e))?;
    let transcript: Transcript = serde_json::from_str(&text).map_err(|e| unreadable(&e))?;
    if transcript.version != transcript::VERSION {
        return Err(unreadable(&format!(
            "transcript version {}, this zkinfer reads version {}",
            transcript.version,
            transcript::VERSION
        )));
    }
    Ok(transcript)
}

pub fn run(
    args: &VerifyArgs,
    path: &Path,
    bundle: &Bundle,
    report: &Report,
    elapsed: Duration,
) -> Result<ExitCode, CliError> {
    let transcript = read_transcript(path)?;
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
    let receipts = check_receipts(&transcript);
    if let Err(problem) = &receipts {
        problems.push(problem.clone());
    }
    let required = transcript.required_positions();
    let mut answer = check_answer(bundle, report, &expected.steps, &required);
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
                "receipts: {} hops signed by {} nodes (aggregate signature valid), {} unsigned",
                r.signed, r.nodes, r.unsigned
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

/// What the transcript's hop receipts showed.
struct Receipts {
    signed: usize,
    unsigned: usize,
    nodes: usize,
}

/// Checks the aggregate signature over every signed hop receipt (one
/// multi-pairing); an invalid or missing aggregate is a problem.
fn check_receipts(transcript: &Transcript) -> Result<Receipts, String> {
    let signed = transcript
        .receipts()
        .map_err(|e| format!("hop receipts: {e}"))?;
    let unsigned = transcript.unsigned_hops();
    let mut nodes: Vec<_> = signed.iter().map(|(k, _)| k.to_hex()).collect();
    nodes.sort();
    nodes.dedup();
    let summary = Receipts {
        signed: signed.len(),
        unsigned,
        nodes: nodes.len(),
    };
    match (&transcript.receipts_signature, signed.is_empty()) {
        (None, true) => Ok(summary),
        (None, false) => {
            Err("hops carry receipts but the transcript has no aggregate signature".into())
        }
        (Some(hex), _) => {
            let aggregate = Signature::from_hex(hex).map_err(|e| format!("receipts: {e}"))?;
            if verify_aggregate(&signed, &aggregate) {
                Ok(summary)
            } else {
                Err(format!(
                    "the aggregate signature does not sign the {} hop receipts",
                    signed.len()
                ))
            }
        }
    }
}
