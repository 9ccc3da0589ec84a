//! The commands: read inputs, call the library crates, print results.

use std::fmt;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;

use circuits::Sampler;
use prover::{prepare, Prover, Records};
use verifier::{Bundle, ParamsCache};

use crate::cli::{CacheArgs, Cli, Command, InspectArgs, ProveArgs, VerifyArgs};

mod answer;
mod audit;
mod bench;
mod conformance;
mod cost;
mod device;
mod generate;
mod input;
mod keys;
mod ledger;
mod model;
mod serve;
mod throughput;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// Bad input or a refused request: exit 1.
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
    /// Unreadable input: exit 2.
    pub fn unreadable(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

/// Errors of the library crates: the request failed (exit 1), with the
/// library's own message.
macro_rules! failed_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for CliError {
            fn from(e: $error) -> CliError {
                CliError::failed(e.to_string())
            }
        }
    )*};
}

failed_from!(
    std::io::Error,
    serde_json::Error,
    circuits::ShapeError,
    prover::ProveError,
    prover::RecordError,
    transcript::TranscriptError,
    models::ModelError,
    models::tokenizer::TokenizerError,
    client::ClientError,
    client::generation::GenerationError,
    ::audit::AuditError,
);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Prove(args) => prove(args),
        Command::Verify(args) => verify(args),
        Command::Inspect(args) => inspect(args),
        Command::Cost(args) => cost::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Model(command) => model::run(command),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Audit(args) => audit::run(args),
        Command::Ledger(args) => ledger::run(args),
    }
}

/// Reads a fraud proof written by `zkinfer audit`.
pub fn read_fraud_proof(path: &Path) -> Result<::audit::fraud::FraudProof, CliError> {
    input::read_json(path, "fraud proof")
}

/// `zkinfer verify --fraud-proof`: exit 0 if it shows fraud, 1 if not.
fn verify_fraud_proof(
    path: &Path,
    model: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let proof = read_fraud_proof(path)?;
    let model = model
        .map(Path::to_path_buf)
        .unwrap_or_else(model::packaged_model_path);
    let mut replayer = audit::open_replayer(&model)?;
    let verdict = proof
        .check(&mut replayer)
        .map_err(|e| CliError::failed(format!("re-executing the step: {e}")))?;
    if as_json {
        println!(
            "{}",
            json!({
                "valid": verdict.valid,
                "reason": verdict.reason,
                "comparison": verdict.comparison,
                "node": proof.signer,
                "step": proof.step,
                "position": proof.position,
            })
        );
    } else {
        println!(
            "{}: {}",
            if verdict.valid {
                "fraud shown"
            } else {
                "no fraud shown"
            },
            verdict.reason
        );
        if verdict.valid {
            println!("node: {}", proof.signer);
        }
    }
    Ok(if verdict.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn cache(args: &CacheArgs) -> ParamsCache {
    ParamsCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ParamsCache::default_dir),
    )
}

fn prove(args: ProveArgs) -> Result<ExitCode, CliError> {
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

/// Writes through a temporary file so a failed run never leaves a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    PendingFile::create(path)?.commit(bytes)
}

/// An output written through a temporary file beside it. [`PendingFile::create`]
/// checks before the work that the file can be written there (it creates the
/// temporary and removes it at once, so a run killed during the work leaves
/// nothing); [`PendingFile::commit`] writes the temporary and renames it into
/// place, removing it if that fails.
struct PendingFile {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl PendingFile {
    fn create(path: &Path) -> std::io::Result<PendingFile> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        fs::File::create(&tmp)?;
        fs::remove_file(&tmp)?;
        Ok(PendingFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    fn commit(self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let result = (|| {
            let mut file = fs::File::create(&self.tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&self.tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }
}

fn sampler_json(sampler: Sampler) -> serde_json::Value {
    match sampler {
        Sampler::Greedy => json!({"greedy": {}}),
        Sampler::Sample { temperature, r } => json!({"sample": {
            "temperature": temperature.value(),
            "r": r.to_string(),
        }}),
    }
}

fn verify(args: VerifyArgs) -> Result<ExitCode, CliError> {
    if let Some(path) = &args.fraud_proof {
        return verify_fraud_proof(path, args.model.as_deref(), args.json);
    }
    let path = args
        .bundle
        .as_ref()
        .or(args.bundle_flag.as_ref())
        .ok_or_else(|| CliError::unreadable("name the proof bundle to verify"))?;
    // Cheap checks first: a transcript that does not parse fails before any
    // proof is checked.
    let transcript = args
        .transcript
        .as_ref()
        .map(|t| answer::read_transcript(t).map(|parsed| (t, parsed)))
        .transpose()?;
    let bundle = input::read_bundle(path)?;
    let start = Instant::now();
    let (params, report) = verify_proofs(&bundle, &args.cache)?;
    let elapsed = start.elapsed();
    if let Some((path, transcript)) = &transcript {
        return answer::run(&args, path, transcript, &bundle, &report, &params, elapsed);
    }
    let frac_bits = bundle.shape.fixed_point.frac_bits;
    let valid = report.all_valid();
    let steps: Vec<_> = bundle
        .steps()
        .map(|(proof, step)| {
            (
                step,
                if report.proofs[proof] {
                    "valid"
                } else {
                    "invalid"
                },
            )
        })
        .collect();
    if args.json {
        let steps: Vec<_> = steps
            .iter()
            .map(|(s, verdict)| {
                json!({
                    "position": s.position,
                    "token": s.token,
                    "logprob": s.logprob_nats(frac_bits),
                    "sampler": sampler_json(s.sampler),
                    "verdict": verdict,
                })
            })
            .collect();
        println!("{}", json!({"valid": valid, "steps": steps}));
    } else {
        println!(
            "{:>10} {:>8} {:>12}  verdict",
            "position", "token", "logprob"
        );
        for (s, verdict) in &steps {
            println!(
                "{:>10} {:>8} {:>12.6}  {verdict}",
                s.position,
                s.token,
                s.logprob_nats(frac_bits)
            );
        }
        let invalid = report.proofs.iter().filter(|v| !**v).count();
        println!(
            "{}: {} steps in {} proofs, {} invalid ({:.2} s)",
            if valid { "VALID" } else { "INVALID" },
            steps.len(),
            report.proofs.len(),
            invalid,
            elapsed.as_secs_f64()
        );
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Verifies every proof of `bundle`; a key that does not match the bundle's
/// circuit is a failed verification, anything unreadable an unreadable input.
/// Returns the parameters too: checking an answer opens the proofs with them.
fn verify_proofs(
    bundle: &Bundle,
    cache_args: &CacheArgs,
) -> Result<
    (
        halo2_proofs::poly::commitment::Params<halo2_proofs::pasta::EqAffine>,
        verifier::Report,
    ),
    CliError,
> {
    verifier::verify_bundle_keeping_params(bundle, &cache(cache_args)).map_err(|e| match e {
        verifier::VerifyError::KeyMismatch { .. } => CliError::failed(e.to_string()),
        other => CliError::unreadable(other.to_string()),
    })
}

/// A proof's commitments to its logit columns (one per lane), as hex; empty
/// when the proof bytes do not start with curve points.
fn logit_commitments_hex(shape: circuits::CircuitShape, proof: &verifier::Proof) -> Vec<String> {
    use halo2_proofs::pasta::group::GroupEncoding as _;
    circuits::opening::proof_logit_commitments(shape, &proof.bytes)
        .unwrap_or_default()
        .iter()
        .map(|c| verifier::hex(c.to_bytes().as_ref()))
        .collect()
}

fn inspect(args: InspectArgs) -> Result<ExitCode, CliError> {
    let bundle = input::read_bundle(&args.bundle)?;
    let shape = bundle.shape;
    let frac_bits = shape.fixed_point.frac_bits;
    let steps: Vec<_> = bundle
        .proofs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.steps
                .iter()
                .enumerate()
                .map(move |(j, s)| (i, s, p.is_padding(j)))
        })
        .collect();
    if args.json {
        let steps: Vec<_> = steps
            .iter()
            .map(|(proof, s, padding)| {
                json!({
                    "proof": proof,
                    "position": s.position,
                    "padding": padding,
                    "token": s.token,
                    "logprob": s.logprob_nats(frac_bits),
                    "logprob_fixed": s.logprob,
                    "sampler": sampler_json(s.sampler),
                })
            })
            .collect();
        let out = json!({
            "format_version": verifier::bundle::FORMAT_VERSION,
            "circuit": {
                "vocab": shape.vocab,
                "frac_bits": shape.fixed_point.frac_bits,
                "exp_bits": shape.fixed_point.exp_bits,
                "steps_per_proof": shape.steps,
                "lanes": shape.lanes,
                "k": shape.k(),
                "description": shape.describe(),
            },
            "vk_digest": verifier::hex(&bundle.vk_digest),
            "proofs": bundle.proofs.iter().map(|p| p.bytes.len()).collect::<Vec<_>>(),
            "logit_commitments": bundle.proofs.iter().map(|p| logit_commitments_hex(shape, p)).collect::<Vec<_>>(),
            "steps": steps,
        });
        println!("{out}");
    } else {
        println!("circuit:   {} (k = {})", shape.describe(), shape.k());
        println!("vk digest: {}", verifier::hex(&bundle.vk_digest));
        println!("proofs:    {}", bundle.proofs.len());
        for (proof, s, padding) in steps {
            println!(
                "  proof {proof}: position {} token {} logprob {:.6} {}{}",
                s.position,
                s.token,
                s.logprob_nats(frac_bits),
                s.sampler,
                if padding { " (padding)" } else { "" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
