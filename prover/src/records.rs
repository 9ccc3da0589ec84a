//! Decode records: the input of `zkinfer prove --records`.
//!
//! ```json
//! {"vocab": 4, "steps": [
//!   {"position": 7, "logits": [0.5, 2.0, -1.0, 0.0], "token": 1, "sampler": {"greedy": {}}},
//!   {"position": 8, "logits": [0.5, 2.0, -1.0, 0.0], "token": 0,
//!    "sampler": {"sample": {"temperature": 0.8, "r": "1234567890123"}}}
//! ]}
//! ```

use serde::{Deserialize, Serialize};

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

impl Record {
    pub fn sampler(&self) -> Result<Sampler, String> {
        crate::sampler_of(&self.sampler)
    }
}
