//! Q5_0 weights times activations, on the CPU. candle 0.11 has no SIMD kernel
//! for Q5_0 (81 of the packaged model's 236 tensors), and its dequantized f32
//! copy reads 5.8× the bytes per token; this kernel reads the stored blocks and
//! multiplies them by activations quantized to 8 bits per block of 32, as
//! llama.cpp does (`ggml_vec_dot_q5_0_q8_0`).
//!
//! Every output is one dot product computed by one thread, and the AVX2 path
//! and the scalar path round identically: eight integer lane sums per block
//! (lane `l` holds the products of elements `4l..4l+4`), one fused
//! multiply-add per block and lane, one fixed reduction tree. So an output does
//! not depend on the thread count, on how many rows a forward holds, or on
//! whether the CPU has AVX2 (the audit re-executes on other machines).

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;

/// Weights per block.
pub const BLOCK: usize = 32;

/// One Q5_0 block as stored in GGUF: an f16 scale `d`, the fifth bit of each
/// of the 32 weights, and their low four bits two to a byte (weight `j` in the
/// low nibble of byte `j`, weight `j + 16` in its high nibble). Weight `i` is
/// `d · (q_i − 16)` with `q_i` in `0..32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ5_0 {
    d: [u8; 2],
    qh: [u8; 4],
    qs: [u8; 16],
}

/// Bytes of a stored block.
pub const BLOCK_BYTES: usize = std::mem::size_of::<BlockQ5_0>();
const _: () = assert!(BLOCK_BYTES == 22);

impl BlockQ5_0 {
    /// The block in the 22 bytes of its GGUF form.
    pub fn from_bytes(bytes: &[u8; BLOCK_BYTES]) -> BlockQ5_0 {
        let mut block = BlockQ5_0 {
            d: [bytes[0], bytes[1]],
            qh: [0; 4],
            qs: [0; 16],
        };
        block.qh.copy_from_slice(&bytes[2..6]);
        block.qs.copy_from_slice(&bytes[6..]);
        block
    }

    pub fn scale(&self) -> f32 {
        f16::from_bits(u16::from_le_bytes(self.d)).to_f32()
    }

    /// `q_i − 16` for the 32 weights, in order.
    pub fn values(&self) -> [i8; BLOCK] {
        let qh = u32::from_le_bytes(self.qh);
        let mut out = [0i8; BLOCK];
        for j in 0..BLOCK / 2 {
            let low = self.qs[j] & 0x0F | (((qh >> j) & 1) << 4) as u8;
            let high = self.qs[j] >> 4 | (((qh >> (j + 16)) & 1) << 4) as u8;
            out[j] = low as i8 - 16;
            out[j + 16] = high as i8 - 16;
        }
        out
    }
}

/// 32 activations as `d · q_i`, `q_i` in `−127..=127`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockQ8 {
    pub d: f32,
    pub qs: [i8; BLOCK],
}

/// Quantizes `xs` (a multiple of [`BLOCK`] long) into `out`, one block per 32
/// values: `d = max |x| / 127`, `q = round(x / d)`.
pub fn quantize(xs: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(
        xs.len(),
        out.len() * BLOCK,
        "quantize: {} values into {} blocks",
        xs.len(),
        out.len()
    );
    for (xs, block) in xs.chunks_exact(BLOCK).zip(out) {
        let amax = xs.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let inverse = if d == 0.0 { 0.0 } else { 1.0 / d };
        block.d = d;
        for (q, x) in block.qs.iter_mut().zip(xs) {
            *q = (x * inverse).round() as i8;
        }
    }
}

/// `Σ w_i · x_i` over matching blocks, the AVX2 kernel where the CPU has it.
pub fn dot(w: &[BlockQ5_0], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::dot(w, x) };
    }
    dot_scalar(w, x)
}

/// The reference: the same lane sums, multiply-adds and reduction as the AVX2
/// kernel, one element at a time.
pub fn dot_scalar(w: &[BlockQ5_0], x: &[BlockQ8]) -> f32 {
    assert_eq!(w.len(), x.len());
    let mut lanes = [0f32; 8];
    for (w, x) in w.iter().zip(x) {
        let d = w.scale() * x.d;
        let values = w.values();
        for (l, lane) in lanes.iter_mut().enumerate() {
            let sum: i32 = (4 * l..4 * l + 4)
                .map(|i| i32::from(values[i]) * i32::from(x.qs[i]))
                .sum();
            *lane = d.mul_add(sum as f32, *lane);
        }
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = lanes;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ5_0, BlockQ8};

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(w: &[BlockQ5_0], x: &[BlockQ8]) -> f32 {
        assert_eq!(w.len(), x.len());
        // Byte i of the broadcast `qh` is byte i / 8 of it, ORed with every bit
        // but bit i % 8: all ones exactly where weight i's fifth bit is set.
        let spread = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let other_bits = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let all_ones = _mm256_set1_epi8(-1);
        let low_nibble = _mm256_set1_epi8(0x0F);
        let minus_16 = _mm256_set1_epi8(0xF0u8 as i8);
        let pairs = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (w, x) in w.iter().zip(x) {
            let d = _mm256_set1_ps(w.scale() * x.d);
            let qs = _mm_loadu_si128(w.qs.as_ptr().cast());
            let nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), low_nibble);
            let qh = _mm256_set1_epi32(i32::from_le_bytes(w.qh));
            let fifth = _mm256_cmpeq_epi8(
                _mm256_or_si256(_mm256_shuffle_epi8(qh, spread), other_bits),
                all_ones,
            );
            // q − 16 is the nibble where the fifth bit is set, nibble − 16 =
            // 0xF0 | nibble (as i8) where it is not.
            let wq = _mm256_or_si256(nibbles, _mm256_andnot_si256(fifth, minus_16));
            let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
            // |w| · (x · sign w): unsigned by signed bytes, pairs summed to i16
            // (at most 2 · 16 · 127, no saturation), then to the 8 lanes of 4.
            let products = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
            let lanes = _mm256_madd_epi16(products, pairs);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc);
        }
        // ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), as dot_scalar.
        let halves = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
        let quarters = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(quarters, _mm_movehdup_ps(quarters)))
    }
}

/// A Q5_0 weight matrix of `rows` × `cols` (`cols` a multiple of [`BLOCK`]),
/// applied as `x Wᵀ`: `[.., cols]` in, `[.., rows]` out.
#[derive(Debug, Clone)]
pub struct Q5_0Matrix {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockQ5_0>,
}

/// Why stored bytes are not a Q5_0 matrix.
#[derive(Debug, thiserror::Error)]
#[error("Q5_0 matrix {rows} x {cols}: {reason}")]
pub struct MatrixError {
    rows: usize,
    cols: usize,
    reason: String,
}

impl Q5_0Matrix {
    /// The matrix from its GGUF bytes: `rows` rows of `cols / 32` blocks.
    pub fn from_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Result<Q5_0Matrix, MatrixError> {
        let fail = |reason: String| MatrixError { rows, cols, reason };
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(fail(format!(
                "the row length is not a positive multiple of {BLOCK}"
            )));
        }
        let expected = rows * cols / BLOCK * BLOCK_BYTES;
        if bytes.len() != expected {
            return Err(fail(format!("{} bytes, expected {expected}", bytes.len())));
        }
        let blocks = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|b| BlockQ5_0::from_bytes(b.try_into().expect("chunks of BLOCK_BYTES")))
            .collect();
        Ok(Q5_0Matrix { rows, cols, blocks })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row(&self, r: usize) -> &[BlockQ5_0] {
        let per_row = self.cols / BLOCK;
        &self.blocks[r * per_row..(r + 1) * per_row]
    }

    /// `out[i, r] = Σ_k xs[i, k] · W[r, k]` for the `xs.len() / cols` rows of
    /// `xs`, on candle's CPU thread pool: each worker takes a range of weight
    /// rows and multiplies each by every input row while it is in cache.
    pub fn matmul(&self, xs: &[f32], out: &mut [f32]) {
        assert!(
            xs.len().is_multiple_of(self.cols),
            "input of {} values, rows of {}",
            xs.len(),
            self.cols
        );
        let m = xs.len() / self.cols;
        assert_eq!(
            out.len(),
            m * self.rows,
            "output of {} values for {m} x {}",
            out.len(),
            self.rows
        );
        let per_row = self.cols / BLOCK;
        thread_local! {
            static ACTIVATIONS: RefCell<Vec<BlockQ8>> = const { RefCell::new(Vec::new()) };
        }
        ACTIVATIONS.with_borrow_mut(|activations| {
            activations.clear();
            activations.resize(m * per_row, BlockQ8::default());
            quantize(xs, activations);
            let activations: &[BlockQ8] = activations;
            let out = SharedOut(out.as_mut_ptr());
            candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
                for r in range {
                    let w = self.row(r);
                    for (i, x) in activations.chunks_exact(per_row).enumerate() {
                        // SAFETY: `i * rows + r` is inside `out` (m · rows long), and
                        // each r is in exactly one range, so no two workers write
                        // the same element and none is read while they run.
                        unsafe { out.write(i * self.rows + r, dot(w, x)) };
                    }
                }
            });
        });
    }
}

/// The output buffer, written by the pool's workers at disjoint indices.
struct SharedOut(*mut f32);

// SAFETY: workers write disjoint elements (see `Q5_0Matrix::matmul`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `index` is in bounds and no other thread touches it meanwhile.
    unsafe fn write(&self, index: usize, value: f32) {
        *self.0.add(index) = value;
    }
}

impl CustomOp1 for Q5_0Matrix {
    fn name(&self) -> &'static str {
        "q5_0-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("q5_0-matmul: the input is not contiguous")
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.pop() != Some(self.cols) {
            candle_core::bail!(
                "q5_0-matmul: input {:?}, expected rows of {}",
                layout.shape(),
                self.cols
            )
        }
        dims.push(self.rows);
        let shape = Shape::from(dims);
        let xs = &storage.as_slice::<f32>()?[start..end];
        let mut out = vec![0f32; shape.elem_count()];
        self.matmul(xs, &mut out);
        Ok((CpuStorage::F32(out), shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Values of a fixed pseudo-random walk, some large.
    fn values(n: usize, seed: u64) -> Vec<f32> {
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

    /// A candle-quantized Q5_0 matrix and its bytes.
    fn quantized(rows: usize, cols: usize, seed: u64) -> (QTensor, Q5_0Matrix) {
        let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
        let matrix = Q5_0Matrix::from_bytes(rows, cols, &qt.data().unwrap()).unwrap();
        (qt, matrix)
    }

    #[test]
    fn blocks_decode_as_candle_dequantizes() {
        let (qt, matrix) = quantized(8, 640, 1);
        let candle = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ours: Vec<f32> = matrix
            .blocks
            .iter()
            .flat_map(|b| b.values().map(|q| b.scale() * f32::from(q)))
            .collect();
        assert_eq!(ours, candle);
    }

    #[test]
    fn quantized_activations_are_within_half_a_step() {
        let xs = values(640, 2);
        let mut blocks = vec![BlockQ8::default(); 20];
        quantize(&xs, &mut blocks);
        for (xs, b) in xs.chunks_exact(BLOCK).zip(&blocks) {
            assert!(b.qs.iter().all(|&q| q != i8::MIN));
            assert!(b.qs.iter().any(|&q| q.unsigned_abs() == 127));
            for (x, &q) in xs.iter().zip(&b.qs) {
                assert!(
                    (x - b.d * f32::from(q)).abs() <= b.d * 0.5 * (1.0 + 1e-6),
                    "{x} vs {q} · {}",
                    b.d
                );
            }
        }
        let mut zeros = vec![BlockQ8::default(); 1];
        quantize(&[0.0; BLOCK], &mut zeros);
        assert_eq!(zeros[0], BlockQ8::default());
    }

    #[test]
    fn the_dot_is_exact_up_to_float_rounding() {
        let (_, matrix) = quantized(4, 2048, 3);
        let xs = values(2048, 4);
        let mut x = vec![BlockQ8::default(); 64];
        quantize(&xs, &mut x);
        for r in 0..4 {
            let w = matrix.row(r);
            let exact: f64 = w
                .iter()
                .zip(&x)
                .flat_map(|(w, x)| {
                    let (values, scale) = (w.values(), f64::from(w.scale()) * f64::from(x.d));
                    (0..BLOCK).map(move |i| scale * f64::from(values[i]) * f64::from(x.qs[i]))
                })
                .sum();
            let magnitude: f64 = w
                .iter()
                .zip(&x)
                .map(|(w, x)| f64::from(w.scale() * x.d).abs() * 16.0 * 127.0 * 32.0)
                .sum();
            let got = f64::from(dot(w, &x));
            assert!(
                (got - exact).abs() <= magnitude * 1e-6,
                "row {r}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn the_simd_kernel_rounds_as_the_scalar_one() {
        let (_, matrix) = quantized(64, 640, 5);
        let mut x = vec![BlockQ8::default(); 20];
        for seed in 0..8 {
            quantize(&values(640, 100 + seed), &mut x);
            for r in 0..64 {
                let w = matrix.row(r);
                assert_eq!(
                    dot(w, &x).to_bits(),
                    dot_scalar(w, &x).to_bits(),
                    "row {r}, seed {seed}"
                );
            }
        }
        // Extreme blocks: every weight −16 or 15, every activation ±127.
        let extreme: Vec<BlockQ5_0> = [[0u8; 4], [0xFF; 4]]
            .iter()
            .flat_map(|&qh| {
                [0u8, 0xFF].map(|qs| BlockQ5_0 {
                    d: f16::from_f32(0.5).to_bits().to_le_bytes(),
                    qh,
                    qs: [qs; 16],
                })
            })
            .collect();
        let signs = [
            BlockQ8 {
                d: 1.0,
                qs: [127; BLOCK],
            },
            BlockQ8 {
                d: 1.0,
                qs: [-127; BLOCK],
            },
        ];
        for w in &extreme {
            for x in &signs {
                let expected: f32 = w
                    .values()
                    .iter()
                    .zip(&x.qs)
                    .map(|(&w, &x)| 0.5 * f32::from(w) * f32::from(x))
                    .sum();
                assert_eq!(
                    dot(std::slice::from_ref(w), std::slice::from_ref(x)),
                    expected
                );
                assert_eq!(
                    dot_scalar(std::slice::from_ref(w), std::slice::from_ref(x)),
                    expected
                );
            }
        }
    }

    #[test]
    fn a_batch_gives_each_row_what_it_gives_alone() {
        let (_, matrix) = quantized(96, 640, 6);
        let xs = values(640 * 5, 7);
        let mut batch = vec![0f32; 5 * 96];
        matrix.matmul(&xs, &mut batch);
        for (i, row) in xs.chunks_exact(640).enumerate() {
            let mut alone = vec![0f32; 96];
            matrix.matmul(row, &mut alone);
            assert_eq!(alone, batch[i * 96..(i + 1) * 96], "row {i}");
        }
    }

    #[test]
    fn the_op_agrees_with_candle_on_the_dequantized_weights() {
        let (qt, matrix) = quantized(48, 640, 8);
        let x = Tensor::from_vec(values(3 * 640, 9), (1, 3, 640), &Device::Cpu).unwrap();
        let ours = x.apply_op1_no_bwd(&matrix).unwrap();
        assert_eq!(ours.dims(), &[1, 3, 48]);
        let reference = x
            .broadcast_matmul(&qt.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let (ours, reference) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let largest = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in ours.iter().zip(&reference) {
            // 8-bit activations: an error of about 1 % of the largest output.
            assert!(
                (a - b).abs() <= 0.02 * largest,
                "{a} vs {b} (largest {largest})"
            );
        }
        let wrong = Tensor::zeros((1, 2, 320), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(wrong.apply_op1_no_bwd(&matrix).is_err());
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let (qt, _) = quantized(4, 64, 10);
        let bytes = qt.data().unwrap();
        assert!(Q5_0Matrix::from_bytes(4, 64, &bytes[1..]).is_err());
        assert!(Q5_0Matrix::from_bytes(4, 48, &bytes).is_err());
        assert!(Q5_0Matrix::from_bytes(4, 0, &[]).is_err());
        assert!(Q5_0Matrix::from_bytes(4, 64, &bytes).is_ok());
    }
}
