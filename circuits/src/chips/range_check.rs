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
                let shift_inv = Fp::from(1u64 << TABLE_BITS)
                    .invert()
                    .expect("2^16 is invertible");
                let rows = width.limbs + usize::from(width.small_top);
                for row in 0..rows {
                    config.q_limb.enable(&mut region, row)?;
                    if width.small_top && row + 1 == rows {
                        // The top limb is all of `z`: the next row checks `2^7 z`.
                        config.q_small.enable(&mut region, row + 1)?;
                    }
                    let next: Value<Fp> = z
                        .value()
                        .map(|&v| (v - Fp::from(low_bits(v, TABLE_BITS))) * shift_inv);
                    z = region.assign_advice(|| "z", config.running, row + 1, || next)?;
                }
                region.constrain_constant(z.cell(), Fp::zero())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed_point::{FixedPoint, Temperature};
    use crate::tables::Tables;
    use halo2_proofs::{
        circuit::SimpleFloorPlanner,
        dev::{FailureLocation, MockProver, VerifyFailure},
        plonk::Circuit,
    };

    /// One value range-checked at one width, the table loaded beside it.
    #[derive(Clone)]
    struct OneCheck {
        value: u128,
        width: Width,
    }

    impl Circuit<Fp> for OneCheck {
        type Config = (RangeCheckConfig, TableConfig, Column<Advice>);
        type FloorPlanner = SimpleFloorPlanner;

        fn without_witnesses(&self) -> Self {
            self.clone()
        }

        fn configure(meta: &mut ConstraintSystem<Fp>) -> Self::Config {
            let constants = meta.fixed_column();
            meta.enable_constant(constants);
            let table = TableConfig::configure(meta);
            let input = meta.advice_column();
            meta.enable_equality(input);
            let running = meta.advice_column();
            (
                RangeCheckChip::configure(meta, running, table),
                table,
                input,
            )
        }

        fn synthesize(
            &self,
            (config, table, input): Self::Config,
            mut layouter: impl Layouter<Fp>,
        ) -> Result<(), Error> {
            table.load(
                &mut layouter,
                &Tables::new(FixedPoint::default(), Temperature::ONE),
            )?;
            let cell = layouter.assign_region(
                || "input",
                |mut region| {
                    region.assign_advice(
                        || "v",
                        input,
                        0,
                        || Value::known(Fp::from_u128(self.value)),
                    )
                },
            )?;
            RangeCheckChip::construct(config).range_check(
                layouter.namespace(|| "check"),
                &cell,
                self.width,
            )
        }
    }

    fn run(value: u128, width: Width) -> Result<(), Vec<VerifyFailure>> {
        MockProver::run(17, &OneCheck { value, width }, vec![])
            .expect("synthesis")
            .verify()
    }

    /// Region 0 is the table, 1 the input, 2 the check.
    fn in_check(offset: usize) -> FailureLocation {
        FailureLocation::InRegion {
            region: (2, "range check").into(),
            offset,
        }
    }

    #[test]
    fn values_at_the_top_of_each_width_pass() {
        for (value, width) in [
            (0, Width::BITS_16),
            ((1 << 16) - 1, Width::BITS_16),
            ((1 << 25) - 1, Width::BITS_25),
            ((1 << 48) - 1, Width::BITS_48),
            (u64::MAX as u128, Width::BITS_64),
        ] {
            assert_eq!(run(value, width), Ok(()), "{value} in {width:?}");
        }
    }

    #[test]
    fn a_nine_bit_top_limb_of_512_fails_its_shifted_lookup() {
        // 2^25 = 0 + 2^16 * 512: the top limb 512 is in 16 bits, its 2^7 multiple
        // (65,536) is not, on the row after it.
        assert_eq!(
            run(1 << 25, Width::BITS_25),
            Err(vec![VerifyFailure::Lookup {
                lookup_index: 0,
                location: in_check(2),
            }])
        );
    }

    #[test]
    fn a_value_past_its_limbs_leaves_a_nonzero_running_sum() {
        // 2^16 in one limb: the limb is 0 and the running sum ends at 1, not 0.
        let failures = run(1 << 16, Width::BITS_16).unwrap_err();
        assert!(
            failures.iter().any(|f| matches!(
                f,
                VerifyFailure::Permutation { location, .. } if *location == in_check(1)
            )),
            "{failures:?}"
        );
    }
}
