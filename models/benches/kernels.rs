//! Weight bytes per second of the project's quantized matmul kernels, one
//! activation row (a decode step) and several (a prefill), on a matrix that
//! stays in cache (the kernel's arithmetic) and on one as large as the
//! packaged model's head (memory). `RAYON_NUM_THREADS` sets the threads.
//!
//!     cargo bench -p models --bench kernels
//!     RAYON_NUM_THREADS=1 cargo bench -p models --bench kernels

use std::time::Instant;

use models::quant::{BlockQ5_0, BlockQ8_0, QuantMatrix, WeightBlock};

const COLS: usize = 640;

/// Valid blocks of format `B` for a `rows` × [`COLS`] matrix: an f16 scale of
/// about 0.01 and pseudo-random quants.
fn matrix<B: WeightBlock>(rows: usize) -> QuantMatrix<B> {
    let blocks = rows * COLS / 32;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = Vec::with_capacity(blocks * B::BYTES);
    for _ in 0..blocks {
        bytes.extend_from_slice(&0x2148u16.to_le_bytes());
        for _ in 2..B::BYTES {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(state as u8);
        }
    }
    QuantMatrix::from_bytes(rows, COLS, &bytes).expect("valid blocks")
}

fn measure<B: WeightBlock>(name: &str, rows: usize, batch: usize, target_s: f64) {
    let m: QuantMatrix<B> = matrix(rows);
    let xs: Vec<f32> = (0..batch * COLS)
        .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let mut out = vec![0f32; batch * rows];
    m.matmul(&xs, &mut out);
    let bytes = (rows * COLS / 32 * B::BYTES) as f64;
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed().as_secs_f64() < target_s {
        m.matmul(&xs, &mut out);
        runs += 1;
    }
    let per_run = start.elapsed().as_secs_f64() / f64::from(runs);
    println!(
        "{name:6} {rows:>7} x {COLS} x {batch:>2} rows: {:>8.3} ms, {:>6.1} GB/s of weights, {:>6.1} G multiply-adds/s",
        per_run * 1e3,
        bytes / per_run / 1e9,
        (rows * COLS * batch) as f64 / per_run / 1e9
    );
}

fn main() {
    for batch in [1, 14] {
        measure::<BlockQ8_0>("Q8_0", 1024, batch, 1.0);
        measure::<BlockQ5_0>("Q5_0", 1024, batch, 1.0);
    }
    measure::<BlockQ8_0>("Q8_0", 262_144, 1, 3.0);
    measure::<BlockQ5_0>("Q5_0", 262_144, 1, 3.0);
}
