//! Quantized weights times activations, on the CPU: Q5_0 (81 of the packaged
//! model's 236 tensors), for which candle 0.11 has no SIMD kernel, and Q8_0
//! (the tied output head, 262,144 × 640, most of the bytes a token reads),
//! whose candle kernel converts two f16 scales per block through a call and
//! waits on one accumulator. Both read the stored blocks and multiply them by
//! activations quantized to 8 bits per block of 32, as llama.cpp does
//! (`ggml_vec_dot_q5_0_q8_0`, `ggml_vec_dot_q8_0_q8_0`), four weight rows at a
//! time so that four independent sums are in flight.
//!
//! Every output is one dot product computed by one thread, and the AVX2 path
//! (with AVX-512 VNNI where the CPU has it) and the scalar path round
//! identically: eight integer lane sums per block
//! (lane `l` holds the products of elements `4l..4l+4`), one fused
//! multiply-add per block and lane, one fixed reduction tree. So an output does
//! not depend on the thread count, on how many rows a forward holds, on which
//! four rows it was computed with, or on whether the CPU has AVX2 or VNNI (the
//! audit re-executes on other machines).

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;

/// Weights per block.
pub const BLOCK: usize = 32;

/// A stored block of 32 weights `d · q_i`.
pub trait WeightBlock: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Bytes of the block in GGUF.
    const BYTES: usize;
    /// The GGUF type's name, for errors.
    const NAME: &'static str;
    /// The block in its `BYTES` GGUF bytes.
    fn from_bytes(bytes: &[u8]) -> Self;
    fn scale(&self) -> f32;
    /// `q_i` for the 32 weights, in order.
    fn values(&self) -> [i8; BLOCK];
    /// Sums of the rows of `w` (each `x.len()` blocks) against `x`, the AVX2
    /// kernel where the CPU has it.
    fn dot_rows<const R: usize>(w: [&[Self]; R], x: &[BlockQ8]) -> [f32; R];
    /// Whether a forward of several rows should widen each tile to Q8_0 once
    /// ([`WeightBlock::widen`]) rather than decode every block for every row.
    const WIDEN_FOR_BATCH: bool = false;
    /// The same weights as Q8_0 blocks (same scale, same `q_i`), so the Q8_0
    /// kernel gives the same bits.
    fn widen(blocks: &[Self], out: &mut [BlockQ8_0]);
}

fn f16_scale(d: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(d)).to_f32()
}

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

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl WeightBlock for BlockQ5_0 {
    const BYTES: usize = 22;
    const NAME: &'static str = "Q5_0";

    fn from_bytes(bytes: &[u8]) -> BlockQ5_0 {
        let mut block = BlockQ5_0 {
            d: [bytes[0], bytes[1]],
            qh: [0; 4],
            qs: [0; 16],
        };
        block.qh.copy_from_slice(&bytes[2..6]);
        block.qs.copy_from_slice(&bytes[6..22]);
        block
    }

    fn scale(&self) -> f32 {
        f16_scale(self.d)
    }

    /// `q_i − 16`.
    fn values(&self) -> [i8; BLOCK] {
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

    fn dot_rows<const R: usize>(w: [&[Self]; R], x: &[BlockQ8]) -> [f32; R] {
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::vnni_available() {
                // SAFETY: the CPU has AVX2, FMA, F16C and AVX-512 VNNI with VL.
                return unsafe { avx2::dot_rows_q5_0_vnni(w, x) };
            }
            if avx2::available() {
                // SAFETY: the CPU has AVX2, FMA and F16C.
                return unsafe { avx2::dot_rows_q5_0(w, x) };
            }
        }
        w.map(|w| dot_scalar(w, x))
    }

    const WIDEN_FOR_BATCH: bool = true;

    fn widen(blocks: &[Self], out: &mut [BlockQ8_0]) {
        assert_eq!(blocks.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU has AVX2, FMA and F16C.
            return unsafe { avx2::widen_q5_0(blocks, out) };
        }
        for (b, out) in blocks.iter().zip(out) {
            *out = BlockQ8_0 {
                d: b.d,
                qs: b.values(),
            };
        }
    }
}

/// One Q8_0 block as stored in GGUF: an f16 scale `d` and 32 signed weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BlockQ8_0 {
    d: [u8; 2],
    qs: [i8; BLOCK],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl WeightBlock for BlockQ8_0 {
    const BYTES: usize = 34;
    const NAME: &'static str = "Q8_0";

    fn from_bytes(bytes: &[u8]) -> BlockQ8_0 {
        let mut qs = [0i8; BLOCK];
        for (q, &b) in qs.iter_mut().zip(&bytes[2..34]) {
            *q = b as i8;
        }
        BlockQ8_0 {
            d: [bytes[0], bytes[1]],
            qs,
        }
    }

    fn scale(&self) -> f32 {
        f16_scale(self.d)
    }

    fn values(&self) -> [i8; BLOCK] {
        self.qs
    }

    fn widen(blocks: &[Self], out: &mut [BlockQ8_0]) {
        out.copy_from_slice(blocks);
    }

    fn dot_rows<const R: usize>(w: [&[Self]; R], x: &[BlockQ8]) -> [f32; R] {
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::vnni_available() {
                // SAFETY: the CPU has AVX2, FMA, F16C and AVX-512 VNNI with VL.
                return unsafe { avx2::dot_rows_q8_0_vnni(w, x) };
            }
            if avx2::available() {
                // SAFETY: the CPU has AVX2, FMA and F16C.
                return unsafe { avx2::dot_rows_q8_0(w, x) };
            }
        }
        w.map(|w| dot_scalar(w, x))
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
pub fn dot<B: WeightBlock>(w: &[B], x: &[BlockQ8]) -> f32 {
    let [sum] = B::dot_rows([w], x);
    sum
}

/// The reference: the same lane sums, multiply-adds and reduction as the AVX2
/// kernels, one element at a time.
pub fn dot_scalar<B: WeightBlock>(w: &[B], x: &[BlockQ8]) -> f32 {
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

    use super::{BlockQ5_0, BlockQ8, BlockQ8_0};

    /// How far ahead of each block to prefetch: about six tiles of the
    /// packaged model's 640-wide rows (measured best of 2, 3, 4, 6 and 8 KiB).
    const PREFETCH_BYTES: usize = 4096;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// AVX-512 VNNI on 256-bit vectors as well: one `vpdpbusd` sums each four
    /// products of a block, where AVX2 takes `vpmaddubsw` and `vpmaddwd`
    /// (the same integers: no pair of products reaches i16 saturation).
    pub(super) fn vnni_available() -> bool {
        available()
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
    }

    /// `|w| · (x · sign w)` summed by fours into i32 lanes, AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn products_avx2(unsigned: __m256i, signed: __m256i) -> __m256i {
        // Pairs summed to i16 (at most 2 · 128 · 127, no saturation), then to the 8 lanes of 4.
        _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned, signed), _mm256_set1_epi16(1))
    }

    /// [`products_avx2`] in one instruction.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    #[inline]
    unsafe fn products_vnni(unsigned: __m256i, signed: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned, signed)
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows_q5_0<const R: usize>(
        w: [&[BlockQ5_0]; R],
        x: &[BlockQ8],
    ) -> [f32; R] {
        dot_rows(
            w,
            x,
            |w| unsafe { (w.d, q5_0_weights(w)) },
            |a, b| unsafe { products_avx2(a, b) },
        )
    }

    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI with VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn dot_rows_q5_0_vnni<const R: usize>(
        w: [&[BlockQ5_0]; R],
        x: &[BlockQ8],
    ) -> [f32; R] {
        dot_rows(
            w,
            x,
            |w| unsafe { (w.d, q5_0_weights(w)) },
            |a, b| unsafe { products_vnni(a, b) },
        )
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen_q5_0(blocks: &[BlockQ5_0], out: &mut [BlockQ8_0]) {
        for (w, out) in blocks.iter().zip(out) {
            out.d = w.d;
            // SAFETY: `qs` is 32 bytes.
            unsafe { _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), q5_0_weights(w)) }
        }
    }

    /// The 32 weights `q − 16` of a Q5_0 block as signed bytes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn q5_0_weights(w: &BlockQ5_0) -> __m256i {
        // Byte i of the broadcast `qh` is byte i / 8 of it, ORed with every bit
        // but bit i % 8: all ones exactly where weight i's fifth bit is set.
        let spread = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let other_bits = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        let qs = _mm_loadu_si128(w.qs.as_ptr().cast());
        let nibbles = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs),
            _mm256_set1_epi8(0x0F),
        );
        let qh = _mm256_set1_epi32(i32::from_le_bytes(w.qh));
        let fifth = _mm256_cmpeq_epi8(
            _mm256_or_si256(_mm256_shuffle_epi8(qh, spread), other_bits),
            _mm256_set1_epi8(-1),
        );
        // q − 16 is the nibble where the fifth bit is set, nibble − 16 =
        // 0xF0 | nibble (as i8) where it is not.
        _mm256_or_si256(
            nibbles,
            _mm256_andnot_si256(fifth, _mm256_set1_epi8(0xF0u8 as i8)),
        )
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows_q8_0<const R: usize>(
        w: [&[BlockQ8_0]; R],
        x: &[BlockQ8],
    ) -> [f32; R] {
        dot_rows(w, x, q8_0_weights, |a, b| unsafe { products_avx2(a, b) })
    }

    /// # Safety
    /// The CPU must have AVX2, FMA, F16C and AVX-512 VNNI with VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub(super) unsafe fn dot_rows_q8_0_vnni<const R: usize>(
        w: [&[BlockQ8_0]; R],
        x: &[BlockQ8],
    ) -> [f32; R] {
        dot_rows(w, x, q8_0_weights, |a, b| unsafe { products_vnni(a, b) })
    }

    #[inline]
    fn q8_0_weights(w: &BlockQ8_0) -> ([u8; 2], __m256i) {
        // SAFETY: a block's 32 weights are 32 contiguous bytes (SSE2 loads need no feature).
        (w.d, unsafe { _mm256_loadu_si256(w.qs.as_ptr().cast()) })
    }

    /// The rows of `w` against `x`; `weights` gives a block's f16 scale and its
    /// 32 signed weights, `products` the lanes of four summed products. Each
    /// row has its own accumulator and the same sequence of operations,
    /// whatever `R` is.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_rows<B, const R: usize>(
        w: [&[B]; R],
        x: &[BlockQ8],
        weights: impl Fn(&B) -> ([u8; 2], __m256i),
        products: impl Fn(__m256i, __m256i) -> __m256i,
    ) -> [f32; R] {
        for w in &w {
            assert_eq!(w.len(), x.len());
        }
        let mut acc = [_mm256_setzero_ps(); R];
        for (k, x) in x.iter().enumerate() {
            let xq = _mm256_loadu_si256(x.qs.as_ptr().cast());
            for r in 0..R {
                // SAFETY: every row is x.len() blocks long (asserted above).
                let block = unsafe { w[r].get_unchecked(k) };
                // Rows are stored one after another: fetch what a later tile will read.
                _mm_prefetch::<_MM_HINT_T0>(
                    (block as *const B)
                        .cast::<i8>()
                        .wrapping_add(PREFETCH_BYTES),
                );
                let (scale, wq) = weights(block);
                let scale = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                    u16::from_le_bytes(scale),
                ))));
                let d = _mm256_set1_ps(scale * x.d);
                // |w| · (x · sign w): unsigned by signed bytes.
                let lanes = products(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[r]);
            }
        }
        // ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)), as dot_scalar.
        acc.map(|acc| {
            let halves = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
            let quarters = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
            _mm_cvtss_f32(_mm_add_ss(quarters, _mm_movehdup_ps(quarters)))
        })
    }
}

/// A matrix of `rows` × `cols` quantized weights (`cols` a multiple of
/// [`BLOCK`]), applied as `x Wᵀ`: `[.., cols]` in, `[.., rows]` out.
#[derive(Debug, Clone)]
pub struct QuantMatrix<B> {
    rows: usize,
    cols: usize,
    blocks: Vec<B>,
}

pub type Q5_0Matrix = QuantMatrix<BlockQ5_0>;
pub type Q8_0Matrix = QuantMatrix<BlockQ8_0>;

/// Why stored bytes are not a quantized matrix.
#[derive(Debug, thiserror::Error)]
#[error("{format} matrix {rows} x {cols}: {reason}")]
pub struct MatrixError {
    format: &'static str,
    rows: usize,
    cols: usize,
    reason: String,
}

/// Weight rows computed together.
const TILE: usize = 4;

impl<B: WeightBlock> QuantMatrix<B> {
    /// The matrix from its GGUF bytes: `rows` rows of `cols / 32` blocks.
    pub fn from_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, MatrixError> {
        let fail = |reason: String| MatrixError {
            format: B::NAME,
            rows,
            cols,
            reason,
        };
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(fail(format!(
                "the row length is not a positive multiple of {BLOCK}"
            )));
        }
        let expected = rows * cols / BLOCK * B::BYTES;
        if bytes.len() != expected {
            return Err(fail(format!("{} bytes, expected {expected}", bytes.len())));
        }
        let mut blocks = Vec::with_capacity(expected / B::BYTES);
        advise_huge_pages(&mut blocks);
        blocks.extend(bytes.chunks_exact(B::BYTES).map(B::from_bytes));
        Ok(QuantMatrix { rows, cols, blocks })
    }

    /// The rows of `parts` one after another: one matrix whose product is the
    /// parts' products side by side, each output the same dot product as in
    /// its part. `None` if the parts' row lengths differ or there are none.
    pub fn stack(parts: &[&QuantMatrix<B>]) -> Option<QuantMatrix<B>> {
        let cols = parts.first()?.cols;
        if parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        Some(QuantMatrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            blocks: parts
                .iter()
                .flat_map(|p| p.blocks.iter().copied())
                .collect(),
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row(&self, r: usize) -> &[B] {
        let per_row = self.cols / BLOCK;
        &self.blocks[r * per_row..(r + 1) * per_row]
    }

    /// `out[i, r] = Σ_k xs[i, k] · W[r, k]` for the `xs.len() / cols` rows of
    /// `xs`, on candle's CPU thread pool: each worker takes a range of weight
    /// rows and multiplies each tile of four by every input row while it is in
    /// cache.
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
            // SAFETY (of the writes below): `i * rows + r` is inside `out`
            // (m · rows long), and each r is in exactly one range, so no two
            // workers write the same element and none is read while they run.
            let write =
                |i: usize, r: usize, value: f32| unsafe { out.write(i * self.rows + r, value) };
            let widen = m > 1 && B::WIDEN_FOR_BATCH;
            candle_core::utils::barrier_pool().execute_chunked(self.rows, |range| {
                let mut r = range.start;
                while r + TILE <= range.end {
                    let tile: [&[B]; TILE] = std::array::from_fn(|t| self.row(r + t));
                    if widen {
                        WIDENED.with_borrow_mut(|widened| {
                            widened.resize(TILE * per_row, BlockQ8_0::default());
                            for (w, out) in tile.iter().zip(widened.chunks_exact_mut(per_row)) {
                                B::widen(w, out);
                            }
                            let tile = std::array::from_fn(|t| &widened[t * per_row..][..per_row]);
                            tile_times_rows(tile, activations, per_row, |i, t, sum| {
                                write(i, r + t, sum)
                            });
                        });
                    } else {
                        tile_times_rows(tile, activations, per_row, |i, t, sum| {
                            write(i, r + t, sum)
                        });
                    }
                    r += TILE;
                }
                for r in r..range.end {
                    for (i, x) in activations.chunks_exact(per_row).enumerate() {
                        write(i, r, dot(self.row(r), x));
                    }
                }
            });
        });
    }
}

/// Asks Linux to back the spare capacity of `blocks` (not yet touched) with
/// 2 MiB pages: a token streams every weight once, and on 4 KiB pages the
/// hardware prefetcher stops at each page and the TLB misses on each. A hint
/// only: where the kernel has no huge page to give, it keeps small ones.
fn advise_huge_pages<B>(blocks: &mut Vec<B>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = blocks.as_mut_ptr() as usize;
        let end = start + blocks.capacity() * std::mem::size_of::<B>();
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if first < last {
            // SAFETY: [first, last) lies inside the vector's own allocation, and
            // MADV_HUGEPAGE changes how pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
}

thread_local! {
    /// A tile widened to Q8_0, per worker.
    static WIDENED: RefCell<Vec<BlockQ8_0>> = const { RefCell::new(Vec::new()) };
}

/// Every activation row against one tile of weight rows; `write(i, t, sum)`
/// takes activation row `i` times tile row `t`.
fn tile_times_rows<B: WeightBlock>(
    tile: [&[B]; TILE],
    activations: &[BlockQ8],
    per_row: usize,
    mut write: impl FnMut(usize, usize, f32),
) {
    for (i, x) in activations.chunks_exact(per_row).enumerate() {
        for (t, sum) in B::dot_rows(tile, x).into_iter().enumerate() {
            write(i, t, sum);
        }
    }
}

/// The output buffer, written by the pool's workers at disjoint indices.
struct SharedOut(*mut f32);

// SAFETY: workers write disjoint elements (see `QuantMatrix::matmul`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `index` is in bounds and no other thread touches it meanwhile.
    unsafe fn write(&self, index: usize, value: f32) {
        *self.0.add(index) = value;
    }
}

impl<B: WeightBlock> CustomOp1 for QuantMatrix<B> {
    fn name(&self) -> &'static str {
        "quantized-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} matmul: the input is not contiguous", B::NAME)
        };
        let mut dims = layout.shape().dims().to_vec();
        if dims.pop() != Some(self.cols) {
            candle_core::bail!(
                "{} matmul: input {:?}, expected rows of {}",
                B::NAME,
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
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use crate::testing::pseudo_random_values as values;

    /// Each test runs on both formats.
    trait Format: WeightBlock {
        const DTYPE: GgmlDType;
        /// The largest |q| of the format.
        const MAX_Q: f64;
    }
    impl Format for BlockQ5_0 {
        const DTYPE: GgmlDType = GgmlDType::Q5_0;
        const MAX_Q: f64 = 16.0;
    }
    impl Format for BlockQ8_0 {
        const DTYPE: GgmlDType = GgmlDType::Q8_0;
        const MAX_Q: f64 = 128.0;
    }

    /// A candle-quantized matrix and ours from its bytes.
    fn quantized<B: Format>(rows: usize, cols: usize, seed: u64) -> (QTensor, QuantMatrix<B>) {
        let w = Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&w, B::DTYPE).unwrap();
        let matrix = QuantMatrix::from_bytes(rows, cols, &qt.data().unwrap()).unwrap();
        (qt, matrix)
    }

    fn blocks_decode_as_candle_dequantizes<B: Format>() {
        let (qt, matrix) = quantized::<B>(8, 640, 1);
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
        assert_eq!(ours, candle, "{}", B::NAME);
    }

    #[test]
    fn blocks_decode_as_candle_dequantizes_both_formats() {
        blocks_decode_as_candle_dequantizes::<BlockQ5_0>();
        blocks_decode_as_candle_dequantizes::<BlockQ8_0>();
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

    fn the_dot_is_exact_up_to_float_rounding<B: Format>() {
        let (_, matrix) = quantized::<B>(4, 2048, 3);
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
                .map(|(w, x)| f64::from(w.scale() * x.d).abs() * B::MAX_Q * 127.0 * 32.0)
                .sum();
            let got = f64::from(dot(w, &x));
            assert!(
                (got - exact).abs() <= magnitude * 1e-6,
                "{} row {r}: {got} vs {exact}",
                B::NAME
            );
        }
    }

    #[test]
    fn the_dot_is_exact_up_to_float_rounding_both_formats() {
        the_dot_is_exact_up_to_float_rounding::<BlockQ5_0>();
        the_dot_is_exact_up_to_float_rounding::<BlockQ8_0>();
    }

    /// A kernel by name: each x86 one this CPU has, and the dispatched one.
    type Kernel<B> = (
        &'static str,
        unsafe fn([&[B]; TILE], &[BlockQ8]) -> [f32; TILE],
    );

    /// Every tile position of every kernel, and the single-row path, give the
    /// scalar reference's bits.
    fn every_kernel_rounds_as_the_scalar_one<B: Format>(kernels: &[Kernel<B>]) {
        let (_, matrix) = quantized::<B>(64, 640, 5);
        let mut x = vec![BlockQ8::default(); 20];
        let dispatched: Kernel<B> = ("dispatched", B::dot_rows::<TILE>);
        for seed in 0..8 {
            quantize(&values(640, 100 + seed), &mut x);
            for &(name, kernel) in kernels.iter().chain([&dispatched]) {
                for r in (0..64).step_by(TILE) {
                    let tile: [&[B]; TILE] = std::array::from_fn(|t| matrix.row(r + t));
                    // SAFETY: only kernels whose features the CPU has are listed.
                    let sums = unsafe { kernel(tile, &x) };
                    for (t, sum) in sums.into_iter().enumerate() {
                        let scalar = dot_scalar(matrix.row(r + t), &x).to_bits();
                        assert_eq!(
                            sum.to_bits(),
                            scalar,
                            "{} {name} row {}, seed {seed}",
                            B::NAME,
                            r + t
                        );
                    }
                }
            }
            for r in 0..64 {
                let w = matrix.row(r);
                let scalar = dot_scalar(w, &x).to_bits();
                assert_eq!(dot(w, &x).to_bits(), scalar, "{} row {r}", B::NAME);
            }
        }
    }

    #[test]
    fn the_simd_kernels_round_as_the_scalar_one() {
        let mut q5_0: Vec<Kernel<BlockQ5_0>> = Vec::new();
        let mut q8_0: Vec<Kernel<BlockQ8_0>> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::available() {
                q5_0.push(("avx2", avx2::dot_rows_q5_0::<TILE>));
                q8_0.push(("avx2", avx2::dot_rows_q8_0::<TILE>));
            }
            if avx2::vnni_available() {
                q5_0.push(("vnni", avx2::dot_rows_q5_0_vnni::<TILE>));
                q8_0.push(("vnni", avx2::dot_rows_q8_0_vnni::<TILE>));
            }
        }
        every_kernel_rounds_as_the_scalar_one(&q5_0);
        every_kernel_rounds_as_the_scalar_one(&q8_0);
    }

    /// Blocks at the ends of each format's range against activations of ±127.
    fn extreme_blocks_are_exact<B: WeightBlock>(extreme: &[B]) {
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
        for w in extreme {
            for x in &signs {
                let expected: f32 = w
                    .values()
                    .iter()
                    .zip(&x.qs)
                    .map(|(&q, &x)| w.scale() * f32::from(q) * f32::from(x))
                    .sum();
                let (w, x) = (std::slice::from_ref(w), std::slice::from_ref(x));
                assert_eq!(dot(w, x), expected, "{w:?}");
                assert_eq!(dot_scalar(w, x), expected, "{w:?}");
            }
        }
    }

    #[test]
    fn extreme_blocks_are_exact_in_both_formats() {
        let half = f16::from_f32(0.5).to_bits().to_le_bytes();
        // Every Q5_0 weight −16 or 15.
        let q5: Vec<BlockQ5_0> = [[0u8; 4], [0xFF; 4]]
            .iter()
            .flat_map(|&qh| {
                [0u8, 0xFF].map(|qs| BlockQ5_0 {
                    d: half,
                    qh,
                    qs: [qs; 16],
                })
            })
            .collect();
        extreme_blocks_are_exact(&q5);
        // Every Q8_0 weight −128 (which GGUF's quantizer never writes, but a file may hold) or 127.
        let q8: Vec<BlockQ8_0> = [i8::MIN, i8::MAX]
            .map(|q| BlockQ8_0 {
                d: half,
                qs: [q; BLOCK],
            })
            .to_vec();
        extreme_blocks_are_exact(&q8);
    }

    /// Row counts that leave tails of 0 to 3 rows after the tiles of each worker.
    fn a_batch_gives_each_row_what_it_gives_alone<B: Format>() {
        for rows in [96, 97, 98, 99] {
            let (_, matrix) = quantized::<B>(rows, 640, 6);
            let xs = values(640 * 5, 7);
            let mut batch = vec![0f32; 5 * rows];
            matrix.matmul(&xs, &mut batch);
            for (i, row) in xs.chunks_exact(640).enumerate() {
                let mut alone = vec![0f32; rows];
                matrix.matmul(row, &mut alone);
                assert_eq!(
                    alone,
                    batch[i * rows..(i + 1) * rows],
                    "{} row {i}",
                    B::NAME
                );
                let mut x = vec![BlockQ8::default(); 20];
                quantize(row, &mut x);
                for (r, &sum) in alone.iter().enumerate() {
                    assert_eq!(sum.to_bits(), dot_scalar(matrix.row(r), &x).to_bits());
                }
            }
        }
    }

    #[test]
    fn a_batch_gives_each_row_what_it_gives_alone_both_formats() {
        a_batch_gives_each_row_what_it_gives_alone::<BlockQ5_0>();
        a_batch_gives_each_row_what_it_gives_alone::<BlockQ8_0>();
    }

    #[test]
    fn widened_q5_0_blocks_hold_the_same_weights() {
        let (_, matrix) = quantized::<BlockQ5_0>(4, 640, 11);
        let mut widened = vec![BlockQ8_0::default(); matrix.blocks.len()];
        BlockQ5_0::widen(&matrix.blocks, &mut widened);
        for (b, w) in matrix.blocks.iter().zip(&widened) {
            assert_eq!(w.values(), b.values());
            assert_eq!(w.scale().to_bits(), b.scale().to_bits());
        }
    }

    fn the_op_agrees_with_candle<B: Format>() {
        let (qt, matrix) = quantized::<B>(48, 640, 8);
        let x = Tensor::from_vec(values(3 * 640, 9), (1, 3, 640), &Device::Cpu).unwrap();
        let ours = x.apply_op1_no_bwd(&matrix).unwrap();
        assert_eq!(ours.dims(), &[1, 3, 48]);
        let dequantized = x
            .broadcast_matmul(&qt.dequantize(&Device::Cpu).unwrap().t().unwrap())
            .unwrap();
        let largest = dequantized
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let near = |reference: &Tensor, bound: f32| {
            let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in ours.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= bound * largest,
                    "{}: {a} vs {b} (largest {largest})",
                    B::NAME
                );
            }
        };
        // 8-bit activations: an error of about 1 % of the largest output.
        near(&dequantized, 0.02);
        // candle's own quantized matmul also rounds the activations to 8 bits
        // (with an f16 scale), so it is nearer.
        let candle = QMatMul::from_qtensor(qt).unwrap().forward(&x).unwrap();
        near(&candle, 0.002);
        let wrong = Tensor::zeros((1, 2, 320), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(wrong.apply_op1_no_bwd(&matrix).is_err());
    }

    #[test]
    fn the_op_agrees_with_candle_in_both_formats() {
        the_op_agrees_with_candle::<BlockQ5_0>();
        the_op_agrees_with_candle::<BlockQ8_0>();
    }

    fn malformed_bytes_are_refused<B: Format>() {
        let (qt, _) = quantized::<B>(4, 64, 10);
        let bytes = qt.data().unwrap();
        assert!(QuantMatrix::<B>::from_bytes(4, 64, &bytes[1..]).is_err());
        assert!(QuantMatrix::<B>::from_bytes(4, 48, &bytes).is_err());
        assert!(QuantMatrix::<B>::from_bytes(4, 0, &[]).is_err());
        assert!(QuantMatrix::<B>::from_bytes(4, 64, &bytes).is_ok());
    }

    #[test]
    fn malformed_bytes_are_refused_in_both_formats() {
        malformed_bytes_are_refused::<BlockQ5_0>();
        malformed_bytes_are_refused::<BlockQ8_0>();
    }
}
