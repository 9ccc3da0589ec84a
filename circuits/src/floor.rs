//! The cost floor of the design: a circuit that holds, for every logit of `T`
//! steps in `L` lanes, only one `(u, T[u])` exp-table lookup and a running sum,
//! at the decode step's `k`. Nothing is proven with it; `zkinfer cost` proves it
//! beside the decode step so every report states the statement's cost as a
//! ratio to this floor, measured in the same run. It is configured inside the
//! decode step's [`CircuitShape::scope`], whose lane count it takes.

use ff::Field as _;
use halo2_proofs::{
    circuit::{Layouter, SimpleFloorPlanner, Value},
    pasta::Fp,
    plonk::{Advice, Circuit, Column, ConstraintSystem, Error, Selector, TableColumn},
    poly::Rotation,
};

use crate::decode_step::CircuitShape;
use crate::fixed_point::TABLE_ROWS;
use crate::tables::Tables;

#[derive(Clone, Debug)]
pub struct FloorConfig {
    lanes: Vec<(Column<Advice>, Column<Advice>, Column<Advice>)>,
    q: Selector,
    idx: TableColumn,
    exp: TableColumn,
}

/// The floor circuit of a decode-step shape.
#[derive(Clone, Debug)]
pub struct FloorCircuit {
    shape: CircuitShape,
    /// A vocabulary index of step 0 whose exponential is off by one (tests).
    corrupt: Option<usize>,
}

impl FloorCircuit {
    pub fn new(shape: CircuitShape) -> Self {
        FloorCircuit {
            shape,
            corrupt: None,
        }
    }
}

impl Circuit<Fp> for FloorCircuit {
    type Config = FloorConfig;
    type FloorPlanner = SimpleFloorPlanner;

    fn without_witnesses(&self) -> Self {
        self.clone()
    }

    fn configure(meta: &mut ConstraintSystem<Fp>) -> FloorConfig {
        let lanes = crate::decode_step::scoped_lanes()
            .expect("FloorCircuit::configure must run inside CircuitShape::scope");
        let q = meta.complex_selector();
        let idx = meta.lookup_table_column();
        let exp = meta.lookup_table_column();
        let lanes = (0..lanes)
            .map(|_| {
                let (u, e, sum) = (
                    meta.advice_column(),
                    meta.advice_column(),
                    meta.advice_column(),
                );
                meta.lookup(|meta| {
                    let q = meta.query_selector(q);
                    vec![
                        (q.clone() * meta.query_advice(u, Rotation::cur()), idx),
                        (q * meta.query_advice(e, Rotation::cur()), exp),
                    ]
                });
                meta.create_gate("running sum", |meta| {
                    let q = meta.query_selector(q);
                    let cur = meta.query_advice(sum, Rotation::cur());
                    let prev = meta.query_advice(sum, Rotation::prev());
                    vec![q * (cur - prev - meta.query_advice(e, Rotation::cur()))]
                });
                (u, e, sum)
            })
            .collect();
        FloorConfig { lanes, q, idx, exp }
    }

    fn synthesize(
        &self,
        config: FloorConfig,
        mut layouter: impl Layouter<Fp>,
    ) -> Result<(), Error> {
        let tables = Tables::new(self.shape.fixed_point, crate::fixed_point::Temperature::ONE);
        layouter.assign_table(
            || "exp table",
            |mut table| {
                // Row 0 holds (0, 0) so that disabled rows (u = e = 0) are in it.
                table.assign_cell(|| "idx", config.idx, 0, || Value::known(Fp::ZERO))?;
                table.assign_cell(|| "exp", config.exp, 0, || Value::known(Fp::ZERO))?;
                for u in 0..TABLE_ROWS {
                    let e = Fp::from(tables.exp[u]);
                    table.assign_cell(
                        || "idx",
                        config.idx,
                        u + 1,
                        || Value::known(Fp::from(u as u64)),
                    )?;
                    table.assign_cell(|| "exp", config.exp, u + 1, || Value::known(e))?;
                }
                Ok(())
            },
        )?;
        let shape = self.shape;
        let per_lane = shape.rows_per_lane();
        for step in 0..shape.steps {
            layouter.assign_region(
                || "floor lanes",
                |mut region| {
                    for (lane, &(u_col, e_col, sum_col)) in config.lanes.iter().enumerate() {
                        region.assign_advice(|| "sum_0", sum_col, 0, || Value::known(Fp::ZERO))?;
                        let mut sum = Fp::ZERO;
                        let start = lane * per_lane;
                        let end = ((lane + 1) * per_lane).min(shape.vocab);
                        for index in start..end {
                            let row = index - start + 1;
                            // Any distance will do: the floor measures cost, not a statement.
                            let u = (index * 7919 + step) % TABLE_ROWS;
                            let mut e = Fp::from(tables.exp[u]);
                            if step == 0 && self.corrupt == Some(index) {
                                e += Fp::ONE;
                            }
                            sum += e;
                            config.q.enable(&mut region, row)?;
                            region.assign_advice(
                                || "u",
                                u_col,
                                row,
                                || Value::known(Fp::from(u as u64)),
                            )?;
                            region.assign_advice(|| "e", e_col, row, || Value::known(e))?;
                            region.assign_advice(|| "sum", sum_col, row, || Value::known(sum))?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FixedPoint;
    use halo2_proofs::dev::{FailureLocation, MockProver, VerifyFailure};

    #[test]
    fn the_floor_holds_and_its_lookup_catches_a_wrong_exponential() {
        let shape = CircuitShape::new(300, FixedPoint::default(), 2, 2).unwrap();
        let run = |circuit: FloorCircuit| {
            shape.scope(|| {
                MockProver::run(shape.k(), &circuit, vec![])
                    .unwrap()
                    .verify()
            })
        };
        assert_eq!(run(FloorCircuit::new(shape)), Ok(()));
        // Index 160 is row 11 of lane 1, in the region of step 0 (region 1:
        // region 0 is the table).
        let corrupt = FloorCircuit {
            corrupt: Some(160),
            ..FloorCircuit::new(shape)
        };
        assert_eq!(
            run(corrupt),
            Err(vec![VerifyFailure::Lookup {
                lookup_index: 1,
                location: FailureLocation::InRegion {
                    region: (1, "floor lanes").into(),
                    offset: 11,
                },
            }])
        );
    }
}
