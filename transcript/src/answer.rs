//! A transcript's answer checked against a verified proof bundle: which
//! generated tokens the bundle proves, what the transcript itself binds, and
//! whether the whole answer is valid. One report with one JSON form, printed
//! by `zkinfer verify --transcript T.json --bundle B.zkp --json` and answered
//! by `zkinfer api`'s `POST /v1/verify`.

use std::path::Path;

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};
use serde::Serialize;
use verifier::answer::{check_answer, Verdict};
use verifier::{Bundle, Report};

use crate::binding::{self, BindingCheck};
use crate::{ProvingPolicy, Transcript, TranscriptError};

/// The proofs an answer must have when its checker does not say
/// (`zkinfer verify --require`).
pub const DEFAULT_REQUIRED: &str = "challenged:4";

/// The checked answer.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerCheck {
    /// Nothing invalid, no problem, every required token proven.
    pub valid: bool,
    pub model_id: String,
    pub proved: usize,
    pub not_proved: usize,
    pub invalid: usize,
    /// Positions the policy requires to be proven.
    pub required: Vec<u64>,
    /// Problems tied to no one token (a foreign proof, a failed binding
    /// check, another model than expected).
    pub problems: Vec<String>,
    /// `None` when the transcript's receipts do not parse (a binding check
    /// then fails too).
    pub receipts: Option<ReceiptSummary>,
    pub checks: Vec<BindingCheck>,
    pub tokens: Vec<TokenCheck>,
}

/// How many hops were signed, and by how many nodes (the signatures
/// themselves are [`binding::check`]'s).
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptSummary {
    pub signed_hops: usize,
    pub unsigned_hops: usize,
    pub nodes: usize,
}

/// One generated token's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct TokenCheck {
    pub position: u64,
    pub token: u32,
    /// In nats, from the proof's statement (when proven).
    pub logprob: Option<f64>,
    pub required: bool,
    /// `proved`, `not proved` or `invalid`.
    pub verdict: &'static str,
    /// Why it is invalid.
    pub reason: Option<String>,
}

/// Checks `transcript` (its side files read from `dir`) against `bundle`,
/// whose proofs `report` verified with `params`; `expected_model` is the
/// model id the answer must be of, `require` a policy stricter than the
/// transcript's own.
pub fn check(
    transcript: &Transcript,
    dir: &Path,
    bundle: &Bundle,
    report: &Report,
    params: &Params<EqAffine>,
    expected_model: Option<&str>,
    require: Option<ProvingPolicy>,
) -> Result<AnswerCheck, TranscriptError> {
    let mut problems = Vec::new();
    if let Some(expected) = expected_model {
        if !expected.eq_ignore_ascii_case(&transcript.model_id) {
            problems.push(format!(
                "the transcript is of model {}, not the expected {expected}",
                transcript.model_id
            ));
        }
    }
    let expected = transcript.expected_steps(dir, bundle.shape.fixed_point, bundle.shape.vocab)?;
    problems.extend(expected.problems);
    let checks = binding::check(transcript, dir);
    problems.extend(
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail)),
    );
    let required = transcript.required_positions(require);
    let openings = transcript.proof_openings(bundle, params, &expected.logits);
    let mut answer = check_answer(bundle, report, &openings, &expected.steps, &required);
    answer.problems.extend(problems);
    let (proved, not_proved, invalid) = answer.counts();
    Ok(AnswerCheck {
        valid: answer.valid(),
        model_id: transcript.model_id.clone(),
        proved,
        not_proved,
        invalid,
        required,
        receipts: receipt_summary(transcript).ok(),
        checks,
        tokens: answer
            .tokens
            .into_iter()
            .map(|t| TokenCheck {
                position: t.position,
                token: t.token,
                logprob: t.logprob,
                required: t.required,
                verdict: match t.verdict {
                    Verdict::Proved => "proved",
                    Verdict::NotProved => "not proved",
                    Verdict::Invalid(_) => "invalid",
                },
                reason: match t.verdict {
                    Verdict::Invalid(reason) => Some(reason),
                    _ => None,
                },
            })
            .collect(),
        problems: answer.problems,
    })
}

/// How many hops the transcript signs, and by how many nodes.
pub fn receipt_summary(transcript: &Transcript) -> Result<ReceiptSummary, TranscriptError> {
    let signed = transcript.receipts()?;
    let mut nodes: Vec<_> = signed.iter().map(|(k, _)| k.to_hex()).collect();
    nodes.sort();
    nodes.dedup();
    Ok(ReceiptSummary {
        signed_hops: signed.len(),
        unsigned_hops: transcript.unsigned_hops(),
        nodes: nodes.len(),
    })
}
