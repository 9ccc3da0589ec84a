//! The native (out-of-circuit) computation of one decode step: everything the
//! circuit checks, computed the same way, so the prover can fill the witness and
//! anyone can recompute the expected public statement.

use crate::fixed_point::{BETA_ONE, LOGIT_BITS, R_BITS, TABLE_BITS, TEMP_SHIFT};
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
    #[error("greedy decoding uses beta = {BETA_ONE} and r = 0, got beta = {beta}, r = {r}")]
    BadGreedy { beta: u32, r: u64 },
    #[error("beta = {0} is outside 1..=65535")]
    BadBeta(u32),
    #[error(
        "sum of exponentials {0} is outside the log-sum-exp table (vocabulary too large for F)"
    )]
    SumOutOfTable(u128),
}

/// One logit row of the witness (see `chips::lane` for the constraints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogitRow {
    /// `d = m - z - before * greedy`, split as `d_lo + 2^16 d_hi`.
    pub d_lo: u64,
    pub d_hi: i64,
    /// `w = floor((m - z) * beta / 2^9)`, split as `w_lo + 2^16 w_hi`.
    pub w_lo: u64,
    pub w_hi: i64,
    /// `(m - z) * beta - 2^9 * w`.
    pub rem: u64,
    /// `T[w_lo]`.
    pub t: u64,
    /// `e = T[w]` (0 past the table).
    pub e: u64,
    /// 1 for every index before the emitted token, 0 from it on.
    pub before: bool,
}

impl LogitRow {
    /// `w = w_lo + 2^16 w_hi`.
    pub fn distance(&self) -> i64 {
        self.w_lo as i64 + (self.w_hi << TABLE_BITS)
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
}

/// The token a sampler picks from quantized logits, by the circuit's own arithmetic.
pub fn sample_token(tables: &Tables, logits: &[i64], sampler: Sampler) -> Result<u32, StepError> {
    check_logits(logits)?;
    let max = *logits.iter().max().ok_or(StepError::VocabMismatch {
        expected: 1,
        got: 0,
    })?;
    match sampler {
        Sampler::Greedy => Ok(logits.iter().position(|&z| z == max).unwrap_or(0) as u32),
        Sampler::Sample { beta, r } => {
            check_beta(beta)?;
            let weights: Vec<u64> = logits
                .iter()
                .map(|&z| tables.exp(tempered(max - z, beta)))
                .collect();
            let total: u128 = weights.iter().map(|&e| e as u128).sum();
            let target = (r as u128 * total) >> R_BITS;
            let mut prefix = 0u128;
            for (i, &e) in weights.iter().enumerate() {
                prefix += e as u128;
                if target < prefix {
                    return Ok(i as u32);
                }
            }
            unreachable!("target < total since r < 2^64")
        }
    }
}

/// `floor(u * beta / 2^9)`.
fn tempered(u: i64, beta: u32) -> u64 {
    ((u as u64) * beta as u64) >> crate::fixed_point::TEMP_SHIFT
}

fn check_logits(logits: &[i64]) -> Result<(), StepError> {
    let limit = 1i64 << LOGIT_BITS;
    match logits.iter().position(|z| z.abs() >= limit) {
        Some(index) => Err(StepError::LogitOutOfRange {
            index,
            value: logits[index],
        }),
        None => Ok(()),
    }
}

fn check_beta(beta: u32) -> Result<(), StepError> {
    if (1..=65_535).contains(&beta) {
        Ok(())
    } else {
        Err(StepError::BadBeta(beta))
    }
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
        let (greedy, beta, r) = match sampler {
            Sampler::Greedy => (true, BETA_ONE, 0),
            Sampler::Sample { beta, r } => (false, beta, r),
        };
        let lo_mask = (1i64 << TABLE_BITS) - 1;
        let mut sum = 0u128;
        let mut prefix_at_token = 0u128;
        let rows: Vec<LogitRow> = logits
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let before = i < token as usize;
                // With a cheating maximum these can be negative; the high parts then
                // carry the sign and the circuit's range lookups reject them.
                let u = max_logit - z;
                let d = u - i64::from(greedy && before);
                let scaled = u * beta as i64;
                let w = scaled.div_euclid(1 << TEMP_SHIFT);
                let rem = scaled.rem_euclid(1 << TEMP_SHIFT) as u64;
                let (w_lo, w_hi) = ((w & lo_mask) as u64, w >> TABLE_BITS);
                let t = tables.exp[w_lo as usize];
                let e = if w_hi == 0 { t } else { 0 };
                sum += e as u128;
                if i == token as usize {
                    prefix_at_token = sum;
                }
                LogitRow {
                    d_lo: (d & lo_mask) as u64,
                    d_hi: d >> TABLE_BITS,
                    w_lo,
                    w_hi,
                    rem,
                    t,
                    e,
                    before,
                }
            })
            .collect();
        let delta = tables.lse_index(sum).ok_or(StepError::SumOutOfTable(sum))?;
        let logprob = -(delta as i64)
            - if greedy {
                0
            } else {
                rows[token as usize].distance()
            };
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
        })
    }

    /// `w_y`, the token's tempered distance from the maximum.
    pub fn token_distance(&self) -> i64 {
        self.rows[self.statement.token as usize].distance()
    }
}
