//! Generation transcripts: what `zkinfer generate --transcript T.json` writes.
//!
//! A transcript records one generation end to end: which model, which
//! prompt, how tokens were chosen, what every hop of the chain received and
//! answered (as blake3 digests), the head node's receipts of its proofs,
//! and, when asked for, the logits behind every token, as decode records
//! that `zkinfer prove --records` turns into a proof. By default it keeps
//! digests, not logits: a few kilobytes for a short answer.
//!
//! # `T.json` (version 3)
//!
//! ```json
//! {
//!   "version": 3,
//!   "model_id": "<64 hex digits: models::model_id of the GGUF>",
//!   "prompt": "Once upon a time",
//!   "prompt_tokens": [2, 9113, 3324, 496, 990],
//!   "sampler": {"greedy": {}} | {"sample": {"temperature": 0.8}},
//!   "client_nonce": "<32 hex digits: 16 bytes, new per generation>",
//!   "request_id": 1234,
//!   "tokens": [236764, 506],
//!   "hops": [
//!     {"position": 0, "node": "127.0.0.1:7001", "layers": [0, 9],
//!      "input_blake3": "<64 hex>", "output_blake3": "<64 hex>",
//!      "receipt": {"request_id": 77, "signer": "<128 hex>", "signature": "<64 hex>"}},
//!     ...
//!   ],
//!   "logprobs": [-0.31, -2.2],
//!   "records": {"file": {"path": "T.logits.bin", "blake3": "<64 hex>", "vocab": V, "count": N}},
//!   "proving": null | {"policy": "all"} | {"policy": "challenged", "challenges": 4},
//!   "proof_receipts": [{"commitments_blake3": "<64 hex>", "signature": "<64 hex>"}],
//!   "receipts_signature": "<64 hex>"
//! }
//! ```
//!
//! - `prompt_tokens` are the tokens fed first (with BOS); `tokens` are the
//!   generated tokens in order, including a final end-of-sequence token if
//!   generation stopped on one.
//! - `sampler`: greedy decoding, or sampling at `temperature` (a multiple of
//!   0.001 in `(0, 2]`: the statement holds at exactly that temperature, so
//!   another is refused, not rounded) where the randomness `r` of the token
//!   at position `p` is `sampling_r(client_nonce, request_id, p)`
//!   ([`sampling_r`]): the client fixes nonce and request id before the
//!   first token and sends each `r` to the head node, so no node can choose
//!   `r`, and a verifier recomputes it.
//! - `client_nonce`, `request_id`: chosen by the client for this generation
//!   (random, or derived from `--seed` so that seeded sampling repeats).
//!   The request id names the generation; the ids of the node chains that
//!   carry it are separate (they change on failover).
//! - `hops`: one entry per hop per forward call, in order, for every forward
//!   of the generation: the prompt at position 0, then one per generated
//!   token, the last one (and a stop token) included, so that a signed first
//!   hop names every token. `position` is the first position of the forward;
//!   `node` is the node's address, or `"local"` for single-process generation
//!   (one hop over all layers); `layers` is `[start, end)`. `input_blake3` is
//!   the blake3 of the bytes the hop was sent: the tokens as u32
//!   little-endian for the first hop, else the `Activations.data` bytes (in
//!   the chain's activation encoding); `output_blake3` is the blake3 of the
//!   `Output` activations' data bytes it answered, and for the last hop the
//!   blake3 of the logits row of the last position as f32 little-endian,
//!   whether it sent them or only their digest with its pick (a wire
//!   `Sampled`). With F32 activations, hop `i`'s output digest equals hop
//!   `i + 1`'s input digest. **Failover:** when a hop fails mid-generation
//!   the session replays the history on a new chain; only the hops of the
//!   forward that produced the final logits of a position are recorded, not
//!   the replay forwards nor the failed attempt.
//! - `logprobs` (absent when empty): each token's log-probability in nats at
//!   the sampler's temperature, as the head node (or this process) reported
//!   it; displayed only, a proof states its own.
//! - `records` (absent unless `--transcript-logits`): the logits behind each
//!   token in a side file next to the transcript (`path` is relative to the
//!   transcript's directory) whose blake3 is `blake3`;
//!   [`Transcript::records`] rebuilds the `zkinfer prove --records` JSON
//!   (`{"vocab", "steps": [{"position", "logits", "token", "sampler"}]}`)
//!   from it, each step's sampler following from `sampler` and the position.
//!   A library caller may also hold them inline (`{"inline": {...}}`, that
//!   JSON itself). On a chain of nodes, asking for them makes the head node
//!   send every token's logits (4 bytes per vocabulary entry) instead of
//!   its pick.
//! - `receipt` (absent for a node that does not sign): the node's BLS
//!   public key and signature on the hop's receipt (`verifier::receipt`:
//!   model id, `layers`, the chain `request_id` the hop was served under,
//!   `position`, and the two digests). `receipts_signature` (absent when no
//!   hop is signed) is the sum of every hop's signature.
//! - `proving`: whether the head node was asked for proofs: of every token
//!   (`all`), or of `challenges` positions derived from the transcript after
//!   generation ([`Transcript::challenged_positions`]: Fiat–Shamir, so the
//!   node cannot pick them). `null`: no proofs were asked for. It only says
//!   what was asked: which proofs a verifier requires is the verifier's call
//!   (`zkinfer verify --require`).
//! - `proof_receipts` (absent when empty): per proof the head node made, its
//!   signature on the proof's receipt (`verifier::receipt::ProofReceipt`)
//!   and the blake3 of the proof's logit commitments, which names the proof
//!   in the bundle (`circuits::opening::proof_commitments_digest`). The receipt's
//!   other fields are the transcript's: its model id, and for each of the
//!   proof's positions the chain request id, signer and output digest of the
//!   head hop of the forward before it.
//!
//! # What `zkinfer verify --transcript T.json --bundle B.zkp` checks
//!
//! The transcript is the client's account; only signatures and proofs are
//! evidence, so every field is either tied to one or only displayed
//! ([`crate::binding`], the same checks the auditor starts with):
//!
//! - `model_id`: against `--model-id`, and signed in every receipt;
//! - `hops`: every hop carries a receipt, each receipt's signature verifies
//!   on its own, and `receipts_signature` is their sum and verifies;
//! - `prompt_tokens`, `tokens`: every position was the input of a signed
//!   first-layer hop, fed exactly those tokens;
//! - each proven step's commitment `C_z` is about the head's signed logits:
//!   opened against `records` when the transcript keeps them, else by the
//!   head's proof receipt, which must verify under the key that signed those
//!   logits' digests; a proof tied by neither is invalid;
//! - `records`, when kept: each step's logits are the head's signed output
//!   of the forward before it, and each token is the one its sampler picks
//!   from them (greedy, or inverse CDF with `r` from `client_nonce`,
//!   `request_id` and the position). Without them an unproven token's pick
//!   is checked by an audit, which asks the head for the logits it signed;
//! - `sampler`, `client_nonce`, `request_id`: they give each proven step's
//!   sampler and `r`, and each unproven token's pick;
//! - `proving`: displayed; the required positions come from `--require
//!   all|challenged:K|none` (default `challenged:4`, what `generate --prove
//!   challenged` asks for by default);
//! - `prompt` (the text) and `logprobs`: displayed only; `prompt_tokens` is
//!   what was signed, and a proof states its token's log-probability.
//!
//! # `T.logits.bin`
//!
//! Little-endian throughout:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `ZKLOGIT1` |
//! | 4 | `vocab` V, u32 |
//! | 4 | `count` N, u32 |
//! | N × (12 + 4V) | per step: `position` u64, `token` u32, `logits` V × f32 |

pub mod answer;
pub mod binding;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use circuits::fixed_point::{Temperature, TemperatureError};
use circuits::opening::proof_commitments_digest;
use circuits::{FixedPoint, Sampler};
use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};
use prover::{Record, RecordSampler, Records};
use verifier::answer::{open_proofs, ExpectedStep, LogitOpening};
use verifier::bundle::Bundle;
use verifier::hex;
use verifier::receipt::{self, ProofReceipt, PublicKey, Receipt, Signature};

/// The transcript format version this module writes.
pub const VERSION: u32 = 3;

/// The side file's magic bytes.
pub const LOGITS_MAGIC: [u8; 8] = *b"ZKLOGIT1";

/// One generation's transcript (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    pub version: u32,
    pub model_id: String,
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    pub sampler: TranscriptSampler,
    pub client_nonce: String,
    pub request_id: u64,
    pub tokens: Vec<u32>,
    pub hops: Vec<HopRecord>,
    /// Each token's log-probability as the head (or this process) reported
    /// it, in nats at the sampler's temperature: displayed only, a proof
    /// states its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<f64>,
    /// The logits behind the tokens, when kept (`--transcript-logits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<RecordsRef>,
    pub proving: Option<ProvingPolicy>,
    /// The proving head node's signed receipt per proof.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proof_receipts: Vec<ProofReceiptRecord>,
    /// The aggregate (sum) of every hop receipt's signature, when the
    /// hops are signed: `verify --transcript` checks it against all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts_signature: Option<String>,
}

/// `{"greedy": {}}` or `{"sample": {"temperature": t}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum TranscriptSampler {
    Greedy {},
    Sample { temperature: f64 },
}

/// Which tokens the head node was asked to prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProvingPolicy {
    /// Every generated token.
    All,
    /// `challenges` positions chosen by [`Transcript::challenged_positions`].
    Challenged { challenges: usize },
}

impl ProvingPolicy {
    /// `all`, `challenged:K` or `none` (no proof required).
    pub fn parse_required(text: &str) -> Result<Option<ProvingPolicy>, String> {
        match text {
            "all" => Ok(Some(ProvingPolicy::All)),
            "none" => Ok(None),
            _ => {
                let k = text
                    .strip_prefix("challenged:")
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|&k| k > 0)
                    .ok_or_else(|| {
                        format!("{text:?}: use all, none or challenged:K with K >= 1")
                    })?;
                Ok(Some(ProvingPolicy::Challenged { challenges: k }))
            }
        }
    }
}

/// One hop of one forward call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopRecord {
    pub position: u64,
    pub node: String,
    pub layers: [usize; 2],
    pub input_blake3: String,
    pub output_blake3: String,
    /// The node's signed receipt for this hop, from a node that signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<HopReceipt>,
}

/// A hop's signed receipt (`verifier::receipt`): the chain request id it was
/// served under, the node's public key and its signature, as hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopReceipt {
    pub request_id: u64,
    pub signer: String,
    pub signature: String,
}

/// A proving head node's signature on one proof's receipt
/// (`verifier::receipt::ProofReceipt`). The proof is the bundle's whose
/// logit commitments hash to `commitments_blake3`; signer, chain request id
/// and logits digests are those of the head's hop receipts for the proof's
/// positions, so they are not repeated here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofReceiptRecord {
    pub commitments_blake3: String,
    pub signature: String,
}

/// What `client::Chain::forward` saw at one hop: the blake3 of the
/// payload bytes sent and of the `Output` data bytes received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopDigest {
    /// The node as `NodeAddr` prints it: `IP:PORT`, or `/p2p/PEER_ID` over libp2p.
    pub addr: String,
    pub layers: Range<usize>,
    pub input: blake3::Hash,
    pub output: blake3::Hash,
    /// From sending the Forward to reading the answer.
    pub elapsed: std::time::Duration,
    /// The chain request id and position of the Forward.
    pub request_id: u64,
    pub position: u64,
    /// The node's receipt-signing key and its signature on this hop's
    /// receipt, from a node that signs.
    pub signer: Option<[u8; 64]>,
    pub signature: Option<[u8; 32]>,
}

impl HopRecord {
    /// A remote hop of the forward at `position`.
    pub fn remote(position: u64, digest: &HopDigest) -> HopRecord {
        HopRecord {
            position,
            node: digest.addr.clone(),
            layers: [digest.layers.start, digest.layers.end],
            input_blake3: digest.input.to_hex().to_string(),
            output_blake3: digest.output.to_hex().to_string(),
            receipt: digest
                .signer
                .zip(digest.signature)
                .map(|(signer, signature)| HopReceipt {
                    request_id: digest.request_id,
                    signer: hex(&signer),
                    signature: hex(&signature),
                }),
        }
    }

    /// The single hop of a single-process forward over `layers` layers.
    pub fn local(position: u64, layers: usize, tokens: &[u32], logits: &[f32]) -> HopRecord {
        HopRecord {
            position,
            node: "local".into(),
            receipt: None,
            layers: [0, layers],
            input_blake3: blake3::hash(&u32_bytes(tokens)).to_hex().to_string(),
            output_blake3: blake3::hash(&f32_bytes(logits)).to_hex().to_string(),
        }
    }
}

/// Tokens as u32 little-endian: what the first hop of a chain is sent.
pub fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Values as f32 little-endian (the F32 activation encoding).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The decode records, inline or in a side file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RecordsRef {
    Inline(Records),
    File {
        path: String,
        blake3: String,
        vocab: usize,
        count: usize,
    },
}

impl TranscriptSampler {
    /// The record sampler of the token at `position`.
    pub fn step(&self, nonce: &Nonce, request_id: u64, position: u64) -> RecordSampler {
        match *self {
            TranscriptSampler::Greedy {} => RecordSampler::Greedy {},
            TranscriptSampler::Sample { temperature } => RecordSampler::Sample {
                temperature,
                r: sampling_r(nonce, request_id, position).to_string(),
            },
        }
    }
}

/// The client's 16-byte nonce of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce(pub [u8; 16]);

impl Nonce {
    /// 16 fresh bytes: blake3 of the time, the process id and a per-process
    /// counter. Nodes see the nonce only in the transcript, after the fact.
    pub fn fresh() -> Nonce {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = blake3::Hasher::new();
        h.update(b"zkinfer.nonce.v1");
        h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        h.update(&std::process::id().to_le_bytes());
        h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        Nonce::from_digest(h.finalize())
    }

    /// The nonce `--seed s` stands for, so that seeded sampling repeats.
    pub fn from_seed(seed: u64) -> Nonce {
        let mut h = blake3::Hasher::new();
        h.update(b"zkinfer.nonce.seed.v1");
        h.update(&seed.to_le_bytes());
        Nonce::from_digest(h.finalize())
    }

    fn from_digest(digest: blake3::Hash) -> Nonce {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        Nonce(bytes)
    }

    /// The generation's request id that goes with this nonce.
    pub fn request_id(&self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(b"zkinfer.request.v1");
        h.update(&self.0);
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Result<Nonce, TranscriptError> {
        parse_hex::<16>(text, "client nonce").map(Nonce)
    }
}

/// `r` of the token at `position`: the first 8 bytes, little-endian, of
/// blake3("zkinfer.r.v2" || nonce || request id (u64 LE) || position (u64 LE)).
pub fn sampling_r(nonce: &Nonce, request_id: u64, position: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"zkinfer.r.v2");
    h.update(&nonce.0);
    h.update(&request_id.to_le_bytes());
    h.update(&position.to_le_bytes());
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn parse_hex<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], TranscriptError> {
    verifier::parse_hex_array(text).ok_or_else(|| TranscriptError::Hex {
        field,
        text: text.to_string(),
        digits: 2 * N,
    })
}

/// A transcript's generated tokens as proofs should state them.
pub struct Expected {
    pub steps: Vec<ExpectedStep>,
    /// The recorded logits in fixed point, by position (`verifier::answer::open_proofs`).
    pub logits: BTreeMap<u64, Vec<i64>>,
    /// Where the transcript disagrees with itself.
    pub problems: Vec<String>,
}

/// Errors reading a transcript's records.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("logits file: {0}")]
    Format(String),
    #[error("{field} {text:?} is not {digits} hex digits")]
    Hex {
        field: &'static str,
        text: String,
        digits: usize,
    },
    #[error(transparent)]
    Temperature(#[from] TemperatureError),
    #[error("receipt: {0}")]
    Receipt(String),
}

/// Encodes steps as a `T.logits.bin` side file (see the module docs).
/// Fails when a step's logits are not `vocab` long or a size overflows u32.
pub fn encode_logits(vocab: usize, steps: &[Record]) -> Result<Vec<u8>, TranscriptError> {
    let v = u32::try_from(vocab).map_err(|_| TranscriptError::Format("vocab too large".into()))?;
    let n =
        u32::try_from(steps.len()).map_err(|_| TranscriptError::Format("too many steps".into()))?;
    let mut out = Vec::with_capacity(16 + steps.len() * (12 + 4 * vocab));
    out.extend_from_slice(&LOGITS_MAGIC);
    out.extend_from_slice(&v.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    for step in steps {
        if step.logits.len() != vocab {
            return Err(TranscriptError::Format(format!(
                "position {}: {} logits, vocab {vocab}",
                step.position,
                step.logits.len()
            )));
        }
        out.extend_from_slice(&step.position.to_le_bytes());
        out.extend_from_slice(&step.token.to_le_bytes());
        out.extend_from_slice(&f32_bytes(&step.logits));
    }
    Ok(out)
}

/// Decodes a `T.logits.bin` side file into `(vocab, [(position, token, logits)])`.
#[allow(clippy::type_complexity)]
pub fn decode_logits(bytes: &[u8]) -> Result<(usize, Vec<(u64, u32, Vec<f32>)>), TranscriptError> {
    let bad = |m: &str| TranscriptError::Format(m.to_string());
    if bytes.len() < 16 || bytes[..8] != LOGITS_MAGIC {
        return Err(bad("bad magic"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let vocab = u32_at(8) as usize;
    let count = u32_at(12) as usize;
    let step_len = 4usize
        .checked_mul(vocab)
        .and_then(|x| x.checked_add(12))
        .ok_or_else(|| bad("vocab too large"))?;
    let expected = step_len
        .checked_mul(count)
        .and_then(|x| x.checked_add(16))
        .ok_or_else(|| bad("count too large"))?;
    if bytes.len() != expected {
        return Err(TranscriptError::Format(format!(
            "{} bytes, expected {expected} for {count} steps of vocab {vocab}",
            bytes.len()
        )));
    }
    let steps = bytes[16..]
        .chunks_exact(step_len)
        .map(|s| {
            let position = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
            let token = u32::from_le_bytes(s[8..12].try_into().expect("4 bytes"));
            let (words, _) = s[12..].as_chunks::<4>();
            let logits = words.iter().map(|w| f32::from_le_bytes(*w)).collect();
            (position, token, logits)
        })
        .collect();
    Ok((vocab, steps))
}

impl Transcript {
    /// The client nonce, parsed.
    pub fn nonce(&self) -> Result<Nonce, TranscriptError> {
        Nonce::from_hex(&self.client_nonce)
    }

    /// The temperature every token's softmax is at (1 for greedy decoding).
    pub fn temperature(&self) -> Result<Temperature, TranscriptError> {
        match self.sampler {
            TranscriptSampler::Greedy {} => Ok(Temperature::ONE),
            TranscriptSampler::Sample { temperature } => Ok(Temperature::new(temperature)?),
        }
    }

    /// The circuit's sampler of the token at `position`, with its `r` derived
    /// from `nonce` (this transcript's, parsed once by the caller).
    pub fn sampler_at(&self, nonce: &Nonce, position: u64) -> Result<Sampler, TranscriptError> {
        Ok(match self.sampler {
            TranscriptSampler::Greedy {} => Sampler::Greedy,
            TranscriptSampler::Sample { .. } => Sampler::Sample {
                temperature: self.temperature()?,
                r: sampling_r(nonce, self.request_id, position),
            },
        })
    }

    /// The Fiat–Shamir digest that challenged positions are drawn from:
    /// blake3 over everything fixed by the end of generation except the
    /// records (whose logits the hops' output digests already bind), in a
    /// length-prefixed encoding (see [`Transcript::challenged_positions`]).
    pub fn challenge_digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(b"zkinfer.challenge.v1");
        field(self.model_id.as_bytes());
        field(&u32_bytes(&self.prompt_tokens));
        field(
            serde_json::to_string(&self.sampler)
                .expect("a sampler serializes")
                .as_bytes(),
        );
        field(self.client_nonce.as_bytes());
        field(&self.request_id.to_le_bytes());
        field(&u32_bytes(&self.tokens));
        for hop in &self.hops {
            field(&hop.position.to_le_bytes());
            field(hop.node.as_bytes());
            field(&(hop.layers[0] as u64).to_le_bytes());
            field(&(hop.layers[1] as u64).to_le_bytes());
            field(hop.input_blake3.as_bytes());
            field(hop.output_blake3.as_bytes());
        }
        *h.finalize().as_bytes()
    }

    /// The hops' signed receipts as `(signer, receipt)` pairs, for
    /// `verifier::receipt::verify_aggregate`; hops without a receipt are
    /// left out (count them with [`Transcript::unsigned_hops`]).
    pub fn receipts(&self) -> Result<Vec<(PublicKey, Receipt)>, TranscriptError> {
        let model_id = parse_hex::<32>(&self.model_id, "model id")?;
        self.hops
            .iter()
            .filter_map(|hop| hop.receipt.as_ref().map(|r| (hop, r)))
            .map(|(hop, r)| {
                let signer = PublicKey::from_hex(&r.signer)
                    .map_err(|e| TranscriptError::Receipt(e.to_string()))?;
                let layer = |l: usize| {
                    u32::try_from(l)
                        .map_err(|_| TranscriptError::Receipt(format!("layer index {l}")))
                };
                let layers = (layer(hop.layers[0])?, layer(hop.layers[1])?);
                Ok((
                    signer,
                    Receipt {
                        model_id,
                        layers,
                        request_id: r.request_id,
                        position: hop.position,
                        input: parse_hex::<32>(&hop.input_blake3, "input digest")?,
                        output: parse_hex::<32>(&hop.output_blake3, "output digest")?,
                    },
                ))
            })
            .collect()
    }

    /// Hops that carry no signed receipt.
    pub fn unsigned_hops(&self) -> usize {
        self.hops.iter().filter(|h| h.receipt.is_none()).count()
    }

    /// The aggregate of the hops' receipt signatures (None when no hop is
    /// signed).
    pub fn aggregate_receipts(&self) -> Result<Option<String>, TranscriptError> {
        let signatures = self
            .hops
            .iter()
            .filter_map(|h| h.receipt.as_ref())
            .map(|r| {
                Signature::from_hex(&r.signature)
                    .map_err(|e| TranscriptError::Receipt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!signatures.is_empty()).then(|| Signature::aggregate(&signatures).to_hex()))
    }

    /// The positions `policy` requires proven. The verifier's caller names the
    /// policy: the transcript's own `proving` field only says what was asked.
    pub fn required_positions(&self, policy: Option<ProvingPolicy>) -> Vec<u64> {
        match policy {
            Some(ProvingPolicy::All) => self.token_positions().collect(),
            Some(ProvingPolicy::Challenged { challenges }) => self.challenged_positions(challenges),
            None => Vec::new(),
        }
    }

    /// What the transcript says about each generated token, for checking
    /// proofs against it (`verifier::answer`): the token, the sampler with
    /// `r` recomputed from nonce and request id, and the recorded logits in
    /// the circuit's fixed point (when they fit a circuit of `vocab` at
    /// `fixed_point`), which the proofs' commitments must open to. Disagreements inside the transcript (the
    /// records' token or r against the rest) are returned as problems.
    pub fn expected_steps(
        &self,
        dir: &Path,
        fixed_point: FixedPoint,
        vocab: usize,
    ) -> Result<Expected, TranscriptError> {
        let nonce = self.nonce()?;
        let records = self.records(dir)?.unwrap_or_default();
        let mut problems = Vec::new();
        if !records.steps.is_empty() && records.vocab != vocab {
            problems.push(format!(
                "the proofs are of a vocabulary of {vocab}, the transcript's model has {}",
                records.vocab
            ));
        }
        let mut steps = Vec::new();
        let mut logits = BTreeMap::new();
        for (position, &token) in self.token_positions().zip(&self.tokens) {
            let sampler = self.sampler_at(&nonce, position)?;
            let step = records.steps.iter().find(|s| s.position == position);
            if let Some(step) = step {
                if step.token != token {
                    problems.push(format!(
                        "the records have token {} at position {position}, the transcript {token}",
                        step.token
                    ));
                }
                if step.sampler != self.sampler.step(&nonce, self.request_id, position) {
                    problems.push(format!(
                        "the records' sampler at position {position} is not the one the nonce gives"
                    ));
                }
            }
            if let Some(z) = step
                .filter(|s| s.logits.len() == vocab)
                .and_then(|s| fixed_point.quantize_all(&s.logits).ok())
            {
                logits.insert(position, z);
            }
            steps.push(ExpectedStep {
                position,
                token,
                sampler,
            });
        }
        Ok(Expected {
            steps,
            logits,
            problems,
        })
    }

    /// The hop that produced the logits of the token at `position`: the
    /// last hop (the one ending at the model's last layer) of the forward
    /// before it.
    pub fn head_hop_before(&self, position: u64) -> Option<&HopRecord> {
        let last = self.hops.iter().map(|h| h.layers[1]).max()?;
        self.hops
            .iter()
            .filter(|h| h.layers[1] == last && h.position < position)
            .max_by_key(|h| h.position)
    }

    /// Whether each proof of `bundle` is about the head's signed logits:
    /// opened against `logits` (the transcript's, [`Expected::logits`])
    /// where it keeps them, else by the head's proof receipt
    /// ([`Transcript::attested_openings`]).
    pub fn proof_openings(
        &self,
        bundle: &Bundle,
        params: &Params<EqAffine>,
        logits: &BTreeMap<u64, Vec<i64>>,
    ) -> Vec<LogitOpening> {
        let attested = self.attested_openings(bundle);
        open_proofs(bundle, params, logits)
            .into_iter()
            .zip(attested)
            .map(|(opened, attested)| match opened {
                LogitOpening::Unknown => attested,
                opened => opened,
            })
            .collect()
    }

    /// Whether each proof of `bundle` is about the head's signed logits by
    /// the head's own proof receipt ([`ProofReceiptRecord`]): `Attested`
    /// when a receipt names the proof's commitments and its signature
    /// verifies under the key that signed the logits of every step, with
    /// those logits digests and that chain request id; `Differs` when one
    /// names them but does not verify; `Unknown` when none does.
    pub fn attested_openings(&self, bundle: &Bundle) -> Vec<LogitOpening> {
        let model_id = parse_hex::<32>(&self.model_id, "model id").ok();
        bundle
            .proofs
            .iter()
            .enumerate()
            .map(|(i, proof)| {
                let Some(commitments) = proof_commitments_digest(bundle.shape, &proof.bytes) else {
                    return LogitOpening::Differs;
                };
                let hex_digest = hex(&commitments);
                let Some(record) = self
                    .proof_receipts
                    .iter()
                    .find(|r| r.commitments_blake3 == hex_digest)
                else {
                    return LogitOpening::Unknown;
                };
                let positions = bundle
                    .steps()
                    .filter(|(p, _)| *p == i)
                    .map(|(_, s)| s.position);
                let attested = (|| {
                    let mut signer = None;
                    let mut request_id = None;
                    let mut steps = Vec::new();
                    for position in positions {
                        let hop = self.head_hop_before(position)?;
                        let receipt = hop.receipt.as_ref()?;
                        if *signer.get_or_insert(&receipt.signer) != &receipt.signer
                            || *request_id.get_or_insert(receipt.request_id) != receipt.request_id
                        {
                            return None;
                        }
                        steps.push((position, parse_hex::<32>(&hop.output_blake3, "").ok()?));
                    }
                    let statement = ProofReceipt {
                        model_id: model_id?,
                        request_id: request_id?,
                        commitments,
                        seed: proof.seed,
                        steps,
                    };
                    let signer = PublicKey::from_hex(signer?).ok()?;
                    let signature = Signature::from_hex(&record.signature).ok()?;
                    Some(receipt::verify(&signer, &statement, &signature))
                })();
                match attested {
                    Some(true) => LogitOpening::Attested,
                    _ => LogitOpening::Differs,
                }
            })
            .collect()
    }

    /// Positions of the generated tokens, in order.
    pub fn token_positions(&self) -> impl Iterator<Item = u64> + '_ {
        let first = self.prompt_tokens.len() as u64;
        (0..self.tokens.len() as u64).map(move |i| first + i)
    }

    /// `k` distinct token positions (all of them when there are at most
    /// `k` tokens), drawn from [`Transcript::challenge_digest`]: the `j`-th
    /// draw is `u64 LE of blake3(digest || j)[..8] mod n` over the positions
    /// not yet drawn, `n` their count. Sorted.
    pub fn challenged_positions(&self, k: usize) -> Vec<u64> {
        let digest = self.challenge_digest();
        let mut left: Vec<u64> = self.token_positions().collect();
        let mut chosen = Vec::new();
        for j in 0u64.. {
            if chosen.len() == k || left.is_empty() {
                break;
            }
            let mut h = blake3::Hasher::new();
            h.update(&digest);
            h.update(&j.to_le_bytes());
            let draw = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8"));
            chosen.push(left.remove((draw % left.len() as u64) as usize));
        }
        chosen.sort_unstable();
        chosen
    }

    /// The decode records: inline ones as they are; a side file (relative to
    /// `dir`, the transcript's directory) is read, its blake3 and shape are
    /// checked, and each step's sampler is rebuilt from [`Transcript::sampler`].
    pub fn records(&self, dir: &Path) -> Result<Option<Records>, TranscriptError> {
        let nonce = self.nonce()?;
        let Some(records) = &self.records else {
            return Ok(None);
        };
        match records {
            RecordsRef::Inline(records) => Ok(Some(records.clone())),
            RecordsRef::File {
                path,
                blake3: digest,
                vocab,
                count,
            } => {
                let path = dir.join(path);
                let bytes = std::fs::read(&path).map_err(|source| TranscriptError::Io {
                    path: path.clone(),
                    source,
                })?;
                let actual = blake3::hash(&bytes).to_hex();
                if actual.as_str() != digest {
                    return Err(TranscriptError::Format(format!(
                        "{}: blake3 {actual}, transcript says {digest}",
                        path.display()
                    )));
                }
                let (v, steps) = decode_logits(&bytes)?;
                if v != *vocab || steps.len() != *count {
                    return Err(TranscriptError::Format(format!(
                        "{}: vocab {v} and {} steps, transcript says {vocab} and {count}",
                        path.display(),
                        steps.len()
                    )));
                }
                Ok(Some(Records {
                    vocab: v,
                    steps: steps
                        .into_iter()
                        .map(|(position, token, logits)| Record {
                            position,
                            logits,
                            token,
                            sampler: self.sampler.step(&nonce, self.request_id, position),
                        })
                        .collect(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Transcript {
        let sampler = TranscriptSampler::Sample { temperature: 0.8 };
        let nonce = Nonce::from_seed(7);
        let steps: Vec<Record> = (5..8)
            .map(|p| Record {
                position: p,
                logits: vec![0.5, -1.25, p as f32, f32::MIN_POSITIVE],
                token: (p % 4) as u32,
                sampler: sampler.step(&nonce, nonce.request_id(), p),
            })
            .collect();
        Transcript {
            version: VERSION,
            model_id: "ab".repeat(32),
            prompt: "hi".into(),
            prompt_tokens: vec![2, 3, 4, 5, 6],
            sampler,
            client_nonce: nonce.to_hex(),
            request_id: nonce.request_id(),
            tokens: steps.iter().map(|s| s.token).collect(),
            hops: vec![HopRecord::local(0, 7, &[2, 3, 4, 5, 6], &[1.0, 2.0])],
            logprobs: vec![-0.5, -1.75, -0.125],
            records: Some(RecordsRef::Inline(Records { vocab: 4, steps })),
            proving: Some(ProvingPolicy::Challenged { challenges: 2 }),
            proof_receipts: vec![ProofReceiptRecord {
                commitments_blake3: "cd".repeat(32),
                signature: "ef".repeat(32),
            }],
            receipts_signature: None,
        }
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let t = sample();
        let json = serde_json::to_string(&t).expect("json");
        let back: Transcript = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t);
        let value: serde_json::Value = serde_json::from_str(&json).expect("value");
        assert_eq!(value["version"], 3);
        assert_eq!(value["logprobs"][1], -1.75);
        assert_eq!(value["proof_receipts"][0]["signature"], "ef".repeat(32));
        // Without records, logprobs and proof receipts the fields are left out
        // and read back as empty.
        let mut slim = t.clone();
        slim.records = None;
        slim.logprobs.clear();
        slim.proof_receipts.clear();
        let json = serde_json::to_string(&slim).expect("json");
        assert!(
            !json.contains("records\"") && !json.contains("logprobs"),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Transcript>(&json).expect("parse"),
            slim
        );
        assert_eq!(value["sampler"]["sample"]["temperature"], 0.8);
        assert_eq!(value["proving"]["policy"], "challenged");
        assert_eq!(value["hops"][0]["node"], "local");
        assert_eq!(value["hops"][0]["layers"], serde_json::json!([0, 7]));
        assert_eq!(value["client_nonce"].as_str().expect("nonce").len(), 32);
        // Inline records are exactly the `prove --records` shape.
        let records = &value["records"]["inline"];
        assert_eq!(records["vocab"], 4);
        let nonce = Nonce::from_seed(7);
        assert_eq!(
            records["steps"][0]["sampler"]["sample"]["r"],
            sampling_r(&nonce, nonce.request_id(), 5).to_string()
        );
        assert_ne!(Nonce::fresh(), Nonce::fresh());
        assert_eq!(Nonce::from_hex(&nonce.to_hex()).unwrap(), nonce);
        assert!(matches!(
            Nonce::from_hex("zz"),
            Err(TranscriptError::Hex { digits: 32, .. })
        ));
    }

    #[test]
    fn r_depends_on_nonce_request_and_position() {
        let (a, b) = (Nonce::from_seed(1), Nonce::from_seed(2));
        let r = sampling_r(&a, 9, 5);
        assert_ne!(r, sampling_r(&b, 9, 5));
        assert_ne!(r, sampling_r(&a, 10, 5));
        assert_ne!(r, sampling_r(&a, 9, 6));
        assert_eq!(r, sampling_r(&a, 9, 5));
    }

    #[test]
    fn challenges_are_distinct_token_positions_bound_to_the_transcript() {
        let mut t = sample();
        t.tokens = (0..32).collect();
        let chosen = t.challenged_positions(4);
        assert_eq!(chosen.len(), 4);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{chosen:?}");
        assert!(chosen.iter().all(|&p| (5..37).contains(&p)), "{chosen:?}");
        assert_eq!(chosen, t.challenged_positions(4));
        assert_eq!(t.challenged_positions(100).len(), 32);
        // Any change to what the node answered moves the challenges.
        let mut other = t.clone();
        other.hops[0].output_blake3 = "00".repeat(32);
        assert_ne!(other.challenge_digest(), t.challenge_digest());
        let moved = (0..20).any(|i| {
            let mut o = t.clone();
            o.tokens[31] = 100 + i;
            o.challenged_positions(4) != chosen
        });
        assert!(moved);
    }

    #[test]
    fn binary_side_file_round_trips_and_checks_its_digest() {
        let mut t = sample();
        let Some(RecordsRef::Inline(records)) = t.records.clone() else {
            unreachable!()
        };
        let bytes = encode_logits(records.vocab, &records.steps).expect("encode");
        assert_eq!(&bytes[..8], b"ZKLOGIT1");
        assert_eq!(bytes.len(), 16 + 3 * (12 + 4 * 4));
        let dir = std::env::temp_dir().join(format!("zkinfer-transcript-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("t.logits.bin"), &bytes).expect("write");
        t.records = Some(RecordsRef::File {
            path: "t.logits.bin".into(),
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            vocab: records.vocab,
            count: records.steps.len(),
        });
        let json = serde_json::to_string(&t).expect("json");
        let back: Transcript = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.records(&dir).expect("records"), Some(records));

        // A changed byte fails the digest check.
        let mut tampered = bytes.clone();
        *tampered.last_mut().expect("byte") ^= 1;
        std::fs::write(dir.join("t.logits.bin"), &tampered).expect("write");
        let err = back.records(&dir).unwrap_err();
        assert!(err.to_string().contains("blake3"), "{err}");
        // Truncation is a format error.
        assert!(decode_logits(&bytes[..bytes.len() - 1]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
