//! `zkinfer cost`: what the decode-step circuit costs, per (vocabulary, batch, lanes).
//!
//! Each configuration is measured in a child process (`cost --in-process`), so that
//! its peak memory is its own.

use std::path::Path;
use std::process::{Command, ExitCode};

use circuits::{CircuitShape, FixedPoint};
use prover::cost::CostRow;

use super::{cache, CliError};
use crate::cli::CostArgs;

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
fn sweep(configs: &[CircuitShape], args: &CostArgs) -> Result<Vec<CostRow>, CliError> {
    let mut rows = Vec::new();
    for &config in configs {
        let row = if args.layout_only {
            CostRow::layout(config)
        } else if args.in_process {
            CostRow::measure(config, &cache(&args.cache), args.verify_tokens)?
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

fn measure_in_child(config: CircuitShape, args: &CostArgs) -> Result<CostRow, CliError> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["cost", "--in-process"])
        .args(child_args(config))
        .args(["--verify-tokens", &args.verify_tokens.to_string()]);
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
    let rows: Vec<CostRow> = serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::failed(format!("child output: {e}")))?;
    rows.into_iter()
        .next()
        .ok_or_else(|| CliError::failed("child measured nothing"))
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

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_row(row: &CostRow, header: bool) {
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
        fmt(row.times_floor(), 2),
        fmt(row.prove_per_token_s, 2),
        fmt(row.verify_s, 3),
        fmt(row.verify_per_token_s, 4),
        row.proof_bytes
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        fmt(row.peak_memory_mib, 0),
    );
}

fn plot(rows: &[CostRow], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let measured: Vec<&CostRow> = rows.iter().filter(|r| r.prove_s.is_some()).collect();
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
        let pick = |f: fn(&CostRow) -> Option<f64>| -> Vec<(f64, f64)> {
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
            .label(format!("verify beyond one proof, T={batch} L={lanes}"))
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
