//! Activation matrices and their encodings (F32, F16, Q8, Q6o).

use half::f16;

use crate::outliers;
use crate::reader::Reader;
use crate::WireError;

/// Token ids travel as f32 values (greedy answers), exact below this.
const MAX_TOKEN_ID: u32 = 1 << 24;

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
    /// Per row the 16 largest values exactly and the others in 6 bits with
    /// an f16 scale per 16 (`crate::outliers`): 0.26× the bytes of F32 for
    /// rows of 640, absolute error at most half a block's scale.
    Q6o = 3,
}

/// Every encoding, in wire-byte order.
pub const ENCODINGS: [Encoding; 4] = [Encoding::F32, Encoding::F16, Encoding::Q8, Encoding::Q6o];

impl Encoding {
    /// Its name in files and on command lines: `f32`, `f16`, `q8`, `q6o`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F16 => "f16",
            Encoding::Q8 => "q8",
            Encoding::Q6o => "q6o",
        }
    }

    /// The encoding named `name` ([`Encoding::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        ENCODINGS.into_iter().find(|e| e.name() == name)
    }

    /// The encoding for a byte on the wire, `None` for an unknown byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        ENCODINGS.into_iter().find(|e| *e as u8 == byte)
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
            Encoding::Q6o => rows.checked_mul(outliers::row_len(cols)?),
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
            Encoding::Q6o => {
                for (r, row) in values.chunks_exact(cols as usize).enumerate() {
                    outliers::encode_row(row, r, &mut data)?;
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
    /// the shape and encoding call for, that every Q8 scale is finite and
    /// non-negative, and that Q6o rows are in their one canonical form.
    /// Errors are [`WireError::Malformed`].
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
        if self.encoding == Encoding::Q6o {
            self.q6o_values()?;
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
            Encoding::Q6o => self.q6o_values()?,
        };
        Ok(values)
    }

    /// The values of a Q6o matrix whose length was checked.
    fn q6o_values(&self) -> Result<Vec<f32>, WireError> {
        let cols = self.cols as usize;
        let row_len = outliers::row_len(cols)
            .ok_or_else(|| WireError::Malformed(format!("q6o activations of {cols} columns")))?;
        let mut out = Vec::with_capacity(self.rows as usize * cols);
        for (r, row) in self.data.chunks_exact(row_len).enumerate() {
            outliers::decode_row(row, cols, r, &mut out)?;
        }
        Ok(out)
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.validate()?;
        out.extend_from_slice(&self.rows.to_le_bytes());
        out.extend_from_slice(&self.cols.to_le_bytes());
        out.push(self.encoding as u8);
        out.extend_from_slice(&self.data);
        Ok(())
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
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
pub(crate) fn q8_scale(row: &[u8]) -> f32 {
    match row.first_chunk::<4>() {
        Some(bytes) => f32::from_le_bytes(*bytes),
        None => f32::NAN,
    }
}
