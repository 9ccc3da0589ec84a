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

/// The verification object of the answer `id`, whose receipts
/// [`receipts`] summed up and whose proofs are in `proofs`; `retention_s`
/// is how long the server keeps its files.
pub fn verification(
    id: &str,
    transcript: &Transcript,
    receipts: &Value,
    proofs: &ProofState,
    retention_s: u64,
) -> Value {
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
        "receipts": receipts,
        "proofs": proof_status(transcript, proofs),
        "transcript_url": format!("/v1/transcripts/{id}"),
        "proofs_url": (!matches!(proofs, ProofState::None)).then(|| format!("/v1/proofs/{id}")),
        "retention_seconds": retention_s,
    })
}

/// The hop receipts: how many, by how many nodes, and whether their
/// aggregate signature verifies (one pairing per hop: computed once, on the
/// generation's thread).
pub fn receipts(transcript: &Transcript) -> Value {
    let summary = transcript::answer::receipt_summary(transcript).ok();
    let aggregate = match (
        &transcript.receipts_signature,
        binding::aggregate(transcript),
    ) {
        (None, _) => "unsigned".to_string(),
        (Some(_), Ok(failures)) if failures.is_empty() => "verified".to_string(),
        (Some(_), Ok(failures)) => format!("failed: {}", failures.join("; ")),
        (Some(_), Err(e)) => format!("failed: {e}"),
    };
    json!({
        "signed_hops": summary.as_ref().map(|s| s.signed_hops),
        "unsigned_hops": summary.as_ref().map(|s| s.unsigned_hops),
        "nodes": summary.as_ref().map(|s| s.nodes),
        "aggregate_signature": aggregate,
    })
}

/// Where the answer's proofs stand, per position asked for.
pub fn proof_status(transcript: &Transcript, proofs: &ProofState) -> Value {
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
        "policy": transcript.proving,
        "status": status,
        "tokens": tokens,
    })
}
