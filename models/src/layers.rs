//! What the architectures share: GGUF metadata access, RMSNorm, quantized
//! matmuls, the per-request KV cache, embedding lookup, RoPE angles and
//! cached causal attention with an optional sliding window.

use std::io::{Read, Seek};

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, D};

use crate::ops;
use crate::quant::{Q5_0Matrix, Q8_0Matrix, QuantMatrix, WeightBlock};
use crate::{ModelError, Result};

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

/// RMSNorm over the last dimension with the weight as stored (Gemma's `+1`
/// is already in its stored weights).
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(weight: QTensor, eps: f64, device: &Device) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: weight.dequantize(device)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// A shard's tensors, read by name from a GGUF file onto a device.
pub(crate) struct Weights<'a, R> {
    pub content: &'a gguf_file::Content,
    pub reader: &'a mut R,
    pub device: &'a Device,
    /// The epsilon of every RMSNorm of the model.
    pub rms_eps: f64,
}

impl<R: Read + Seek> Weights<'_, R> {
    pub(crate) fn tensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(self.reader, name, self.device)
            .map_err(|e| ModelError::Metadata(format!("tensor {name}: {e}")))
    }

    pub(crate) fn norm(&mut self, name: &str) -> Result<RmsNorm> {
        let weight = self.tensor(name)?;
        RmsNorm::load(weight, self.rms_eps, self.device)
    }

    pub(crate) fn matmul(&mut self, name: &str) -> Result<Linear> {
        Linear::new(self.tensor(name)?)
    }
}

/// A weight matrix `W` applied as `x Wᵀ`. Q5_0 and Q8_0 run on the CPU on the
/// project's own kernels ([`crate::quant`]); on other devices Q5_0, which
/// candle 0.11 has no kernel for, is dequantized to f32 (exact with respect to
/// the stored weights). Other types run on candle's quantized matmuls.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Candle(QMatMul),
    Q5_0(Arc<Q5_0Matrix>),
    Q8_0(Arc<Q8_0Matrix>),
}

impl Linear {
    pub(crate) fn new(weight: QTensor) -> Result<Linear> {
        Linear::from_arc(Arc::new(weight))
    }

    pub(crate) fn from_arc(weight: Arc<QTensor>) -> Result<Linear> {
        match (weight.dtype(), weight.device()) {
            (GgmlDType::Q5_0, Device::Cpu) => Ok(Linear::Q5_0(Arc::new(own_matrix(&weight)?))),
            (GgmlDType::Q8_0, Device::Cpu) => Ok(Linear::Q8_0(Arc::new(own_matrix(&weight)?))),
            (GgmlDType::Q5_0, device) => {
                Ok(Linear::Candle(QMatMul::Tensor(weight.dequantize(&device)?)))
            }
            _ => Ok(Linear::Candle(QMatMul::from_arc(weight)?)),
        }
    }

    /// Output width: the matrix's rows.
    pub(crate) fn rows(&self) -> usize {
        match self {
            Linear::Candle(QMatMul::QTensor(t)) => t.shape().dims()[0],
            Linear::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims()[0],
            Linear::Q5_0(m) => m.rows(),
            Linear::Q8_0(m) => m.rows(),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Candle(m) => Ok(m.forward(x)?),
            Linear::Q5_0(m) => Ok(x.contiguous()?.apply_op1_no_bwd(m.as_ref())?),
            Linear::Q8_0(m) => Ok(x.contiguous()?.apply_op1_no_bwd(m.as_ref())?),
        }
    }
}

/// Weight matrices applied to one input (a layer's q, k and v; its gate and
/// up). Neighbours that the project's kernels hold in one format run as one
/// stacked matrix: one matmul, one pass over the thread pool and one
/// quantization of the input instead of one each. Every output is the same
/// as its matrix's alone.
#[derive(Debug, Clone)]
pub(crate) struct Projections {
    /// Each group's matrix and the widths of the parts it stacks.
    groups: Vec<(Linear, Vec<usize>)>,
}

impl Projections {
    pub(crate) fn new(parts: Vec<Linear>) -> Projections {
        let mut groups: Vec<(Linear, Vec<usize>)> = Vec::new();
        for part in parts {
            let width = part.rows();
            let stacked = match (groups.last(), &part) {
                (Some((Linear::Q5_0(a), _)), Linear::Q5_0(b)) => {
                    QuantMatrix::stack(&[a.as_ref(), b.as_ref()]).map(|m| Linear::Q5_0(Arc::new(m)))
                }
                (Some((Linear::Q8_0(a), _)), Linear::Q8_0(b)) => {
                    QuantMatrix::stack(&[a.as_ref(), b.as_ref()]).map(|m| Linear::Q8_0(Arc::new(m)))
                }
                _ => None,
            };
            match (stacked, groups.last_mut()) {
                (Some(stacked), Some((group, widths))) => {
                    *group = stacked;
                    widths.push(width);
                }
                _ => groups.push((part, vec![width])),
            }
        }
        Projections { groups }
    }

    /// Each of the `N` matrices' product with `x` `[.., cols]`: `[.., rows_i]`.
    pub(crate) fn forward<const N: usize>(&self, x: &Tensor) -> Result<[Tensor; N]> {
        let mut outputs = Vec::with_capacity(N);
        for (group, widths) in &self.groups {
            // A group of one narrows to the whole product: the same tensor.
            let product = group.forward(x)?;
            let mut start = 0;
            for &w in widths {
                outputs.push(product.narrow(D::Minus1, start, w)?);
                start += w;
            }
        }
        let held = outputs.len();
        outputs
            .try_into()
            .map_err(|_| ModelError::Shape(format!("{held} projections, expected {N}")))
    }
}

fn own_matrix<B: WeightBlock>(weight: &QTensor) -> Result<QuantMatrix<B>> {
    let (rows, cols) = weight.shape().dims2()?;
    QuantMatrix::from_bytes(rows, cols, &weight.data()?)
        .map_err(|e| ModelError::Metadata(e.to_string()))
}

/// The name of tensor `name` of layer `layer`: `blk.{layer}.{name}.weight`.
pub(crate) fn layer_tensor(layer: usize, name: &str) -> String {
    format!("blk.{layer}.{name}.weight")
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
    let group = heads / kv_heads;
    let (k, v) = match cache.take() {
        Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        None => (k.contiguous()?, v.contiguous()?),
    };
    *cache = Some((k.clone(), v.clone()));
    let kv_len = k.dim(2)?;
    // The `group` query heads that share a key head are one matrix of
    // `group * seq` rows, so the keys and values are not copied per head.
    let q = q
        .contiguous()?
        .reshape((b, kv_heads, group * seq, head_dim))?;
    let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
    // A single query at the end of the cache sees every key inside the window.
    let every_key_visible = seq == 1 && window.is_none_or(|w| kv_len <= w);
    let scores = if every_key_visible {
        scores
    } else {
        let mask = attention_mask(position, seq, kv_len, window, q.device())?;
        scores
            .reshape((b, kv_heads, group, seq, kv_len))?
            .broadcast_add(&mask)?
            .reshape((b, kv_heads, group * seq, kv_len))?
    };
    Ok(ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .reshape((b, heads, seq, head_dim))?
        .transpose(1, 2)?
        .reshape((b, seq, heads * head_dim))?)
}

/// `cos`, `sin` `[seq, dim / 2]` for positions `position..position + seq`:
/// pair `i` turns by `p * base^(-2i / dim)`.
pub(crate) fn rope_tables(
    dim: usize,
    base: f32,
    position: usize,
    seq: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / dim as f32))
        .collect();
    let angles: Vec<f32> = (position..position + seq)
        .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
        .collect();
    let angles = Tensor::from_vec(angles, (seq, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Additive mask `[seq, kv_len]` for queries at `position..position + seq` over
/// keys `0..kv_len`: key `k` is visible to query `q` iff `0 <= q - k` and, with a
/// window, `q - k < window`.
pub(crate) fn attention_mask(
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
    Ok(Tensor::from_vec(values, (seq, kv_len), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn visible(mask: &Tensor) -> Vec<Vec<bool>> {
        mask.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(|v| v == 0.0).collect())
            .collect()
    }

    /// Attention of one query head over every cached key, in f64, as the
    /// definition reads: softmax over the visible keys of `q·k / sqrt(d)`, times v.
    fn naive_attention(
        q: &[f64],
        keys: &[Vec<f64>],
        values: &[Vec<f64>],
        visible: &[bool],
    ) -> Vec<f64> {
        let d = q.len();
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
            .collect();
        let max = scores
            .iter()
            .zip(visible)
            .filter(|(_, &v)| v)
            .fold(f64::NEG_INFINITY, |m, (s, _)| m.max(*s));
        let weights: Vec<f64> = scores
            .iter()
            .zip(visible)
            .map(|(s, &v)| if v { (s - max).exp() } else { 0.0 })
            .collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|j| {
                weights
                    .iter()
                    .zip(values)
                    .map(|(w, v)| w * v[j])
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    #[test]
    fn grouped_attention_over_a_cache_matches_the_definition() {
        let (heads, kv_heads, d) = (4, 2, 8);
        let value = |i: usize| ((i * 7919 % 1000) as f32 / 250.0) - 2.0;
        let tensor = |shape: (usize, usize, usize, usize), offset: usize| {
            let n = shape.0 * shape.1 * shape.2 * shape.3;
            let v: Vec<f32> = (0..n).map(|i| value(i + offset)).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        for (window, first, second) in [
            (None, 2, 3),
            (Some(3), 2, 3),
            (Some(4), 4, 1),
            (Some(2), 3, 1),
        ] {
            let mut cache = None;
            let k0 = tensor((1, kv_heads, first, d), 1);
            let v0 = tensor((1, kv_heads, first, d), 2);
            let q0 = tensor((1, heads, first, d), 3);
            cached_attention(&q0, k0.clone(), v0.clone(), &mut cache, 0, window).unwrap();
            let k1 = tensor((1, kv_heads, second, d), 4);
            let v1 = tensor((1, kv_heads, second, d), 5);
            let q1 = tensor((1, heads, second, d), 6);
            let out =
                cached_attention(&q1, k1.clone(), v1.clone(), &mut cache, first, window).unwrap();
            assert_eq!(out.dims(), &[1, second, heads * d]);
            let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let rows = |t: &Tensor, h: usize| -> Vec<Vec<f64>> {
                t.narrow(1, h, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .chunks(d)
                    .map(|r| r.iter().map(|&x| x as f64).collect())
                    .collect()
            };
            let kv_len = first + second;
            let mask =
                visible(&attention_mask(first, second, kv_len, window, &Device::Cpu).unwrap());
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let keys = [rows(&k0, g), rows(&k1, g)].concat();
                let values = [rows(&v0, g), rows(&v1, g)].concat();
                for (s, q) in rows(&q1, h).iter().enumerate() {
                    let want = naive_attention(q, &keys, &values, &mask[s]);
                    let got = &out[(s * heads + h) * d..][..d];
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "{window:?} head {h} row {s}: {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stacked_projections_give_each_matrix_its_own_product() {
        let matrix = |rows: usize, seed: usize, dtype: GgmlDType| {
            let v: Vec<f32> = (0..rows * 64)
                .map(|i| (((i + seed) * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let t = Tensor::from_vec(v, (rows, 64), &Device::Cpu).unwrap();
            Linear::new(QTensor::quantize(&t, dtype).unwrap()).unwrap()
        };
        let parts = || {
            vec![
                matrix(8, 1, GgmlDType::Q5_0),
                matrix(4, 2, GgmlDType::Q5_0),
                matrix(4, 3, GgmlDType::Q8_0),
            ]
        };
        let projections = Projections::new(parts());
        // q and k stack; v, in another format, runs on its own.
        let widths: Vec<&[usize]> = projections
            .groups
            .iter()
            .map(|(_, w)| w.as_slice())
            .collect();
        assert_eq!(widths, [&[8, 4][..], &[4][..]]);
        for rows in [1, 3] {
            let x: Vec<f32> = (0..rows * 64)
                .map(|i| ((i * 31 % 17) as f32) - 8.0)
                .collect();
            let x = Tensor::from_vec(x, (1, rows, 64), &Device::Cpu).unwrap();
            let got: [Tensor; 3] = projections.forward(&x).unwrap();
            for (got, part) in got.iter().zip(parts()) {
                let want = part.forward(&x).unwrap();
                assert_eq!(got.dims(), want.dims());
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(got), flat(&want), "{rows} rows");
            }
        }
        assert!(projections
            .forward::<2>(&Tensor::zeros((1, 1, 64), DType::F32, &Device::Cpu).unwrap())
            .is_err());
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
