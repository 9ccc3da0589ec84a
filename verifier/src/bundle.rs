//! The proof bundle: a versioned binary file (see `docs/bundle.md`).
//!
//! Everything is little-endian. Parsing checks every length against the limits
//! below before allocating, every field against its domain, and the trailing
//! blake3 checksum, so a malformed file is an error, never a panic.

use halo2_proofs::pasta::Fp;

use circuits::fixed_point::{FixedPoint, Temperature};
use circuits::{CircuitShape, Sampler, StepStatement};

pub const MAGIC: &[u8; 8] = b"ZKINFERB";
pub const FORMAT_VERSION: u16 = 3;
/// Largest accepted proof, in bytes.
pub const MAX_PROOF_BYTES: usize = 1 << 24;
/// Most proofs in one bundle.
pub const MAX_PROOFS: usize = 1 << 20;
/// Largest bundle file read at all (about 50,000 proofs at the packaged model's
/// vocabulary).
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;
/// Bytes before the first proof: magic, version, shape, k, digest, count.
const HEADER_BYTES: usize = 8 + 2 + 4 + 1 + 1 + 2 + 2 + 2 + 1 + 32 + 4;
/// Bytes of one statement.
const STATEMENT_BYTES: usize = 8 + 4 + 8 + 1 + 4 + 8;
/// Bytes of a proof's randomness seed.
const SEED_BYTES: usize = 32;
/// Smallest logprob accepted, in log-probability units.
pub const MIN_LOGPROB: i64 = -(1 << 40);

/// One proof of `shape.steps` steps. A batch that is not full repeats its last
/// step; a step equal to the one before it in the same proof is padding (a real
/// generation never proves the same position twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    pub steps: Vec<StepStatement>,
    /// The seed of the proof's randomness: with the steps' logits it opens the
    /// proof's commitments to them (`circuits::opening`).
    pub seed: [u8; 32],
    pub bytes: Vec<u8>,
}

impl Proof {
    /// The instance column the proof is checked against.
    pub fn instance(&self) -> Vec<Fp> {
        self.steps.iter().flat_map(|s| s.instance()).collect()
    }

    /// Whether step `i` only pads the batch.
    pub fn is_padding(&self, i: usize) -> bool {
        i > 0 && self.steps[i] == self.steps[i - 1]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub shape: CircuitShape,
    pub vk_digest: [u8; 32],
    pub proofs: Vec<Proof>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not a zkinfer proof bundle (bad magic bytes)")]
    Magic,
    #[error("bundle format version {0} is not supported: this zkinfer reads version {FORMAT_VERSION} (prove a version-1 bundle again with this zkinfer; a newer version needs a newer zkinfer)")]
    Version(u16),
    #[error("the bundle is truncated (needed {needed} more bytes at offset {offset})")]
    Truncated { offset: usize, needed: usize },
    #[error("invalid bundle: {0}")]
    Invalid(String),
    #[error("the bundle checksum does not match: the file is corrupted")]
    Checksum,
    #[error("{0} trailing bytes after the bundle")]
    Trailing(usize),
    #[error("the file is larger than its header allows ({limit} bytes for its proofs)")]
    TooLarge { limit: u64 },
    #[error("reading the bundle: {0}")]
    Io(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BundleError> {
        let rest = self.bytes.len() - self.offset;
        if n > rest {
            return Err(BundleError::Truncated {
                offset: self.offset,
                needed: n - rest,
            });
        }
        let out = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BundleError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, BundleError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, BundleError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, BundleError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, BundleError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, BundleError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

fn invalid(what: impl Into<String>) -> BundleError {
    BundleError::Invalid(what.into())
}

impl Bundle {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let s = &self.shape;
        out.extend_from_slice(&(s.vocab as u32).to_le_bytes());
        out.push(s.fixed_point.frac_bits as u8);
        out.push(s.fixed_point.exp_bits as u8);
        out.extend_from_slice(&(s.steps as u16).to_le_bytes());
        out.extend_from_slice(&(s.lanes as u16).to_le_bytes());
        out.extend_from_slice(&(s.temperature.milli() as u16).to_le_bytes());
        out.push(s.k() as u8);
        out.extend_from_slice(&self.vk_digest);
        out.extend_from_slice(&(self.proofs.len() as u32).to_le_bytes());
        for proof in &self.proofs {
            out.extend_from_slice(&(proof.steps.len() as u16).to_le_bytes());
            for st in &proof.steps {
                out.extend_from_slice(&st.position.to_le_bytes());
                out.extend_from_slice(&st.token.to_le_bytes());
                out.extend_from_slice(&st.logprob.to_le_bytes());
                let (tag, r) = match st.sampler {
                    Sampler::Greedy => (0u8, 0u64),
                    Sampler::Sample { r, .. } => (1, r),
                };
                out.push(tag);
                out.extend_from_slice(&st.sampler.temperature().milli().to_le_bytes());
                out.extend_from_slice(&r.to_le_bytes());
            }
            out.extend_from_slice(&proof.seed);
            out.extend_from_slice(&(proof.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&proof.bytes);
        }
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        out
    }

    /// Reads a bundle from `input` without holding more than its header
    /// allows: the magic and version are checked on the first bytes, the
    /// header's proof count bounds the rest (and [`MAX_BUNDLE_BYTES`] bounds
    /// everything), then [`Bundle::from_bytes`] parses it.
    pub fn read(input: impl std::io::Read) -> Result<Bundle, BundleError> {
        use std::io::Read as _;
        let io = |e: std::io::Error| BundleError::Io(e.to_string());
        let mut input = input.take(MAX_BUNDLE_BYTES + 1);
        let mut bytes = Vec::with_capacity(HEADER_BYTES);
        (&mut input)
            .take(HEADER_BYTES as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let magic = bytes.len().min(MAGIC.len());
        if bytes[..magic] != MAGIC[..magic] {
            return Err(BundleError::Magic);
        }
        if bytes.len() < MAGIC.len() + 2 {
            return Err(BundleError::Truncated {
                offset: bytes.len(),
                needed: HEADER_BYTES - bytes.len(),
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(BundleError::Version(version));
        }
        if bytes.len() < HEADER_BYTES {
            return Err(BundleError::Truncated {
                offset: bytes.len(),
                needed: HEADER_BYTES - bytes.len(),
            });
        }
        let at = |offset: usize, n: usize| &bytes[offset..offset + n];
        let steps = u16::from_le_bytes(at(16, 2).try_into().expect("2 bytes")) as u64;
        let proofs = u32::from_le_bytes(at(HEADER_BYTES - 4, 4).try_into().expect("4 bytes"));
        if proofs == 0 || proofs as usize > MAX_PROOFS {
            return Err(invalid(format!(
                "{proofs} proofs (expected 1..={MAX_PROOFS})"
            )));
        }
        let per_proof =
            2 + steps * STATEMENT_BYTES as u64 + SEED_BYTES as u64 + 4 + MAX_PROOF_BYTES as u64;
        let limit = (HEADER_BYTES as u64 + proofs as u64 * per_proof + 32).min(MAX_BUNDLE_BYTES);
        (&mut input)
            .take(limit + 1 - bytes.len() as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(BundleError::TooLarge { limit });
        }
        Bundle::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BundleError::Magic);
        }
        let mut r = Reader {
            bytes,
            offset: MAGIC.len(),
        };
        let version = r.u16()?;
        if version != FORMAT_VERSION {
            return Err(BundleError::Version(version));
        }
        if bytes.len() < r.offset + 32 {
            return Err(BundleError::Truncated {
                offset: bytes.len(),
                needed: r.offset + 32 - bytes.len(),
            });
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != checksum {
            return Err(BundleError::Checksum);
        }
        let mut r = Reader {
            bytes: body,
            offset: r.offset,
        };
        let vocab = r.u32()? as usize;
        let fixed_point = FixedPoint {
            frac_bits: r.u8()? as u32,
            exp_bits: r.u8()? as u32,
        };
        let steps = r.u16()? as usize;
        let lanes = r.u16()? as usize;
        let temperature = Temperature::from_milli(r.u16()? as u32)
            .map_err(|e| invalid(format!("circuit shape: {e}")))?;
        let shape = CircuitShape::new(vocab, fixed_point, steps, lanes)
            .map_err(|e| invalid(format!("circuit shape: {e}")))?
            .with_temperature(temperature);
        let k = r.u8()?;
        if k as u32 != shape.k() {
            return Err(invalid(format!(
                "k = {k} does not match the shape (k = {})",
                shape.k()
            )));
        }
        let vk_digest = r.array::<32>()?;
        let n_proofs = r.u32()? as usize;
        if n_proofs == 0 || n_proofs > MAX_PROOFS {
            return Err(invalid(format!(
                "{n_proofs} proofs (expected 1..={MAX_PROOFS})"
            )));
        }
        let mut proofs = Vec::new();
        for p in 0..n_proofs {
            let n_steps = r.u16()? as usize;
            if n_steps != shape.steps {
                return Err(invalid(format!(
                    "proof {p} has {n_steps} steps, the shape has {}",
                    shape.steps
                )));
            }
            let steps = (0..n_steps)
                .map(|_| read_step(&mut r, &shape))
                .collect::<Result<Vec<_>, _>>()?;
            let seed = r.array::<SEED_BYTES>()?;
            let len = r.u32()? as usize;
            if len > MAX_PROOF_BYTES {
                return Err(invalid(format!(
                    "proof {p} is {len} bytes (limit {MAX_PROOF_BYTES})"
                )));
            }
            let bytes = r.take(len)?.to_vec();
            proofs.push(Proof { steps, seed, bytes });
        }
        if r.offset != body.len() {
            return Err(BundleError::Trailing(body.len() - r.offset));
        }
        Ok(Bundle {
            shape,
            vk_digest,
            proofs,
        })
    }

    /// The reported (non-padding) steps with the index of their proof, in order.
    pub fn steps(&self) -> impl Iterator<Item = (usize, &StepStatement)> {
        self.proofs.iter().enumerate().flat_map(|(i, p)| {
            p.steps
                .iter()
                .enumerate()
                .filter(move |(j, _)| !p.is_padding(*j))
                .map(move |(_, s)| (i, s))
        })
    }
}

fn read_step(r: &mut Reader<'_>, shape: &CircuitShape) -> Result<StepStatement, BundleError> {
    let vocab = shape.vocab;
    let position = r.u64()?;
    let token = r.u32()?;
    if token as usize >= vocab {
        return Err(invalid(format!(
            "token {token} outside the vocabulary of {vocab}"
        )));
    }
    let logprob = r.i64()?;
    if !(MIN_LOGPROB..=0).contains(&logprob) {
        return Err(invalid(format!("log-probability {logprob} out of range")));
    }
    let tag = r.u8()?;
    let milli = r.u32()?;
    let rand = r.u64()?;
    let sampler = match tag {
        0 if milli == Temperature::ONE.milli() && rand == 0 => Sampler::Greedy,
        0 => return Err(invalid("greedy step with a temperature or randomness")),
        1 => Sampler::Sample {
            temperature: Temperature::from_milli(milli).map_err(|e| invalid(e.to_string()))?,
            r: rand,
        },
        other => return Err(invalid(format!("sampler tag {other}"))),
    };
    // The circuit holds one temperature, in its exp table: a step claiming
    // another would be checked against the wrong softmax.
    if sampler.temperature() != shape.temperature {
        return Err(invalid(format!(
            "a step of {sampler} in a proof at temperature {}",
            shape.temperature
        )));
    }
    Ok(StepStatement {
        token,
        logprob,
        sampler,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn temperature() -> Temperature {
        Temperature::from_milli(600).unwrap()
    }

    fn bundle() -> Bundle {
        let shape = CircuitShape::new(64, FixedPoint::default(), 2, 1)
            .unwrap()
            .with_temperature(temperature());
        let step = |position| StepStatement {
            token: 3,
            logprob: -5,
            sampler: Sampler::Sample {
                temperature: temperature(),
                r: 9,
            },
            position,
        };
        Bundle {
            shape,
            vk_digest: [4; 32],
            proofs: vec![Proof {
                steps: vec![step(10), step(11)],
                seed: [5; 32],
                bytes: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn read_is_from_bytes_with_limits() {
        let b = bundle();
        let bytes = b.to_bytes();
        assert_eq!(Bundle::read(&bytes[..]).unwrap(), b);
        assert_eq!(
            HEADER_BYTES + 2 + 2 * STATEMENT_BYTES + SEED_BYTES + 4 + 3 + 32,
            bytes.len()
        );
        for len in 0..bytes.len() {
            assert!(Bundle::read(&bytes[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn endless_input_is_refused_after_its_header() {
        // Zeros: refused on the magic, after reading the header's bytes only.
        let mut zeros = std::io::repeat(0).take(u64::MAX);
        assert_eq!(Bundle::read(&mut zeros), Err(BundleError::Magic));
        // A valid header of one proof, then endless bytes: refused at the
        // most one proof can take, never read further.
        let header = &bundle().to_bytes()[..HEADER_BYTES];
        let endless = header.chain(std::io::repeat(0xab));
        let limit =
            (HEADER_BYTES + 2 + 2 * STATEMENT_BYTES + SEED_BYTES + 4 + MAX_PROOF_BYTES + 32) as u64;
        assert_eq!(Bundle::read(endless), Err(BundleError::TooLarge { limit }));
        // Another version is named with this build's.
        let mut other = bundle().to_bytes();
        other[8] = 9;
        let err = Bundle::read(&other[..]).unwrap_err();
        assert_eq!(err, BundleError::Version(9));
        assert!(err
            .to_string()
            .contains(&format!("version {FORMAT_VERSION}")));
    }

    #[test]
    fn a_step_at_another_temperature_than_its_proof_is_refused() {
        let mut other = bundle();
        other.proofs[0].steps[1].sampler = Sampler::Sample {
            temperature: Temperature::ONE,
            r: 9,
        };
        let err = Bundle::read(&other.to_bytes()[..]).unwrap_err();
        assert!(err.to_string().contains("at temperature 0.600"), "{err}");
        // Greedy steps need a proof at temperature 1.
        let mut greedy = bundle();
        greedy.proofs[0].steps[0].sampler = Sampler::Greedy;
        assert!(Bundle::read(&greedy.to_bytes()[..]).is_err());
        greedy.shape = greedy.shape.with_temperature(Temperature::ONE);
        greedy.proofs[0].steps[1].sampler = Sampler::Greedy;
        assert!(Bundle::read(&greedy.to_bytes()[..]).is_ok());
    }
}
