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

use harness::conformance::{
    decode, read_candidate, report, write_candidate, Forcing, Plan, Rows, Sequence, Summary,
};
use models::tokenizer::Tokenizer;
use models::Model;

use super::model::open_gguf;
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
    let path = args.model.path();
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

    let reports = prompts
        .iter()
        .zip(&plan.sequences)
        .zip(reference.iter().zip(&candidate))
        .map(|((text, seq), (r, (c, head)))| report(text, seq, r, c, head))
        .collect();
    let summary = Summary::new(reports);
    let identical = summary.tokens_identical;
    if args.json {
        let mut out = json!({
            "model": path.display().to_string(),
            "reference": side_json(args.reference, args.reference_threads, reference_s),
            "candidate": side_json(args.candidate, args.candidate_threads, candidate_s),
            "tokens": args.tokens,
        });
        if let (Some(out), serde_json::Value::Object(fields)) =
            (out.as_object_mut(), serde_json::to_value(&summary)?)
        {
            out.extend(fields);
        }
        println!("{out}");
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
        print!("{summary}");
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
    let path = args.model.path();
    let (content, mut reader) = open_gguf(&path)?;
    let shape = Model::shape_of(&content).map_err(|e| failed(&path, e))?;
    let candidate_device = device::open(args.candidate)?;
    let model = Model::from_gguf(&content, &mut reader, &candidate_device, 0..shape.layers)
        .map_err(|e| failed(&path, e))?;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    write_candidate(&model, &plan, &mut stdout)?;
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
    Ok(read_candidate(&output.stdout, plan, vocab, hidden)?)
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

fn failed(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::failed(format!("{}: {e}", path.display()))
}

fn model_error(e: models::ModelError) -> CliError {
    CliError::failed(e.to_string())
}
