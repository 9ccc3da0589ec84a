//! The rules of the ledger, with a fake fraud proof and a clock the tests drive.

use super::*;

/// Stands in for a real fraud proof: `check` accepts it iff `valid`.
struct FakeProof {
    accused: Account,
    valid: bool,
}

fn check(p: &FakeProof) -> Result<Account, String> {
    if p.valid {
        Ok(p.accused.clone())
    } else {
        Err("receipts do not conflict".to_string())
    }
}

fn proof(accused: &str, valid: bool) -> FakeProof {
    FakeProof {
        accused: accused.to_string(),
        valid,
    }
}

const PARAMS: Params = Params {
    challenge_window_s: 100,
    slash_amount: 60,
    challenge_bond: 10,
    min_stake: 50,
};
const T0: u64 = 1_000;

fn rid(s: &str) -> ResultId {
    ResultId(s.to_string())
}

/// A ledger where nodes a and b stake 100, challenger c holds 20, and result r
/// (nodes a, b) was submitted at T0, so its deadline is T0 + 100.
fn ledger() -> Ledger {
    let mut l = Ledger::new("unused.json", PARAMS);
    l.deposit("a", 100, T0).unwrap();
    l.deposit("b", 100, T0).unwrap();
    l.deposit("c", 20, T0).unwrap();
    assert_eq!(
        l.submit(rid("r"), vec!["a".into(), "b".into()], T0)
            .unwrap(),
        T0 + 100
    );
    l
}

fn never_called(_: &FakeProof) -> Result<Account, String> {
    panic!("a refused challenge must not check the proof")
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ledger-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn finalizes_at_the_deadline_and_not_before() {
    let mut l = ledger();
    assert!(l.finalize(T0 + 99).is_empty());
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Pending {
            challenge_deadline: T0 + 100
        })
    );
    assert_eq!(l.finalize(T0 + 100), vec![rid("r")]);
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Final { at: T0 + 100 })
    );
    // Once only.
    assert!(l.finalize(T0 + 500).is_empty());
    assert_eq!(
        l.events().last(),
        Some(&Event {
            at: T0 + 100,
            kind: EventKind::Final { id: rid("r") }
        })
    );
}

#[test]
fn finalize_after_the_deadline_records_the_deadline() {
    let mut l = ledger();
    assert_eq!(l.finalize(T0 + 5_000), vec![rid("r")]);
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Final { at: T0 + 100 })
    );
}

#[test]
fn valid_fraud_proof_inside_the_window_slashes_and_rewards() {
    let mut l = ledger();
    let out = l
        .challenge(&rid("r"), "c", &proof("b", true), check, T0 + 99)
        .unwrap();
    assert_eq!(
        out,
        ChallengeOutcome::Slashed {
            node: "b".into(),
            slashed: 60,
            reward: 30,
            burned: 30
        }
    );
    assert_eq!(l.balance("b"), 40);
    assert_eq!(l.balance("a"), 100);
    assert_eq!(l.balance("c"), 20 + 30);
    assert_eq!(l.burned(), 30);
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Slashed {
            node: "b".into(),
            challenger: "c".into(),
            at: T0 + 99
        })
    );
    // A slashed result never becomes final, and its nodes may withdraw.
    assert!(l.finalize(T0 + 1_000).is_empty());
    assert_eq!(l.withdraw("a", 100, T0 + 99).unwrap(), 0);
    assert!(matches!(
        l.events().iter().rev().nth(1).map(|e| &e.kind),
        Some(EventKind::Slash {
            slashed: 60,
            reward: 30,
            burned: 30,
            ..
        })
    ));
}

#[test]
fn slash_takes_at_most_the_stake() {
    let mut l = Ledger::new(
        "unused.json",
        Params {
            slash_amount: 1_000,
            ..PARAMS
        },
    );
    l.deposit("a", 51, T0).unwrap();
    l.deposit("c", 10, T0).unwrap();
    l.submit(rid("r"), vec!["a".into()], T0).unwrap();
    let out = l
        .challenge(&rid("r"), "c", &proof("a", true), check, T0 + 1)
        .unwrap();
    assert_eq!(
        out,
        ChallengeOutcome::Slashed {
            node: "a".into(),
            slashed: 51,
            reward: 25,
            burned: 26
        }
    );
    assert_eq!(l.balance("a"), 0);
    assert_eq!(l.balance("c"), 35);
}

#[test]
fn fraud_proof_after_the_window_is_refused() {
    let mut l = ledger();
    // Exactly at the deadline the result is final: the window is [T0, T0 + 100).
    let err = l
        .challenge(&rid("r"), "c", &proof("b", true), never_called, T0 + 100)
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::WindowClosed { ref id, at, now } if *id == rid("r") && at == T0 + 100 && now == T0 + 100),
        "{err}"
    );
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Final { at: T0 + 100 })
    );
    assert_eq!((l.balance("b"), l.balance("c"), l.burned()), (100, 20, 0));
}

#[test]
fn invalid_fraud_proof_costs_the_bond_and_leaves_the_result_pending() {
    let mut l = ledger();
    let out = l
        .challenge(&rid("r"), "c", &proof("b", false), check, T0 + 50)
        .unwrap();
    assert_eq!(
        out,
        ChallengeOutcome::Rejected {
            reason: Rejection::InvalidProof("receipts do not conflict".into()),
            bond_burned: 10
        }
    );
    assert_eq!(l.balance("c"), 10);
    assert_eq!(l.balance("b"), 100);
    assert_eq!(l.burned(), 10);
    assert_eq!(
        l.state(&rid("r")),
        Some(&ResultState::Pending {
            challenge_deadline: T0 + 100
        })
    );
    assert!(matches!(
        l.events().last().map(|e| &e.kind),
        Some(EventKind::ChallengeRejected {
            bond_burned: 10,
            ..
        })
    ));
    // A later valid proof still slashes.
    assert!(matches!(
        l.challenge(&rid("r"), "c", &proof("a", true), check, T0 + 60),
        Ok(ChallengeOutcome::Slashed { .. })
    ));
}

#[test]
fn accused_not_among_the_nodes_is_invalid() {
    let mut l = ledger();
    l.deposit("x", 100, T0).unwrap();
    let out = l
        .challenge(&rid("r"), "c", &proof("x", true), check, T0 + 50)
        .unwrap();
    assert_eq!(
        out,
        ChallengeOutcome::Rejected {
            reason: Rejection::NotAmongNodes {
                accused: "x".into()
            },
            bond_burned: 10
        }
    );
    assert_eq!((l.balance("x"), l.balance("c")), (100, 10));
    assert!(matches!(
        l.state(&rid("r")),
        Some(ResultState::Pending { .. })
    ));
}

#[test]
fn challenger_without_the_bond_is_refused() {
    let mut l = ledger();
    l.deposit("poor", 9, T0).unwrap();
    let err = l
        .challenge(&rid("r"), "poor", &proof("a", true), never_called, T0 + 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::BondTooLow {
                balance: 9,
                bond: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("deposit 1 more"), "{err}");
    assert_eq!(l.balance("poor"), 9);
}

#[test]
fn unknown_result_is_refused() {
    let mut l = ledger();
    let err = l
        .challenge(&rid("nope"), "c", &proof("a", true), never_called, T0)
        .unwrap_err();
    assert!(matches!(err, LedgerError::UnknownResult(ref id) if *id == rid("nope")));
}

#[test]
fn node_under_min_stake_cannot_be_part_of_a_result() {
    let mut l = ledger();
    l.deposit("low", 49, T0).unwrap();
    let err = l
        .submit(rid("s"), vec!["a".into(), "low".into()], T0)
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::StakeTooLow { ref node, stake: 49, min_stake: 50 } if node == "low"),
        "{err}"
    );
    assert!(err.to_string().contains("deposit at least 1 more"), "{err}");
    // Never deposited at all.
    assert!(matches!(
        l.submit(rid("s"), vec!["ghost".into()], T0),
        Err(LedgerError::StakeTooLow { stake: 0, .. })
    ));
    assert_eq!(l.state(&rid("s")), None);
    // Exactly the minimum is enough.
    l.deposit("low", 1, T0).unwrap();
    l.submit(rid("s"), vec!["low".into()], T0).unwrap();
}

#[test]
fn malformed_submissions_are_refused() {
    let mut l = ledger();
    assert!(matches!(
        l.submit(rid("r"), vec!["a".into()], T0),
        Err(LedgerError::DuplicateResult(_))
    ));
    assert!(matches!(
        l.submit(rid("s"), vec![], T0),
        Err(LedgerError::NoNodes(_))
    ));
    assert!(matches!(
        l.submit(rid("s"), vec!["a".into(), "a".into()], T0),
        Err(LedgerError::DuplicateNode { ref node, .. }) if node == "a"
    ));
    assert!(matches!(
        l.submit(rid(""), vec!["a".into()], T0),
        Err(LedgerError::EmptyResultId)
    ));
    assert!(matches!(
        l.deposit("a", 0, T0),
        Err(LedgerError::ZeroAmount)
    ));
    assert!(matches!(
        l.deposit("", 1, T0),
        Err(LedgerError::EmptyAccount)
    ));
}

#[test]
fn withdraw_refused_while_locked() {
    let mut l = ledger();
    // A second pending result extends the lock.
    l.submit(rid("r2"), vec!["a".into()], T0 + 50).unwrap();
    let err = l.withdraw("a", 1, T0 + 99).unwrap_err();
    assert!(
        matches!(err, LedgerError::Locked { pending: 2, until, .. } if until == T0 + 150),
        "{err}"
    );
    assert!(
        err.to_string().contains("withdraw at or after 1150"),
        "{err}"
    );
    // r is final at T0 + 100; r2 still locks a, but no longer b.
    assert!(matches!(
        l.withdraw("a", 1, T0 + 100),
        Err(LedgerError::Locked { pending: 1, .. })
    ));
    assert_eq!(l.withdraw("b", 100, T0 + 100).unwrap(), 0);
    assert_eq!(l.withdraw("a", 30, T0 + 150).unwrap(), 70);
    assert!(matches!(
        l.withdraw("a", 71, T0 + 150),
        Err(LedgerError::InsufficientBalance {
            balance: 70,
            amount: 71,
            ..
        })
    ));
    // A challenger is not locked by anything.
    assert_eq!(l.withdraw("c", 20, T0).unwrap(), 0);
}

#[test]
fn double_slashing_refused() {
    let mut l = ledger();
    l.challenge(&rid("r"), "c", &proof("a", true), check, T0 + 1)
        .unwrap();
    let before = (l.balance("a"), l.balance("b"), l.balance("c"), l.burned());
    for accused in ["a", "b"] {
        let err = l
            .challenge(&rid("r"), "c", &proof(accused, true), never_called, T0 + 2)
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::AlreadySlashed { ref node, .. } if node == "a"),
            "{err}"
        );
    }
    assert_eq!(
        before,
        (l.balance("a"), l.balance("b"), l.balance("c"), l.burned())
    );
}

#[test]
fn every_change_is_logged() {
    let mut l = ledger();
    l.challenge(&rid("r"), "c", &proof("a", false), check, T0 + 1)
        .unwrap();
    l.finalize(T0 + 100);
    l.withdraw("a", 10, T0 + 100).unwrap();
    let kinds: Vec<&str> = l
        .events()
        .iter()
        .map(|e| match e.kind {
            EventKind::Deposit { .. } => "deposit",
            EventKind::Withdraw { .. } => "withdraw",
            EventKind::Submit { .. } => "submit",
            EventKind::Final { .. } => "final",
            EventKind::Slash { .. } => "slash",
            EventKind::ChallengeRejected { .. } => "rejected",
        })
        .collect();
    assert_eq!(
        kinds,
        ["deposit", "deposit", "deposit", "submit", "rejected", "final", "withdraw"]
    );
    assert_eq!(
        l.events()[6],
        Event {
            at: T0 + 100,
            kind: EventKind::Withdraw {
                account: "a".into(),
                amount: 10,
                balance: 90
            }
        }
    );
}

#[test]
fn save_open_round_trip() {
    let dir = TempDir::new("round-trip");
    let path = dir.0.join("ledger.json");
    // Absent: an empty ledger with the default rules, and no file until saved.
    let empty = Ledger::open(&path).unwrap();
    assert_eq!(*empty.params(), Params::default());
    assert!(empty.results().is_empty() && empty.events().is_empty());
    assert!(!path.exists());

    let mut l = ledger();
    l.path = path.clone();
    l.challenge(&rid("r"), "c", &proof("b", true), check, T0 + 1)
        .unwrap();
    l.submit(rid("r2"), vec!["a".into()], T0 + 2).unwrap();
    l.save().unwrap();
    let back = Ledger::open(&path).unwrap();
    assert_eq!(back.book, l.book);
    assert_eq!(back.path(), path);
    // Saved over an existing file, nothing else is left in the directory.
    let mut back = back;
    back.finalize(T0 + 1_000);
    back.save().unwrap();
    assert_eq!(Ledger::open(&path).unwrap().book, back.book);
    let names: Vec<_> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ledger.json"]);
    // The file is plain JSON an operator can read.
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["format_version"], FORMAT_VERSION);
    assert_eq!(json["balances"]["b"], 40);
    assert_eq!(json["results"]["r"]["state"], "slashed");
    assert_eq!(json["results"]["r2"]["state"], "final");
    assert_eq!(json["events"][0]["event"], "deposit");
}

#[test]
fn failed_save_keeps_the_old_file_and_leaves_no_temp_file() {
    let dir = TempDir::new("failed-save");
    let path = dir.0.join("ledger.json");
    let mut l = ledger();
    l.path = path.clone();
    l.save().unwrap();
    let old = fs::read(&path).unwrap();
    // A directory where the file should go: the rename fails.
    let blocked = dir.0.join("blocked.json");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), b"x").unwrap();
    let mut other = l.clone();
    other.path = blocked.clone();
    let err = other.save().unwrap_err();
    assert!(matches!(err, LedgerError::Write { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), old);
    let mut names: Vec<_> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blocked.json", "ledger.json"]);
}

#[test]
fn stale_temp_file_does_not_matter() {
    // A writer that died before its rename leaves a temp file; the ledger is the old one.
    let dir = TempDir::new("stale-temp");
    let path = dir.0.join("ledger.json");
    let mut l = ledger();
    l.path = path.clone();
    l.save().unwrap();
    fs::write(dir.0.join(".ledger.json.tmp1"), b"{\"format_vers").unwrap();
    assert_eq!(Ledger::open(&path).unwrap().book, l.book);
}

#[test]
fn corrupt_file_gives_a_clear_error() {
    let dir = TempDir::new("corrupt");
    let path = dir.0.join("ledger.json");
    let mut l = ledger();
    l.path = path.clone();
    l.save().unwrap();
    let good = fs::read(&path).unwrap();
    for bad in [
        &good[..good.len() / 2],
        b"",
        b"not json",
        b"{\"format_version\": 1}",
    ] {
        fs::write(&path, bad).unwrap();
        let err = Ledger::open(&path).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("not a valid ledger file")
                && msg.contains("restore it from a backup"),
            "{msg}"
        );
    }
    fs::write(&path, br#"{"format_version": 7}"#).unwrap();
    let err = Ledger::open(&path).unwrap_err();
    assert!(
        matches!(err, LedgerError::Version { found: 7, .. }),
        "{err}"
    );
}
