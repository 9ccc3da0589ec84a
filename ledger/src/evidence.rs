//! The files a challenge is made from: an equivocation (two signed hop
//! receipts) and auditors' signed verdicts. Both are JSON with every field
//! required and no other allowed; keys and signatures are checked encodings.

use serde::{Deserialize, Serialize};
use verifier::receipt::{self, PublicKey, Receipt, SecretKey, Signature, Statement, Verdict};

use crate::hex;

/// The largest evidence file read.
pub const MAX_EVIDENCE_BYTES: usize = 64 << 10;

/// A hop receipt with its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Signature,
}

impl SignedReceipt {
    /// The signed message, as the contract reads it.
    pub fn message(&self, signer: &PublicKey) -> Vec<u8> {
        self.receipt.message(signer)
    }
}

/// Two receipts one node signed for the same hop input, with different outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub signer: PublicKey,
    pub receipts: [SignedReceipt; 2],
}

/// An auditor's signed verdict: the accused's fraud proof holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVerdict {
    pub auditor: PublicKey,
    pub verdict: Verdict,
    pub signature: Signature,
}

/// Why a file is not evidence.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("{0} bytes is more than evidence holds ({MAX_EVIDENCE_BYTES})")]
    TooLarge(usize),
    #[error("not valid evidence JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Field(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptJson {
    model_id: String,
    layers: [u32; 2],
    request_id: u64,
    position: u64,
    input: String,
    output: String,
    signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EquivocationJson {
    signer: String,
    receipts: [ReceiptJson; 2],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerdictJson {
    ledger: String,
    result: String,
    accused: String,
    auditor: String,
    signature: String,
}

impl Equivocation {
    /// The evidence of `signer` having signed both receipts.
    pub fn signed(signer: &SecretKey, receipts: [Receipt; 2]) -> Equivocation {
        Equivocation {
            signer: signer.public(),
            receipts: receipts.map(|receipt| SignedReceipt {
                signature: signer.sign(&receipt),
                receipt,
            }),
        }
    }

    /// Whether the evidence is an equivocation at all: one slot, two outputs,
    /// both signatures valid. The contract checks the same; this catches a
    /// mistake before the bond is at stake.
    pub fn check(&self) -> Result<(), String> {
        let [a, b] = &self.receipts;
        let slot = |r: &Receipt| (r.model_id, r.layers, r.request_id, r.position, r.input);
        if slot(&a.receipt) != slot(&b.receipt) {
            return Err("the receipts are for different hops".into());
        }
        if a.receipt.output == b.receipt.output {
            return Err("the outputs are equal".into());
        }
        for (which, r) in [("first", a), ("second", b)] {
            if !receipt::verify(&self.signer, &r.receipt, &r.signature) {
                return Err(format!("the {which} signature does not verify"));
            }
        }
        Ok(())
    }

    pub fn parse(bytes: &[u8]) -> Result<Equivocation, EvidenceError> {
        let json: EquivocationJson = parse_json(bytes)?;
        let [a, b] = json.receipts;
        Ok(Equivocation {
            signer: public_key(&json.signer, "signer")?,
            receipts: [signed_receipt(a)?, signed_receipt(b)?],
        })
    }

    pub fn to_json(&self) -> String {
        let receipt = |r: &SignedReceipt| ReceiptJson {
            model_id: hex::encode(&r.receipt.model_id),
            layers: [r.receipt.layers.0, r.receipt.layers.1],
            request_id: r.receipt.request_id,
            position: r.receipt.position,
            input: hex::encode(&r.receipt.input),
            output: hex::encode(&r.receipt.output),
            signature: r.signature.to_hex(),
        };
        let json = EquivocationJson {
            signer: self.signer.to_hex(),
            receipts: [receipt(&self.receipts[0]), receipt(&self.receipts[1])],
        };
        serde_json::to_string_pretty(&json).expect("evidence serializes")
    }
}

impl SignedVerdict {
    /// `key`'s verdict that the node `accused` computed result `result` of
    /// the ledger at `ledger` falsely.
    pub fn sign(
        key: &SecretKey,
        ledger: [u8; 20],
        result: [u8; 32],
        accused: PublicKey,
    ) -> SignedVerdict {
        let verdict = Verdict {
            ledger,
            result,
            accused,
        };
        SignedVerdict {
            auditor: key.public(),
            signature: key.sign(&verdict),
            verdict,
        }
    }

    pub fn verifies(&self) -> bool {
        receipt::verify(&self.auditor, &self.verdict, &self.signature)
    }

    pub fn parse(bytes: &[u8]) -> Result<SignedVerdict, EvidenceError> {
        let json: VerdictJson = parse_json(bytes)?;
        Ok(SignedVerdict {
            auditor: public_key(&json.auditor, "auditor")?,
            verdict: Verdict {
                ledger: fixed(&json.ledger, "ledger")?,
                result: fixed(&json.result, "result")?,
                accused: public_key(&json.accused, "accused")?,
            },
            signature: signature(&json.signature)?,
        })
    }

    pub fn to_json(&self) -> String {
        let json = VerdictJson {
            ledger: format!("0x{}", hex::encode(&self.verdict.ledger)),
            result: hex::encode(&self.verdict.result),
            accused: self.verdict.accused.to_hex(),
            auditor: self.auditor.to_hex(),
            signature: self.signature.to_hex(),
        };
        serde_json::to_string_pretty(&json).expect("a verdict serializes")
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, EvidenceError> {
    if bytes.len() > MAX_EVIDENCE_BYTES {
        return Err(EvidenceError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| EvidenceError::Json(e.to_string()))
}

fn signed_receipt(r: ReceiptJson) -> Result<SignedReceipt, EvidenceError> {
    Ok(SignedReceipt {
        receipt: Receipt {
            model_id: fixed(&r.model_id, "model_id")?,
            layers: (r.layers[0], r.layers[1]),
            request_id: r.request_id,
            position: r.position,
            input: fixed(&r.input, "input")?,
            output: fixed(&r.output, "output")?,
        },
        signature: signature(&r.signature)?,
    })
}

fn fixed<const N: usize>(text: &str, field: &str) -> Result<[u8; N], EvidenceError> {
    hex::decode(text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| EvidenceError::Field(format!("{field}: not {} hex digits", 2 * N)))
}

fn public_key(text: &str, field: &str) -> Result<PublicKey, EvidenceError> {
    PublicKey::from_hex(text).map_err(|e| EvidenceError::Field(format!("{field}: {e}")))
}

fn signature(text: &str) -> Result<Signature, EvidenceError> {
    Signature::from_hex(text).map_err(|e| EvidenceError::Field(format!("signature: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("non-zero")
    }

    pub(crate) fn equivocation(signer: &SecretKey) -> Equivocation {
        let receipt = Receipt {
            model_id: [7; 32],
            layers: (0, 9),
            request_id: 41,
            position: 3,
            input: [1; 32],
            output: [2; 32],
        };
        let other = Receipt {
            output: [3; 32],
            ..receipt
        };
        Equivocation::signed(signer, [receipt, other])
    }

    #[test]
    fn evidence_round_trips_and_checks() {
        let e = equivocation(&key(1));
        assert_eq!(e.check(), Ok(()));
        assert_eq!(Equivocation::parse(e.to_json().as_bytes()), Ok(e.clone()));
        let v = SignedVerdict::sign(&key(2), [9; 20], [8; 32], key(1).public());
        assert!(v.verifies());
        assert_eq!(SignedVerdict::parse(v.to_json().as_bytes()), Ok(v));
    }

    #[test]
    fn a_false_equivocation_is_caught_before_sending() {
        let mut same = equivocation(&key(1));
        same.receipts[1] = same.receipts[0].clone();
        assert_eq!(same.check(), Err("the outputs are equal".into()));
        let mut other_hop = equivocation(&key(1));
        other_hop.receipts[1].receipt.position += 1;
        assert_eq!(
            other_hop.check(),
            Err("the receipts are for different hops".into())
        );
        let mut forged = equivocation(&key(1));
        forged.receipts[1].signature = key(2).sign(&forged.receipts[1].receipt);
        assert_eq!(
            forged.check(),
            Err("the second signature does not verify".into())
        );
    }

    #[test]
    fn every_mutation_of_a_verdict_file_is_refused_or_changes_it() {
        // Flip each byte of a valid file: the parse fails, or yields another
        // verdict whose signature no longer verifies (never the same one).
        let v = SignedVerdict::sign(&key(2), [9; 20], [8; 32], key(1).public());
        let text = v.to_json().into_bytes();
        for i in 0..text.len() {
            for flip in [0x01u8, 0x20] {
                let mut bytes = text.clone();
                bytes[i] ^= flip;
                if let Ok(parsed) = SignedVerdict::parse(&bytes) {
                    assert!(parsed == v || !parsed.verifies(), "byte {i}");
                }
            }
        }
        let unknown = text
            .strip_suffix(b"}")
            .map(|t| [t, b",\"extra\":1}"].concat());
        assert!(matches!(
            SignedVerdict::parse(&unknown.expect("ends in a brace")),
            Err(EvidenceError::Json(_))
        ));
        assert_eq!(
            SignedVerdict::parse(&vec![b' '; MAX_EVIDENCE_BYTES + 1]),
            Err(EvidenceError::TooLarge(MAX_EVIDENCE_BYTES + 1))
        );
    }

    #[test]
    fn every_mutation_of_an_equivocation_file_is_refused_or_caught() {
        let e = equivocation(&key(1));
        let text = e.to_json().into_bytes();
        for i in 0..text.len() {
            let mut bytes = text.clone();
            bytes[i] ^= 0x01;
            if let Ok(parsed) = Equivocation::parse(&bytes) {
                assert!(parsed == e || parsed.check().is_err(), "byte {i}");
            }
        }
    }
}
