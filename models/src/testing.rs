//! Tiny random-weight models written as GGUF files, for tests that must not
//! need the real model.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::gemma3::Config;
use crate::Cache;
use crate::Model;
use crate::{ModelError, Result};

/// A seeded xorshift stream of uniform values.
struct Seeded(u64);

impl Seeded {
    /// A CPU tensor of `shape` with values uniform in `[-scale, scale)`.
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
    }
}

fn write_gguf(
    path: &Path,
    metadata: &[(&str, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(candle_core::Error::from)?);
    write_gguf_to(&mut file, metadata, tensors)
}

fn write_gguf_to<W: std::io::Write + std::io::Seek>(
    out: &mut W,
    metadata: &[(&str, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(out, &metadata, &tensors)?;
    Ok(())
}

/// Values of a fixed pseudo-random walk (xorshift), every 97th one large:
/// inputs for kernel tests.
pub fn pseudo_random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 97 == 0 {
                unit * 400.0
            } else {
                unit * 3.0
            }
        })
        .collect()
}

/// Copies the GGUF at `src` to `dst` with every quantized matrix whose rows
/// fit `dtype`'s blocks requantized to `dtype` (through f32), the rest as it
/// is: the same weights in a cheaper format, as a node that saves compute
/// would serve them. Returns how many tensors changed format.
pub fn requantize_gguf(src: &Path, dst: &Path, dtype: GgmlDType) -> Result<usize> {
    let mut reader =
        std::io::BufReader::new(std::fs::File::open(src).map_err(candle_core::Error::from)?);
    let content = gguf_file::Content::read(&mut reader)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    let mut changed = 0;
    for name in names {
        let tensor = content.tensor(&mut reader, name, &Device::Cpu)?;
        let quantized = !matches!(
            tensor.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        let fits = tensor
            .shape()
            .dims()
            .last()
            .is_some_and(|&cols| cols % dtype.block_size() == 0);
        let tensor = if quantized && fits && tensor.dtype() != dtype {
            changed += 1;
            QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, dtype)?
        } else {
            tensor
        };
        tensors.push((name.clone(), tensor));
    }
    let metadata: Vec<(&str, gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    write_gguf(dst, &metadata, &tensors)?;
    Ok(changed)
}

/// A small Gemma 3 shape with one global layer (index 5) and a short window.
pub fn tiny_gemma3_config() -> Config {
    Config {
        layers: 7,
        hidden: 64,
        feed_forward: 128,
        heads: 4,
        kv_heads: 1,
        head_dim: 32,
        rope_base_global: 1_000_000.0,
        rope_base_local: 10_000.0,
        sliding_window: 4,
        global_every: 6,
        rms_eps: 1e-6,
        vocab: 320,
        context: 2048,
    }
}

/// Writes a Gemma 3 GGUF with random weights (seeded) for `config`. Matrices
/// are stored as Q8_0 and norms as F32, like the real file's mix of types.
pub fn write_random_gemma3(path: &Path, config: &Config, seed: u64) -> Result<()> {
    write_random_gemma3_with(path, config, seed, GgmlDType::Q8_0, Vec::new())
}

/// [`write_random_gemma3`] with the matrices stored as `matrices` (the same
/// values before quantizing for the same seed): a cheaper requantization of
/// the same weights. Matrix widths must be multiples of its block size.
pub fn write_random_gemma3_as(
    path: &Path,
    config: &Config,
    seed: u64,
    matrices: GgmlDType,
) -> Result<()> {
    write_random_gemma3_with(path, config, seed, matrices, Vec::new())
}

/// [`write_random_gemma3`] plus the SentencePiece-style vocabulary of
/// [`tiny_tokenizer_metadata`], so that `zkinfer generate` can run the file
/// end to end (prompt text in, text out). `config.vocab` must be at least 320.
pub fn write_random_gemma3_with_tokenizer(path: &Path, config: &Config, seed: u64) -> Result<()> {
    let tokenizer = tiny_tokenizer_metadata(config.vocab)?;
    write_random_gemma3_with(path, config, seed, GgmlDType::Q8_0, tokenizer)
}

/// Tokenizer metadata (`tokenizer.ggml.*`) for a vocabulary of `vocab` ids:
/// control tokens `<pad>` 0, `<eos>` 1, `<bos>` 2, unknown `<unk>` 3, the 256
/// byte-fallback tokens `<0x00>`..`<0xFF>` at 4..260, then `▁`, the letters,
/// `▁` + each letter and a few words, padded with unused tokens. Any text
/// encodes (through byte fallback where needed).
pub fn tiny_tokenizer_metadata(vocab: usize) -> Result<Vec<(&'static str, gguf_file::Value)>> {
    use gguf_file::Value;
    let mut tokens: Vec<(String, i32)> = vec![
        ("<pad>".into(), 3),
        ("<eos>".into(), 3),
        ("<bos>".into(), 3),
        ("<unk>".into(), 2),
    ];
    tokens.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 6)));
    tokens.push(("\u{2581}".into(), 1));
    tokens.extend(('a'..='z').map(|c| (c.to_string(), 1)));
    tokens.extend(('a'..='z').map(|c| (format!("\u{2581}{c}"), 1)));
    for word in [
        "th",
        "he",
        "in",
        "er",
        "\u{2581}the",
        "\u{2581}fox",
        "\u{2581}dog",
    ] {
        tokens.push((word.into(), 1));
    }
    if tokens.len() > vocab {
        return Err(ModelError::Shape(format!(
            "the tiny tokenizer needs a vocabulary of at least {}, not {vocab}",
            tokens.len()
        )));
    }
    while tokens.len() < vocab {
        tokens.push((format!("<unused{}>", tokens.len()), 5));
    }
    // Later (longer) pieces merge first.
    let scores = (0..vocab).map(|i| Value::F32(i as f32 / vocab as f32));
    Ok(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                tokens
                    .iter()
                    .map(|(t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.scores", Value::Array(scores.collect())),
        (
            "tokenizer.ggml.token_type",
            Value::Array(tokens.iter().map(|&(_, k)| Value::I32(k)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(3)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
    ])
}

fn write_random_gemma3_with(
    path: &Path,
    config: &Config,
    seed: u64,
    matrices: GgmlDType,
    extra_metadata: Vec<(&'static str, gguf_file::Value)>,
) -> Result<()> {
    let mut rng = Seeded(seed | 1);
    let mut random = |shape: &[usize], scale: f32| rng.tensor(shape, scale);
    let c = config;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut matrix = |name: String,
                      out: usize,
                      inp: usize,
                      tensors: &mut Vec<(String, QTensor)>|
     -> Result<()> {
        let t = random(&[out, inp], 1.0 / (inp as f32).sqrt())?;
        tensors.push((name, QTensor::quantize(&t, matrices)?));
        Ok(())
    };
    matrix("token_embd.weight".into(), c.vocab, c.hidden, &mut tensors)?;
    for i in 0..c.layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        matrix(n("attn_q"), c.heads * c.head_dim, c.hidden, &mut tensors)?;
        matrix(n("attn_k"), c.kv_heads * c.head_dim, c.hidden, &mut tensors)?;
        matrix(n("attn_v"), c.kv_heads * c.head_dim, c.hidden, &mut tensors)?;
        matrix(
            n("attn_output"),
            c.hidden,
            c.heads * c.head_dim,
            &mut tensors,
        )?;
        matrix(n("ffn_gate"), c.feed_forward, c.hidden, &mut tensors)?;
        matrix(n("ffn_up"), c.feed_forward, c.hidden, &mut tensors)?;
        matrix(n("ffn_down"), c.hidden, c.feed_forward, &mut tensors)?;
    }
    let mut norm = |name: String, dim: usize, tensors: &mut Vec<(String, QTensor)>| -> Result<()> {
        let t = (random(&[dim], 0.2)? + 1.0)?;
        tensors.push((name, QTensor::quantize(&t, GgmlDType::F32)?));
        Ok(())
    };
    for i in 0..c.layers {
        for s in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            norm(format!("blk.{i}.{s}.weight"), c.hidden, &mut tensors)?;
        }
        for s in ["attn_q_norm", "attn_k_norm"] {
            norm(format!("blk.{i}.{s}.weight"), c.head_dim, &mut tensors)?;
        }
    }
    norm("output_norm.weight".into(), c.hidden, &mut tensors)?;

    use gguf_file::Value;
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("gemma3".into())),
        ("gemma3.block_count", Value::U32(c.layers as u32)),
        ("gemma3.context_length", Value::U32(c.context as u32)),
        ("gemma3.embedding_length", Value::U32(c.hidden as u32)),
        (
            "gemma3.feed_forward_length",
            Value::U32(c.feed_forward as u32),
        ),
        ("gemma3.attention.head_count", Value::U32(c.heads as u32)),
        (
            "gemma3.attention.head_count_kv",
            Value::U32(c.kv_heads as u32),
        ),
        ("gemma3.attention.key_length", Value::U32(c.head_dim as u32)),
        (
            "gemma3.attention.value_length",
            Value::U32(c.head_dim as u32),
        ),
        ("gemma3.rope.freq_base", Value::F32(c.rope_base_global)),
        (
            "gemma3.attention.sliding_window",
            Value::U32(c.sliding_window as u32),
        ),
        (
            "gemma3.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_eps as f32),
        ),
    ];
    let metadata: Vec<(&str, Value)> = metadata.into_iter().chain(extra_metadata).collect();
    write_gguf(path, &metadata, &tensors)
}

/// A small Llama shape with grouped-query attention (4 heads over 2 kv heads)
/// and its own output head (`tied_head: false`).
pub fn tiny_llama_config() -> crate::llama::Config {
    crate::llama::Config {
        layers: 5,
        hidden: 64,
        feed_forward: 96,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        rope_dim: 16,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        vocab: 300,
        tied_head: false,
        context: 2048,
    }
}

/// Writes a Llama GGUF with random weights (seeded) for `config`, matrices as
/// Q8_0 and norms as F32. With `config.tied_head` the file has no
/// `output.weight` and the head is `token_embd.weight`.
pub fn write_random_llama(path: &Path, config: &crate::llama::Config, seed: u64) -> Result<()> {
    write_random_llama_as(path, config, seed, GgmlDType::Q8_0)
}

/// [`write_random_llama`] with the matrices stored as `dtype` (e.g. F32, for
/// tests that check the math against a reference computed from the same weights).
pub fn write_random_llama_as(
    path: &Path,
    config: &crate::llama::Config,
    seed: u64,
    dtype: GgmlDType,
) -> Result<()> {
    let (metadata, tensors) = random_llama(config, seed, dtype)?;
    write_gguf(path, &metadata, &tensors)
}

/// [`write_random_llama_as`] into memory: the GGUF file's bytes, for
/// shapes too large to want on disk (`zkinfer bench throughput --random`).
pub fn random_llama_gguf(
    config: &crate::llama::Config,
    seed: u64,
    dtype: GgmlDType,
) -> Result<Vec<u8>> {
    let (metadata, tensors) = random_llama(config, seed, dtype)?;
    let mut out = std::io::Cursor::new(Vec::new());
    write_gguf_to(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
}

type GgufParts = (
    Vec<(&'static str, gguf_file::Value)>,
    Vec<(String, QTensor)>,
);

fn random_llama(config: &crate::llama::Config, seed: u64, dtype: GgmlDType) -> Result<GgufParts> {
    let mut rng = Seeded(seed | 1);
    let mut random = |shape: &[usize], scale: f32| rng.tensor(shape, scale);
    let c = config;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut matrix = |name: String, out: usize, inp: usize| -> Result<(String, QTensor)> {
        let t = random(&[out, inp], 1.0 / (inp as f32).sqrt())?;
        Ok((name, QTensor::quantize(&t, dtype)?))
    };
    let q_dim = c.heads * c.head_dim;
    let kv_dim = c.kv_heads * c.head_dim;
    tensors.push(matrix("token_embd.weight".into(), c.vocab, c.hidden)?);
    for i in 0..c.layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        tensors.push(matrix(n("attn_q"), q_dim, c.hidden)?);
        tensors.push(matrix(n("attn_k"), kv_dim, c.hidden)?);
        tensors.push(matrix(n("attn_v"), kv_dim, c.hidden)?);
        tensors.push(matrix(n("attn_output"), c.hidden, q_dim)?);
        tensors.push(matrix(n("ffn_gate"), c.feed_forward, c.hidden)?);
        tensors.push(matrix(n("ffn_up"), c.feed_forward, c.hidden)?);
        tensors.push(matrix(n("ffn_down"), c.hidden, c.feed_forward)?);
    }
    if !c.tied_head {
        tensors.push(matrix("output.weight".into(), c.vocab, c.hidden)?);
    }
    let mut norm = |name: String| -> Result<(String, QTensor)> {
        let t = (random(&[c.hidden], 0.2)? + 1.0)?;
        Ok((name, QTensor::quantize(&t, GgmlDType::F32)?))
    };
    for i in 0..c.layers {
        tensors.push(norm(format!("blk.{i}.attn_norm.weight"))?);
        tensors.push(norm(format!("blk.{i}.ffn_norm.weight"))?);
    }
    tensors.push(norm("output_norm.weight".into())?);

    use gguf_file::Value;
    let u = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&'static str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", u(c.layers)),
        ("llama.context_length", u(c.context)),
        ("llama.embedding_length", u(c.hidden)),
        ("llama.feed_forward_length", u(c.feed_forward)),
        ("llama.attention.head_count", u(c.heads)),
        ("llama.attention.head_count_kv", u(c.kv_heads)),
        ("llama.rope.dimension_count", u(c.rope_dim)),
        ("llama.rope.freq_base", Value::F32(c.rope_base)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_eps as f32),
        ),
    ];
    Ok((metadata, tensors))
}

/// A Llama shape of 1.1 B parameters (Llama 3.2 1B's widths with a 32,000
/// vocabulary): the larger shape `zkinfer bench throughput --random` measures.
pub fn llama_1b_config() -> crate::llama::Config {
    crate::llama::Config {
        layers: 16,
        hidden: 2048,
        feed_forward: 8192,
        heads: 32,
        kv_heads: 8,
        head_dim: 64,
        rope_dim: 64,
        rope_base: 500_000.0,
        rms_eps: 1e-5,
        vocab: 32_000,
        tied_head: false,
        context: 2048,
    }
}

/// Parameters of a Llama shape (matrices and norms).
pub fn llama_parameters(c: &crate::llama::Config) -> usize {
    let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let layer =
        c.hidden * (q + 2 * kv) + q * c.hidden + 3 * c.hidden * c.feed_forward + 2 * c.hidden;
    let heads = if c.tied_head { 1 } else { 2 };
    c.layers * layer + heads * c.vocab * c.hidden + c.hidden
}

/// Feeds `prompt`, then `steps - 1` greedy tokens one at a time, through a chain
/// of shards; returns the prompt followed by the `steps` greedy tokens, and the
/// last-position logits of every step.
pub fn greedy_chain(
    shards: &[Model],
    prompt: &[u32],
    steps: usize,
) -> Result<(Vec<u32>, Vec<Tensor>)> {
    let first = shards
        .first()
        .ok_or_else(|| ModelError::Shape("no shards".into()))?;
    let mut caches: Vec<Cache> = shards.iter().map(|_| Cache::new()).collect();
    let mut tokens = prompt.to_vec();
    let mut all_logits = Vec::new();
    let mut position = 0;
    let mut input: Vec<u32> = prompt.to_vec();
    for _ in 0..steps {
        let mut x = first.embed(&input)?;
        for (shard, cache) in shards.iter().zip(caches.iter_mut()) {
            x = shard.forward(&x, position, cache)?;
        }
        position += input.len();
        let last = x.narrow(1, x.dim(1)? - 1, 1)?.flatten_all()?;
        let next = last.argmax(candle_core::D::Minus1)?.to_scalar::<u32>()?;
        all_logits.push(last);
        tokens.push(next);
        input = vec![next];
    }
    Ok((tokens, all_logits))
}

/// A scratch directory under the system's temporary directory, named for this
/// process, removed with all it holds on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `zkinfer-NAME-PID` afresh (an older one of that name is removed).
    pub fn new(name: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("zkinfer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
