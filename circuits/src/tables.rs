//! The lookup tables every decode-step circuit loads, computed natively.

use crate::fixed_point::{FixedPoint, TABLE_BITS, TABLE_ROWS};

/// `exp[u] = T[u]` and `lse[d] = G[d]` (see [`FixedPoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub exp: Vec<u64>,
    pub lse: Vec<u128>,
}

impl Tables {
    pub fn new(fixed_point: FixedPoint) -> Tables {
        Tables {
            exp: fixed_point.exp_table(),
            lse: fixed_point.lse_table(),
        }
    }

    /// `T[w]`, which is 0 for `w` past the table.
    pub fn exp(&self, w: u64) -> u64 {
        if w < TABLE_ROWS as u64 {
            self.exp[w as usize]
        } else {
            0
        }
    }

    /// The `delta` with `G[delta] <= sum < G[delta + 1]`, if it is in the table.
    pub fn lse_index(&self, sum: u128) -> Option<u64> {
        let d = self.lse.partition_point(|&g| g <= sum);
        (1..=TABLE_ROWS).contains(&d).then(|| (d - 1) as u64)
    }
}

const _: () = assert!(TABLE_BITS == 16);
