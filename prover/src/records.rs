//! Decode records: the input of `zkinfer prove --records`.
//!
//! ```json
//! {"vocab": 4, "steps": [
//!   {"position": 7, "logits": [0.5, 2.0, -1.0, 0.0], "token": 1, "sampler": {"greedy": {}}},
//!   {"position": 8, "logits": [0.5, 2.0, -1.0, 0.0], "token": 0,
//!    "sampler": {"sample": {"temperature": 1.0, "r": "1234567890123"}}}
//! ]}
//! ```
//!
//! Every step of one file has one temperature (greedy steps count as 1): the
//! circuit that proves them is built for it.

use serde::{Deserialize, Serialize};

use circuits::fixed_point::{Temperature, TemperatureError};
use circuits::Sampler;

/// Why a decode record's sampler cannot be proven as it is.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Temperature(#[from] TemperatureError),
    #[error("r = {0:?} is not a decimal u64")]
    NotDecimal(String),
    #[error("step at position {position}: {source}")]
    AtStep {
        position: u64,
        source: Box<RecordError>,
    },
    #[error(
        "step at position {position} is {sampler}, but the step at position {first_position} is {first}: \
         one bundle proves one temperature (greedy steps count as 1), so prove each \
         temperature's steps separately"
    )]
    MixedTemperatures {
        position: u64,
        sampler: Sampler,
        first_position: u64,
        first: Sampler,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    pub vocab: usize,
    pub steps: Vec<Record>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub position: u64,
    pub logits: Vec<f32>,
    pub token: u32,
    pub sampler: RecordSampler,
}

/// `{"greedy": {}}` or `{"sample": {"temperature": t, "r": "<decimal u64>"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RecordSampler {
    Greedy {},
    Sample { temperature: f64, r: String },
}

impl Records {
    /// The temperature every step shares (1 when all are greedy or there are none).
    pub fn temperature(&self) -> Result<Temperature, RecordError> {
        let mut first: Option<(u64, Sampler)> = None;
        for step in &self.steps {
            let sampler = step.sampler().map_err(|e| RecordError::AtStep {
                position: step.position,
                source: Box::new(e),
            })?;
            match first {
                None => first = Some((step.position, sampler)),
                Some((position, seen)) if seen.temperature() != sampler.temperature() => {
                    return Err(RecordError::MixedTemperatures {
                        position: step.position,
                        sampler,
                        first_position: position,
                        first: seen,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(first.map_or(Temperature::ONE, |(_, s)| s.temperature()))
    }
}

impl Record {
    pub fn sampler(&self) -> Result<Sampler, RecordError> {
        crate::sampler_of(&self.sampler)
    }
}
