//! Frames: header, payload and checksum, over blocking streams.

use std::io::{self, Read, Write};

use crate::reader::Reader;
use crate::{Limits, Message, MessageType, WireError, CHECKSUM_LEN, HEADER_LEN, MAGIC, VERSION};

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
                "reserved flags are 0x{:02x}, not 0",
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
