//! Signed hop receipts: BLS signatures on BN254 (ark-bn254), aggregatable.
//!
//! A node signs, for every hop it serves, a [`Receipt`]: model id, layer
//! range, request id, position, and the blake3 digests of the activation
//! bytes it received and answered. The receipts of a request aggregate into
//! one signature that anyone checks against the nodes' public keys.
//!
//! # Scheme
//!
//! - Keys: secret `x` in the scalar field `Fr`, public key `X = x·G2` (G2's
//!   generator): signatures live in G1 (32 bytes compressed), the shape
//!   Ethereum's BN254 precompiles (`ecAdd`, `ecMul`, `ecPairing`) check
//!   cheapest, which is where slashing would happen.
//! - Signature: `σ = x·H(m)`; valid iff `e(σ, G2) = e(H(m), X)`.
//! - Aggregate: `σ = Σ σ_i`; valid iff `e(σ, G2) = Π e(H(m_i), X_i)`. Each
//!   message starts with its signer's public key (message augmentation), so
//!   a rogue key cannot cancel an honest one, and every message is distinct.
//! - `H`, hash to G1 by try-and-increment: for `c = 0, 1, …`, `x = `
//!   `keccak256(d || c || 0x00 || m) || keccak256(d || c || 0x01 || m)` read
//!   as a 512-bit big-endian integer and reduced mod p, with `d =
//!   "zkinfer.bls.h2c.v2"` and `c` a u32 LE; the first `x` with `x³ + 3` a
//!   square gives the point `(x, y)` with `y` the square root whose integer
//!   value is even. Half of all `x` succeed, so a message takes two tries on
//!   average; the loop is not constant-time, which is harmless for public
//!   messages. BN254's G1 has cofactor 1: every curve point is in the group.
//!   Keccak is the EVM's own hash, so the ledger contract (docs/ledger.md)
//!   recomputes `H` for a few thousand gas.
//! - Message `m` of a proof of possession ([`Possession`], signed once when a
//!   node registers with the ledger contract): `"zkinfer.pop.v1"`, the
//!   signer's public key, the 20-byte account address it registers.
//! - Message `m` of an audit verdict ([`Verdict`], signed by an auditor of a
//!   committee that found a fraud proof valid): `"zkinfer.verdict.v1"`, the
//!   signer's public key, the ledger contract's address (20), the result id
//!   (32) and the accused node's public key (64).
//! - Message `m` of a receipt: `"zkinfer.receipt.v1"`, the signer's public
//!   key (64 bytes compressed), model id (32), layer start and end (u32 LE
//!   each), request id and position (u64 LE each), input and output digests
//!   (32 each).
//! - Message `m` of a step receipt ([`StepReceipt`], signed only when an
//!   auditor bisects a hop): `"zkinfer.step.v1"`, the signer's public key,
//!   model id, step kind (u8: 0 enter, 1 layer, 2 exit) and layer (u32 LE:
//!   the span's first layer for enter, the layer, the span's end for exit),
//!   request id and position (u64 LE each), input and
//!   output digests (32 each). Its own tag keeps a step receipt from ever
//!   reading as a hop receipt and the other way round.
//! - Message `m` of a proof receipt ([`ProofReceipt`], signed by a proving
//!   head node per proof): `"zkinfer.proof.v1"`, the signer's public key,
//!   model id, request id (u64 LE), the commitments digest (32), the
//!   proof's seed (32), the step count (u32 LE), then per step its position
//!   (u64 LE) and the logits digest (32).
//! - Encodings: arkworks' compressed canonical serialization (G1 32 bytes,
//!   G2 64, Fr 32), as lowercase hex in files and transcripts. The EVM's
//!   precompiles take points uncompressed as 32-byte big-endian words: G1 as
//!   `(x, y)`, G2 as `(x.c1, x.c0, y.c1, y.c0)` (`to_evm`).

use ark_bn254::{Bn254, Fq, Fr, G1Affine, G1Projective, G2Affine, G2Projective};
use ark_ec::pairing::Pairing;
use ark_ec::{AffineRepr, CurveGroup, PrimeGroup};
use ark_ff::{BigInteger, Field, PrimeField, Zero};
use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};

/// What a node attests for one hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub model_id: [u8; 32],
    pub layers: (u32, u32),
    pub request_id: u64,
    pub position: u64,
    pub input: [u8; 32],
    pub output: [u8; 32],
}

/// What a node attests, when an auditor asks, for one step inside a hop it
/// served: the step maps the `input` bytes to the `output` bytes. Digests
/// are blake3 of f32 little-endian matrices inside the hop; `Enter` starts
/// from the hop's received bytes (tokens or activations) and `Exit` ends at
/// the bytes it answered, so the steps of a hop chain its receipt's digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepReceipt {
    pub model_id: [u8; 32],
    pub step: Step,
    pub request_id: u64,
    pub position: u64,
    pub input: [u8; 32],
    pub output: [u8; 32],
}

/// What the head node attests for one proof it made: the proof's commitments
/// to its logits (blake3 of the proof's logit-column commitments, in lane
/// order, 32 bytes compressed each: `circuits::opening`) open to the logits
/// its hop receipts signed, step by step. With it a client that never saw
/// the logits knows the proof is about the head's signed output; an auditor
/// holding the logits checks the opening, and a false one is the head's
/// signed lie. The seed (the proof's randomness, which the opening needs) is
/// signed too: otherwise anyone could change a bundle's seed and make an
/// honest head's opening look false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofReceipt {
    pub model_id: [u8; 32],
    /// The chain request id the forwards were served under.
    pub request_id: u64,
    pub commitments: [u8; 32],
    /// The proof's seed, as its bundle holds it.
    pub seed: [u8; 32],
    /// Per proven step, in the proof's order: the token's position and the
    /// output digest of the head's receipt for the forward before it.
    pub steps: Vec<(u64, [u8; 32])>,
}

/// What a node signs once, when it registers its key with the ledger
/// contract: the key's holder binds it to this account address, so nobody
/// registers a key they do not hold (which would also let a rogue key
/// cancel others in an aggregate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Possession {
    pub account: [u8; 20],
}

/// What an auditor signs when it re-executed a fraud proof and found it
/// valid: the node `accused` computed result `result` falsely. The ledger
/// contract at `ledger` slashes on the aggregate of a threshold of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ledger: [u8; 20],
    pub result: [u8; 32],
    pub accused: PublicKey,
}

/// One step of a hop over layers `start..end`: into the first layer
/// (`Enter(start)`: embedding at layer 0, else decoding), one layer, or out
/// of the last (`Exit(end)`: encoding, or at the model's end the final norm
/// and head). Naming the span's edge keeps what a step computes fixed by
/// the signed statement alone.
/// With the `serde` feature, `{"enter": start}`, `{"layer": l}` or `{"exit": end}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase", deny_unknown_fields)
)]
pub enum Step {
    Enter(u32),
    Layer(u32),
    Exit(u32),
}

impl Step {
    /// The kind byte and layer of the signed message and the wire.
    pub fn code(self) -> (u8, u32) {
        match self {
            Step::Enter(l) => (0, l),
            Step::Layer(l) => (1, l),
            Step::Exit(l) => (2, l),
        }
    }

    /// The step for a kind byte and layer, `None` for an unknown kind.
    pub fn from_code(kind: u8, layer: u32) -> Option<Step> {
        match kind {
            0 => Some(Step::Enter(layer)),
            1 => Some(Step::Layer(layer)),
            2 => Some(Step::Exit(layer)),
            _ => None,
        }
    }
}

/// A statement a node signs: its message names the signer (augmentation).
pub trait Statement {
    fn message(&self, signer: &PublicKey) -> Vec<u8>;
}

/// A node's secret key.
#[derive(Clone)]
pub struct SecretKey(Fr);

/// A node's public key (G2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(G2Affine);

/// A signature, or an aggregate of signatures (G1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature(G1Affine);

/// Why bytes are not a key or signature.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: not {1} hex digits")]
    Hex(&'static str, usize),
    #[error("{0}: not a valid encoding")]
    Encoding(&'static str),
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// The key for 32+ bytes of randomness (reduced mod r); `None` when
    /// they reduce to zero.
    pub fn from_seed(seed: &[u8]) -> Option<SecretKey> {
        let x = Fr::from_le_bytes_mod_order(seed);
        (!x.is_zero()).then_some(SecretKey(x))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey((G2Projective::generator() * self.0).into_affine())
    }

    /// Signs `statement` (its message includes this key's public key).
    pub fn sign(&self, statement: &impl Statement) -> Signature {
        let h = hash_to_g1(&statement.message(&self.public()));
        Signature((h * self.0).into_affine())
    }

    pub fn to_hex(&self) -> String {
        hex_of(&self.0)
    }

    pub fn from_hex(text: &str) -> Result<SecretKey, KeyError> {
        let x: Fr = from_hex(text, 32, "secret key")?;
        if x.is_zero() {
            return Err(KeyError::Encoding("secret key"));
        }
        Ok(SecretKey(x))
    }
}

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex_of(&self.0)
    }

    pub fn from_hex(text: &str) -> Result<PublicKey, KeyError> {
        let point: G2Affine = from_hex(text, 64, "public key")?;
        if point.is_zero() {
            return Err(KeyError::Encoding("public key"));
        }
        Ok(PublicKey(point))
    }

    /// The 64-byte compressed encoding.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        self.0
            .serialize_compressed(&mut out[..])
            .expect("64 bytes hold a compressed G2 point");
        out
    }

    /// Parses the 64-byte encoding (checked: on the curve, in the group, not
    /// the identity).
    pub fn from_bytes(bytes: &[u8; 64]) -> Result<PublicKey, KeyError> {
        let point = G2Affine::deserialize_compressed(&bytes[..])
            .map_err(|_| KeyError::Encoding("public key"))?;
        if point.is_zero() {
            return Err(KeyError::Encoding("public key"));
        }
        Ok(PublicKey(point))
    }

    fn bytes(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }

    /// The point as the EVM's pairing precompile reads it: `x.c1, x.c0,
    /// y.c1, y.c0`, each 32 bytes big-endian.
    pub fn to_evm(&self) -> [[u8; 32]; 4] {
        let (x, y) = self.0.xy().expect("a public key is never the identity");
        [be_word(x.c1), be_word(x.c0), be_word(y.c1), be_word(y.c0)]
    }
}

impl Signature {
    pub fn to_hex(&self) -> String {
        hex_of(&self.0)
    }

    pub fn from_hex(text: &str) -> Result<Signature, KeyError> {
        Ok(Signature(from_hex(text, 32, "signature")?))
    }

    /// The 32-byte compressed encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.0
            .serialize_compressed(&mut out[..])
            .expect("32 bytes hold a compressed G1 point");
        out
    }

    /// Parses the 32-byte encoding (checked: on the curve).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Signature, KeyError> {
        G1Affine::deserialize_compressed(&bytes[..])
            .map(Signature)
            .map_err(|_| KeyError::Encoding("signature"))
    }

    /// The point as the EVM's precompiles read it: `x, y`, each 32 bytes
    /// big-endian; the identity is `(0, 0)`.
    pub fn to_evm(&self) -> [[u8; 32]; 2] {
        match self.0.xy() {
            Some((x, y)) => [be_word(x), be_word(y)],
            None => [[0; 32]; 2],
        }
    }

    /// The sum of `signatures` (the identity for none).
    pub fn aggregate<'a>(signatures: impl IntoIterator<Item = &'a Signature>) -> Signature {
        let sum: G1Projective = signatures.into_iter().map(|s| s.0.into_group()).sum();
        Signature(sum.into_affine())
    }
}

impl Statement for Possession {
    /// The signed message (see the module docs).
    fn message(&self, signer: &PublicKey) -> Vec<u8> {
        let mut m = Vec::with_capacity(14 + 64 + 20);
        m.extend_from_slice(b"zkinfer.pop.v1");
        m.extend_from_slice(&signer.bytes());
        m.extend_from_slice(&self.account);
        m
    }
}

impl Statement for Verdict {
    /// The signed message (see the module docs).
    fn message(&self, signer: &PublicKey) -> Vec<u8> {
        let mut m = Vec::with_capacity(18 + 64 + 20 + 32 + 64);
        m.extend_from_slice(b"zkinfer.verdict.v1");
        m.extend_from_slice(&signer.bytes());
        m.extend_from_slice(&self.ledger);
        m.extend_from_slice(&self.result);
        m.extend_from_slice(&self.accused.bytes());
        m
    }
}

impl Statement for Receipt {
    /// The signed message (see the module docs).
    fn message(&self, signer: &PublicKey) -> Vec<u8> {
        let mut m = Vec::with_capacity(18 + 64 + 32 + 8 + 16 + 64);
        m.extend_from_slice(b"zkinfer.receipt.v1");
        m.extend_from_slice(&signer.bytes());
        m.extend_from_slice(&self.model_id);
        m.extend_from_slice(&self.layers.0.to_le_bytes());
        m.extend_from_slice(&self.layers.1.to_le_bytes());
        m.extend_from_slice(&self.request_id.to_le_bytes());
        m.extend_from_slice(&self.position.to_le_bytes());
        m.extend_from_slice(&self.input);
        m.extend_from_slice(&self.output);
        m
    }
}

impl Statement for StepReceipt {
    /// The signed message (see the module docs).
    fn message(&self, signer: &PublicKey) -> Vec<u8> {
        let (kind, layer) = self.step.code();
        let mut m = Vec::with_capacity(15 + 64 + 32 + 5 + 16 + 64);
        m.extend_from_slice(b"zkinfer.step.v1");
        m.extend_from_slice(&signer.bytes());
        m.extend_from_slice(&self.model_id);
        m.push(kind);
        m.extend_from_slice(&layer.to_le_bytes());
        m.extend_from_slice(&self.request_id.to_le_bytes());
        m.extend_from_slice(&self.position.to_le_bytes());
        m.extend_from_slice(&self.input);
        m.extend_from_slice(&self.output);
        m
    }
}

impl Statement for ProofReceipt {
    /// The signed message (see the module docs).
    fn message(&self, signer: &PublicKey) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 64 + 32 + 8 + 64 + 4 + 40 * self.steps.len());
        m.extend_from_slice(b"zkinfer.proof.v1");
        m.extend_from_slice(&signer.bytes());
        m.extend_from_slice(&self.model_id);
        m.extend_from_slice(&self.request_id.to_le_bytes());
        m.extend_from_slice(&self.commitments);
        m.extend_from_slice(&self.seed);
        m.extend_from_slice(&(self.steps.len() as u32).to_le_bytes());
        for (position, logits) in &self.steps {
            m.extend_from_slice(&position.to_le_bytes());
            m.extend_from_slice(logits);
        }
        m
    }
}

/// Whether `signature` is `signer`'s on `statement`.
pub fn verify<S: Statement + Clone>(
    signer: &PublicKey,
    statement: &S,
    signature: &Signature,
) -> bool {
    verify_aggregate(&[(*signer, statement.clone())], signature)
}

/// Whether `signature` aggregates one signature per `(signer, statement)`
/// pair, all of them. An empty list verifies only the identity.
pub fn verify_aggregate<S: Statement>(signed: &[(PublicKey, S)], signature: &Signature) -> bool {
    if signed.is_empty() {
        return signature.0.is_zero();
    }
    // e(σ, G2) · Π e(H(m_i), X_i)^-1 = 1, as one multi-pairing with -σ.
    let mut g1 = vec![(-signature.0.into_group()).into_affine()];
    let mut g2 = vec![G2Affine::generator()];
    for (signer, statement) in signed {
        g1.push(hash_to_g1(&statement.message(signer)));
        g2.push(signer.0);
    }
    Bn254::multi_pairing(g1, g2).is_zero()
}

/// Try-and-increment hash to G1 (see the module docs).
pub fn hash_to_g1(message: &[u8]) -> G1Affine {
    use tiny_keccak::{Hasher, Keccak};
    let b = Fq::from(3u64);
    for counter in 0u32.. {
        let mut wide = [0u8; 64];
        for (half, out) in wide.chunks_exact_mut(32).enumerate() {
            let mut h = Keccak::v256();
            h.update(b"zkinfer.bls.h2c.v2");
            h.update(&counter.to_le_bytes());
            h.update(&[half as u8]);
            h.update(message);
            h.finalize(out);
        }
        let x = Fq::from_be_bytes_mod_order(&wide);
        let Some(y) = (x * x * x + b).sqrt() else {
            continue;
        };
        let y = if y.into_bigint().is_even() { y } else { -y };
        let point = G1Affine::new_unchecked(x, y);
        debug_assert!(point.is_on_curve());
        return point;
    }
    unreachable!("half of all x are on the curve")
}

fn be_word(value: Fq) -> [u8; 32] {
    let bytes = value.into_bigint().to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

fn hex_of(value: &impl CanonicalSerialize) -> String {
    let mut bytes = Vec::new();
    value
        .serialize_compressed(&mut bytes)
        .expect("writing to a Vec");
    crate::hex(&bytes)
}

fn from_hex<T: CanonicalDeserialize>(
    text: &str,
    len: usize,
    what: &'static str,
) -> Result<T, KeyError> {
    let bytes = crate::parse_hex(text.trim(), len).ok_or(KeyError::Hex(what, 2 * len))?;
    // Checked deserialization: on the curve and in the prime-order group.
    T::deserialize_compressed(&bytes[..]).map_err(|_| KeyError::Encoding(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed(&[n; 32]).expect("non-zero")
    }

    fn receipt(position: u64) -> Receipt {
        Receipt {
            model_id: [7; 32],
            layers: (9, 18),
            request_id: 41,
            position,
            input: [1; 32],
            output: [2; 32],
        }
    }

    #[test]
    fn test_vectors_are_stable() {
        // Pinned outputs of this scheme for fixed inputs: any change to the
        // hash to curve, the message layout or the encodings breaks them.
        let sk = key(1);
        let pk = sk.public();
        let sig = sk.sign(&receipt(5));
        assert_eq!(sk.to_hex().len(), 64);
        assert_eq!(pk.to_hex().len(), 128);
        assert_eq!(sig.to_hex().len(), 64);
        let vector = (pk.to_hex(), sig.to_hex());
        assert_eq!(vector, pinned(), "{vector:?}");
        assert!(verify(&pk, &receipt(5), &sig));
    }

    fn pinned() -> (String, String) {
        (PINNED_PK.to_string(), PINNED_SIG.to_string())
    }

    const PINNED_PK: &str = "97d885604c244aea12ad33f32bd5d9c387117bb987ac3cd4f0c313d0083dff0df0d6219bad204193b707127fb3badd3e6f0e14b05fe396f00d98b7d6d14ed012";
    const PINNED_SIG: &str = "a0df4bd6dd3b1eb662b333d3448097a641bfe1cb9088f9e203c4929711ea689e";

    #[test]
    fn hash_to_g1_gives_distinct_points_on_the_curve() {
        let a = hash_to_g1(b"a");
        let b = hash_to_g1(b"b");
        assert!(a.is_on_curve() && b.is_on_curve());
        assert!(a.is_in_correct_subgroup_assuming_on_curve());
        assert_ne!(a, b);
        assert_eq!(a, hash_to_g1(b"a"));
    }

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let (a, b) = (key(1), key(2));
        let r = receipt(5);
        let sig = a.sign(&r);
        assert!(verify(&a.public(), &r, &sig));
        // Wrong key.
        assert!(!verify(&b.public(), &r, &sig));
        // Every field of the receipt is signed.
        let changes: [fn(&mut Receipt); 6] = [
            |r| r.model_id[0] ^= 1,
            |r| r.layers.1 += 1,
            |r| r.request_id += 1,
            |r| r.position += 1,
            |r| r.input[31] ^= 1,
            |r| r.output[0] ^= 1,
        ];
        for change in changes {
            let mut other = r;
            change(&mut other);
            assert!(!verify(&a.public(), &other, &sig));
        }
        // Round trips through hex.
        let back = Signature::from_hex(&sig.to_hex()).expect("hex");
        assert_eq!(back, sig);
        assert_eq!(PublicKey::from_hex(&a.public().to_hex()), Ok(a.public()));
        assert_eq!(
            SecretKey::from_hex(&a.to_hex()).expect("hex").public(),
            a.public()
        );
        assert!(Signature::from_hex("zz").is_err());
        assert!(PublicKey::from_hex(&"00".repeat(64)).is_err());
        assert_eq!(format!("{a:?}"), "SecretKey(..)");
    }

    #[test]
    fn step_receipts_sign_every_field_and_never_pass_as_hop_receipts() {
        let a = key(7);
        let r = receipt(9);
        let step = StepReceipt {
            model_id: r.model_id,
            step: Step::Layer(r.layers.0),
            request_id: r.request_id,
            position: r.position,
            input: r.input,
            output: r.output,
        };
        let sig = a.sign(&step);
        assert!(verify(&a.public(), &step, &sig));
        assert!(!verify(&a.public(), &r, &sig));
        assert!(!verify(&a.public(), &step, &a.sign(&r)));
        let changes: [fn(&mut StepReceipt); 8] = [
            |s| s.model_id[1] ^= 1,
            |s| s.step = Step::Layer(5),
            |s| s.step = Step::Enter(9),
            |s| s.step = Step::Exit(9),
            |s| s.request_id ^= 1,
            |s| s.position += 1,
            |s| s.input[0] ^= 1,
            |s| s.output[31] ^= 1,
        ];
        for change in changes {
            let mut other = step;
            change(&mut other);
            assert!(!verify(&a.public(), &other, &sig), "{other:?}");
        }
    }

    #[test]
    fn proof_receipts_sign_every_field_and_step() {
        let a = key(8);
        let r = ProofReceipt {
            model_id: [7; 32],
            request_id: 41,
            commitments: [3; 32],
            seed: [4; 32],
            steps: vec![(5, [1; 32]), (9, [2; 32])],
        };
        let sig = a.sign(&r);
        assert!(verify(&a.public(), &r, &sig));
        assert!(!verify(&key(9).public(), &r, &sig));
        let changes: [fn(&mut ProofReceipt); 8] = [
            |r| r.model_id[0] ^= 1,
            |r| r.request_id += 1,
            |r| r.commitments[31] ^= 1,
            |r| r.seed[0] ^= 1,
            |r| r.steps[1].0 += 1,
            |r| r.steps[0].1[0] ^= 1,
            |r| r.steps.swap(0, 1),
            |r| r.steps.truncate(1),
        ];
        for change in changes {
            let mut other = r.clone();
            change(&mut other);
            assert!(!verify(&a.public(), &other, &sig), "{other:?}");
        }
    }

    #[test]
    fn verdicts_and_possessions_sign_every_field() {
        let a = key(5);
        let v = Verdict {
            ledger: [1; 20],
            result: [2; 32],
            accused: key(6).public(),
        };
        let sig = a.sign(&v);
        assert!(verify(&a.public(), &v, &sig));
        let changes: [fn(&mut Verdict); 3] = [
            |v| v.ledger[19] ^= 1,
            |v| v.result[0] ^= 1,
            |v| v.accused = key(7).public(),
        ];
        for change in changes {
            let mut other = v;
            change(&mut other);
            assert!(!verify(&a.public(), &other, &sig), "{other:?}");
        }
        let pop = Possession { account: [3; 20] };
        let sig = a.sign(&pop);
        assert!(verify(&a.public(), &pop, &sig));
        assert!(!verify(&a.public(), &Possession { account: [4; 20] }, &sig));
        assert!(!verify(&key(6).public(), &pop, &sig));
    }

    #[test]
    fn aggregates_verify_all_receipts_and_nothing_less() {
        let (a, b) = (key(3), key(4));
        let signed: Vec<(PublicKey, Receipt)> = (0..4)
            .map(|p| (if p % 2 == 0 { a.public() } else { b.public() }, receipt(p)))
            .collect();
        let sigs: Vec<Signature> = signed
            .iter()
            .enumerate()
            .map(|(i, (_, r))| if i % 2 == 0 { a.sign(r) } else { b.sign(r) })
            .collect();
        let agg = Signature::aggregate(&sigs);
        assert!(verify_aggregate(&signed, &agg));
        // A dropped receipt, a changed one, a swapped signer all fail.
        assert!(!verify_aggregate(&signed[1..], &agg));
        let mut changed = signed.clone();
        changed[2].1.output[5] ^= 1;
        assert!(!verify_aggregate(&changed, &agg));
        let mut swapped = signed.clone();
        swapped[0].0 = b.public();
        assert!(!verify_aggregate(&swapped, &agg));
        // An aggregate missing one signature fails.
        assert!(!verify_aggregate(
            &signed,
            &Signature::aggregate(&sigs[1..])
        ));
        assert!(verify_aggregate::<Receipt>(&[], &Signature::aggregate(&[])));
    }
}
