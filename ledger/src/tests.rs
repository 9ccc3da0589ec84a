//! The contract's rules on the embedded chain. `tests/ledger.rs` runs the same
//! through the CLI on both the embedded chain and a local anvil.

use std::path::PathBuf;

use verifier::receipt::SecretKey;

use super::*;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("zkinfer-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn state(&self) -> PathBuf {
        self.0.join("ledger.json")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dev(i: usize) -> Account {
    Account::dev(i).expect("a dev account")
}

fn bls(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("non-zero")
}

const T0: u64 = 1_800_000_000;

/// A ledger with nodes dev 1..=3 registered (keys 1..=3) and staked 500, and
/// challenger dev 4 holding 50.
fn ledger(scratch: &Scratch) -> Ledger<Embedded> {
    let chain = Embedded::open(scratch.state()).expect("chain");
    let mut chain = chain;
    chain.set_time(T0).expect("time");
    let mut l = Ledger::deploy(chain, &dev(0), Params::default()).expect("deploy");
    for i in 1..=3 {
        l.register(&dev(i), &bls(i as u8)).expect("register");
        l.deposit(&dev(i), 500).expect("deposit");
    }
    l.deposit(&dev(4), 50).expect("deposit");
    l
}

fn id(n: u8) -> ResultId {
    ResultId([n; 32])
}

fn refused(e: Result<impl std::fmt::Debug, LedgerError>) -> String {
    match e {
        Err(LedgerError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn deploy_keeps_the_rules_and_refuses_bad_ones() {
    let s = Scratch::new("rules");
    let mut l = ledger(&s);
    assert_eq!(l.params().expect("params"), Params::default());
    for bad in [
        Params {
            challenge_window_s: 0,
            ..Params::default()
        },
        Params {
            challenge_window_s: MAX_WINDOW_S + 1,
            ..Params::default()
        },
        Params {
            committee_threshold: 0,
            ..Params::default()
        },
        Params {
            min_stake: 0,
            ..Params::default()
        },
    ] {
        let chain = Embedded::open(s.0.join("other.json")).expect("chain");
        assert!(matches!(
            Ledger::deploy(chain, &dev(0), bad),
            Err(LedgerError::Invalid(_))
        ));
    }
    assert!(matches!(
        l.set_time(MAX_TIME + 1),
        Err(LedgerError::Invalid(_))
    ));
}

#[test]
fn stakes_move_and_lock_while_a_result_is_pending() {
    let s = Scratch::new("stake");
    let mut l = ledger(&s);
    assert_eq!(l.withdraw(&dev(1), 100).expect("withdraw"), 400);
    assert_eq!(
        refused(l.withdraw(&dev(1), 401)),
        "the balance is 400, short of 401"
    );
    let deadline = l
        .submit(&dev(4), id(1), &[dev(1).address(), dev(2).address()])
        .expect("submit");
    assert_eq!(deadline, T0 + 3600);
    assert_eq!(
        refused(l.withdraw(&dev(1), 1)),
        format!("the stake is locked by a pending result until {deadline}")
    );
    l.set_time(deadline).expect("time");
    assert_eq!(l.withdraw(&dev(1), 1).expect("withdraw"), 399);
    assert!(matches!(
        l.deposit(&dev(1), 0),
        Err(LedgerError::Invalid(_))
    ));
}

#[test]
fn submissions_need_registered_staked_distinct_nodes_and_a_new_id() {
    let s = Scratch::new("submit");
    let mut l = ledger(&s);
    let (n1, n4) = (dev(1).address(), dev(4).address());
    assert_eq!(
        refused(l.submit(&dev(0), id(1), &[n4])),
        format!("{n4} has registered no key")
    );
    l.register(&dev(5), &bls(5)).expect("register");
    assert_eq!(
        refused(l.submit(&dev(0), id(1), &[dev(5).address()])),
        "the balance is 0, short of 100"
    );
    assert_eq!(
        refused(l.submit(&dev(0), id(1), &[n1, n1])),
        "a node is named twice"
    );
    l.submit(&dev(0), id(1), &[n1]).expect("submit");
    assert_eq!(
        refused(l.submit(&dev(0), id(1), &[n1])),
        "this result id was submitted before"
    );
    assert!(matches!(
        l.submit(&dev(0), id(2), &[]),
        Err(LedgerError::Invalid(_))
    ));
}

#[test]
fn registration_needs_a_proof_of_possession_for_this_address() {
    let s = Scratch::new("register");
    let mut l = ledger(&s);
    assert_eq!(
        refused(l.register(&dev(1), &bls(9))),
        "this account already registered a key"
    );
    assert_eq!(
        refused(l.register(&dev(5), &bls(1))),
        format!("this key is registered to {}", dev(1).address())
    );
    // A proof of possession made for another address does not register.
    let key = bls(6);
    let public = key.public();
    let pop = key.sign(&verifier::receipt::Possession {
        account: dev(7).address().into(),
    });
    let call = C::registerCall {
        pubkey: public.to_bytes().to_vec().into(),
        g2: public.to_evm().map(U256::from_be_bytes),
        pop: pop.to_evm().map(U256::from_be_bytes),
    };
    assert_eq!(
        refused(l.transact(&dev(6), U256::ZERO, call.clone())),
        "the proof of possession does not verify"
    );
    // Another point than the compressed key names.
    let mut mismatched = call;
    mismatched.g2 = bls(8).public().to_evm().map(U256::from_be_bytes);
    assert_eq!(
        refused(l.transact(&dev(6), U256::ZERO, mismatched)),
        "the point does not compress to the public key"
    );
    l.register(&dev(7), &key).expect("its own address");
    assert_eq!(
        l.node_of_key(&public).expect("lookup"),
        Some(dev(7).address())
    );
}

#[test]
fn results_finalize_after_the_window_and_are_then_beyond_challenge() {
    let s = Scratch::new("final");
    let mut l = ledger(&s);
    let deadline = l
        .submit(&dev(0), id(1), &[dev(1).address()])
        .expect("submit");
    l.set_time(deadline - 1).expect("time");
    assert_eq!(l.finalize(&dev(0)).expect("finalize"), vec![]);
    l.set_time(deadline).expect("time");
    assert_eq!(l.finalize(&dev(0)).expect("finalize"), vec![id(1)]);
    assert_eq!(l.finalize(&dev(0)).expect("finalize"), vec![]);
    assert_eq!(
        l.result(id(1)).expect("read").map(|r| r.state),
        Some(ResultState::Final { at: deadline })
    );
    let verdicts = verdicts(&l, id(1), 1, &[2, 3]);
    assert_eq!(
        refused(l.challenge_committee(&dev(4), id(1), &verdicts)),
        format!("result {} is final", alloy_primitives::B256::from(id(1).0))
    );
}

fn verdicts(
    l: &Ledger<Embedded>,
    result: ResultId,
    accused: u8,
    auditors: &[u8],
) -> Vec<SignedVerdict> {
    auditors
        .iter()
        .map(|&a| SignedVerdict::sign(&bls(a), l.address().0 .0, result.0, bls(accused).public()))
        .collect()
}

#[test]
fn a_committee_verdict_slashes_and_a_false_one_costs_the_bond() {
    let s = Scratch::new("committee");
    let mut l = ledger(&s);
    l.submit(&dev(0), id(1), &[dev(1).address()])
        .expect("submit");
    // One auditor is fewer than the threshold of two.
    let one = verdicts(&l, id(1), 1, &[2]);
    assert_eq!(
        l.challenge_committee(&dev(4), id(1), &one)
            .expect("challenge"),
        ChallengeOutcome::Rejected {
            reason: "fewer auditors than the threshold".into(),
            bond_burned: 10
        }
    );
    // A verdict signed for another result.
    let mut forged = verdicts(&l, id(1), 1, &[2, 3]);
    forged[1].signature = verdicts(&l, id(9), 1, &[3])[0].signature;
    assert_eq!(
        l.challenge_committee(&dev(4), id(1), &forged)
            .expect("challenge"),
        ChallengeOutcome::Rejected {
            reason: "the committee's signature does not verify".into(),
            bond_burned: 10
        }
    );
    // The accused cannot vouch for its own slashing, nor can an unstaked auditor.
    let own = verdicts(&l, id(1), 1, &[1, 2]);
    assert_eq!(
        l.challenge_committee(&dev(4), id(1), &own)
            .expect("challenge"),
        ChallengeOutcome::Rejected {
            reason: "the accused cannot audit itself".into(),
            bond_burned: 10
        }
    );
    l.register(&dev(5), &bls(5)).expect("register");
    let unstaked = verdicts(&l, id(1), 1, &[2, 5]);
    assert_eq!(
        l.challenge_committee(&dev(4), id(1), &unstaked)
            .expect("challenge"),
        ChallengeOutcome::Rejected {
            reason: "an auditor holds less than the min stake".into(),
            bond_burned: 10
        }
    );
    assert_eq!(l.balance(dev(4).address()).expect("balance"), 10);
    let good = verdicts(&l, id(1), 1, &[3, 2]);
    assert_eq!(
        l.challenge_committee(&dev(4), id(1), &good)
            .expect("challenge"),
        ChallengeOutcome::Slashed {
            node: dev(1).address(),
            slashed: 100,
            reward: 50
        }
    );
    assert_eq!(l.balance(dev(1).address()).expect("balance"), 400);
    assert_eq!(l.balance(dev(4).address()).expect("balance"), 60);
    assert!(matches!(
        l.result(id(1)).expect("read").map(|r| r.state),
        Some(ResultState::Slashed { node, .. }) if node == dev(1).address()
    ));
    // Slashed once; its node's stake is no longer locked by it.
    assert_eq!(
        refused(l.challenge_committee(&dev(4), id(1), &good)),
        format!(
            "result {} is slashed",
            alloy_primitives::B256::from(id(1).0)
        )
    );
    assert_eq!(l.withdraw(&dev(1), 400).expect("withdraw"), 0);
    // Nothing is created or lost: balances plus burned equal deposits minus withdrawals.
    let snap = l.snapshot().expect("snapshot");
    let held: u128 = snap.accounts.iter().map(|a| a.balance).sum();
    assert_eq!(held + snap.burned, 3 * 500 + 50 - 400);
    assert_eq!(snap.burned, 4 * 10 + 50);
}

#[test]
fn a_challenger_without_the_bond_is_refused_with_nothing_charged() {
    let s = Scratch::new("bond");
    let mut l = ledger(&s);
    l.submit(&dev(0), id(1), &[dev(1).address()])
        .expect("submit");
    let good = verdicts(&l, id(1), 1, &[2, 3]);
    assert_eq!(
        refused(l.challenge_committee(&dev(6), id(1), &good)),
        "the challenger holds 0, less than the bond of 10"
    );
    assert_eq!(
        refused(l.challenge_committee(&dev(4), id(7), &verdicts(&l, id(7), 1, &[2, 3]))),
        format!(
            "no result {} was submitted",
            alloy_primitives::B256::from(id(7).0)
        )
    );
    assert_eq!(l.snapshot().expect("snapshot").burned, 0);
}

#[test]
fn equivocation_slashes_once_and_forged_evidence_costs_the_bond() {
    let s = Scratch::new("equivocation");
    let mut l = ledger(&s);
    let evidence = super::evidence::tests::equivocation(&bls(2));
    // Signatures made by the Rust code verify in the contract.
    assert_eq!(
        l.challenge_equivocation(&dev(4), &evidence)
            .expect("challenge"),
        ChallengeOutcome::Slashed {
            node: dev(2).address(),
            slashed: 100,
            reward: 50
        }
    );
    assert_eq!(
        refused(l.challenge_equivocation(&dev(4), &evidence)),
        "this equivocation was slashed before"
    );
    // A tampered signature, equal outputs, another signer's receipt: each burns the bond.
    type Tamper = fn(&mut Equivocation);
    let cases: [(Tamper, &str); 4] = [
        (
            |e| e.receipts[1].receipt.output[0] ^= 1,
            "the second signature does not verify",
        ),
        (
            |e| e.receipts[1] = e.receipts[0].clone(),
            "the outputs are equal",
        ),
        (
            |e| e.receipts[0].receipt.position += 1,
            "the receipts are for different hops",
        ),
        (
            |e| e.receipts[0].signature = bls(4).sign(&e.receipts[0].receipt),
            "the first signature does not verify",
        ),
    ];
    for (i, (tamper, reason)) in cases.into_iter().enumerate() {
        let mut forged = super::evidence::tests::equivocation(&bls(3));
        forged.receipts[0].receipt.request_id += i as u64 + 1;
        forged.receipts[1].receipt.request_id += i as u64 + 1;
        forged.receipts = forged.receipts.map(|r| SignedReceipt {
            signature: bls(3).sign(&r.receipt),
            ..r
        });
        tamper(&mut forged);
        let before = l.balance(dev(4).address()).expect("balance");
        assert_eq!(
            l.challenge_equivocation(&dev(4), &forged)
                .expect("challenge"),
            ChallengeOutcome::Rejected {
                reason: reason.into(),
                bond_burned: 10
            },
            "{reason}"
        );
        assert_eq!(l.balance(dev(4).address()).expect("balance"), before - 10);
    }
    assert_eq!(l.balance(dev(3).address()).expect("balance"), 500);
}

#[test]
fn concurrent_deposits_on_one_state_file_all_land() {
    let s = Scratch::new("concurrent");
    let address = ledger(&s).address();
    let rounds = 20;
    let threads: Vec<_> = (5..7)
        .map(|i| {
            let path = s.state();
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    let chain = Embedded::open(&path).expect("open");
                    let mut l = Ledger::at(chain, address).expect("ledger");
                    l.deposit(&dev(i), 1).expect("deposit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut l = Ledger::at(Embedded::open(s.state()).expect("open"), address).expect("ledger");
    assert_eq!(l.balance(dev(5).address()).expect("balance"), rounds);
    assert_eq!(l.balance(dev(6).address()).expect("balance"), rounds);
    assert!(!s.0.join(".ledger.json.tmp").exists());
}

#[test]
fn a_state_file_that_is_not_one_is_reported_and_left_alone() {
    let s = Scratch::new("corrupt");
    for (text, why) in [
        ("{", "not a ledger state file"),
        (
            r#"{"format_version": 9, "chain_id": 31337, "time": 0, "block": 0, "contract": null, "accounts": {}}"#,
            "format version 9",
        ),
        (
            r#"{"format_version": 1, "chain_id": 31337, "time": 0, "block": 0, "contract": null, "accounts": {}, "x": 1}"#,
            "unknown field",
        ),
    ] {
        std::fs::write(s.state(), text).expect("write");
        match Embedded::open(s.state()) {
            Err(ChainError::State(message)) => assert!(message.contains(why), "{message}"),
            other => panic!("{text}: {:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read_to_string(s.state()).expect("read"), text);
    }
    // A temporary file left by a killed writer is removed by the next open.
    std::fs::remove_file(s.state()).expect("remove");
    std::fs::write(s.0.join(".ledger.json.tmp"), "partial").expect("write");
    drop(Embedded::open(s.state()).expect("open"));
    assert!(!s.0.join(".ledger.json.tmp").exists());
}
