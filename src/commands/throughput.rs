//! `zkinfer bench throughput`: tokens/s and per-token latency of one
//! process on one device, for the packaged model or a 1.1 B-parameter
//! random Llama built in memory (docs/gpu.md).

use std::io::Cursor;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Tensor;
use serde_json::json;

use models::testing::{llama_1b_config, llama_parameters, random_llama_gguf};
use models::Cache;
use models::Model;
use node::greedy_token;

use super::model::open_gguf;
use super::serve::set_threads;
use super::{device, CliError};
use crate::cli::BenchThroughputArgs;
use prover::cost::peak_memory_mib;

/// The prompt: token ids, fixed so that runs compare (BOS then a few ids
/// that exist in every vocabulary measured).
const PROMPT: [u32; 8] = [2, 651, 4320, 8426, 25_301, 1_729, 603, 476];

pub fn run(args: BenchThroughputArgs) -> Result<ExitCode, CliError> {
    set_threads(args.compute.threads);
    let device = device::open(args.compute.device)?;
    let tokens = args.tokens.max(2);
    let started = Instant::now();
    let (name, parameters, model) = if args.random {
        eprintln!("[building a random Llama of 1.1 B parameters in memory (bf16 matrices)]");
        let config = llama_1b_config();
        let bytes = random_llama_gguf(&config, 7, GgmlDType::BF16).map_err(model_error)?;
        let mut reader = Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| model_error(e.into()))?;
        let model = Model::from_gguf(&content, &mut reader, &device, 0..config.layers)
            .map_err(model_error)?;
        (
            "random Llama 1.1B (bf16)".to_string(),
            llama_parameters(&config),
            model,
        )
    } else {
        let path = args.model.path();
        let (content, mut reader) = open_gguf(&path)?;
        let parameters = content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count())
            .sum();
        let shape = Model::shape_of(&content).map_err(model_error)?;
        let model = Model::from_gguf(&content, &mut reader, &device, 0..shape.layers)
            .map_err(model_error)?;
        (path.display().to_string(), parameters, model)
    };
    let load = started.elapsed();
    let vocab = model.vocab() as u32;
    let prompt: Vec<u32> = PROMPT.iter().map(|t| t % vocab).collect();
    let (prefill, latencies) = decode(&model, &prompt, tokens).map_err(model_error)?;
    let mut sorted = latencies.clone();
    sorted.sort();
    let total: Duration = latencies.iter().sum();
    let tokens_per_s = latencies.len() as f64 / total.as_secs_f64();
    let percentile = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let threads = args
        .compute
        .threads
        .map_or_else(|| "all cores".to_string(), |t| t.to_string());
    if args.json {
        println!(
            "{}",
            json!({
                "model": name,
                "parameters": parameters,
                "device": args.compute.device.to_string(),
                "threads": threads,
                "load_s": load.as_secs_f64(),
                "prompt_tokens": prompt.len(),
                "prefill_s": prefill.as_secs_f64(),
                "tokens": latencies.len(),
                "tokens_per_s": tokens_per_s,
                "latency_median_ms": percentile(0.5).as_secs_f64() * 1e3,
                "latency_p90_ms": percentile(0.9).as_secs_f64() * 1e3,
                "peak_rss_mib": peak_memory_mib(),
            })
        );
    } else {
        println!(
            "model          {name} ({:.2} B parameters)",
            parameters as f64 / 1e9
        );
        println!(
            "device         {} (threads: {threads})",
            args.compute.device
        );
        println!("load           {:.1} s", load.as_secs_f64());
        println!(
            "prefill        {} tokens in {:.3} s",
            prompt.len(),
            prefill.as_secs_f64()
        );
        println!(
            "decode         {} tokens, {tokens_per_s:.1} tokens/s, latency median {:.1} ms, p90 {:.1} ms",
            latencies.len(),
            percentile(0.5).as_secs_f64() * 1e3,
            percentile(0.9).as_secs_f64() * 1e3
        );
        if let Some(rss) = peak_memory_mib() {
            println!("peak RSS       {rss:.0} MiB (process memory; GPU memory: nvidia-smi)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The prompt in one forward, then `tokens - 1` greedy tokens one at a
/// time; returns the prefill time and each decode step's latency (forward
/// and argmax, with the logits copied back to the host as a node does).
fn decode(
    model: &Model,
    prompt: &[u32],
    tokens: usize,
) -> models::Result<(Duration, Vec<Duration>)> {
    let mut cache = Cache::new();
    let last_token = |logits: &Tensor| -> models::Result<u32> {
        let seq = logits.dim(1)?;
        greedy_token(
            &logits
                .narrow(1, seq - 1, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        )
    };
    let start = Instant::now();
    let logits = model.forward(&model.embed(prompt)?, 0, &mut cache)?;
    let mut token = last_token(&logits)?;
    let prefill = start.elapsed();
    let mut latencies = Vec::with_capacity(tokens - 1);
    for position in prompt.len()..prompt.len() + tokens - 1 {
        let start = Instant::now();
        let logits = model.forward(&model.embed(&[token])?, position, &mut cache)?;
        token = last_token(&logits)?;
        latencies.push(start.elapsed());
    }
    Ok((prefill, latencies))
}

fn model_error(e: models::ModelError) -> CliError {
    CliError::failed(format!("the model: {e}"))
}
