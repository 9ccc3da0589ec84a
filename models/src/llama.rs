//! Llama-family models from a GGUF file (`general.architecture = "llama"`),
//! served by layer range behind the same interface as [`crate::gemma3`].
//!
//! Mirrors candle-transformers' `quantized_llama.rs`: RMSNorm with the weight as
//! stored, SwiGLU feed-forward `down(silu(gate x) * up x)`, causal attention with
//! grouped-query heads and scale `1 / sqrt(head_dim)`, no embedding scaling, and
//! the output head `output.weight` (or the tied `token_embd.weight` when the file
//! has none). RoPE is the interleaved (GPT-J) form: llama.cpp's converter permutes
//! the q/k weights so that GGUF Llama rotates the pairs `(x[2i], x[2i + 1])`, which
//! is what candle's `rope_i` does; it is written here with plain tensor ops.
//!
//! A [`Llama`] is a [`Shard`] of this architecture.

use std::io::{Read, Seek};
use std::ops::Range;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor, D};

use crate::layers::{
    cached_attention, layer_tensor, meta, meta_f32, meta_u32, rope_tables, Linear, Projections,
    RmsNorm, Weights,
};
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
    /// How many leading dimensions of each head RoPE rotates (`head_dim` unless
    /// `llama.rope.dimension_count` says fewer).
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f64,
    pub vocab: usize,
    /// Whether the head reuses `token_embd.weight` (no `output.weight` in the file).
    pub tied_head: bool,
    /// Positions the model was trained for (`llama.context_length`).
    pub context: usize,
}

impl Config {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Config> {
        let arch = meta(content, "general.architecture")?
            .to_string()
            .map_err(|e| ModelError::Metadata(e.to_string()))?;
        if arch != "llama" {
            return Err(ModelError::Metadata(format!(
                "architecture {arch:?} is not llama"
            )));
        }
        let p = |k: &str| format!("llama.{k}");
        let hidden = meta_u32(content, &p("embedding_length"))?;
        let heads = meta_u32(content, &p("attention.head_count"))?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(ModelError::Metadata(format!(
                "embedding length {hidden} is not a multiple of {heads} heads"
            )));
        }
        let kv_heads = meta_u32(content, &p("attention.head_count_kv")).unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ModelError::Metadata(format!(
                "{heads} heads are not a multiple of {kv_heads} kv heads"
            )));
        }
        let head_dim = hidden / heads;
        let rope_dim = meta_u32(content, &p("rope.dimension_count")).unwrap_or(head_dim);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(ModelError::Metadata(format!(
                "rope dimension {rope_dim} does not fit head dimension {head_dim}"
            )));
        }
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
            kv_heads,
            head_dim,
            rope_dim,
            rope_base: meta_f32(content, &p("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: meta_f32(content, &p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5)
                as f64,
            vocab,
            tied_head: !content.tensor_infos.contains_key("output.weight"),
            context: meta_u32(content, &p("context_length")).unwrap_or(DEFAULT_CONTEXT),
        })
    }
}

/// One layer's weights.
#[derive(Debug)]
pub struct Layer {
    attn_norm: RmsNorm,
    /// q, k and v.
    qkv: Projections,
    o: Linear,
    ffn_norm: RmsNorm,
    /// gate and up.
    gate_up: Projections,
    down: Linear,
}

/// Layers `[start, end)` of a Llama-family model.
pub type Llama = Shard<Config>;

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
        None
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
        // `[seq, rope_dim / 2, 1]`: one angle per turned pair.
        let (cos, sin) = rope_tables(c.rope_dim, c.rope_base, position, seq, x.device())?;
        let (cos, sin) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?);
        let h = l.attn_norm.forward(x)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((b, seq, n, c.head_dim))?.transpose(1, 2)?)
        };
        let [q, k, v] = l.qkv.forward(&h)?;
        let q = heads(q, c.heads)?;
        let k = heads(k, c.kv_heads)?;
        let v = heads(v, c.kv_heads)?;
        let q = rope_interleaved(&q, &cos, &sin)?;
        let k = rope_interleaved(&k, &cos, &sin)?;
        let attn = cached_attention(&q, k, v, cache, position, None)?;
        let x = (x + l.o.forward(&attn)?)?;
        let h = l.ffn_norm.forward(&x)?;
        let [gate, up] = l.gate_up.forward(&h)?;
        let ff = l.down.forward(&(gate.silu()? * up)?)?;
        Ok((x + ff)?)
    }
}

impl Llama {
    /// Loads layers `layers` (and the embedding / head when the range touches the
    /// first / last layer) from a GGUF file.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        layers: Range<usize>,
    ) -> Result<Llama> {
        let config = Config::from_gguf(content)?;
        check_range(&layers, config.layers)?;
        let mut w = Weights {
            content,
            reader,
            device,
            rms_eps: config.rms_eps,
        };
        let embedding = if layers.start == 0 {
            Some(w.tensor("token_embd.weight")?.dequantize(device)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(layers.len());
        for i in layers.clone() {
            let n = |s: &str| layer_tensor(i, s);
            blocks.push(Layer {
                attn_norm: w.norm(&n("attn_norm"))?,
                qkv: Projections::new(vec![
                    w.matmul(&n("attn_q"))?,
                    w.matmul(&n("attn_k"))?,
                    w.matmul(&n("attn_v"))?,
                ]),
                o: w.matmul(&n("attn_output"))?,
                ffn_norm: w.norm(&n("ffn_norm"))?,
                gate_up: Projections::new(vec![w.matmul(&n("ffn_gate"))?, w.matmul(&n("ffn_up"))?]),
                down: w.matmul(&n("ffn_down"))?,
            });
        }
        let head = if layers.end == config.layers {
            let norm = w.norm("output_norm.weight")?;
            let name = if config.tied_head {
                "token_embd.weight"
            } else {
                "output.weight"
            };
            Some((norm, w.matmul(name)?))
        } else {
            None
        };
        Ok(Shard::new(config, layers, embedding, blocks, head, device))
    }
}

/// Interleaved (GPT-J) rotary embedding on `[b, h, seq, head_dim]`: the pairs
/// `(x[2i], x[2i + 1])` of the first `rope_dim` dimensions turn; the rest pass.
fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, seq, d) = x.dims4()?;
    let half = cos.dim(1)?;
    let rot = x.narrow(D::Minus1, 0, 2 * half)?;
    let pairs = rot.reshape((b, h, seq, half, 2))?;
    let x0 = pairs.narrow(D::Minus1, 0, 1)?;
    let x1 = pairs.narrow(D::Minus1, 1, 1)?;
    let a = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let c = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    let rotated = Tensor::cat(&[&a, &c], D::Minus1)?.reshape((b, h, seq, 2 * half))?;
    if 2 * half == d {
        Ok(rotated)
    } else {
        let pass = x.narrow(D::Minus1, 2 * half, d - 2 * half)?;
        Ok(Tensor::cat(&[&rotated, &pass], D::Minus1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RoPE tables `[1, dim / 2, 1]` for one position, as a layer shapes them.
    fn tables(dim: usize, base: f32, position: usize) -> (Tensor, Tensor) {
        let (cos, sin) = rope_tables(dim, base, position, 1, &Device::Cpu).unwrap();
        (cos.unsqueeze(2).unwrap(), sin.unsqueeze(2).unwrap())
    }

    #[test]
    fn rope_turns_adjacent_pairs() {
        // One head of dim 4 at position 1, base 1: pair 0 turns by 1 rad, pair 1 by 1 rad.
        let x = Tensor::new(&[1f32, 0., 0., 1.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let (cos, sin) = tables(4, 1.0, 1);
        let y = rope_interleaved(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let want = [c, s, -s, c];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn rope_partial_passes_the_tail() {
        let x = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let (cos, sin) = tables(2, 10_000.0, 3);
        let y = rope_interleaved(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(&y[2..], &[3., 4.]);
        let (c, s) = (3f32.cos(), 3f32.sin());
        assert!((y[0] - (c - 2. * s)).abs() < 1e-6);
        assert!((y[1] - (s + 2. * c)).abs() < 1e-6);
    }
}
