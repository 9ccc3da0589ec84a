//! One-pass CPU kernels for the small operations between a layer's matmuls:
//! RMSNorm, the half-split rotary embedding and the attention softmax.
//!
//! A decode step runs each of them on a few hundred values, where candle's
//! composition (five to eight ops, each allocating its output) costs more
//! than the arithmetic. Each kernel walks its rows in order on the calling
//! thread, so its output does not depend on the thread count or the CPU;
//! other devices keep candle's composition ([`reference`]), which the tests
//! compare against.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor, D};

use crate::Result;

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(x
            .contiguous()?
            .apply_op2_no_bwd(weight, &RmsNorm { eps: eps as f32 })?),
        _ => reference::rms_norm(x, weight, eps),
    }
}

/// NeoX rotary embedding on `[b, h, seq, d]`: the first and second halves of
/// each head turn as pairs `(x[i], x[i + d/2])` by the angles whose `cos`
/// and `sin` are `[seq, d/2]`.
pub(crate) fn rope_half_split(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(x.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &RopeHalfSplit,
        )?),
        _ => reference::rope_half_split(x, cos, sin),
    }
}

/// Softmax over the last dimension. A row of `-inf` only (which attention
/// never produces: a query sees at least itself) gives NaN, as candle's does.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match x.device() {
        Device::Cpu => Ok(x.contiguous()?.apply_op1_no_bwd(&Softmax)?),
        _ => reference::softmax_last_dim(x),
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let mut out = f32_slice(self.name(), storage, layout)?.to_vec();
        let width = layout.shape().dims().last().copied().unwrap_or(1);
        if width > 0 {
            out.chunks_exact_mut(width).for_each(softmax_row);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// The input of a CPU kernel: a contiguous f32 slice.
fn f32_slice<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: the input is not contiguous")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = f32_slice(self.name(), x, x_layout)?;
        let weight = f32_slice(self.name(), weight, weight_layout)?;
        let width = weight.len();
        if x_layout.shape().dims().last() != Some(&width) || width == 0 {
            candle_core::bail!(
                "rms-norm: input {:?} for a weight of {width}",
                x_layout.shape()
            )
        }
        let mut out = vec![0f32; xs.len()];
        for (row, out) in xs.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let sum_sq: f32 = row.iter().map(|v| v * v).sum();
            let rms = (sum_sq / width as f32 + self.eps).sqrt();
            for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
                *o = v / rms * w;
            }
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

struct RopeHalfSplit;

impl CustomOp3 for RopeHalfSplit {
    fn name(&self) -> &'static str {
        "rope-half-split"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = f32_slice(self.name(), x, x_layout)?;
        let cos = f32_slice(self.name(), cos, cos_layout)?;
        let sin = f32_slice(self.name(), sin, sin_layout)?;
        let (_, _, seq, d) = x_layout.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || cos_layout.shape().dims() != [seq, half] || sin.len() != cos.len() {
            candle_core::bail!(
                "rope: input {:?} with tables {:?}",
                x_layout.shape(),
                cos_layout.shape()
            )
        }
        let mut out = vec![0f32; xs.len()];
        for (i, (head, out)) in xs.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let p = i % seq;
            let (cos, sin) = (&cos[p * half..][..half], &sin[p * half..][..half]);
            let (x1, x2) = head.split_at(half);
            let (a, b) = out.split_at_mut(half);
            for j in 0..half {
                a[j] = x1[j] * cos[j] - x2[j] * sin[j];
                b[j] = x2[j] * cos[j] + x1[j] * sin[j];
            }
        }
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// The same operations composed from candle's, for devices without the CPU
/// kernels.
pub(crate) mod reference {
    use super::*;

    pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(weight)?)
    }

    pub(crate) fn rope_half_split(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
        let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
        Ok(Tensor::cat(&[&a, &b], D::Minus1)?)
    }

    pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?;
        let e = x.broadcast_sub(&max)?.exp()?;
        Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rope_tables;

    use crate::testing::pseudo_random_values as values;

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Largest difference relative to the largest magnitude of `want`.
    fn relative_gap(got: &Tensor, want: &Tensor) -> f32 {
        assert_eq!(got.dims(), want.dims());
        let (got, want) = (flat(got), flat(want));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        got.iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    #[test]
    fn rms_norm_agrees_with_the_composition() {
        for shape in [[1, 1, 640], [1, 3, 256], [2, 5, 33]] {
            let x = tensor(&shape, 1);
            let w = tensor(&shape[2..], 2);
            let got = rms_norm(&x, &w, 1e-6).unwrap();
            let want = reference::rms_norm(&x, &w, 1e-6).unwrap();
            assert!(relative_gap(&got, &want) < 1e-6, "{shape:?}");
        }
    }

    #[test]
    fn rms_norm_takes_a_strided_input_and_refuses_a_wrong_weight() {
        // q and k are normed per head after a transpose.
        let x = tensor(&[1, 3, 4, 8], 3).transpose(1, 2).unwrap();
        let w = tensor(&[8], 4);
        let got = rms_norm(&x, &w, 1e-6).unwrap();
        let want = reference::rms_norm(&x, &w, 1e-6).unwrap();
        assert!(relative_gap(&got, &want) < 1e-6);
        assert!(rms_norm(&x, &tensor(&[7], 5), 1e-6).is_err());
    }

    #[test]
    fn rope_is_exactly_the_composition() {
        for (heads, seq, d, position) in [(4, 1, 256, 17), (1, 5, 8, 0), (2, 3, 6, 1000)] {
            let x = tensor(&[1, heads, seq, d], 6);
            let (cos, sin) = rope_tables(d, 10_000.0, position, seq, &Device::Cpu).unwrap();
            let got = rope_half_split(&x, &cos, &sin).unwrap();
            let want = reference::rope_half_split(&x, &cos, &sin).unwrap();
            assert_eq!(flat(&got), flat(&want), "{heads} {seq} {d}");
        }
    }

    #[test]
    fn rope_refuses_tables_of_another_shape() {
        let x = tensor(&[1, 1, 2, 8], 7);
        let (cos, sin) = rope_tables(8, 10_000.0, 0, 3, &Device::Cpu).unwrap();
        assert!(rope_half_split(&x, &cos, &sin).is_err());
    }

    #[test]
    fn softmax_agrees_with_the_composition_and_ignores_masked_keys() {
        let mut x = values(3 * 7, 8);
        x[3] = f32::NEG_INFINITY;
        x[20] = f32::NEG_INFINITY;
        let x = Tensor::from_vec(x, (3, 7), &Device::Cpu).unwrap();
        let got = softmax_last_dim(&x).unwrap();
        let want = reference::softmax_last_dim(&x).unwrap();
        assert!(relative_gap(&got, &want) < 1e-6);
        let got = flat(&got);
        assert_eq!((got[3], got[20]), (0.0, 0.0));
        for row in got.chunks_exact(7) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        }
    }
}
