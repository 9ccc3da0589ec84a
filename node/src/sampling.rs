//! The head node's pick: the token a client's sampler chooses from the logits
//! the node computed, by the circuit's own arithmetic
//! (`circuits::sample_token` at the proof's fixed point), with the
//! log-probability a proof of the pick states.

use std::sync::{Arc, Mutex};

use circuits::fixed_point::Temperature;
use circuits::{FixedPoint, Sampler, Tables};
use wire::{TokenSampler, WireError};

/// A token and its log-probability in nats at the sampler's temperature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub logprob: f64,
}

/// The circuit's sampler for a wire sampler; a temperature the statement
/// cannot hold exactly is the client's mistake.
pub fn circuit_sampler(sampler: TokenSampler) -> Result<Sampler, WireError> {
    Ok(match sampler {
        TokenSampler::Greedy => Sampler::Greedy,
        TokenSampler::Sample { temperature, r } => Sampler::Sample {
            temperature: Temperature::new(temperature)
                .map_err(|e| WireError::Malformed(e.to_string()))?,
            r,
        },
    })
}

/// The tables of the temperatures asked for lately (building them takes a
/// pass over 2^17 exponentials), the most recent last.
static TABLES: Mutex<Vec<Arc<Tables>>> = Mutex::new(Vec::new());
const KEPT_TABLES: usize = 4;

fn tables(temperature: Temperature) -> Arc<Tables> {
    let mut kept = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = kept.iter().position(|t| t.temperature == temperature) {
        let tables = kept.remove(i);
        kept.push(Arc::clone(&tables));
        return tables;
    }
    let tables = Arc::new(Tables::new(FixedPoint::default(), temperature));
    if kept.len() == KEPT_TABLES {
        kept.remove(0);
    }
    kept.push(Arc::clone(&tables));
    tables
}

/// What `sampler` picks from one row of logits.
pub fn pick(logits: &[f32], sampler: TokenSampler) -> Result<Pick, WireError> {
    pick_with(logits, circuit_sampler(sampler)?)
}

/// [`pick`] with the circuit's sampler (an auditor's, from a transcript).
pub fn pick_with(logits: &[f32], sampler: Sampler) -> Result<Pick, WireError> {
    let fixed_point = FixedPoint::default();
    let z = fixed_point
        .quantize_all(logits)
        .map_err(|e| WireError::Internal(format!("the logits do not fit the proof: {e}")))?;
    let statement = circuits::pick(&tables(sampler.temperature()), &z, sampler)
        .map_err(|e| WireError::Internal(format!("picking a token: {e}")))?;
    Ok(Pick {
        token: statement.token,
        logprob: statement.logprob_nats(fixed_point.frac_bits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_largest_and_sampling_follows_r() {
        let logits = [0.5f32, 2.0, -1.0, 2.0];
        let greedy = pick(&logits, TokenSampler::Greedy).expect("pick");
        assert_eq!(greedy.token, 1);
        // log softmax of the maximum, within the statement's bound.
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((greedy.logprob - (2.0 - lse)).abs() < 1e-3, "{greedy:?}");
        // r near 0 takes the first token, near 2^64 the last.
        let sample = |r| {
            pick(
                &logits,
                TokenSampler::Sample {
                    temperature: 1.0,
                    r,
                },
            )
            .expect("pick")
            .token
        };
        assert_eq!(sample(0), 0);
        assert_eq!(sample(u64::MAX), 3);
        let hot = pick(
            &logits,
            TokenSampler::Sample {
                temperature: 0.5,
                r: u64::MAX / 2,
            },
        )
        .expect("pick");
        assert!(hot.logprob <= 0.0);
    }

    #[test]
    fn a_temperature_the_statement_cannot_hold_is_refused() {
        for temperature in [0.0, -1.0, 0.0005, 2.5, f64::NAN] {
            let err = pick(&[1.0], TokenSampler::Sample { temperature, r: 1 }).unwrap_err();
            assert!(
                matches!(err, WireError::Malformed(_)),
                "{temperature}: {err}"
            );
        }
    }
}
