//! Which tokens of an answer a bundle proves.
//!
//! A client that kept the generated tokens (and how each was sampled) checks a
//! bundle against them: every proof must verify, every proven statement must
//! be about a token of the answer with the token, sampler and (when the
//! logits are at hand) the commitment the answer has, and the positions that
//! had to be proven must be. Plain types in, verdicts out: the caller reads
//! its transcript however it stores it.

use halo2_proofs::pasta::Fp;

use circuits::Sampler;

use crate::{Bundle, Report};

/// What the answer says about one generated token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedStep {
    pub position: u64,
    pub token: u32,
    pub sampler: Sampler,
    /// The commitment to the answer's logits at this position, when known.
    pub commitment: Option<Fp>,
}

/// The verdict on one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid proof of exactly this token, sampler (and commitment).
    Proved,
    /// No proof covers it.
    NotProved,
    /// A proof covers it but does not verify or says something else.
    Invalid(String),
}

/// One token's verdict, with the proven log-probability when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenVerdict {
    pub position: u64,
    pub token: u32,
    /// In nats, from the proof's statement.
    pub logprob: Option<f64>,
    pub verdict: Verdict,
    /// Whether the answer's policy required this position to be proven.
    pub required: bool,
}

/// The verdicts on an answer.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerReport {
    pub tokens: Vec<TokenVerdict>,
    /// Problems tied to no token of the answer (a proof of a position the
    /// answer does not have).
    pub problems: Vec<String>,
}

impl AnswerReport {
    /// Nothing invalid, nothing foreign, every required token proven.
    pub fn valid(&self) -> bool {
        self.problems.is_empty()
            && self.tokens.iter().all(|t| match t.verdict {
                Verdict::Proved => true,
                Verdict::NotProved => !t.required,
                Verdict::Invalid(_) => false,
            })
    }

    /// Counts of (proved, not proved, invalid) tokens.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for t in &self.tokens {
            match t.verdict {
                Verdict::Proved => counts.0 += 1,
                Verdict::NotProved => counts.1 += 1,
                Verdict::Invalid(_) => counts.2 += 1,
            }
        }
        counts
    }
}

/// Checks `bundle` (already verified into `report`) against the answer's
/// tokens; `required` are the positions its policy needs proven.
pub fn check_answer(
    bundle: &Bundle,
    report: &Report,
    expected: &[ExpectedStep],
    required: &[u64],
) -> AnswerReport {
    let frac_bits = bundle.shape.fixed_point.frac_bits;
    let proven: Vec<(usize, _)> = bundle.steps().collect();
    let mut problems = Vec::new();
    for (_, statement) in &proven {
        if !expected.iter().any(|e| e.position == statement.position) {
            problems.push(format!(
                "a proof of position {}, which is not a generated token of this answer",
                statement.position
            ));
        }
    }
    let tokens = expected
        .iter()
        .map(|e| {
            let covering: Vec<_> = proven
                .iter()
                .filter(|(_, s)| s.position == e.position)
                .collect();
            let logprob = covering.first().map(|(_, s)| s.logprob_nats(frac_bits));
            let verdict = if covering.is_empty() {
                Verdict::NotProved
            } else if let Some(reason) = covering
                .iter()
                .find_map(|(proof, s)| mismatch(e, s, report.proofs[*proof]))
            {
                Verdict::Invalid(reason)
            } else {
                Verdict::Proved
            };
            TokenVerdict {
                position: e.position,
                token: e.token,
                logprob,
                verdict,
                required: required.contains(&e.position),
            }
        })
        .collect();
    AnswerReport { tokens, problems }
}

/// Why a proven statement does not prove the expected step, if it does not.
fn mismatch(
    expected: &ExpectedStep,
    statement: &circuits::StepStatement,
    proof_valid: bool,
) -> Option<String> {
    if !proof_valid {
        return Some("its proof does not verify".into());
    }
    if statement.token != expected.token {
        return Some(format!(
            "the proof is of token {}, the answer has {}",
            statement.token, expected.token
        ));
    }
    if statement.sampler != expected.sampler {
        return Some(format!(
            "the proof is of {}, the answer was {}",
            statement.sampler, expected.sampler
        ));
    }
    if expected
        .commitment
        .is_some_and(|c| c != statement.commitment)
    {
        return Some("the proof commits to other logits than the answer's".into());
    }
    None
}
