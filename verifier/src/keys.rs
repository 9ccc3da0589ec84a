//! Verifying keys cached on disk, beside the public parameters.
//!
//! Building a verifying key is dominated by the multi-scalar multiplications that
//! commit to every fixed and permutation column (about a minute at the packaged
//! model's vocabulary on 2 cores). A key file holds those commitments and the
//! digest of the key they make; loading rebuilds the key by synthesis alone
//! (`halo2_proofs::plonk::keygen_vk_from_commitments`, see `patches/README.md`)
//! and accepts the file only if the rebuilt key has the stored digest. A file
//! that is absent, unreadable, of another shape or inconsistent is rebuilt from
//! scratch and rewritten (to a temporary name, then renamed).
//!
//! Format (little-endian): magic `ZKINFERK`, version (2), the shape's
//! description (length 2 + UTF-8), the key digest (32), the number of fixed
//! commitments (4) and of permutation commitments (4), the commitments (32 bytes
//! each, compressed), blake3 of everything before (32).

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use group::GroupEncoding as _;
use halo2_proofs::{pasta::EqAffine, plonk::keygen_vk_from_commitments, poly::commitment::Params};

use circuits::{CircuitShape, DecodeStepCircuit};

use crate::{vk_digest, Key, KeyError};

const MAGIC: &[u8; 8] = b"ZKINFERK";
const VERSION: u16 = 1;
/// More columns than any supported shape has; a count above it is corruption.
const MAX_COMMITMENTS: usize = 4096;
const POINT_BYTES: usize = 32;

/// Where the key of `shape` is cached in `dir`.
pub fn key_path(dir: &Path, shape: &CircuitShape) -> PathBuf {
    let name = blake3::hash(shape.describe().as_bytes()).to_hex();
    dir.join(format!("vk-{}.bin", &name[..32]))
}

/// How a key was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Loaded from the cache file.
    Cache,
    /// Computed (and written to the cache).
    Built,
}

/// The verifying key of `circuit`'s shape: from the cache in `dir` when a valid
/// entry is there, else built and stored. A failure to store is not an error
/// (the key is still right); a failure to build is.
pub fn load_or_build(
    dir: &Path,
    circuit: &DecodeStepCircuit,
    params: &Params<EqAffine>,
) -> Result<(Key, KeySource), KeyError> {
    if let Some(key) = load(dir, circuit, params) {
        return Ok((key, KeySource::Cache));
    }
    let key = build(dir, circuit, params)?;
    Ok((key, KeySource::Built))
}

/// Builds the key of `circuit`'s shape from scratch and stores it in `dir`.
pub fn build(
    dir: &Path,
    circuit: &DecodeStepCircuit,
    params: &Params<EqAffine>,
) -> Result<Key, KeyError> {
    let key = crate::verifying_key_of(circuit, params)?;
    // A cache that cannot be written only costs the next process time.
    let _ = store(dir, &circuit.shape, &key);
    Ok(key)
}

/// The cached key of `circuit`'s shape, if the file is there and consistent.
pub fn load(dir: &Path, circuit: &DecodeStepCircuit, params: &Params<EqAffine>) -> Option<Key> {
    let shape = circuit.shape;
    let bytes = read_capped(&key_path(dir, &shape)).ok()?;
    let entry = Entry::parse(&bytes).ok()?;
    if entry.describe != shape.describe() {
        return None;
    }
    let vk = shape
        .scope(|| keygen_vk_from_commitments(params, circuit, entry.fixed, entry.permutation))
        .ok()?;
    let digest = vk_digest(&vk);
    (digest == entry.digest).then_some(Key { vk, digest })
}

/// Writes `key` as the cache entry of `shape`.
pub fn store(dir: &Path, shape: &CircuitShape, key: &Key) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = key_path(dir, shape);
    let tmp = path.with_extension(format!("{}.tmp", crate::params::unique_suffix()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&encode(&shape.describe(), key))?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn max_file_bytes() -> u64 {
    (MAGIC.len() + 2 + 2 + u16::MAX as usize + 32 + 8 + 2 * MAX_COMMITMENTS * POINT_BYTES + 32)
        as u64
}

fn read_capped(path: &Path) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_file_bytes() + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_file_bytes() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "key file too large",
        ));
    }
    Ok(bytes)
}

fn encode(describe: &str, key: &Key) -> Vec<u8> {
    let (fixed, permutation) = key.vk.commitments();
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(describe.len() as u16).to_le_bytes());
    out.extend_from_slice(describe.as_bytes());
    out.extend_from_slice(&key.digest);
    out.extend_from_slice(&(fixed.len() as u32).to_le_bytes());
    out.extend_from_slice(&(permutation.len() as u32).to_le_bytes());
    for point in fixed.iter().chain(permutation) {
        out.extend_from_slice(point.to_bytes().as_ref());
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// A parsed key file.
#[derive(Debug, PartialEq)]
struct Entry {
    describe: String,
    digest: [u8; 32],
    fixed: Vec<EqAffine>,
    permutation: Vec<EqAffine>,
}

impl Entry {
    fn parse(bytes: &[u8]) -> Result<Entry, &'static str> {
        let body_len = bytes.len().checked_sub(32).ok_or("truncated")?;
        let (body, checksum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != checksum {
            return Err("checksum");
        }
        let mut rest = body;
        let mut take = |n: usize| -> Result<&[u8], &'static str> {
            if n > rest.len() {
                return Err("truncated");
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(MAGIC.len())? != MAGIC {
            return Err("magic");
        }
        if u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) != VERSION {
            return Err("version");
        }
        let describe_len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
        let describe = std::str::from_utf8(take(describe_len)?)
            .map_err(|_| "description")?
            .to_string();
        let digest: [u8; 32] = take(32)?.try_into().expect("32 bytes");
        let mut count = || -> Result<usize, &'static str> {
            let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
            (n <= MAX_COMMITMENTS).then_some(n).ok_or("count")
        };
        let (n_fixed, n_permutation) = (count()?, count()?);
        let mut points = |n: usize| -> Result<Vec<EqAffine>, &'static str> {
            (0..n)
                .map(|_| {
                    let mut repr = <EqAffine as group::GroupEncoding>::Repr::default();
                    repr.as_mut().copy_from_slice(take(POINT_BYTES)?);
                    Option::from(EqAffine::from_bytes(&repr)).ok_or("point")
                })
                .collect()
        };
        let fixed = points(n_fixed)?;
        let permutation = points(n_permutation)?;
        if !rest.is_empty() {
            return Err("trailing bytes");
        }
        Ok(Entry {
            describe,
            digest,
            fixed,
            permutation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use circuits::FixedPoint;

    fn small() -> (CircuitShape, Params<EqAffine>) {
        let shape = CircuitShape::new(64, FixedPoint::default(), 1, 1).unwrap();
        let params = crate::ParamsCache::new(crate::ParamsCache::default_dir())
            .load_or_generate(shape.k(), |_| {})
            .unwrap();
        (shape, params)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zkinfer-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_cached_key_is_the_built_key_and_every_mutation_is_refused() {
        let (shape, params) = small();
        let circuit = DecodeStepCircuit::placeholder(shape);
        let dir = temp_dir("roundtrip");
        let (built, source) = load_or_build(&dir, &circuit, &params).unwrap();
        assert_eq!(source, KeySource::Built);
        let (loaded, source) = load_or_build(&dir, &circuit, &params).unwrap();
        assert_eq!(source, KeySource::Cache);
        assert_eq!(vk_digest(&loaded.vk), vk_digest(&built.vk));
        assert_eq!(built.digest, loaded.digest);

        // Every single-byte change of the file is refused: by the checksum, or,
        // with the checksum recomputed, by parsing or the digest check.
        let path = key_path(&dir, &shape);
        let original = fs::read(&path).unwrap();
        let body = original.len() - 32;
        for index in (0..original.len()).step_by(31) {
            let mut bytes = original.clone();
            bytes[index] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            assert!(load(&dir, &circuit, &params).is_none(), "byte {index}");
            if index < body {
                let checksum = blake3::hash(&bytes[..body]);
                bytes[body..].copy_from_slice(checksum.as_bytes());
                fs::write(&path, &bytes).unwrap();
                assert!(
                    load(&dir, &circuit, &params).is_none(),
                    "byte {index} with its checksum"
                );
            }
        }
        // Truncated and extended files too.
        for len in [0, 8, 40, body, original.len() - 1] {
            fs::write(&path, &original[..len]).unwrap();
            assert!(load(&dir, &circuit, &params).is_none(), "length {len}");
        }
        // A refused file is rebuilt and rewritten.
        let (rebuilt, source) = load_or_build(&dir, &circuit, &params).unwrap();
        assert_eq!(source, KeySource::Built);
        assert_eq!(rebuilt.digest, built.digest);
        assert_eq!(fs::read(&path).unwrap(), original);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn another_shapes_entry_is_not_used() {
        let (shape, params) = small();
        let other = CircuitShape::new(65, FixedPoint::default(), 1, 1).unwrap();
        assert_eq!(shape.k(), other.k());
        let dir = temp_dir("shape");
        let (key, _) =
            load_or_build(&dir, &DecodeStepCircuit::placeholder(shape), &params).unwrap();
        // The other shape's file name holding this shape's key.
        fs::copy(key_path(&dir, &shape), key_path(&dir, &other)).unwrap();
        let other_circuit = DecodeStepCircuit::placeholder(other);
        assert!(load(&dir, &other_circuit, &params).is_none());
        let (other_key, source) = load_or_build(&dir, &other_circuit, &params).unwrap();
        assert_eq!(source, KeySource::Built);
        assert_ne!(other_key.digest, key.digest);
        let _ = fs::remove_dir_all(&dir);
    }
}
