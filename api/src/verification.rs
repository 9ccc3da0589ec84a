//! The `verification` object every answer carries (docs/api.md lists its
//! fields): what fixes the answer, what signs it, and where its proofs
//! stand.

use serde_json::{json, Value};
use transcript::binding;
use transcript::Transcript;
use verifier::hex;

use crate::store::ProofState;

/// What the chosen tokens' `logprob` is.
pub const LOGPROB_MEANING: &str =
    "log softmax(z / temperature) of the chosen token, at the proof's \
     fixed point (z in steps of 2^-11): the value a proof of the token states, after temperature";

/// The verification object of the answer `id`, whose proofs are in
/// `proofs`; `retention` is how long the server keeps its files.
pub fn verification(
    id: &str,
    transcript: &Transcript,
    proofs: &ProofState,
    retention_s: u64,
) -> Value {
    let summary = transcript::answer::receipt_summary(transcript).ok();
    let aggregate = binding::check(transcript, std::path::Path::new("."))
        .into_iter()
        .find(|c| c.name == "aggregate signature");
    let signature_status = match (transcript.receipts_signature.as_ref(), aggregate) {
        (None, _) => "unsigned".to_string(),
        (Some(_), Some(c)) if c.passed => "verified".to_string(),
        (Some(_), Some(c)) => format!("failed: {}", c.detail),
        (Some(_), None) => "not checked".to_string(),
    };
    let token_at = |position: u64| {
        transcript
            .token_positions()
            .zip(&transcript.tokens)
            .find(|(p, _)| *p == position)
            .map(|(_, t)| *t)
    };
    let (status, tokens): (&str, Vec<Value>) = match proofs {
        ProofState::None => ("none", Vec::new()),
        ProofState::Pending { positions } => (
            "pending",
            positions
                .iter()
                .map(|&p| json!({"position": p, "token": token_at(p), "status": "pending"}))
                .collect(),
        ),
        ProofState::Done {
            positions,
            failures,
            ..
        } => (
            "done",
            positions
                .iter()
                .map(|&p| match failures.iter().find(|(f, _)| *f == p) {
                    Some((_, reason)) => json!({"position": p, "token": token_at(p), "status": "failed", "reason": reason}),
                    None => json!({"position": p, "token": token_at(p), "status": "proven"}),
                })
                .collect(),
        ),
        ProofState::Failed { positions, reason } => (
            "failed",
            positions
                .iter()
                .map(|&p| json!({"position": p, "token": token_at(p), "status": "failed", "reason": reason}))
                .collect(),
        ),
    };
    json!({
        "id": id,
        "model_id": transcript.model_id,
        "request_id": transcript.request_id,
        "nonce": transcript.client_nonce,
        "prompt_token_ids": transcript.prompt_tokens,
        "token_ids": transcript.tokens,
        "sampler": transcript.sampler,
        "logprob": LOGPROB_MEANING,
        "transcript_digest": hex(&transcript.challenge_digest()),
        "receipts": {
            "signed_hops": summary.as_ref().map(|s| s.signed_hops),
            "unsigned_hops": summary.as_ref().map(|s| s.unsigned_hops),
            "nodes": summary.as_ref().map(|s| s.nodes),
            "aggregate_signature": signature_status,
        },
        "proofs": {
            "policy": transcript.proving,
            "status": status,
            "tokens": tokens,
        },
        "transcript_url": format!("/v1/transcripts/{id}"),
        "proofs_url": (!matches!(proofs, ProofState::None)).then(|| format!("/v1/proofs/{id}")),
        "retention_seconds": retention_s,
    })
}
