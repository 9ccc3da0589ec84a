//! zkinfer's network layer on rust-libp2p (docs/network.md).
//!
//! - [`announcement`]: what a node states about itself, signed by its libp2p
//!   key and its receipt key, with a strict decoder.
//! - [`host`]: the libp2p host: TCP with Noise and yamux, a Kademlia DHT in
//!   which nodes provide their model's key and store their announcement,
//!   circuit relay with direct connection upgrade, and the wire protocol on
//!   streams ([`host::WIRE_PROTOCOL`]). Wire frames are unchanged
//!   (docs/wire.md); libp2p only carries them.

pub mod announcement;
pub mod host;

pub use announcement::{Announcement, AnnouncementError, SignedAnnouncement};
pub use host::{Host, HostConfig, Incoming, NetworkError, Role};
