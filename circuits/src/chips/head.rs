//! The in-circuit head: `z = round(W h / 2^16)` with the weights `W` in fixed
//! columns (so the verifying key binds them), and the packing of the hidden state
//! `h` that the commitment `C_h` hashes.
//!
//! Two regions per step.
//!
//! **Hidden region** (`d + 1` rows): a carry row, then row `1 + j` holds
//! `value = h_j`, `limb = h_j + 2^24` and `pack`:
//! - "hidden limb": `limb = value + 2^24`; `limb` is range-checked to 25 bits, so
//!   `h_j` is an integer in `[-2^24, 2^24)`;
//! - "pack hidden": `pack = (1 - q_hidden_start) 2^25 pack_prev + limb`, Horner over
//!   groups of ten limbs (`q_hidden_start` at `j mod 10 = 0`); the last row of each
//!   group is a packed element of `C_h` (250 bits, injective).
//!
//! **Product region** (`1 + V P` rows, `P = ceil(d / c)` rows per logit): a carry row,
//! then logit `i` on rows `1 + i P .. 1 + (i + 1) P`. Row `r` of logit `i` holds the
//! weights `W[i][r c .. r c + c]` in the `c` fixed columns (0 past `d`) and the hidden
//! values `h[r c .. r c + c]` in the `c` advice columns:
//! - "multiply-accumulate": `acc = [acc_prev] + sum_t W_t h_t` (`acc_prev` except on
//!   a logit's first row), so the last row of logit `i` holds `acc_i = sum_j W_ij h_j`;
//! - "hidden state repeats": `h_t = h_t(+P)` on every row of logits `0 .. V - 1`: the
//!   copy of `h` is the same for every logit, and logit 0's copy is tied to the
//!   hidden region by copy constraints;
//! - on the last row of each logit (`q_out`), with `limb = z_i + 2^24` and
//!   `value = rem_i`: "rounding" `acc_i + 2^15 = 2^16 (limb - 2^24) + rem_i`, `limb`
//!   range-checked to 25 bits and `rem_i` to 16 bits; and "pack logits"
//!   `pack = (1 - q_group_start) 2^27 pack(-P) + (z_i + 2^26)`, the lanes' packing of
//!   the logits (groups of nine, see [`crate::commitment`]).
//!
//! Soundness: `|h_j| <= 2^24` and `|W_ij| < 2^24` (checked when the weights are
//! built) bound `|acc_i| < d 2^48`, far from the field's 2^254, so `acc_i` is the
//! integer `sum_j W_ij h_j`; with `rem_i < 2^16` and `|z_i| <= 2^24` both sides of the
//! rounding equation are integers below 2^60, so it holds over the integers and
//! `z_i = floor((acc_i + 2^15) / 2^16)`. The packed logit limbs lie in
//! `[2^25, 3 2^25)` and the lanes' limbs in `[0, 2^27)`, so equal packed elements
//! mean equal logits.

use std::sync::Arc;

use halo2_proofs::{
    circuit::{AssignedCell, Layouter, Value},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Expression, Fixed, Selector},
    poly::Rotation,
};

use super::lane::pow2;
use super::range_check::{RangeCheckChip, RangeCheckInstructions, Width};
use super::{known_signed, signed};
use crate::commitment::{LIMBS_PER_ELEMENT, LIMB_BITS, LIMB_OFFSET};
use crate::head_step::HeadWeights;

/// `rem` bits: the product scale is `2^(F + 16)`, the logits' `2^F`.
pub const REM_BITS: u32 = 16;
/// `|h_j| <= 2^HIDDEN_BITS` (the limb `h + 2^24` is range-checked to 25 bits).
pub const HIDDEN_BITS: u32 = 24;
/// Bits of a hidden-state limb.
pub const HIDDEN_LIMB_BITS: u32 = 25;
/// Hidden-state limbs per packed element (250 bits).
pub const HIDDEN_LIMBS_PER_ELEMENT: usize = 10;
/// In the circuit `|z_i| <= 2^OUT_BITS` (the limb `z + 2^24` is range-checked to 25
/// bits); the prover refuses `|z_i| >= 2^23` as everywhere else.
pub const OUT_BITS: u32 = 24;

/// A 16-bit range check (one limb, no top).
const BITS_16: Width = Width {
    limbs: 1,
    small_top: false,
};

/// Columns and selectors of the head chip.
#[derive(Clone, Debug)]
pub struct HeadConfig {
    weights: Vec<Column<Fixed>>,
    hidden: Vec<Column<Advice>>,
    acc: Column<Advice>,
    limb: Column<Advice>,
    value: Column<Advice>,
    pack: Column<Advice>,
    rows_per_logit: usize,
    q_first: Selector,
    q_next: Selector,
    q_repeat: Selector,
    q_out: Selector,
    q_group_start: Selector,
    q_hidden: Selector,
    q_hidden_start: Selector,
}

impl HeadConfig {
    /// `c`: products per row.
    pub fn columns(&self) -> usize {
        self.weights.len()
    }

    /// `P`: rows per logit.
    pub fn rows_per_logit(&self) -> usize {
        self.rows_per_logit
    }
}

/// The assigned hidden state of a step.
#[derive(Clone, Debug)]
pub struct HiddenCells {
    /// `h_j`, in order.
    pub values: Vec<AssignedCell<Fp, Fp>>,
    /// The packed elements that `C_h` hashes.
    pub elements: Vec<AssignedCell<Fp, Fp>>,
    /// The witnessed integers (what `values` hold).
    pub raw: Vec<i64>,
}

/// What the head chip proves.
pub trait HeadInstructions {
    /// Assigns the hidden state `h` (each `|h_j| <= 2^24`, range-checked) and packs it
    /// for the commitment `C_h`.
    fn assign_hidden(
        &self,
        layouter: impl Layouter<Fp>,
        hidden: &[i64],
    ) -> Result<HiddenCells, Error>;

    /// Constrains `z_i = floor((sum_j W_ij h_j + 2^15) / 2^16)` for every logit and
    /// returns the logits packed as the lanes pack them (groups of nine limbs
    /// `z + 2^26`), so the caller can tie them to the lanes' packed elements.
    /// `logits` and `remainders` are the prover's witness (`acc + 2^15 = 2^16 z + rem`).
    fn assign_logits(
        &self,
        layouter: impl Layouter<Fp>,
        hidden: &HiddenCells,
        logits: &[i64],
        remainders: &[i64],
    ) -> Result<Vec<AssignedCell<Fp, Fp>>, Error>;
}

#[cfg(test)]
thread_local! {
    /// Tests only: `(logit, j, delta)` makes the prover's copy of `h_j` for that logit
    /// `h_j + delta`, as a prover cheating on one logit's products would.
    pub(crate) static TAMPER_HIDDEN_COPY: std::cell::Cell<Option<(usize, usize, i64)>> =
        const { std::cell::Cell::new(None) };
}

/// The value the prover puts in logit `i`'s copy of `h_j` (honestly `h`).
fn hidden_copy(i: usize, j: usize, h: i64) -> i64 {
    #[cfg(test)]
    if let Some((logit, at, delta)) = TAMPER_HIDDEN_COPY.with(|t| t.get()) {
        if (logit, at) == (i, j) {
            return h + delta;
        }
    }
    let _ = (i, j);
    h
}

/// The head chip: the weights it holds are the fixed columns it assigns.
#[derive(Clone, Debug)]
pub struct HeadChip {
    config: HeadConfig,
    weights: Arc<HeadWeights>,
    range: RangeCheckChip,
}

fn constant(v: i128) -> Expression<Fp> {
    Expression::Constant(signed(v))
}

impl HeadChip {
    /// Configures `columns` products per row for a hidden size of `hidden`.
    pub fn configure(meta: &mut ConstraintSystem<Fp>, columns: usize, hidden: usize) -> HeadConfig {
        assert!(
            (1..=hidden).contains(&columns),
            "1 <= columns <= hidden (HeadShape checks it)"
        );
        let rows_per_logit = hidden.div_ceil(columns);
        let weights: Vec<Column<Fixed>> = (0..columns).map(|_| meta.fixed_column()).collect();
        let hidden_cols: Vec<Column<Advice>> = (0..columns).map(|_| meta.advice_column()).collect();
        let acc = meta.advice_column();
        let limb = meta.advice_column();
        let value = meta.advice_column();
        let pack = meta.advice_column();
        for &c in hidden_cols.iter().chain([&limb, &value, &pack]) {
            meta.enable_equality(c);
        }
        let config = HeadConfig {
            weights,
            hidden: hidden_cols,
            acc,
            limb,
            value,
            pack,
            rows_per_logit,
            q_first: meta.selector(),
            q_next: meta.selector(),
            q_repeat: meta.selector(),
            q_out: meta.selector(),
            q_group_start: meta.complex_selector(),
            q_hidden: meta.selector(),
            q_hidden_start: meta.complex_selector(),
        };
        let p = rows_per_logit as i32;
        let one = || Expression::Constant(Fp::one());

        meta.create_gate("multiply-accumulate", |meta| {
            let q_first = meta.query_selector(config.q_first);
            let q_next = meta.query_selector(config.q_next);
            let products = config
                .weights
                .iter()
                .zip(&config.hidden)
                .map(|(&w, &h)| meta.query_fixed(w) * meta.query_advice(h, Rotation::cur()))
                .reduce(|a, b| a + b)
                .expect("at least one column");
            let acc = meta.query_advice(config.acc, Rotation::cur());
            let acc_prev = meta.query_advice(config.acc, Rotation::prev());
            vec![
                (
                    "multiply-accumulate first",
                    q_first * (acc.clone() - products.clone()),
                ),
                ("multiply-accumulate", q_next * (acc - acc_prev - products)),
            ]
        });

        meta.create_gate("hidden state repeats", |meta| {
            let q = meta.query_selector(config.q_repeat);
            config
                .hidden
                .iter()
                .map(|&h| {
                    q.clone()
                        * (meta.query_advice(h, Rotation::cur())
                            - meta.query_advice(h, Rotation(p)))
                })
                .collect::<Vec<_>>()
        });

        meta.create_gate("head output", |meta| {
            let q = meta.query_selector(config.q_out);
            let q_start = meta.query_selector(config.q_group_start);
            let acc = meta.query_advice(config.acc, Rotation::cur());
            let limb = meta.query_advice(config.limb, Rotation::cur());
            let rem = meta.query_advice(config.value, Rotation::cur());
            let pack = meta.query_advice(config.pack, Rotation::cur());
            let pack_prev = meta.query_advice(config.pack, Rotation(-p));
            let z = limb - constant(1 << OUT_BITS);
            vec![
                (
                    "rounding",
                    q.clone()
                        * (acc + constant(1 << (REM_BITS - 1)) - pow2(REM_BITS) * z.clone() - rem),
                ),
                (
                    "pack logits",
                    q * (pack
                        - (one() - q_start) * pow2(LIMB_BITS) * pack_prev
                        - (z + constant(LIMB_OFFSET as i128))),
                ),
            ]
        });

        meta.create_gate("hidden state", |meta| {
            let q = meta.query_selector(config.q_hidden);
            let q_start = meta.query_selector(config.q_hidden_start);
            let limb = meta.query_advice(config.limb, Rotation::cur());
            let h = meta.query_advice(config.value, Rotation::cur());
            let pack = meta.query_advice(config.pack, Rotation::cur());
            let pack_prev = meta.query_advice(config.pack, Rotation::prev());
            vec![
                (
                    "hidden limb",
                    q.clone() * (limb.clone() - h - constant(1 << HIDDEN_BITS)),
                ),
                (
                    "pack hidden",
                    q * (pack - (one() - q_start) * pow2(HIDDEN_LIMB_BITS) * pack_prev - limb),
                ),
            ]
        });
        config
    }

    /// A chip for `weights` (of the hidden size it was configured for).
    pub fn construct(config: HeadConfig, weights: Arc<HeadWeights>, range: RangeCheckChip) -> Self {
        HeadChip {
            config,
            weights,
            range,
        }
    }

    /// Range-check rows of one step: 25 bits per hidden value, 25 + 16 bits per logit.
    pub fn range_rows(vocab: usize, hidden: usize) -> usize {
        hidden * Width::BITS_25.rows() + vocab * (Width::BITS_25.rows() + BITS_16.rows())
    }

    /// Constants (one per range check) of one step.
    pub fn constants(vocab: usize, hidden: usize) -> usize {
        hidden + 2 * vocab
    }

    /// Rows of the product and hidden regions of one step in the shared columns.
    pub fn rows(vocab: usize, hidden: usize, rows_per_logit: usize) -> usize {
        1 + vocab * rows_per_logit + 1 + hidden
    }
}

impl HeadInstructions for HeadChip {
    fn assign_hidden(
        &self,
        mut layouter: impl Layouter<Fp>,
        hidden: &[i64],
    ) -> Result<HiddenCells, Error> {
        let config = &self.config;
        if hidden.len() != self.weights.hidden() {
            return Err(Error::Synthesis);
        }
        let (values, limbs, elements) = layouter.assign_region(
            || "hidden state",
            |mut region| {
                region.assign_advice(
                    || "pack carry",
                    config.pack,
                    0,
                    || Value::known(Fp::zero()),
                )?;
                let mut values = Vec::with_capacity(hidden.len());
                let mut limbs = Vec::with_capacity(hidden.len());
                let mut elements = Vec::new();
                let mut pack = Fp::zero();
                for (j, &h) in hidden.iter().enumerate() {
                    let row = j + 1;
                    config.q_hidden.enable(&mut region, row)?;
                    let start = j % HIDDEN_LIMBS_PER_ELEMENT == 0;
                    if start {
                        config.q_hidden_start.enable(&mut region, row)?;
                    }
                    let limb = signed(h as i128 + (1 << HIDDEN_BITS));
                    pack = if start {
                        limb
                    } else {
                        pack * Fp::from(1u64 << HIDDEN_LIMB_BITS) + limb
                    };
                    values.push(region.assign_advice(
                        || "h",
                        config.value,
                        row,
                        || known_signed(h as i128),
                    )?);
                    limbs.push(region.assign_advice(
                        || "h limb",
                        config.limb,
                        row,
                        || Value::known(limb),
                    )?);
                    let cell =
                        region.assign_advice(|| "pack", config.pack, row, || Value::known(pack))?;
                    if (j + 1) % HIDDEN_LIMBS_PER_ELEMENT == 0 || j + 1 == hidden.len() {
                        elements.push(cell);
                    }
                }
                Ok((values, limbs, elements))
            },
        )?;
        for (j, limb) in limbs.iter().enumerate() {
            self.range.range_check(
                layouter.namespace(|| format!("hidden limb {j}")),
                limb,
                Width::BITS_25,
            )?;
        }
        Ok(HiddenCells {
            values,
            elements,
            raw: hidden.to_vec(),
        })
    }

    fn assign_logits(
        &self,
        mut layouter: impl Layouter<Fp>,
        hidden: &HiddenCells,
        logits: &[i64],
        remainders: &[i64],
    ) -> Result<Vec<AssignedCell<Fp, Fp>>, Error> {
        let config = &self.config;
        let weights = &self.weights;
        let (vocab, d) = (weights.vocab(), weights.hidden());
        if logits.len() != vocab || remainders.len() != vocab || hidden.raw.len() != d {
            return Err(Error::Synthesis);
        }
        let (c, p) = (config.columns(), config.rows_per_logit);
        let (outputs, elements) = layouter.assign_region(
            || "head products",
            |mut region| {
                region.assign_advice(
                    || "pack carry",
                    config.pack,
                    0,
                    || Value::known(Fp::zero()),
                )?;
                // Read (times zero) by the first logit's multiply-accumulate row.
                region.assign_advice(|| "acc carry", config.acc, 0, || Value::known(Fp::zero()))?;
                let mut outputs = Vec::with_capacity(vocab);
                let mut elements = Vec::with_capacity(crate::commitment::elements(vocab));
                let mut pack = Fp::zero();
                for i in 0..vocab {
                    let row_weights = weights.row(i);
                    let mut acc: i128 = 0;
                    for r in 0..p {
                        let row = 1 + i * p + r;
                        if r == 0 {
                            config.q_first.enable(&mut region, row)?;
                        } else {
                            config.q_next.enable(&mut region, row)?;
                        }
                        if i + 1 < vocab {
                            config.q_repeat.enable(&mut region, row)?;
                        }
                        for t in 0..c {
                            let j = r * c + t;
                            let (w, h) = if j < d {
                                (row_weights[j], hidden_copy(i, j, hidden.raw[j]))
                            } else {
                                (0, 0)
                            };
                            acc += w as i128 * h as i128;
                            region.assign_fixed(
                                || "W",
                                config.weights[t],
                                row,
                                || Value::known(signed(w as i128)),
                            )?;
                            if i == 0 && j < d {
                                hidden.values[j].copy_advice(
                                    || "h",
                                    &mut region,
                                    config.hidden[t],
                                    row,
                                )?;
                            } else {
                                region.assign_advice(
                                    || "h",
                                    config.hidden[t],
                                    row,
                                    || known_signed(h as i128),
                                )?;
                            }
                        }
                        region.assign_advice(|| "acc", config.acc, row, || known_signed(acc))?;
                    }
                    let row = (i + 1) * p;
                    config.q_out.enable(&mut region, row)?;
                    let start = i % LIMBS_PER_ELEMENT == 0;
                    if start {
                        config.q_group_start.enable(&mut region, row)?;
                    }
                    let z = logits[i] as i128;
                    let limb = region.assign_advice(
                        || "z limb",
                        config.limb,
                        row,
                        || known_signed(z + (1 << OUT_BITS)),
                    )?;
                    let rem = region.assign_advice(
                        || "rem",
                        config.value,
                        row,
                        || known_signed(remainders[i] as i128),
                    )?;
                    let z_limb = signed(z + LIMB_OFFSET as i128);
                    pack = if start {
                        z_limb
                    } else {
                        pack * Fp::from(1u64 << LIMB_BITS) + z_limb
                    };
                    let cell =
                        region.assign_advice(|| "pack", config.pack, row, || Value::known(pack))?;
                    if (i + 1) % LIMBS_PER_ELEMENT == 0 || i + 1 == vocab {
                        elements.push(cell);
                    }
                    outputs.push((limb, rem));
                }
                Ok((outputs, elements))
            },
        )?;
        for (i, (limb, rem)) in outputs.iter().enumerate() {
            self.range.range_check(
                layouter.namespace(|| format!("logit limb {i}")),
                limb,
                Width::BITS_25,
            )?;
            self.range
                .range_check(layouter.namespace(|| format!("rem {i}")), rem, BITS_16)?;
        }
        Ok(elements)
    }
}

// Ten 25-bit hidden limbs and nine 27-bit logit limbs stay below the 254-bit field,
// and the head's logit limbs z + 2^26 with |z| <= 2^24 lie inside the lanes' [0, 2^27).
const _: () = {
    assert!(HIDDEN_LIMB_BITS as usize * HIDDEN_LIMBS_PER_ELEMENT < 254);
    assert!(LIMB_BITS as usize * LIMBS_PER_ELEMENT < 254);
    assert!((1i64 << OUT_BITS) < LIMB_OFFSET);
    assert!(LIMB_OFFSET + (1i64 << OUT_BITS) < 1 << LIMB_BITS);
};
