//! A node's announcement: who it is, what it serves, where it listens, signed
//! by both of its keys.
//!
//! The libp2p identity (an ed25519 key, [`PeerKey`]) authenticates the
//! transport; the BLS key signs the node's hop receipts. An announcement
//! signed by both binds them: a client that reaches the peer over an
//! authenticated stream knows the receipts it will get are that peer's.
//!
//! # Encoding (all integers little-endian)
//!
//! | field | bytes |
//! |---|---|
//! | tag `"zkinfer.announce.v1"` | 19 |
//! | peer: ed25519 public key | 32 |
//! | signer: BLS public key, compressed G2 | 64 |
//! | model id | 32 |
//! | layer start, end (u32 each) | 8 |
//! | throughput: rows per second through the span (f32, finite, ≥ 0) | 4 |
//! | stake account flag (0 or 1), then the 20-byte address when 1 | 1 (+ 20) |
//! | issued at, unix seconds (u64) | 8 |
//! | address count (u8, ≤ [`MAX_ADDRS`]), then each: length (u8, ≥ 1), multiaddr bytes | 1 + … |
//! | ed25519 signature of everything above | 64 |
//! | BLS signature of everything above (the `Statement` message) | 32 |
//!
//! Nothing may follow, and the whole is at most [`MAX_LEN`] bytes: a peer
//! that sends more is refused before anything is parsed.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::identity::{self, Keypair};
use libp2p::{Multiaddr, PeerId};
use models::model_id::ModelId;
use verifier::receipt::{self as bls, Statement};
use wire::transport::PeerKey;

/// The tag every announcement starts with.
pub const TAG: &[u8] = b"zkinfer.announce.v1";
/// The most bytes an encoded announcement may have.
pub const MAX_LEN: usize = 2048;
/// The most addresses an announcement may list.
pub const MAX_ADDRS: usize = 8;
/// How long an announcement is believed after it was issued; nodes refresh
/// theirs well within it.
pub const LIFETIME: Duration = Duration::from_secs(600);
/// How far in the future an announcement's issue time may be (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// What a node states about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Announcement {
    /// Its libp2p identity.
    pub peer: PeerKey,
    /// The key that signs its receipts.
    pub signer: bls::PublicKey,
    /// The model it serves.
    pub model_id: ModelId,
    /// The layers it serves, `start..end`.
    pub layers: Range<u32>,
    /// Rows per second through its span, measured when it started.
    pub throughput: f32,
    /// Its stake account on the ledger contract, if it has one.
    pub stake_account: Option<[u8; 20]>,
    /// When it was signed, unix seconds.
    pub issued_at: u64,
    /// Where it can be dialed (relay circuits included).
    pub addrs: Vec<Multiaddr>,
}

/// An announcement with both signatures, as it travels.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedAnnouncement {
    pub announcement: Announcement,
    peer_signature: [u8; 64],
    signer_signature: bls::Signature,
}

/// Why an announcement is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnnouncementError {
    #[error("{0} bytes, more than the {MAX_LEN} an announcement may have")]
    TooLong(usize),
    #[error("cut short: {0}")]
    Truncated(&'static str),
    #[error("not an announcement (wrong tag)")]
    Tag,
    #[error("{0}")]
    Field(String),
    #[error("{0} bytes after the signatures")]
    Trailing(usize),
    #[error("the peer key's signature does not verify")]
    PeerSignature,
    #[error("the receipt key's signature does not verify")]
    SignerSignature,
    #[error("announced by peer {announced}, but it came from peer {actual}")]
    WrongPeer {
        announced: PeerKey,
        actual: Box<PeerId>,
    },
    #[error("for model {announced}, not {wanted}")]
    WrongModel { announced: ModelId, wanted: ModelId },
    #[error("issued at {issued_at}, {age} s old: older than {} s", LIFETIME.as_secs())]
    Expired { issued_at: u64, age: u64 },
    #[error("issued at {issued_at}, {ahead} s in the future")]
    FromTheFuture { issued_at: u64, ahead: u64 },
    #[error("signing: {0}")]
    Sign(String),
}

/// The BLS statement of an announcement: its encoding up to the signatures.
/// The message starts with the signer's key as every statement's does
/// (docs/design.md), and the body names the key again.
struct Body<'a>(&'a [u8]);

impl Statement for Body<'_> {
    fn message(&self, _signer: &bls::PublicKey) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl Clone for Body<'_> {
    fn clone(&self) -> Self {
        Body(self.0)
    }
}

impl Announcement {
    /// Signs with the node's libp2p keypair (which must be `self.peer`'s) and
    /// its receipt key (which must be `self.signer`'s).
    pub fn sign(
        self,
        peer_key: &Keypair,
        signer_key: &bls::SecretKey,
    ) -> Result<SignedAnnouncement, AnnouncementError> {
        if peer_key_of(&peer_key.public()) != Some(self.peer) {
            return Err(AnnouncementError::Sign(
                "the keypair is not the announced peer's".into(),
            ));
        }
        if signer_key.public() != self.signer {
            return Err(AnnouncementError::Sign(
                "the receipt key is not the announced signer's".into(),
            ));
        }
        let body = self.body()?;
        let peer_signature: [u8; 64] = peer_key
            .sign(&body)
            .map_err(|e| AnnouncementError::Sign(e.to_string()))?
            .try_into()
            .map_err(|_| AnnouncementError::Sign("not an ed25519 signature".into()))?;
        let signer_signature = signer_key.sign(&Body(&body));
        let signed = SignedAnnouncement {
            announcement: self,
            peer_signature,
            signer_signature,
        };
        let len = signed.encode().len();
        if len > MAX_LEN {
            return Err(AnnouncementError::TooLong(len));
        }
        Ok(signed)
    }

    /// The peer id of [`Announcement::peer`].
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(self.peer)
    }

    fn body(&self) -> Result<Vec<u8>, AnnouncementError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(AnnouncementError::Field(format!(
                "{} addresses, more than {MAX_ADDRS}",
                self.addrs.len()
            )));
        }
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(TAG);
        b.extend_from_slice(&self.peer.0);
        b.extend_from_slice(&self.signer.to_bytes());
        b.extend_from_slice(&self.model_id.0);
        b.extend_from_slice(&self.layers.start.to_le_bytes());
        b.extend_from_slice(&self.layers.end.to_le_bytes());
        b.extend_from_slice(&self.throughput.to_le_bytes());
        match self.stake_account {
            Some(account) => {
                b.push(1);
                b.extend_from_slice(&account);
            }
            None => b.push(0),
        }
        b.extend_from_slice(&self.issued_at.to_le_bytes());
        b.push(self.addrs.len() as u8);
        for addr in &self.addrs {
            let bytes = addr.to_vec();
            let len = u8::try_from(bytes.len())
                .map_err(|_| AnnouncementError::Field(format!("address {addr} is too long")))?;
            b.push(len);
            b.extend_from_slice(&bytes);
        }
        Ok(b)
    }
}

impl SignedAnnouncement {
    /// The bytes that travel (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        // `sign` checked the body encodes.
        let mut b = self.announcement.body().unwrap_or_default();
        b.extend_from_slice(&self.peer_signature);
        b.extend_from_slice(&self.signer_signature.to_bytes());
        b
    }

    /// Parses `bytes` and checks both signatures. Cheap checks come first:
    /// the length before anything is read, the fields before any signature.
    pub fn decode(bytes: &[u8]) -> Result<SignedAnnouncement, AnnouncementError> {
        if bytes.len() > MAX_LEN {
            return Err(AnnouncementError::TooLong(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(TAG.len(), "tag")? != TAG {
            return Err(AnnouncementError::Tag);
        }
        let peer = PeerKey(r.array("peer key")?);
        let peer_public = identity::ed25519::PublicKey::try_from_bytes(&peer.0)
            .map_err(|_| AnnouncementError::Field("the peer key is not an ed25519 key".into()))?;
        let signer = bls::PublicKey::from_bytes(&r.array("receipt key")?)
            .map_err(|e| AnnouncementError::Field(format!("receipt key: {e}")))?;
        let model_id = ModelId(r.array("model id")?);
        let start = u32::from_le_bytes(r.array("layer start")?);
        let end = u32::from_le_bytes(r.array("layer end")?);
        if start >= end {
            return Err(AnnouncementError::Field(format!(
                "layers {start}..{end} are empty"
            )));
        }
        let throughput = f32::from_le_bytes(r.array("throughput")?);
        if !throughput.is_finite() || throughput < 0.0 {
            return Err(AnnouncementError::Field(format!(
                "throughput {throughput} is not a finite, non-negative rate"
            )));
        }
        let stake_account = match r.array::<1>("stake flag")?[0] {
            0 => None,
            1 => Some(r.array("stake account")?),
            flag => {
                return Err(AnnouncementError::Field(format!(
                    "stake flag {flag}, not 0 or 1"
                )))
            }
        };
        let issued_at = u64::from_le_bytes(r.array("issue time")?);
        let count = r.array::<1>("address count")?[0] as usize;
        if count > MAX_ADDRS {
            return Err(AnnouncementError::Field(format!(
                "{count} addresses, more than {MAX_ADDRS}"
            )));
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let len = r.array::<1>("address length")?[0] as usize;
            if len == 0 {
                return Err(AnnouncementError::Field("an empty address".into()));
            }
            let addr = Multiaddr::try_from(r.take(len, "address")?.to_vec())
                .map_err(|e| AnnouncementError::Field(format!("address: {e}")))?;
            addrs.push(addr);
        }
        let body_len = bytes.len() - r.0.len();
        let peer_signature: [u8; 64] = r.array("peer signature")?;
        let signer_signature = bls::Signature::from_bytes(&r.array("receipt signature")?)
            .map_err(|e| AnnouncementError::Field(format!("receipt signature: {e}")))?;
        if !r.0.is_empty() {
            return Err(AnnouncementError::Trailing(r.0.len()));
        }
        let body = &bytes[..body_len];
        if !peer_public.verify(body, &peer_signature) {
            return Err(AnnouncementError::PeerSignature);
        }
        if !bls::verify(&signer, &Body(body), &signer_signature) {
            return Err(AnnouncementError::SignerSignature);
        }
        let announcement = Announcement {
            peer,
            signer,
            model_id,
            layers: start..end,
            throughput,
            stake_account,
            issued_at,
            addrs,
        };
        // A canonical encoding: what was signed is what re-encodes.
        debug_assert_eq!(announcement.body().ok().as_deref(), Some(body));
        Ok(SignedAnnouncement {
            announcement,
            peer_signature,
            signer_signature,
        })
    }

    /// Decodes and checks that the announcement is `from`'s, for
    /// `model_id`, and current at `now` (unix seconds).
    pub fn decode_from(
        bytes: &[u8],
        from: PeerId,
        model_id: &ModelId,
        now: u64,
    ) -> Result<SignedAnnouncement, AnnouncementError> {
        let signed = SignedAnnouncement::decode(bytes)?;
        let a = &signed.announcement;
        if a.peer_id() != from {
            return Err(AnnouncementError::WrongPeer {
                announced: a.peer,
                actual: Box::new(from),
            });
        }
        if a.model_id != *model_id {
            return Err(AnnouncementError::WrongModel {
                announced: a.model_id,
                wanted: *model_id,
            });
        }
        if a.issued_at > now.saturating_add(MAX_SKEW.as_secs()) {
            return Err(AnnouncementError::FromTheFuture {
                issued_at: a.issued_at,
                ahead: a.issued_at - now,
            });
        }
        let age = now.saturating_sub(a.issued_at);
        if age > LIFETIME.as_secs() {
            return Err(AnnouncementError::Expired {
                issued_at: a.issued_at,
                age,
            });
        }
        Ok(signed)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], AnnouncementError> {
        if self.0.len() < n {
            return Err(AnnouncementError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], AnnouncementError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
}

/// The raw ed25519 key of a libp2p public key; `None` for other key types,
/// which zkinfer nodes do not use.
pub fn peer_key_of(public: &identity::PublicKey) -> Option<PeerKey> {
    public
        .clone()
        .try_into_ed25519()
        .ok()
        .map(|key| PeerKey(key.to_bytes()))
}

/// The peer id of an ed25519 key.
pub fn peer_id_of(key: PeerKey) -> PeerId {
    match identity::ed25519::PublicKey::try_from_bytes(&key.0) {
        Ok(public) => identity::PublicKey::from(public).to_peer_id(),
        // Every PeerKey that reaches here came from a checked key; an
        // invalid one still gets a stable, unreachable id.
        Err(_) => PeerId::from_multihash(
            libp2p::multihash::Multihash::wrap(0, &key.0).unwrap_or_default(),
        )
        .unwrap_or_else(|_| PeerId::random()),
    }
}

/// The unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The node's libp2p keypair, derived from its receipt key so one key file
/// holds both identities. Deriving it one way only means the receipt key
/// cannot be recovered from the transport key.
pub fn keypair_for(signer_key: &bls::SecretKey) -> Keypair {
    let mut seed = blake3::derive_key("zkinfer.p2p.identity.v1", signer_key.to_hex().as_bytes());
    let keypair = Keypair::ed25519_from_bytes(&mut seed).expect("32 bytes are an ed25519 seed");
    seed.fill(0);
    keypair
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (SignedAnnouncement, Keypair, bls::SecretKey) {
        let signer = bls::SecretKey::from_seed(b"announcement test key").unwrap();
        let keypair = keypair_for(&signer);
        let announcement = Announcement {
            peer: peer_key_of(&keypair.public()).unwrap(),
            signer: signer.public(),
            model_id: ModelId([7; 32]),
            layers: 3..9,
            throughput: 123.5,
            stake_account: Some([0xab; 20]),
            issued_at: 1_900_000_000,
            addrs: vec![
                "/ip4/10.77.0.2/tcp/4001".parse().unwrap(),
                "/ip4/10.77.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
                    .parse()
                    .unwrap(),
            ],
        };
        (
            announcement.sign(&keypair, &signer).unwrap(),
            keypair,
            signer,
        )
    }

    #[test]
    fn round_trips_and_checks_both_signatures() {
        let (signed, keypair, _) = signed();
        let bytes = signed.encode();
        assert!(bytes.len() < MAX_LEN);
        let decoded = SignedAnnouncement::decode(&bytes).unwrap();
        assert_eq!(decoded, signed);
        let now = signed.announcement.issued_at + 5;
        let from = keypair.public().to_peer_id();
        assert!(SignedAnnouncement::decode_from(&bytes, from, &ModelId([7; 32]), now).is_ok());
    }

    #[test]
    fn a_peer_key_prints_as_its_libp2p_peer_id() {
        let (signed, keypair, _) = signed();
        let id = keypair.public().to_peer_id();
        assert_eq!(signed.announcement.peer.to_string(), id.to_string());
        assert_eq!(peer_id_of(signed.announcement.peer), id);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let (signed, _, _) = signed();
        let bytes = signed.encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut mutated = bytes.clone();
                mutated[i] ^= 1 << bit;
                assert!(
                    SignedAnnouncement::decode(&mutated).is_err(),
                    "byte {i} bit {bit} flipped still decodes"
                );
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let (signed, _, _) = signed();
        let bytes = signed.encode();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    SignedAnnouncement::decode(&bytes[..len]),
                    Err(AnnouncementError::Truncated(_) | AnnouncementError::Tag)
                ),
                "{len} bytes"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            SignedAnnouncement::decode(&longer),
            Err(AnnouncementError::Trailing(1))
        );
        let huge = vec![0u8; MAX_LEN + 1];
        assert_eq!(
            SignedAnnouncement::decode(&huge),
            Err(AnnouncementError::TooLong(MAX_LEN + 1))
        );
    }

    #[test]
    fn a_key_that_signs_for_another_is_refused() {
        let (signed, _, signer) = signed();
        // Another peer's keypair cannot sign for the announced peer.
        let other = Keypair::generate_ed25519();
        assert!(matches!(
            signed.announcement.clone().sign(&other, &signer),
            Err(AnnouncementError::Sign(_))
        ));
        // An announcement a forger signs with its own keys, naming the
        // victim's receipt key, fails the receipt key's signature.
        let forger = bls::SecretKey::from_seed(b"forger").unwrap();
        let forger_pair = keypair_for(&forger);
        let mut forged = signed.announcement.clone();
        forged.peer = peer_key_of(&forger_pair.public()).unwrap();
        forged.signer = forger.public();
        let mut bytes = forged.sign(&forger_pair, &forger).unwrap().encode();
        // Swap in the victim's receipt key.
        let at = TAG.len() + 32;
        bytes[at..at + 64].copy_from_slice(&signer.public().to_bytes());
        assert_eq!(
            SignedAnnouncement::decode(&bytes),
            Err(AnnouncementError::PeerSignature)
        );
    }

    #[test]
    fn the_sender_model_and_time_must_match() {
        let (signed, _, _) = signed();
        let bytes = signed.encode();
        let t = signed.announcement.issued_at;
        let model = ModelId([7; 32]);
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(
            SignedAnnouncement::decode_from(&bytes, stranger, &model, t),
            Err(AnnouncementError::WrongPeer { .. })
        ));
        let from = signed.announcement.peer_id();
        assert!(matches!(
            SignedAnnouncement::decode_from(&bytes, from, &ModelId([8; 32]), t),
            Err(AnnouncementError::WrongModel { .. })
        ));
        let late = t + LIFETIME.as_secs() + 1;
        assert!(matches!(
            SignedAnnouncement::decode_from(&bytes, from, &model, late),
            Err(AnnouncementError::Expired { .. })
        ));
        let early = t - MAX_SKEW.as_secs() - 1;
        assert!(matches!(
            SignedAnnouncement::decode_from(&bytes, from, &model, early),
            Err(AnnouncementError::FromTheFuture { .. })
        ));
    }

    #[test]
    fn bad_fields_are_named() {
        let (signed, keypair, signer) = signed();
        let mut a = signed.announcement.clone();
        a.layers = 4..4;
        let bytes = a.sign(&keypair, &signer).unwrap().encode();
        assert!(matches!(
            SignedAnnouncement::decode(&bytes),
            Err(AnnouncementError::Field(m)) if m.contains("empty")
        ));
        let mut a = signed.announcement.clone();
        a.throughput = f32::NAN;
        let bytes = a.sign(&keypair, &signer).unwrap().encode();
        assert!(matches!(
            SignedAnnouncement::decode(&bytes),
            Err(AnnouncementError::Field(m)) if m.contains("throughput")
        ));
        let mut a = signed.announcement;
        a.addrs = vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap(); MAX_ADDRS + 1];
        assert!(matches!(
            a.sign(&keypair, &signer),
            Err(AnnouncementError::Field(_))
        ));
    }
}
