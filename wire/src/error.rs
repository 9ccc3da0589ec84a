//! What can go wrong with a frame, and the codes peers send for it.

use std::io;
use std::ops::Range;

use models::model_id::ModelId;

use crate::{ErrorReply, Frame, Message, VERSION};

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
    /// The node is at one of its limits (connections, bytes in flight,
    /// requests, KV cache): try later or another node.
    Busy = 9,
    /// The request belongs to another peer: only the peer (or, over plain
    /// TCP, the address) that opened a request may feed or end it.
    Forbidden = 10,
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
            9 => ErrorCode::Busy,
            10 => ErrorCode::Forbidden,
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
    /// The peer stopped sending inside a frame for longer than the reader waits.
    #[error("frame stalled after {have} of {needed} bytes")]
    Stalled {
        /// Bytes the frame needs (the header alone while it is incomplete).
        needed: usize,
        /// Bytes that came.
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
    /// The node is at one of its limits.
    #[error("busy: {0}")]
    Busy(String),
    /// The request was opened by another peer.
    #[error("request {0} belongs to another peer")]
    NotYours(u64),
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
            | WireError::Stalled { .. }
            | WireError::UnknownType(_)
            | WireError::Malformed(_) => ErrorCode::Malformed,
            WireError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            WireError::TooLarge { .. } => ErrorCode::TooLarge,
            WireError::Checksum => ErrorCode::Checksum,
            WireError::WrongModel { .. } => ErrorCode::WrongModel,
            WireError::WrongLayers { .. } => ErrorCode::WrongLayers,
            WireError::UnknownRequest(_) => ErrorCode::UnknownRequest,
            WireError::Busy(_) => ErrorCode::Busy,
            WireError::NotYours(_) => ErrorCode::Forbidden,
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
