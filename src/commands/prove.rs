//! `zkinfer prove`: decode records to a proof bundle.

use std::process::ExitCode;
use std::time::Instant;

use prover::{prepare, Prover, Records};

use super::output::PendingFile;
use super::{cache, input, CliError};
use crate::cli::ProveArgs;

pub fn run(args: ProveArgs) -> Result<ExitCode, CliError> {
    // Where the bundle goes is checked before minutes of proving.
    let out = PendingFile::create(&args.out)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", args.out.display())))?;
    let records: Records = input::read_json(&args.records, "decode records file")?;
    if records.steps.is_empty() {
        return Err(CliError::failed(format!(
            "{} holds no steps",
            args.records.display()
        )));
    }
    let temperature = records.temperature()?;
    let shape = args
        .circuit
        .shape(records.vocab)?
        .with_temperature(temperature);
    let progress = !args.quiet;
    let checking = prover::Progress::spinner(
        progress,
        format!(
            "checking {} records (V = {}) against their tokens",
            records.steps.len(),
            records.vocab
        ),
    );
    let steps = prepare(&records, shape.fixed_point)?;
    checking.finish();
    let prover = Prover::setup(shape, &cache(&args.cache), progress)?;
    let start = Instant::now();
    let bundle = prover.prove_all(
        &steps,
        args.jobs,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        progress,
    )?;
    let elapsed = start.elapsed();
    let bytes = bundle.to_bytes();
    out.commit(&bytes)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", args.out.display())))?;
    eprintln!(
        "proved {} steps in {} proofs ({}) in {:.1} s (keys {:.1} s): {} bytes written to {}",
        steps.len(),
        bundle.proofs.len(),
        shape.describe(),
        elapsed.as_secs_f64(),
        prover.timings.keygen.as_secs_f64(),
        bytes.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
