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

use circuits::fixed_point::Temperature;
use circuits::Sampler;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub fn temperature(&self) -> Result<Temperature, String> {
        let mut first: Option<(u64, Sampler)> = None;
        for step in &self.steps {
            let sampler = step
                .sampler()
                .map_err(|e| format!("step at position {}: {e}", step.position))?;
            match first {
                None => first = Some((step.position, sampler)),
                Some((position, seen)) if seen.temperature() != sampler.temperature() => {
                    return Err(format!(
                        "step at position {} is {sampler}, but the step at position {position} is {seen}: \
                         one bundle proves one temperature (greedy steps count as 1), so prove each \
                         temperature's steps separately",
                        step.position
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(first.map_or(Temperature::ONE, |(_, s)| s.temperature()))
    }
}

impl Record {
    pub fn sampler(&self) -> Result<Sampler, String> {
        crate::sampler_of(&self.sampler)
    }
}
