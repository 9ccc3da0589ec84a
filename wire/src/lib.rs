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
//! ## Transports
//!
//! The same frames travel over either of two transports, unchanged in bytes
//! and meaning: a plain TCP connection (`zkinfer serve`, `--nodes nodes.toml`),
//! or a libp2p stream of protocol `/zkinfer/wire/1` on a Noise-encrypted,
//! yamux-multiplexed connection whose peer is authenticated by its ed25519
//! key (`serve --network`, `generate --network`; docs/network.md). One
//! connection or stream carries one link, frames in order, one answer per
//! frame; the size limits, timeouts and error codes below hold on both.
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
//! | 15   | Sampled  | node   | as in the Forward    | as in the Forward              |
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
//!   every row, `2` the token a sampler picks from the last row's logits,
//!   followed by the sampler as in Prove; other shards ignore it, but the
//!   sampler must still parse), input tag `u8`, input:
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
//!   A head reply `2` is answered with Sampled instead.
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
//!   once, then a signature count `s` `u32` and `s` signatures (32 bytes
//!   each): from a node that signs, one per proof of the bundle in order, on
//!   the proof's receipt (`verifier::receipt::ProofReceipt`: which logits,
//!   by the digests its hop receipts signed, the proof's commitments open
//!   to), else `s = 0`; then failure count `f` `u32`, `f` times `position`
//!   `u64`, byte count `u32` and UTF-8 text: steps the node could not prove,
//!   and why.
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
//!   boundaries in F32, input and output as they crossed the wire; the
//!   output of a head that answered Sampled is the logits row it picked
//!   from, `[1, vocab]` F32).
//! - **Sampled** (15), from the shard with the head for head reply `2`:
//!   `token` `u32`, `logprob` (f64 bits, `u64`: the token's log-probability
//!   in nats at the sampler's temperature as a proof of the pick states it,
//!   finite and `<= 0`), `logits_blake3` (32 bytes: blake3 of the logits row
//!   `[1, vocab]` as F32 little-endian), then a receipt tag and signature as
//!   in Output, on the receipt whose output digest is `logits_blake3`. The
//!   node picks exactly as a client would from those logits
//!   (`circuits::sample_token` at the proof's fixed point) and keeps the row
//!   for proofs and audits; 77 bytes of payload instead of `4 * vocab`.
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
//! | 3        | Q6o  | per row: 16 outliers, then 6-bit blocks of 16 (below) | `rows * row_len(cols)` |
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
//! Q6o keeps each row's largest values apart (Gemma 3's residual stream
//! holds a few values in the thousands, some past f16's range, beside values
//! near 10). Per row of `c <= 65536` columns, with `k = min(16, c)`: `k`
//! outliers, each a `u16` column index and the `f32` value, indices strictly
//! increasing (the `k` largest `|x|`, lower index first on ties); then
//! `ceil(c / 16)` blocks of `n` values (16, the last one fewer), each an
//! `f16` scale (finite, sign bit clear; this encoder writes `max|x| / 31` over
//! the block's other values) and `ceil(6n / 8)` bytes of `n` 6-bit codes,
//! least significant bit first, unused bits 0. Code `q + 32` decodes as
//! `q * scale` for `q` in `-31 ..= 31`; code 0 is malformed, so are codes other
//! than 32 under a zero scale or at an outlier's column. So
//! `row_len(c) = 6k + 14 * floor(c / 16) + (2 + ceil(6 (c mod 16) / 8))` when
//! `c mod 16 > 0`: 656 bytes for 640 columns. Q6o refuses non-finite input
//! and a block scale that overflows f16.
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
//! | 9    | Busy               | the node is at a limit (connections, bytes in flight, requests, KV cache); try later or elsewhere |
//! | 10   | Forbidden          | the request belongs to another peer: only the peer that opened it (over libp2p its peer id, over plain TCP its IP address) may send it Forward or End |
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

mod activations;
mod error;
mod frame;
mod message;
pub mod outliers;
mod reader;
pub mod transport;

pub use activations::{Activations, Encoding, ENCODINGS};
pub use error::{ErrorCode, WireError};
pub use frame::{read_frame, write_frame, Frame, Header};
pub use message::{
    Boundary, ErrorReply, Forward, ForwardInput, HeadReply, Hello, HelloAck, Message, MessageType,
    Output, Ping, ProofFailure, ProofsReply, ProveStep, ProvenBundle, Sampled, SignedStep,
    TokenSampler,
};

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

#[cfg(test)]
mod tests;
