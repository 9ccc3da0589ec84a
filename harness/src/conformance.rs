//! The measurements of `zkinfer bench conformance`: decoding a prompt on a
//! reference and teacher-forcing a candidate on its tokens, and scoring the
//! difference with the auditor's own rule (docs/gpu.md).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use audit::fraud::{compare, Comparison, Tolerance, HIDDEN, LOGITS};
use models::{Cache, Model};
use node::greedy_token;

/// A recommended tolerance scores the largest difference measured at
/// 1/SAFETY_FACTOR: a handful of prompts cannot show the worst case, and the
/// difference grows with context length and with unlucky rows, while a
/// wrong model or a forged logit is off by whole nats.
pub const SAFETY_FACTOR: f32 = 4.0;

/// No `atol` below the resolution of the committed logits (2^-11 at the
/// default F = 11): a smaller difference cannot move a committed value by
/// more than one step, so a tighter tolerance only rejects honest nodes.
pub const ATOL_FLOOR: f32 = 1.0 / 2048.0;

/// What the candidate is asked to run: sent as JSON on its stdin.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    pub sequences: Vec<Sequence>,
}

#[derive(Serialize, Deserialize)]
pub struct Sequence {
    pub prompt: Vec<u32>,
    /// The reference's greedy tokens, fed one per forward.
    pub tokens: Vec<u32>,
    /// The reference's final hidden state per row, `rows × d`, for the head check.
    pub hidden: Vec<f32>,
}

/// One side's numbers for one sequence; rows = `tokens.len()`.
pub struct Rows {
    /// `rows × V`.
    pub logits: Vec<f32>,
    /// `rows × d`, the input of the final norm.
    pub hidden: Vec<f32>,
    /// Greedy token per row.
    pub tokens: Vec<u32>,
}

/// The comparison of one prompt.
#[derive(Serialize)]
pub struct PromptReport {
    pub prompt: String,
    pub prompt_tokens: usize,
    pub rows: usize,
    /// Whole-model logits, scored with [`LOGITS`].
    pub logits: Comparison,
    /// Final hidden states, scored with [`HIDDEN`].
    pub hidden: Comparison,
    /// The largest |hidden value| of the reference: the scale of the hidden diff.
    pub max_abs_hidden: f32,
    /// The head alone on the reference's hidden states, scored with [`LOGITS`].
    pub head: Comparison,
    pub tokens_identical: bool,
    /// The first row whose greedy token differs.
    pub first_token_mismatch: Option<usize>,
}

/// How a sequence is driven: the reference decodes greedily, the candidate
/// follows the reference's tokens.
pub enum Forcing<'a> {
    Greedy(usize),
    Tokens(&'a [u32]),
}

/// Prefills `prompt`, then feeds one token per forward; returns per row the
/// logits, the final hidden state and the greedy token.
pub fn decode(model: &Model, prompt: &[u32], forcing: Forcing) -> models::Result<Rows> {
    let rows = match forcing {
        Forcing::Greedy(n) => n,
        Forcing::Tokens(tokens) => tokens.len(),
    };
    let mut out = Rows {
        logits: Vec::with_capacity(rows * model.vocab()),
        hidden: Vec::with_capacity(rows * model.hidden_size()),
        tokens: Vec::with_capacity(rows),
    };
    let mut cache = Cache::new();
    let hidden = model.forward_layers(&model.embed(prompt)?, 0, &mut cache)?;
    let mut last = hidden.narrow(1, prompt.len() - 1, 1)?;
    for row in 0..rows {
        let logits = model.head_forward(&last)?.flatten_all()?.to_vec1::<f32>()?;
        let token = greedy_token(&logits)?;
        out.logits.extend_from_slice(&logits);
        out.hidden.extend(last.flatten_all()?.to_vec1::<f32>()?);
        out.tokens.push(token);
        if row + 1 < rows {
            let next = match forcing {
                Forcing::Greedy(_) => token,
                Forcing::Tokens(tokens) => tokens[row],
            };
            last = model.forward_layers(&model.embed(&[next])?, prompt.len() + row, &mut cache)?;
        }
    }
    Ok(out)
}

/// The candidate's head on the reference's hidden states `rows × d`: `rows × V`.
pub fn head_on(model: &Model, hidden: &[f32]) -> models::Result<Vec<f32>> {
    let d = model.hidden_size();
    let rows = hidden.len() / d;
    let x = Tensor::from_slice(hidden, (1, rows, d), model.device())?;
    Ok(model.head_forward(&x)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The candidate `c` (and its `head` on the reference's hidden states)
/// compared with the reference `r`, as the auditor would score it.
pub fn report(text: &str, seq: &Sequence, r: &Rows, c: &Rows, head: &[f32]) -> PromptReport {
    let first_token_mismatch = r.tokens.iter().zip(&c.tokens).position(|(a, b)| a != b);
    PromptReport {
        prompt: text.to_string(),
        prompt_tokens: seq.prompt.len(),
        rows: r.tokens.len(),
        logits: compare(&c.logits, &r.logits, LOGITS),
        hidden: compare(&c.hidden, &r.hidden, HIDDEN),
        max_abs_hidden: r.hidden.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        head: compare(head, &r.logits, LOGITS),
        tokens_identical: first_token_mismatch.is_none(),
        first_token_mismatch,
    }
}

/// `current` scaled so that the worst `score` measured under it becomes
/// 1/[`SAFETY_FACTOR`] (scores are linear in the tolerance), `atol` kept
/// at least [`ATOL_FLOOR`]; `reject_above` unchanged.
pub fn recommend(current: Tolerance, score: f32) -> Tolerance {
    let scale = (SAFETY_FACTOR * score).max(ATOL_FLOOR / current.atol);
    Tolerance {
        atol: current.atol * scale,
        rtol: current.rtol * scale,
        ..current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendations_scale_the_tolerance_to_the_margin() {
        // A worst score of 0.5 under LOGITS: twice the margin's room, so 2 x 0.05.
        let r = recommend(LOGITS, 0.5);
        assert!((r.atol - 0.1).abs() < 1e-7 && r.rtol == 0.0, "{r:?}");
        assert_eq!(r.reject_above, LOGITS.reject_above);
        // Exact agreement still leaves one fixed-point step.
        assert_eq!(recommend(HIDDEN, 0.0).atol, ATOL_FLOOR);
    }
}
