//! halo2 circuits for verifiable decoding: the statement that a token and its
//! log-probability follow from committed logits (greedy or seeded sampling).
//!
//! - [`statement`]: the public inputs of a step;
//! - [`fixed_point`] and [`tables`]: the arithmetic every party recomputes;
//! - [`witness`]: the native computation of a step, which the prover fills in;
//! - [`chips`]: one chip per constraint family;
//! - [`decode_step`]: the circuit composing them over `T` steps;
//! - [`floor`]: the least a circuit of this design costs (one exp lookup and a
//!   running sum per logit), which `zkinfer cost` measures beside it;
//! - [`opening`]: the commitment to the logits (the proof's own commitments to
//!   their columns) and how whoever holds the logits recomputes it.

pub mod chips;
pub mod decode_step;
pub mod fixed_point;
pub mod floor;
pub mod opening;
pub mod statement;
pub mod tables;
pub mod witness;

pub use decode_step::{CircuitShape, DecodeStepCircuit, ShapeError};
pub use fixed_point::FixedPoint;
pub use halo2_proofs::pasta::Fp;
pub use statement::{Sampler, StepStatement};
pub use tables::Tables;
pub use witness::{pick, sample_token, StepError, StepWitness};

#[cfg(test)]
mod tests;
