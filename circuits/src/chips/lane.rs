//! The logit lanes: one row per vocabulary entry, `L` lanes side by side.
//!
//! A step occupies one region: a carry row, then `R` rows in which lane `j` holds
//! vocabulary indices `j R .. (j + 1) R`. Running columns (`sum`, `before`, `acc`)
//! start at `(0, 1, 0)` in lane 0's carry row and continue from the last row of
//! lane `j` into the carry row of lane `j + 1` (a gate at rotation `R`, not a copy:
//! only the last lane's running columns take part in the permutation argument),
//! so they run over the whole vocabulary in order. Every lane but the last is
//! full. The step constants `m` (maximum logit) and `g` (greedy flag) sit in
//! shared columns, equal on every row.
//!
//! Per row, with `A` = `before` (1 for indices before the token, then 0),
//! `h = A_prev - A` (1 exactly at the token) and `u = m - z` the distance of the
//! logit `z` from the maximum:
//! - `(u_lo, t_lo, t_hi, nonzero)` is a row of the exp table: `u_lo` is in 16 bits,
//!   `t_lo = T[u_lo]`, `t_hi = T[u_lo + 2^16]`, `nonzero = [u_lo != 0]`;
//! - `u_hi = (u - u_lo) / 2^16` is in 8 bits, so `0 <= u < 2^24`, and `is_zero`,
//!   `is_one` say whether it is 0 or 1: one lookup of the pair table checks the
//!   high limbs and flags of two lanes (lanes `2j` and `2j + 1`; an odd last lane
//!   pairs with a constant 0);
//! - `e = is_zero t_lo + is_one t_hi`: `e = T[u]`, which is 0 for `u >= 2^17`;
//! - `sum = sum_prev + e`: the inclusive prefix sum of the exponentials;
//! - `A` boolean, `h` boolean: the token index is unique; under greedy `g h u = 0`
//!   (the token's logit is `m`) and `g A is_zero (1 - nonzero) = 0` (indices
//!   before it have `u >= 1`: the token is the *first* maximum);
//! - `acc = acc_prev + h (sum + 2^70 e + 2^140 u) + 2^210 A`: at the end of the
//!   vocabulary `acc = P_{y+1} + 2^70 e_y + 2^140 u_y + 2^210 y`, which the step
//!   check splits (its parts are range-checked there).
//!
//! The `z` columns hold the logits and nothing else (0 on every row a logit
//! does not use), so the proof's own commitments to them are the commitment to
//! the logits (`crate::opening`).

use ff::{Field as _, PrimeField as _};
use halo2_proofs::{
    circuit::{AssignedCell, Chip, Layouter, Value},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Selector, VirtualCells},
    poly::Rotation,
};

use super::table::TableConfig;
use super::{known, known_signed};
use crate::fixed_point::TABLE_BITS;
use crate::witness::LogitRow;

/// The advice columns of one lane.
#[derive(Clone, Copy, Debug)]
pub struct LaneColumns {
    u_lo: Column<Advice>,
    t_lo: Column<Advice>,
    t_hi: Column<Advice>,
    nonzero: Column<Advice>,
    is_zero: Column<Advice>,
    is_one: Column<Advice>,
    sum: Column<Advice>,
    before: Column<Advice>,
    acc: Column<Advice>,
    z: Column<Advice>,
    q_row: Selector,
}

/// Advice columns per lane.
pub const LANE_COLUMNS: usize = 10;
/// Advice columns shared by the lanes (`m`, `g`).
pub const SHARED_COLUMNS: usize = 2;

#[derive(Clone, Debug)]
pub struct LaneConfig {
    lanes: Vec<LaneColumns>,
    max: Column<Advice>,
    greedy: Column<Advice>,
    q_body: Selector,
    /// On each step's carry row.
    q_carry: Selector,
}

impl LaneConfig {
    /// The logit column of each lane, in lane order.
    pub fn logit_columns(&self) -> Vec<Column<Advice>> {
        self.lanes.iter().map(|l| l.z).collect()
    }
}

/// What one step's lanes hold.
#[derive(Clone, Copy, Debug)]
pub struct LaneValues<'a> {
    /// `m`, the claimed maximum logit.
    pub max: i64,
    pub greedy: bool,
    pub logits: &'a [i64],
    /// One row per logit, `before` marking the indices before the token.
    pub rows: &'a [LogitRow],
    pub rows_per_lane: usize,
}

/// Cells of an assigned step that other chips need.
#[derive(Clone, Debug)]
pub struct StepCells {
    pub max: AssignedCell<Fp, Fp>,
    pub greedy: AssignedCell<Fp, Fp>,
    /// `S`, the sum over the whole vocabulary.
    pub sum: AssignedCell<Fp, Fp>,
    /// `before` after the last index: must be 0.
    pub before_end: AssignedCell<Fp, Fp>,
    pub acc: AssignedCell<Fp, Fp>,
}

/// Lays out the logit rows of one step.
pub trait LaneInstructions: Chip<Fp> {
    fn assign_step(
        &self,
        layouter: impl Layouter<Fp>,
        values: LaneValues<'_>,
    ) -> Result<StepCells, Error>;
}

pub fn pow2(bits: u32) -> Expression<Fp> {
    Expression::Constant(Fp::from_u128(1u128 << bits))
}

/// Shifts of the parts of `acc`.
pub const ACC_SHIFT_E: u32 = 70;
pub const ACC_SHIFT_U: u32 = 140;
pub const ACC_SHIFT_Y: u32 = 210;

fn acc_shift(bits: u32) -> Fp {
    Fp::from(2).pow_vartime([bits as u64])
}

pub struct LaneChip {
    config: LaneConfig,
}

impl Chip<Fp> for LaneChip {
    type Config = LaneConfig;
    type Loaded = ();

    fn config(&self) -> &LaneConfig {
        &self.config
    }

    fn loaded(&self) -> &() {
        &()
    }
}

impl LaneChip {
    pub fn construct(config: LaneConfig) -> Self {
        LaneChip { config }
    }

    /// `exp_at_zero` is `(T[0], T[2^16])`, the table row that disabled exp
    /// lookups hit.
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        lanes: usize,
        rows_per_lane: usize,
        table: TableConfig,
        exp_at_zero: (Fp, Fp),
    ) -> LaneConfig {
        let max = meta.advice_column();
        let greedy = meta.advice_column();
        for c in [max, greedy] {
            meta.enable_equality(c);
        }
        let q_body = meta.selector();

        meta.create_gate("step constants", |meta| {
            let q = meta.query_selector(q_body);
            [max, greedy].map(|c| {
                q.clone()
                    * (meta.query_advice(c, Rotation::cur())
                        - meta.query_advice(c, Rotation::prev()))
            })
        });

        let lanes = (0..lanes)
            .map(|_| {
                let lane = LaneColumns {
                    u_lo: meta.advice_column(),
                    t_lo: meta.advice_column(),
                    t_hi: meta.advice_column(),
                    nonzero: meta.advice_column(),
                    is_zero: meta.advice_column(),
                    is_one: meta.advice_column(),
                    sum: meta.advice_column(),
                    before: meta.advice_column(),
                    acc: meta.advice_column(),
                    z: meta.advice_column(),
                    q_row: meta.complex_selector(),
                };
                Self::configure_lane(meta, lane, max, greedy, table, exp_at_zero);
                lane
            })
            .collect::<Vec<_>>();
        let last = lanes.last().expect("at least one lane");
        for c in [last.sum, last.before, last.acc] {
            meta.enable_equality(c);
        }
        let q_carry = meta.selector();
        Self::configure_carry(meta, &lanes, rows_per_lane, q_carry);
        for pair in lanes.chunks(2) {
            Self::configure_high_limbs(meta, pair, max, table);
        }

        LaneConfig {
            lanes,
            max,
            greedy,
            q_body,
            q_carry,
        }
    }

    /// The running columns start at `(0, 1, 0)` in lane 0 and continue from
    /// the last row of each lane (`R` rows below the carry row) into the next.
    fn configure_carry(
        meta: &mut ConstraintSystem<Fp>,
        lanes: &[LaneColumns],
        rows_per_lane: usize,
        q_carry: Selector,
    ) {
        let last_row = Rotation(i32::try_from(rows_per_lane).expect("rows per lane fit in i32"));
        meta.create_gate("lane carry", |meta| {
            let q = meta.query_selector(q_carry);
            let running = |lane: &LaneColumns| [lane.sum, lane.before, lane.acc];
            let first = running(&lanes[0]).map(|c| meta.query_advice(c, Rotation::cur()));
            let [sum, before, acc] = first;
            let mut polys = vec![
                q.clone() * sum,
                q.clone() * (before - Expression::Constant(Fp::one())),
                q.clone() * acc,
            ];
            for pair in lanes.windows(2) {
                for (from, to) in running(&pair[0]).into_iter().zip(running(&pair[1])) {
                    polys.push(
                        q.clone()
                            * (meta.query_advice(to, Rotation::cur())
                                - meta.query_advice(from, last_row)),
                    );
                }
            }
            polys
        });
    }

    fn configure_lane(
        meta: &mut ConstraintSystem<Fp>,
        lane: LaneColumns,
        max: Column<Advice>,
        greedy: Column<Advice>,
        table: TableConfig,
        exp_at_zero: (Fp, Fp),
    ) {
        let cur = |meta: &mut VirtualCells<'_, Fp>, c| meta.query_advice(c, Rotation::cur());
        let prev = |meta: &mut VirtualCells<'_, Fp>, c| meta.query_advice(c, Rotation::prev());
        let one = || Expression::Constant(Fp::one());
        let distance = |meta: &mut VirtualCells<'_, Fp>| cur(meta, max) - cur(meta, lane.z);

        meta.create_gate("logit row", |meta| {
            let q = meta.query_selector(lane.q_row);
            let g = cur(meta, greedy);
            let u = distance(meta);
            let (a, a_prev) = (cur(meta, lane.before), prev(meta, lane.before));
            let is_zero = cur(meta, lane.is_zero);
            let e = is_zero.clone() * cur(meta, lane.t_lo)
                + cur(meta, lane.is_one) * cur(meta, lane.t_hi);
            let h = a_prev - a.clone();
            let sum = cur(meta, lane.sum);
            vec![
                (
                    "running sum",
                    sum.clone() - prev(meta, lane.sum) - e.clone(),
                ),
                ("before is boolean", a.clone() * (one() - a.clone())),
                ("one token", h.clone() * (one() - h.clone())),
                (
                    "greedy token is the maximum",
                    g.clone() * h.clone() * u.clone(),
                ),
                (
                    "greedy token is the first maximum",
                    g * a.clone() * is_zero * (one() - cur(meta, lane.nonzero)),
                ),
                (
                    "extract token row",
                    cur(meta, lane.acc)
                        - prev(meta, lane.acc)
                        - h * (sum
                            + Expression::Constant(acc_shift(ACC_SHIFT_E)) * e
                            + Expression::Constant(acc_shift(ACC_SHIFT_U)) * u)
                        - Expression::Constant(acc_shift(ACC_SHIFT_Y)) * a,
                ),
            ]
            .into_iter()
            .map(move |(name, poly)| (name, q.clone() * poly))
            .collect::<Vec<_>>()
        });

        // Disabled rows look up row 0 of the table, (0, T[0], T[2^16], 0) and
        // (0, 1, 0).
        let or_default = |meta: &mut VirtualCells<'_, Fp>, value: Expression<Fp>, default: Fp| {
            let q = meta.query_selector(lane.q_row);
            q.clone() * value + (one() - q) * Expression::Constant(default)
        };
        meta.lookup(|meta| {
            let q = meta.query_selector(lane.q_row);
            let (u_lo, t_lo, t_hi) = (
                cur(meta, lane.u_lo),
                cur(meta, lane.t_lo),
                cur(meta, lane.t_hi),
            );
            vec![
                (q.clone() * u_lo, table.idx),
                (or_default(meta, t_lo, exp_at_zero.0), table.exp_lo),
                (or_default(meta, t_hi, exp_at_zero.1), table.exp_hi),
                (q * cur(meta, lane.nonzero), table.nonzero),
            ]
        });
    }

    /// One lookup for the high limbs of one or two lanes. Disabled rows look up
    /// row 0 of the table, `(0, 0, 1, 0, 1, 0)`.
    fn configure_high_limbs(
        meta: &mut ConstraintSystem<Fp>,
        pair: &[LaneColumns],
        max: Column<Advice>,
        table: TableConfig,
    ) {
        let inv_limb = Fp::from(1u64 << TABLE_BITS)
            .invert()
            .expect("2^16 is invertible");
        meta.lookup(|meta| {
            let one = Expression::Constant(Fp::one());
            let mut limb = |lane: &LaneColumns| {
                let q = meta.query_selector(lane.q_row);
                let u = meta.query_advice(max, Rotation::cur())
                    - meta.query_advice(lane.z, Rotation::cur());
                let u_hi = (u - meta.query_advice(lane.u_lo, Rotation::cur()))
                    * Expression::Constant(inv_limb);
                let is_zero = meta.query_advice(lane.is_zero, Rotation::cur());
                let is_one = meta.query_advice(lane.is_one, Rotation::cur());
                [
                    q.clone() * u_hi,
                    q.clone() * is_zero + (one.clone() - q.clone()),
                    q * is_one,
                ]
            };
            let [hi_a, zero_a, one_a] = limb(&pair[0]);
            let [hi_b, zero_b, one_b] = match pair.get(1) {
                Some(lane) => limb(lane),
                None => [
                    Expression::Constant(Fp::zero()),
                    Expression::Constant(Fp::one()),
                    Expression::Constant(Fp::zero()),
                ],
            };
            vec![
                (hi_a, table.pair_a),
                (hi_b, table.pair_b),
                (zero_a, table.a_is_zero),
                (one_a, table.a_is_one),
                (zero_b, table.b_is_zero),
                (one_b, table.b_is_one),
            ]
        });
    }
}

impl LaneInstructions for LaneChip {
    fn assign_step(
        &self,
        layouter: impl Layouter<Fp>,
        values: LaneValues<'_>,
    ) -> Result<StepCells, Error> {
        self.assign_step_with(layouter, values, |_, _| {})
    }
}

impl LaneChip {
    /// [`LaneInstructions::assign_step`], with `restart(lane, sum)` free to change
    /// the running sum a lane starts from: what a prover that drops or adds
    /// exponentials between lanes would do (the tests' cheat).
    fn assign_step_with(
        &self,
        mut layouter: impl Layouter<Fp>,
        values: LaneValues<'_>,
        restart: impl Fn(usize, &mut u128),
    ) -> Result<StepCells, Error> {
        let config = &self.config;
        let vocab = values.rows.len();
        let rows_per_lane = values.rows_per_lane;
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
                        || known_signed(values.max as i128),
                    )?;
                    let g = region.assign_advice(
                        || "g",
                        config.greedy,
                        row,
                        || known(u128::from(values.greedy)),
                    )?;
                    if row == 0 {
                        constants = Some((max, g));
                    }
                }
                let (max, greedy) = constants.expect("row 0 assigned");

                config.q_carry.enable(&mut region, 0)?;
                let mut last = None;
                let mut sum = 0u128;
                let mut acc = Fp::zero();
                let (shift_e, shift_u, shift_y) = (
                    acc_shift(ACC_SHIFT_E),
                    acc_shift(ACC_SHIFT_U),
                    acc_shift(ACC_SHIFT_Y),
                );
                let mut before_prev = true;
                for (lane_index, lane) in config.lanes.iter().enumerate() {
                    let start = lane_index * rows_per_lane;
                    let end = ((lane_index + 1) * rows_per_lane).min(vocab);
                    // Carry row: the running values so far.
                    restart(lane_index, &mut sum);
                    region.assign_advice(|| "sum carry", lane.sum, 0, || known(sum))?;
                    region.assign_advice(
                        || "before carry",
                        lane.before,
                        0,
                        || known(u128::from(before_prev)),
                    )?;
                    region.assign_advice(|| "acc carry", lane.acc, 0, || Value::known(acc))?;
                    for index in start..end {
                        let row = index - start + 1;
                        let r = &values.rows[index];
                        lane.q_row.enable(&mut region, row)?;
                        sum += r.e as u128;
                        // `h = 1` where `before` drops.
                        if before_prev && !r.before {
                            acc += Fp::from_u128(sum)
                                + shift_e * Fp::from(r.e)
                                + shift_u * super::signed(r.distance() as i128);
                        }
                        before_prev = r.before;
                        if r.before {
                            acc += shift_y;
                        }
                        for (name, column, value) in [
                            ("u_lo", lane.u_lo, Fp::from(r.u_lo)),
                            ("t_lo", lane.t_lo, Fp::from(r.t_lo)),
                            ("t_hi", lane.t_hi, Fp::from(r.t_hi)),
                            ("nonzero", lane.nonzero, Fp::from(u64::from(r.u_lo != 0))),
                            ("is_zero", lane.is_zero, Fp::from(u64::from(r.u_hi == 0))),
                            ("is_one", lane.is_one, Fp::from(u64::from(r.u_hi == 1))),
                            ("z", lane.z, super::signed(values.logits[index] as i128)),
                        ] {
                            region.assign_advice(|| name, column, row, || Value::known(value))?;
                        }
                        last = Some([
                            region.assign_advice(|| "sum", lane.sum, row, || known(sum))?,
                            region.assign_advice(
                                || "before",
                                lane.before,
                                row,
                                || known(r.before as u128),
                            )?,
                            region.assign_advice(|| "acc", lane.acc, row, || Value::known(acc))?,
                        ]);
                    }
                }
                // The shape keeps every lane non-empty, so these are the last lane's.
                let [sum, before_end, acc] = last.expect("vocab >= 1");
                Ok(StepCells {
                    max: max.clone(),
                    greedy: greedy.clone(),
                    sum,
                    before_end,
                    acc,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed_point::{FixedPoint, Temperature};
    use crate::statement::Sampler;
    use crate::tables::Tables;
    use crate::witness::{sample_token, StepWitness};
    use halo2_proofs::{
        circuit::SimpleFloorPlanner,
        dev::{FailureLocation, MockProver, VerifyFailure},
        plonk::Circuit,
    };

    const VOCAB: usize = 40;
    const LANES: usize = 2;
    const ROWS_PER_LANE: usize = VOCAB / LANES;

    /// One step in two lanes, lane 1 restarting its running sum from
    /// `sum + shift`.
    #[derive(Clone)]
    struct TwoLanes {
        step: StepWitness,
        shift: u128,
    }

    impl Circuit<Fp> for TwoLanes {
        type Config = (LaneConfig, TableConfig);
        type FloorPlanner = SimpleFloorPlanner;

        fn without_witnesses(&self) -> Self {
            self.clone()
        }

        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let tables = Tables::new(FixedPoint::default(), Temperature::ONE);
            let table = TableConfig::configure(meta);
            let exp_at_zero = (
                Fp::from(tables.exp[0]),
                Fp::from(tables.exp[crate::fixed_point::TABLE_ROWS]),
            );
            let lanes = LaneChip::configure(meta, LANES, ROWS_PER_LANE, table, exp_at_zero);
            (lanes, table)
        }

        fn synthesize(
            &self,
            (lanes, table): Self::Config,
            mut layouter: impl Layouter<Fp>,
        ) -> Result<(), Error> {
            table.load(
                &mut layouter,
                &Tables::new(FixedPoint::default(), Temperature::ONE),
            )?;
            let step = &self.step;
            LaneChip::construct(lanes).assign_step_with(
                layouter.namespace(|| "step"),
                LaneValues {
                    max: step.max_logit,
                    greedy: true,
                    logits: &step.logits,
                    rows: &step.rows,
                    rows_per_lane: ROWS_PER_LANE,
                },
                |lane, sum| {
                    if lane == 1 {
                        *sum += self.shift;
                    }
                },
            )?;
            Ok(())
        }
    }

    fn run(shift: u128) -> Result<(), Vec<VerifyFailure>> {
        let tables = Tables::new(FixedPoint::default(), Temperature::ONE);
        let logits: Vec<i64> = (0..VOCAB as i64)
            .map(|i| (i * 7919) % 4001 - 2000)
            .collect();
        let token = sample_token(&tables, &logits, Sampler::Greedy).unwrap();
        let step = StepWitness::new(&tables, logits, token, Sampler::Greedy).unwrap();
        MockProver::run(17, &TwoLanes { step, shift }, vec![])
            .expect("synthesis")
            .verify()
    }

    #[test]
    fn lanes_continue_each_others_running_sum() {
        assert_eq!(run(0), Ok(()));
        // Lane 1 starting from another sum (dropping or adding exponentials
        // between lanes) fails exactly the carry gate, on its carry row.
        let failures = run(1).unwrap_err();
        assert_eq!(failures.len(), 1, "{failures:?}");
        let located = matches!(
            &failures[0],
            VerifyFailure::ConstraintNotSatisfied { constraint, location: FailureLocation::InRegion { region, offset: 0 }, .. }
                if constraint.to_string().contains("lane carry")
                    && *region == (1, "logit lanes").into()
        );
        assert!(located, "{failures:?}");
    }
}
