//! The lookup tables every decode-step circuit loads, computed natively.

use crate::fixed_point::{FixedPoint, Temperature, TABLE_BITS, TABLE_ROWS};

/// `exp[u] = T[u]` at one temperature and `lse[d] = G[d]` (see [`FixedPoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub temperature: Temperature,
    /// `T[u]` for `u` in `0..2^17`: row `i` of the circuit's table holds
    /// `exp[i]` and `exp[i + 2^16]`.
    pub exp: Vec<u64>,
    pub lse: Vec<u128>,
}

impl Tables {
    pub fn new(fixed_point: FixedPoint, temperature: Temperature) -> Tables {
        Tables {
            temperature,
            exp: fixed_point.exp_table(temperature),
            lse: fixed_point.lse_table(),
        }
    }

    /// `T[u]`, which is 0 for `u` past the table.
    pub fn exp(&self, u: u64) -> u64 {
        self.exp.get(u as usize).copied().unwrap_or(0)
    }

    /// The `delta` with `G[delta] <= sum < G[delta + 1]`, if it is in the table.
    pub fn lse_index(&self, sum: u128) -> Option<u64> {
        let d = self.lse.partition_point(|&g| g <= sum);
        (1..=TABLE_ROWS).contains(&d).then(|| (d - 1) as u64)
    }
}

const _: () = assert!(TABLE_BITS == 16);
