//! The messages frames carry, and their payload layouts.

use std::ops::Range;

use models::model_id::ModelId;
use verifier::receipt::Step;

use crate::reader::Reader;
use crate::{Activations, Encoding, ErrorCode, WireError};

/// The message type byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// [`Message::Hello`].
    Hello = 1,
    /// [`Message::HelloAck`].
    HelloAck = 2,
    /// [`Message::Forward`].
    Forward = 3,
    /// [`Message::Output`].
    Output = 4,
    /// [`Message::End`].
    End = 5,
    /// [`Message::Ping`].
    Ping = 6,
    /// [`Message::Pong`].
    Pong = 7,
    /// [`Message::Error`].
    Error = 8,
    /// [`Message::Prove`].
    Prove = 9,
    /// [`Message::Proofs`].
    Proofs = 10,
    /// [`Message::TraceRequest`].
    TraceRequest = 11,
    /// [`Message::Trace`].
    Trace = 12,
    /// [`Message::Reveal`].
    Reveal = 13,
    /// [`Message::Revealed`].
    Revealed = 14,
    /// [`Message::Sampled`].
    Sampled = 15,
}

impl MessageType {
    /// The type for a byte on the wire, `None` for an unknown byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => MessageType::Hello,
            2 => MessageType::HelloAck,
            3 => MessageType::Forward,
            4 => MessageType::Output,
            5 => MessageType::End,
            6 => MessageType::Ping,
            7 => MessageType::Pong,
            8 => MessageType::Error,
            9 => MessageType::Prove,
            10 => MessageType::Proofs,
            11 => MessageType::TraceRequest,
            12 => MessageType::Trace,
            13 => MessageType::Reveal,
            14 => MessageType::Revealed,
            15 => MessageType::Sampled,
            _ => return None,
        })
    }
}

/// Payload of [`Message::Hello`] and [`Message::HelloAck`]: a model and a
/// layer range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The model, by id.
    pub model_id: ModelId,
    /// The layers `start .. end`; `start < end`.
    pub layers: Range<u32>,
}

/// Payload of [`Message::HelloAck`]: what the node serves, and the key it
/// signs receipts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloAck {
    pub span: Hello,
    /// Compressed BLS public key, when the node signs receipts.
    pub signer: Option<[u8; 64]>,
}

/// Payload of [`Message::Output`]: the activations and, from a node that
/// signs, its signature on the hop's receipt.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub activations: Activations,
    /// Compressed BLS signature.
    pub signature: Option<[u8; 32]>,
}

/// Payload of [`Message::Sampled`]: the token the head node picked, instead
/// of the logits it picked it from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// The token's log-probability in nats (at the sampler's temperature), as
    /// a proof of the pick states it: finite and `<= 0`.
    pub logprob: f64,
    /// blake3 of the logits row as F32 little-endian: what the head's receipt
    /// signs as its output, and what it keeps for proofs and audits.
    pub logits_blake3: [u8; 32],
    /// Compressed BLS signature on the hop's receipt.
    pub signature: Option<[u8; 32]>,
}

/// Payload of [`Message::Forward`]: run the layers on the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// The model the client means; the node refuses any other.
    pub model_id: ModelId,
    /// The layers the client means; the node refuses any other range.
    pub layers: Range<u32>,
    /// The encoding of the hidden states the node answers (logits are F32).
    pub reply: Encoding,
    /// What the shard with the head answers.
    pub head: HeadReply,
    /// Tokens for the first shard, hidden states for the others.
    pub input: ForwardInput,
}

/// What the shard with the head answers a [`Forward`] with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadReply {
    /// The logits of the last row, `[1, vocab]`.
    LastLogits,
    /// The greedy token of every row, `[rows, 1]` (speculative decoding
    /// checks a whole draft in one pass).
    GreedyTokens,
    /// The token the sampler picks from the last row's logits, as a
    /// [`Message::Sampled`].
    Sample(TokenSampler),
}

impl HeadReply {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            HeadReply::LastLogits => out.push(0),
            HeadReply::GreedyTokens => out.push(1),
            HeadReply::Sample(sampler) => {
                out.push(2);
                sampler.write(out);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match r.u8("head reply")? {
            0 => HeadReply::LastLogits,
            1 => HeadReply::GreedyTokens,
            2 => HeadReply::Sample(TokenSampler::read(r)?),
            other => return Err(WireError::Malformed(format!("unknown head reply {other}"))),
        })
    }
}

/// What a [`Forward`] carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardInput {
    /// Token ids, for the shard that starts at layer 0.
    Tokens(Vec<u32>),
    /// Hidden states `[rows, d]`, for the other shards.
    Activations(Activations),
}

impl ForwardInput {
    fn write(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            ForwardInput::Tokens(tokens) => {
                if tokens.is_empty() {
                    return Err(WireError::Encode("a Forward with no tokens".into()));
                }
                out.push(0);
                write_len(out, tokens.len())?;
                for t in tokens {
                    out.extend_from_slice(&t.to_le_bytes());
                }
                Ok(())
            }
            ForwardInput::Activations(a) => {
                out.push(1);
                a.write(out)
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match r.u8("forward input tag")? {
            0 => {
                let n = r.u32("token count")?;
                if n == 0 {
                    return Err(WireError::Malformed("a Forward with no tokens".into()));
                }
                // Checked against the payload before allocating.
                let len = (n as usize)
                    .checked_mul(4)
                    .ok_or_else(|| WireError::Malformed(format!("{n} tokens are too many")))?;
                let bytes = r.bytes(len, "token ids")?;
                let (ids, _) = bytes.as_chunks::<4>();
                ForwardInput::Tokens(ids.iter().map(|b| u32::from_le_bytes(*b)).collect())
            }
            1 => ForwardInput::Activations(Activations::read(r)?),
            tag => {
                return Err(WireError::Malformed(format!(
                    "unknown forward input tag {tag}"
                )))
            }
        })
    }

    /// blake3 of the bytes a hop is sent: the token ids as u32
    /// little-endian, or the activations' data (what receipts and
    /// transcripts name as a hop's input).
    pub fn digest(&self) -> blake3::Hash {
        match self {
            ForwardInput::Tokens(tokens) => {
                let mut h = blake3::Hasher::new();
                for t in tokens {
                    h.update(&t.to_le_bytes());
                }
                h.finalize()
            }
            ForwardInput::Activations(a) => blake3::hash(&a.data),
        }
    }
}

/// Payload of [`Message::Ping`] and [`Message::Pong`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ping {
    /// When the ping was sent, in microseconds of the pinger's clock.
    pub sent_at_micros: u64,
    /// Filler bytes, echoed back: their size measures throughput.
    pub payload: Vec<u8>,
}

/// Payload of [`Message::Error`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Text for humans.
    pub message: String,
}

impl ErrorReply {
    /// The reply as an error on the receiving side ([`WireError::Remote`]).
    pub fn into_error(self) -> WireError {
        WireError::Remote {
            code: self.code,
            message: self.message,
        }
    }
}

/// How a token is chosen from logits (by the head node, or in a
/// [`ProveStep`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TokenSampler {
    /// The argmax, lowest index on ties.
    Greedy,
    /// Inverse-CDF sampling at `temperature` with the uniform integer `r`.
    Sample { temperature: f64, r: u64 },
}

impl TokenSampler {
    /// Tag `0`, or tag `1`, the temperature's f64 bits and `r`.
    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            TokenSampler::Greedy => out.push(0),
            TokenSampler::Sample { temperature, r } => {
                out.push(1);
                out.extend_from_slice(&temperature.to_bits().to_le_bytes());
                out.extend_from_slice(&r.to_le_bytes());
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match r.u8("sampler tag")? {
            0 => TokenSampler::Greedy,
            1 => TokenSampler::Sample {
                temperature: f64::from_bits(r.u64("temperature")?),
                r: r.u64("sampling r")?,
            },
            tag => return Err(WireError::Malformed(format!("unknown sampler tag {tag}"))),
        })
    }
}

/// One token a client asks the head node to prove.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProveStep {
    /// The token's position; its logits come from the forward that ended at
    /// `position - 1`.
    pub position: u64,
    /// The token chosen.
    pub token: u32,
    /// How it was chosen.
    pub sampler: TokenSampler,
}

/// Payload of [`Message::Proofs`]: what a proving node has for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProofsReply {
    /// Steps still queued or being proven.
    pub pending: u32,
    /// Proof bundles finished since the last reply (each given out once).
    pub bundles: Vec<ProvenBundle>,
    /// Steps that could not be proven, with the reason.
    pub failures: Vec<ProofFailure>,
}

/// A proof bundle and, from a node that signs, its signature per proof on
/// the proof's receipt (`verifier::receipt::ProofReceipt`), in proof order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvenBundle {
    pub bytes: Vec<u8>,
    pub signatures: Vec<[u8; 32]>,
}

/// A step the node could not prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofFailure {
    pub position: u64,
    pub message: String,
}

/// The body of a frame: one variant per message type.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Client to node: "do you serve this model and these layers?"
    Hello(Hello),
    /// Node to client: the model and layers it serves, and its signing key.
    HelloAck(HelloAck),
    /// Client to node: run the layers on the input for the frame's request
    /// id, starting at the frame's position.
    Forward(Forward),
    /// Node to client: output hidden states, or logits from the last shard,
    /// with a signed receipt from a node that signs.
    Output(Output),
    /// Node to client: the token the last shard picked
    /// ([`HeadReply::Sample`]), with a signed receipt from a node that signs.
    Sampled(Sampled),
    /// Client to node: the request is over; free its cache.
    End,
    /// Either way: measure round trip and throughput.
    Ping(Ping),
    /// The answer to a [`Message::Ping`], echoing it.
    Pong(Ping),
    /// Node to client: the frame with this request id failed.
    Error(ErrorReply),
    /// Client to the proving head node: prove these tokens of the request.
    Prove(Vec<ProveStep>),
    /// Node to client: finished proofs and failures of the request.
    Proofs(ProofsReply),
    /// Auditor to a signing node: sign the steps of every forward of the
    /// request (the frame's request id) that you still keep.
    TraceRequest,
    /// Node to auditor: a signed step receipt per step per forward, in
    /// position order, each forward's steps in order (enter, layers, exit).
    Trace(Vec<SignedStep>),
    /// Auditor to a signing node: the bytes at this boundary of the
    /// forward at the frame's position.
    Reveal(Boundary),
    /// Node to auditor: those bytes (tokens only for the input of the
    /// shard at layer 0; inner boundaries always F32).
    Revealed(ForwardInput),
}

/// Where inside a forward an auditor looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    /// What the node was sent.
    Input,
    /// The hidden states entering layer `l` (`l` = the span's end: after its
    /// last layer), `[rows, d]`.
    Layer(u32),
    /// What the node answered.
    Output,
}

/// One signed step receipt of a trace (`verifier::receipt::StepReceipt`;
/// model id and request id are the trace's, the signer the node's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedStep {
    pub position: u64,
    pub step: Step,
    pub input: [u8; 32],
    pub output: [u8; 32],
    pub signature: [u8; 32],
}

impl Message {
    /// The message's type byte.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::HelloAck(_) => MessageType::HelloAck,
            Message::Forward(_) => MessageType::Forward,
            Message::Output(_) => MessageType::Output,
            Message::End => MessageType::End,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
            Message::Error(_) => MessageType::Error,
            Message::Prove(_) => MessageType::Prove,
            Message::Proofs(_) => MessageType::Proofs,
            Message::TraceRequest => MessageType::TraceRequest,
            Message::Trace(_) => MessageType::Trace,
            Message::Reveal(_) => MessageType::Reveal,
            Message::Revealed(_) => MessageType::Revealed,
            Message::Sampled(_) => MessageType::Sampled,
        }
    }

    pub(crate) fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Message::Hello(h) => write_span(out, &h.model_id, &h.layers),
            Message::HelloAck(a) => {
                write_span(out, &a.span.model_id, &a.span.layers)?;
                write_optional(out, a.signer.as_ref().map(|k| &k[..]));
                Ok(())
            }
            Message::Forward(f) => {
                write_span(out, &f.model_id, &f.layers)?;
                out.push(f.reply as u8);
                f.head.write(out);
                f.input.write(out)
            }
            Message::Output(o) => {
                o.activations.write(out)?;
                write_optional(out, o.signature.as_ref().map(|s| &s[..]));
                Ok(())
            }
            Message::Sampled(s) => {
                out.extend_from_slice(&s.token.to_le_bytes());
                out.extend_from_slice(&s.logprob.to_bits().to_le_bytes());
                out.extend_from_slice(&s.logits_blake3);
                write_optional(out, s.signature.as_ref().map(|s| &s[..]));
                Ok(())
            }
            Message::End => Ok(()),
            Message::Ping(p) | Message::Pong(p) => {
                out.extend_from_slice(&p.sent_at_micros.to_le_bytes());
                write_len(out, p.payload.len())?;
                out.extend_from_slice(&p.payload);
                Ok(())
            }
            Message::Error(e) => {
                out.extend_from_slice(&e.code.as_u16().to_le_bytes());
                write_bytes(out, e.message.as_bytes())
            }
            Message::Prove(steps) => {
                write_len(out, steps.len())?;
                for step in steps {
                    out.extend_from_slice(&step.position.to_le_bytes());
                    out.extend_from_slice(&step.token.to_le_bytes());
                    step.sampler.write(out);
                }
                Ok(())
            }
            Message::TraceRequest => Ok(()),
            Message::Trace(steps) => {
                write_len(out, steps.len())?;
                for s in steps {
                    out.extend_from_slice(&s.position.to_le_bytes());
                    let (kind, layer) = s.step.code();
                    out.push(kind);
                    out.extend_from_slice(&layer.to_le_bytes());
                    out.extend_from_slice(&s.input);
                    out.extend_from_slice(&s.output);
                    out.extend_from_slice(&s.signature);
                }
                Ok(())
            }
            Message::Reveal(boundary) => {
                let (kind, layer) = match *boundary {
                    Boundary::Input => (0u8, 0u32),
                    Boundary::Layer(l) => (1, l),
                    Boundary::Output => (2, 0),
                };
                out.push(kind);
                out.extend_from_slice(&layer.to_le_bytes());
                Ok(())
            }
            Message::Revealed(input) => input.write(out),
            Message::Proofs(p) => {
                out.extend_from_slice(&p.pending.to_le_bytes());
                write_len(out, p.bundles.len())?;
                for bundle in &p.bundles {
                    write_bytes(out, &bundle.bytes)?;
                    write_len(out, bundle.signatures.len())?;
                    for signature in &bundle.signatures {
                        out.extend_from_slice(signature);
                    }
                }
                write_len(out, p.failures.len())?;
                for failure in &p.failures {
                    out.extend_from_slice(&failure.position.to_le_bytes());
                    write_bytes(out, failure.message.as_bytes())?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn read_payload(ty: MessageType, r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match ty {
            MessageType::Hello => Message::Hello(read_hello(r)?),
            MessageType::HelloAck => Message::HelloAck(HelloAck {
                span: read_hello(r)?,
                signer: read_optional::<64>(r, "signer key")?,
            }),
            MessageType::Forward => {
                let Hello { model_id, layers } = read_hello(r)?;
                let raw = r.u8("reply encoding")?;
                let reply = Encoding::from_u8(raw)
                    .ok_or_else(|| WireError::Malformed(format!("unknown reply encoding {raw}")))?;
                let head = HeadReply::read(r)?;
                let input = ForwardInput::read(r)?;
                Message::Forward(Forward {
                    model_id,
                    layers,
                    reply,
                    head,
                    input,
                })
            }
            MessageType::Output => Message::Output(Output {
                activations: Activations::read(r)?,
                signature: read_optional::<32>(r, "receipt signature")?,
            }),
            MessageType::Sampled => {
                let token = r.u32("sampled token")?;
                let logprob = f64::from_bits(r.u64("log-probability")?);
                if !(logprob.is_finite() && logprob <= 0.0) {
                    return Err(WireError::Malformed(format!(
                        "log-probability {logprob} is not finite and <= 0"
                    )));
                }
                Message::Sampled(Sampled {
                    token,
                    logprob,
                    logits_blake3: r.array::<32>("logits digest")?,
                    signature: read_optional::<32>(r, "receipt signature")?,
                })
            }
            MessageType::End => Message::End,
            MessageType::Ping => Message::Ping(read_ping(r)?),
            MessageType::Pong => Message::Pong(read_ping(r)?),
            MessageType::Error => {
                let raw = r.u16("error code")?;
                let code = ErrorCode::from_u16(raw)
                    .ok_or_else(|| WireError::Malformed(format!("unknown error code {raw}")))?;
                let message = r.text("error message")?;
                Message::Error(ErrorReply { code, message })
            }
            MessageType::Prove => {
                let n = r.u32("prove step count")?;
                // Each step takes at least 13 bytes: a count beyond the
                // payload is refused before allocating for it.
                r.expect_at_least(n as usize, 13, "prove steps")?;
                let steps = (0..n)
                    .map(|_| {
                        let position = r.u64("prove position")?;
                        let token = r.u32("prove token")?;
                        Ok(ProveStep {
                            position,
                            token,
                            sampler: TokenSampler::read(r)?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Message::Prove(steps)
            }
            MessageType::TraceRequest => Message::TraceRequest,
            MessageType::Trace => {
                let n = r.u32("step count")?;
                // 8 + 1 + 4 + 3 × 32 bytes a step, checked before allocating.
                r.expect_at_least(n as usize, 109, "trace steps")?;
                let steps = (0..n)
                    .map(|_| {
                        let position = r.u64("step position")?;
                        let kind = r.u8("step kind")?;
                        let layer = r.u32("step layer")?;
                        let step = Step::from_code(kind, layer).ok_or_else(|| {
                            WireError::Malformed(format!("unknown step kind {kind}"))
                        })?;
                        Ok(SignedStep {
                            position,
                            step,
                            input: r.array::<32>("step input digest")?,
                            output: r.array::<32>("step output digest")?,
                            signature: r.array::<32>("step signature")?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Message::Trace(steps)
            }
            MessageType::Reveal => {
                let kind = r.u8("boundary kind")?;
                let layer = r.u32("boundary layer")?;
                Message::Reveal(match (kind, layer) {
                    (0, 0) => Boundary::Input,
                    (1, l) => Boundary::Layer(l),
                    (2, 0) => Boundary::Output,
                    _ => {
                        return Err(WireError::Malformed(format!(
                            "bad boundary kind {kind} with layer {layer}"
                        )))
                    }
                })
            }
            MessageType::Revealed => Message::Revealed(ForwardInput::read(r)?),
            MessageType::Proofs => {
                let pending = r.u32("pending proofs")?;
                let b = r.u32("bundle count")?;
                r.expect_at_least(b as usize, 8, "bundles")?;
                let bundles = (0..b)
                    .map(|_| {
                        let n = r.u32("bundle length")?;
                        let bytes = r.bytes(n as usize, "bundle")?.to_vec();
                        let s = r.u32("signature count")?;
                        r.expect_at_least(s as usize, 32, "proof signatures")?;
                        let signatures = (0..s)
                            .map(|_| r.array::<32>("proof signature"))
                            .collect::<Result<_, WireError>>()?;
                        Ok(ProvenBundle { bytes, signatures })
                    })
                    .collect::<Result<_, WireError>>()?;
                let f = r.u32("failure count")?;
                r.expect_at_least(f as usize, 12, "failures")?;
                let failures = (0..f)
                    .map(|_| {
                        Ok(ProofFailure {
                            position: r.u64("failure position")?,
                            message: r.text("failure message")?,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                Message::Proofs(ProofsReply {
                    pending,
                    bundles,
                    failures,
                })
            }
        })
    }
}

fn write_span(out: &mut Vec<u8>, model_id: &ModelId, layers: &Range<u32>) -> Result<(), WireError> {
    if layers.start >= layers.end {
        return Err(WireError::Encode(format!("empty layer range {layers:?}")));
    }
    out.extend_from_slice(&model_id.0);
    out.extend_from_slice(&layers.start.to_le_bytes());
    out.extend_from_slice(&layers.end.to_le_bytes());
    Ok(())
}

/// Writes a `u32` count; a count that does not fit makes the frame too large.
fn write_len(out: &mut Vec<u8>, len: usize) -> Result<(), WireError> {
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    out.extend_from_slice(&len32.to_le_bytes());
    Ok(())
}

/// Writes a tag `0`, or `1` and the bytes.
fn write_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            out.extend_from_slice(bytes);
        }
    }
}

/// Reads what [`write_optional`] wrote, `N` bytes when present.
fn read_optional<const N: usize>(
    r: &mut Reader<'_>,
    what: &str,
) -> Result<Option<[u8; N]>, WireError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(r.array::<N>(what)?)),
        tag => Err(WireError::Malformed(format!("{what}: unknown tag {tag}"))),
    }
}

/// Writes a `u32` byte count and the bytes.
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), WireError> {
    write_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

fn read_hello(r: &mut Reader<'_>) -> Result<Hello, WireError> {
    let model_id = ModelId(r.array::<32>("model id")?);
    let start = r.u32("layer start")?;
    let end = r.u32("layer end")?;
    if start >= end {
        return Err(WireError::Malformed(format!(
            "empty layer range {start}..{end}"
        )));
    }
    Ok(Hello {
        model_id,
        layers: start..end,
    })
}

fn read_ping(r: &mut Reader<'_>) -> Result<Ping, WireError> {
    let sent_at_micros = r.u64("ping time")?;
    let n = r.u32("ping payload length")?;
    let payload = r.bytes(n as usize, "ping payload")?.to_vec();
    Ok(Ping {
        sent_at_micros,
        payload,
    })
}
