//! The chips of the decode-step circuit, one constraint family each.

pub mod lane;
pub mod range_check;
pub mod step_check;
pub mod table;

use ff::PrimeField as _;
use halo2_proofs::{circuit::Value, pasta::Fp};

/// A known `u128` as a circuit value.
pub(crate) fn known(v: u128) -> Value<Fp> {
    Value::known(Fp::from_u128(v))
}

pub(crate) use crate::statement::signed;

/// A known signed integer as a circuit value.
pub(crate) fn known_signed(v: i128) -> Value<Fp> {
    Value::known(signed(v))
}
