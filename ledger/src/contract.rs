//! The ledger contract's ABI and bytecode (`contracts/Ledger.sol`, compiled by
//! `scripts/build_contract.sh`), and its revert reasons in words.

use alloy_sol_types::{sol, SolError, SolInterface};

sol!(
    #[allow(missing_docs)]
    #[derive(Debug)]
    ZkinferLedger,
    "contracts/Ledger.abi.json"
);

pub use ZkinferLedger::*;

/// The contract's deployment bytecode, without constructor arguments.
pub fn bytecode() -> Vec<u8> {
    let text = include_str!("../contracts/Ledger.bin").trim();
    crate::hex::decode(text).expect("contracts/Ledger.bin is hex")
}

/// What the contract's revert data says, in words.
pub fn revert_reason(data: &[u8]) -> String {
    use ZkinferLedgerErrors as E;
    let Ok(error) = E::abi_decode(data) else {
        return match alloy_sol_types::Revert::abi_decode(data) {
            Ok(revert) => revert.reason,
            Err(_) if data.is_empty() => "reverted without a reason".into(),
            Err(_) => format!("reverted with data 0x{}", crate::hex::encode(data)),
        };
    };
    match error {
        E::BadParams(e) => e.reason,
        E::ZeroAmount(_) => "the amount is zero".into(),
        E::InsufficientBalance(e) => {
            format!("the balance is {}, short of {}", e.balance, e.amount)
        }
        E::Locked(e) => format!("the stake is locked by a pending result until {}", e.until),
        E::TransferFailed(_) => "the withdrawal could not be paid out".into(),
        E::AlreadyRegistered(_) => "this account already registered a key".into(),
        E::KeyTaken(e) => format!("this key is registered to {}", e.node),
        E::BadKey(e) => e.reason,
        E::BadResult(e) => e.reason,
        E::UnknownResult(e) => format!("no result {} was submitted", e.id),
        E::NotPending(e) => format!("result {} is {}", e.id, state_name(e.state)),
        E::StillOpen(e) => format!("result {} can be challenged until {}", e.id, e.deadline),
        E::NoBond(e) => format!(
            "the challenger holds {}, less than the bond of {}",
            e.balance, e.bond
        ),
        E::NotRegistered(e) => format!("{} has registered no key", e.node),
        E::AlreadySlashed(_) => "this equivocation was slashed before".into(),
    }
}

/// The contract's `State` enum in words.
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "pending",
        2 => "final",
        3 => "slashed",
        _ => "unknown",
    }
}
