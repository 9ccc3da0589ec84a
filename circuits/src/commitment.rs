//! The Poseidon commitment `C_z` to a step's logits, natively and in-circuit.
//!
//! Packing: logit `z_i` becomes the limb `z_i + 2^26` (27 bits, always positive
//! since `|z| < 2^23`); nine consecutive limbs, in vocabulary order, form one field
//! element by Horner's rule (`e = sum_k limb_{9j+k} * 2^(27 (8 - k))`, the last element
//! holds the remaining `V mod 9` limbs). 243 bits < the 254-bit field, so the packing
//! is injective. In the circuit the limbs are not range-checked directly: each is
//! `m - u_i + 2^26` with `u_i < 2^25` and `m + 2^23 < 2^25` proven, which keeps every
//! limb inside `[0, 2^27)` as well, so the packing stays injective on everything the
//! circuit accepts.
//!
//! Hashing: elements are cut into chunks of 512 (the last zero-padded) and each chunk
//! is hashed with P128Pow5T3 in `ConstantLength<512>` mode. The chunk digests are folded
//! into the commitment by `acc = H(acc, d_j)` (`ConstantLength<2>`) starting from the
//! domain tag `"zkL1" * 2^64 + V * 2^8 + F`, which separates vocabulary sizes and scales.
//! Chunks are independent, so the circuit hashes them in parallel lanes.

use ff::PrimeField as _;
use halo2_gadgets::poseidon::{
    primitives::{self as poseidon, ConstantLength, P128Pow5T3},
    PaddedWord, Pow5Chip, Pow5Config, Sponge,
};
use halo2_proofs::{
    circuit::{AssignedCell, Layouter},
    pasta::Fp,
    plonk::{Advice, Column, ConstraintSystem, Error, Fixed},
};

use crate::fixed_point::FixedPoint;

pub const LIMB_BITS: u32 = 27;
pub const LIMB_OFFSET: i64 = 1 << 26;
pub const LIMBS_PER_ELEMENT: usize = 9;
pub const CHUNK_ELEMENTS: usize = 512;
const DOMAIN_TAG: u128 = 0x7a6b_4c31; // "zkL1"

/// Permutation rows of one absorbed pair in `Pow5Chip` (add-input and permute regions).
pub const ROWS_PER_PERMUTATION: usize = 2 + 37;
/// Rows of one chunk hash in one lane.
pub const ROWS_PER_CHUNK: usize = 1 + (CHUNK_ELEMENTS / 2) * ROWS_PER_PERMUTATION;
/// Rows of one fold step.
pub const ROWS_PER_FOLD: usize = 1 + ROWS_PER_PERMUTATION;

/// Number of packed elements for a vocabulary.
pub fn elements(vocab: usize) -> usize {
    vocab.div_ceil(LIMBS_PER_ELEMENT)
}

/// Number of chunks for a vocabulary.
pub fn chunks(vocab: usize) -> usize {
    elements(vocab).div_ceil(CHUNK_ELEMENTS)
}

/// The domain tag for a vocabulary size and fixed-point scale.
pub fn domain_tag(vocab: usize, fixed_point: FixedPoint) -> Fp {
    Fp::from_u128((DOMAIN_TAG << 64) | ((vocab as u128) << 8) | fixed_point.frac_bits as u128)
}

/// Packs logits into field elements (see the module docs).
pub fn pack(logits: &[i64]) -> Vec<Fp> {
    let shift = Fp::from(1u64 << LIMB_BITS);
    logits
        .chunks(LIMBS_PER_ELEMENT)
        .map(|group| {
            group.iter().fold(Fp::zero(), |acc, &z| {
                acc * shift + Fp::from((z + LIMB_OFFSET) as u64)
            })
        })
        .collect()
}

fn hash_chunk(words: &[Fp]) -> Fp {
    let mut message = [Fp::zero(); CHUNK_ELEMENTS];
    message[..words.len()].copy_from_slice(words);
    poseidon::Hash::<_, P128Pow5T3, ConstantLength<CHUNK_ELEMENTS>, 3, 2>::init().hash(message)
}

fn fold(acc: Fp, digest: Fp) -> Fp {
    poseidon::Hash::<_, P128Pow5T3, ConstantLength<2>, 3, 2>::init().hash([acc, digest])
}

/// `C_z` for quantized logits (each `|z| < 2^23`).
pub fn commit_logits(fixed_point: FixedPoint, logits: &[i64]) -> Fp {
    commit_packed(domain_tag(logits.len(), fixed_point), &pack(logits))
}

/// The chunk-and-fold hash of packed elements from the domain tag `tag`: chunks of
/// 512 elements (the last zero-padded) hashed in `ConstantLength<512>` mode, folded
/// by `acc = H(acc, d_j)` from `acc = tag`. `C_z` and the head variant's `C_h`
/// (`crate::head_step`) are this hash with different packings and tags.
pub fn commit_packed(tag: Fp, packed: &[Fp]) -> Fp {
    packed
        .chunks(CHUNK_ELEMENTS)
        .map(hash_chunk)
        .fold(tag, fold)
}

/// Columns of the commitment gadget: one `Pow5Chip` per hashing lane.
#[derive(Clone, Debug)]
pub struct CommitmentConfig {
    lanes: Vec<Pow5Config<Fp, 3, 2>>,
}

/// Hashes packed logits into `C_z`, spreading chunks over the lanes.
#[derive(Clone, Debug)]
pub struct CommitmentChip {
    config: CommitmentConfig,
    /// Rows used so far in each lane, for balancing.
    load: Vec<usize>,
}

impl CommitmentChip {
    pub fn configure(meta: &mut ConstraintSystem<Fp>, lanes: usize) -> CommitmentConfig {
        let lanes = (0..lanes)
            .map(|_| {
                let state: [Column<Advice>; 3] = std::array::from_fn(|_| meta.advice_column());
                let partial_sbox = meta.advice_column();
                let rc_a: [Column<Fixed>; 3] = std::array::from_fn(|_| meta.fixed_column());
                let rc_b: [Column<Fixed>; 3] = std::array::from_fn(|_| meta.fixed_column());
                Pow5Chip::configure::<P128Pow5T3>(meta, state, partial_sbox, rc_a, rc_b)
            })
            .collect();
        CommitmentConfig { lanes }
    }

    pub fn construct(config: CommitmentConfig) -> Self {
        let load = vec![0; config.lanes.len()];
        CommitmentChip { config, load }
    }

    fn least_loaded(&mut self, rows: usize) -> Pow5Chip<Fp, 3, 2> {
        let lane = (0..self.load.len())
            .min_by_key(|&i| self.load[i])
            .expect("at least one lane");
        self.load[lane] += rows;
        Pow5Chip::construct(self.config.lanes[lane].clone())
    }

    /// Constrains the returned cell to be `C_z` of the packed elements `elements`
    /// (cells holding the packed logits, in vocabulary order).
    pub fn commit(
        &mut self,
        layouter: impl Layouter<Fp>,
        vocab: usize,
        fixed_point: FixedPoint,
        elements: &[AssignedCell<Fp, Fp>],
    ) -> Result<AssignedCell<Fp, Fp>, Error> {
        self.commit_packed(layouter, domain_tag(vocab, fixed_point), elements)
    }

    /// Constrains the returned cell to be [`commit_packed`]`(tag, elements)`.
    pub fn commit_packed(
        &mut self,
        mut layouter: impl Layouter<Fp>,
        tag: Fp,
        elements: &[AssignedCell<Fp, Fp>],
    ) -> Result<AssignedCell<Fp, Fp>, Error> {
        let mut digests = Vec::with_capacity(elements.len().div_ceil(CHUNK_ELEMENTS));
        for (i, chunk) in elements.chunks(CHUNK_ELEMENTS).enumerate() {
            let chip = self.least_loaded(ROWS_PER_CHUNK);
            let words = chunk
                .iter()
                .cloned()
                .map(PaddedWord::Message)
                .chain(std::iter::repeat(PaddedWord::Padding(Fp::zero())))
                .take(CHUNK_ELEMENTS);
            digests.push(sponge::<CHUNK_ELEMENTS>(
                chip,
                layouter.namespace(|| format!("chunk {i}")),
                words,
            )?);
        }
        let mut acc = PaddedWord::Padding(tag);
        let mut out = None;
        for (i, digest) in digests.into_iter().enumerate() {
            let chip = self.least_loaded(ROWS_PER_FOLD);
            let cell = sponge::<2>(
                chip,
                layouter.namespace(|| format!("fold {i}")),
                [acc, PaddedWord::Message(digest)].into_iter(),
            )?;
            acc = PaddedWord::Message(cell.clone());
            out = Some(cell);
        }
        out.ok_or(Error::Synthesis)
    }
}

/// Absorbs `L` words into a `ConstantLength<L>` sponge and squeezes one element.
fn sponge<const L: usize>(
    chip: Pow5Chip<Fp, 3, 2>,
    mut layouter: impl Layouter<Fp>,
    words: impl Iterator<Item = PaddedWord<Fp>>,
) -> Result<AssignedCell<Fp, Fp>, Error> {
    let mut sponge = Sponge::<_, _, P128Pow5T3, _, ConstantLength<L>, 3, 2>::new(
        chip,
        layouter.namespace(|| "init"),
    )?;
    for (i, word) in words.enumerate() {
        sponge.absorb(layouter.namespace(|| format!("absorb {i}")), word)?;
    }
    sponge
        .finish_absorbing(layouter.namespace(|| "finish"))?
        .squeeze(layouter.namespace(|| "squeeze"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ff::PrimeField;

    fn hex(f: Fp) -> String {
        f.to_repr()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn packing_is_horner_over_groups_of_nine() {
        let z: Vec<i64> = (0..10).map(|i| i - 5).collect();
        let packed = pack(&z);
        assert_eq!(packed.len(), 2);
        let limb = |v: i64| Fp::from((v + LIMB_OFFSET) as u64);
        let first = (0..9).fold(Fp::zero(), |acc, i| {
            acc * Fp::from(1 << LIMB_BITS) + limb(z[i])
        });
        assert_eq!(packed[0], first);
        assert_eq!(packed[1], limb(z[9]));
    }

    #[test]
    fn commitment_separates_vocabularies_and_values() {
        let fp = FixedPoint::default();
        let z: Vec<i64> = (0..1000).map(|i| (i * 37 % 200) - 100).collect();
        let c = commit_logits(fp, &z);
        let mut other = z.clone();
        other[999] += 1;
        assert_ne!(c, commit_logits(fp, &other));
        assert_ne!(c, commit_logits(fp, &z[..999]));
        let mut padded = z.clone();
        padded.push(0);
        assert_ne!(c, commit_logits(fp, &padded));
    }

    #[test]
    fn commitment_is_pinned() {
        // A change here changes every commitment ever made: it must be deliberate.
        let z: Vec<i64> = (0..5000).map(|i| (i * 7919 % 4001) - 2000).collect();
        assert_eq!(hex(commit_logits(FixedPoint::default(), &z)), PINNED);
    }
    const PINNED: &str = "eeb26d73c3603c726b6daf3deb8b6fb81daacf980cdd47ece5adf2325dd65032";
}
