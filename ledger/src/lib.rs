//! The stake ledger of the optimistic path, as a contract on an EVM chain.
//!
//! Nodes stake and register the BLS key their receipts are signed with. A
//! submitted result stays *pending* for a challenge window, and its nodes'
//! stakes are locked while it is; a result whose window closed without a valid
//! challenge is *final*. Two challenges slash a node: an equivocation (two
//! receipts it signed for one hop input with different outputs, which the
//! contract checks itself with the pairing precompile) and a committee verdict
//! (a threshold of staked auditors who re-executed a fraud proof sign that it
//! holds). A challenge whose evidence fails costs the challenger its bond.
//!
//! The rules live in one Solidity contract (`contracts/Ledger.sol`, its
//! bytecode committed beside it). [`Ledger`] drives it on any [`Chain`]: the
//! [`Embedded`] EVM in this process, state in a locked file, or an
//! Ethereum JSON-RPC endpoint ([`Rpc`]). docs/ledger.md has the rules, the
//! trust assumption of committee slashing, and the gas each operation costs.

mod account;
mod chain;
pub mod contract;
mod embedded;
mod evidence;
mod hex;
mod rpc;

use alloy_primitives::{FixedBytes, U256};
use alloy_sol_types::{SolCall, SolEvent};
use serde::Serialize;
use verifier::receipt::{PublicKey, SecretKey, Signature};

pub use account::{Account, DEV_ACCOUNTS};
pub use alloy_primitives::Address;
pub use chain::{Chain, ChainError, Included};
pub use embedded::Embedded;
pub use evidence::{Equivocation, EvidenceError, SignedReceipt, SignedVerdict, MAX_EVIDENCE_BYTES};
pub use rpc::Rpc;

use contract::ZkinferLedger as C;

/// The latest time the ledger takes, in unix seconds (the last second of the year 9999).
pub const MAX_TIME: u64 = 253_402_300_799;
/// The longest challenge window the contract accepts: ten years.
pub const MAX_WINDOW_S: u64 = 10 * 365 * 86_400;
/// The most nodes a result names, and the most auditors on a verdict.
pub const MAX_NODES: usize = 64;

/// The rules of a ledger, fixed when its contract is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Params {
    /// How long after submission a result can be challenged, in seconds.
    pub challenge_window_s: u64,
    /// What a valid challenge takes from the accused node's stake (all of it if it holds less).
    pub slash_amount: u128,
    /// What a challenger must hold to challenge, and loses if its evidence fails.
    pub challenge_bond: u128,
    /// The stake each node of a submitted result, and each auditor of a verdict, must hold.
    pub min_stake: u128,
    /// How many auditors must sign a verdict.
    pub committee_threshold: u32,
}

impl Default for Params {
    /// One hour of challenge window; a slash of 100 wei, a bond of 10, a minimum stake of
    /// 100; verdicts of 2 auditors.
    fn default() -> Self {
        Params {
            challenge_window_s: 3600,
            slash_amount: 100,
            challenge_bond: 10,
            min_stake: 100,
            committee_threshold: 2,
        }
    }
}

/// A result's id: the 32-byte digest of its transcript (64 hex digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResultId(pub [u8; 32]);

impl ResultId {
    /// 64 hex digits, with or without `0x`; a zero id is refused.
    pub fn parse(text: &str) -> Result<ResultId, LedgerError> {
        let bytes = hex::decode(text).filter(|b| b.len() == 32).ok_or_else(|| {
            LedgerError::Invalid(format!(
                "result id {:?}: not 64 hex digits (a transcript's digest)",
                printable(text)
            ))
        })?;
        let id = ResultId(bytes.try_into().expect("32 bytes"));
        if id.0 == [0; 32] {
            return Err(LedgerError::Invalid("the result id is zero".into()));
        }
        Ok(id)
    }
}

impl std::fmt::Display for ResultId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl Serialize for ResultId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a result stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ResultState {
    /// Challengeable until (not including) `challenge_deadline`.
    Pending { challenge_deadline: u64 },
    /// The window closed at `at` without a valid challenge.
    Final { at: u64 },
    /// A committee verdict against `node` arrived at `at`.
    Slashed {
        node: Address,
        challenger: Address,
        at: u64,
    },
}

/// A submitted result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Submission {
    pub id: ResultId,
    pub nodes: Vec<Address>,
    pub submitted_at: u64,
    #[serde(flatten)]
    pub state: ResultState,
}

/// An account the ledger knows: a balance, and for a node its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountView {
    pub address: Address,
    #[serde(serialize_with = "decimal")]
    pub balance: u128,
    /// The registered BLS public key (hex), for a node or auditor.
    pub key: Option<String>,
    /// Until when a pending result locks the stake.
    pub locked_until: Option<u64>,
}

/// Everything the contract holds, as of now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub contract: Address,
    pub params: Params,
    #[serde(serialize_with = "decimal")]
    pub burned: u128,
    pub accounts: Vec<AccountView>,
    pub results: Vec<Submission>,
}

/// What a challenge came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ChallengeOutcome {
    /// The evidence held: `node` lost `slashed`, of which `reward` went to the challenger.
    Slashed {
        node: Address,
        #[serde(serialize_with = "decimal")]
        slashed: u128,
        #[serde(serialize_with = "decimal")]
        reward: u128,
    },
    /// The evidence failed: the challenger's bond was burned.
    Rejected {
        reason: String,
        #[serde(serialize_with = "decimal")]
        bond_burned: u128,
    },
}

/// Why a ledger operation did not happen. Nothing was applied in any case.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The contract refused: its reason in words.
    #[error("refused: {0}")]
    Refused(String),
    /// Bad input, refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Chain(String),
    #[error("{0} holds no zkinfer ledger contract")]
    NotALedger(Address),
}

impl From<ChainError> for LedgerError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Reverted(data) => LedgerError::Refused(contract::revert_reason(&data)),
            other => LedgerError::Chain(other.to_string()),
        }
    }
}

/// The ledger contract at one address on one chain.
pub struct Ledger<Ch> {
    chain: Ch,
    address: Address,
    last_gas: u64,
}

impl<Ch: Chain> Ledger<Ch> {
    /// Deploys a new ledger contract with these rules.
    pub fn deploy(
        mut chain: Ch,
        from: &Account,
        params: Params,
    ) -> Result<Ledger<Ch>, LedgerError> {
        check_params(&params)?;
        let mut code = contract::bytecode();
        code.extend_from_slice(&alloy_sol_types::SolConstructor::abi_encode(
            &C::constructorCall {
                window: params.challenge_window_s,
                slashBy: U256::from(params.slash_amount),
                bond: U256::from(params.challenge_bond),
                stake: U256::from(params.min_stake),
                threshold: params.committee_threshold,
            },
        ));
        let included = chain.send(from, None, U256::ZERO, code)?;
        let address = included
            .created
            .ok_or_else(|| LedgerError::Chain("the deployment created no contract".into()))?;
        Ok(Ledger {
            chain,
            address,
            last_gas: included.gas_used,
        })
    }

    /// The ledger contract at `address` (checked: it answers as one).
    pub fn at(chain: Ch, address: Address) -> Result<Ledger<Ch>, LedgerError> {
        let mut ledger = Ledger {
            chain,
            address,
            last_gas: 0,
        };
        ledger
            .params()
            .map_err(|_| LedgerError::NotALedger(address))?;
        Ok(ledger)
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn chain(&mut self) -> &mut Ch {
        &mut self.chain
    }

    pub fn into_chain(self) -> Ch {
        self.chain
    }

    /// The gas the last transaction used.
    pub fn last_gas(&self) -> u64 {
        self.last_gas
    }

    /// Runs what follows at this time (unix seconds; a chain's clock never goes back).
    pub fn set_time(&mut self, now: u64) -> Result<(), LedgerError> {
        if now > MAX_TIME {
            return Err(LedgerError::Invalid(format!(
                "time {now} is past the year 9999 ({MAX_TIME})"
            )));
        }
        Ok(self.chain.set_time(now)?)
    }

    pub fn params(&mut self) -> Result<Params, LedgerError> {
        Ok(Params {
            challenge_window_s: self.view(C::challengeWindowCall {})?,
            slash_amount: to_u128(self.view(C::slashAmountCall {})?),
            challenge_bond: to_u128(self.view(C::challengeBondCall {})?),
            min_stake: to_u128(self.view(C::minStakeCall {})?),
            committee_threshold: self.view(C::committeeThresholdCall {})?,
        })
    }

    /// Adds `amount` wei from `from`'s funds to its stake; returns the new stake.
    pub fn deposit(&mut self, from: &Account, amount: u128) -> Result<u128, LedgerError> {
        positive(amount)?;
        let funds = self.chain.balance(from.address())?;
        if funds < U256::from(amount) {
            return Err(LedgerError::Invalid(format!(
                "{} holds {funds} wei, less than {amount}",
                from.address()
            )));
        }
        self.transact(from, U256::from(amount), C::depositCall {})?;
        self.balance(from.address())
    }

    /// Pays `amount` of `from`'s stake back to it; returns the stake left.
    pub fn withdraw(&mut self, from: &Account, amount: u128) -> Result<u128, LedgerError> {
        positive(amount)?;
        self.transact(
            from,
            U256::ZERO,
            C::withdrawCall {
                amount: U256::from(amount),
            },
        )?;
        self.balance(from.address())
    }

    pub fn balance(&mut self, account: Address) -> Result<u128, LedgerError> {
        Ok(to_u128(self.view(C::balanceOfCall(account))?))
    }

    /// Registers `key` as `from`'s node key, with its proof of possession.
    pub fn register(&mut self, from: &Account, key: &SecretKey) -> Result<(), LedgerError> {
        let public = key.public();
        let pop = key.sign(&verifier::receipt::Possession {
            account: from.address().into(),
        });
        self.transact(
            from,
            U256::ZERO,
            C::registerCall {
                pubkey: public.to_bytes().to_vec().into(),
                g2: public.to_evm().map(U256::from_be_bytes),
                pop: pop.to_evm().map(U256::from_be_bytes),
            },
        )
    }

    /// The account a BLS key is registered to.
    pub fn node_of_key(&mut self, key: &PublicKey) -> Result<Option<Address>, LedgerError> {
        let hash = alloy_primitives::keccak256(key.to_bytes());
        let node = self.view(C::nodeOfKeyCall(hash))?;
        Ok((node != Address::ZERO).then_some(node))
    }

    /// Records a result and the nodes accountable for it; returns its challenge deadline.
    pub fn submit(
        &mut self,
        from: &Account,
        id: ResultId,
        nodes: &[Address],
    ) -> Result<u64, LedgerError> {
        if nodes.is_empty() || nodes.len() > MAX_NODES {
            return Err(LedgerError::Invalid(format!(
                "a result names 1 to {MAX_NODES} nodes, not {}",
                nodes.len()
            )));
        }
        self.transact(
            from,
            U256::ZERO,
            C::submitCall {
                id: FixedBytes(id.0),
                accountable: nodes.to_vec(),
            },
        )?;
        match self.result(id)? {
            Some(Submission {
                state: ResultState::Pending { challenge_deadline },
                ..
            }) => Ok(challenge_deadline),
            other => Err(LedgerError::Chain(format!(
                "the submitted result reads {other:?}"
            ))),
        }
    }

    /// Records every result whose window has closed as final; returns their ids.
    pub fn finalize(&mut self, from: &Account) -> Result<Vec<ResultId>, LedgerError> {
        let mut done = Vec::new();
        let mut gas = 0;
        for id in self.result_ids()? {
            if self.finalizable(id)? {
                self.transact(
                    from,
                    U256::ZERO,
                    C::finalizeCall {
                        id: FixedBytes(id.0),
                    },
                )?;
                gas += self.last_gas;
                done.push(id);
            }
        }
        self.last_gas = gas;
        Ok(done)
    }

    /// Slashes the signer of two receipts for one hop input with different outputs.
    pub fn challenge_equivocation(
        &mut self,
        from: &Account,
        evidence: &Equivocation,
    ) -> Result<ChallengeOutcome, LedgerError> {
        let node = self.node_of_key(&evidence.signer)?.ok_or_else(|| {
            LedgerError::Refused(format!(
                "key {} is registered to no account",
                evidence.signer.to_hex()
            ))
        })?;
        let [a, b] = &evidence.receipts;
        let call = C::challengeEquivocationCall {
            node,
            a: a.message(&evidence.signer).into(),
            sigA: a.signature.to_evm().map(U256::from_be_bytes),
            b: b.message(&evidence.signer).into(),
            sigB: b.signature.to_evm().map(U256::from_be_bytes),
        };
        self.challenge(from, call)
    }

    /// Slashes `accused`, a node of result `id`, on auditors' verdicts (at
    /// least the threshold, all naming this ledger, `id` and `accused`).
    pub fn challenge_committee(
        &mut self,
        from: &Account,
        id: ResultId,
        verdicts: &[SignedVerdict],
    ) -> Result<ChallengeOutcome, LedgerError> {
        let first = verdicts
            .first()
            .ok_or_else(|| LedgerError::Invalid("no verdicts".into()))?;
        if verdicts.len() > MAX_NODES {
            return Err(LedgerError::Invalid(format!(
                "more than {MAX_NODES} verdicts"
            )));
        }
        for v in verdicts {
            if v.verdict.ledger != self.address.0 .0 || v.verdict.result != id.0 {
                return Err(LedgerError::Invalid(format!(
                    "a verdict by {} is for another ledger or result",
                    v.auditor.to_hex()
                )));
            }
            if v.verdict.accused != first.verdict.accused {
                return Err(LedgerError::Invalid(
                    "the verdicts accuse different nodes".into(),
                ));
            }
        }
        let accused = self.node_of_key(&first.verdict.accused)?.ok_or_else(|| {
            LedgerError::Refused("the accused key is registered to no account".into())
        })?;
        let mut auditors = Vec::with_capacity(verdicts.len());
        for v in verdicts {
            let address = self.node_of_key(&v.auditor)?.ok_or_else(|| {
                LedgerError::Refused(format!(
                    "auditor key {} is registered to no account",
                    v.auditor.to_hex()
                ))
            })?;
            auditors.push((address, v.signature));
        }
        auditors.sort_by_key(|(a, _)| *a);
        auditors.dedup_by_key(|(a, _)| *a);
        let signature = Signature::aggregate(auditors.iter().map(|(_, s)| s));
        let call = C::challengeByCommitteeCall {
            id: FixedBytes(id.0),
            accused,
            auditors: auditors.iter().map(|(a, _)| *a).collect(),
            signature: signature.to_evm().map(U256::from_be_bytes),
        };
        self.challenge(from, call)
    }

    /// One result, as of now.
    pub fn result(&mut self, id: ResultId) -> Result<Option<Submission>, LedgerError> {
        let r = self.view(C::resultOfCall {
            id: FixedBytes(id.0),
        })?;
        let state = match r.state {
            0 => return Ok(None),
            1 => ResultState::Pending {
                challenge_deadline: r.deadline,
            },
            2 => ResultState::Final { at: r.settledAt },
            _ => ResultState::Slashed {
                node: r.slashedNode,
                challenger: r.challenger,
                at: r.settledAt,
            },
        };
        Ok(Some(Submission {
            id,
            nodes: r.accountable,
            submitted_at: r.submittedAt,
            state,
        }))
    }

    /// Everything the contract holds.
    pub fn snapshot(&mut self) -> Result<Snapshot, LedgerError> {
        let params = self.params()?;
        let burned = to_u128(self.view(C::burnedCall {})?);
        let count = to_u64(self.view(C::accountCountCall {})?);
        let mut accounts = Vec::new();
        for i in 0..count {
            let address = self.view(C::accountAtCall { i: U256::from(i) })?;
            let key = self.view(C::publicKeyOfCall { node: address })?;
            let until = self.view(C::lockedUntilCall { account: address })?;
            accounts.push(AccountView {
                address,
                balance: self.balance(address)?,
                key: (!key.is_empty()).then(|| hex::encode(&key)),
                locked_until: (until != 0).then_some(until),
            });
        }
        let mut results = Vec::new();
        for id in self.result_ids()? {
            results.extend(self.result(id)?);
        }
        Ok(Snapshot {
            contract: self.address,
            params,
            burned,
            accounts,
            results,
        })
    }

    fn result_ids(&mut self) -> Result<Vec<ResultId>, LedgerError> {
        let count = to_u64(self.view(C::resultCountCall {})?);
        (0..count)
            .map(|i| {
                Ok(ResultId(
                    self.view(C::resultIdAtCall { i: U256::from(i) })?.0,
                ))
            })
            .collect()
    }

    /// Whether `finalize` would record `id` now: its window has closed and
    /// no earlier `finalize` recorded it (a read-only run of the call tells).
    fn finalizable(&mut self, id: ResultId) -> Result<bool, LedgerError> {
        let data = C::finalizeCall {
            id: FixedBytes(id.0),
        }
        .abi_encode();
        match self.chain.call(self.address, data) {
            Ok(_) => Ok(true),
            Err(ChainError::Reverted(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn challenge<Call: SolCall>(
        &mut self,
        from: &Account,
        call: Call,
    ) -> Result<ChallengeOutcome, LedgerError> {
        let included = self.send(from, U256::ZERO, call)?;
        for log in &included.logs {
            if let Ok(e) = C::Slashed::decode_log(log) {
                return Ok(ChallengeOutcome::Slashed {
                    node: e.node,
                    slashed: to_u128(e.slashed),
                    reward: to_u128(e.reward),
                });
            }
            if let Ok(e) = C::ChallengeRejected::decode_log(log) {
                return Ok(ChallengeOutcome::Rejected {
                    reason: e.reason.clone(),
                    bond_burned: to_u128(e.bondBurned),
                });
            }
        }
        Err(LedgerError::Chain(
            "the challenge emitted no outcome".into(),
        ))
    }

    fn transact<Call: SolCall>(
        &mut self,
        from: &Account,
        value: U256,
        call: Call,
    ) -> Result<(), LedgerError> {
        self.send(from, value, call).map(|_| ())
    }

    fn send<Call: SolCall>(
        &mut self,
        from: &Account,
        value: U256,
        call: Call,
    ) -> Result<Included, LedgerError> {
        let included = self
            .chain
            .send(from, Some(self.address), value, call.abi_encode())?;
        self.last_gas = included.gas_used;
        Ok(included)
    }

    fn view<Call: SolCall>(&mut self, call: Call) -> Result<Call::Return, LedgerError> {
        let out = self.chain.call(self.address, call.abi_encode())?;
        Call::abi_decode_returns(&out).map_err(|_| {
            LedgerError::Chain(format!("{} answered something unexpected", self.address))
        })
    }
}

fn check_params(p: &Params) -> Result<(), LedgerError> {
    if p.challenge_window_s == 0 || p.challenge_window_s > MAX_WINDOW_S {
        return Err(LedgerError::Invalid(format!(
            "the challenge window must be 1 to {MAX_WINDOW_S} s (ten years), not {}",
            p.challenge_window_s
        )));
    }
    if p.committee_threshold == 0 || p.committee_threshold as usize > MAX_NODES {
        return Err(LedgerError::Invalid(format!(
            "the committee threshold must be 1 to {MAX_NODES}, not {}",
            p.committee_threshold
        )));
    }
    if p.min_stake == 0 {
        return Err(LedgerError::Invalid(
            "the min stake must be positive".into(),
        ));
    }
    Ok(())
}

fn positive(amount: u128) -> Result<(), LedgerError> {
    if amount == 0 {
        return Err(LedgerError::Invalid("the amount must be positive".into()));
    }
    Ok(())
}

/// Text fit to print: control characters escaped, at most 80 characters.
pub fn printable(text: &str) -> String {
    let escaped: String = text
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 80 {
        format!("{escaped}…")
    } else {
        escaped
    }
}

fn to_u128(v: U256) -> u128 {
    v.try_into().unwrap_or(u128::MAX)
}

fn to_u64(v: U256) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

fn decimal<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests;
