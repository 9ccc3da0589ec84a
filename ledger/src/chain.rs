//! Where the contract runs: [`crate::Embedded`] (an EVM in this process, its
//! state in a file) or [`crate::Rpc`] (an Ethereum JSON-RPC endpoint).

use alloy_primitives::{Address, Log, U256};

use crate::account::Account;

/// A transaction that was included and succeeded.
#[derive(Clone, Debug)]
pub struct Included {
    pub gas_used: u64,
    /// The created contract, for a deployment.
    pub created: Option<Address>,
    pub logs: Vec<Log>,
}

/// Why a chain operation did not happen. Nothing was applied in any case:
/// a transaction either succeeds whole or not at all.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The contract refused (its revert data, decoded by the caller).
    #[error("the transaction reverted")]
    Reverted(Vec<u8>),
    /// The chain could not be reached or answered something unexpected.
    #[error("{0}")]
    Node(String),
    /// The chain's state could not be read or written (embedded).
    #[error("{0}")]
    State(String),
}

/// One EVM chain the ledger contract lives on.
pub trait Chain {
    /// Runs later calls and transactions at this block time (unix seconds).
    /// A chain's clock never goes back: an earlier time is an error.
    fn set_time(&mut self, now: u64) -> Result<(), ChainError>;

    /// Calls `to` read-only, at the current (or set) time.
    fn call(&mut self, to: Address, data: Vec<u8>) -> Result<Vec<u8>, ChainError>;

    /// Sends a transaction from `from` and waits for it to be included.
    fn send(
        &mut self,
        from: &Account,
        to: Option<Address>,
        value: U256,
        data: Vec<u8>,
    ) -> Result<Included, ChainError>;

    /// The native balance of `account` (what it can deposit).
    fn balance(&mut self, account: Address) -> Result<U256, ChainError>;
}
