//! The measurements of `zkinfer bench conformance`: decoding a prompt on a
//! reference and teacher-forcing a candidate on its tokens, and scoring the
//! difference with the auditor's own rule (docs/gpu.md).

use std::fmt;
use std::io::Write;

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

/// Runs the candidate side of `plan` on `model` and writes, per sequence, its
/// logits, final hidden states and head on the reference's hidden states, as
/// little-endian f32 (what [`read_candidate`] reads).
pub fn write_candidate(
    model: &Model,
    plan: &Plan,
    out: &mut impl Write,
) -> Result<(), CandidateError> {
    let d = model.hidden_size();
    for seq in &plan.sequences {
        if seq.prompt.is_empty() || seq.hidden.len() != seq.tokens.len() * d {
            return Err(CandidateError::Malformed);
        }
        let rows = decode(model, &seq.prompt, Forcing::Tokens(&seq.tokens))?;
        let head = head_on(model, &seq.hidden)?;
        for values in [&rows.logits, &rows.hidden, &head] {
            for v in values.iter() {
                out.write_all(&v.to_le_bytes())?;
            }
        }
    }
    Ok(out.flush()?)
}

/// Why the candidate side failed, or its figures do not read.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("the plan's sequences are malformed")]
    Malformed,
    #[error("the candidate run returned {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error("writing figures: {0}")]
    Io(#[from] std::io::Error),
}

/// The candidate's figures for `plan` (what [`write_candidate`] wrote): per
/// sequence its rows and its head on the reference's hidden states.
pub fn read_candidate(
    bytes: &[u8],
    plan: &Plan,
    vocab: usize,
    hidden: usize,
) -> Result<Vec<(Rows, Vec<f32>)>, CandidateError> {
    let expected: usize = plan
        .sequences
        .iter()
        .map(|s| 4 * s.tokens.len() * (2 * vocab + hidden))
        .sum();
    if bytes.len() != expected {
        return Err(CandidateError::Length {
            got: bytes.len(),
            expected,
        });
    }
    let mut values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut take = |n: usize| values.by_ref().take(n).collect::<Vec<f32>>();
    Ok(plan
        .sequences
        .iter()
        .map(|s| {
            let rows = s.tokens.len();
            let logits = take(rows * vocab);
            let tokens = logits
                .chunks_exact(vocab)
                .map(|row| greedy_token(row).unwrap_or(u32::MAX))
                .collect();
            let hidden = take(rows * hidden);
            let head = take(rows * vocab);
            (
                Rows {
                    logits,
                    hidden,
                    tokens,
                },
                head,
            )
        })
        .collect())
}

/// Every prompt's comparison and what follows for the audit tolerances.
#[derive(Serialize)]
pub struct Summary {
    pub prompts: Vec<PromptReport>,
    pub max_abs_logit_diff: f32,
    pub max_abs_hidden_diff: f32,
    pub max_abs_head_diff: f32,
    pub hidden_score: f32,
    pub logits_score: f32,
    pub tokens_identical: bool,
    pub hidden_tolerance: Tolerance,
    pub logits_tolerance: Tolerance,
    pub recommended_hidden_tolerance: Tolerance,
    pub recommended_logits_tolerance: Tolerance,
    pub safety_factor: f32,
    pub atol_floor: f32,
}

impl Summary {
    pub fn new(prompts: Vec<PromptReport>) -> Summary {
        let worst = |f: fn(&PromptReport) -> f32| prompts.iter().map(f).fold(0.0f32, f32::max);
        let hidden_score = worst(|r| r.hidden.score);
        let logits_score = worst(|r| r.logits.score.max(r.head.score));
        Summary {
            max_abs_logit_diff: worst(|r| r.logits.max_abs_diff),
            max_abs_hidden_diff: worst(|r| r.hidden.max_abs_diff),
            max_abs_head_diff: worst(|r| r.head.max_abs_diff),
            hidden_score,
            logits_score,
            tokens_identical: prompts.iter().all(|r| r.tokens_identical),
            hidden_tolerance: HIDDEN,
            logits_tolerance: LOGITS,
            recommended_hidden_tolerance: recommend(HIDDEN, hidden_score),
            recommended_logits_tolerance: recommend(LOGITS, logits_score),
            safety_factor: SAFETY_FACTOR,
            atol_floor: ATOL_FLOOR,
            prompts,
        }
    }
}

/// The table of prompts and the tolerance verdicts, for people.
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<34} {:>5} {:>10} {:>10} {:>9} {:>10}  tokens",
            "prompt", "rows", "logits Δ", "hidden Δ", "(|h| ≤)", "head Δ"
        )?;
        for r in &self.prompts {
            let tokens = match r.first_token_mismatch {
                None => "identical".to_string(),
                Some(row) => format!("differ from row {row}"),
            };
            writeln!(
                f,
                "{:<34} {:>5} {:>10.3e} {:>10.3e} {:>9.1} {:>10.3e}  {tokens}",
                abbreviate(&r.prompt, 34),
                r.rows,
                r.logits.max_abs_diff,
                r.hidden.max_abs_diff,
                r.max_abs_hidden,
                r.head.max_abs_diff
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "audit tolerances (audit::fraud: score = max |Δ| / (atol + rtol·|x|), up to 1 accepts;"
        )?;
        writeln!(
            f,
            "recommended: scaled so that the worst score is 1/{SAFETY_FACTOR}, atol at least {ATOL_FLOOR:.2e}):"
        )?;
        for (name, current, score, recommended) in [
            (
                "hidden states",
                self.hidden_tolerance,
                self.hidden_score,
                self.recommended_hidden_tolerance,
            ),
            (
                "logits, head",
                self.logits_tolerance,
                self.logits_score,
                self.recommended_logits_tolerance,
            ),
        ] {
            let verdict = if SAFETY_FACTOR * score <= 1.0 {
                format!("fits with a {SAFETY_FACTOR}x margin")
            } else if score <= 1.0 {
                "fits, with less than the margin".to_string()
            } else {
                "TOO TIGHT: honest runs would not be accepted".to_string()
            };
            writeln!(
                f,
                "  {name:<14} atol {:.2e} rtol {:.2e}: worst score {score:.3e}, {verdict}; recommended atol {:.2e} rtol {:.2e}",
                current.atol, current.rtol, recommended.atol, recommended.rtol
            )?;
        }
        Ok(())
    }
}

/// The prompt on one line, cut to `width` characters.
fn abbreviate(text: &str, width: usize) -> String {
    let line: String = format!("{text:?}");
    if line.chars().count() <= width {
        line
    } else {
        line.chars().take(width - 1).chain(['…']).collect()
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

    #[test]
    fn long_prompts_are_cut() {
        assert_eq!(abbreviate("abc", 10), "\"abc\"");
        assert_eq!(abbreviate("abcdefghijkl", 6).chars().count(), 6);
    }

    #[test]
    fn candidate_figures_read_back_and_any_other_length_is_refused() {
        let plan = Plan {
            sequences: vec![Sequence {
                prompt: vec![1],
                tokens: vec![5, 6],
                hidden: vec![0.0; 2 * 3],
            }],
        };
        let (vocab, hidden) = (4, 3);
        // Row 0 peaks at index 2, row 1 at index 3.
        let mut values = vec![0.0f32; 2 * (2 * vocab + hidden)];
        values[2] = 1.0;
        values[vocab + 3] = 1.0;
        values[2 * vocab] = 7.0;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let read = read_candidate(&bytes, &plan, vocab, hidden).unwrap();
        assert_eq!(read.len(), 1);
        let (rows, head) = &read[0];
        assert_eq!(rows.tokens, vec![2, 3]);
        assert_eq!(rows.hidden[0], 7.0);
        assert_eq!(
            (rows.logits.len(), rows.hidden.len(), head.len()),
            (8, 6, 8)
        );
        for cut in [0, 1, 4, bytes.len() - 1] {
            assert!(matches!(
                read_candidate(&bytes[..cut], &plan, vocab, hidden),
                Err(CandidateError::Length { .. })
            ));
        }
        let longer = [bytes.as_slice(), &[0; 4]].concat();
        assert!(matches!(
            read_candidate(&longer, &plan, vocab, hidden),
            Err(CandidateError::Length { .. })
        ));
    }
}
