//! Range checks by running-sum decomposition into 16-bit limbs (and one optional
//! 9-bit top limb), each limb looked up in the table's 16-bit column: one lookup
//! argument for every width.
//!
//! For `v` and `n` limbs the chip assigns `z_0 = v`, `z_{i+1} = (z_i - limb_i) / 2^16`
//! and constrains `z_i - 2^16 z_{i+1}` to 16 bits and the last `z` to zero. A 9-bit
//! top limb `z_n` is a 16-bit limb (`z_{n+1} = 0`) whose multiple `2^7 z_n`, looked
//! up on the next row, is in 16 bits too: with `z_n < 2^16` nothing wraps, so
//! `z_n < 2^9`. Hence `v < 2^(16 n + 9 top)`.

use ff::{Field as _, PrimeField};

use halo2_proofs::{
    circuit::{AssignedCell, Chip, Layouter, Value},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Selector},
    poly::Rotation,
};

use super::table::TableConfig;
use crate::fixed_point::{SMALL_BITS, TABLE_BITS};

#[derive(Clone, Copy, Debug)]
pub struct RangeCheckConfig {
    running: Column<Advice>,
    q_limb: Selector,
    q_small: Selector,
}

/// The width of a range check: `limbs` 16-bit limbs, then an optional 9-bit limb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Width {
    pub limbs: usize,
    pub small_top: bool,
}

impl Width {
    pub const BITS_64: Width = Width {
        limbs: 4,
        small_top: false,
    };
    pub const BITS_48: Width = Width {
        limbs: 3,
        small_top: false,
    };
    pub const BITS_16: Width = Width {
        limbs: 1,
        small_top: false,
    };
    pub const BITS_25: Width = Width {
        limbs: 1,
        small_top: true,
    };

    pub fn rows(&self) -> usize {
        self.limbs + usize::from(self.small_top) + 1
    }
}

/// Checks that assigned values lie in `[0, 2^bits)`.
pub trait RangeCheckInstructions: Chip<Fp> {
    fn range_check(
        &self,
        layouter: impl Layouter<Fp>,
        value: &AssignedCell<Fp, Fp>,
        width: Width,
    ) -> Result<(), Error>;
}

#[derive(Clone, Copy, Debug)]
pub struct RangeCheckChip {
    config: RangeCheckConfig,
}

impl Chip<Fp> for RangeCheckChip {
    type Config = RangeCheckConfig;
    type Loaded = ();

    fn config(&self) -> &RangeCheckConfig {
        &self.config
    }

    fn loaded(&self) -> &() {
        &()
    }
}

impl RangeCheckChip {
    pub fn configure(
        meta: &mut ConstraintSystem<Fp>,
        running: Column<Advice>,
        table: TableConfig,
    ) -> RangeCheckConfig {
        meta.enable_equality(running);
        let q_limb = meta.complex_selector();
        let q_small = meta.complex_selector();
        meta.lookup(|meta| {
            let (q_limb, q_small) = (meta.query_selector(q_limb), meta.query_selector(q_small));
            let prev = meta.query_advice(running, Rotation::prev());
            let cur = meta.query_advice(running, Rotation::cur());
            let next = meta.query_advice(running, Rotation::next());
            let limb = cur - next * Expression::Constant(Fp::from(1u64 << TABLE_BITS));
            let shifted = prev * Expression::Constant(Fp::from(1u64 << (TABLE_BITS - SMALL_BITS)));
            vec![(q_limb * limb + q_small * shifted, table.idx)]
        });
        RangeCheckConfig {
            running,
            q_limb,
            q_small,
        }
    }

    pub fn construct(config: RangeCheckConfig) -> Self {
        RangeCheckChip { config }
    }
}

/// The low `bits` of a field element's canonical representation.
fn low_bits(v: Fp, bits: u32) -> u64 {
    let repr = v.to_repr();
    let low = u64::from_le_bytes(repr.as_ref()[..8].try_into().expect("8 bytes"));
    low & ((1u64 << bits) - 1)
}

impl RangeCheckInstructions for RangeCheckChip {
    fn range_check(
        &self,
        mut layouter: impl Layouter<Fp>,
        value: &AssignedCell<Fp, Fp>,
        width: Width,
    ) -> Result<(), Error> {
        let config = self.config;
        layouter.assign_region(
            || "range check",
            |mut region| {
                let mut z = value.copy_advice(|| "z_0", &mut region, config.running, 0)?;
                let limbs = (0..width.limbs)
                    .map(|_| TABLE_BITS)
                    .chain(width.small_top.then_some(SMALL_BITS));
                for (row, bits) in limbs.enumerate() {
                    config.q_limb.enable(&mut region, row)?;
                    if bits == SMALL_BITS {
                        // The top limb is all of `z`: the next row checks `2^7 z`.
                        config.q_small.enable(&mut region, row + 1)?;
                    }
                    let next: Value<Fp> = z.value().map(|&v| {
                        let limb = Fp::from(low_bits(v, bits));
                        (v - limb)
                            * Fp::from(1u64 << bits)
                                .invert()
                                .expect("2^bits is invertible")
                    });
                    z = region.assign_advice(|| "z", config.running, row + 1, || next)?;
                }
                region.constrain_constant(z.cell(), Fp::zero())
            },
        )
    }
}
