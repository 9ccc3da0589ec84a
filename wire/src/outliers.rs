//! The `q6o` activation codec: per row, the largest values exactly and the
//! rest in 6 bits.
//!
//! Gemma 3's residual stream holds a few values in the thousands (above
//! f16's range at some positions) beside values near 10, and the model is
//! most sensitive to the absolute error of its largest values. So each row
//! sends its [`OUTLIERS`] largest-magnitude values as they are, and every
//! other value in 6 bits with one f16 scale per [`BLOCK`] values.
//!
//! Row layout (`c` columns, `k = min(16, c)`):
//! - `k` outliers, each a `u16` column index and the `f32` value, indices
//!   strictly increasing: the `k` largest `|x|`, the lower index first on ties;
//! - `ceil(c / 16)` blocks of `n` values (16, the last one fewer): an `f16`
//!   scale `s = max |x| / 31` over the block's other values (finite, `>= 0`),
//!   then `ceil(6n / 8)` bytes holding `n` 6-bit codes, least significant bit
//!   first, unused high bits 0. Code `q + 32` stands for `q · s` with `q` in
//!   `-31 ..= 31`; code 0 is invalid, and an outlier's column holds code 32.
//!
//! 656 bytes for a row of 640 (0.256× f32). Decoding refuses what the
//! encoder never writes: code 0, a negative or non-finite scale, bits past
//! the last code, codes under a zero scale or at an outlier's column, and
//! outlier indices out of order.

use half::f16;

use crate::WireError;

/// Values per row sent exactly.
pub const OUTLIERS: usize = 16;
/// Values sharing one scale.
pub const BLOCK: usize = 16;
const MAX_CODE: f32 = 31.0;
const ZERO: u8 = 32;

/// Bytes of one row of `cols` values, `None` past `u16` column indices.
pub(crate) fn row_len(cols: usize) -> Option<usize> {
    if cols == 0 || cols > 1 << 16 {
        return None;
    }
    let full = cols / BLOCK;
    let tail = cols % BLOCK;
    let tail_len = if tail == 0 {
        0
    } else {
        2 + (6 * tail).div_ceil(8)
    };
    Some(6 * cols.min(OUTLIERS) + full * (2 + 6 * BLOCK / 8) + tail_len)
}

/// Appends the encoding of `row` (`cols <= 65536`, checked by the caller
/// through [`row_len`]).
pub(crate) fn encode_row(row: &[f32], r: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
    if let Some(c) = row.iter().position(|x| !x.is_finite()) {
        return Err(WireError::Encode(format!(
            "non-finite value {} at row {r}, column {c} cannot be q6o",
            row[c]
        )));
    }
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
    let mut outliers = order[..row.len().min(OUTLIERS)].to_vec();
    outliers.sort_unstable();
    let mut is_outlier = vec![false; row.len()];
    for &i in &outliers {
        is_outlier[i] = true;
        out.extend_from_slice(&(i as u16).to_le_bytes());
        out.extend_from_slice(&row[i].to_le_bytes());
    }
    for (b, block) in row.chunks(BLOCK).enumerate() {
        let bulk = |j: usize| !is_outlier[b * BLOCK + j];
        let max = (0..block.len())
            .filter(|&j| bulk(j))
            .fold(0f32, |m, j| m.max(block[j].abs()));
        let scale = f16::from_f32(max / MAX_CODE);
        if scale.is_infinite() {
            return Err(WireError::Encode(format!(
                "row {r}: block {b}'s scale {} overflows f16",
                max / MAX_CODE
            )));
        }
        out.extend_from_slice(&scale.to_le_bytes());
        let s = scale.to_f32();
        let codes = (0..block.len()).map(|j| {
            if !bulk(j) || s == 0.0 {
                ZERO
            } else {
                ((block[j] / s).round().clamp(-MAX_CODE, MAX_CODE) as i8 + ZERO as i8) as u8
            }
        });
        pack(codes, block.len(), out);
    }
    Ok(())
}

/// Decodes one row (`bytes.len() == row_len(cols)`, checked by the caller)
/// into `out`, refusing anything but the canonical form.
pub(crate) fn decode_row(
    bytes: &[u8],
    cols: usize,
    r: usize,
    out: &mut Vec<f32>,
) -> Result<(), WireError> {
    let bad = |what: String| WireError::Malformed(format!("q6o row {r}: {what}"));
    let k = cols.min(OUTLIERS);
    let (head, mut rest) = bytes.split_at(6 * k);
    let mut outliers = Vec::with_capacity(k);
    for entry in head.chunks_exact(6) {
        let index = usize::from(u16::from_le_bytes([entry[0], entry[1]]));
        let value = f32::from_le_bytes([entry[2], entry[3], entry[4], entry[5]]);
        if index >= cols || outliers.last().is_some_and(|&(last, _)| index <= last) {
            return Err(bad(format!("outlier index {index} out of order or range")));
        }
        if !value.is_finite() {
            return Err(bad(format!("outlier {value} at column {index}")));
        }
        outliers.push((index, value));
    }
    let mut codes = Vec::with_capacity(cols);
    let mut scales = Vec::with_capacity(cols.div_ceil(BLOCK));
    for b in 0..cols.div_ceil(BLOCK) {
        let n = BLOCK.min(cols - b * BLOCK);
        let packed = (6 * n).div_ceil(8);
        let scale = f16::from_le_bytes([rest[0], rest[1]]);
        if !scale.is_finite() || scale.is_sign_negative() {
            return Err(bad(format!("block {b} has scale {scale}")));
        }
        let block = unpack(&rest[2..2 + packed], n)
            .ok_or_else(|| bad(format!("block {b} has bits set past its last code")))?;
        if block.contains(&0) {
            return Err(bad(format!("block {b} holds code 0")));
        }
        if scale.to_f32() == 0.0 && block.iter().any(|&c| c != ZERO) {
            return Err(bad(format!(
                "block {b} has scale 0 and codes other than 32"
            )));
        }
        codes.extend(block);
        scales.push(scale.to_f32());
        rest = &rest[2 + packed..];
    }
    let start = out.len();
    out.extend(
        codes
            .iter()
            .enumerate()
            .map(|(i, &code)| f32::from(code as i8 - ZERO as i8) * scales[i / BLOCK]),
    );
    for (index, value) in outliers {
        if codes[index] != ZERO {
            return Err(bad(format!(
                "column {index} is an outlier but holds a code"
            )));
        }
        out[start + index] = value;
    }
    Ok(())
}

/// `n` 6-bit codes, least significant bit first.
fn pack(codes: impl Iterator<Item = u8>, n: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + (6 * n).div_ceil(8), 0);
    for (j, code) in codes.enumerate() {
        let bit = 6 * j;
        let word = u16::from(code) << (bit % 8);
        out[start + bit / 8] |= word as u8;
        if let Some(next) = out.get_mut(start + bit / 8 + 1) {
            *next |= (word >> 8) as u8;
        }
    }
}

/// The `n` codes of [`pack`], `None` if a bit past them is set.
fn unpack(bytes: &[u8], n: usize) -> Option<Vec<u8>> {
    let codes: Vec<u8> = (0..n)
        .map(|j| {
            let bit = 6 * j;
            let low = u16::from(bytes[bit / 8]);
            let high = u16::from(bytes.get(bit / 8 + 1).copied().unwrap_or(0));
            (((low | high << 8) >> (bit % 8)) & 0x3f) as u8
        })
        .collect();
    let used = 6 * n;
    let spare = bytes.len() * 8 - used;
    let last = bytes.last().copied().unwrap_or(0);
    (spare == 0 || last >> (8 - spare) == 0).then_some(codes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activations, Encoding};

    /// A row like Gemma 3's residual stream: values near 10, a few in the
    /// thousands and one past f16's range.
    fn residual_row(cols: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..cols)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = (x % 2001) as f32 / 100.0 - 10.0;
                match i % 97 {
                    5 => v * 400.0,
                    50 if i < 100 => 1.0e5,
                    _ => v,
                }
            })
            .collect()
    }

    fn encode(values: &[f32], rows: u32, cols: u32) -> Activations {
        Activations::encode(values, rows, cols, Encoding::Q6o).expect("encode")
    }

    #[test]
    fn outliers_travel_exactly_and_the_rest_within_half_a_step() {
        for cols in [1usize, 7, 16, 17, 100, 640] {
            let row = residual_row(cols, cols as u64);
            let a = encode(&row, 1, cols as u32);
            assert_eq!(a.data.len(), row_len(cols).unwrap());
            let back = a.to_f32().unwrap();
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()));
            let outliers = &order[..cols.min(OUTLIERS)];
            for &i in outliers {
                assert_eq!(back[i].to_bits(), row[i].to_bits(), "outlier {i} of {cols}");
            }
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let bulk: Vec<usize> = (b * BLOCK..b * BLOCK + block.len())
                    .filter(|i| !outliers.contains(i))
                    .collect();
                let max = bulk.iter().fold(0f32, |m, &i| m.max(row[i].abs()));
                let step = max / 31.0;
                for &i in &bulk {
                    let err = (back[i] - row[i]).abs();
                    assert!(
                        err <= step * 0.5001 + 1e-6,
                        "{cols}: column {i} off by {err}"
                    );
                }
            }
        }
        assert_eq!(row_len(640), Some(656));
    }

    #[test]
    fn zeros_and_rows_of_many_columns_round_trip() {
        let zeros = encode(&[0.0; 40], 2, 20);
        assert_eq!(zeros.to_f32().unwrap(), vec![0.0; 40]);
        assert!(Encoding::Q6o.data_len(1, 1 << 16).is_some());
        assert!(Encoding::Q6o.data_len(1, (1 << 16) + 1).is_none());
        for bad in [f32::NAN, f32::INFINITY] {
            let err = Activations::encode(&[1.0, bad], 1, 2, Encoding::Q6o).unwrap_err();
            assert!(matches!(err, WireError::Encode(_)), "{err:?}");
        }
    }

    /// Flipping any one bit of an encoded matrix gives another valid matrix
    /// or Malformed, never a panic.
    #[test]
    fn every_bit_flip_decodes_or_is_malformed() {
        let row = residual_row(40, 3);
        let a = encode(&row, 1, 40);
        let mut malformed = 0;
        for byte in 0..a.data.len() {
            for bit in 0..8 {
                let mut b = a.clone();
                b.data[byte] ^= 1 << bit;
                match b.to_f32() {
                    Ok(values) => assert_eq!(values.len(), 40),
                    Err(WireError::Malformed(_)) => malformed += 1,
                    Err(e) => panic!("byte {byte} bit {bit}: {e:?}"),
                }
            }
        }
        assert!(malformed > 0);
    }

    #[test]
    fn what_the_encoder_never_writes_is_malformed() {
        // 21 columns: the last block's 5 codes leave 2 bits unused.
        let cols = 21;
        let row = residual_row(cols, 9);
        let good = encode(&row, 1, cols as u32);
        let k = cols.min(OUTLIERS);
        let blocks = 6 * k;
        let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut a = good.clone();
            f(&mut a.data);
            a.to_f32()
        };
        type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "indices out of order",
                Box::new(|d: &mut Vec<u8>| d.swap(0, 6)),
            ),
            (
                "index past the row",
                Box::new(move |d: &mut Vec<u8>| {
                    d[6 * (k - 1)..6 * (k - 1) + 2].copy_from_slice(&200u16.to_le_bytes())
                }),
            ),
            (
                "non-finite outlier",
                Box::new(|d: &mut Vec<u8>| d[2..6].copy_from_slice(&f32::NAN.to_le_bytes())),
            ),
            (
                "negative scale",
                Box::new(move |d: &mut Vec<u8>| d[blocks + 1] |= 0x80),
            ),
            (
                "infinite scale",
                Box::new(move |d: &mut Vec<u8>| {
                    d[blocks..blocks + 2].copy_from_slice(&f16::INFINITY.to_le_bytes())
                }),
            ),
            (
                "code 0",
                Box::new(move |d: &mut Vec<u8>| d[blocks + 2] &= 0xc0),
            ),
            (
                "bits past the last code",
                Box::new(|d: &mut Vec<u8>| *d.last_mut().unwrap() |= 0x80),
            ),
        ];
        for (name, f) in cases {
            assert!(
                matches!(mutate(&*f), Err(WireError::Malformed(_))),
                "{name}"
            );
        }
        // A code at an outlier's column: outlier 0 sits in block 0 here.
        let first = usize::from(u16::from_le_bytes([good.data[0], good.data[1]]));
        assert!(first < BLOCK, "test row's first outlier is in block 0");
        let at_outlier = mutate(&|d: &mut Vec<u8>| {
            let bit = 6 * first;
            let byte = blocks + 2 + bit / 8;
            // Code 33 instead of 32: flip the lowest bit of the code.
            d[byte] ^= 1 << (bit % 8);
        });
        assert!(
            matches!(at_outlier, Err(WireError::Malformed(_))),
            "{at_outlier:?}"
        );
        // Codes under a zero scale.
        let zeros = encode(&[0.0; 20], 1, 20);
        let mut z = zeros.clone();
        z.data[blocks + 2] ^= 1;
        assert!(matches!(z.to_f32(), Err(WireError::Malformed(_))));
    }
}
