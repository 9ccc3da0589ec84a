//! The head variant of the decode-step circuit, for small models: the head matmul
//! `z = W h` runs inside the circuit with the weights as fixed columns, so the
//! verifying key binds the head, and the public input of a step is a commitment
//! `C_h` to the final hidden state instead of `C_z`.
//!
//! Public inputs per step (same seven cells and order as [`StepStatement::instance`],
//! with `C_h` in the commitment cell): `C_h, y, lp, g, beta, r, position`.
//!
//! Fixed point ([`HeadFormat`]):
//! - the hidden state is `h_j = round(h*_j 2^Fh)` (round half away from zero),
//!   `|h_j| < 2^24`; default `Fh = 12`;
//! - the weights are `W_ij = round(W*_ij 2^Fw)`, `|W_ij| < 2^24`, `Fw = F + 16 - Fh`
//!   (15 at `F = 11`): the head *is* these integers, so the verifying key fixes it
//!   exactly;
//! - `z_i = floor((sum_j W_ij h_j + 2^15) / 2^16)`: the product at scale `2^(F + 16)`
//!   rounded (half up) to the logits' scale `2^F`; `|z_i| < 2^23` as for any logit.
//!
//! Constraints: the hidden state packs and hashes to `C_h` (packing below), the head
//! chip ([`crate::chips::head`]) proves each `z_i` from `h` and the fixed `W`, its
//! packed logits equal the logit lanes' packed elements (copy constraints), and the
//! lanes and step check prove everything else of the decode-step statement
//! (log-sum-exp bracket, `lp`, greedy / inverse-CDF sampling) exactly as in
//! [`crate::DecodeStepCircuit`], applied to that `z`.
//!
//! `C_h` packing: `h_j` becomes the 25-bit limb `h_j + 2^24`; ten limbs in order form
//! one element by Horner's rule (most significant first, 250 bits, the last element
//! holds the remaining `d mod 10`), hashed with [`commitment::commit_packed`] (chunks
//! of 512 in `ConstantLength<512>`, folded from the tag) under the domain tag
//! `"zkH1" 2^64 + d 2^8 + Fh`, distinct from `C_z`'s `"zkL1"`.
//!
//! Error against float64 (`docs/statement.md`): `z_i / 2^F` is within `2^-(F+1)` of
//! `sum_j W_ij h_j / 2^(Fw + Fh)` exactly; against an unquantized hidden state `h*`
//! add `2^-(Fh+1) sum_j |W_ij| / 2^Fw` ([`HeadWeights::logit_error_bound`]).

use ff::PrimeField as _;
use std::cell::Cell;
use std::sync::Arc;

use halo2_proofs::{
    circuit::{Layouter, SimpleFloorPlanner},
    pasta::Fp,
    plonk::{Circuit, Column, ConstraintSystem, Error, Instance},
};

use crate::chips::head::{
    HeadChip, HeadConfig, HeadInstructions, HIDDEN_BITS, HIDDEN_LIMBS_PER_ELEMENT,
    HIDDEN_LIMB_BITS, REM_BITS,
};
use crate::chips::lane::{LaneChip, LaneConfig};
use crate::chips::range_check::{RangeCheckChip, RangeCheckConfig};
use crate::chips::step_check::{instance_row, StepCheckChip, StepCheckConfig};
use crate::chips::table::TableConfig;
use crate::commitment::{self, CommitmentChip, CommitmentConfig};
use crate::decode_step::{CircuitShape, ShapeError};
use crate::fixed_point::{FixedPoint, LOGIT_BITS, TABLE_BITS};
use crate::statement::{Sampler, StepStatement, INSTANCE_PER_STEP};
use crate::tables::Tables;
use crate::witness::{sample_token, StepError, StepWitness};

/// `|W_ij| < 2^WEIGHT_BITS`.
pub const WEIGHT_BITS: u32 = 24;
/// The largest hidden size the variant accepts (rows, not the field, are the limit:
/// `|acc| < d 2^48` stays far below 2^253 for any `d` that fits a circuit).
pub const MAX_HIDDEN: usize = 4096;
/// Default `Fh`.
pub const DEFAULT_HIDDEN_FRAC: u32 = 12;
const DOMAIN_TAG: u128 = 0x7a6b_4831; // "zkH1"
/// Rows halo2 keeps for blinding at the end of every column (with margin).
const RESERVED_ROWS: usize = 16;
/// Rows of the step check region (as in the decode-step circuit).
const STEP_CHECK_ROWS: usize = 6;
/// Constants of one step outside the head: the lanes' three starts, the step check's
/// nine range checks.
const STEP_CONSTANTS: usize = 3 + 9;

/// The head's fixed-point format: `h` at `2^Fh`, `W` at `2^Fw`, `Fh + Fw = F + 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadFormat {
    /// `Fh`.
    pub hidden_frac: u32,
    /// `Fw`.
    pub weight_frac: u32,
}

/// What went wrong with head weights, a hidden state or a head step.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HeadError {
    #[error("head format: {0}")]
    Format(String),
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("hidden size must be in 1..={MAX_HIDDEN}, got {0}")]
    Hidden(usize),
    #[error("products per row must be in 1..={hidden}, got {columns}")]
    Columns { columns: usize, hidden: usize },
    #[error("the head circuit would need k = {0} (at most 22 supported): use a smaller V * d, more product columns or fewer steps per proof")]
    TooLarge(u32),
    #[error("expected {expected} head weights (V x d), got {got}")]
    WeightCount { expected: usize, got: usize },
    #[error("head weight W[{row}][{col}] = {value} is out of range: |W * 2^{frac}| must be below 2^{WEIGHT_BITS} (and finite)")]
    WeightOutOfRange {
        row: usize,
        col: usize,
        value: f64,
        frac: u32,
    },
    #[error("expected a hidden state of {expected} values, got {got}")]
    HiddenLength { expected: usize, got: usize },
    #[error("hidden state h[{index}] = {value} is out of range: |h * 2^{frac}| must be below 2^{HIDDEN_BITS} (and finite)")]
    HiddenOutOfRange { index: usize, value: f64, frac: u32 },
    #[error("the head gives logit z[{index}] = {value} (fixed point), outside |z| < 2^{LOGIT_BITS}: the hidden state or the weights are too large")]
    LogitOutOfRange { index: usize, value: i128 },
    #[error("{0}")]
    Step(#[from] StepError),
}

impl HeadFormat {
    /// `Fh = hidden_frac`, `Fw = F + 16 - Fh`.
    pub fn new(fixed_point: FixedPoint, hidden_frac: u32) -> Result<HeadFormat, HeadError> {
        let total = fixed_point.frac_bits + REM_BITS;
        if !(4..=total.saturating_sub(4)).contains(&hidden_frac) {
            return Err(HeadError::Format(format!(
                "Fh = {hidden_frac} must be in 4..={} so that Fw = F + 16 - Fh >= 4",
                total.saturating_sub(4)
            )));
        }
        Ok(HeadFormat {
            hidden_frac,
            weight_frac: total - hidden_frac,
        })
    }

    /// `Fh = 12`.
    pub fn default_for(fixed_point: FixedPoint) -> HeadFormat {
        HeadFormat::new(fixed_point, DEFAULT_HIDDEN_FRAC).expect("F in 4..=12 leaves room")
    }

    /// Checks `Fh + Fw = F + 16`.
    pub fn validate(&self, fixed_point: FixedPoint) -> Result<(), HeadError> {
        let expected = HeadFormat::new(fixed_point, self.hidden_frac)?;
        if expected != *self {
            return Err(HeadError::Format(format!(
                "Fh + Fw must be F + 16 = {}, got {} + {}",
                fixed_point.frac_bits + REM_BITS,
                self.hidden_frac,
                self.weight_frac
            )));
        }
        Ok(())
    }

    /// `round(h * 2^Fh)`, or an error naming the index.
    pub fn quantize_hidden(&self, hidden: &[f32]) -> Result<Vec<i64>, HeadError> {
        hidden
            .iter()
            .enumerate()
            .map(|(index, &v)| {
                quantize(v as f64, self.hidden_frac).ok_or(HeadError::HiddenOutOfRange {
                    index,
                    value: v as f64,
                    frac: self.hidden_frac,
                })
            })
            .collect()
    }
}

/// `round(v 2^frac)` if finite and below `2^24` in magnitude.
fn quantize(v: f64, frac: u32) -> Option<i64> {
    let scaled = (v * (frac as f64).exp2()).round();
    (scaled.is_finite() && scaled.abs() < (HIDDEN_BITS as f64).exp2()).then_some(scaled as i64)
}

/// The head: `V x d` integer weights at scale `2^Fw`, row-major (row `i` gives logit `i`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadWeights {
    vocab: usize,
    hidden: usize,
    format: HeadFormat,
    values: Vec<i64>,
}

impl HeadWeights {
    /// Integer weights, each `|W_ij| < 2^24`.
    pub fn new(
        vocab: usize,
        hidden: usize,
        format: HeadFormat,
        values: Vec<i64>,
    ) -> Result<HeadWeights, HeadError> {
        if !(1..=MAX_HIDDEN).contains(&hidden) {
            return Err(HeadError::Hidden(hidden));
        }
        if values.len() != vocab * hidden {
            return Err(HeadError::WeightCount {
                expected: vocab * hidden,
                got: values.len(),
            });
        }
        if let Some(at) = values.iter().position(|w| w.abs() >= 1 << WEIGHT_BITS) {
            return Err(HeadError::WeightOutOfRange {
                row: at / hidden,
                col: at % hidden,
                value: values[at] as f64 / (format.weight_frac as f64).exp2(),
                frac: format.weight_frac,
            });
        }
        Ok(HeadWeights {
            vocab,
            hidden,
            format,
            values,
        })
    }

    /// Quantizes float weights: `W_ij = round(W*_ij 2^Fw)` (half away from zero).
    pub fn quantize(
        vocab: usize,
        hidden: usize,
        format: HeadFormat,
        weights: &[f32],
    ) -> Result<HeadWeights, HeadError> {
        if weights.len() != vocab * hidden {
            return Err(HeadError::WeightCount {
                expected: vocab * hidden,
                got: weights.len(),
            });
        }
        let values = weights
            .iter()
            .enumerate()
            .map(|(at, &w)| {
                quantize(w as f64, format.weight_frac).ok_or(HeadError::WeightOutOfRange {
                    row: at / hidden.max(1),
                    col: at % hidden.max(1),
                    value: w as f64,
                    frac: format.weight_frac,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        HeadWeights::new(vocab, hidden, format, values)
    }

    /// A random-weight head (seeded xorshift): `W*_ij` uniform in `±sqrt(3 / d)`
    /// (unit variance of `W* h*` for unit `h*`), quantized.
    pub fn random(vocab: usize, hidden: usize, format: HeadFormat, seed: u64) -> HeadWeights {
        let mut next = xorshift(seed);
        let scale = (3.0 / hidden.max(1) as f64).sqrt();
        let weights: Vec<f32> = (0..vocab * hidden)
            .map(|_| ((unit(next()) * 2.0 - 1.0) * scale) as f32)
            .collect();
        HeadWeights::quantize(vocab, hidden, format, &weights)
            .expect("weights below sqrt(3) are in range")
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    pub fn format(&self) -> HeadFormat {
        self.format
    }

    /// Row `i`: the weights of logit `i`.
    pub fn row(&self, i: usize) -> &[i64] {
        &self.values[i * self.hidden..(i + 1) * self.hidden]
    }

    /// `z_i = floor((acc_i + 2^15) / 2^16)` and `rem_i = acc_i + 2^15 - 2^16 z_i` for
    /// `acc_i = sum_j W_ij h_j`, refusing `|z_i| >= 2^23`.
    pub fn logits(&self, hidden: &[i64]) -> Result<(Vec<i64>, Vec<i64>), HeadError> {
        check_hidden(self, hidden)?;
        let half = 1i128 << (REM_BITS - 1);
        let mut logits = Vec::with_capacity(self.vocab);
        let mut remainders = Vec::with_capacity(self.vocab);
        for i in 0..self.vocab {
            let acc: i128 = self
                .row(i)
                .iter()
                .zip(hidden)
                .map(|(&w, &h)| w as i128 * h as i128)
                .sum();
            let z = (acc + half).div_euclid(1 << REM_BITS);
            if z.abs() >= 1 << LOGIT_BITS {
                return Err(HeadError::LogitOutOfRange { index: i, value: z });
            }
            logits.push(z as i64);
            remainders.push((acc + half).rem_euclid(1 << REM_BITS) as i64);
        }
        Ok((logits, remainders))
    }

    /// The bound, in nats, on `|z_i / 2^F - sum_j W_ij h*_j / 2^Fw|` for any float
    /// hidden state `h*` whose quantization is the proven `h`:
    /// `2^-(F+1) + 2^-(Fh+1) max_i sum_j |W_ij| / 2^Fw`.
    pub fn logit_error_bound(&self) -> f64 {
        let frac = self.format.hidden_frac + self.format.weight_frac - REM_BITS;
        let max_row: i64 = (0..self.vocab)
            .map(|i| self.row(i).iter().map(|w| w.abs()).sum::<i64>())
            .max()
            .unwrap_or(0);
        (-(frac as f64) - 1.0).exp2()
            + (-(self.format.hidden_frac as f64) - 1.0).exp2() * max_row as f64
                / (self.format.weight_frac as f64).exp2()
    }
}

fn check_hidden(weights: &HeadWeights, hidden: &[i64]) -> Result<(), HeadError> {
    if hidden.len() != weights.hidden {
        return Err(HeadError::HiddenLength {
            expected: weights.hidden,
            got: hidden.len(),
        });
    }
    if let Some(index) = hidden.iter().position(|h| h.abs() >= 1 << HIDDEN_BITS) {
        return Err(HeadError::HiddenOutOfRange {
            index,
            value: hidden[index] as f64 / (weights.format.hidden_frac as f64).exp2(),
            frac: weights.format.hidden_frac,
        });
    }
    Ok(())
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A random float hidden state of `hidden` values, uniform in `±sqrt(3)` (unit variance).
pub fn random_hidden(hidden: usize, seed: u64) -> Vec<f32> {
    let mut next = xorshift(seed ^ 0x5eed);
    (0..hidden)
        .map(|_| ((unit(next()) * 2.0 - 1.0) * 3f64.sqrt()) as f32)
        .collect()
}

/// The domain tag of `C_h`: `"zkH1" 2^64 + d 2^8 + Fh`.
pub fn hidden_domain_tag(hidden: usize, format: HeadFormat) -> Fp {
    Fp::from_u128((DOMAIN_TAG << 64) | ((hidden as u128) << 8) | format.hidden_frac as u128)
}

/// Packs a hidden state (limbs `h + 2^24`, ten per element, Horner).
pub fn pack_hidden(hidden: &[i64]) -> Vec<Fp> {
    let shift = Fp::from(1u64 << HIDDEN_LIMB_BITS);
    hidden
        .chunks(HIDDEN_LIMBS_PER_ELEMENT)
        .map(|group| {
            group.iter().fold(Fp::zero(), |acc, &h| {
                acc * shift + Fp::from((h + (1 << HIDDEN_BITS)) as u64)
            })
        })
        .collect()
}

/// `C_h` for a quantized hidden state (each `|h_j| < 2^24`).
pub fn commit_hidden(format: HeadFormat, hidden: &[i64]) -> Fp {
    commitment::commit_packed(
        hidden_domain_tag(hidden.len(), format),
        &pack_hidden(hidden),
    )
}

/// One head step: the hidden state, the head's remainders, and the decode step on
/// the logits the head gives (whose `statement.commitment` is `C_h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadStepWitness {
    pub hidden: Vec<i64>,
    pub remainders: Vec<i64>,
    pub step: StepWitness,
}

impl HeadStepWitness {
    /// The witness for emitting `token` from hidden state `hidden` under `sampler`,
    /// refusing out-of-range values and a token that does not follow.
    pub fn new(
        weights: &HeadWeights,
        tables: &Tables,
        fixed_point: FixedPoint,
        hidden: Vec<i64>,
        token: u32,
        sampler: Sampler,
    ) -> Result<HeadStepWitness, HeadError> {
        let (logits, remainders) = weights.logits(&hidden)?;
        let mut step = StepWitness::new(fixed_point, tables, logits, token, sampler)?;
        step.statement.commitment = commit_hidden(weights.format, &hidden);
        Ok(HeadStepWitness {
            hidden,
            remainders,
            step,
        })
    }

    /// The token `sampler` picks from the head's logits, and its witness.
    pub fn sample(
        weights: &HeadWeights,
        tables: &Tables,
        fixed_point: FixedPoint,
        hidden: Vec<i64>,
        sampler: Sampler,
    ) -> Result<HeadStepWitness, HeadError> {
        let (logits, _) = weights.logits(&hidden)?;
        let token = sample_token(tables, &logits, sampler)?;
        HeadStepWitness::new(weights, tables, fixed_point, hidden, token, sampler)
    }

    /// The public statement: `C_h, y, lp, sampler, position`.
    pub fn statement(&self) -> StepStatement {
        self.step.statement
    }
}

/// The shape of a head circuit: everything that fixes its layout. The weights'
/// values (the fixed columns) complete the verifying key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadShape {
    /// Vocabulary, fixed point, steps per proof and logit lanes.
    pub step: CircuitShape,
    /// `d`.
    pub hidden: usize,
    pub format: HeadFormat,
    /// `c`: products per row.
    pub columns: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeadConfigureShape {
    lanes: usize,
    poseidon_lanes: usize,
    fixed_point: FixedPoint,
    columns: usize,
    hidden: usize,
}

thread_local! {
    static HEAD_CONFIGURE_SHAPE: Cell<Option<HeadConfigureShape>> = const { Cell::new(None) };
}

impl HeadShape {
    /// A shape with the fewest product columns that keep `k` at its minimum.
    pub fn new(
        vocab: usize,
        hidden: usize,
        fixed_point: FixedPoint,
        steps: usize,
        lanes: usize,
    ) -> Result<HeadShape, HeadError> {
        let widest = Self::with_columns(vocab, hidden, fixed_point, steps, lanes, hidden)?;
        let k = widest.k();
        // Fewer columns: fewer committed polynomials at the same k.
        for columns in 1..hidden {
            let p = hidden.div_ceil(columns);
            let columns = hidden.div_ceil(p);
            let shape = HeadShape { columns, ..widest };
            if shape.k() == k {
                return Ok(shape);
            }
        }
        Ok(widest)
    }

    /// A shape with `columns` products per row.
    pub fn with_columns(
        vocab: usize,
        hidden: usize,
        fixed_point: FixedPoint,
        steps: usize,
        lanes: usize,
        columns: usize,
    ) -> Result<HeadShape, HeadError> {
        if !(1..=MAX_HIDDEN).contains(&hidden) {
            return Err(HeadError::Hidden(hidden));
        }
        if !(1..=hidden).contains(&columns) {
            return Err(HeadError::Columns { columns, hidden });
        }
        let step = CircuitShape::new(vocab, fixed_point, steps, lanes)?;
        let shape = HeadShape {
            step,
            hidden,
            format: HeadFormat::default_for(fixed_point),
            columns,
        };
        let k = shape.k();
        if k > 22 {
            return Err(HeadError::TooLarge(k));
        }
        Ok(shape)
    }

    pub fn vocab(&self) -> usize {
        self.step.vocab
    }

    pub fn steps(&self) -> usize {
        self.step.steps
    }

    /// `P`: rows per logit in the product region.
    pub fn rows_per_logit(&self) -> usize {
        self.hidden.div_ceil(self.columns)
    }

    /// Rows of the head's product and hidden regions, all steps.
    pub fn head_rows(&self) -> usize {
        self.steps() * HeadChip::rows(self.vocab(), self.hidden, self.rows_per_logit())
    }

    /// Rows of the shared range-check column, all steps.
    pub fn range_rows(&self) -> usize {
        self.steps()
            * (StepCheckChip::range_rows() + HeadChip::range_rows(self.vocab(), self.hidden))
    }

    /// Rows of the constants column, all steps.
    fn constant_rows(&self) -> usize {
        self.steps() * (STEP_CONSTANTS + HeadChip::constants(self.vocab(), self.hidden))
    }

    /// Poseidon rows of one step's `C_h`.
    fn commitment_rows(&self) -> usize {
        let chunks = self
            .hidden
            .div_ceil(HIDDEN_LIMBS_PER_ELEMENT)
            .div_ceil(commitment::CHUNK_ELEMENTS);
        chunks * (commitment::ROWS_PER_CHUNK + commitment::ROWS_PER_FOLD)
    }

    /// Rows needed by everything but the commitments.
    fn rows_without_commitments(&self) -> usize {
        [
            self.step.lane_rows(),
            self.steps() * STEP_CHECK_ROWS,
            self.range_rows(),
            self.constant_rows(),
            self.head_rows(),
            1 << TABLE_BITS,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + RESERVED_ROWS
    }

    /// `log2` of the number of rows.
    pub fn k(&self) -> u32 {
        // Chunks are placed whole in a lane: allow one chunk of slack per lane.
        let per_lane = (self.steps() * self.commitment_rows()).div_ceil(self.poseidon_lanes())
            + commitment::ROWS_PER_CHUNK
            + RESERVED_ROWS;
        self.rows_without_commitments()
            .max(per_lane)
            .next_power_of_two()
            .trailing_zeros()
    }

    /// Usable rows per column at `k`.
    pub fn usable_rows(&self) -> usize {
        (1 << self.k()) - RESERVED_ROWS
    }

    /// Poseidon lanes: enough that the commitments do not raise `k`.
    pub fn poseidon_lanes(&self) -> usize {
        let rows = self.rows_without_commitments().next_power_of_two();
        let usable = rows.saturating_sub(RESERVED_ROWS + commitment::ROWS_PER_CHUNK);
        (self.steps() * self.commitment_rows())
            .div_ceil(usable.max(1))
            .max(1)
    }

    /// Advice columns of the circuit.
    pub fn advice_columns(&self) -> usize {
        3 + 11 * self.step.lanes + 4 + 1 + 4 * self.poseidon_lanes() + self.columns + 4
    }

    /// Fixed columns of the circuit (not counting selectors and lookup tables).
    pub fn fixed_columns(&self) -> usize {
        1 + 6 * self.poseidon_lanes() + self.columns
    }

    /// A short stable description.
    pub fn describe(&self) -> String {
        format!(
            "decode-step-head v1 V={} d={} F={} Q={} Fh={} Fw={} T={} L={} c={}",
            self.vocab(),
            self.hidden,
            self.step.fixed_point.frac_bits,
            self.step.fixed_point.exp_bits,
            self.format.hidden_frac,
            self.format.weight_frac,
            self.steps(),
            self.step.lanes,
            self.columns
        )
    }

    fn configure_shape(&self) -> HeadConfigureShape {
        HeadConfigureShape {
            lanes: self.step.lanes,
            poseidon_lanes: self.poseidon_lanes(),
            fixed_point: self.step.fixed_point,
            columns: self.columns,
            hidden: self.hidden,
        }
    }

    /// Runs `f` (keygen, proving, mock proving) with this shape visible to
    /// `Circuit::configure`.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = HEAD_CONFIGURE_SHAPE.with(|s| s.replace(Some(self.configure_shape())));
        let result = f();
        HEAD_CONFIGURE_SHAPE.with(|s| s.set(previous));
        result
    }
}

#[derive(Clone, Debug)]
pub struct HeadDecodeStepConfig {
    instance: Column<Instance>,
    table: TableConfig,
    lanes: LaneConfig,
    step_check: StepCheckConfig,
    range: RangeCheckConfig,
    commitment: CommitmentConfig,
    head: HeadConfig,
}

/// `T` head decode steps. The weights are the circuit's fixed columns.
#[derive(Clone, Debug)]
pub struct HeadDecodeStepCircuit {
    pub shape: HeadShape,
    pub weights: Arc<HeadWeights>,
    pub steps: Vec<HeadStepWitness>,
}

impl HeadDecodeStepCircuit {
    /// A circuit proving `steps` (exactly `shape.steps()` of them) with `weights`.
    pub fn new(shape: HeadShape, weights: Arc<HeadWeights>, steps: Vec<HeadStepWitness>) -> Self {
        HeadDecodeStepCircuit {
            shape,
            weights,
            steps,
        }
    }

    /// The layout of `shape` with `weights` and a zero hidden state: what key
    /// generation needs.
    pub fn placeholder(
        shape: HeadShape,
        weights: Arc<HeadWeights>,
    ) -> Result<HeadDecodeStepCircuit, HeadError> {
        Self::check_weights(&shape, &weights)?;
        let tables = Tables::new(shape.step.fixed_point);
        let step = HeadStepWitness::new(
            &weights,
            &tables,
            shape.step.fixed_point,
            vec![0; shape.hidden],
            0,
            Sampler::Greedy,
        )?;
        Ok(HeadDecodeStepCircuit {
            shape,
            weights,
            steps: vec![step; shape.steps()],
        })
    }

    /// Checks that `weights` fit `shape`.
    pub fn check_weights(shape: &HeadShape, weights: &HeadWeights) -> Result<(), HeadError> {
        shape.format.validate(shape.step.fixed_point)?;
        if weights.vocab != shape.vocab()
            || weights.hidden != shape.hidden
            || weights.format != shape.format
        {
            return Err(HeadError::Format(format!(
                "weights are V = {}, d = {}, {:?}; the shape is {}",
                weights.vocab,
                weights.hidden,
                weights.format,
                shape.describe()
            )));
        }
        Ok(())
    }

    /// The instance column for statements (one per step, in order).
    pub fn instance(statements: &[StepStatement]) -> Vec<Fp> {
        statements.iter().flat_map(|s| s.instance()).collect()
    }
}

impl Circuit<Fp> for HeadDecodeStepCircuit {
    type Config = HeadDecodeStepConfig;
    type FloorPlanner = SimpleFloorPlanner;

    fn without_witnesses(&self) -> Self {
        // Keygen reads fixed columns (the weights) and selectors only.
        self.clone()
    }

    fn configure(meta: &mut ConstraintSystem<Fp>) -> HeadDecodeStepConfig {
        let shape = HEAD_CONFIGURE_SHAPE
            .with(|s| s.get())
            .expect("HeadDecodeStepCircuit::configure must run inside HeadShape::scope");
        let constants = meta.fixed_column();
        meta.enable_constant(constants);
        let instance = meta.instance_column();
        meta.enable_equality(instance);

        let tables = Tables::new(shape.fixed_point);
        let table = TableConfig::configure(meta);
        let lanes = LaneChip::configure(meta, shape.lanes, table, Fp::from(tables.exp[0]));
        let check_cols = std::array::from_fn(|_| meta.advice_column());
        let step_check = StepCheckChip::configure(
            meta,
            check_cols,
            table,
            (Fp::from_u128(tables.lse[0]), Fp::from_u128(tables.lse[1])),
        );
        let running = meta.advice_column();
        let range = RangeCheckChip::configure(meta, running, table);
        let commitment = CommitmentChip::configure(meta, shape.poseidon_lanes);
        let head = HeadChip::configure(meta, shape.columns, shape.hidden);
        HeadDecodeStepConfig {
            instance,
            table,
            lanes,
            step_check,
            range,
            commitment,
            head,
        }
    }

    fn synthesize(
        &self,
        config: HeadDecodeStepConfig,
        mut layouter: impl Layouter<Fp>,
    ) -> Result<(), Error> {
        let shape = self.shape;
        if Self::check_weights(&shape, &self.weights).is_err()
            || self.steps.len() != shape.steps()
            || self
                .steps
                .iter()
                .any(|s| s.step.rows.len() != shape.vocab() || s.hidden.len() != shape.hidden)
        {
            return Err(Error::Synthesis);
        }
        let tables = Tables::new(shape.step.fixed_point);
        config.table.load(&mut layouter, &tables)?;
        let lanes = LaneChip::construct(config.lanes.clone());
        let range = RangeCheckChip::construct(config.range);
        let check = StepCheckChip::construct(config.step_check, range);
        let head = HeadChip::construct(config.head.clone(), self.weights.clone(), range);
        let mut commit = CommitmentChip::construct(config.commitment.clone());
        let tag = hidden_domain_tag(shape.hidden, shape.format);
        for (index, witness) in self.steps.iter().enumerate() {
            let step = &witness.step;
            let cells = lanes.assign_step(
                layouter.namespace(|| format!("step {index} lanes")),
                step,
                shape.step.rows_per_lane(),
            )?;
            check.assign(
                layouter.namespace(|| format!("step {index} check")),
                config.instance,
                index,
                step,
                &tables,
                &cells,
            )?;
            let hidden = head.assign_hidden(
                layouter.namespace(|| format!("step {index} hidden")),
                &witness.hidden,
            )?;
            let logits = head.assign_logits(
                layouter.namespace(|| format!("step {index} head")),
                &hidden,
                &step.logits,
                &witness.remainders,
            )?;
            if logits.len() != cells.elements.len() {
                return Err(Error::Synthesis);
            }
            layouter.assign_region(
                || format!("step {index} head to lanes"),
                |mut region| {
                    for (head_element, lane_element) in logits.iter().zip(&cells.elements) {
                        region.constrain_equal(head_element.cell(), lane_element.cell())?;
                    }
                    Ok(())
                },
            )?;
            let c_h = commit.commit_packed(
                layouter.namespace(|| format!("step {index} hidden commitment")),
                tag,
                &hidden.elements,
            )?;
            layouter.constrain_instance(
                c_h.cell(),
                config.instance,
                INSTANCE_PER_STEP * index + instance_row::COMMITMENT,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
