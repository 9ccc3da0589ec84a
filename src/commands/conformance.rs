//! `zkinfer bench conformance`: how far a candidate device or configuration
//! (CUDA, another CPU thread count) moves the model's numbers from a reference,
//! and the audit tolerances that follow from it (docs/gpu.md).
//!
//! Per prompt the reference decodes `--tokens` greedy tokens; the candidate is
//! teacher-forced on exactly those tokens with the same calls (one prefill, then
//! one token per forward), so every difference comes from the device or the
//! configuration, never from a diverging text. Each row (the last prompt
//! position, then each generated one) compares:
//! - the logits;
//! - the final hidden state (the input of the final norm), what a re-executed
//!   layer range is checked against;
//! - the head alone: the candidate's final norm + head on the *reference's*
//!   hidden state against the reference's logits, which is what an auditor
//!   re-executing a node's exit step recomputes.
//!
//! Each is scored with the auditor's own rule and constants
//! ([`audit::fraud::compare`], [`HIDDEN`], [`LOGITS`]: a score up to 1
//! accepts), so the report says directly whether honest candidates pass.
//!
//! The candidate runs in a child process: candle sizes its CPU thread pool
//! once per process, so a thread count can only be compared across processes.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use serde_json::json;

use audit::fraud::{HIDDEN, LOGITS};
use harness::conformance::{
    decode, head_on, recommend, report, Forcing, Plan, PromptReport, Rows, Sequence, ATOL_FLOOR,
    SAFETY_FACTOR,
};
use models::tokenizer::Tokenizer;
use models::Model;
use node::greedy_token;

use super::model::{open_gguf, packaged_model_path};
use super::serve::set_threads;
use super::{device, CliError};
use crate::cli::{BenchConformanceArgs, DeviceKind};
use harness::children::command;

/// Fixed prompts: prose, code and a fact, so different token statistics.
const PROMPTS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog. In the beginning",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The capital of France is Paris. The capital of Japan is",
];

pub fn run(args: BenchConformanceArgs) -> Result<ExitCode, CliError> {
    if args.in_process {
        return candidate_side(&args);
    }
    if args.tokens == 0 {
        return Err(CliError::failed("--tokens must be at least 1"));
    }
    // Fail before the reference run when the candidate cannot run at all.
    device::supported(args.candidate)?;
    set_threads(args.reference_threads);
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&path)?;
    let tokenizer = Tokenizer::from_gguf(&content).map_err(|e| failed(&path, e))?;
    let shape = Model::shape_of(&content).map_err(|e| failed(&path, e))?;
    let prompts: Vec<String> = if args.prompts.is_empty() {
        PROMPTS.iter().map(|p| p.to_string()).collect()
    } else {
        args.prompts.clone()
    };

    eprintln!(
        "[reference: {} ...]",
        describe(args.reference, args.reference_threads)
    );
    let reference_device = device::open(args.reference)?;
    let model = Model::from_gguf(&content, &mut reader, &reference_device, 0..shape.layers)
        .map_err(|e| failed(&path, e))?;
    drop(reader);
    let started = Instant::now();
    let mut plan = Plan {
        sequences: Vec::new(),
    };
    let mut reference = Vec::new();
    for text in &prompts {
        let prompt = tokenizer.encode(text, true);
        let rows = decode(&model, &prompt, Forcing::Greedy(args.tokens)).map_err(model_error)?;
        plan.sequences.push(Sequence {
            prompt,
            tokens: rows.tokens.clone(),
            hidden: rows.hidden.clone(),
        });
        reference.push(rows);
    }
    let reference_s = started.elapsed().as_secs_f64();
    drop(model);

    eprintln!(
        "[candidate: {} ...]",
        describe(args.candidate, args.candidate_threads)
    );
    let started = Instant::now();
    let candidate = run_candidate(&args, &path, &plan, shape.vocab, shape.hidden)?;
    let candidate_s = started.elapsed().as_secs_f64();

    let reports: Vec<PromptReport> = prompts
        .iter()
        .zip(&plan.sequences)
        .zip(reference.iter().zip(&candidate))
        .map(|((text, seq), (r, (c, head)))| report(text, seq, r, c, head))
        .collect();
    let worst = |f: fn(&PromptReport) -> f32| reports.iter().map(f).fold(0.0f32, f32::max);
    let hidden_score = worst(|r| r.hidden.score);
    let logits_score = worst(|r| r.logits.score.max(r.head.score));
    let recommended_hidden = recommend(HIDDEN, hidden_score);
    let recommended_logits = recommend(LOGITS, logits_score);
    let identical = reports.iter().all(|r| r.tokens_identical);

    if args.json {
        println!(
            "{}",
            json!({
                "model": path.display().to_string(),
                "reference": side_json(args.reference, args.reference_threads, reference_s),
                "candidate": side_json(args.candidate, args.candidate_threads, candidate_s),
                "tokens": args.tokens,
                "prompts": reports,
                "max_abs_logit_diff": worst(|r| r.logits.max_abs_diff),
                "max_abs_hidden_diff": worst(|r| r.hidden.max_abs_diff),
                "max_abs_head_diff": worst(|r| r.head.max_abs_diff),
                "hidden_score": hidden_score,
                "logits_score": logits_score,
                "tokens_identical": identical,
                "hidden_tolerance": HIDDEN,
                "logits_tolerance": LOGITS,
                "recommended_hidden_tolerance": recommended_hidden,
                "recommended_logits_tolerance": recommended_logits,
                "safety_factor": SAFETY_FACTOR,
                "atol_floor": ATOL_FLOOR,
            })
        );
    } else {
        println!("model:     {}", path.display());
        println!(
            "reference: {} ({reference_s:.1} s)",
            describe(args.reference, args.reference_threads)
        );
        println!(
            "candidate: {} ({candidate_s:.1} s)",
            describe(args.candidate, args.candidate_threads)
        );
        println!(
            "rows:      the last prompt position, then {} greedy tokens teacher-forced",
            args.tokens - 1
        );
        println!();
        println!(
            "{:<34} {:>5} {:>10} {:>10} {:>9} {:>10}  tokens",
            "prompt", "rows", "logits Δ", "hidden Δ", "(|h| ≤)", "head Δ"
        );
        for r in &reports {
            let tokens = match r.first_token_mismatch {
                None => "identical".to_string(),
                Some(row) => format!("differ from row {row}"),
            };
            println!(
                "{:<34} {:>5} {:>10.3e} {:>10.3e} {:>9.1} {:>10.3e}  {tokens}",
                abbreviate(&r.prompt, 34),
                r.rows,
                r.logits.max_abs_diff,
                r.hidden.max_abs_diff,
                r.max_abs_hidden,
                r.head.max_abs_diff
            );
        }
        println!();
        println!(
            "audit tolerances (audit::fraud: score = max |Δ| / (atol + rtol·|x|), up to 1 accepts;"
        );
        println!(
            "recommended: scaled so that the worst score is 1/{SAFETY_FACTOR}, atol at least {ATOL_FLOOR:.2e}):"
        );
        for (name, current, score, recommended) in [
            ("hidden states", HIDDEN, hidden_score, recommended_hidden),
            ("logits, head", LOGITS, logits_score, recommended_logits),
        ] {
            let verdict = if SAFETY_FACTOR * score <= 1.0 {
                format!("fits with a {SAFETY_FACTOR}x margin")
            } else if score <= 1.0 {
                "fits, with less than the margin".to_string()
            } else {
                "TOO TIGHT: honest runs would not be accepted".to_string()
            };
            println!(
                "  {name:<14} atol {:.2e} rtol {:.2e}: worst score {score:.3e}, {verdict}; recommended atol {:.2e} rtol {:.2e}",
                current.atol, current.rtol, recommended.atol, recommended.rtol
            );
        }
    }
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: greedy tokens differ between reference and candidate");
        ExitCode::FAILURE
    })
}

/// `--in-process`: reads a [`Plan`] on stdin, writes per sequence the logits,
/// hidden states and head-on-reference logits as little-endian f32 on stdout.
fn candidate_side(args: &BenchConformanceArgs) -> Result<ExitCode, CliError> {
    set_threads(args.candidate_threads);
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| CliError::failed(format!("reading the plan: {e}")))?;
    let plan: Plan = serde_json::from_slice(&input)
        .map_err(|e| CliError::failed(format!("the plan on stdin is not valid: {e}")))?;
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let (content, mut reader) = open_gguf(&path)?;
    let shape = Model::shape_of(&content).map_err(|e| failed(&path, e))?;
    let candidate_device = device::open(args.candidate)?;
    let model = Model::from_gguf(&content, &mut reader, &candidate_device, 0..shape.layers)
        .map_err(|e| failed(&path, e))?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for seq in &plan.sequences {
        if seq.prompt.is_empty() || seq.hidden.len() != seq.tokens.len() * shape.hidden {
            return Err(CliError::failed("the plan's sequences are malformed"));
        }
        let rows =
            decode(&model, &seq.prompt, Forcing::Tokens(&seq.tokens)).map_err(model_error)?;
        let head = head_on(&model, &seq.hidden).map_err(model_error)?;
        for values in [&rows.logits, &rows.hidden, &head] {
            for v in values.iter() {
                stdout
                    .write_all(&v.to_le_bytes())
                    .map_err(|e| CliError::failed(format!("writing figures: {e}")))?;
            }
        }
    }
    stdout
        .flush()
        .map_err(|e| CliError::failed(format!("writing figures: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the candidate child on `plan`; returns per sequence its rows and its
/// head on the reference's hidden states.
fn run_candidate(
    args: &BenchConformanceArgs,
    model: &Path,
    plan: &Plan,
    vocab: usize,
    hidden: usize,
) -> Result<Vec<(Rows, Vec<f32>)>, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("finding this executable: {e}")))?;
    let mut cmd = command(exe);
    cmd.args(["bench", "conformance", "--in-process", "--candidate"])
        .arg(args.candidate.to_string())
        .arg("--model")
        .arg(model);
    if let Some(threads) = args.candidate_threads {
        cmd.args(["--candidate-threads", &threads.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::failed(format!("starting the candidate run: {e}")))?;
    let plan_json = serde_json::to_vec(plan)?;
    // The child reads the whole plan before it writes anything: no deadlock.
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(&plan_json))
        .transpose();
    let output = child
        .wait_with_output()
        .map_err(|e| CliError::failed(format!("waiting for the candidate run: {e}")))?;
    if !output.status.success() {
        return Err(CliError::failed(format!(
            "the candidate run on {} failed ({}): see its error above",
            args.candidate, output.status
        )));
    }
    written.map_err(|e| CliError::failed(format!("sending the plan: {e}")))?;
    let values: Vec<f32> = output
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let expected: usize = plan
        .sequences
        .iter()
        .map(|s| s.tokens.len() * (2 * vocab + hidden))
        .sum();
    if output.stdout.len() != 4 * expected {
        return Err(CliError::failed(format!(
            "the candidate run returned {} bytes, expected {}",
            output.stdout.len(),
            4 * expected
        )));
    }
    let mut rest = values.as_slice();
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    Ok(plan
        .sequences
        .iter()
        .map(|s| {
            let rows = s.tokens.len();
            let logits = take(rows * vocab);
            let tokens = logits
                .chunks_exact(vocab)
                .map(|row| greedy_token(row).unwrap_or(u32::MAX))
                .collect();
            let hidden = take(rows * hidden);
            let head = take(rows * vocab);
            (
                Rows {
                    logits,
                    hidden,
                    tokens,
                },
                head,
            )
        })
        .collect())
}

fn describe(kind: DeviceKind, threads: Option<usize>) -> String {
    match kind {
        DeviceKind::Cpu => {
            let n = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            format!("cpu, {n} thread{}", if n == 1 { "" } else { "s" })
        }
        DeviceKind::Cuda(_) => kind.to_string(),
    }
}

fn side_json(kind: DeviceKind, threads: Option<usize>, seconds: f64) -> serde_json::Value {
    json!({ "device": kind.to_string(), "describe": describe(kind, threads), "seconds": seconds })
}

/// The prompt on one line, cut to `width` characters.
fn abbreviate(text: &str, width: usize) -> String {
    let line: String = format!("{text:?}");
    if line.chars().count() <= width {
        line
    } else {
        line.chars().take(width - 1).chain(['…']).collect()
    }
}

fn failed(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::failed(format!("{}: {e}", path.display()))
}

fn model_error(e: models::ModelError) -> CliError {
    CliError::failed(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_prompts_are_cut() {
        assert_eq!(abbreviate("abc", 10), "\"abc\"");
        assert_eq!(abbreviate("abcdefghijkl", 6).chars().count(), 6);
    }
}
