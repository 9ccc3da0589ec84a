//! Re-executing one step of a hop, and fraud proofs built on it.
//!
//! A node that signs receipts answers an auditor's questions about a hop
//! with signed step receipts (`verifier::receipt::StepReceipt`, see
//! [`node::trail`]): "enter maps these bytes to these hidden states",
//! "layer `l` maps this history of inputs to this output", "exit maps these
//! hidden states to the bytes I answered". A [`Replayer`] re-executes a step
//! on the auditor's own hardware and [`compare`]s with what the node claims.
//!
//! A [`FraudProof`] is one such signed statement with the values behind its
//! digests, whose re-execution lands outside the tolerance: anyone holding
//! the model checks it alone ([`FraudProof::check`]), without the node, the
//! transcript or the auditor.
//!
//! # Tolerance
//!
//! Floats differ across devices, thread counts and batch shapes, so values
//! are compared element-wise with numpy's `allclose` rule: the score of a
//! comparison is `max_i |a_i - b_i| / (atol + rtol·|b_i|)`; a score up to 1
//! accepts, above [`Tolerance::reject_above`] rejects, and in between is
//! ambiguous (reported, never slashed). The per-element scale matters for
//! Gemma, whose hidden states carry a few dimensions in the thousands next
//! to hundreds of dimensions near ten: a bound relative to the largest
//! value would hide a whole-row change of 1.0. docs/audit.md gives the
//! measured honest spread these constants come from.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use verifier::receipt::{self, PublicKey, Signature, Step, StepReceipt};
use verifier::{hex, parse_hex, parse_hex_array};

use models::model_id::{model_id, ModelId};
use models::Cache;
use models::Model;
use models::{ModelError, Result};
use node::greedy_token;
use node::trail::{chain, f32_digest};
use transcript::f32_bytes;
use wire::{Activations, Encoding, ForwardInput, ENCODINGS};

/// An element-wise tolerance (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
    /// Scores above this reject; between 1 and this are ambiguous.
    pub reject_above: f32,
}

/// Hidden states. Re-running the node's code on the node's inputs gives
/// them bit for bit on the same CPU (any thread count); the bounds leave
/// room for other hardware while a change of 0.1 to a typical value
/// (|x| ≈ 10) scores 5, and one of 1.0 scores above 10.
pub const HIDDEN: Tolerance = Tolerance {
    atol: 1e-2,
    rtol: 1e-3,
    reject_above: 10.0,
};

/// Logits, in nats: 0.05 accepted (quantizing activations in transit moves
/// logits by up to 3.6e-2 on the tiny test model), beyond 0.5 rejected.
pub const LOGITS: Tolerance = Tolerance {
    atol: 5e-2,
    rtol: 0.0,
    reject_above: 10.0,
};

/// What a comparison decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Ambiguous,
    Reject,
}

/// The numbers behind a [`Verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Largest |recomputed - claimed|.
    pub max_abs_diff: f32,
    /// The tolerance score (see the module docs); infinite for NaN or a
    /// shape mismatch.
    pub score: f32,
    /// Where the score is largest.
    pub worst_index: usize,
    pub verdict: Verdict,
}

impl Comparison {
    /// A comparison that is exact by construction: accept or reject.
    fn exact(equal: bool) -> Comparison {
        Comparison {
            max_abs_diff: if equal { 0.0 } else { f32::INFINITY },
            score: if equal { 0.0 } else { f32::INFINITY },
            worst_index: 0,
            verdict: if equal {
                Verdict::Accept
            } else {
                Verdict::Reject
            },
        }
    }
}

/// Compares `recomputed` with `claimed` under `tolerance`.
pub fn compare(recomputed: &[f32], claimed: &[f32], tolerance: Tolerance) -> Comparison {
    if recomputed.len() != claimed.len() {
        return Comparison::exact(false);
    }
    let (mut max_abs_diff, mut score, mut worst_index) = (0f32, 0f32, 0usize);
    for (i, (&a, &b)) in recomputed.iter().zip(claimed).enumerate() {
        let diff = (a - b).abs();
        let s = diff / (tolerance.atol + tolerance.rtol * b.abs());
        // NaN anywhere counts as the worst difference.
        let s = if s.is_nan() { f32::INFINITY } else { s };
        max_abs_diff = max_abs_diff.max(if diff.is_nan() { f32::INFINITY } else { diff });
        if s > score {
            (score, worst_index) = (s, i);
        }
    }
    let verdict = if score <= 1.0 {
        Verdict::Accept
    } else if score <= tolerance.reject_above {
        Verdict::Ambiguous
    } else {
        Verdict::Reject
    };
    Comparison {
        max_abs_diff,
        score,
        worst_index,
        verdict,
    }
}

/// Re-executes steps of a model on this machine, loading the shards it
/// needs from the GGUF file on demand.
pub struct Replayer {
    path: PathBuf,
    device: Device,
    id: ModelId,
    layers: usize,
    hidden: usize,
    shards: HashMap<(usize, usize), Model>,
}

impl Replayer {
    /// Opens the model at `path` (reads its metadata and computes its id).
    pub fn open(path: &Path, device: Device) -> Result<Replayer> {
        let mut reader = BufReader::new(File::open(path).map_err(candle_core::Error::from)?);
        let content = gguf_file::Content::read(&mut reader)?;
        let id = model_id(&content, &mut reader)?;
        let shape = Model::shape_of(&content)?;
        Ok(Replayer {
            path: path.to_path_buf(),
            device,
            id,
            layers: shape.layers,
            hidden: shape.hidden,
            shards: HashMap::new(),
        })
    }

    pub fn model_id(&self) -> ModelId {
        self.id
    }

    /// Layers of the whole model.
    pub fn layers(&self) -> usize {
        self.layers
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    fn shard(&mut self, layers: Range<usize>) -> Result<&Model> {
        if layers.start >= layers.end || layers.end > self.layers {
            return Err(ModelError::Shape(format!(
                "layers {layers:?} are not a span of this {}-layer model",
                self.layers
            )));
        }
        let key = (layers.start, layers.end);
        if !self.shards.contains_key(&key) {
            let mut reader =
                BufReader::new(File::open(&self.path).map_err(candle_core::Error::from)?);
            let content = gguf_file::Content::read(&mut reader)?;
            let model = Model::from_gguf(&content, &mut reader, &self.device, layers)?;
            self.shards.insert(key, model);
        }
        Ok(&self.shards[&key])
    }

    /// Runs `layers` over the inputs `[rows, d]` of consecutive forwards
    /// (position, values), as a node does: a forward at position 0 as one
    /// batch, later ones row by row. Returns each forward's output.
    pub fn run_layers(
        &mut self,
        layers: Range<usize>,
        forwards: &[(u64, &[f32])],
    ) -> Result<Vec<Vec<f32>>> {
        let d = self.hidden;
        let model = self.shard(layers)?;
        let mut cache = Cache::new();
        let mut outputs = Vec::with_capacity(forwards.len());
        for &(position, values) in forwards {
            let rows = rows_of(values, d)?;
            let x = Tensor::from_slice(values, (1, rows, d), model.device())?;
            let position = position as usize;
            let out = if position == 0 {
                model.forward_layers(&x, 0, &mut cache)?
            } else {
                let rows = (0..rows)
                    .map(|i| model.forward_layers(&x.narrow(1, i, 1)?, position + i, &mut cache))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 1)?
            };
            outputs.push(out.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(outputs)
    }

    /// Re-executes the enter step of a span starting at `start` on what the
    /// node was sent and compares with the hidden states it claims.
    pub fn check_enter(
        &mut self,
        start: usize,
        input: &ForwardInput,
        claimed: &[f32],
    ) -> Result<Comparison> {
        let d = self.hidden;
        Ok(match input {
            ForwardInput::Tokens(tokens) if start == 0 => {
                let model = self.shard(0..1)?;
                let vocab = model.vocab();
                if tokens.iter().any(|&t| t as usize >= vocab) {
                    return Ok(Comparison::exact(false));
                }
                let x = model.embed(tokens)?.flatten_all()?.to_vec1::<f32>()?;
                compare(&x, claimed, HIDDEN)
            }
            ForwardInput::Activations(a) if start > 0 && a.cols as usize == d => {
                // The data's digest is what was signed, not its encoding:
                // the node is right if any encoding of it decodes to its
                // claim.
                best(ENCODINGS.iter().filter_map(|&encoding| {
                    let decoded = Activations {
                        encoding,
                        ..a.clone()
                    }
                    .to_f32()
                    .ok()?;
                    Some(compare(&decoded, claimed, HIDDEN))
                }))
            }
            _ => Comparison::exact(false),
        })
    }

    /// Re-executes the exit step of a span ending at `end` on the hidden
    /// states after its last layer and compares with the answer.
    pub fn check_exit(
        &mut self,
        end: usize,
        hidden: &[f32],
        answered: &Activations,
    ) -> Result<Comparison> {
        let d = self.hidden;
        let rows = rows_of(hidden, d)?;
        if end < self.layers {
            // Encoding is exact code: the node is right if some encoding of
            // its hidden states is the answered data.
            let same = ENCODINGS.iter().any(|&encoding| {
                Activations::encode(hidden, rows as u32, d as u32, encoding)
                    .is_ok_and(|a| a.data == answered.data)
            });
            return Ok(Comparison::exact(same));
        }
        let model = self.shard(end - 1..end)?;
        let vocab = model.vocab();
        let x = Tensor::from_slice(hidden, (1, rows, d), model.device())?;
        if answered.cols as usize == vocab && answered.rows == 1 {
            let claimed = answered
                .to_f32()
                .map_err(|e| ModelError::Shape(e.to_string()))?;
            let last = model.head_forward(&x.narrow(1, rows - 1, 1)?)?;
            return Ok(compare(
                &last.flatten_all()?.to_vec1::<f32>()?,
                &claimed,
                LOGITS,
            ));
        }
        if answered.cols == 1 && answered.rows as usize == rows {
            // Greedy tokens, one per row: exact.
            let logits = model.head_forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let tokens = logits
                .chunks_exact(vocab)
                .map(greedy_token)
                .collect::<Result<Vec<u32>>>()?;
            let claimed = answered.to_token_ids().ok();
            return Ok(Comparison::exact(claimed == Some(tokens)));
        }
        Ok(Comparison::exact(false))
    }
}

/// The most favourable comparison (the node gets the benefit of the doubt).
fn best(comparisons: impl Iterator<Item = Comparison>) -> Comparison {
    comparisons
        .min_by(|a, b| a.score.total_cmp(&b.score))
        .unwrap_or(Comparison::exact(false))
}

fn rows_of(values: &[f32], d: usize) -> Result<usize> {
    if values.is_empty() || !values.len().is_multiple_of(d) {
        return Err(ModelError::Shape(format!(
            "{} values are not whole rows of {d}",
            values.len()
        )));
    }
    Ok(values.len() / d)
}

/// Values in a fraud proof file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Value {
    /// Token ids (what the shard at layer 0 was sent).
    Tokens(Vec<u32>),
    /// An activations block; `data` in hex.
    Matrix {
        rows: u32,
        cols: u32,
        encoding: String,
        data: String,
    },
}

impl Value {
    /// F32 hidden states `[rows, cols]`.
    pub fn f32(values: &[f32], cols: usize) -> Value {
        Value::Matrix {
            rows: (values.len() / cols.max(1)) as u32,
            cols: cols as u32,
            encoding: "f32".into(),
            data: hex(&f32_bytes(values)),
        }
    }

    pub fn of(input: &ForwardInput) -> Value {
        match input {
            ForwardInput::Tokens(tokens) => Value::Tokens(tokens.clone()),
            ForwardInput::Activations(a) => Value::Matrix {
                rows: a.rows,
                cols: a.cols,
                encoding: a.encoding.name().into(),
                data: hex(&a.data),
            },
        }
    }

    pub fn to_input(&self) -> std::result::Result<ForwardInput, ValueError> {
        match self {
            Value::Tokens(tokens) => Ok(ForwardInput::Tokens(tokens.clone())),
            Value::Matrix {
                rows,
                cols,
                encoding,
                data,
            } => {
                let encoding = Encoding::from_name(encoding)
                    .ok_or_else(|| ValueError::Encoding(encoding.clone()))?;
                let bytes = parse_hex(data, data.len() / 2).ok_or(ValueError::NotHex)?;
                let a = Activations {
                    rows: *rows,
                    cols: *cols,
                    encoding,
                    data: bytes,
                };
                a.validate()?;
                Ok(ForwardInput::Activations(a))
            }
        }
    }

    /// The values of an F32 matrix.
    fn hidden(&self) -> std::result::Result<Vec<f32>, ValueError> {
        match self.to_input()? {
            ForwardInput::Activations(a) if a.encoding == Encoding::F32 => Ok(a.to_f32()?),
            _ => Err(ValueError::NotHidden),
        }
    }
}

/// Why a fraud proof's values do not make the statement it claims.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("unknown encoding {0:?}")]
    Encoding(String),
    #[error("matrix data is not hex")]
    NotHex,
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("expected an f32 matrix of hidden states")]
    NotHidden,
    #[error("model_id is not 64 hex digits")]
    ModelId,
    #[error("the layer's inputs must cover every position from 0 in order: expected a forward at {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("the layer's last input must be at the proof's position")]
    LastInput,
    #[error("an exit answers activations")]
    ExitTokens,
    #[error("an enter or exit step has one input, at the proof's position")]
    SingleInput,
    #[error("no inputs")]
    NoInputs,
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One forward's value in a fraud proof.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtPosition {
    pub position: u64,
    pub value: Value,
}

/// The fraud proof format version this module writes.
pub const FRAUD_PROOF_VERSION: u32 = 1;

/// A signed step that re-execution shows wrong (see the module docs and
/// docs/audit.md for the file format).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudProof {
    pub version: u32,
    /// The model id the node signed, hex.
    pub model_id: String,
    /// The node's BLS public key, hex.
    pub signer: String,
    /// The request id the node served the hop under.
    pub request_id: u64,
    /// The forward the step belongs to.
    pub position: u64,
    pub step: Step,
    /// The node's signature on the step receipt, hex.
    pub signature: String,
    /// The step's input: for a layer, its input at every forward up to and
    /// including `position` (attention reads them all), in order; else the
    /// input at `position` alone.
    pub inputs: Vec<AtPosition>,
    /// The output the node claims at `position`.
    pub output: Value,
    /// What the auditor found (informational: [`FraudProof::check`]
    /// recomputes it).
    pub found: Comparison,
}

/// What checking a fraud proof decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FraudVerdict {
    /// The node signed the step and re-execution rejects it: the node
    /// cheated (or its hardware is broken beyond the tolerance).
    pub valid: bool,
    /// Why, in words.
    pub reason: String,
    /// The re-execution's numbers, when it ran.
    pub comparison: Option<Comparison>,
}

impl FraudVerdict {
    fn invalid(reason: impl Into<String>) -> FraudVerdict {
        FraudVerdict {
            valid: false,
            reason: reason.into(),
            comparison: None,
        }
    }
}

impl FraudProof {
    /// The step receipt the proof says the node signed, from its values.
    fn receipt(&self, replayer: &Replayer) -> std::result::Result<StepReceipt, ValueError> {
        let model_id = parse_hex_array::<32>(&self.model_id).ok_or(ValueError::ModelId)?;
        let step = self.step;
        let d = replayer.hidden_size();
        let (input, output) = match step {
            Step::Layer(_) => {
                let mut context = [0u8; 32];
                let mut expected = 0u64;
                for at in &self.inputs {
                    let values = at.value.hidden()?;
                    if at.position != expected {
                        return Err(ValueError::Gap {
                            expected,
                            found: at.position,
                        });
                    }
                    expected += rows_of(&values, d)? as u64;
                    context = chain(&context, at.position, &f32_digest(&values));
                }
                if self.inputs.last().map(|a| a.position) != Some(self.position) {
                    return Err(ValueError::LastInput);
                }
                (context, f32_digest(&self.output.hidden()?))
            }
            Step::Enter(_) => (
                *self.single_input()?.to_input()?.digest().as_bytes(),
                f32_digest(&self.output.hidden()?),
            ),
            Step::Exit(_) => {
                let output = match self.output.to_input()? {
                    ForwardInput::Activations(a) => a,
                    ForwardInput::Tokens(_) => return Err(ValueError::ExitTokens),
                };
                (
                    f32_digest(&self.single_input()?.hidden()?),
                    *blake3::hash(&output.data).as_bytes(),
                )
            }
        };
        Ok(StepReceipt {
            model_id,
            step,
            request_id: self.request_id,
            position: self.position,
            input,
            output,
        })
    }

    fn single_input(&self) -> std::result::Result<&Value, ValueError> {
        match self.inputs.as_slice() {
            [at] if at.position == self.position => Ok(&at.value),
            _ => Err(ValueError::SingleInput),
        }
    }

    /// Checks the proof against the model `replayer` holds: the model id,
    /// the node's signature on the statement the values make, then the
    /// re-execution. Valid only if re-execution rejects.
    pub fn check(&self, replayer: &mut Replayer) -> Result<FraudVerdict> {
        if self.version != FRAUD_PROOF_VERSION {
            return Ok(FraudVerdict::invalid(format!(
                "fraud proof version {}, this zkinfer reads {FRAUD_PROOF_VERSION}",
                self.version
            )));
        }
        if self.model_id != replayer.model_id().to_string() {
            return Ok(FraudVerdict::invalid(format!(
                "the proof is about model {}, the model given is {}",
                self.model_id,
                replayer.model_id()
            )));
        }
        let receipt = match self.receipt(replayer) {
            Ok(receipt) => receipt,
            Err(e) => return Ok(FraudVerdict::invalid(e.to_string())),
        };
        let (Ok(signer), Ok(signature)) = (
            PublicKey::from_hex(&self.signer),
            Signature::from_hex(&self.signature),
        ) else {
            return Ok(FraudVerdict::invalid(
                "signer or signature is not a valid encoding",
            ));
        };
        if !receipt::verify(&signer, &receipt, &signature) {
            return Ok(FraudVerdict::invalid(
                "the node did not sign this statement: signature, values or ids differ",
            ));
        }
        let comparison = match self.replay(replayer) {
            Ok(c) => c,
            Err(e) => return Ok(FraudVerdict::invalid(e.to_string())),
        };
        let valid = comparison.verdict == Verdict::Reject;
        let reason = if valid {
            format!(
                "the node signed {} at position {} and re-execution differs by {} (score {:.3e}, \
                 tolerance score 1, reject above {})",
                describe(self.step),
                self.position,
                comparison.max_abs_diff,
                comparison.score,
                tolerance_of(self.step, replayer).reject_above
            )
        } else {
            format!(
                "re-execution of {} {} the node's claim (score {:.3e}): no fraud shown",
                describe(self.step),
                if comparison.verdict == Verdict::Accept {
                    "agrees with"
                } else {
                    "is too close to call against"
                },
                comparison.score
            )
        };
        Ok(FraudVerdict {
            valid,
            reason,
            comparison: Some(comparison),
        })
    }

    fn replay(&self, replayer: &mut Replayer) -> std::result::Result<Comparison, ValueError> {
        match self.step {
            Step::Layer(l) => {
                let inputs = self
                    .inputs
                    .iter()
                    .map(|at| Ok((at.position, at.value.hidden()?)))
                    .collect::<std::result::Result<Vec<_>, ValueError>>()?;
                let forwards: Vec<(u64, &[f32])> =
                    inputs.iter().map(|(p, v)| (*p, v.as_slice())).collect();
                let l = l as usize;
                let outputs = replayer.run_layers(l..l + 1, &forwards)?;
                let last = outputs.last().ok_or(ValueError::NoInputs)?;
                Ok(compare(last, &self.output.hidden()?, HIDDEN))
            }
            Step::Enter(start) => Ok(replayer.check_enter(
                start as usize,
                &self.single_input()?.to_input()?,
                &self.output.hidden()?,
            )?),
            Step::Exit(end) => {
                let ForwardInput::Activations(answered) = self.output.to_input()? else {
                    return Err(ValueError::ExitTokens);
                };
                Ok(
                    replayer.check_exit(
                        end as usize,
                        &self.single_input()?.hidden()?,
                        &answered,
                    )?,
                )
            }
        }
    }
}

/// A step in words.
pub fn describe(step: Step) -> String {
    match step {
        Step::Enter(0) => "the embedding".into(),
        Step::Enter(l) => format!("decoding the input of layer {l}"),
        Step::Layer(l) => format!("layer {l}"),
        Step::Exit(l) => format!("the output after layer {}", l.saturating_sub(1)),
    }
}

fn tolerance_of(step: Step, replayer: &Replayer) -> Tolerance {
    match step {
        Step::Exit(end) if end as usize == replayer.layers() => LOGITS,
        _ => HIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tolerance_scales_per_element_and_bands_the_verdict() {
        let claimed = [5000.0, 10.0, -10.0, 0.0];
        // Exact: accept with score 0.
        let exact = compare(&claimed, &claimed, HIDDEN);
        assert_eq!((exact.verdict, exact.score), (Verdict::Accept, 0.0));
        // 1.0 on a massive dimension is within 0.01 + 0.001·5000 = 5.01.
        let big = compare(&[5001.0, 10.0, -10.0, 0.0], &claimed, HIDDEN);
        assert_eq!(big.verdict, Verdict::Accept);
        // 0.1 on a typical value scores 0.1 / 0.02 = 5: ambiguous.
        let small = compare(&[5000.0, 10.1, -10.0, 0.0], &claimed, HIDDEN);
        assert_eq!((small.verdict, small.worst_index), (Verdict::Ambiguous, 1));
        // 1.0 on a typical value scores 50: reject.
        let tampered = compare(&[5000.0, 10.0, -9.0, 0.0], &claimed, HIDDEN);
        assert_eq!(
            (tampered.verdict, tampered.worst_index),
            (Verdict::Reject, 2)
        );
        // NaN, or another shape, is the worst difference.
        let nan = compare(&[5000.0, f32::NAN, -10.0, 0.0], &claimed, HIDDEN);
        assert_eq!((nan.verdict, nan.score), (Verdict::Reject, f32::INFINITY));
        assert_eq!(
            compare(&claimed[..3], &claimed, HIDDEN).verdict,
            Verdict::Reject
        );
        // Logits: 0.05 nats accepted, 0.3 ambiguous, 0.6 rejected.
        for (delta, verdict) in [
            (0.05, Verdict::Accept),
            (0.3, Verdict::Ambiguous),
            (0.6, Verdict::Reject),
        ] {
            assert_eq!(compare(&[1.0 + delta], &[1.0], LOGITS).verdict, verdict);
        }
    }
}
