//! halo2 circuits for verifiable decoding: the statement that a token and its
//! log-probability follow from committed logits (greedy or seeded sampling).
//!
//! - [`statement`]: the public inputs of a step;
//! - [`fixed_point`] and [`tables`]: the arithmetic every party recomputes;
//! - [`witness`]: the native computation of a step, which the prover fills in;
//! - [`commitment`]: the Poseidon commitment to packed logits;
//! - [`chips`]: one chip per constraint family;
//! - [`decode_step`]: the circuit composing them over `T` steps;
//! - [`head_step`]: its variant for small models, with the head matmul in the
//!   circuit and a commitment to the hidden state as the public input.

pub mod chips;
pub mod commitment;
pub mod decode_step;
pub mod fixed_point;
pub mod head_step;
pub mod statement;
pub mod tables;
pub mod witness;

pub use decode_step::{CircuitShape, DecodeStepCircuit, ShapeError};
pub use fixed_point::FixedPoint;
pub use halo2_proofs::pasta::Fp;
pub use head_step::{
    HeadDecodeStepCircuit, HeadError, HeadFormat, HeadShape, HeadStepWitness, HeadWeights,
};
pub use statement::{Sampler, StepStatement};
pub use tables::Tables;
pub use witness::{sample_token, StepError, StepWitness};

#[cfg(test)]
mod tests;
