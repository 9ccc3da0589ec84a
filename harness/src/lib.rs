//! What tests and benches share: the cheat suite (chains with one node
//! misbehaving in each way the verification routes must catch), emulated
//! wide-area links on loopback, guards for child processes, and the runtime
//! and API benches.

pub mod api_bench;
pub mod cheats;
pub mod children;
pub mod conformance;
pub mod loopback;
pub mod netem;
pub mod netns;
pub mod runtime_bench;
