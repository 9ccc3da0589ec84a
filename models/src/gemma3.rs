//! Gemma 3 from a GGUF file, served by layer range.
//!
//! Mirrors the structure of candle-transformers' `quantized_gemma3.rs`, with the
//! numbers fixed for the packaged model (see `docs/model.md`): GeGLU with the
//! tanh GELU, per-head RMSNorm on q and k, NeoX (half-split) RoPE with base 10,000
//! on sliding layers and the file's base on global ones, a key visible iff
//! `0 <= pos_q - pos_k < window` on sliding layers, and the tied output head.
//!
//! A [`Gemma3`] is a [`Shard`] of this architecture: it embeds tokens scaled by
//! sqrt(d), and its head is the tied embedding.

use std::io::{Read, Seek};
use std::ops::Range;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

use crate::layers::{
    cached_attention, layer_tensor, meta, meta_f32, meta_u32, rope_tables, Linear, Projections,
    RmsNorm, Weights,
};
use crate::ops;
use crate::shard::{check_range, Architecture, Shard};
use crate::{ModelError, ModelShape, Result, DEFAULT_CONTEXT};

/// Architecture parameters, read from the GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub layers: usize,
    pub hidden: usize,
    pub feed_forward: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_base_global: f32,
    pub rope_base_local: f32,
    pub sliding_window: usize,
    /// Every `global_every`-th layer (index `global_every - 1`, ...) attends globally.
    pub global_every: usize,
    pub rms_eps: f64,
    pub vocab: usize,
    /// Positions the model was trained for (`gemma3.context_length`).
    pub context: usize,
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Config> {
        let arch = meta(content, "general.architecture")?
            .to_string()
            .map_err(|e| ModelError::Metadata(e.to_string()))?;
        if arch != "gemma3" {
            return Err(ModelError::Metadata(format!(
                "architecture {arch:?} is not gemma3"
            )));
        }
        let p = |k: &str| format!("gemma3.{k}");
        let hidden = meta_u32(content, &p("embedding_length"))?;
        let heads = meta_u32(content, &p("attention.head_count"))?;
        let vocab = content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| ModelError::Metadata("missing token_embd.weight".into()))?;
        Ok(Config {
            layers: meta_u32(content, &p("block_count"))?,
            hidden,
            feed_forward: meta_u32(content, &p("feed_forward_length"))?,
            heads,
            kv_heads: meta_u32(content, &p("attention.head_count_kv"))?,
            head_dim: meta_u32(content, &p("attention.key_length")).unwrap_or(hidden / heads),
            rope_base_global: meta_f32(content, &p("rope.freq_base")).unwrap_or(1_000_000.0),
            rope_base_local: 10_000.0,
            sliding_window: meta_u32(content, &p("attention.sliding_window")).unwrap_or(512),
            global_every: 6,
            rms_eps: meta_f32(content, &p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6)
                as f64,
            vocab,
            context: meta_u32(content, &p("context_length")).unwrap_or(DEFAULT_CONTEXT),
        })
    }

    pub fn is_global(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(self.global_every)
    }
}

/// One layer's weights.
#[derive(Debug)]
pub struct Layer {
    index: usize,
    attn_norm: RmsNorm,
    /// q, k and v.
    qkv: Projections,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    o: Linear,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    /// gate and up.
    gate_up: Projections,
    down: Linear,
    post_ffn_norm: RmsNorm,
}

/// Layers `[start, end)` of a Gemma 3 model.
pub type Gemma3 = Shard<Config>;

impl Architecture for Config {
    type Layer = Layer;

    fn shape(&self) -> ModelShape {
        ModelShape {
            layers: self.layers,
            hidden: self.hidden,
            vocab: self.vocab,
            context: self.context,
            kv_width: self.kv_heads * self.head_dim,
        }
    }

    fn embedding_scale(&self) -> Option<f64> {
        Some((self.hidden as f64).sqrt())
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        position: usize,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let c = self;
        let (b, seq, _) = x.dims3()?;
        let h = l.attn_norm.forward(x)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, seq, n, c.head_dim))?.transpose(1, 2)?)
        };
        let [q, k, v] = l.qkv.forward(&h)?;
        let q = l.q_norm.forward(&heads(q, c.heads)?)?;
        let k = l.k_norm.forward(&heads(k, c.kv_heads)?)?;
        let v = heads(v, c.kv_heads)?;
        let global = c.is_global(l.index);
        let base = if global {
            c.rope_base_global
        } else {
            c.rope_base_local
        };
        let (cos, sin) = rope_tables(c.head_dim, base, position, seq, x.device())?;
        let q = ops::rope_half_split(&q, &cos, &sin)?;
        let k = ops::rope_half_split(&k, &cos, &sin)?;
        let window = (!global).then_some(c.sliding_window);
        let attn = cached_attention(&q, k, v, cache, position, window)?;
        let attn = l.post_attn_norm.forward(&l.o.forward(&attn)?)?;
        let x = (x + attn)?;
        let h = l.ffn_norm.forward(&x)?;
        let [gate, up] = l.gate_up.forward(&h)?;
        let ff = l.down.forward(&(gate.gelu()? * up)?)?;
        Ok((x + l.post_ffn_norm.forward(&ff)?)?)
    }
}

impl Gemma3 {
    /// Loads layers `layers` (and the embedding / head when the range touches the
    /// first / last layer) from a GGUF file.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        layers: Range<usize>,
    ) -> Result<Gemma3> {
        let config = Config::from_gguf(content)?;
        check_range(&layers, config.layers)?;
        let mut w = Weights {
            content,
            reader,
            device,
            rms_eps: config.rms_eps,
        };
        let embedding = if layers.start == 0 || layers.end == config.layers {
            Some(std::sync::Arc::new(w.tensor("token_embd.weight")?))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers.len());
        for i in layers.clone() {
            let n = |s: &str| layer_tensor(i, s);
            blocks.push(Layer {
                index: i,
                attn_norm: w.norm(&n("attn_norm"))?,
                qkv: Projections::new(vec![
                    w.matmul(&n("attn_q"))?,
                    w.matmul(&n("attn_k"))?,
                    w.matmul(&n("attn_v"))?,
                ]),
                q_norm: w.norm(&n("attn_q_norm"))?,
                k_norm: w.norm(&n("attn_k_norm"))?,
                o: w.matmul(&n("attn_output"))?,
                post_attn_norm: w.norm(&n("post_attention_norm"))?,
                ffn_norm: w.norm(&n("ffn_norm"))?,
                gate_up: Projections::new(vec![w.matmul(&n("ffn_gate"))?, w.matmul(&n("ffn_up"))?]),
                down: w.matmul(&n("ffn_down"))?,
                post_ffn_norm: w.norm(&n("post_ffw_norm"))?,
            });
        }
        let head = if layers.end == config.layers {
            let norm = w.norm("output_norm.weight")?;
            let embd = embedding
                .clone()
                .ok_or_else(|| ModelError::Metadata("no embedding".into()))?;
            Some((norm, Linear::from_arc(embd)?))
        } else {
            None
        };
        // The input embedding is looked up by row: keep a dequantized copy only on the first shard.
        let embedding = match (layers.start == 0, embedding) {
            (true, Some(e)) => Some(e.dequantize(device)?),
            _ => None,
        };
        Ok(Shard::new(config, layers, embedding, blocks, head, device))
    }
}
