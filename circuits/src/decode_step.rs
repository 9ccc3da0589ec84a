//! The decode-step circuit: `T` token steps over a vocabulary of `V`, composed of
//! the logit lanes, the step check and the range checks. The logits are
//! committed by the proof's own commitments to the lanes' `z` columns
//! ([`crate::opening`]), so no hash runs inside the circuit.
//!
//! The statement it proves for each step is in `docs/statement.md`; the chips'
//! module docs say which constraint enforces which part.

use ff::PrimeField as _;
use std::cell::Cell;

use halo2_proofs::{
    circuit::{Layouter, SimpleFloorPlanner},
    pasta::Fp,
    plonk::{Circuit, Column, ConstraintSystem, Error, Instance},
};

use crate::chips::lane::{
    LaneChip, LaneConfig, LaneInstructions, LaneValues, LANE_COLUMNS, SHARED_COLUMNS,
};
use crate::chips::range_check::{RangeCheckChip, RangeCheckConfig};
use crate::chips::step_check::{
    StepCheckChip, StepCheckConfig, StepCheckInstructions, StepCheckValues,
};
use crate::chips::table::TableConfig;
use crate::fixed_point::{FixedPoint, FixedPointError, Temperature, TABLE_BITS, TABLE_ROWS};
use crate::statement::StepStatement;
use crate::tables::Tables;
use crate::witness::StepWitness;

/// Rows halo2 keeps for blinding at the end of every column (with margin).
const RESERVED_ROWS: usize = 16;
/// Rows of the step check region.
const STEP_CHECK_ROWS: usize = 6;

/// The shape of a decode-step circuit: everything that fixes its verifying key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CircuitShape {
    pub vocab: usize,
    pub fixed_point: FixedPoint,
    /// `T`: token steps per proof.
    pub steps: usize,
    /// `L`: logit lanes side by side.
    pub lanes: usize,
    /// The temperature of every step's softmax (1 for greedy steps): the exp
    /// table is computed for it.
    pub temperature: Temperature,
}

/// Why a shape cannot be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapeError {
    #[error("vocabulary size must be at least 2, got {0}")]
    Vocab(usize),
    #[error("steps per proof must be in 1..=256, got {0}")]
    Steps(usize),
    #[error("lanes must be in 1..=64, got {0}")]
    Lanes(usize),
    #[error("{lanes} lanes would leave the last one without logits at a vocabulary of {vocab}: use fewer lanes")]
    EmptyLane { vocab: usize, lanes: usize },
    #[error(transparent)]
    FixedPoint(#[from] FixedPointError),
    #[error("the circuit would need k = {0} (at most 22 supported): use more lanes or fewer steps per proof")]
    TooLarge(u32),
}

/// What `configure` needs that halo2's static `Circuit::configure` cannot receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConfigureShape {
    lanes: usize,
    rows_per_lane: usize,
    fixed_point: FixedPoint,
    temperature: Temperature,
}

thread_local! {
    static CONFIGURE_SHAPE: Cell<Option<ConfigureShape>> = const { Cell::new(None) };
}

/// The lane count of the shape [`CircuitShape::scope`] runs under, for another
/// circuit laid out like it (`crate::floor`).
pub(crate) fn scoped_lanes() -> Option<usize> {
    CONFIGURE_SHAPE.with(|s| s.get()).map(|s| s.lanes)
}

impl CircuitShape {
    pub fn new(
        vocab: usize,
        fixed_point: FixedPoint,
        steps: usize,
        lanes: usize,
    ) -> Result<Self, ShapeError> {
        if vocab < 2 {
            return Err(ShapeError::Vocab(vocab));
        }
        if !(1..=256).contains(&steps) {
            return Err(ShapeError::Steps(steps));
        }
        if !(1..=64).contains(&lanes) {
            return Err(ShapeError::Lanes(lanes));
        }
        // Every lane holds logits: the running sums pass from one lane's last
        // row to the next lane's first (`chips::lane`).
        if (lanes - 1) * vocab.div_ceil(lanes) >= vocab {
            return Err(ShapeError::EmptyLane { vocab, lanes });
        }
        fixed_point.validate()?;
        let shape = CircuitShape {
            vocab,
            fixed_point,
            steps,
            lanes,
            temperature: Temperature::ONE,
        };
        let k = shape.k();
        if k > 22 {
            return Err(ShapeError::TooLarge(k));
        }
        Ok(shape)
    }

    /// The shape with the fewest lanes that keeps `k` at its floor (the exp
    /// table's 2^16 rows): at a given `k` every lane costs about the same
    /// whether its rows are full or not, so extra lanes only cost.
    pub fn fitted(vocab: usize, fixed_point: FixedPoint, steps: usize) -> Result<Self, ShapeError> {
        let floor = TABLE_BITS + 1;
        let mut last = None;
        for lanes in 1..=64 {
            match CircuitShape::new(vocab, fixed_point, steps, lanes) {
                Ok(shape) if shape.k() <= floor => return Ok(shape),
                Ok(shape) => last = Some(shape),
                Err(ShapeError::TooLarge(_) | ShapeError::EmptyLane { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Even 64 lanes need more rows: the smallest k reachable.
        last.ok_or(ShapeError::TooLarge(floor + 6))
    }

    /// The same shape at another temperature (the constructors give 1).
    pub fn with_temperature(self, temperature: Temperature) -> Self {
        CircuitShape {
            temperature,
            ..self
        }
    }

    /// The tables this shape's circuit loads.
    pub fn tables(&self) -> Tables {
        Tables::new(self.fixed_point, self.temperature)
    }

    /// `R`: rows of each lane per step.
    pub fn rows_per_lane(&self) -> usize {
        self.vocab.div_ceil(self.lanes)
    }

    /// Rows of one step's lane region: a carry row, then `R` logit rows.
    fn lane_region_rows(&self) -> usize {
        self.rows_per_lane() + 1
    }

    /// Rows used by the lane columns.
    pub fn lane_rows(&self) -> usize {
        self.steps * self.lane_region_rows()
    }

    /// Where logit `index` of step `step` sits: its lane and row. The step
    /// regions are laid out one after another from row 0 (nothing else uses the
    /// lane columns), each a carry row followed by the logit rows.
    pub fn logit_cell(&self, step: usize, index: usize) -> (usize, usize) {
        let per_lane = self.rows_per_lane();
        let lane = index / per_lane;
        (
            lane,
            step * self.lane_region_rows() + 1 + index - lane * per_lane,
        )
    }

    /// Rows used by the step check and range columns.
    fn check_rows(&self) -> usize {
        self.steps * STEP_CHECK_ROWS.max(StepCheckChip::range_rows())
    }

    /// `log2` of the number of rows.
    pub fn k(&self) -> u32 {
        let needed = self.lane_rows().max(self.check_rows()).max(1 << TABLE_BITS) + RESERVED_ROWS;
        needed.next_power_of_two().trailing_zeros()
    }

    /// Usable rows per column at `k`.
    pub fn usable_rows(&self) -> usize {
        (1 << self.k()) - RESERVED_ROWS
    }

    /// Advice columns of the circuit.
    pub fn advice_columns(&self) -> usize {
        SHARED_COLUMNS + LANE_COLUMNS * self.lanes + 4 + 1
    }

    /// A short stable description, used as a cache key and in bundles.
    pub fn describe(&self) -> String {
        format!(
            "decode-step v3 V={} F={} Q={} T={} L={} tau={}",
            self.vocab,
            self.fixed_point.frac_bits,
            self.fixed_point.exp_bits,
            self.steps,
            self.lanes,
            self.temperature
        )
    }

    fn configure_shape(&self) -> ConfigureShape {
        ConfigureShape {
            lanes: self.lanes,
            rows_per_lane: self.rows_per_lane(),
            fixed_point: self.fixed_point,
            temperature: self.temperature,
        }
    }

    /// Runs `f` (keygen, proving, mock proving) with this shape visible to
    /// `Circuit::configure`, which halo2 calls without a circuit instance.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = CONFIGURE_SHAPE.with(|s| s.replace(Some(self.configure_shape())));
        let result = f();
        CONFIGURE_SHAPE.with(|s| s.set(previous));
        result
    }
}

#[derive(Clone, Debug)]
pub struct DecodeStepConfig {
    instance: Column<Instance>,
    table: TableConfig,
    lanes: LaneConfig,
    step_check: StepCheckConfig,
    range: RangeCheckConfig,
}

impl DecodeStepConfig {
    /// The logit column of each lane.
    pub fn logit_columns(&self) -> Vec<halo2_proofs::plonk::Column<halo2_proofs::plonk::Advice>> {
        self.lanes.logit_columns()
    }
}

/// `T` decode steps of one shape. Without witnesses it is what keygen sees.
#[derive(Clone, Debug)]
pub struct DecodeStepCircuit {
    pub shape: CircuitShape,
    pub steps: Vec<StepWitness>,
}

impl DecodeStepCircuit {
    /// A circuit proving `steps` (exactly `shape.steps` of them).
    pub fn new(shape: CircuitShape, steps: Vec<StepWitness>) -> Self {
        DecodeStepCircuit { shape, steps }
    }

    /// A circuit with the layout of `shape` and meaningless values: what key
    /// generation needs (it reads fixed columns and selectors only).
    pub fn placeholder(shape: CircuitShape) -> Self {
        let tables = shape.tables();
        // Any valid step of the shape's temperature: keygen ignores the values.
        let sampler = match shape.temperature {
            Temperature::ONE => crate::statement::Sampler::Greedy,
            temperature => crate::statement::Sampler::Sample { temperature, r: 0 },
        };
        let step = StepWitness::build(&tables, vec![0; shape.vocab], 0, sampler, 0)
            .expect("zero logits are a valid step");
        DecodeStepCircuit {
            shape,
            steps: vec![step; shape.steps],
        }
    }

    /// The instance column for statements (one per step, in order).
    pub fn instance(statements: &[StepStatement]) -> Vec<Fp> {
        statements.iter().flat_map(|s| s.instance()).collect()
    }
}

impl Circuit<Fp> for DecodeStepCircuit {
    type Config = DecodeStepConfig;
    type FloorPlanner = SimpleFloorPlanner;

    fn without_witnesses(&self) -> Self {
        // Keygen only lays out fixed columns and selectors, which depend on the
        // shape alone; the witness values are ignored by the key generator.
        self.clone()
    }

    fn configure(meta: &mut ConstraintSystem<Fp>) -> DecodeStepConfig {
        let shape = CONFIGURE_SHAPE
            .with(|s| s.get())
            .expect("DecodeStepCircuit::configure must run inside CircuitShape::scope");
        // The first constant-enabled column receives every constant.
        let constants = meta.fixed_column();
        meta.enable_constant(constants);
        let instance = meta.instance_column();
        meta.enable_equality(instance);

        let tables = Tables::new(shape.fixed_point, shape.temperature);
        let table = TableConfig::configure(meta);
        let lanes = LaneChip::configure(
            meta,
            shape.lanes,
            shape.rows_per_lane,
            table,
            (Fp::from(tables.exp[0]), Fp::from(tables.exp[TABLE_ROWS])),
        );
        let check_cols = std::array::from_fn(|_| meta.advice_column());
        let step_check = StepCheckChip::configure(
            meta,
            check_cols,
            table,
            (Fp::from_u128(tables.lse[0]), Fp::from_u128(tables.lse[1])),
            shape.temperature,
        );
        let running = meta.advice_column();
        let range = RangeCheckChip::configure(meta, running, table);
        DecodeStepConfig {
            instance,
            table,
            lanes,
            step_check,
            range,
        }
    }

    fn synthesize(
        &self,
        config: DecodeStepConfig,
        mut layouter: impl Layouter<Fp>,
    ) -> Result<(), Error> {
        let shape = self.shape;
        if self.steps.len() != shape.steps || self.steps.iter().any(|s| s.rows.len() != shape.vocab)
        {
            return Err(Error::Synthesis);
        }
        let tables = shape.tables();
        config.table.load(&mut layouter, &tables)?;
        let lanes = LaneChip::construct(config.lanes.clone());
        let range = RangeCheckChip::construct(config.range);
        let check = StepCheckChip::construct(config.step_check, range);
        for (index, step) in self.steps.iter().enumerate() {
            let cells = lanes.assign_step(
                layouter.namespace(|| format!("step {index} lanes")),
                LaneValues {
                    max: step.max_logit,
                    greedy: step.statement.sampler == crate::statement::Sampler::Greedy,
                    logits: &step.logits,
                    rows: &step.rows,
                    rows_per_lane: shape.rows_per_lane(),
                },
            )?;
            check.check_step(
                layouter.namespace(|| format!("step {index} check")),
                config.instance,
                index,
                StepCheckValues::of(step, &tables),
                &cells,
            )?;
        }
        Ok(())
    }
}
