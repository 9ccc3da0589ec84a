//! The per-step check: log-sum-exp bracket, log-probability, greedy / inverse-CDF
//! sampling, and the link to the public inputs.
//!
//! Four columns, six rows (`q_step` on the first):
//!
//! | row | a    | b    | c     | d    |
//! |-----|------|------|-------|------|
//! | 0   | g    | beta | r     | y    |
//! | 1   | lp   | m    | delta | G_lo |
//! | 2   | G_hi | S    | A_end | acc  |
//! | 3   | S_y  | e_y  | w_y   | r'   |
//! | 4   | rho  | c1   | c2    | c3   |
//! | 5   | c4   | c5   |       |      |
//!
//! Constraints:
//! - `g` boolean; greedy forces `beta = 2^9` (temperature 1); `A_end = 0` (the token
//!   index was reached);
//! - `acc = S_y + 2^70 e_y + 2^140 w_y + 2^210 y`, with `S_y, e_y < 2^64` and
//!   `w_y < 2^48` range-checked, so the split is unique and `y` is the token row;
//! - `(delta, G_lo, G_hi)` is a table row and `c3 = S - G_lo`, `c4 = G_hi - 1 - S`
//!   are in 64 bits: `G[delta] <= S < G[delta + 1]`;
//! - `lp = -delta - (1 - g) w_y` (under greedy `w_y = 0` by the lane constraint);
//! - sampling: `r S = 2^64 r' + rho`, `rho < 2^64`: `r' = floor(r S / 2^64)`, and
//!   `c1 = (1 - g)(r' - (S_y - e_y))`, `c2 = (1 - g)(S_y - 1 - r')` in 64 bits:
//!   `P_y <= r' < P_{y+1}`;
//! - `c5 = m + 2^23` in 25 bits: bounds `m`, so with `u < 2^25` every logit
//!   `z = m - u` is in `(-2^26, 2^24)`, far from wrapping around the field.

use ff::Field as _;
use halo2_proofs::{
    circuit::Layouter,
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Instance, Selector},
    poly::Rotation,
};

use super::lane::{pow2, StepCells, ACC_SHIFT_E, ACC_SHIFT_W, ACC_SHIFT_Y};
use super::range_check::{RangeCheckChip, RangeCheckInstructions, Width};
use super::table::TableConfig;
use super::{known, known_signed};
use crate::fixed_point::{BETA_ONE, LOGIT_BITS, R_BITS};
use crate::statement::INSTANCE_PER_STEP;
use crate::tables::Tables;
use crate::witness::StepWitness;

#[derive(Clone, Copy, Debug)]
pub struct StepCheckConfig {
    cols: [Column<Advice>; 4],
    q_step: Selector,
}

pub struct StepCheckChip {
    config: StepCheckConfig,
    range: RangeCheckChip,
}

/// Instance rows of a step, relative to `INSTANCE_PER_STEP * step`.
pub mod instance_row {
    pub const TOKEN: usize = 0;
    pub const LOGPROB: usize = 1;
    pub const GREEDY: usize = 2;
    pub const BETA: usize = 3;
    pub const R: usize = 4;
    pub const POSITION: usize = 5;
}

fn shift(bits: u32) -> Fp {
    Fp::from(2).pow_vartime([bits as u64])
}

impl StepCheckChip {
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        cols: [Column<Advice>; 4],
        table: TableConfig,
        lse_at_zero: (Fp, Fp),
    ) -> StepCheckConfig {
        for c in cols {
            meta.enable_equality(c);
        }
        let q_step = meta.complex_selector();
        let one = || Expression::Constant(Fp::one());
        let c = |k: usize| Expression::Constant(shift(k as u32));
        meta.create_gate("step check", |meta| {
            let q = meta.query_selector(q_step);
            let mut at = |row: i32, col: usize| meta.query_advice(cols[col], Rotation(row));
            let (g, beta, r, y) = (at(0, 0), at(0, 1), at(0, 2), at(0, 3));
            let (lp, m, delta, g_lo) = (at(1, 0), at(1, 1), at(1, 2), at(1, 3));
            let (g_hi, s, a_end, acc) = (at(2, 0), at(2, 1), at(2, 2), at(2, 3));
            let (s_y, e_y, w_y, r_scaled) = (at(3, 0), at(3, 1), at(3, 2), at(3, 3));
            let (rho, c1, c2, c3) = (at(4, 0), at(4, 1), at(4, 2), at(4, 3));
            let (c4, c5) = (at(5, 0), at(5, 1));
            let sample = one() - g.clone();
            vec![
                ("greedy is boolean", g.clone() * sample.clone()),
                (
                    "greedy has temperature 1",
                    g * (beta - Expression::Constant(Fp::from(BETA_ONE as u64))),
                ),
                ("token reached", a_end),
                (
                    "split token row",
                    acc - s_y.clone()
                        - c(ACC_SHIFT_E as usize) * e_y.clone()
                        - c(ACC_SHIFT_W as usize) * w_y.clone()
                        - c(ACC_SHIFT_Y as usize) * y,
                ),
                ("log-probability", lp + delta + sample.clone() * w_y),
                (
                    "scaled r",
                    r * s.clone() - c(R_BITS as usize) * r_scaled.clone() - rho,
                ),
                (
                    "cdf lower",
                    c1 - sample.clone() * (r_scaled.clone() - s_y.clone() + e_y),
                ),
                ("cdf upper", c2 - sample * (s_y - one() - r_scaled)),
                ("lse lower", c3 - (s.clone() - g_lo)),
                ("lse upper", c4 - (g_hi - one() - s)),
                ("max in range", c5 - (m + pow2(LOGIT_BITS))),
            ]
            .into_iter()
            .map(move |(name, poly)| (name, q.clone() * poly))
            .collect::<Vec<_>>()
        });
        meta.lookup(|meta| {
            let q = meta.query_selector(q_step);
            let delta = meta.query_advice(cols[2], Rotation(1));
            let g_lo = meta.query_advice(cols[3], Rotation(1));
            let g_hi = meta.query_advice(cols[0], Rotation(2));
            vec![
                (q.clone() * delta, table.idx),
                (
                    q.clone() * g_lo + (one() - q.clone()) * Expression::Constant(lse_at_zero.0),
                    table.lse_lo,
                ),
                (
                    q.clone() * g_hi + (one() - q) * Expression::Constant(lse_at_zero.1),
                    table.lse_hi,
                ),
            ]
        });
        StepCheckConfig { cols, q_step }
    }

    pub fn construct(config: StepCheckConfig, range: RangeCheckChip) -> Self {
        StepCheckChip { config, range }
    }

    /// Checks step `index` against its instance rows and the lane cells.
    pub fn assign(
        &self,
        mut layouter: impl Layouter<Fp>,
        instance: Column<Instance>,
        index: usize,
        step: &StepWitness,
        tables: &Tables,
        lanes: &StepCells,
    ) -> Result<(), Error> {
        let config = self.config;
        let base = INSTANCE_PER_STEP * index;
        let (greedy, r) = match step.statement.sampler {
            crate::statement::Sampler::Greedy => (true, 0u64),
            crate::statement::Sampler::Sample { r, .. } => (false, r),
        };
        let token = step.statement.token as usize;
        let row = step.rows[token];
        let e_y = row.e as i128;
        let s_y = step.prefix_at_token as i128;
        let w_y = step.token_distance() as i128;
        let sum = step.sum as i128;
        let delta = step.delta as usize;
        let r_scaled = step.scaled_r as i128;
        let rho = (r as u128 * step.sum) as i128 - (r_scaled << R_BITS);
        let sample = i128::from(!greedy);
        let g_lo = tables.lse.get(delta).copied().unwrap_or(0) as i128;
        let g_hi = tables.lse.get(delta + 1).copied().unwrap_or(0) as i128;

        let checked = layouter.assign_region(
            || "step check",
            |mut region| {
                config.q_step.enable(&mut region, 0)?;
                let from_instance = |region: &mut halo2_proofs::circuit::Region<'_, Fp>,
                                     name: &'static str,
                                     row: usize,
                                     r: usize,
                                     c: usize| {
                    region.assign_advice_from_instance(
                        || name,
                        instance,
                        base + row,
                        config.cols[c],
                        r,
                    )
                };
                let g = from_instance(&mut region, "g", instance_row::GREEDY, 0, 0)?;
                let beta = from_instance(&mut region, "beta", instance_row::BETA, 0, 1)?;
                from_instance(&mut region, "r", instance_row::R, 0, 2)?;
                from_instance(&mut region, "y", instance_row::TOKEN, 0, 3)?;
                from_instance(&mut region, "lp", instance_row::LOGPROB, 1, 0)?;
                region.constrain_equal(g.cell(), lanes.greedy.cell())?;
                region.constrain_equal(beta.cell(), lanes.beta.cell())?;
                lanes
                    .max
                    .copy_advice(|| "m", &mut region, config.cols[1], 1)?;
                lanes
                    .sum
                    .copy_advice(|| "S", &mut region, config.cols[1], 2)?;
                lanes
                    .before_end
                    .copy_advice(|| "A_end", &mut region, config.cols[2], 2)?;
                lanes
                    .acc
                    .copy_advice(|| "acc", &mut region, config.cols[3], 2)?;
                let mut put = |name: &'static str, row: usize, col: usize, v: i128| {
                    region.assign_advice(|| name, config.cols[col], row, || known_signed(v))
                };
                put("delta", 1, 2, delta as i128)?;
                put("G_lo", 1, 3, g_lo)?;
                put("G_hi", 2, 0, g_hi)?;
                let s_y_cell = put("S_y", 3, 0, s_y)?;
                let e_y_cell = put("e_y", 3, 1, e_y)?;
                let w_y_cell = put("w_y", 3, 2, w_y)?;
                put("r'", 3, 3, r_scaled)?;
                let rho = put("rho", 4, 0, rho)?;
                let c1 = put("c1", 4, 1, sample * (r_scaled - (s_y - e_y)))?;
                let c2 = put("c2", 4, 2, sample * (s_y - 1 - r_scaled))?;
                let c3 = put("c3", 4, 3, sum - g_lo)?;
                let c4 = put("c4", 5, 0, g_hi - 1 - sum)?;
                let c5 = put("c5", 5, 1, step.max_logit as i128 + (1 << LOGIT_BITS))?;
                let _ = known;
                Ok([
                    (s_y_cell, Width::BITS_64),
                    (e_y_cell, Width::BITS_64),
                    (w_y_cell, Width::BITS_48),
                    (rho, Width::BITS_64),
                    (c1, Width::BITS_64),
                    (c2, Width::BITS_64),
                    (c3, Width::BITS_64),
                    (c4, Width::BITS_64),
                    (c5, Width::BITS_25),
                ])
            },
        )?;
        for (i, (cell, width)) in checked.iter().enumerate() {
            self.range
                .range_check(layouter.namespace(|| format!("range {i}")), cell, *width)?;
        }
        Ok(())
    }

    /// Rows of the range checks of one step.
    pub fn range_rows() -> usize {
        7 * Width::BITS_64.rows() + Width::BITS_48.rows() + Width::BITS_25.rows()
    }
}
