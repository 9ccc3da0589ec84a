//! Standalone verification of zkinfer proof bundles.
//!
//! A bundle (format in `docs/bundle.md`, code in [`bundle`]) carries the circuit
//! shape, the digest of the verifying key it was proven against, the public
//! statement of every step and the proofs. [`verify_bundle`] rebuilds the verifying
//! key from the shape alone (public parameters come from [`params`], cached on disk),
//! checks that its digest matches, and batch-verifies every proof against the
//! statements. [`answer`] checks proven statements against the tokens of an
//! answer; [`receipt`] signs and verifies hop receipts (BLS on BN254). This
//! crate depends on halo2, blake3 and ark-bn254: no model runtime, no network.

pub mod answer;
pub mod bundle;
pub mod keys;
pub mod params;
pub mod receipt;

use halo2_proofs::{
    pasta::EqAffine,
    plonk::{keygen_vk, BatchVerifier, VerifyingKey},
    poly::commitment::Params,
};

use circuits::{CircuitShape, DecodeStepCircuit};

pub use bundle::{Bundle, BundleError, Proof};
pub use params::ParamsCache;

/// halo2 could not build a verifying key (keygen failed for the shape).
#[derive(Debug, thiserror::Error)]
#[error("building the verifying key for {shape}: {reason}")]
pub struct KeyError {
    pub shape: String,
    pub reason: String,
}

/// The verifying key of a shape, and its digest.
pub struct Key {
    pub vk: VerifyingKey<EqAffine>,
    pub digest: [u8; 32],
}

/// Builds the verifying key of `shape` with `params` (of size `shape.k()`).
pub fn verifying_key(shape: CircuitShape, params: &Params<EqAffine>) -> Result<Key, KeyError> {
    verifying_key_of(&DecodeStepCircuit::placeholder(shape), params)
}

/// [`verifying_key`] from a circuit at hand (only its shape matters), so a prover
/// that also needs the circuit for its proving key builds it once.
pub fn verifying_key_of(
    circuit: &DecodeStepCircuit,
    params: &Params<EqAffine>,
) -> Result<Key, KeyError> {
    let shape = circuit.shape;
    let vk = shape
        .scope(|| keygen_vk(params, circuit))
        .map_err(|e| KeyError {
            shape: shape.describe(),
            reason: format!("{e:?}"),
        })?;
    let digest = vk_digest(&vk);
    Ok(Key { vk, digest })
}

/// blake3 of the key's pinned representation (domain, constraint system, fixed
/// commitments, permutation): equal digests mean the same circuit.
pub fn vk_digest(vk: &VerifyingKey<EqAffine>) -> [u8; 32] {
    *blake3::hash(format!("{:?}", vk.pinned()).as_bytes()).as_bytes()
}

/// The outcome of verifying a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// One verdict per proof, in bundle order.
    pub proofs: Vec<bool>,
}

impl Report {
    pub fn all_valid(&self) -> bool {
        self.proofs.iter().all(|&v| v)
    }
}

/// Why a bundle could not be verified at all (as opposed to an invalid proof).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the bundle was proven against another verifying key (digest {found}, expected {expected} for {shape}): it was made by a different circuit version or tampered with")]
    KeyMismatch {
        shape: String,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("public parameters: {0}")]
    Params(#[from] std::io::Error),
}

/// Verifies every proof of `bundle`. All proofs are checked in one batch; if the
/// batch fails, each proof is checked alone to say which ones are invalid.
pub fn verify_bundle(bundle: &Bundle, cache: &ParamsCache) -> Result<Report, VerifyError> {
    verify_bundle_keeping_params(bundle, cache).map(|(_, report)| report)
}

/// [`verify_bundle`], returning the public parameters too: opening the
/// proofs' logit commitments (`answer::open_proofs`) needs them.
pub fn verify_bundle_keeping_params(
    bundle: &Bundle,
    cache: &ParamsCache,
) -> Result<(Params<EqAffine>, Report), VerifyError> {
    let params = cache.load_or_generate(bundle.shape.k(), |_| {})?;
    let key = key_for(bundle, cache.dir(), &params)?;
    let report = verify_with_key(bundle, &params, &key)?;
    Ok((params, report))
}

/// The verifying key `bundle` must be checked against: the cached key of its
/// shape, or one built from scratch when there is none or when the cached one's
/// digest differs from the bundle's (a cache entry that is stale must not turn a
/// valid bundle away; the freshly built key decides).
pub fn key_for(
    bundle: &Bundle,
    cache_dir: &std::path::Path,
    params: &Params<EqAffine>,
) -> Result<Key, VerifyError> {
    let circuit = DecodeStepCircuit::placeholder(bundle.shape);
    let (key, source) =
        keys::load_or_build(cache_dir, &circuit, params).map_err(VerifyError::Key)?;
    if key.digest == bundle.vk_digest || source == keys::KeySource::Built {
        return Ok(key);
    }
    keys::build(cache_dir, &circuit, params).map_err(VerifyError::Key)
}

/// [`verify_bundle`] with parameters and key already at hand.
pub fn verify_with_key(
    bundle: &Bundle,
    params: &Params<EqAffine>,
    key: &Key,
) -> Result<Report, VerifyError> {
    if key.digest != bundle.vk_digest {
        return Err(VerifyError::KeyMismatch {
            shape: bundle.shape.describe(),
            found: hex(&bundle.vk_digest),
            expected: hex(&key.digest),
        });
    }
    let batch = |proofs: &[bundle::Proof]| {
        let mut verifier = BatchVerifier::new();
        for proof in proofs {
            verifier.add_proof(vec![vec![proof.instance()]], proof.bytes.clone());
        }
        verifier.finalize(params, &key.vk)
    };
    let proofs = if batch(&bundle.proofs) {
        vec![true; bundle.proofs.len()]
    } else {
        bundle
            .proofs
            .iter()
            .map(|p| batch(std::slice::from_ref(p)))
            .collect()
    };
    Ok(Report { proofs })
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of exactly `2 * len` hex digits (either case), `None` for
/// anything else.
pub fn parse_hex(text: &str, len: usize) -> Option<Vec<u8>> {
    if text.len() != 2 * len || !text.is_ascii() {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// [`parse_hex`] into an array: exactly `2 * N` hex digits.
pub fn parse_hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    parse_hex(text, N)?.try_into().ok()
}
