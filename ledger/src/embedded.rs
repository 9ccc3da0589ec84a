//! An EVM in this process (revm), its state in one file.
//!
//! Every open takes an exclusive lock on `FILE.lock` and holds it until the
//! [`Embedded`] is dropped, so concurrent processes run one after the other
//! and none loses another's change. Each included transaction is saved at
//! once, atomically: the state goes to `.FILE.tmp` in the same directory,
//! is synced, and renamed over `FILE`. The temporary file's name is fixed and
//! only ever written under the lock, so one left behind by a killed process
//! is removed by the next open.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, U256};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{BlockEnv, CfgEnv, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::primitives::hardfork::SpecId;
use revm::primitives::TxKind;
use revm::state::{AccountInfo, Bytecode};
use revm::{Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};

use crate::account::{Account, DEV_ACCOUNTS};
use crate::chain::{Chain, ChainError, Included};
use crate::hex;

/// The state file's format version.
pub const FORMAT_VERSION: u32 = 1;
/// The embedded chain's id (anvil's default, so signed data matches a local anvil).
pub const CHAIN_ID: u64 = 31337;
/// What each development account holds at genesis: 10,000 ether, as anvil gives.
const DEV_FUNDS_WEI: u128 = 10_000 * 1_000_000_000_000_000_000;
const GAS_LIMIT: u64 = 30_000_000;
/// A state file this large is not one this crate wrote.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// The embedded chain.
pub struct Embedded {
    path: PathBuf,
    _lock: File,
    db: CacheDB<EmptyDB>,
    /// Time of the last block; the next runs at the set time or the system
    /// clock, but never before this.
    time: u64,
    /// A time set for what follows (`set_time`).
    next_time: Option<u64>,
    block: u64,
    contract: Option<Address>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format_version: u32,
    chain_id: u64,
    time: u64,
    block: u64,
    contract: Option<Address>,
    accounts: BTreeMap<Address, AccountState>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountState {
    balance: U256,
    nonce: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    code: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    storage: BTreeMap<U256, U256>,
}

impl Embedded {
    /// Opens the chain in `path` (a new one, with the development accounts
    /// funded, when the file does not exist), waiting for any other process
    /// that holds it.
    pub fn open(path: impl Into<PathBuf>) -> Result<Embedded, ChainError> {
        let path = path.into();
        let lock_path = sibling(&path, "", ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| state_error(&lock_path, "opening", e))?;
        lock.lock()
            .map_err(|e| state_error(&lock_path, "locking", e))?;
        let stale = temporary(&path);
        if stale.exists() {
            fs::remove_file(&stale).map_err(|e| state_error(&stale, "removing", e))?;
        }
        let mut chain = Embedded {
            path,
            _lock: lock,
            db: CacheDB::new(EmptyDB::default()),
            time: 0,
            next_time: None,
            block: 0,
            contract: None,
        };
        match fs::metadata(&chain.path) {
            Ok(meta) if meta.len() > MAX_STATE_BYTES => {
                return Err(ChainError::State(format!(
                    "{}: {} bytes is larger than any ledger state ({MAX_STATE_BYTES})",
                    chain.path.display(),
                    meta.len()
                )))
            }
            Ok(_) => chain.load()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => chain.genesis(),
            Err(e) => return Err(state_error(&chain.path, "reading", e)),
        }
        Ok(chain)
    }

    /// The ledger contract this state holds, once deployed.
    pub fn contract(&self) -> Option<Address> {
        self.contract
    }

    /// Records the ledger contract's address (saved with the next change).
    pub fn set_contract(&mut self, address: Address) -> Result<(), ChainError> {
        self.contract = Some(address);
        self.save()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn genesis(&mut self) {
        for index in 0..DEV_ACCOUNTS {
            let account = Account::dev(index).expect("a dev account");
            self.db.insert_account_info(
                account.address(),
                AccountInfo {
                    balance: U256::from(DEV_FUNDS_WEI),
                    ..Default::default()
                },
            );
        }
    }

    fn load(&mut self) -> Result<(), ChainError> {
        let text =
            fs::read_to_string(&self.path).map_err(|e| state_error(&self.path, "reading", e))?;
        let corrupt = |why: String| {
            ChainError::State(format!(
                "{}: not a ledger state file ({why})",
                self.path.display()
            ))
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {}, this build reads {FORMAT_VERSION}",
                state.format_version
            )));
        }
        if state.chain_id != CHAIN_ID {
            return Err(corrupt(format!("chain id {}", state.chain_id)));
        }
        for (address, account) in state.accounts {
            let code = if account.code.is_empty() {
                None
            } else {
                let bytes = hex::decode(&account.code)
                    .ok_or_else(|| corrupt(format!("code of {address} is not hex")))?;
                Some(Bytecode::new_raw(bytes.into()))
            };
            let code_hash = code
                .as_ref()
                .map_or(revm::primitives::KECCAK_EMPTY, |c| c.hash_slow());
            self.db.insert_account_info(
                address,
                AccountInfo {
                    balance: account.balance,
                    nonce: account.nonce,
                    code_hash,
                    code,
                    ..Default::default()
                },
            );
            for (slot, value) in account.storage {
                self.db
                    .insert_account_storage(address, slot, value)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
        }
        self.time = state.time;
        self.block = state.block;
        self.contract = state.contract;
        Ok(())
    }

    fn save(&self) -> Result<(), ChainError> {
        let mut accounts = BTreeMap::new();
        for (address, account) in &self.db.cache.accounts {
            let code = account
                .info
                .code
                .clone()
                .or_else(|| {
                    self.db
                        .cache
                        .contracts
                        .get(&account.info.code_hash)
                        .cloned()
                })
                .filter(|c| !c.is_empty())
                .map(|c| hex::encode(c.original_byte_slice()))
                .unwrap_or_default();
            let storage: BTreeMap<U256, U256> = account
                .storage
                .iter()
                .filter(|(_, v)| !v.is_zero())
                .map(|(k, v)| (*k, *v))
                .collect();
            if account.info.balance.is_zero()
                && account.info.nonce == 0
                && code.is_empty()
                && storage.is_empty()
            {
                continue;
            }
            accounts.insert(
                *address,
                AccountState {
                    balance: account.info.balance,
                    nonce: account.info.nonce,
                    code,
                    storage,
                },
            );
        }
        let state = StateFile {
            format_version: FORMAT_VERSION,
            chain_id: CHAIN_ID,
            time: self.time,
            block: self.block,
            contract: self.contract,
            accounts,
        };
        let text = serde_json::to_string(&state).expect("the state serializes");
        write_atomically(&self.path, text.as_bytes())
    }

    /// The set time, else the system clock; never before the last block.
    fn block_time(&self) -> u64 {
        let clock = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        self.next_time.unwrap_or_else(clock).max(self.time)
    }

    fn execute(&mut self, tx: TxEnv, commit: bool) -> Result<ExecutionResult, ChainError> {
        let (time, block) = (self.block_time(), self.block + 1);
        let mut evm = Context::mainnet()
            .with_db(&mut self.db)
            .modify_block_chained(|b: &mut BlockEnv| {
                b.timestamp = U256::from(time);
                b.number = U256::from(block);
                b.basefee = 0;
                b.gas_limit = GAS_LIMIT;
            })
            .modify_cfg_chained(|c: &mut CfgEnv| {
                c.chain_id = CHAIN_ID;
                c.spec = SpecId::CANCUN;
            })
            .build_mainnet();
        let result = if commit {
            evm.transact_commit(tx)
        } else {
            evm.transact(tx).map(|r| r.result)
        };
        result.map_err(|e| ChainError::Node(format!("the transaction is invalid: {e}")))
    }

    fn nonce_of(&self, address: Address) -> u64 {
        self.db
            .cache
            .accounts
            .get(&address)
            .map_or(0, |a| a.info.nonce)
    }
}

impl Chain for Embedded {
    fn set_time(&mut self, now: u64) -> Result<(), ChainError> {
        if now < self.time {
            return Err(ChainError::Node(format!(
                "the ledger's clock is at {}; it does not go back to {now}",
                self.time
            )));
        }
        self.next_time = Some(now);
        Ok(())
    }

    fn call(&mut self, to: Address, data: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        let tx = TxEnv {
            caller: Address::ZERO,
            nonce: self.nonce_of(Address::ZERO),
            kind: TxKind::Call(to),
            data: data.into(),
            gas_limit: GAS_LIMIT,
            gas_price: 0,
            chain_id: Some(CHAIN_ID),
            ..Default::default()
        };
        match self.execute(tx, false)? {
            ExecutionResult::Success { output, .. } => Ok(output.into_data().to_vec()),
            ExecutionResult::Revert { output, .. } => Err(ChainError::Reverted(output.to_vec())),
            ExecutionResult::Halt { reason, .. } => {
                Err(ChainError::Node(format!("the call halted: {reason:?}")))
            }
        }
    }

    fn send(
        &mut self,
        from: &Account,
        to: Option<Address>,
        value: U256,
        data: Vec<u8>,
    ) -> Result<Included, ChainError> {
        let tx = TxEnv {
            caller: from.address(),
            nonce: self.nonce_of(from.address()),
            kind: to.map_or(TxKind::Create, TxKind::Call),
            value,
            data: data.into(),
            gas_limit: GAS_LIMIT,
            gas_price: 0,
            chain_id: Some(CHAIN_ID),
            ..Default::default()
        };
        // Dry run first: a refused transaction leaves the state (and the
        // sender's nonce) as it was, as a chain's gas estimate would.
        match self.execute(tx.clone(), false)? {
            ExecutionResult::Success { .. } => {}
            ExecutionResult::Revert { output, .. } => {
                return Err(ChainError::Reverted(output.to_vec()))
            }
            ExecutionResult::Halt { reason, .. } => {
                return Err(ChainError::Node(format!(
                    "the transaction halted: {reason:?}"
                )))
            }
        }
        let included = match self.execute(tx, true)? {
            ExecutionResult::Success {
                gas, logs, output, ..
            } => Included {
                gas_used: gas.tx_gas_used(),
                created: match output {
                    Output::Create(_, address) => address,
                    Output::Call(_) => None,
                },
                logs,
            },
            ExecutionResult::Revert { output, .. } => {
                return Err(ChainError::Reverted(output.to_vec()))
            }
            ExecutionResult::Halt { reason, .. } => {
                return Err(ChainError::Node(format!(
                    "the transaction halted: {reason:?}"
                )))
            }
        };
        self.time = self.block_time();
        self.block += 1;
        self.save()?;
        Ok(included)
    }

    fn balance(&mut self, account: Address) -> Result<U256, ChainError> {
        Ok(self
            .db
            .cache
            .accounts
            .get(&account)
            .map_or(U256::ZERO, |a| a.info.balance))
    }
}

/// `.NAME.tmp` beside `path`.
fn temporary(path: &Path) -> PathBuf {
    sibling(path, ".", ".tmp")
}

fn sibling(path: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "ledger".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!("{prefix}{name}{suffix}"))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
    let tmp = temporary(path);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    written.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        state_error(path, "writing", e)
    })
}

fn state_error(path: &Path, doing: &str, e: std::io::Error) -> ChainError {
    ChainError::State(format!("{doing} {}: {e}", path.display()))
}
