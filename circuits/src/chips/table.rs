//! The fixed lookup table shared by every chip, for one temperature.
//!
//! Row `i` (for `i` in `0..2^16`) holds
//! `(i, T[i], T[i + 2^16], [i != 0], G[i], G[i+1], a, b, [a = 0], [a = 1], [b = 0], [b = 1])`
//! with `a = i mod 2^8`, `b = i / 2^8`:
//! - `(idx)` alone is a 16-bit range check;
//! - `(idx, exp_lo, exp_hi, nonzero)` gives, for the low limb of a distance, its
//!   exponential for high limb 0 and for high limb 1, and whether it is 0;
//! - `(idx, lse_lo, lse_hi)` brackets a sum of exponentials, `G[d] <= S < G[d+1]`;
//! - `(pair_a, pair_b, a_is_zero, a_is_one, b_is_zero, b_is_one)` checks two
//!   8-bit high limbs (of two lanes) at once and says whether each is 0 or 1.

use halo2_proofs::{
    circuit::{Layouter, Value},
    pasta::Fp,
    plonk::{ConstraintSystem, Error, TableColumn},
};

use ff::PrimeField as _;

use crate::fixed_point::{HIGH_LIMB_BITS, TABLE_ROWS};
use crate::tables::Tables;

#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    pub idx: TableColumn,
    pub exp_lo: TableColumn,
    pub exp_hi: TableColumn,
    pub nonzero: TableColumn,
    pub lse_lo: TableColumn,
    pub lse_hi: TableColumn,
    pub pair_a: TableColumn,
    pub pair_b: TableColumn,
    pub a_is_zero: TableColumn,
    pub a_is_one: TableColumn,
    pub b_is_zero: TableColumn,
    pub b_is_one: TableColumn,
}

impl TableConfig {
    pub fn configure(meta: &mut ConstraintSystem<Fp>) -> Self {
        TableConfig {
            idx: meta.lookup_table_column(),
            exp_lo: meta.lookup_table_column(),
            exp_hi: meta.lookup_table_column(),
            nonzero: meta.lookup_table_column(),
            lse_lo: meta.lookup_table_column(),
            lse_hi: meta.lookup_table_column(),
            pair_a: meta.lookup_table_column(),
            pair_b: meta.lookup_table_column(),
            a_is_zero: meta.lookup_table_column(),
            a_is_one: meta.lookup_table_column(),
            b_is_zero: meta.lookup_table_column(),
            b_is_one: meta.lookup_table_column(),
        }
    }

    pub fn load(&self, layouter: &mut impl Layouter<Fp>, tables: &Tables) -> Result<(), Error> {
        layouter.assign_table(
            || "exp / lse / range table",
            |mut table| {
                for i in 0..TABLE_ROWS {
                    let (a, b) = (i % (1 << HIGH_LIMB_BITS), i >> HIGH_LIMB_BITS);
                    let flag = |x: bool| Fp::from(u64::from(x));
                    let cells = [
                        (self.idx, Fp::from(i as u64)),
                        (self.exp_lo, Fp::from(tables.exp[i])),
                        (self.exp_hi, Fp::from(tables.exp[i + TABLE_ROWS])),
                        (self.nonzero, Fp::from(u64::from(i != 0))),
                        (self.lse_lo, Fp::from_u128(tables.lse[i])),
                        (self.lse_hi, Fp::from_u128(tables.lse[i + 1])),
                        (self.pair_a, Fp::from(a as u64)),
                        (self.pair_b, Fp::from(b as u64)),
                        (self.a_is_zero, flag(a == 0)),
                        (self.a_is_one, flag(a == 1)),
                        (self.b_is_zero, flag(b == 0)),
                        (self.b_is_one, flag(b == 1)),
                    ];
                    for (column, value) in cells {
                        table.assign_cell(|| "table", column, i, || Value::known(value))?;
                    }
                }
                Ok(())
            },
        )
    }
}
