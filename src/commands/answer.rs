//! `zkinfer verify --transcript T.json --bundle B.zkp`: which generated
//! tokens of a transcript the bundle proves (`verifier::answer`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};
use transcript::{self, Transcript};
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let answer = transcript::answer::check(
        transcript,
        dir,
        bundle,
        report,
        params,
        args.model_id.as_deref(),
        args.require.0,
    )
    .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
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
            let reason = match (&t.reason, t.verdict) {
                (Some(r), _) => format!(": {r}"),
                (None, "not proved") if t.required => {
                    ": required by the transcript's policy".into()
                }
                _ => String::new(),
            };
            println!(
                "{:>10} {:>8} {:>12}  {}{reason}",
                t.position, t.token, logprob, t.verdict
            );
        }
        for problem in &answer.problems {
            println!("problem: {problem}");
        }
        if let Some(r) = &answer.receipts {
            println!(
                "receipts: {} hops signed by {} nodes, {} unsigned",
                r.signed_hops, r.nodes, r.unsigned_hops
            );
        }
        for c in &answer.checks {
            println!(
                "check {}: {} ({})",
                c.name,
                if c.passed { "passed" } else { "FAILED" },
                c.detail
            );
        }
        println!(
            "{}: {} tokens: {} proved, {} not proved, {} invalid ({} proofs checked in {:.2} s; model {})",
            if answer.valid { "VALID" } else { "INVALID" },
            answer.tokens.len(),
            answer.proved,
            answer.not_proved,
            answer.invalid,
            report.proofs.len(),
            elapsed.as_secs_f64(),
            transcript.model_id
        );
    }
    Ok(if answer.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
