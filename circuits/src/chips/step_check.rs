//! The per-step check: log-sum-exp bracket, log-probability, greedy / inverse-CDF
//! sampling, and the link to the public inputs.
//!
//! Four columns, six rows (`q_step` on the first):
//!
//! | row | a    | b    | c     | d    |
//! |-----|------|------|-------|------|
//! | 0   | g    | q    | r     | y    |
//! | 1   | lp   | m    | delta | G_lo |
//! | 2   | G_hi | S    | A_end | acc  |
//! | 3   | S_y  | e_y  | u_y   | r'   |
//! | 4   | rho  | c1   | c2    | c3   |
//! | 5   | c4   | c5   | rem   | c6   |
//!
//! With `tau = n / 1000` the circuit's temperature (a constant of the circuit,
//! like the exp table computed for it), the constraints are:
//! - `g` boolean; greedy needs `n = 1000` (temperature 1); `A_end = 0` (the token
//!   index was reached);
//! - `acc = S_y + 2^70 e_y + 2^140 u_y + 2^210 y`, with `S_y, e_y < 2^64` and
//!   `u_y < 2^48` range-checked, so the split is unique and `y` is the token row;
//! - `(delta, G_lo, G_hi)` is a table row and `c3 = S - G_lo`, `c4 = G_hi - 1 - S`
//!   are in 64 bits: `G[delta] <= S < G[delta + 1]`;
//! - `2^4 1000 u_y = n q + rem` with `q` in 48 bits, `rem` and `c6 = n - 1 - rem`
//!   in 16: `q = floor(2^4 u_y / tau)`, the token's tempered distance in
//!   log-probability units (`2^-(F+4)` nats); under greedy `u_y = 0` (lane
//!   constraint), so `q = 0`;
//! - `lp = -(2^4 delta + q)`;
//! - sampling: `r S = 2^64 r' + rho`, `rho < 2^64`: `r' = floor(r S / 2^64)`, and
//!   `c1 = (1 - g)(r' - (S_y - e_y))`, `c2 = (1 - g)(S_y - 1 - r')` in 64 bits:
//!   `P_y <= r' < P_{y+1}`;
//! - `c5 = m + 2^23` in 25 bits: bounds `m`, so with `u < 2^24` every logit
//!   `z = m - u` is in `(-2^25, 2^25)`, far from wrapping around the field.

use ff::Field as _;
use halo2_proofs::{
    circuit::{Chip, Layouter},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Instance, Selector},
    poly::Rotation,
};

use super::known_signed;
use super::lane::{pow2, StepCells, ACC_SHIFT_E, ACC_SHIFT_U, ACC_SHIFT_Y};
use super::range_check::{RangeCheckChip, RangeCheckInstructions, Width};
use super::table::TableConfig;
use crate::fixed_point::{Temperature, LOGIT_BITS, LOGPROB_EXTRA_BITS, R_BITS, TEMPERATURE_SCALE};
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

impl Chip<Fp> for StepCheckChip {
    type Config = StepCheckConfig;
    type Loaded = ();

    fn config(&self) -> &StepCheckConfig {
        &self.config
    }

    fn loaded(&self) -> &() {
        &()
    }
}

/// The values the step check holds beside the cells it copies.
#[derive(Clone, Copy, Debug)]
pub struct StepCheckValues {
    pub greedy: bool,
    pub r: u64,
    pub max: i64,
    pub sum: u128,
    pub delta: u64,
    /// `G[delta]` and `G[delta + 1]`.
    pub lse_bracket: (u128, u128),
    /// `P_{y+1}`, `e_y` and `u_y`: the token row's prefix sum, exponential and
    /// distance.
    pub prefix_at_token: u128,
    pub token_exp: u64,
    pub token_distance: i64,
    pub scaled_r: u128,
    pub token_quotient: i64,
    pub token_remainder: i64,
    pub temperature: Temperature,
}

impl StepCheckValues {
    /// The values of a native step computation.
    pub fn of(step: &StepWitness, tables: &Tables) -> Self {
        let (greedy, r) = match step.statement.sampler {
            crate::statement::Sampler::Greedy => (true, 0u64),
            crate::statement::Sampler::Sample { r, .. } => (false, r),
        };
        let token = step.statement.token as usize;
        let delta = step.delta;
        let at = |d: u64| tables.lse.get(d as usize).copied().unwrap_or(0);
        StepCheckValues {
            greedy,
            r,
            max: step.max_logit,
            sum: step.sum,
            delta,
            lse_bracket: (at(delta), at(delta + 1)),
            prefix_at_token: step.prefix_at_token,
            token_exp: step.rows[token].e,
            token_distance: step.token_distance(),
            scaled_r: step.scaled_r,
            token_quotient: step.token_quotient,
            token_remainder: step.token_remainder,
            temperature: tables.temperature,
        }
    }
}

/// Checks one step against its public inputs and the cells of its lanes.
pub trait StepCheckInstructions: Chip<Fp> {
    fn check_step(
        &self,
        layouter: impl Layouter<Fp>,
        instance: Column<Instance>,
        index: usize,
        values: StepCheckValues,
        lanes: &StepCells,
    ) -> Result<(), Error>;
}

/// Instance rows of a step, relative to `INSTANCE_PER_STEP * step`.
pub mod instance_row {
    pub const TOKEN: usize = 0;
    pub const LOGPROB: usize = 1;
    pub const GREEDY: usize = 2;
    pub const R: usize = 3;
    pub const POSITION: usize = 4;
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
        temperature: Temperature,
    ) -> StepCheckConfig {
        for c in cols {
            meta.enable_equality(c);
        }
        let q_step = meta.complex_selector();
        let one = || Expression::Constant(Fp::one());
        let c = |k: usize| Expression::Constant(shift(k as u32));
        let n = Expression::Constant(Fp::from(temperature.milli() as u64));
        let scale =
            Expression::Constant(Fp::from((TEMPERATURE_SCALE as u64) << LOGPROB_EXTRA_BITS));
        meta.create_gate("step check", |meta| {
            let q = meta.query_selector(q_step);
            let mut at = |row: i32, col: usize| meta.query_advice(cols[col], Rotation(row));
            let (g, quotient, r, y) = (at(0, 0), at(0, 1), at(0, 2), at(0, 3));
            let (lp, m, delta, g_lo) = (at(1, 0), at(1, 1), at(1, 2), at(1, 3));
            let (g_hi, s, a_end, acc) = (at(2, 0), at(2, 1), at(2, 2), at(2, 3));
            let (s_y, e_y, u_y, r_scaled) = (at(3, 0), at(3, 1), at(3, 2), at(3, 3));
            let (rho, c1, c2, c3) = (at(4, 0), at(4, 1), at(4, 2), at(4, 3));
            let (c4, c5, rem, c6) = (at(5, 0), at(5, 1), at(5, 2), at(5, 3));
            let sample = one() - g.clone();
            vec![
                ("greedy is boolean", g.clone() * sample.clone()),
                (
                    "greedy has temperature 1",
                    g * (n.clone() - Expression::Constant(Fp::from(TEMPERATURE_SCALE as u64))),
                ),
                ("token reached", a_end),
                (
                    "split token row",
                    acc - s_y.clone()
                        - c(ACC_SHIFT_E as usize) * e_y.clone()
                        - c(ACC_SHIFT_U as usize) * u_y.clone()
                        - c(ACC_SHIFT_Y as usize) * y,
                ),
                (
                    "tempered token distance",
                    scale * u_y - n.clone() * quotient.clone() - rem.clone(),
                ),
                ("remainder below n", c6 - (n - one() - rem)),
                (
                    "log-probability",
                    lp + c(LOGPROB_EXTRA_BITS as usize) * delta + quotient,
                ),
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
}

impl StepCheckInstructions for StepCheckChip {
    fn check_step(
        &self,
        mut layouter: impl Layouter<Fp>,
        instance: Column<Instance>,
        index: usize,
        values: StepCheckValues,
        lanes: &StepCells,
    ) -> Result<(), Error> {
        let config = self.config;
        let base = INSTANCE_PER_STEP * index;
        let v = values;
        let e_y = v.token_exp as i128;
        let s_y = v.prefix_at_token as i128;
        let sum = v.sum as i128;
        let r_scaled = v.scaled_r as i128;
        let rho = (v.r as u128 * v.sum) as i128 - (r_scaled << R_BITS);
        let sample = i128::from(!v.greedy);
        let (g_lo, g_hi) = (v.lse_bracket.0 as i128, v.lse_bracket.1 as i128);
        let n = v.temperature.milli() as i128;

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
                from_instance(&mut region, "r", instance_row::R, 0, 2)?;
                from_instance(&mut region, "y", instance_row::TOKEN, 0, 3)?;
                from_instance(&mut region, "lp", instance_row::LOGPROB, 1, 0)?;
                region.constrain_equal(g.cell(), lanes.greedy.cell())?;
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
                let quotient = put("q", 0, 1, v.token_quotient as i128)?;
                put("delta", 1, 2, v.delta as i128)?;
                put("G_lo", 1, 3, g_lo)?;
                put("G_hi", 2, 0, g_hi)?;
                let s_y_cell = put("S_y", 3, 0, s_y)?;
                let e_y_cell = put("e_y", 3, 1, e_y)?;
                let u_y_cell = put("u_y", 3, 2, v.token_distance as i128)?;
                put("r'", 3, 3, r_scaled)?;
                let rho = put("rho", 4, 0, rho)?;
                let c1 = put("c1", 4, 1, sample * (r_scaled - (s_y - e_y)))?;
                let c2 = put("c2", 4, 2, sample * (s_y - 1 - r_scaled))?;
                let c3 = put("c3", 4, 3, sum - g_lo)?;
                let c4 = put("c4", 5, 0, g_hi - 1 - sum)?;
                let c5 = put("c5", 5, 1, v.max as i128 + (1 << LOGIT_BITS))?;
                let rem = put("rem", 5, 2, v.token_remainder as i128)?;
                let c6 = put("c6", 5, 3, n - 1 - v.token_remainder as i128)?;
                Ok([
                    (s_y_cell, Width::BITS_64),
                    (e_y_cell, Width::BITS_64),
                    (u_y_cell, Width::BITS_48),
                    (rho, Width::BITS_64),
                    (c1, Width::BITS_64),
                    (c2, Width::BITS_64),
                    (c3, Width::BITS_64),
                    (c4, Width::BITS_64),
                    (c5, Width::BITS_25),
                    (quotient, Width::BITS_48),
                    (rem, Width::BITS_16),
                    (c6, Width::BITS_16),
                ])
            },
        )?;
        for (i, (cell, width)) in checked.iter().enumerate() {
            self.range
                .range_check(layouter.namespace(|| format!("range {i}")), cell, *width)?;
        }
        Ok(())
    }
}

impl StepCheckChip {
    /// Rows of the range checks of one step.
    pub fn range_rows() -> usize {
        7 * Width::BITS_64.rows()
            + 2 * Width::BITS_48.rows()
            + Width::BITS_25.rows()
            + 2 * Width::BITS_16.rows()
    }
}
