//! The frame codec of the node transport: the exact bytes two peers exchange.
//!
//! The codec is pure and synchronous: [`Frame::encode`] gives bytes,
//! [`Frame::decode`] takes them back, and [`read_frame`] / [`write_frame`] do
//! the same over blocking `std::io` streams. Sockets, timeouts and retries
//! belong to the transport that uses it; an async reader mirrors
//! [`read_frame`]: read [`HEADER_LEN`] bytes, [`Header::parse`] them (this
//! enforces the size limit before anything is allocated), read the rest of
//! the frame up to [`Header::frame_len`] bytes in all, and call
//! [`Frame::decode`] on the whole frame.
//!
//! Decoding never panics: any byte string gives a frame or a [`WireError`],
//! and the node answers an error with [`WireError::to_frame`].
//!
//! # Wire format, version 1
//!
//! All integers are little-endian and unsigned unless noted. A frame is:
//!
//! | offset  | size | field                                                       |
//! |---------|------|-------------------------------------------------------------|
//! | 0       | 4    | magic, the ASCII bytes `ZKIW` (`5A 4B 49 57`)               |
//! | 4       | 2    | version `u16`, `1`                                          |
//! | 6       | 1    | message type `u8` (table below)                             |
//! | 7       | 1    | flags `u8`: reserved, must be `0`                           |
//! | 8       | 8    | request id `u64`                                            |
//! | 16      | 8    | position `u64`                                              |
//! | 24      | 4    | payload length `L`, `u32`                                   |
//! | 28      | L    | payload (layout per message type, below)                    |
//! | 28 + L  | 32   | checksum: the 32-byte blake3 hash of bytes `0 .. 28 + L`    |
//!
//! The header is thus [`HEADER_LEN`] = 28 bytes and a whole frame is
//! `28 + L + 32` bytes. Frames follow each other on a stream with nothing in
//! between.
//!
//! Message types, and what the request id and position mean for each (where
//! they mean nothing the sender writes `0` and the receiver ignores them):
//!
//! | type | name     | from   | request id           | position                       |
//! |------|----------|--------|----------------------|--------------------------------|
//! | 1    | Hello    | client | ignored              | ignored                        |
//! | 2    | HelloAck | node   | ignored              | ignored                        |
//! | 3    | Forward  | client | request (KV cache)   | sequence position of row 0     |
//! | 4    | Output   | node   | as in the Forward    | as in the Forward              |
//! | 5    | End      | client | request to free      | ignored                        |
//! | 6    | Ping     | either | ignored              | ignored                        |
//! | 7    | Pong     | either | as in the Ping       | as in the Ping                 |
//! | 8    | Error    | node   | of the failed frame  | of the failed frame            |
//! | 9    | Prove    | client | request (its logits) | ignored                        |
//! | 10   | Proofs   | node   | as in the Prove      | as in the Prove                |
//! | 11   | TraceRequest | auditor | request (as served) | ignored                     |
//! | 12   | Trace    | node   | as in the request    | as in the request              |
//! | 13   | Reveal   | auditor | request (as served) | the forward's position        |
//! | 14   | Revealed | node   | as in the Reveal     | as in the Reveal               |
//!
//! An Error answering a frame whose header could not be read carries request
//! id and position `0`.
//!
//! ## Payloads
//!
//! A payload must be consumed exactly: bytes left over make the frame
//! malformed. A *layer range* is two `u32`, `start` then `end`, meaning the
//! layers `start .. end`; `start < end` is required.
//!
//! - **Hello** (1): model id (32 bytes), layer range (8 bytes); 40 bytes in
//!   all. The client names what it wants served; a node that serves exactly
//!   that answers HelloAck, any other node answers Error (WrongModel or
//!   WrongLayers).
//! - **HelloAck** (2): the Hello's model id and layer range, then a signer
//!   tag `u8`: `0` (the node signs no receipts) or `1` followed by the
//!   node's BLS public key (64 bytes, `verifier::receipt`).
//! - **Forward** (3): model id (32), layer range (8), reply encoding `u8`
//!   (the encoding the client wants the Output hidden states in; logits
//!   come as F32 whatever it says), head reply `u8` (what the shard with the
//!   head answers: `0` the logits of the last row, `1` the greedy token of
//!   every row; other shards ignore it), input tag `u8`, input:
//!   - tag `0`, tokens (first shard): count `n` `u32` (`n >= 1`), then `n`
//!     token ids `u32`;
//!   - tag `1`, hidden states: an activations block.
//! - **Output** (4): an activations block, then a receipt tag `u8`: `0`, or
//!   `1` followed by the node's signature (32 bytes) on the hop's receipt
//!   (`verifier::receipt::Receipt`: model id, layer range, the frame's
//!   request id and position, blake3 of the input bytes — the token ids as
//!   u32 LE or the activations' data — and of this block's data). The block
//!   holds hidden states `[rows, d]` in the
//!   Forward's reply encoding, or from the last shard either logits
//!   `[1, vocab]` of the last row or, for head reply `1`, `[rows, 1]` greedy
//!   token ids (each exact in F32; the first index of the largest logit at
//!   the proof's fixed point, as `circuits::sample_token` picks greedily).
//! - **End** (5): empty (`L = 0`).
//! - **Ping** (6) and **Pong** (7): `sent_at_micros` `u64` (the pinger's
//!   clock), byte count `n` `u32`, `n` bytes of filler. A Pong echoes the
//!   Ping's fields; the filler lets one ping measure throughput as well as RTT.
//! - **Error** (8): code `u16` (table below), byte count `n` `u32`, `n` bytes
//!   of UTF-8 text for humans.
//! - **Prove** (9), to the shard with the head of a node that proves: step
//!   count `n` `u32`, then per step `position` `u64` (the position of the
//!   token: its logits are those the request's forward ending at
//!   `position - 1` answered), `token` `u32`, sampler tag `u8`: `0` greedy,
//!   or `1` sample followed by `temperature` (f64 bits, `u64`) and `r`
//!   `u64`. The node queues the steps for proving and answers Proofs at
//!   once; `n = 0` only asks for what is ready.
//! - **Proofs** (10): `pending` `u32` (steps of this request queued or being
//!   proven), bundle count `b` `u32`, `b` times a byte count `u32` and that
//!   many bytes of a proof bundle (docs/bundle.md) that is handed over only
//!   once, failure count `f` `u32`, `f` times `position` `u64`, byte count
//!   `u32` and UTF-8 text: steps the node could not prove, and why.
//! - **TraceRequest** (11), to a node that signs: empty. The node answers
//!   Trace for every forward of the request it still keeps (a signing node
//!   keeps what it computed for `audit_window` after the request's last
//!   use), or Error UnknownRequest.
//! - **Trace** (12): step count `n` `u32`, then per step `position` `u64`,
//!   kind `u8` (`0` enter, `1` layer, `2` exit), layer `u32` (the span's
//!   start for enter, the layer, the span's end for exit), input and output digests (32 each) and the node's signature
//!   (32) on the step receipt (`verifier::receipt::StepReceipt`). Per forward
//!   in position order: enter (the received bytes to the hidden states
//!   entering the span's first layer), each layer, exit (the hidden states
//!   after the last layer to the bytes answered). Inner digests are blake3
//!   of the F32 data of `[rows, d]` matrices.
//! - **Reveal** (13): kind `u8` (`0` the input the node was sent, `1` the
//!   hidden states entering a layer, `2` the output it answered), layer
//!   `u32` (for kind `1`: `start ..= end`, `end` meaning after the last
//!   layer; else `0`).
//! - **Revealed** (14): an input as in Forward: tokens (tag `0`, only for
//!   the input of the shard at layer 0) or an activations block (inner
//!   boundaries in F32, input and output as they crossed the wire).
//!
//! An **activations block** is `rows` `u32` (`>= 1`), `cols` `u32` (`>= 1`),
//! encoding `u8`, then the values of the `[rows, cols]` matrix in row-major
//! order; its size follows from the three fields:
//!
//! | encoding | name | data                                                  | data bytes           |
//! |----------|------|-------------------------------------------------------|----------------------|
//! | 0        | F32  | IEEE 754 binary32 per value                           | `rows * cols * 4`    |
//! | 1        | F16  | IEEE 754 binary16 per value                           | `rows * cols * 2`    |
//! | 2        | Q8   | per row: `scale` f32, then `cols` values `i8`         | `rows * (4 + cols)`  |
//!
//! A Q8 value decodes as `q * scale` (computed in f32); `scale` must be
//! finite and `>= 0`, any `i8` is accepted. This encoder uses
//! `scale = max|x| / 127` over the row and `q = round(x / scale)` (halves away
//! from zero) clamped to `-127 ..= 127`, so `|x - q * scale| <= scale / 2` up
//! to f32 rounding; a row of zeros (or of magnitudes below about `1e-43`,
//! whose scale underflows) has scale `0` and values `0`. Q8 refuses
//! non-finite input. F16 rounds to nearest even; this encoder refuses finite
//! values that would overflow to infinity (send those as F32). F32 carries
//! any value, NaN and infinities included, bit for bit.
//!
//! ## Error codes
//!
//! | code | name               | meaning                                              |
//! |------|--------------------|------------------------------------------------------|
//! | 1    | Malformed          | bad magic, truncated, unknown type, bad payload      |
//! | 2    | TooLarge           | payload length over the receiver's limit             |
//! | 3    | Checksum           | blake3 checksum mismatch                             |
//! | 4    | UnsupportedVersion | version other than 1                                 |
//! | 5    | WrongModel         | the node does not serve that model id                |
//! | 6    | WrongLayers        | the node does not serve that layer range             |
//! | 7    | UnknownRequest     | no cache for that request id (e.g. after End)        |
//! | 8    | Internal           | the node failed for its own reasons                  |
//!
//! ## Receiving
//!
//! A receiver checks, in this order, and stops at the first failure: at least
//! 28 bytes (else truncated); magic; version; `L` against its limit
//! ([`Limits::max_payload`], before reading or allocating the payload);
//! `28 + L + 32` bytes present (else truncated); checksum; (for a byte slice)
//! nothing after the frame; known message type; flags `0`; payload layout.
//! After a failure in the header the stream cannot be resynchronised and the
//! connection should be closed after sending the error frame.

pub mod transport;

use std::io::{self, Read, Write};
use std::ops::Range;

use half::f16;

use models::model_id::ModelId;
use verifier::receipt::Step;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"ZKIW";
/// The wire format version this module reads and writes.
pub const VERSION: u16 = 1;
/// Bytes before the payload: magic, version, type, flags, request id,
/// position, payload length.
pub const HEADER_LEN: usize = 28;
/// Bytes of the blake3 checksum after the payload.
pub const CHECKSUM_LEN: usize = 32;
/// Payload limit of [`Limits::default`]: 64 MiB, room for a prefill of a few
/// thousand hidden-state rows as F32.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;

/// What a receiver is willing to accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload length accepted, in bytes. Frames claiming more are
    /// refused from their header alone. The length field is a `u32`, so
    /// values above `u32::MAX` mean "no limit".
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// The error codes carried by [`Message::Error`] frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Bad magic, truncated frame, unknown message type or bad payload.
    Malformed = 1,
    /// Payload length over the receiver's limit.
    TooLarge = 2,
    /// The blake3 checksum does not match.
    Checksum = 3,
    /// A wire format version this peer does not speak.
    UnsupportedVersion = 4,
    /// The node does not serve the requested model id.
    WrongModel = 5,
    /// The node does not serve the requested layer range.
    WrongLayers = 6,
    /// The node holds no state for the request id.
    UnknownRequest = 7,
    /// The node failed for reasons of its own.
    Internal = 8,
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number on the wire, `None` for an unknown number.
    pub fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Checksum,
            4 => ErrorCode::UnsupportedVersion,
            5 => ErrorCode::WrongModel,
            6 => ErrorCode::WrongLayers,
            7 => ErrorCode::UnknownRequest,
            8 => ErrorCode::Internal,
            _ => return None,
        })
    }
}

/// Everything that can go wrong reading, writing or serving a frame.
///
/// Each variant maps to an [`ErrorCode`] through [`WireError::code`], so a
/// node can answer any failure with [`WireError::to_frame`].
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The frame's version is not [`VERSION`].
    #[error("unsupported wire version {0} (this peer speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// The payload length is over the limit (or over `u32::MAX` when encoding).
    #[error("payload of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Payload length claimed (decoding) or produced (encoding).
        len: u64,
        /// The limit it exceeds.
        max: u64,
    },
    /// The input ended inside a frame.
    #[error("truncated frame: {have} of {needed} bytes")]
    Truncated {
        /// Bytes the frame needs (the header alone while it is incomplete).
        needed: usize,
        /// Bytes there were.
        have: usize,
    },
    /// The checksum does not match the header and payload.
    #[error("checksum mismatch")]
    Checksum,
    /// The message type byte is not one of the known types.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The frame's contents break the format (flags, payload layout, values).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Values that cannot be put on the wire as asked (shape mismatch, F16
    /// overflow, non-finite Q8 input).
    #[error("cannot encode activations: {0}")]
    Encode(String),
    /// The node does not serve the requested model.
    #[error("this node serves model {served}, not {requested}")]
    WrongModel {
        /// The model the node serves.
        served: ModelId,
        /// The model the frame asked for.
        requested: ModelId,
    },
    /// The node does not serve the requested layer range.
    #[error("this node serves layers {served:?}, not {requested:?}")]
    WrongLayers {
        /// The layers the node serves.
        served: Range<u32>,
        /// The layers the frame asked for.
        requested: Range<u32>,
    },
    /// The node holds no state for the request.
    #[error("unknown request {0}")]
    UnknownRequest(u64),
    /// The node failed for reasons of its own.
    #[error("internal error: {0}")]
    Internal(String),
    /// The peer answered with an error frame.
    #[error("peer reported {code:?}: {message}")]
    Remote {
        /// The peer's error code.
        code: ErrorCode,
        /// The peer's text.
        message: String,
    },
    /// The stream ended cleanly, between frames.
    #[error("connection closed")]
    Closed,
    /// The underlying stream failed (including read or write timeouts).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl WireError {
    /// The code an error frame reporting this error carries. Local conditions
    /// ([`WireError::Encode`], [`WireError::Closed`], [`WireError::Io`]) map
    /// to [`ErrorCode::Internal`].
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::BadMagic(_)
            | WireError::Truncated { .. }
            | WireError::UnknownType(_)
            | WireError::Malformed(_) => ErrorCode::Malformed,
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::TooLarge { .. } => ErrorCode::TooLarge,
            WireError::Checksum => ErrorCode::Checksum,
            WireError::WrongModel { .. } => ErrorCode::WrongModel,
            WireError::WrongLayers { .. } => ErrorCode::WrongLayers,
            WireError::UnknownRequest(_) => ErrorCode::UnknownRequest,
            WireError::Remote { code, .. } => *code,
            WireError::Encode(_)
            | WireError::Internal(_)
            | WireError::Closed
            | WireError::Io(_) => ErrorCode::Internal,
        }
    }

    /// The error frame reporting this error, for the frame with the given
    /// request id and position (`0`, `0` when its header was unreadable).
    pub fn to_frame(&self, request_id: u64, position: u64) -> Frame {
        Frame {
            request_id,
            position,
            message: Message::Error(ErrorReply {
                code: self.code(),
                message: self.to_string(),
            }),
        }
    }
}

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
            _ => return None,
        })
    }
}

/// How activation values are put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// IEEE 754 binary32, exact.
    F32 = 0,
    /// IEEE 754 binary16: half the bytes, relative error at most 2^-11 for
    /// normal values.
    F16 = 1,
    /// Per row an f32 scale and one i8 per value: about a quarter of the bytes,
    /// absolute error at most half the row's scale.
    Q8 = 2,
}

impl Encoding {
    /// Its name in files and on command lines: `f32`, `f16`, `q8`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::Q8 => "q8",
        }
    }

    /// The encoding named `name` ([`Encoding::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Encoding::F32, Encoding::F16, Encoding::Q8]
            .into_iter()
            .find(|e| e.name() == name)
    }

    /// The encoding for a byte on the wire, `None` for an unknown byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Encoding::F32,
            1 => Encoding::F16,
            2 => Encoding::Q8,
            _ => return None,
        })
    }

    /// Bytes of data a `[rows, cols]` matrix takes in this encoding, `None`
    /// when that does not fit in a `usize`.
    pub fn data_len(self, rows: u32, cols: u32) -> Option<usize> {
        let rows = usize::try_from(rows).ok()?;
        let cols = usize::try_from(cols).ok()?;
        match self {
            Encoding::F32 => rows.checked_mul(cols)?.checked_mul(4),
            Encoding::F16 => rows.checked_mul(cols)?.checked_mul(2),
            Encoding::Q8 => rows.checked_mul(cols.checked_add(4)?),
        }
    }
}

/// A `[rows, cols]` matrix of activations (hidden states or logits) as it
/// travels: shape, encoding, and the encoded bytes in row-major order.
///
/// Build one with [`Activations::encode`]; read it with
/// [`Activations::to_f32`]. The fields are public so that a peer can forward
/// data without decoding it; [`Activations::validate`] checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activations {
    /// Rows, e.g. sequence positions.
    pub rows: u32,
    /// Columns, e.g. the hidden size or the vocabulary size.
    pub cols: u32,
    /// How `data` encodes the values.
    pub encoding: Encoding,
    /// The encoded values (see the module docs for the layout).
    pub data: Vec<u8>,
}

impl Activations {
    /// Encodes `values`, a row-major `[rows, cols]` matrix.
    ///
    /// Fails with [`WireError::Encode`] when `values` does not hold
    /// `rows * cols` values, when a dimension is zero, when a finite value
    /// overflows F16, or when a Q8 row holds a non-finite value.
    pub fn encode(
        values: &[f32],
        rows: u32,
        cols: u32,
        encoding: Encoding,
    ) -> Result<Self, WireError> {
        let count = usize::try_from(rows)
            .ok()
            .zip(usize::try_from(cols).ok())
            .and_then(|(r, c)| r.checked_mul(c))
            .ok_or_else(|| WireError::Encode(format!("shape [{rows}, {cols}] is too large")))?;
        if rows == 0 || cols == 0 {
            return Err(WireError::Encode(format!(
                "shape [{rows}, {cols}] is empty"
            )));
        }
        if values.len() != count {
            return Err(WireError::Encode(format!(
                "{} values for shape [{rows}, {cols}]",
                values.len()
            )));
        }
        let capacity = encoding
            .data_len(rows, cols)
            .ok_or_else(|| WireError::Encode(format!("shape [{rows}, {cols}] is too large")))?;
        let mut data = Vec::with_capacity(capacity);
        match encoding {
            Encoding::F32 => {
                for x in values {
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            Encoding::F16 => {
                for (i, &x) in values.iter().enumerate() {
                    let h = f16::from_f32(x);
                    // Silent overflow to infinity would corrupt the hidden
                    // state; the client should pick F32 instead.
                    if x.is_finite() && h.is_infinite() {
                        return Err(WireError::Encode(format!(
                            "value {x} at index {i} overflows f16"
                        )));
                    }
                    data.extend_from_slice(&h.to_le_bytes());
                }
            }
            Encoding::Q8 => {
                // `cols >= 1` was checked above, so the chunk size is valid.
                for (r, row) in values.chunks_exact(cols as usize).enumerate() {
                    if let Some(c) = row.iter().position(|x| !x.is_finite()) {
                        return Err(WireError::Encode(format!(
                            "non-finite value {} at row {r}, column {c} cannot be Q8",
                            row[c]
                        )));
                    }
                    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let scale = max / 127.0;
                    data.extend_from_slice(&scale.to_le_bytes());
                    for &x in row {
                        let q = if scale > 0.0 {
                            (x / scale).round().clamp(-127.0, 127.0) as i8
                        } else {
                            0
                        };
                        data.push(q as u8);
                    }
                }
            }
        }
        Ok(Activations {
            rows,
            cols,
            encoding,
            data,
        })
    }

    /// Bytes of encoded values, `data.len()` (the block on the wire has 9
    /// more: rows, cols and encoding).
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// The shape as `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows as usize, self.cols as usize)
    }

    /// Checks that the shape is non-empty, that `data` has exactly the length
    /// the shape and encoding call for, and that every Q8 scale is finite and
    /// non-negative. Errors are [`WireError::Malformed`].
    pub fn validate(&self) -> Result<(), WireError> {
        let (rows, cols) = (self.rows, self.cols);
        if rows == 0 || cols == 0 {
            return Err(WireError::Malformed(format!(
                "activations of shape [{rows}, {cols}] are empty"
            )));
        }
        let expected = self.encoding.data_len(rows, cols).ok_or_else(|| {
            WireError::Malformed(format!(
                "activations of shape [{rows}, {cols}] are too large"
            ))
        })?;
        if self.data.len() != expected {
            return Err(WireError::Malformed(format!(
                "{:?} activations of shape [{rows}, {cols}] need {expected} bytes, have {}",
                self.encoding,
                self.data.len()
            )));
        }
        if self.encoding == Encoding::Q8 {
            // Length checked above, so every chunk is one whole row.
            let row_len = cols as usize + 4;
            for (r, row) in self.data.chunks_exact(row_len).enumerate() {
                let scale = q8_scale(row);
                if !(scale.is_finite() && scale >= 0.0) {
                    return Err(WireError::Malformed(format!(
                        "Q8 row {r} has scale {scale}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The values as a row-major `Vec<f32>` of `rows * cols` elements, after
    /// [`Activations::validate`] (so a bad shape never allocates).
    /// Token ids as the head answers greedy tokens: `[rows, 1]` in F32, where
    /// every id below 2^24 is exact.
    pub fn of_token_ids(ids: &[u32]) -> Result<Activations, WireError> {
        if let Some(id) = ids.iter().find(|&&id| id >= MAX_TOKEN_ID) {
            return Err(WireError::Encode(format!(
                "token id {id} is not exact in f32"
            )));
        }
        let rows = u32::try_from(ids.len())
            .map_err(|_| WireError::Encode(format!("{} token ids", ids.len())))?;
        let values: Vec<f32> = ids.iter().map(|&id| id as f32).collect();
        Activations::encode(&values, rows, 1, Encoding::F32)
    }

    /// The token ids of a greedy-tokens answer ([`Activations::of_token_ids`]):
    /// Malformed unless it is one column of whole numbers below 2^24.
    pub fn to_token_ids(&self) -> Result<Vec<u32>, WireError> {
        if self.cols != 1 {
            return Err(WireError::Malformed(format!(
                "token ids in {} columns",
                self.cols
            )));
        }
        self.to_f32()?
            .into_iter()
            .map(|v| {
                if (0.0..MAX_TOKEN_ID as f32).contains(&v) && v.fract() == 0.0 {
                    Ok(v as u32)
                } else {
                    Err(WireError::Malformed(format!("{v} is not a token id")))
                }
            })
            .collect()
    }

    pub fn to_f32(&self) -> Result<Vec<f32>, WireError> {
        self.validate()?;
        let values = match self.encoding {
            Encoding::F32 => {
                let (words, _) = self.data.as_chunks::<4>();
                words.iter().map(|w| f32::from_le_bytes(*w)).collect()
            }
            Encoding::F16 => {
                let (halves, _) = self.data.as_chunks::<2>();
                halves
                    .iter()
                    .map(|h| f16::from_le_bytes(*h).to_f32())
                    .collect()
            }
            Encoding::Q8 => {
                let mut out = Vec::with_capacity(self.rows as usize * self.cols as usize);
                for row in self.data.chunks_exact(self.cols as usize + 4) {
                    let scale = q8_scale(row);
                    out.extend(row[4..].iter().map(|&q| f32::from(q as i8) * scale));
                }
                out
            }
        };
        Ok(values)
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.validate()?;
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.extend_from_slice(&self.cols.to_le_bytes());
        out.push(self.encoding as u8);
        out.extend_from_slice(&self.data);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let rows = r.u32("activation rows")?;
        let cols = r.u32("activation columns")?;
        let byte = r.u8("activation encoding")?;
        let encoding = Encoding::from_u8(byte)
            .ok_or_else(|| WireError::Malformed(format!("unknown activation encoding {byte}")))?;
        // The length is known before copying, and `Reader::bytes` checks it
        // against what the payload holds: a huge shape cannot allocate.
        let len = encoding.data_len(rows, cols).ok_or_else(|| {
            WireError::Malformed(format!(
                "activations of shape [{rows}, {cols}] are too large"
            ))
        })?;
        let data = r.bytes(len, "activation data")?.to_vec();
        let activations = Activations {
            rows,
            cols,
            encoding,
            data,
        };
        activations.validate()?;
        Ok(activations)
    }
}

/// The scale at the start of a Q8 row (callers pass rows of at least 4 bytes;
/// a shorter slice reads as NaN, which validation refuses).
fn q8_scale(row: &[u8]) -> f32 {
    match row.first_chunk::<4>() {
        Some(bytes) => f32::from_le_bytes(*bytes),
        None => f32::NAN,
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

/// Payload of [`Message::Forward`]: run the layers on the input.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// Token ids travel as f32 values (greedy answers), exact below this.
const MAX_TOKEN_ID: u32 = 1 << 24;

/// What the shard with the head answers a [`Forward`] with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum HeadReply {
    /// The logits of the last row, `[1, vocab]`.
    LastLogits = 0,
    /// The greedy token of every row, `[rows, 1]` (speculative decoding
    /// checks a whole draft in one pass).
    GreedyTokens = 1,
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

/// How the token of a [`ProveStep`] was chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProveSampler {
    /// The argmax, lowest index on ties.
    Greedy,
    /// Inverse-CDF sampling at `temperature` with the uniform integer `r`.
    Sample { temperature: f64, r: u64 },
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
    pub sampler: ProveSampler,
}

/// Payload of [`Message::Proofs`]: what a proving node has for a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProofsReply {
    /// Steps still queued or being proven.
    pub pending: u32,
    /// Proof bundles finished since the last reply (each given out once).
    pub bundles: Vec<Vec<u8>>,
    /// Steps that could not be proven, with the reason.
    pub failures: Vec<ProofFailure>,
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
        }
    }

    fn write_payload(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
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
                out.push(f.head as u8);
                f.input.write(out)
            }
            Message::Output(o) => {
                o.activations.write(out)?;
                write_optional(out, o.signature.as_ref().map(|s| &s[..]));
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
                    match step.sampler {
                        ProveSampler::Greedy => out.push(0),
                        ProveSampler::Sample { temperature, r } => {
                            out.push(1);
                            out.extend_from_slice(&temperature.to_bits().to_le_bytes());
                            out.extend_from_slice(&r.to_le_bytes());
                        }
                    }
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
                    write_bytes(out, bundle)?;
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

    fn read_payload(ty: MessageType, r: &mut Reader<'_>) -> Result<Self, WireError> {
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
                let head = match r.u8("head reply")? {
                    0 => HeadReply::LastLogits,
                    1 => HeadReply::GreedyTokens,
                    other => {
                        return Err(WireError::Malformed(format!("unknown head reply {other}")))
                    }
                };
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
                        let sampler = match r.u8("prove sampler tag")? {
                            0 => ProveSampler::Greedy,
                            1 => ProveSampler::Sample {
                                temperature: f64::from_bits(r.u64("temperature")?),
                                r: r.u64("sampling r")?,
                            },
                            tag => {
                                return Err(WireError::Malformed(format!(
                                    "unknown prove sampler tag {tag}"
                                )))
                            }
                        };
                        Ok(ProveStep {
                            position,
                            token,
                            sampler,
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
                r.expect_at_least(b as usize, 4, "bundles")?;
                let bundles = (0..b)
                    .map(|_| {
                        let n = r.u32("bundle length")?;
                        Ok(r.bytes(n as usize, "bundle")?.to_vec())
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

/// A bounds-checked cursor over a payload: every read names what it wanted,
/// and running short is a [`WireError::Malformed`], never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or_else(|| {
            WireError::Malformed(format!(
                "payload ends inside {what}: {n} bytes needed, {} left",
                self.buf.len()
            ))
        })?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let bytes = self.bytes(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| WireError::Malformed(format!("{what}: bad length")))
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u32` byte count and that many bytes of UTF-8.
    fn text(&mut self, what: &str) -> Result<String, WireError> {
        let n = self.u32(what)?;
        let bytes = self.bytes(n as usize, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| WireError::Malformed(format!("{what}: {e}")))
    }

    /// Refuses `count` items of at least `min_bytes` each when fewer bytes
    /// are left, before anything is allocated for them.
    fn expect_at_least(&self, count: usize, min_bytes: usize, what: &str) -> Result<(), WireError> {
        if count.saturating_mul(min_bytes) > self.buf.len() {
            return Err(WireError::Malformed(format!(
                "{count} {what} cannot fit in the {} bytes left",
                self.buf.len()
            )));
        }
        Ok(())
    }

    fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(format!(
                "{} bytes left over after the payload",
                self.buf.len()
            )))
        }
    }
}

/// A frame header as read from the wire, before the checksum is verified:
/// only magic, version and length have been checked, so the other fields may
/// still be corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The message type byte (not yet checked against [`MessageType`]).
    pub message_type: u8,
    /// The flags byte (not yet checked to be `0`).
    pub flags: u8,
    /// The request id.
    pub request_id: u64,
    /// The position.
    pub position: u64,
    /// The payload length, already checked against the limit.
    pub payload_len: u32,
}

impl Header {
    /// Parses the first [`HEADER_LEN`] bytes of a frame, checking magic,
    /// version and the payload length against `limits`, in that order.
    pub fn parse(bytes: &[u8; HEADER_LEN], limits: &Limits) -> Result<Self, WireError> {
        let mut r = Reader { buf: bytes };
        let magic = r.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = r.u16("version")?;
        if version != VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        let header = Header {
            message_type: r.u8("message type")?,
            flags: r.u8("flags")?,
            request_id: r.u64("request id")?,
            position: r.u64("position")?,
            payload_len: r.u32("payload length")?,
        };
        let max = u64::try_from(limits.max_payload).unwrap_or(u64::MAX);
        if u64::from(header.payload_len) > max {
            return Err(WireError::TooLarge {
                len: u64::from(header.payload_len),
                max,
            });
        }
        Ok(header)
    }

    /// Bytes of the whole frame: header, payload and checksum.
    pub fn frame_len(&self) -> usize {
        // Saturating only matters on 16- and 32-bit targets, where such a
        // frame could not be held in memory anyway.
        (self.payload_len as usize).saturating_add(HEADER_LEN + CHECKSUM_LEN)
    }
}

/// One frame: the header fields that are not fixed, and the message.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// The request the frame belongs to (see the module docs per type).
    pub request_id: u64,
    /// Sequence position of the first row or token (see the module docs).
    pub position: u64,
    /// The message.
    pub message: Message,
}

impl Frame {
    /// A frame from its parts.
    pub fn new(request_id: u64, position: u64, message: Message) -> Self {
        Frame {
            request_id,
            position,
            message,
        }
    }

    /// The frame's bytes, checksum included.
    ///
    /// Fails when the message is invalid (e.g. an empty layer range or
    /// activations whose data does not match their shape), so that a peer
    /// never sends what it would refuse, or when the payload exceeds
    /// `u32::MAX` bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64 + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.message.message_type() as u8);
        out.push(0); // flags
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // payload length, patched below
        self.message.write_payload(&mut out)?;
        let len = out.len() - HEADER_LEN;
        let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
            len: len as u64,
            max: u64::from(u32::MAX),
        })?;
        out[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&len32.to_le_bytes());
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        Ok(out)
    }

    /// Decodes exactly one frame from `bytes`, checking in the order given in
    /// the module docs. Never panics, and allocates only for values present
    /// in `bytes`.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let header_bytes = bytes
            .first_chunk::<HEADER_LEN>()
            .ok_or(WireError::Truncated {
                needed: HEADER_LEN,
                have: bytes.len(),
            })?;
        let header = Header::parse(header_bytes, limits)?;
        let total = header.frame_len();
        if bytes.len() < total {
            return Err(WireError::Truncated {
                needed: total,
                have: bytes.len(),
            });
        }
        let body_end = total - CHECKSUM_LEN;
        let (signed, checksum) = bytes[..total].split_at(body_end);
        let expected = blake3::Hash::from_slice(checksum).map_err(|_| WireError::Checksum)?;
        // `blake3::Hash` compares in constant time.
        if blake3::hash(signed) != expected {
            return Err(WireError::Checksum);
        }
        if bytes.len() > total {
            return Err(WireError::Malformed(format!(
                "{} bytes after the frame",
                bytes.len() - total
            )));
        }
        let ty = MessageType::from_u8(header.message_type)
            .ok_or(WireError::UnknownType(header.message_type))?;
        if header.flags != 0 {
            return Err(WireError::Malformed(format!(
                "reserved flags are {:#04x}, not 0",
                header.flags
            )));
        }
        let mut r = Reader {
            buf: &signed[HEADER_LEN..],
        };
        let message = Message::read_payload(ty, &mut r)?;
        r.finish()?;
        Ok(Frame {
            request_id: header.request_id,
            position: header.position,
            message,
        })
    }
}

/// Reads one frame from a blocking stream.
///
/// The header is checked (magic, version, length limit) before the payload is
/// read, and the payload buffer grows only as bytes arrive, so a peer that
/// claims a large payload and then stalls or hangs up costs no more memory
/// than it sent. Returns [`WireError::Closed`] when the stream ends before
/// the first byte of a frame, [`WireError::Truncated`] when it ends inside
/// one, and [`WireError::Io`] for stream errors (set a read timeout on the
/// socket to bound the wait). After an error in the header the stream is out
/// of step and should be closed; after a checksum or payload error the whole
/// frame has been consumed.
pub fn read_frame<R: Read + ?Sized>(r: &mut R, limits: &Limits) -> Result<Frame, WireError> {
    let mut header = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match r.read(&mut header[have..]) {
            Ok(0) if have == 0 => return Err(WireError::Closed),
            Ok(0) => {
                return Err(WireError::Truncated {
                    needed: HEADER_LEN,
                    have,
                })
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let parsed = Header::parse(&header, limits)?;
    let total = parsed.frame_len();
    let rest = total - HEADER_LEN;
    // Start small: `read_to_end` grows the buffer as data arrives, bounded by
    // `take`, rather than trusting the claimed length up front.
    let mut buf = Vec::with_capacity(HEADER_LEN + rest.min(64 << 10));
    buf.extend_from_slice(&header);
    r.take(rest as u64).read_to_end(&mut buf)?;
    if buf.len() < total {
        return Err(WireError::Truncated {
            needed: total,
            have: buf.len(),
        });
    }
    Frame::decode(&buf, limits)
}

/// Writes one frame to a blocking stream and flushes it, so that a frame
/// behind a `BufWriter` is on its way when this returns.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let bytes = frame.encode()?;
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelId {
        ModelId(*blake3::hash(b"test model").as_bytes())
    }

    /// A deterministic test matrix with values of mixed sign and magnitude.
    fn matrix(rows: u32, cols: u32, seed: u32) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let t =
                    (i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32;
                (t - 0.5) * 8.0 * if i % 7 == 0 { 10.0 } else { 1.0 }
            })
            .collect()
    }

    fn round_trip(frame: &Frame) -> Frame {
        let bytes = frame.encode().expect("encode");
        assert_eq!(
            bytes.len(),
            Header::parse(bytes.first_chunk().expect("header"), &Limits::default())
                .expect("header")
                .frame_len()
        );
        Frame::decode(&bytes, &Limits::default()).expect("decode")
    }

    #[test]
    fn wire_round_trips_every_message_and_encoding() {
        let mut frames = vec![
            Frame::new(
                0,
                0,
                Message::Hello(Hello {
                    model_id: model(),
                    layers: 0..9,
                }),
            ),
            Frame::new(
                0,
                0,
                Message::HelloAck(HelloAck {
                    span: Hello {
                        model_id: model(),
                        layers: 9..18,
                    },
                    signer: Some([5; 64]),
                }),
            ),
            Frame::new(
                7,
                0,
                Message::Forward(Forward {
                    model_id: model(),
                    layers: 0..9,
                    reply: Encoding::F32,
                    head: HeadReply::LastLogits,
                    input: ForwardInput::Tokens(vec![2, 105, 262_143, u32::MAX]),
                }),
            ),
            Frame::new(7, 12, Message::End),
            Frame::new(
                1,
                2,
                Message::Ping(Ping {
                    sent_at_micros: 123_456_789,
                    payload: vec![0xAB; 1000],
                }),
            ),
            Frame::new(
                1,
                2,
                Message::Pong(Ping {
                    sent_at_micros: u64::MAX,
                    payload: vec![],
                }),
            ),
            Frame::new(
                u64::MAX,
                u64::MAX,
                Message::Error(ErrorReply {
                    code: ErrorCode::WrongLayers,
                    message: "nicht hier — 层".into(),
                }),
            ),
            Frame::new(3, 0, Message::Prove(vec![])),
            Frame::new(
                3,
                0,
                Message::Prove(vec![ProveStep {
                    position: u64::MAX,
                    token: 262_143,
                    sampler: ProveSampler::Sample {
                        temperature: 1.5,
                        r: u64::MAX,
                    },
                }]),
            ),
            Frame::new(3, 0, Message::Proofs(ProofsReply::default())),
        ];
        for (i, encoding) in [Encoding::F32, Encoding::F16, Encoding::Q8]
            .into_iter()
            .enumerate()
        {
            let a = Activations::encode(&matrix(3, 5, i as u32), 3, 5, encoding).expect("encode");
            frames.push(Frame::new(
                7,
                4,
                Message::Forward(Forward {
                    model_id: model(),
                    layers: 9..18,
                    reply: Encoding::F32,
                    head: HeadReply::LastLogits,
                    input: ForwardInput::Activations(a.clone()),
                }),
            ));
            frames.push(Frame::new(
                7,
                4,
                Message::Output(Output {
                    activations: a,
                    signature: (i == 1).then_some([9; 32]),
                }),
            ));
        }
        for code in 1..=8 {
            let code = ErrorCode::from_u16(code).expect("known code");
            frames.push(Frame::new(
                3,
                0,
                Message::Error(ErrorReply {
                    code,
                    message: String::new(),
                }),
            ));
        }
        for frame in &frames {
            assert_eq!(&round_trip(frame), frame);
        }
    }

    #[test]
    fn wire_header_layout_matches_the_spec() {
        let frame = Frame::new(0x0102_0304_0506_0708, 42, Message::End);
        let bytes = frame.encode().expect("encode");
        assert_eq!(bytes.len(), HEADER_LEN + CHECKSUM_LEN);
        assert_eq!(&bytes[0..4], b"ZKIW");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(bytes[6], 5);
        assert_eq!(bytes[7], 0);
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[16..24], &[42, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[24..28], &[0, 0, 0, 0]);
        assert_eq!(&bytes[28..], blake3::hash(&bytes[..28]).as_bytes());

        // Hello payload: model id, start, end.
        let hello = Frame::new(
            0,
            0,
            Message::Hello(Hello {
                model_id: model(),
                layers: 3..7,
            }),
        );
        let bytes = hello.encode().expect("encode");
        assert_eq!(&bytes[24..28], &40u32.to_le_bytes());
        assert_eq!(&bytes[28..60], &model().0);
        assert_eq!(&bytes[60..68], &[3, 0, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn wire_f32_is_exact() {
        let values = matrix(4, 33, 1);
        let a = Activations::encode(&values, 4, 33, Encoding::F32).expect("encode");
        assert_eq!(a.byte_len(), 4 * 33 * 4);
        assert_eq!(a.to_f32().expect("decode"), values);
        // Non-finite values travel unchanged as F32.
        let odd = [f32::INFINITY, f32::NEG_INFINITY, -0.0, f32::MIN_POSITIVE];
        let a = Activations::encode(&odd, 1, 4, Encoding::F32).expect("encode");
        assert_eq!(a.to_f32().expect("decode"), odd);
    }

    #[test]
    fn wire_f16_relative_error_is_below_1e_3() {
        // Normal f16 range: 6.1e-5 ..= 65504, both signs.
        let mut values = Vec::new();
        let mut x = 6.2e-5f32;
        while x < 47_000.0 {
            values.push(x);
            values.push(-x * 1.37);
            x *= 1.011;
        }
        values.truncate(values.len() / 16 * 16);
        let rows = (values.len() / 16) as u32;
        let a = Activations::encode(&values, rows, 16, Encoding::F16).expect("encode");
        assert_eq!(a.byte_len(), values.len() * 2);
        let back = a.to_f32().expect("decode");
        let worst = values
            .iter()
            .zip(&back)
            .map(|(x, y)| ((x - y) / x).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-3, "worst relative error {worst}");
        assert!(worst > 0.0, "f16 should be lossy on these values");
    }

    #[test]
    fn wire_f16_refuses_overflow() {
        let err = Activations::encode(&[1.0, 70_000.0], 1, 2, Encoding::F16).unwrap_err();
        assert!(matches!(err, WireError::Encode(_)), "{err:?}");
        // The largest f16 value still encodes.
        let a = Activations::encode(&[65504.0], 1, 1, Encoding::F16).expect("encode");
        assert_eq!(a.to_f32().expect("decode"), [65504.0]);
    }

    #[test]
    fn wire_q8_error_is_at_most_half_a_step() {
        let (rows, cols) = (6u32, 640u32);
        let mut values = matrix(rows, cols, 9);
        // A zero row and a row of one tiny and one huge value.
        values[cols as usize..2 * cols as usize].fill(0.0);
        values[2 * cols as usize] = 1e-30;
        values[2 * cols as usize + 1] = -3e30;
        let a = Activations::encode(&values, rows, cols, Encoding::Q8).expect("encode");
        let back = a.to_f32().expect("decode");
        for (r, (row, got)) in values
            .chunks(cols as usize)
            .zip(back.chunks(cols as usize))
            .enumerate()
        {
            let scale = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let stored = q8_scale(&a.data[r * (cols as usize + 4)..]);
            assert_eq!(stored, scale, "row {r}");
            for (x, y) in row.iter().zip(got) {
                // Half a step, plus float rounding in x / scale and q * scale.
                assert!(
                    (x - y).abs() <= scale * (0.5 + 1e-4),
                    "row {r}: {x} -> {y}, scale {scale}"
                );
            }
        }
        assert!(back[cols as usize..2 * cols as usize]
            .iter()
            .all(|&y| y == 0.0));
        assert_eq!(q8_scale(&a.data[cols as usize + 4..]), 0.0);
    }

    #[test]
    fn wire_q8_is_at_most_027_of_f32() {
        for cols in [640u32, 1152, 2560] {
            let values = matrix(3, cols, cols);
            let f32s = Activations::encode(&values, 3, cols, Encoding::F32).expect("f32");
            let q8 = Activations::encode(&values, 3, cols, Encoding::Q8).expect("q8");
            assert_eq!(q8.byte_len(), 3 * (4 + cols as usize));
            let ratio = q8.byte_len() as f64 / f32s.byte_len() as f64;
            assert!(ratio <= 0.27, "cols {cols}: ratio {ratio}");
        }
    }

    #[test]
    fn wire_q8_refuses_non_finite_input() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = Activations::encode(&[1.0, bad], 1, 2, Encoding::Q8).unwrap_err();
            assert!(matches!(err, WireError::Encode(_)), "{err:?}");
        }
    }

    #[test]
    fn wire_encode_checks_shape() {
        for (len, rows, cols) in [(5, 2, 3), (0, 0, 3), (0, 3, 0), (1, u32::MAX, u32::MAX)] {
            let values = vec![0.5; len];
            let err = Activations::encode(&values, rows, cols, Encoding::F32).unwrap_err();
            assert!(
                matches!(err, WireError::Encode(_)),
                "{rows}x{cols}: {err:?}"
            );
        }
    }

    #[test]
    fn wire_to_f32_refuses_bad_shapes_without_allocating() {
        // Hand-built values with lying shapes: validation must fail before
        // `rows * cols` (here about 1.8e19) is ever allocated.
        for encoding in [Encoding::F32, Encoding::F16, Encoding::Q8] {
            for (rows, cols, len) in [(u32::MAX, u32::MAX, 16), (0, 5, 0), (5, 0, 0), (2, 2, 3)] {
                let a = Activations {
                    rows,
                    cols,
                    encoding,
                    data: vec![0; len],
                };
                let err = a.to_f32().unwrap_err();
                assert!(matches!(err, WireError::Malformed(_)), "{err:?}");
            }
        }
        let mut q8 = Activations::encode(&[1.0, -2.0], 1, 2, Encoding::Q8).expect("encode");
        for scale in [f32::NAN, f32::INFINITY, -1.0] {
            q8.data[..4].copy_from_slice(&scale.to_le_bytes());
            assert!(
                matches!(q8.to_f32(), Err(WireError::Malformed(_))),
                "scale {scale}"
            );
        }
    }

    #[test]
    fn wire_encode_refuses_what_decode_would_refuse() {
        let empty_range = Frame::new(
            0,
            0,
            Message::Hello(Hello {
                model_id: model(),
                layers: 4..4,
            }),
        );
        assert!(matches!(empty_range.encode(), Err(WireError::Encode(_))));
        let no_tokens = Frame::new(
            0,
            0,
            Message::Forward(Forward {
                model_id: model(),
                layers: 0..1,
                reply: Encoding::F32,
                head: HeadReply::LastLogits,
                input: ForwardInput::Tokens(vec![]),
            }),
        );
        assert!(matches!(no_tokens.encode(), Err(WireError::Encode(_))));
        let lying = Frame::new(
            0,
            0,
            Message::Output(Output {
                activations: Activations {
                    rows: 2,
                    cols: 2,
                    encoding: Encoding::F32,
                    data: vec![0; 15],
                },
                signature: None,
            }),
        );
        assert!(matches!(lying.encode(), Err(WireError::Malformed(_))));
    }

    #[test]
    fn token_ids_travel_exactly_and_nothing_else_reads_as_one() {
        let ids = [0, 1, 262_143, (1 << 24) - 1];
        let answer = Activations::of_token_ids(&ids).expect("encode");
        assert_eq!((answer.rows, answer.cols), (4, 1));
        assert_eq!(answer.to_token_ids().expect("decode"), ids);
        assert!(matches!(
            Activations::of_token_ids(&[1 << 24]),
            Err(WireError::Encode(_))
        ));
        for bad in [-1.0, 2.5, 16_777_216.0, f32::NAN] {
            let a = Activations::encode(&[3.0, bad], 2, 1, Encoding::F32).expect("encode");
            assert!(
                matches!(a.to_token_ids(), Err(WireError::Malformed(_))),
                "{bad} read as a token id"
            );
        }
        let two_columns = Activations::encode(&[1.0, 2.0], 1, 2, Encoding::F32).expect("encode");
        assert!(matches!(
            two_columns.to_token_ids(),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn wire_error_codes_round_trip_and_map() {
        for n in 0..=20u16 {
            match ErrorCode::from_u16(n) {
                Some(code) => assert_eq!(code.as_u16(), n),
                None => assert!(n == 0 || n > 8),
            }
        }
        let cases: Vec<(WireError, ErrorCode)> = vec![
            (WireError::BadMagic(*b"HTTP"), ErrorCode::Malformed),
            (
                WireError::Truncated {
                    needed: 60,
                    have: 3,
                },
                ErrorCode::Malformed,
            ),
            (WireError::UnknownType(99), ErrorCode::Malformed),
            (WireError::Malformed("x".into()), ErrorCode::Malformed),
            (WireError::TooLarge { len: 5, max: 4 }, ErrorCode::TooLarge),
            (WireError::Checksum, ErrorCode::Checksum),
            (
                WireError::UnsupportedVersion(2),
                ErrorCode::UnsupportedVersion,
            ),
            (
                WireError::WrongModel {
                    served: model(),
                    requested: ModelId([0; 32]),
                },
                ErrorCode::WrongModel,
            ),
            (
                WireError::WrongLayers {
                    served: 0..9,
                    requested: 9..18,
                },
                ErrorCode::WrongLayers,
            ),
            (WireError::UnknownRequest(5), ErrorCode::UnknownRequest),
            (WireError::Internal("oom".into()), ErrorCode::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
            let frame = err.to_frame(11, 22);
            let back = round_trip(&frame);
            assert_eq!((back.request_id, back.position), (11, 22));
            let Message::Error(reply) = back.message else {
                panic!("not an error frame")
            };
            assert_eq!(reply.code, code);
            assert_eq!(reply.message, err.to_string());
            assert_eq!(reply.into_error().code(), code);
        }
    }

    #[test]
    fn wire_reader_never_reads_past_the_end() {
        let mut r = Reader { buf: &[1, 2, 3] };
        assert!(matches!(r.u32("x"), Err(WireError::Malformed(_))));
        assert_eq!(r.u16("y").expect("two bytes"), 0x0201);
        assert!(matches!(
            r.bytes(usize::MAX, "z"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            Reader { buf: &[0] }.finish(),
            Err(WireError::Malformed(_))
        ));
    }
}
