//! The fixed lookup table shared by every chip.
//!
//! Row `i` (for `i` in `0..2^16`) holds `(i, T[i], G[i], G[i+1], i mod 2^9)`:
//! - `(idx)` alone is a 16-bit range check;
//! - `(idx, exp)` is the exponential `e = T[u]`;
//! - `(idx, lse_lo, lse_hi)` brackets a sum of exponentials, `G[d] <= S < G[d+1]`;
//! - `(small)` alone is a 9-bit range check.

use ff::PrimeField as _;
use halo2_proofs::{
    circuit::{Layouter, Value},
    pasta::Fp,
    plonk::{ConstraintSystem, Error, TableColumn},
};

use crate::fixed_point::{SMALL_BITS, TABLE_ROWS};
use crate::tables::Tables;

#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    pub idx: TableColumn,
    pub exp: TableColumn,
    pub lse_lo: TableColumn,
    pub lse_hi: TableColumn,
    pub small: TableColumn,
}

impl TableConfig {
    pub fn configure(meta: &mut ConstraintSystem<Fp>) -> Self {
        TableConfig {
            idx: meta.lookup_table_column(),
            exp: meta.lookup_table_column(),
            lse_lo: meta.lookup_table_column(),
            lse_hi: meta.lookup_table_column(),
            small: meta.lookup_table_column(),
        }
    }

    pub fn load(&self, layouter: &mut impl Layouter<Fp>, tables: &Tables) -> Result<(), Error> {
        layouter.assign_table(
            || "exp / lse / range table",
            |mut table| {
                for i in 0..TABLE_ROWS {
                    let cells = [
                        (self.idx, Fp::from(i as u64)),
                        (self.exp, Fp::from(tables.exp[i])),
                        (self.lse_lo, Fp::from_u128(tables.lse[i])),
                        (self.lse_hi, Fp::from_u128(tables.lse[i + 1])),
                        (self.small, Fp::from((i % (1 << SMALL_BITS)) as u64)),
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
