//! The stake ledger of the optimistic path: stakes, pending results, challenge
//! windows and slashing.
//!
//! A node stakes (deposits) before its results are accepted. A submitted result
//! stays *pending* for a challenge window; while it is pending, the stakes of its
//! nodes are locked. A challenger who holds at least the challenge bond may present
//! a fraud proof inside the window: if the proof checks and accuses one of the
//! result's nodes, that node is slashed (half of the slashed amount rewards the
//! challenger, the rest is burned) and the result is `Slashed`; otherwise the
//! challenger's bond is burned and the result stays pending. A result whose window
//! closed without a valid fraud proof is `Final`.
//!
//! Time is always an explicit `now` (unix seconds) argument, so tests drive the
//! clock. Every state change appends an [`Event`] to the ledger's log. The ledger
//! lives in one JSON file written atomically ([`Ledger::save`]); the rules and the
//! file format are in `docs/ledger.md`. This crate checks no proofs itself: the
//! caller passes the checker to [`Ledger::challenge`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the ledger file format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A node's BLS public key in hex (128 hex digits), or a challenger's name or key.
pub type Account = String;

/// The id of a submitted result, e.g. the blake3 hex of its transcript.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResultId(pub String);

impl fmt::Display for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The rules of a ledger, fixed when it is created and stored in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// How long after submission a result can be challenged, in seconds.
    pub challenge_window_s: u64,
    /// What a valid fraud proof takes from the accused node's stake (all of it if it holds less).
    pub slash_amount: u64,
    /// What a challenger must hold to challenge, and loses if its fraud proof is invalid.
    pub challenge_bond: u64,
    /// The stake each node of a submitted result must hold.
    pub min_stake: u64,
}

impl Default for Params {
    /// One hour of challenge window; a slash of 100 units, a bond of 10, a minimum stake of 100.
    fn default() -> Self {
        Params {
            challenge_window_s: 3600,
            slash_amount: 100,
            challenge_bond: 10,
            min_stake: 100,
        }
    }
}

/// Where a result stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ResultState {
    /// Challengeable until (not including) `challenge_deadline`.
    Pending { challenge_deadline: u64 },
    /// The window closed at `at` without a valid fraud proof.
    Final { at: u64 },
    /// A valid fraud proof against `node` arrived at `at`.
    Slashed {
        node: Account,
        challenger: Account,
        at: u64,
    },
}

/// A submitted result: who is accountable for it and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    pub nodes: Vec<Account>,
    pub submitted_at: u64,
    #[serde(flatten)]
    pub state: ResultState,
}

/// Why a fraud proof was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The checker refused the proof, with its reason.
    InvalidProof(String),
    /// The proof accuses a node that is not accountable for this result.
    NotAmongNodes { accused: Account },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidProof(reason) => write!(f, "invalid fraud proof: {reason}"),
            Rejection::NotAmongNodes { accused } => {
                write!(
                    f,
                    "the proof accuses {accused}, which is not a node of this result"
                )
            }
        }
    }
}

/// What a challenge did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeOutcome {
    /// The fraud proof was valid: `slashed` left the node's stake, `reward` went to
    /// the challenger and `burned` was destroyed (`reward + burned == slashed`).
    Slashed {
        node: Account,
        slashed: u64,
        reward: u64,
        burned: u64,
    },
    /// The fraud proof was invalid: the challenger's bond was burned; the result is unchanged.
    Rejected { reason: Rejection, bond_burned: u64 },
}

/// One change of the ledger, with the time it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What changed. Balances are the account's balance after the change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Deposit {
        account: Account,
        amount: u64,
        balance: u64,
    },
    Withdraw {
        account: Account,
        amount: u64,
        balance: u64,
    },
    Submit {
        id: ResultId,
        nodes: Vec<Account>,
        challenge_deadline: u64,
    },
    Final {
        id: ResultId,
    },
    Slash {
        id: ResultId,
        node: Account,
        challenger: Account,
        slashed: u64,
        reward: u64,
        burned: u64,
    },
    ChallengeRejected {
        id: ResultId,
        challenger: Account,
        reason: String,
        bond_burned: u64,
    },
}

/// A refused operation (nothing changed but, possibly, results whose window had
/// closed becoming final) or a ledger file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source} (the previous file, if any, is unchanged)")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid ledger file ({source}); restore it from a backup, or move it away to start an empty ledger")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} is a ledger file of format version {found}; this build reads version {FORMAT_VERSION}: use a zkinfer that matches it")]
    Version { path: PathBuf, found: u32 },
    #[error("an account name must not be empty")]
    EmptyAccount,
    #[error("a result id must not be empty")]
    EmptyResultId,
    #[error("an amount must be positive")]
    ZeroAmount,
    #[error("depositing {amount} would overflow the balance of {account}")]
    Overflow { account: Account, amount: u64 },
    #[error("{account} holds {balance}, cannot withdraw {amount}")]
    InsufficientBalance {
        account: Account,
        balance: u64,
        amount: u64,
    },
    #[error("the stake of {account} is locked by {pending} pending result(s) until {until}; withdraw at or after {until}")]
    Locked {
        account: Account,
        pending: usize,
        until: u64,
    },
    #[error("result {0} was already submitted; submit each result once")]
    DuplicateResult(ResultId),
    #[error("result {0} names no nodes; a result needs the nodes accountable for it")]
    NoNodes(ResultId),
    #[error("result {id} names node {node} twice")]
    DuplicateNode { id: ResultId, node: Account },
    #[error("node {node} stakes {stake}, below the minimum of {min_stake}; deposit at least {} more before submitting its results", min_stake - stake)]
    StakeTooLow {
        node: Account,
        stake: u64,
        min_stake: u64,
    },
    #[error("no result {0} in this ledger; check the id (`zkinfer ledger show` lists them)")]
    UnknownResult(ResultId),
    #[error("result {id} became final at {at} (now {now}): its challenge window is closed")]
    WindowClosed { id: ResultId, at: u64, now: u64 },
    #[error("result {id} was already slashed (node {node}); a result is slashed once")]
    AlreadySlashed { id: ResultId, node: Account },
    #[error("challenger {challenger} holds {balance}, a challenge needs a bond of {bond}; deposit {} more first", bond - balance)]
    BondTooLow {
        challenger: Account,
        balance: u64,
        bond: u64,
    },
}

/// The file's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Book {
    format_version: u32,
    params: Params,
    balances: BTreeMap<Account, u64>,
    /// Everything slashed or forfeited that went to no one.
    burned: u64,
    results: BTreeMap<ResultId, Submission>,
    events: Vec<Event>,
}

/// A stake ledger backed by one JSON file.
///
/// Operations change the ledger in memory; [`save`](Ledger::save) writes it. Every
/// operation that takes `now` first makes final the results whose window closed by
/// `now` (as [`finalize`](Ledger::finalize) does). One process at a time may own a
/// ledger file: two writers lose each other's changes.
#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
    book: Book,
}

impl Ledger {
    /// An empty ledger with these rules, to be saved at `path`. Touches no file.
    pub fn new(path: impl Into<PathBuf>, params: Params) -> Ledger {
        Ledger {
            path: path.into(),
            book: Book {
                format_version: FORMAT_VERSION,
                params,
                balances: BTreeMap::new(),
                burned: 0,
                results: BTreeMap::new(),
                events: Vec::new(),
            },
        }
    }

    /// Reads the ledger at `path`, or an empty one with [`Params::default`] if there
    /// is no file there (it is created by the first [`save`](Ledger::save)).
    pub fn open(path: impl Into<PathBuf>) -> Result<Ledger, LedgerError> {
        let path = path.into();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Ledger::new(path, Params::default()))
            }
            Err(source) => return Err(LedgerError::Read { path, source }),
        };
        // The version first, so a future format is reported as such, not as corrupt.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        match serde_json::from_slice::<Version>(&bytes) {
            Ok(v) if v.format_version != FORMAT_VERSION => {
                return Err(LedgerError::Version {
                    path,
                    found: v.format_version,
                })
            }
            Ok(_) => {}
            Err(source) => return Err(LedgerError::Corrupt { path, source }),
        }
        match serde_json::from_slice::<Book>(&bytes) {
            Ok(book) => Ok(Ledger { path, book }),
            Err(source) => Err(LedgerError::Corrupt { path, source }),
        }
    }

    /// Writes the ledger to its file atomically: a temporary file in the same
    /// directory, flushed to disk, then renamed over the old file, so a crash leaves
    /// either the old ledger or the new one, never a mix.
    pub fn save(&self) -> Result<(), LedgerError> {
        let bytes = serde_json::to_vec_pretty(&self.book).expect("a ledger always serializes");
        write_atomic(&self.path, &bytes).map_err(|source| LedgerError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// The file this ledger is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn params(&self) -> &Params {
        &self.book.params
    }

    /// What `account` holds (0 if it never deposited).
    pub fn balance(&self, account: &str) -> u64 {
        self.book.balances.get(account).copied().unwrap_or(0)
    }

    /// Every account with a balance entry.
    pub fn balances(&self) -> &BTreeMap<Account, u64> {
        &self.book.balances
    }

    /// The total slashed or forfeited that went to no one.
    pub fn burned(&self) -> u64 {
        self.book.burned
    }

    pub fn state(&self, id: &ResultId) -> Option<&ResultState> {
        self.book.results.get(id).map(|s| &s.state)
    }

    pub fn result(&self, id: &ResultId) -> Option<&Submission> {
        self.book.results.get(id)
    }

    pub fn results(&self) -> &BTreeMap<ResultId, Submission> {
        &self.book.results
    }

    /// Every change, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.book.events
    }

    /// The latest challenge deadline among the pending results `account` is a node
    /// of, as of the last operation; `None` if its stake is not locked.
    pub fn locked_until(&self, account: &str) -> Option<u64> {
        self.book
            .results
            .values()
            .filter(|s| s.nodes.iter().any(|n| n == account))
            .filter_map(|s| match s.state {
                ResultState::Pending { challenge_deadline } => Some(challenge_deadline),
                _ => None,
            })
            .max()
    }

    /// Adds `amount` to the stake of `account`; returns its new balance.
    pub fn deposit(&mut self, account: &str, amount: u64, now: u64) -> Result<u64, LedgerError> {
        check_account(account)?;
        if amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        self.finalize(now);
        let balance =
            self.balance(account)
                .checked_add(amount)
                .ok_or_else(|| LedgerError::Overflow {
                    account: account.to_string(),
                    amount,
                })?;
        self.book.balances.insert(account.to_string(), balance);
        self.log(
            now,
            EventKind::Deposit {
                account: account.to_string(),
                amount,
                balance,
            },
        );
        Ok(balance)
    }

    /// Takes `amount` out of the stake of `account`; returns its new balance.
    /// Refused while `account` is a node of a pending result: its stake answers for
    /// that result until the challenge window closes.
    pub fn withdraw(&mut self, account: &str, amount: u64, now: u64) -> Result<u64, LedgerError> {
        check_account(account)?;
        if amount == 0 {
            return Err(LedgerError::ZeroAmount);
        }
        self.finalize(now);
        if let Some(until) = self.locked_until(account) {
            let pending = self
                .book
                .results
                .values()
                .filter(|s| {
                    matches!(s.state, ResultState::Pending { .. })
                        && s.nodes.iter().any(|n| n == account)
                })
                .count();
            return Err(LedgerError::Locked {
                account: account.to_string(),
                pending,
                until,
            });
        }
        let held = self.balance(account);
        let balance = held
            .checked_sub(amount)
            .ok_or_else(|| LedgerError::InsufficientBalance {
                account: account.to_string(),
                balance: held,
                amount,
            })?;
        self.book.balances.insert(account.to_string(), balance);
        self.log(
            now,
            EventKind::Withdraw {
                account: account.to_string(),
                amount,
                balance,
            },
        );
        Ok(balance)
    }

    /// Records a result the `nodes` are accountable for; each must hold at least
    /// `min_stake`. Returns its challenge deadline, `now + challenge_window_s`.
    pub fn submit(
        &mut self,
        id: ResultId,
        nodes: Vec<Account>,
        now: u64,
    ) -> Result<u64, LedgerError> {
        if id.0.is_empty() {
            return Err(LedgerError::EmptyResultId);
        }
        if self.book.results.contains_key(&id) {
            return Err(LedgerError::DuplicateResult(id));
        }
        if nodes.is_empty() {
            return Err(LedgerError::NoNodes(id));
        }
        for (i, node) in nodes.iter().enumerate() {
            check_account(node)?;
            if nodes[..i].contains(node) {
                return Err(LedgerError::DuplicateNode {
                    id,
                    node: node.clone(),
                });
            }
            let stake = self.balance(node);
            if stake < self.book.params.min_stake {
                return Err(LedgerError::StakeTooLow {
                    node: node.clone(),
                    stake,
                    min_stake: self.book.params.min_stake,
                });
            }
        }
        self.finalize(now);
        let challenge_deadline = now.saturating_add(self.book.params.challenge_window_s);
        self.book.results.insert(
            id.clone(),
            Submission {
                nodes: nodes.clone(),
                submitted_at: now,
                state: ResultState::Pending { challenge_deadline },
            },
        );
        self.log(
            now,
            EventKind::Submit {
                id,
                nodes,
                challenge_deadline,
            },
        );
        Ok(challenge_deadline)
    }

    /// Presents a fraud proof against result `id`.
    ///
    /// Refused (an error, nothing charged, `check` not called) if the result is
    /// unknown, final (`now` at or after its deadline) or already slashed, or if
    /// `challenger` holds less than the challenge bond. Otherwise `check` verifies
    /// `proof` and returns the accused node's key:
    /// - the proof is valid and the accused is a node of the result: the node loses
    ///   `min(slash_amount, its stake)`, half of it (rounded down) goes to the
    ///   challenger, the rest is burned, and the result becomes `Slashed`;
    /// - `check` fails, or the accused is not a node of the result: the challenger's
    ///   bond is burned and the result stays pending.
    pub fn challenge<P, E: std::fmt::Display>(
        &mut self,
        id: &ResultId,
        challenger: &str,
        proof: &P,
        check: impl FnOnce(&P) -> Result<Account, E>,
        now: u64,
    ) -> Result<ChallengeOutcome, LedgerError> {
        check_account(challenger)?;
        self.finalize(now);
        let submission = self
            .book
            .results
            .get(id)
            .ok_or_else(|| LedgerError::UnknownResult(id.clone()))?;
        match &submission.state {
            ResultState::Pending { .. } => {}
            ResultState::Final { at } => {
                return Err(LedgerError::WindowClosed {
                    id: id.clone(),
                    at: *at,
                    now,
                })
            }
            ResultState::Slashed { node, .. } => {
                return Err(LedgerError::AlreadySlashed {
                    id: id.clone(),
                    node: node.clone(),
                })
            }
        }
        let bond = self.book.params.challenge_bond;
        let held = self.balance(challenger);
        if held < bond {
            return Err(LedgerError::BondTooLow {
                challenger: challenger.to_string(),
                balance: held,
                bond,
            });
        }
        let verdict = match check(proof) {
            Err(reason) => Err(Rejection::InvalidProof(reason.to_string())),
            Ok(accused) if !submission.nodes.contains(&accused) => {
                Err(Rejection::NotAmongNodes { accused })
            }
            Ok(accused) => Ok(accused),
        };
        match verdict {
            Ok(node) => {
                let stake = self.balance(&node);
                let slashed = stake.min(self.book.params.slash_amount);
                let reward = slashed / 2;
                let burned = slashed - reward;
                self.book.balances.insert(node.clone(), stake - slashed);
                // Cannot overflow: the reward comes out of balances that fit in a u64 together.
                *self
                    .book
                    .balances
                    .entry(challenger.to_string())
                    .or_insert(0) += reward;
                self.book.burned = self.book.burned.saturating_add(burned);
                if let Some(s) = self.book.results.get_mut(id) {
                    s.state = ResultState::Slashed {
                        node: node.clone(),
                        challenger: challenger.to_string(),
                        at: now,
                    };
                }
                self.log(
                    now,
                    EventKind::Slash {
                        id: id.clone(),
                        node: node.clone(),
                        challenger: challenger.to_string(),
                        slashed,
                        reward,
                        burned,
                    },
                );
                Ok(ChallengeOutcome::Slashed {
                    node,
                    slashed,
                    reward,
                    burned,
                })
            }
            Err(reason) => {
                self.book
                    .balances
                    .insert(challenger.to_string(), held - bond);
                self.book.burned = self.book.burned.saturating_add(bond);
                self.log(
                    now,
                    EventKind::ChallengeRejected {
                        id: id.clone(),
                        challenger: challenger.to_string(),
                        reason: reason.to_string(),
                        bond_burned: bond,
                    },
                );
                Ok(ChallengeOutcome::Rejected {
                    reason,
                    bond_burned: bond,
                })
            }
        }
    }

    /// Makes final every pending result whose challenge deadline is at or before
    /// `now`; returns those that became final in this call.
    pub fn finalize(&mut self, now: u64) -> Vec<ResultId> {
        let mut done = Vec::new();
        for (id, s) in self.book.results.iter_mut() {
            if let ResultState::Pending { challenge_deadline } = s.state {
                if challenge_deadline <= now {
                    s.state = ResultState::Final {
                        at: challenge_deadline,
                    };
                    done.push(id.clone());
                }
            }
        }
        for id in &done {
            self.log(now, EventKind::Final { id: id.clone() });
        }
        done
    }

    fn log(&mut self, at: u64, kind: EventKind) {
        self.book.events.push(Event { at, kind });
    }
}

fn check_account(account: &str) -> Result<(), LedgerError> {
    if account.is_empty() {
        Err(LedgerError::EmptyAccount)
    } else {
        Ok(())
    }
}

/// Writes `bytes` to a temporary file next to `path`, flushes it to disk, renames
/// it over `path` and flushes the directory. On failure the temporary file is removed.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the ledger path names no file")
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
