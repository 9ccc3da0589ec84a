//! The native (out-of-circuit) computation of one decode step: everything the
//! circuit checks, computed the same way, so the prover can fill the witness and
//! anyone can recompute the expected public statement.

use crate::fixed_point::{
    Temperature, LOGIT_BITS, LOGPROB_EXTRA_BITS, R_BITS, TABLE_BITS, TEMPERATURE_SCALE,
};
use crate::statement::{Sampler, StepStatement};
use crate::tables::Tables;

/// What went wrong building a step witness.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StepError {
    #[error("the step has {got} logits but the circuit is built for a vocabulary of {expected}")]
    VocabMismatch { expected: usize, got: usize },
    #[error("logit at vocabulary index {index} is {value}, outside |z| < 2^{LOGIT_BITS}")]
    LogitOutOfRange { index: usize, value: i64 },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    TokenOutOfVocab { token: u32, vocab: usize },
    #[error("token {claimed} does not follow from the logits under {sampler}: the sampler gives {expected}")]
    WrongToken {
        claimed: u32,
        expected: u32,
        sampler: String,
    },
    #[error("the step is {sampler}, but these tables (and circuit) are for temperature {tables}")]
    TemperatureMismatch {
        sampler: String,
        tables: Temperature,
    },
    #[error(
        "sum of exponentials {0} is outside the log-sum-exp table (vocabulary too large for F)"
    )]
    SumOutOfTable(u128),
}

/// One logit row of the witness (see `chips::lane` for the constraints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogitRow {
    /// `u = m - z`, split as `u_lo + 2^16 u_hi`.
    pub u_lo: u64,
    pub u_hi: i64,
    /// `T[u_lo]` and `T[u_lo + 2^16]`.
    pub t_lo: u64,
    pub t_hi: u64,
    /// `e = T[u]` (0 past the table).
    pub e: u64,
    /// 1 for every index before the emitted token, 0 from it on.
    pub before: bool,
}

impl LogitRow {
    /// `u = u_lo + 2^16 u_hi`.
    pub fn distance(&self) -> i64 {
        self.u_lo as i64 + (self.u_hi << TABLE_BITS)
    }
}

/// Everything one decode step needs: the statement and the witness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepWitness {
    pub statement: StepStatement,
    pub logits: Vec<i64>,
    /// `m`: the maximum logit.
    pub max_logit: i64,
    pub rows: Vec<LogitRow>,
    /// `S = sum e_i`.
    pub sum: u128,
    /// `delta` with `G[delta] <= S < G[delta + 1]`.
    pub delta: u64,
    /// Inclusive prefix sum at the token, `P_{y+1}`.
    pub prefix_at_token: u128,
    /// `floor(r * S / 2^64)` (0 for greedy).
    pub scaled_r: u128,
    /// The token's tempered distance in log-probability units,
    /// `q = floor(2^4 1000 u_y / milli)`, and the remainder of that division.
    pub token_quotient: i64,
    pub token_remainder: i64,
}

/// The token a sampler picks from quantized logits, by the circuit's own arithmetic.
pub fn sample_token(tables: &Tables, logits: &[i64], sampler: Sampler) -> Result<u32, StepError> {
    let max = checked_max(tables, logits, sampler)?;
    Ok(choose(tables, logits, max, sampler))
}

/// The token `sampler` picks from quantized logits and the statement a proof
/// of the pick makes (its log-probability included; position 0): what
/// [`StepWitness::new`] states, without building the witness.
pub fn pick(tables: &Tables, logits: &[i64], sampler: Sampler) -> Result<StepStatement, StepError> {
    let max = checked_max(tables, logits, sampler)?;
    let token = choose(tables, logits, max, sampler);
    let sum = exp_sum(tables, logits, max);
    let delta = tables.lse_index(sum).ok_or(StepError::SumOutOfTable(sum))?;
    let (token_quotient, _) = tempered_token_term(max - logits[token as usize], tables.temperature);
    Ok(StepStatement {
        token,
        logprob: -((delta as i64) << LOGPROB_EXTRA_BITS) - token_quotient,
        sampler,
        position: 0,
    })
}

/// The largest logit, once the logits are in range and the tables are the
/// sampler's (the range from the extremes: a head node runs this on every
/// token).
fn checked_max(tables: &Tables, logits: &[i64], sampler: Sampler) -> Result<i64, StepError> {
    check_temperature(tables, sampler)?;
    let limit = 1i64 << LOGIT_BITS;
    let (Some(&max), Some(&min)) = (logits.iter().max(), logits.iter().min()) else {
        return Err(StepError::VocabMismatch {
            expected: 1,
            got: 0,
        });
    };
    if max >= limit || min <= -limit {
        let index = logits
            .iter()
            .position(|z| z.unsigned_abs() >= limit as u64)
            .unwrap_or(0);
        return Err(StepError::LogitOutOfRange {
            index,
            value: logits[index],
        });
    }
    Ok(max)
}

/// `S = sum_i T[max - z_i]`.
fn exp_sum(tables: &Tables, logits: &[i64], max: i64) -> u128 {
    logits
        .iter()
        .map(|&z| tables.exp((max - z) as u64) as u128)
        .sum()
}

/// Greedy: the first largest logit. Sampling: the first token whose
/// inclusive prefix sum of `T[max - z_i]` exceeds `floor(r S / 2^64)`.
fn choose(tables: &Tables, logits: &[i64], max: i64, sampler: Sampler) -> u32 {
    match sampler {
        Sampler::Greedy => logits.iter().position(|&z| z == max).unwrap_or(0) as u32,
        Sampler::Sample { r, .. } => {
            let target = (r as u128 * exp_sum(tables, logits, max)) >> R_BITS;
            let mut prefix = 0u128;
            for (i, &z) in logits.iter().enumerate() {
                prefix += tables.exp((max - z) as u64) as u128;
                if target < prefix {
                    return i as u32;
                }
            }
            unreachable!("target < total since r < 2^64")
        }
    }
}

/// The tables must be those of the sampler's temperature (1 for greedy).
fn check_temperature(tables: &Tables, sampler: Sampler) -> Result<(), StepError> {
    if sampler.temperature() == tables.temperature {
        Ok(())
    } else {
        Err(StepError::TemperatureMismatch {
            sampler: sampler.to_string(),
            tables: tables.temperature,
        })
    }
}

/// `(q, rem)` with `2^4 1000 u = milli q + rem`, `0 <= rem < milli`.
fn tempered_token_term(u: i64, temperature: Temperature) -> (i64, i64) {
    let scaled = ((u as i128) << LOGPROB_EXTRA_BITS) * TEMPERATURE_SCALE as i128;
    let milli = temperature.milli() as i128;
    (
        scaled.div_euclid(milli) as i64,
        scaled.rem_euclid(milli) as i64,
    )
}

impl StepWitness {
    /// Computes the witness for emitting `token` from `logits` under `sampler`,
    /// refusing a token that does not follow from them.
    pub fn new(
        tables: &Tables,
        logits: Vec<i64>,
        token: u32,
        sampler: Sampler,
    ) -> Result<StepWitness, StepError> {
        let vocab = logits.len();
        if token as usize >= vocab {
            return Err(StepError::TokenOutOfVocab { token, vocab });
        }
        let expected = sample_token(tables, &logits, sampler)?;
        if expected != token {
            return Err(StepError::WrongToken {
                claimed: token,
                expected,
                sampler: sampler.to_string(),
            });
        }
        let max_logit = *logits.iter().max().expect("vocab > token >= 0");
        Self::build(tables, logits, token, sampler, max_logit)
    }

    /// The witness for any token and claimed maximum, without checking that the
    /// token follows from the logits: what a cheating prover would fill in.
    pub fn build(
        tables: &Tables,
        logits: Vec<i64>,
        token: u32,
        sampler: Sampler,
        max_logit: i64,
    ) -> Result<StepWitness, StepError> {
        check_temperature(tables, sampler)?;
        let r = match sampler {
            Sampler::Greedy => 0,
            Sampler::Sample { r, .. } => r,
        };
        let lo_mask = (1i64 << TABLE_BITS) - 1;
        let mut sum = 0u128;
        let mut prefix_at_token = 0u128;
        let rows: Vec<LogitRow> = logits
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                // With a cheating maximum `u` can be negative; the high limb then
                // carries the sign and the circuit's range lookup rejects it.
                let u = max_logit - z;
                let (u_lo, u_hi) = ((u & lo_mask) as u64, u >> TABLE_BITS);
                let t_lo = tables.exp[u_lo as usize];
                let t_hi = tables.exp[u_lo as usize + (1 << TABLE_BITS)];
                // The sampler's weight, so an honest token is always provable.
                let e = u64::try_from(u).map_or(0, |u| tables.exp(u));
                sum += e as u128;
                if i == token as usize {
                    prefix_at_token = sum;
                }
                LogitRow {
                    u_lo,
                    u_hi,
                    t_lo,
                    t_hi,
                    e,
                    before: i < token as usize,
                }
            })
            .collect();
        let delta = tables.lse_index(sum).ok_or(StepError::SumOutOfTable(sum))?;
        let (token_quotient, token_remainder) =
            tempered_token_term(rows[token as usize].distance(), tables.temperature);
        let logprob = -((delta as i64) << LOGPROB_EXTRA_BITS) - token_quotient;
        let scaled_r = (r as u128 * sum) >> R_BITS;
        Ok(StepWitness {
            statement: StepStatement {
                token,
                logprob,
                sampler,
                position: 0,
            },
            logits,
            max_logit,
            rows,
            sum,
            delta,
            prefix_at_token,
            scaled_r,
            token_quotient,
            token_remainder,
        })
    }

    /// `u_y`, the token's distance from the maximum.
    pub fn token_distance(&self) -> i64 {
        self.rows[self.statement.token as usize].distance()
    }
}
