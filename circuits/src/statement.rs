//! The public statement of one decode step: what a proof guarantees.
//!
//! See `docs/statement.md` for the full statement and its error bound.

use ff::PrimeField as _;
use std::fmt;

use halo2_proofs::pasta::Fp;

use crate::fixed_point::{Temperature, LOGPROB_EXTRA_BITS};

/// How the token was chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// The first index of the largest logit.
    Greedy,
    /// Inverse-CDF sampling from softmax(z / tau) with the uniform integer `r`
    /// in `[0, 2^64)`.
    Sample { temperature: Temperature, r: u64 },
}

impl Sampler {
    /// The temperature of the softmax the log-probability is taken from: 1 for
    /// greedy decoding.
    pub fn temperature(&self) -> Temperature {
        match self {
            Sampler::Greedy => Temperature::ONE,
            Sampler::Sample { temperature, .. } => *temperature,
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::Greedy => write!(f, "greedy"),
            Sampler::Sample { temperature, r } => {
                write!(f, "sampling (temperature {temperature}, r {r})")
            }
        }
    }
}

/// The public inputs of one token step. The logits they follow from are
/// committed by the proof itself (see [`crate::opening`]); the temperature is
/// the circuit's, fixed in its verifying key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepStatement {
    /// The emitted token id.
    pub token: u32,
    /// The log-probability of the token, in units of `2^-(F + 4)` nats (never
    /// positive).
    pub logprob: i64,
    pub sampler: Sampler,
    /// The token's position in the generation. The circuit does not constrain it,
    /// but as a public input it is bound to the proof like every other.
    pub position: u64,
}

/// Instance cells per step, in this order.
pub const INSTANCE_PER_STEP: usize = 5;

impl StepStatement {
    /// `[y, lp, greedy, r, position]` as field elements (`lp` negated into the
    /// field).
    pub fn instance(&self) -> [Fp; INSTANCE_PER_STEP] {
        let (greedy, r) = match self.sampler {
            Sampler::Greedy => (1, 0),
            Sampler::Sample { r, .. } => (0, r),
        };
        [
            Fp::from(self.token as u64),
            signed(self.logprob as i128),
            Fp::from(greedy),
            Fp::from(r),
            Fp::from(self.position),
        ]
    }

    /// The log-probability in nats, for logits scaled by `2^frac_bits`.
    pub fn logprob_nats(&self, frac_bits: u32) -> f64 {
        self.logprob as f64 * (-((frac_bits + LOGPROB_EXTRA_BITS) as f64)).exp2()
    }
}

/// An integer as a field element (negative values wrap).
pub fn signed(v: i128) -> Fp {
    let f = Fp::from_u128(v.unsigned_abs());
    if v < 0 {
        -f
    } else {
        f
    }
}
