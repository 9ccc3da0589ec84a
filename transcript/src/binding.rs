//! What a transcript binds by itself: the checks that need no proof, no node
//! and no model, run by both `zkinfer verify --transcript` and the auditor.
//!
//! A transcript is the client's account of a generation; only what the nodes
//! signed is evidence. These checks tie every field that matters to a
//! signature:
//! - every hop carries a receipt, each receipt's own signature verifies, and
//!   the aggregate is the sum of exactly those signatures;
//! - every position of the prompt and of the generated tokens is the input
//!   of a first-layer hop signed for those very tokens (a generation feeds
//!   its last token too), so no token can be changed or a forward dropped;
//! - when the transcript keeps the logits (`--transcript-logits`), each
//!   decode record's logits are the head node's signed output of the forward
//!   before it, and the record's token is the one the sampler picks from
//!   them (greedy, or inverse CDF with `r` recomputed from the nonce), so an
//!   unproven token is still the head's. Without them the head's signed
//!   digests stand for the logits: proofs tie tokens to them through the
//!   head's proof receipts, and an auditor asks the head for the logits.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use circuits::{sample_token, FixedPoint, Tables};
use verifier::receipt::{self, Signature};

use crate::{f32_bytes, u32_bytes, Records, Transcript};

const NO_LOGITS: &str = "the transcript keeps no logits: the head's signed digests stand for them";

/// One check of the transcript itself.
#[derive(Clone, Debug, Serialize)]
pub struct BindingCheck {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

impl BindingCheck {
    fn new(name: &'static str, failures: Result<Vec<String>, String>, ok: String) -> Self {
        match failures {
            Ok(failures) if failures.is_empty() => BindingCheck {
                name,
                passed: true,
                detail: ok,
            },
            Ok(failures) => BindingCheck {
                name,
                passed: false,
                detail: summarize(&failures),
            },
            Err(e) => BindingCheck {
                name,
                passed: false,
                detail: e,
            },
        }
    }
}

/// The first few failures and how many there were.
fn summarize(failures: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = failures[..failures.len().min(SHOWN)].join("; ");
    if failures.len() > SHOWN {
        text.push_str(&format!(" (and {} more)", failures.len() - SHOWN));
    }
    text
}

/// Every check, in order; `dir` is where the transcript's side files are.
pub fn check(transcript: &Transcript, dir: &Path) -> Vec<BindingCheck> {
    let hops = transcript.hops.len();
    // Read (and, from a side file, hashed) once for both checks that need them.
    let records = transcript.records(dir).map_err(|e| e.to_string());
    let records = records.as_ref().map_err(Clone::clone);
    let kept = matches!(records, Ok(Some(_)));
    vec![
        BindingCheck::new(
            "every hop signed",
            Ok(transcript
                .hops
                .iter()
                .filter(|h| h.receipt.is_none())
                .map(|h| {
                    format!(
                        "hop at position {} (layers {:?}) unsigned",
                        h.position, h.layers
                    )
                })
                .collect()),
            format!("{hops} hops"),
        ),
        BindingCheck::new(
            "each hop's signature",
            hop_signatures(transcript),
            format!("{hops} receipts verify one by one"),
        ),
        BindingCheck::new(
            "aggregate signature",
            aggregate(transcript),
            "the sum of the hop signatures, and it verifies".into(),
        ),
        BindingCheck::new(
            "first hops signed for the transcript's tokens",
            Ok(fed_tokens(transcript)),
            "every prompt and generated token was fed to a signed first hop".into(),
        ),
        BindingCheck::new(
            "records open the head's signed logits",
            records.clone().map(|r| {
                r.as_ref()
                    .map_or_else(Vec::new, |r| records_open_head(transcript, r))
            }),
            if kept {
                "every record's logits"
            } else {
                NO_LOGITS
            }
            .into(),
        ),
        BindingCheck::new(
            "tokens follow from the recorded logits",
            records.and_then(|r| {
                r.as_ref()
                    .map_or(Ok(Vec::new()), |r| tokens_follow(transcript, r))
            }),
            if kept {
                "every recorded token is the sampler's pick"
            } else {
                NO_LOGITS
            }
            .into(),
        ),
    ]
}

fn hop_signatures(transcript: &Transcript) -> Result<Vec<String>, String> {
    let signed = transcript.receipts().map_err(|e| e.to_string())?;
    let signatures = transcript.hops.iter().filter_map(|h| h.receipt.as_ref());
    let mut failures = Vec::new();
    for ((signer, statement), r) in signed.iter().zip(signatures) {
        let valid =
            Signature::from_hex(&r.signature).is_ok_and(|s| receipt::verify(signer, statement, &s));
        if !valid {
            failures.push(format!(
                "the receipt of position {} (layers {:?}) is not signed by its signer",
                statement.position, statement.layers
            ));
        }
    }
    Ok(failures)
}

/// The "aggregate signature" check: what is wrong with the transcript's
/// aggregate of its hop signatures (nothing when there are no receipts).
pub fn aggregate(transcript: &Transcript) -> Result<Vec<String>, String> {
    let signed = transcript.receipts().map_err(|e| e.to_string())?;
    let Some(hex) = &transcript.receipts_signature else {
        return Ok(if signed.is_empty() {
            Vec::new()
        } else {
            vec!["hops carry receipts but the transcript has no aggregate signature".into()]
        });
    };
    let signature = Signature::from_hex(hex).map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    if transcript
        .aggregate_receipts()
        .map_err(|e| e.to_string())?
        .as_deref()
        != Some(hex.as_str())
    {
        failures.push("it is not the sum of the hops' own signatures".into());
    }
    if !receipt::verify_aggregate(&signed, &signature) {
        failures.push(format!(
            "it does not verify against the {} hop receipts",
            signed.len()
        ));
    }
    Ok(failures)
}

/// Positions of the prompt and the tokens that no signed first hop was fed.
fn fed_tokens(transcript: &Transcript) -> Vec<String> {
    let all: Vec<u32> = transcript
        .prompt_tokens
        .iter()
        .chain(&transcript.tokens)
        .copied()
        .collect();
    let mut fed = vec![false; all.len()];
    let mut failures = Vec::new();
    for hop in transcript.hops.iter().filter(|h| h.layers[0] == 0) {
        let start = hop.position as usize;
        // A forward is fed the tokens from its position on (several when it
        // is the prompt or a speculative draft).
        let end = (start + 1..=all.len()).find(|&end| {
            blake3::hash(&u32_bytes(&all[start..end])).to_hex().as_str() == hop.input_blake3
        });
        match end {
            Some(end) => fed[start..end].iter_mut().for_each(|f| *f = true),
            None => failures.push(format!(
                "the first hop at position {start} was fed other tokens than the transcript's"
            )),
        }
    }
    for (position, fed) in fed.iter().enumerate() {
        if !fed {
            failures.push(format!("no signed first hop was fed position {position}"));
        }
    }
    failures
}

/// The head's signed output of the last forward before each record.
fn records_open_head(transcript: &Transcript, records: &Records) -> Vec<String> {
    let mut failures = Vec::new();
    let positions: Vec<u64> = transcript.token_positions().collect();
    for step in &records.steps {
        if !positions.contains(&step.position) {
            failures.push(format!(
                "a record at position {}, which is no generated token's",
                step.position
            ));
            continue;
        }
        let head = transcript
            .head_hop_before(step.position)
            .map(|h| h.output_blake3.as_str());
        if head != Some(blake3::hash(&f32_bytes(&step.logits)).to_hex().as_str()) {
            failures.push(format!(
                "the logits at position {} are not the head's signed output",
                step.position
            ));
        }
    }
    failures
}

fn tokens_follow(transcript: &Transcript, records: &Records) -> Result<Vec<String>, String> {
    let nonce = transcript.nonce().map_err(|e| e.to_string())?;
    let fixed_point = FixedPoint::default();
    let temperature = transcript.temperature().map_err(|e| e.to_string())?;
    let tables = Tables::new(fixed_point, temperature);
    let tokens: BTreeMap<u64, u32> = transcript
        .token_positions()
        .zip(transcript.tokens.iter().copied())
        .collect();
    let mut failures: Vec<String> = tokens
        .keys()
        .filter(|p| !records.steps.iter().any(|s| s.position == **p))
        .map(|p| format!("no record of the logits at position {p}"))
        .collect();
    for step in &records.steps {
        let sampler = transcript
            .sampler_at(&nonce, step.position)
            .map_err(|e| e.to_string())?;
        let z = fixed_point.quantize_all(&step.logits);
        let picked = z
            .map_err(|e| e.to_string())
            .and_then(|z| sample_token(&tables, &z, sampler).map_err(|e| e.to_string()));
        match picked {
            Ok(token) if Some(&token) == tokens.get(&step.position) => {}
            Ok(token) => failures.push(format!(
                "at position {} the logits give token {token}, the transcript has {:?}",
                step.position,
                tokens.get(&step.position)
            )),
            Err(e) => failures.push(format!("position {}: {e}", step.position)),
        }
    }
    Ok(failures)
}
