//! The logit lanes: one row per vocabulary entry, `L` lanes side by side.
//!
//! A step occupies one region: a carry row, then `R` rows in which lane `j` holds
//! vocabulary indices `j R .. (j + 1) R`. Running columns (`sum`, `before`, `acc`) continue from the
//! last row of lane `j` into the carry row of lane `j + 1`, so they run over the
//! whole vocabulary in order. The step constants `m` (maximum logit), `beta` and
//! `g` (greedy flag) sit in shared columns, equal on every row.
//!
//! Per row, with `A` = `before` (1 for indices before the token, then 0) and
//! `h = A_prev - A` (1 exactly at the token):
//! - `d = d_lo + 2^16 d_hi`, `d_lo` in 16 bits, `d_hi` in 9 bits: `u = d + g A >= 0`
//!   is the distance `m - z` of the logit from the maximum. Under greedy decoding
//!   indices before the token have `u >= 1`: the token is the *first* maximum.
//! - `w = w_lo + 2^16 w_hi` (16 + 16 bits) and `rem` (9 bits) with
//!   `u beta = 2^9 w + rem`: `w = floor(u beta / 2^9)`, the tempered distance.
//! - `(w_lo, t)` is a row of the exp table, `w_hi (1 - w_hi inv) = 0` and
//!   `e = t (1 - w_hi inv)`: `e = T[w]` when `w < 2^16`, else 0.
//! - `sum = sum_prev + e`: the inclusive prefix sum of the exponentials.
//! - `A` boolean, `h` boolean: the token index is unique; under greedy `g h u = 0`:
//!   the token's logit is `m`.
//! - `acc = acc_prev + h (sum + 2^70 e + 2^140 w) + 2^210 A`: at the end of the
//!   vocabulary `acc = P_{y+1} + 2^70 e_y + 2^140 w_y + 2^210 y`, which the step check
//!   splits (its parts are range-checked there).
//! - `z = m - u`: the logit itself. The `z` columns hold nothing else (0 on every
//!   row a logit does not use), so the proof's own commitments to them are the
//!   commitment to the logits (`crate::opening`).

use ff::{Field as _, PrimeField as _};
use halo2_proofs::{
    circuit::{AssignedCell, Layouter, Value},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Selector, VirtualCells},
    poly::Rotation,
};

use super::table::TableConfig;
use super::{known, known_signed};
use crate::fixed_point::{TABLE_BITS, TEMP_SHIFT};
use crate::witness::StepWitness;

/// The advice columns of one lane.
#[derive(Clone, Copy, Debug)]
pub struct LaneColumns {
    d_lo: Column<Advice>,
    d_hi: Column<Advice>,
    w_lo: Column<Advice>,
    w_hi: Column<Advice>,
    rem: Column<Advice>,
    t: Column<Advice>,
    inv: Column<Advice>,
    sum: Column<Advice>,
    before: Column<Advice>,
    acc: Column<Advice>,
    z: Column<Advice>,
    q_row: Selector,
}

#[derive(Clone, Debug)]
pub struct LaneConfig {
    lanes: Vec<LaneColumns>,
    max: Column<Advice>,
    beta: Column<Advice>,
    greedy: Column<Advice>,
    q_body: Selector,
}

/// Cells of an assigned step that other chips need.
#[derive(Clone, Debug)]
pub struct StepCells {
    pub max: AssignedCell<Fp, Fp>,
    pub beta: AssignedCell<Fp, Fp>,
    pub greedy: AssignedCell<Fp, Fp>,
    /// `S`, the sum over the whole vocabulary.
    pub sum: AssignedCell<Fp, Fp>,
    /// `before` after the last index: must be 0.
    pub before_end: AssignedCell<Fp, Fp>,
    pub acc: AssignedCell<Fp, Fp>,
}

impl LaneConfig {
    /// The logit column of each lane, in lane order.
    pub fn logit_columns(&self) -> Vec<Column<Advice>> {
        self.lanes.iter().map(|l| l.z).collect()
    }
}

pub fn pow2(bits: u32) -> Expression<Fp> {
    Expression::Constant(Fp::from_u128(1u128 << bits))
}

/// Shifts of the parts of `acc`.
pub const ACC_SHIFT_E: u32 = 70;
pub const ACC_SHIFT_W: u32 = 140;
pub const ACC_SHIFT_Y: u32 = 210;

fn acc_shift(bits: u32) -> Expression<Fp> {
    let two = Fp::from(2);
    Expression::Constant(two.pow_vartime([bits as u64]))
}

pub struct LaneChip {
    config: LaneConfig,
}

impl LaneChip {
    /// `exp_at_zero` is `T[0] = 2^Q`, the table row that disabled exp lookups hit.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        lanes: usize,
        table: TableConfig,
        exp_at_zero: Fp,
    ) -> LaneConfig {
        let max = meta.advice_column();
        let beta = meta.advice_column();
        let greedy = meta.advice_column();
        for c in [max, beta, greedy] {
            meta.enable_equality(c);
        }
        let q_body = meta.selector();

        meta.create_gate("step constants", |meta| {
            let q = meta.query_selector(q_body);
            [max, beta, greedy].map(|c| {
                q.clone()
                    * (meta.query_advice(c, Rotation::cur())
                        - meta.query_advice(c, Rotation::prev()))
            })
        });

        let lanes = (0..lanes)
            .map(|_| {
                let lane = LaneColumns {
                    d_lo: meta.advice_column(),
                    d_hi: meta.advice_column(),
                    w_lo: meta.advice_column(),
                    w_hi: meta.advice_column(),
                    rem: meta.advice_column(),
                    t: meta.advice_column(),
                    inv: meta.advice_column(),
                    sum: meta.advice_column(),
                    before: meta.advice_column(),
                    acc: meta.advice_column(),
                    z: meta.advice_column(),
                    q_row: meta.complex_selector(),
                };
                for c in [lane.sum, lane.before, lane.acc] {
                    meta.enable_equality(c);
                }
                Self::configure_lane(meta, lane, max, beta, greedy, table, exp_at_zero);
                lane
            })
            .collect();

        LaneConfig {
            lanes,
            max,
            beta,
            greedy,
            q_body,
        }
    }

    fn configure_lane(
        meta: &mut ConstraintSystem<Fp>,
        lane: LaneColumns,
        max: Column<Advice>,
        beta: Column<Advice>,
        greedy: Column<Advice>,
        table: TableConfig,
        exp_at_zero: Fp,
    ) {
        let cur = |meta: &mut VirtualCells<'_, Fp>, c| meta.query_advice(c, Rotation::cur());
        let prev = |meta: &mut VirtualCells<'_, Fp>, c| meta.query_advice(c, Rotation::prev());
        let one = || Expression::Constant(Fp::one());

        meta.create_gate("logit row", |meta| {
            let q = meta.query_selector(lane.q_row);
            let (m, beta, g) = (cur(meta, max), cur(meta, beta), cur(meta, greedy));
            let d = cur(meta, lane.d_lo) + pow2(TABLE_BITS) * cur(meta, lane.d_hi);
            let w = cur(meta, lane.w_lo) + pow2(TABLE_BITS) * cur(meta, lane.w_hi);
            let (a, a_prev) = (cur(meta, lane.before), prev(meta, lane.before));
            let u = d + g.clone() * a.clone();
            let (w_hi, inv) = (cur(meta, lane.w_hi), cur(meta, lane.inv));
            let e = cur(meta, lane.t) * (one() - w_hi.clone() * inv.clone());
            let h = a_prev - a.clone();
            let sum = cur(meta, lane.sum);
            let z = cur(meta, lane.z);
            vec![
                (
                    "tempered distance",
                    u.clone() * beta - pow2(TEMP_SHIFT) * w.clone() - cur(meta, lane.rem),
                ),
                (
                    "exp is zero past the table",
                    w_hi.clone() * (one() - w_hi * inv),
                ),
                (
                    "running sum",
                    sum.clone() - prev(meta, lane.sum) - e.clone(),
                ),
                ("before is boolean", a.clone() * (one() - a.clone())),
                ("one token", h.clone() * (one() - h.clone())),
                ("greedy token is the maximum", g * h.clone() * u.clone()),
                (
                    "extract token row",
                    cur(meta, lane.acc)
                        - prev(meta, lane.acc)
                        - h * (sum + acc_shift(ACC_SHIFT_E) * e + acc_shift(ACC_SHIFT_W) * w)
                        - acc_shift(ACC_SHIFT_Y) * a,
                ),
                ("logit value", z - (m - u)),
            ]
            .into_iter()
            .map(move |(name, poly)| (name, q.clone() * poly))
            .collect::<Vec<_>>()
        });

        // Lookups: the input is 0 on rows where the lane is off; row 0 of the table
        // is (0, T[0]), so the exp lookup defaults to that.
        let gated =
            |meta: &mut VirtualCells<'_, Fp>, c| meta.query_selector(lane.q_row) * cur(meta, c);
        meta.lookup(|meta| vec![(gated(meta, lane.d_lo), table.idx)]);
        meta.lookup(|meta| vec![(gated(meta, lane.d_hi), table.small)]);
        meta.lookup(|meta| {
            let q = meta.query_selector(lane.q_row);
            vec![
                (gated(meta, lane.w_lo), table.idx),
                (
                    q.clone() * cur(meta, lane.t) + (one() - q) * Expression::Constant(exp_at_zero),
                    table.exp,
                ),
            ]
        });
        meta.lookup(|meta| vec![(gated(meta, lane.w_hi), table.idx)]);
        meta.lookup(|meta| vec![(gated(meta, lane.rem), table.small)]);
    }
}

impl LaneChip {
    pub fn construct(config: LaneConfig) -> Self {
        LaneChip { config }
    }

    pub fn lanes(&self) -> usize {
        self.config.lanes.len()
    }

    /// Assigns one step: `rows_per_lane` rows per lane (a multiple of 9).
    pub fn assign_step(
        &self,
        mut layouter: impl Layouter<Fp>,
        step: &StepWitness,
        rows_per_lane: usize,
    ) -> Result<StepCells, Error> {
        let config = &self.config;
        let vocab = step.rows.len();
        let (greedy, beta) = match step.statement.sampler {
            crate::statement::Sampler::Greedy => (1u128, crate::fixed_point::BETA_ONE as u128),
            crate::statement::Sampler::Sample { beta, .. } => (0, beta as u128),
        };
        layouter.assign_region(
            || "logit lanes",
            |mut region| {
                // Step constants on every row.
                let mut constants = None;
                for row in 0..=rows_per_lane.min(vocab) {
                    if row > 0 {
                        config.q_body.enable(&mut region, row)?;
                    }
                    let max = region.assign_advice(
                        || "m",
                        config.max,
                        row,
                        || known_signed(step.max_logit as i128),
                    )?;
                    let b = region.assign_advice(|| "beta", config.beta, row, || known(beta))?;
                    let g = region.assign_advice(|| "g", config.greedy, row, || known(greedy))?;
                    if row == 0 {
                        constants = Some((max, b, g));
                    }
                }
                let (max, beta_cell, greedy_cell) = constants.expect("row 0 assigned");

                let mut carry: Option<[AssignedCell<Fp, Fp>; 3]> = None;
                let mut sum = 0u128;
                let mut acc = Fp::zero();
                let shift_e = Fp::from(2).pow_vartime([ACC_SHIFT_E as u64]);
                let shift_w = Fp::from(2).pow_vartime([ACC_SHIFT_W as u64]);
                let shift_y = Fp::from(2).pow_vartime([ACC_SHIFT_Y as u64]);
                for (lane_index, lane) in config.lanes.iter().enumerate() {
                    let start = lane_index * rows_per_lane;
                    let end = ((lane_index + 1) * rows_per_lane).min(vocab);
                    if start >= end {
                        break;
                    }
                    // Carry row: continue the running columns.
                    let carried = match &carry {
                        None => [
                            region.assign_advice_from_constant(
                                || "sum_0",
                                lane.sum,
                                0,
                                Fp::zero(),
                            )?,
                            region.assign_advice_from_constant(
                                || "before_0",
                                lane.before,
                                0,
                                Fp::one(),
                            )?,
                            region.assign_advice_from_constant(
                                || "acc_0",
                                lane.acc,
                                0,
                                Fp::zero(),
                            )?,
                        ],
                        Some([s, a, x]) => [
                            s.copy_advice(|| "sum carry", &mut region, lane.sum, 0)?,
                            a.copy_advice(|| "before carry", &mut region, lane.before, 0)?,
                            x.copy_advice(|| "acc carry", &mut region, lane.acc, 0)?,
                        ],
                    };
                    let mut last = carried;
                    for index in start..end {
                        let row = index - start + 1;
                        let r = &step.rows[index];
                        lane.q_row.enable(&mut region, row)?;
                        let w = super::signed(r.distance() as i128);
                        let token_row = index == step.statement.token as usize;
                        sum += r.e as u128;
                        if token_row {
                            acc += Fp::from_u128(sum) + shift_e * Fp::from(r.e) + shift_w * w;
                        }
                        if r.before {
                            acc += shift_y;
                        }
                        let w_hi = super::signed(r.w_hi as i128);
                        // Most rows are inside the table (w_hi = 0), and an
                        // inversion costs microseconds: V of them add up.
                        let inv = if r.w_hi == 0 {
                            Fp::zero()
                        } else {
                            w_hi.invert().unwrap_or(Fp::zero())
                        };
                        for (name, column, value) in [
                            ("d_lo", lane.d_lo, Fp::from(r.d_lo)),
                            ("d_hi", lane.d_hi, super::signed(r.d_hi as i128)),
                            ("w_lo", lane.w_lo, Fp::from(r.w_lo)),
                            ("w_hi", lane.w_hi, w_hi),
                            ("rem", lane.rem, Fp::from(r.rem)),
                            ("t", lane.t, Fp::from(r.t)),
                            ("inv", lane.inv, inv),
                        ] {
                            region.assign_advice(|| name, column, row, || Value::known(value))?;
                        }
                        last = [
                            region.assign_advice(|| "sum", lane.sum, row, || known(sum))?,
                            region.assign_advice(
                                || "before",
                                lane.before,
                                row,
                                || known(r.before as u128),
                            )?,
                            region.assign_advice(|| "acc", lane.acc, row, || Value::known(acc))?,
                        ];
                        region.assign_advice(
                            || "z",
                            lane.z,
                            row,
                            || known_signed(step.logits[index] as i128),
                        )?;
                    }
                    carry = Some(last);
                }
                let [sum, before_end, acc] = carry.expect("vocab >= 1");
                Ok(StepCells {
                    max: max.clone(),
                    beta: beta_cell.clone(),
                    greedy: greedy_cell.clone(),
                    sum,
                    before_end,
                    acc,
                })
            },
        )
    }
}
