//! `zkinfer verify --transcript T.json --bundle B.zkp`: which generated
//! tokens of a transcript the bundle proves (`verifier::answer`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use circuits::commitment::commit_logits;
use circuits::fixed_point::temperature_to_beta;
use circuits::{Fp, Sampler};
use runtime::transcript::{self, ProvingPolicy, StepSampler, Transcript, TranscriptSampler};
use verifier::answer::{check_answer, ExpectedStep, Verdict};
use verifier::{Bundle, Report};

use super::CliError;
use crate::cli::VerifyArgs;

pub fn run(
    args: &VerifyArgs,
    path: &Path,
    bundle: &Bundle,
    report: &Report,
    elapsed: Duration,
) -> Result<ExitCode, CliError> {
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
    let mut problems = Vec::new();
    if let Some(expected) = &args.model_id {
        if !expected.eq_ignore_ascii_case(&transcript.model_id) {
            problems.push(format!(
                "the transcript is of model {}, not the expected {expected}",
                transcript.model_id
            ));
        }
    }
    let expected = expected_steps(&transcript, path, bundle, &mut problems)?;
    let required = match transcript.proving {
        Some(ProvingPolicy::All) => transcript.token_positions().collect(),
        Some(ProvingPolicy::Challenged { challenges }) => {
            transcript.challenged_positions(challenges)
        }
        None => Vec::new(),
    };
    let mut answer = check_answer(bundle, report, &expected, &required);
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

/// What the transcript says about each generated token: the token, the
/// sampler with `r` recomputed from its nonce and request id, and the
/// commitment to its logits when the records hold them.
fn expected_steps(
    transcript: &Transcript,
    path: &Path,
    bundle: &Bundle,
    problems: &mut Vec<String>,
) -> Result<Vec<ExpectedStep>, CliError> {
    let unreadable =
        |e: &dyn std::fmt::Display| CliError::unreadable(format!("{}: {e}", path.display()));
    let nonce = transcript.nonce().map_err(|e| unreadable(&e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let records = transcript.records(dir).map_err(|e| unreadable(&e))?;
    let fixed_point = bundle.shape.fixed_point;
    if records.vocab != bundle.shape.vocab {
        problems.push(format!(
            "the bundle proves a vocabulary of {}, the transcript's model has {}",
            bundle.shape.vocab, records.vocab
        ));
    }
    let mut expected = Vec::new();
    for (position, &token) in transcript.token_positions().zip(&transcript.tokens) {
        let sampler = match transcript.sampler {
            TranscriptSampler::Greedy {} => Sampler::Greedy,
            TranscriptSampler::Sample { temperature } => Sampler::Sample {
                beta: temperature_to_beta(temperature).map_err(|e| unreadable(&e))?,
                r: transcript::sampling_r(&nonce, transcript.request_id, position),
            },
        };
        let step = records.steps.iter().find(|s| s.position == position);
        if let Some(step) = step {
            if step.token != token {
                problems.push(format!(
                    "the records have token {} at position {position}, the transcript {token}",
                    step.token
                ));
            }
            let recorded_r = match &step.sampler {
                StepSampler::Greedy {} => None,
                StepSampler::Sample { r, .. } => r.parse::<u64>().ok(),
            };
            let derived_r = match sampler {
                Sampler::Greedy => None,
                Sampler::Sample { r, .. } => Some(r),
            };
            if recorded_r != derived_r {
                problems.push(format!(
                    "the records' r at position {position} is not the one the nonce gives"
                ));
            }
        }
        let commitment =
            step.and_then(|s| commitment_of(&s.logits, fixed_point, records.vocab, bundle));
        expected.push(ExpectedStep {
            position,
            token,
            sampler,
            commitment,
        });
    }
    Ok(expected)
}

/// The commitment the circuit makes to these logits, when they fit it.
fn commitment_of(
    logits: &[f32],
    fixed_point: circuits::FixedPoint,
    vocab: usize,
    bundle: &Bundle,
) -> Option<Fp> {
    if vocab != bundle.shape.vocab || logits.len() != vocab {
        return None;
    }
    let z: Vec<i64> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| fixed_point.quantize(i, l as f64))
        .collect::<Result<_, _>>()
        .ok()?;
    Some(commit_logits(fixed_point, &z))
}
