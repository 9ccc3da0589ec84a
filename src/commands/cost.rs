//! `zkinfer cost`: what the decode-step circuit costs, per (vocabulary, batch, lanes).
//!
//! Each configuration is measured in a child process (`cost --in-process`), so that
//! its peak memory is its own.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use halo2_proofs::{
    pasta::{EqAffine, Fp},
    plonk::{BatchVerifier, VerifyingKey},
    poly::commitment::Params,
};
use serde::{Deserialize, Serialize};

use circuits::{CircuitShape, FixedPoint};
use prover::Prover;

use super::{cache, CliError};
use crate::cli::CostArgs;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Row {
    vocab: usize,
    batch: usize,
    lanes: usize,
    k: u32,
    lane_rows: usize,
    advice_columns: usize,
    keygen_s: Option<f64>,
    prove_s: Option<f64>,
    prove_per_token_s: Option<f64>,
    verify_s: Option<f64>,
    batch_verify_per_proof_s: Option<f64>,
    verify_per_token_s: Option<f64>,
    proof_bytes: Option<usize>,
    proof_bytes_per_token: Option<f64>,
    peak_memory_mib: Option<f64>,
    /// Proving the floor circuit (`circuits::floor`) at the same V, T, L and k.
    floor_prove_s: Option<f64>,
}

pub fn run(args: CostArgs) -> Result<ExitCode, CliError> {
    let fixed_point = FixedPoint::default();
    let batches = &args.batch;
    let vocabs = or_default(&args.vocab, &[512, 4096, 32000, 262144]);
    let mut configs = Vec::new();
    for &vocab in &vocabs {
        for &batch in batches {
            if args.lanes.is_empty() {
                match CircuitShape::fitted(vocab, fixed_point, batch) {
                    Ok(shape) => configs.push(shape),
                    Err(e) => eprintln!("skipping V={vocab} T={batch}: {e}"),
                }
            }
            for &lanes in &args.lanes {
                match CircuitShape::new(vocab, fixed_point, batch, lanes) {
                    Ok(shape) => configs.push(shape),
                    Err(e) => eprintln!("skipping V={vocab} T={batch} L={lanes}: {e}"),
                }
            }
        }
    }
    let rows = sweep(&configs, &args)?;
    if let Some(path) = &args.svg {
        plot(&rows, path)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn or_default(values: &[usize], default: &[usize]) -> Vec<usize> {
    if values.is_empty() { default } else { values }.to_vec()
}

/// Lays out or measures every configuration, printing a table (or JSON).
fn sweep(configs: &[CircuitShape], args: &CostArgs) -> Result<Vec<Row>, CliError> {
    let mut rows = Vec::new();
    for &config in configs {
        let row = if args.layout_only {
            layout(config)
        } else if args.in_process {
            measure(config, args)?
        } else {
            measure_in_child(config, args)?
        };
        if !args.json && !args.in_process {
            print_row(&row, rows.is_empty());
        }
        rows.push(row);
    }
    if args.json || args.in_process {
        println!("{}", serde_json::to_string(&rows).expect("rows serialize"));
    }
    Ok(rows)
}

fn measure_in_child(config: CircuitShape, args: &CostArgs) -> Result<Row, CliError> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["cost", "--in-process"])
        .args(child_args(config))
        .args(["--verify-batch", &args.verify_batch.to_string()]);
    if let Some(dir) = &args.cache.cache_dir {
        cmd.arg("--cache-dir").arg(dir);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(CliError::failed(format!(
            "measuring {}: {}",
            config.describe(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let rows: Vec<Row> = serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::failed(format!("child output: {e}")))?;
    rows.into_iter()
        .next()
        .ok_or_else(|| CliError::failed("child measured nothing"))
}

/// Verification time of one proof alone, and per proof in a batch of `n` copies.
fn verify_times(
    params: &Params<EqAffine>,
    vk: &VerifyingKey<EqAffine>,
    instance: &[Fp],
    proof: &[u8],
    n: usize,
    what: &str,
) -> Result<(f64, f64), CliError> {
    let verify = |n: usize| {
        let mut batch = BatchVerifier::new();
        for _ in 0..n {
            batch.add_proof(vec![vec![instance.to_vec()]], proof.to_vec());
        }
        let start = Instant::now();
        let ok = batch.finalize(params, vk);
        (ok, start.elapsed().as_secs_f64())
    };
    let (ok, single) = verify(1);
    if !ok {
        return Err(CliError::failed(format!(
            "the proof of {what} did not verify"
        )));
    }
    let n = n.max(1);
    let (ok, many) = verify(n);
    if !ok {
        return Err(CliError::failed("batch verification failed"));
    }
    Ok((single, many / n as f64))
}

/// The `cost` arguments that select `shape` in a child.
fn child_args(shape: CircuitShape) -> Vec<String> {
    [
        ("--vocab", shape.vocab),
        ("--batch", shape.steps),
        ("--lanes", shape.lanes),
    ]
    .iter()
    .flat_map(|(flag, v)| [flag.to_string(), v.to_string()])
    .collect()
}

fn layout(shape: CircuitShape) -> Row {
    Row {
        vocab: shape.vocab,
        batch: shape.steps,
        lanes: shape.lanes,
        k: shape.k(),
        lane_rows: shape.lane_rows(),
        advice_columns: shape.advice_columns(),
        ..Row::default()
    }
}

fn measure(shape: CircuitShape, args: &CostArgs) -> Result<Row, CliError> {
    let mut row = layout(shape);
    let prover = Prover::setup(shape, &cache(&args.cache), false)?;
    row.keygen_s = Some(prover.timings.keygen.as_secs_f64());
    let steps = prover::synthetic_steps(shape, 7);
    let statements: Vec<_> = steps.iter().map(|s| s.statement).collect();
    let instance = circuits::DecodeStepCircuit::instance(&statements);
    let start = Instant::now();
    let proof = prover.prove(steps)?.bytes;
    let prove = start.elapsed().as_secs_f64();
    row.prove_s = Some(prove);
    row.prove_per_token_s = Some(prove / shape.steps as f64);
    row.proof_bytes = Some(proof.len());
    row.proof_bytes_per_token = Some(proof.len() as f64 / shape.steps as f64);

    let (single, per_proof) = verify_times(
        &prover.params,
        prover.pk.get_vk(),
        &instance,
        &proof,
        args.verify_batch,
        &shape.describe(),
    )?;
    row.verify_s = Some(single);
    row.batch_verify_per_proof_s = Some(per_proof);
    row.verify_per_token_s = Some(per_proof / shape.steps as f64);
    row.peak_memory_mib = peak_memory_mib();
    // The floor after the peak is read: it needs less memory than the statement.
    let Prover { params, pk, .. } = prover;
    drop(pk);
    row.floor_prove_s = Some(floor_prove_s(shape, &params)?);
    Ok(row)
}

/// Seconds to prove the floor circuit of `shape` (keys built first, not counted).
fn floor_prove_s(shape: CircuitShape, params: &Params<EqAffine>) -> Result<f64, CliError> {
    use halo2_proofs::plonk::{create_proof, keygen_pk, keygen_vk};
    use halo2_proofs::transcript::{Blake2bWrite, Challenge255};
    let circuit = circuits::floor::FloorCircuit::new(shape);
    let failed = |e: halo2_proofs::plonk::Error| CliError::failed(format!("floor circuit: {e:?}"));
    shape.scope(|| {
        let vk = keygen_vk(params, &circuit).map_err(failed)?;
        let pk = keygen_pk(params, vk, &circuit).map_err(failed)?;
        let mut transcript = Blake2bWrite::<_, EqAffine, Challenge255<_>>::init(vec![]);
        let start = Instant::now();
        create_proof(
            params,
            &pk,
            std::slice::from_ref(&circuit),
            &[&[]],
            rand_core::UnwrapErr(rand::rngs::SysRng),
            &mut transcript,
        )
        .map_err(failed)?;
        Ok(start.elapsed().as_secs_f64())
    })
}

/// The process's peak resident memory (VmHWM), where /proc tells it.
pub(super) fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:>8} {:>3} {:>3} {:>3} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7} {:>9} {:>8} {:>10} {:>8} {:>9}",
            "V",
            "T",
            "L",
            "k",
            "rows",
            "advice",
            "keygen",
            "prove",
            "floor",
            "x floor",
            "prove/tok",
            "verify",
            "verify/tok",
            "bytes",
            "peak MiB"
        );
    }
    println!(
        "{:>8} {:>3} {:>3} {:>3} {:>8} {:>6} {:>8} {:>8} {:>7} {:>7} {:>9} {:>8} {:>10} {:>8} {:>9}",
        row.vocab,
        row.batch,
        row.lanes,
        row.k,
        row.lane_rows,
        row.advice_columns,
        fmt(row.keygen_s, 1),
        fmt(row.prove_s, 1),
        fmt(row.floor_prove_s, 1),
        fmt(row.prove_s.zip(row.floor_prove_s).map(|(p, f)| p / f), 2),
        fmt(row.prove_per_token_s, 2),
        fmt(row.verify_s, 3),
        fmt(row.verify_per_token_s, 4),
        row.proof_bytes
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        fmt(row.peak_memory_mib, 0),
    );
}

fn plot(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let measured: Vec<&Row> = rows.iter().filter(|r| r.prove_s.is_some()).collect();
    if measured.is_empty() {
        return Err("nothing measured to plot (drop --layout-only)".into());
    }
    let max_v = measured.iter().map(|r| r.vocab).max().unwrap_or(1) as f64;
    let min_v = measured.iter().map(|r| r.vocab).min().unwrap_or(1) as f64;
    let max_t = measured
        .iter()
        .filter_map(|r| r.prove_per_token_s)
        .fold(0.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("zkinfer decode-step cost per token", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (min_v * 0.8..max_v * 1.25).log_scale(),
            (0.001..max_t * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("vocabulary size V")
        .y_desc("seconds per token")
        .draw()?;
    let mut series: Vec<(usize, usize)> = measured.iter().map(|r| (r.batch, r.lanes)).collect();
    series.sort();
    series.dedup();
    for (i, (batch, lanes)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pick = |f: fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
            let mut pts: Vec<(f64, f64)> = measured
                .iter()
                .filter(|r| r.batch == *batch && r.lanes == *lanes)
                .filter_map(|r| f(r).map(|y| (r.vocab as f64, y)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts
        };
        chart
            .draw_series(LineSeries::new(
                pick(|r| r.prove_per_token_s),
                color.stroke_width(2),
            ))?
            .label(format!("prove, T={batch} L={lanes}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                pick(|r| r.verify_per_token_s),
                color.stroke_width(1),
            ))?
            .label(format!("verify (batched), T={batch} L={lanes}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
