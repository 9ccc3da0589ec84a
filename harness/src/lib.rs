//! What tests and benches share: the cheat suite (chains with one node
//! misbehaving in each way the verification routes must catch) and emulated
//! wide-area links on loopback.

pub mod cheats;
pub mod netem;
