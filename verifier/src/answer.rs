//! Which tokens of an answer a bundle proves.
//!
//! A client that kept the generated tokens (and how each was sampled) checks a
//! bundle against them: every proof must verify, every proven statement must
//! be about a token of the answer with the token and sampler the answer has,
//! each proof's commitments must open to the answer's logits (when they are at
//! hand, [`open_proofs`]), and the positions that had to be proven must be.
//! Plain types in, verdicts out: the caller reads its transcript however it
//! stores it.

use std::collections::BTreeMap;

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};

use circuits::opening::{logit_commitments, proof_logit_commitments};
use circuits::Sampler;

use crate::{Bundle, Report};

/// What the answer says about one generated token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedStep {
    pub position: u64,
    pub token: u32,
    pub sampler: Sampler,
}

/// Whether a proof's commitments to its logits open to the answer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitOpening {
    Opens,
    /// The logits are not at hand, but the head that signed them signed
    /// that the proof's commitments open to them (a proof receipt).
    Attested,
    /// The proof is about other logits (or its commitments are unreadable).
    Differs,
    /// The answer lacks the logits of one of the proof's steps.
    Unknown,
}

/// Opens every proof of `bundle` with its seed against the answer's quantized
/// logits by position (one commitment per lane, each a multi-scalar
/// multiplication over the `2^k` rows).
pub fn open_proofs(
    bundle: &Bundle,
    params: &Params<EqAffine>,
    logits: &BTreeMap<u64, Vec<i64>>,
) -> Vec<LogitOpening> {
    bundle
        .proofs
        .iter()
        .map(|proof| {
            let steps: Option<Vec<&[i64]>> = proof
                .steps
                .iter()
                .map(|s| logits.get(&s.position).map(Vec::as_slice))
                .collect();
            let Some(steps) = steps else {
                return LogitOpening::Unknown;
            };
            let expected = logit_commitments(params, bundle.shape, &steps, &proof.seed);
            let found = proof_logit_commitments(bundle.shape, &proof.bytes);
            match (expected, found) {
                (Some(e), Some(f)) if e == f => LogitOpening::Opens,
                _ => LogitOpening::Differs,
            }
        })
        .collect()
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

/// Checks `bundle` (already verified into `report`, its proofs opened into
/// `openings`) against the answer's tokens; `required` are the positions that
/// must be proven.
pub fn check_answer(
    bundle: &Bundle,
    report: &Report,
    openings: &[LogitOpening],
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
            } else if let Some(reason) = covering.iter().find_map(|(proof, s)| {
                mismatch(e, s, report.proofs[*proof], openings.get(*proof).copied())
            }) {
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
    opening: Option<LogitOpening>,
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
    match opening {
        Some(LogitOpening::Opens | LogitOpening::Attested) => {}
        Some(LogitOpening::Differs) => {
            return Some("the proof commits to other logits than the answer's".into())
        }
        Some(LogitOpening::Unknown) | None => {
            return Some(
                "nothing ties the proof's commitments to the head's signed logits:                  neither the logits nor the head's proof receipt is at hand"
                    .into(),
            )
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Proof;
    use circuits::fixed_point::Temperature;
    use circuits::{CircuitShape, FixedPoint, StepStatement};

    fn statement(position: u64, token: u32, sampler: Sampler) -> StepStatement {
        StepStatement {
            token,
            // One nat: 2^(F + 4) log-probability units.
            logprob: -(1 << 15),
            sampler,
            position,
        }
    }

    fn expected(position: u64, token: u32, sampler: Sampler) -> ExpectedStep {
        ExpectedStep {
            position,
            token,
            sampler,
        }
    }

    /// Two proofs: positions 5 and 6 (sampled at 6), position 7 unproven.
    fn fixture() -> (Bundle, Vec<ExpectedStep>) {
        let sampled = Sampler::Sample {
            temperature: Temperature::ONE,
            r: 99,
        };
        let shape = CircuitShape::new(64, FixedPoint::default(), 1, 1).expect("shape");
        let proof = |s: StepStatement| Proof {
            steps: vec![s],
            seed: [0; 32],
            bytes: vec![1, 2, 3],
        };
        let bundle = Bundle {
            shape,
            vk_digest: [0; 32],
            proofs: vec![
                proof(statement(5, 10, Sampler::Greedy)),
                proof(statement(6, 11, sampled)),
            ],
        };
        let expected = vec![
            expected(5, 10, Sampler::Greedy),
            expected(6, 11, sampled),
            expected(7, 12, Sampler::Greedy),
        ];
        (bundle, expected)
    }

    const OPEN: [LogitOpening; 2] = [LogitOpening::Opens; 2];

    fn verdicts(report: &AnswerReport) -> Vec<&Verdict> {
        report.tokens.iter().map(|t| &t.verdict).collect()
    }

    #[test]
    fn matching_proofs_prove_their_tokens_and_policy_decides_the_rest() {
        let (bundle, expected) = fixture();
        let valid = Report {
            proofs: vec![true, true],
        };
        let report = check_answer(&bundle, &valid, &OPEN, &expected, &[5, 6]);
        assert_eq!(
            verdicts(&report),
            [&Verdict::Proved, &Verdict::Proved, &Verdict::NotProved]
        );
        assert!(report.valid());
        assert_eq!(report.counts(), (2, 1, 0));
        assert_eq!(report.tokens[0].logprob, Some(-1.0));
        // Position 7 required but unproven.
        assert!(!check_answer(&bundle, &valid, &OPEN, &expected, &[5, 6, 7]).valid());
    }

    #[test]
    fn any_disagreement_with_the_answer_is_invalid() {
        let (bundle, expected) = fixture();
        let valid = Report {
            proofs: vec![true, true],
        };
        let invalid_at = |expected: &[ExpectedStep], report: &Report| {
            let r = check_answer(&bundle, report, &OPEN, expected, &[]);
            assert!(!r.valid());
            r.tokens
                .iter()
                .filter(|t| matches!(t.verdict, Verdict::Invalid(_)))
                .map(|t| t.position)
                .collect::<Vec<_>>()
        };
        // A proof that does not verify.
        let broken = Report {
            proofs: vec![true, false],
        };
        assert_eq!(invalid_at(&expected, &broken), [6]);
        // Another token, sampler or r in the answer.
        let mut e = expected.clone();
        e[0].token = 9;
        assert_eq!(invalid_at(&e, &valid), [5]);
        let mut e = expected.clone();
        e[0].sampler = Sampler::Sample {
            temperature: Temperature::ONE,
            r: 0,
        };
        assert_eq!(invalid_at(&e, &valid), [5]);
        let mut e = expected.clone();
        e[1].sampler = Sampler::Sample {
            temperature: Temperature::ONE,
            r: 98,
        };
        assert_eq!(invalid_at(&e, &valid), [6]);
        let mut e = expected.clone();
        e[1].sampler = Sampler::Sample {
            temperature: Temperature::from_milli(800).unwrap(),
            r: 99,
        };
        assert_eq!(invalid_at(&e, &valid), [6]);
        // A proof about other logits than the answer's.
        let differs = [LogitOpening::Opens, LogitOpening::Differs];
        let r = check_answer(&bundle, &valid, &differs, &expected, &[]);
        assert_eq!(
            r.tokens[1].verdict,
            Verdict::Invalid("the proof commits to other logits than the answer's".into())
        );
        // A head's proof receipt stands for logits not at hand; nothing at
        // all does not.
        let attested = [LogitOpening::Attested, LogitOpening::Opens];
        assert!(check_answer(&bundle, &valid, &attested, &expected, &[]).valid());
        let unknown = [LogitOpening::Opens, LogitOpening::Unknown];
        let r = check_answer(&bundle, &valid, &unknown, &expected, &[]);
        assert!(matches!(&r.tokens[1].verdict, Verdict::Invalid(m) if m.contains("nothing ties")));
        // A proof of a position the answer does not have.
        let report = check_answer(&bundle, &valid, &OPEN, &expected[1..], &[]);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(!report.valid());
    }
}
