//! The client's side of proving alongside inference: which steps were asked
//! of the head node, and the bundle its replies add up to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use circuits::opening::proof_commitments_digest;
use transcript::ProofReceiptRecord;
use verifier::bundle::{Bundle, BundleError};
use verifier::hex;
use wire::{ProofsReply, ProveStep};

/// A head node's proofs that cannot be taken in.
#[derive(Debug, thiserror::Error)]
pub enum ProofsError {
    #[error("a proof bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("the node's proofs are not all of one circuit")]
    MixedCircuits,
}

/// The client's view of the proofs of one generation.
#[derive(Default)]
pub struct ProofCollector {
    /// Steps asked for, with the chain request id they were asked under.
    asked: BTreeMap<u64, (ProveStep, u64)>,
    proven: BTreeSet<u64>,
    failures: BTreeMap<u64, String>,
    bundle: Option<Bundle>,
    receipts: Vec<ProofReceiptRecord>,
}

impl ProofCollector {
    /// Notes that `steps` were asked of chain request `request`.
    pub fn asked(&mut self, request: u64, steps: &[ProveStep]) {
        for step in steps {
            self.asked.insert(step.position, (*step, request));
        }
    }

    /// Takes a node's reply in: bundles are merged (they must be of one
    /// circuit), failures noted.
    pub fn absorb(&mut self, reply: ProofsReply) -> Result<(), ProofsError> {
        for proven in &reply.bundles {
            let bundle = Bundle::from_bytes(&proven.bytes)?;
            for (_, statement) in bundle.steps() {
                self.proven.insert(statement.position);
            }
            // The head's signature per proof; checked by the verifier
            // against the keys that signed the logits.
            if proven.signatures.len() == bundle.proofs.len() {
                for (proof, signature) in bundle.proofs.iter().zip(&proven.signatures) {
                    if let Some(c) = proof_commitments_digest(bundle.shape, &proof.bytes) {
                        self.receipts.push(ProofReceiptRecord {
                            commitments_blake3: hex(&c),
                            signature: hex(signature),
                        });
                    }
                }
            }
            match &mut self.bundle {
                None => self.bundle = Some(bundle),
                Some(all) => {
                    if all.shape != bundle.shape || all.vk_digest != bundle.vk_digest {
                        return Err(ProofsError::MixedCircuits);
                    }
                    all.proofs.extend(bundle.proofs);
                }
            }
        }
        for failure in reply.failures {
            self.failures.insert(failure.position, failure.message);
        }
        Ok(())
    }

    /// Steps asked under another head than `request` (a chain that failed
    /// or was replaced, or a head whose standby took over;
    /// `Session::head_epoch`) that came back neither proven nor failed: they
    /// must be asked again.
    pub fn orphaned(&self, request: u64) -> Vec<ProveStep> {
        self.asked
            .iter()
            .filter(|(p, (_, r))| {
                *r != request && !self.proven.contains(p) && !self.failures.contains_key(p)
            })
            .map(|(_, (step, _))| *step)
            .collect()
    }

    /// Steps asked and not yet proven or failed.
    pub fn outstanding(&self) -> usize {
        self.asked
            .keys()
            .filter(|p| !self.proven.contains(p) && !self.failures.contains_key(p))
            .count()
    }

    /// Steps proven so far.
    pub fn proven(&self) -> usize {
        self.proven.len()
    }

    /// Why steps failed, by position.
    pub fn failures(&self) -> &BTreeMap<u64, String> {
        &self.failures
    }

    /// The merged bundle, if any proof came back, and the head's receipts
    /// of its proofs.
    pub fn into_bundle(self) -> (Option<Bundle>, Vec<ProofReceiptRecord>) {
        (self.bundle, self.receipts)
    }
}

/// How long a client waits between polls for proofs.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
