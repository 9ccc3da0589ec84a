//! Gemma 3 from a GGUF file, served by layer range.
//!
//! Mirrors the structure of candle-transformers' `quantized_gemma3.rs`, with the
//! numbers fixed for the packaged model (see `docs/model.md`): GeGLU with the
//! tanh GELU, per-head RMSNorm on q and k, NeoX (half-split) RoPE with base 10,000
//! on sliding layers and the file's base on global ones, a key visible iff
//! `0 <= pos_q - pos_k < window` on sliding layers, and the tied output head.
//!
//! A [`Gemma3`] holds the layers `[start, end)`. The shard that starts at 0 embeds
//! tokens (scaled by sqrt(d)); the shard that ends at the last layer applies the
//! final norm and the head. Weights are shared; the KV cache of a request lives in
//! a [`Cache`] the caller owns, so one model serves many requests.

use std::io::{Read, Seek};
use std::ops::Range;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use crate::{ModelError, Result};

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
}

pub(crate) fn meta<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| ModelError::Metadata(format!("missing key {key}")))
}

pub(crate) fn meta_u32(content: &gguf_file::Content, key: &str) -> Result<usize> {
    meta(content, key)?
        .to_u32()
        .map(|v| v as usize)
        .map_err(|e| ModelError::Metadata(format!("{key}: {e}")))
}

pub(crate) fn meta_f32(content: &gguf_file::Content, key: &str) -> Result<f32> {
    meta(content, key)?
        .to_f32()
        .map_err(|e| ModelError::Metadata(format!("{key}: {e}")))
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
        })
    }

    pub fn is_global(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(self.global_every)
    }
}

/// RMSNorm over the last dimension; Gemma's `+1` is already in the stored weight.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

/// Q5_0 has no SIMD kernel in candle 0.11: dequantize it to f32 at load (exact
/// with respect to the stored weights, ~7-10x faster prompts). Other types stay
/// quantized.
pub(crate) fn matmul(qt: QTensor) -> Result<QMatMul> {
    if qt.dtype() == GgmlDType::Q5_0 {
        let device = qt.device();
        Ok(QMatMul::Tensor(qt.dequantize(&device)?))
    } else {
        Ok(QMatMul::from_qtensor(qt)?)
    }
}

#[derive(Debug)]
struct Layer {
    index: usize,
    attn_norm: RmsNorm,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    o: QMatMul,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    post_ffn_norm: RmsNorm,
}

/// The keys and values a request has produced so far, per layer of the shard.
#[derive(Debug, Default)]
pub struct Cache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) len: usize,
}

impl Cache {
    pub fn new() -> Self {
        Cache::default()
    }
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that `x` `[1, seq, hidden]` continues this request at `position`
    /// and makes room for `layers` layers; returns `seq`. Call [`Cache::advance`]
    /// once the layers have run.
    pub(crate) fn enter(
        &mut self,
        x: &Tensor,
        hidden: usize,
        position: usize,
        layers: usize,
    ) -> Result<usize> {
        let (_, seq, d) = x.dims3()?;
        if d != hidden {
            return Err(ModelError::Shape(format!(
                "hidden size {d}, expected {hidden}"
            )));
        }
        if position != self.len {
            return Err(ModelError::Shape(format!(
                "position {position} but the cache holds {} positions",
                self.len
            )));
        }
        self.layers.resize_with(layers, || None);
        Ok(seq)
    }

    pub(crate) fn advance(&mut self, seq: usize) {
        self.len += seq;
    }

    /// Drops every position from `len` on, so that the request continues at
    /// `len` (speculative decoding rewinds past rejected draft tokens).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(ModelError::Shape(format!(
                "cannot rewind to position {len}: the cache holds {} positions",
                self.len
            )));
        }
        for slot in &mut self.layers {
            *slot = match slot.take() {
                Some((k, v)) if len > 0 => Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?)),
                _ => None,
            };
        }
        self.len = len;
        Ok(())
    }
}

/// Rows `tokens` of an input embedding `[vocab, d]` as `[1, seq, d]`; an error on a
/// shard without the embedding or for a token outside the vocabulary.
pub(crate) fn lookup(embedding: Option<&Tensor>, tokens: &[u32], vocab: usize) -> Result<Tensor> {
    let embedding = embedding.ok_or(ModelError::NotFirstShard)?;
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Token { token: bad, vocab });
    }
    let ids = Tensor::new(tokens, embedding.device())?;
    Ok(embedding.index_select(&ids, 0)?.unsqueeze(0)?)
}

/// Causal attention of `q` `[b, heads, seq, d]` over the layer's cached keys and
/// values extended by `k`, `v` `[b, kv_heads, seq, d]` (grouped-query), scaled by
/// `1/sqrt(d)`, with an optional sliding `window`. Stores the extended keys and
/// values in `cache`; returns `[b, seq, heads * d]`.
pub(crate) fn cached_attention(
    q: &Tensor,
    k: Tensor,
    v: Tensor,
    cache: &mut Option<(Tensor, Tensor)>,
    position: usize,
    window: Option<usize>,
) -> Result<Tensor> {
    let (b, heads, seq, head_dim) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let (k, v) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        None => (k, v),
    };
    *cache = Some((k.clone(), v.clone()));
    let kv_len = k.dim(2)?;
    let k = repeat_kv(&k, heads / kv_heads)?.contiguous()?;
    let v = repeat_kv(&v, heads / kv_heads)?.contiguous()?;
    let scores = (q.contiguous()?.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    let mask = attention_mask(position, seq, kv_len, window, q.device())?;
    let probs = softmax_last_dim(&scores.broadcast_add(&mask)?)?;
    Ok(probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, seq, heads * head_dim))?)
}

#[derive(Debug)]
pub struct Gemma3 {
    pub config: Config,
    pub layers: Range<usize>,
    embedding: Option<Tensor>,
    blocks: Vec<Layer>,
    head: Option<(RmsNorm, QMatMul)>,
    device: Device,
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
        if layers.start >= layers.end || layers.end > config.layers {
            return Err(ModelError::LayerRange {
                start: layers.start,
                end: layers.end,
                layers: config.layers,
            });
        }
        let mut tensor = |name: &str| -> Result<QTensor> {
            content
                .tensor(reader, name, device)
                .map_err(|e| ModelError::Metadata(format!("tensor {name}: {e}")))
        };
        let embedding = if layers.start == 0 || layers.end == config.layers {
            Some(std::sync::Arc::new(tensor("token_embd.weight")?))
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers.len());
        for i in layers.clone() {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let mut norm = |s: &str| -> Result<RmsNorm> {
                Ok(RmsNorm {
                    weight: tensor(&n(s))?.dequantize(device)?,
                    eps: config.rms_eps,
                })
            };
            let attn_norm = norm("attn_norm")?;
            let q_norm = norm("attn_q_norm")?;
            let k_norm = norm("attn_k_norm")?;
            let post_attn_norm = norm("post_attention_norm")?;
            let ffn_norm = norm("ffn_norm")?;
            let post_ffn_norm = norm("post_ffw_norm")?;
            blocks.push(Layer {
                index: i,
                attn_norm,
                q: matmul(tensor(&n("attn_q"))?)?,
                k: matmul(tensor(&n("attn_k"))?)?,
                v: matmul(tensor(&n("attn_v"))?)?,
                q_norm,
                k_norm,
                o: matmul(tensor(&n("attn_output"))?)?,
                post_attn_norm,
                ffn_norm,
                gate: matmul(tensor(&n("ffn_gate"))?)?,
                up: matmul(tensor(&n("ffn_up"))?)?,
                down: matmul(tensor(&n("ffn_down"))?)?,
                post_ffn_norm,
            });
        }
        let head = if layers.end == config.layers {
            let norm = RmsNorm {
                weight: tensor("output_norm.weight")?.dequantize(device)?,
                eps: config.rms_eps,
            };
            let embd = embedding
                .clone()
                .ok_or_else(|| ModelError::Metadata("no embedding".into()))?;
            Some((norm, QMatMul::from_arc(embd)?))
        } else {
            None
        };
        // The input embedding is looked up by row: keep a dequantized copy only on the first shard.
        let embedding = match (layers.start == 0, embedding) {
            (true, Some(e)) => Some(e.dequantize(device)?),
            _ => None,
        };
        Ok(Gemma3 {
            config,
            layers,
            embedding,
            blocks,
            head,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether this shard embeds tokens (takes token ids as input).
    pub fn embeds(&self) -> bool {
        self.embedding.is_some()
    }

    /// Whether this shard ends with the head (returns logits).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Token ids `[seq]` to scaled embeddings `[1, seq, d]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let x = lookup(self.embedding.as_ref(), tokens, self.config.vocab)?;
        Ok((x * (self.config.hidden as f64).sqrt())?)
    }

    /// The shard's layers alone: hidden states after its last layer (before
    /// the final norm, even on the head shard).
    pub fn forward_layers(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        self.forward_layers_with(x, position, cache, &mut |_, x| Ok(x))
    }

    /// [`Gemma3::forward_layers`], handing each layer's output (with the
    /// layer's absolute index) to `after_layer`, which returns what the next
    /// layer gets: a node keeps what it computed for audits this way.
    pub fn forward_layers_with(
        &self,
        x: &Tensor,
        position: usize,
        cache: &mut Cache,
        after_layer: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let seq = cache.enter(x, self.config.hidden, position, self.blocks.len())?;
        let mut x = x.clone();
        for ((block, slot), index) in self
            .blocks
            .iter()
            .zip(cache.layers.iter_mut())
            .zip(self.layers.clone())
        {
            x = after_layer(index, self.block(block, &x, position, slot)?)?;
        }
        cache.advance(seq);
        Ok(x)
    }

    /// Runs the shard's layers on hidden states `[1, seq, d]` at positions
    /// `position..position + seq`, returning hidden states, or logits `[1, seq, V]`
    /// if the shard holds the head.
    pub fn forward(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        let x = self.forward_layers(x, position, cache)?;
        if self.head.is_some() {
            self.head_forward(&x)
        } else {
            Ok(x)
        }
    }

    /// The final norm and the head on hidden states `[1, seq, d]` after the
    /// last layer: logits `[1, seq, V]`. Only the shard with the head has it.
    pub fn head_forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.head {
            Some((norm, head)) => Ok(head.forward(&norm.forward(x)?)?),
            None => Err(crate::ModelError::Shape(
                "this shard does not hold the head".into(),
            )),
        }
    }

    fn block(
        &self,
        l: &Layer,
        x: &Tensor,
        position: usize,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, seq, _) = x.dims3()?;
        let h = l.attn_norm.forward(x)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, seq, n, c.head_dim))?.transpose(1, 2)?)
        };
        let q = l.q_norm.forward(&heads(l.q.forward(&h)?, c.heads)?)?;
        let k = l.k_norm.forward(&heads(l.k.forward(&h)?, c.kv_heads)?)?;
        let v = heads(l.v.forward(&h)?, c.kv_heads)?;
        let global = c.is_global(l.index);
        let base = if global {
            c.rope_base_global
        } else {
            c.rope_base_local
        };
        let (cos, sin) = rope_tables(c.head_dim, base, position, seq, &self.device)?;
        let q = rope(&q, &cos, &sin)?;
        let k = rope(&k, &cos, &sin)?;
        let window = (!global).then_some(c.sliding_window);
        let attn = cached_attention(&q, k, v, cache, position, window)?;
        let attn = l.post_attn_norm.forward(&l.o.forward(&attn)?)?;
        let x = (x + attn)?;
        let h = l.ffn_norm.forward(&x)?;
        let ff = l
            .down
            .forward(&(l.gate.forward(&h)?.gelu()? * l.up.forward(&h)?)?)?;
        Ok((x + l.post_ffn_norm.forward(&ff)?)?)
    }
}

/// `cos`, `sin` `[seq, head_dim / 2]` for positions `position..position + seq`.
fn rope_tables(
    head_dim: usize,
    base: f32,
    position: usize,
    seq: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let angles: Vec<f32> = (position..position + seq)
        .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
        .collect();
    let angles = Tensor::from_vec(angles, (seq, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// NeoX rotary embedding: rotate the first and second halves of each head.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Ok(Tensor::cat(&[&a, &b], D::Minus1)?)
}

pub(crate) fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, h, s, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, h, group, s, d))?
        .reshape((b, h * group, s, d))?)
}

pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Additive mask `[seq, kv_len]` for queries at `position..position + seq` over
/// keys `0..kv_len`: key `k` is visible to query `q` iff `0 <= q - k` and, with a
/// window, `q - k < window`.
pub fn attention_mask(
    position: usize,
    seq: usize,
    kv_len: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| {
            let q = position + i;
            (0..kv_len).map(move |k| {
                let visible = k <= q && window.is_none_or(|w| q - k < w);
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (seq, kv_len), device)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(mask: &Tensor) -> Vec<Vec<bool>> {
        mask.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(|v| v == 0.0).collect())
            .collect()
    }

    #[test]
    fn mask_square_is_causal() {
        let m = visible(&attention_mask(0, 3, 3, None, &Device::Cpu).unwrap());
        assert_eq!(
            m,
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![true, true, true]
            ]
        );
    }

    #[test]
    fn mask_single_query_with_prefix_and_window() {
        // Query at position 5 over keys 0..=5 with a window of 3: keys 3, 4, 5.
        let m = visible(&attention_mask(5, 1, 6, Some(3), &Device::Cpu).unwrap());
        assert_eq!(m, vec![vec![false, false, false, true, true, true]]);
    }

    #[test]
    fn mask_rectangular_chunk() {
        // Two queries at positions 2, 3 over keys 0..4, window 2.
        let m = visible(&attention_mask(2, 2, 4, Some(2), &Device::Cpu).unwrap());
        assert_eq!(
            m,
            vec![
                vec![false, true, true, false],
                vec![false, false, true, true]
            ]
        );
    }
}
