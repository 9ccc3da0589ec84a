//! `zkinfer ledger` end to end, the same scenario on the embedded EVM and on
//! a local anvil (installed by scripts/chain_tools.sh, started and stopped
//! here): stakes, registration, submission, finalization after the window,
//! equivocation and committee slashing, forged evidence costing the bond, a
//! challenge after the window refused, and concurrent deposits losing nothing.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ledger::{Equivocation, SignedVerdict};
use serde_json::Value;
use verifier::receipt::{Receipt, SecretKey};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("zkinfer-ledger-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A local anvil on a free loopback port, killed on drop.
struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    fn start() -> Anvil {
        let tools = std::env::var_os("ZKINFER_NPM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/zkinfer-npm")
            });
        let anvil = tools.join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        assert!(
            anvil.exists(),
            "{} is missing: run `bash scripts/chain_tools.sh` (`.ci/run` does)",
            anvil.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new(anvil)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start anvil");
        let stdout = child.stdout.take().expect("stdout");
        let start = Instant::now();
        for line in BufReader::new(stdout).lines() {
            if line.expect("anvil output").contains("Listening on") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "anvil did not start"
            );
        }
        Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the scenario runs: the flags that name the chain and the contract.
struct Backend {
    chain: Vec<String>,
    /// The gas each transacting command reported, by command.
    gas: std::cell::RefCell<Vec<(String, u64)>>,
}

impl Backend {
    fn run(&self, from: &str, now: Option<u64>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zkinfer"));
        cmd.arg("ledger").args(&self.chain).args(["--from", from]);
        if let Some(now) = now {
            cmd.args(["--now", &now.to_string()]);
        }
        cmd.args(args).output().expect("run zkinfer")
    }

    fn new(chain: Vec<String>) -> Backend {
        Backend {
            chain,
            gas: Default::default(),
        }
    }

    fn ok(&self, from: &str, now: Option<u64>, args: &[&str]) -> String {
        let out = self.run(from, now, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{args:?}: {}{stderr}",
            String::from_utf8_lossy(&out.stdout),
        );
        if let Some(gas) = stderr.lines().find_map(|l| l.strip_prefix("gas used: ")) {
            let name = args
                .iter()
                .take_while(|a| a.chars().all(|c| c.is_ascii_lowercase()))
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            self.gas
                .borrow_mut()
                .push((name, gas.parse().expect("gas")));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Prints the gas of each kind of operation (its largest), for docs/ledger.md, and
    /// checks that none costs more than a block could hold many of.
    fn report_gas(&self, label: &str) {
        let mut most = std::collections::BTreeMap::<String, u64>::new();
        for (name, gas) in self.gas.borrow().iter() {
            let entry = most.entry(name.clone()).or_default();
            *entry = (*entry).max(*gas);
        }
        for (name, gas) in &most {
            eprintln!("gas on {label}: {name}: {gas}");
            let limit = if name == "init" { 4_000_000 } else { 600_000 };
            assert!(*gas < limit, "{name} costs {gas} gas");
        }
    }

    fn refused(&self, from: &str, now: Option<u64>, args: &[&str]) -> String {
        let out = self.run(from, now, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn key(dir: &Path, n: u8) -> (SecretKey, PathBuf) {
    let key = SecretKey::from_seed(&[n; 32]).expect("non-zero");
    let path = dir.join(format!("node{n}.key"));
    std::fs::write(&path, key.to_hex()).expect("write key");
    (key, path)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

const T0: u64 = 1_900_000_000;

/// The scenario, on either backend. `init` has already run on `backend`.
fn scenario(backend: &Backend, contract: &str, dir: &Path) {
    let t = |dt: u64| Some(T0 + dt);
    let mut keys = Vec::new();
    for i in 1..=3u8 {
        let (secret, path) = key(dir, i);
        let from = format!("dev:{i}");
        backend.ok(&from, t(2 * i as u64 - 1), &["register", "--key", s(&path)]);
        assert_eq!(
            backend.ok(&from, t(2 * i as u64), &["deposit", "500"]),
            "500"
        );
        keys.push(secret);
    }
    assert_eq!(backend.ok("dev:4", t(20), &["deposit", "50"]), "50");
    let node1 = backend.ok("dev:1", None, &["account"]);
    let id_a = "aa".repeat(32);
    let id_b = "bb".repeat(32);
    // A node named by its key or its address.
    let deadline = backend.ok(
        "dev:0",
        t(30),
        &["submit", &id_a, &keys[0].public().to_hex()],
    );
    assert_eq!(deadline, (T0 + 30 + 100).to_string());
    backend.ok("dev:0", t(31), &["submit", &id_b, &node1]);
    let locked = backend.refused("dev:1", t(32), &["withdraw", "1"]);
    assert!(
        locked.contains("locked by a pending result until"),
        "{locked}"
    );

    // Committee slashing: one verdict is below the threshold of two and costs the bond;
    // two slash node 1.
    let verdict = |auditor: &SecretKey, id: &str, name: &str| {
        let ledger: [u8; 20] = contract.parse::<ledger::Address>().expect("address").0 .0;
        let id: [u8; 32] = ledger::ResultId::parse(id).expect("id").0;
        let path = dir.join(name);
        std::fs::write(
            &path,
            SignedVerdict::sign(auditor, ledger, id, keys[0].public()).to_json(),
        )
        .expect("write");
        path
    };
    let v2 = verdict(&keys[1], &id_a, "v2.json");
    let v3 = verdict(&keys[2], &id_a, "v3.json");
    // Checked before sending: too few verdicts cost nothing unless sent anyway.
    let kept = backend.refused(
        "dev:4",
        t(39),
        &["challenge", "committee", &id_a, "--verdict", s(&v2)],
    );
    assert!(
        kept.contains("fewer than the committee threshold of 2"),
        "{kept}"
    );
    let outcome: Value = serde_json::from_str(&backend.ok(
        "dev:4",
        t(40),
        &[
            "challenge",
            "committee",
            &id_a,
            "--verdict",
            s(&v2),
            "--unchecked",
        ],
    ))
    .expect("json");
    assert_eq!(outcome["outcome"], "rejected", "{outcome}");
    assert_eq!(outcome["bond_burned"], "10", "{outcome}");
    let outcome: Value = serde_json::from_str(&backend.ok(
        "dev:4",
        t(41),
        &[
            "challenge",
            "committee",
            &id_a,
            "--verdict",
            s(&v2),
            "--verdict",
            s(&v3),
        ],
    ))
    .expect("json");
    assert_eq!(outcome["outcome"], "slashed", "{outcome}");
    assert_eq!(outcome["slashed"], "100", "{outcome}");

    // Equivocation by node 2, checked by the contract alone; then forged evidence.
    let receipt = Receipt {
        model_id: [7; 32],
        layers: (0, 9),
        request_id: 41,
        position: 3,
        input: [1; 32],
        output: [2; 32],
    };
    let other = Receipt {
        output: [3; 32],
        ..receipt
    };
    let mut evidence = Equivocation::signed(&keys[1], [receipt, other]);
    let file = dir.join("equivocation.json");
    std::fs::write(&file, evidence.to_json()).expect("write");
    let outcome: Value = serde_json::from_str(&backend.ok(
        "dev:4",
        t(50),
        &["challenge", "equivocation", "--evidence", s(&file)],
    ))
    .expect("json");
    assert_eq!(outcome["outcome"], "slashed", "{outcome}");
    // Another request (not slashed yet), its second output no longer what was signed.
    let another = |r: Receipt| Receipt {
        request_id: 42,
        ..r
    };
    evidence = Equivocation::signed(&keys[1], [another(receipt), another(other)]);
    evidence.receipts[1].receipt.output[0] ^= 1;
    std::fs::write(&file, evidence.to_json()).expect("write");
    let kept = backend.refused(
        "dev:4",
        t(51),
        &["challenge", "equivocation", "--evidence", s(&file)],
    );
    assert!(
        kept.contains("the second signature does not verify"),
        "{kept}"
    );
    let outcome: Value = serde_json::from_str(&backend.ok(
        "dev:4",
        t(52),
        &[
            "challenge",
            "equivocation",
            "--evidence",
            s(&file),
            "--unchecked",
        ],
    ))
    .expect("json");
    assert_eq!(outcome["outcome"], "rejected", "{outcome}");
    assert_eq!(
        outcome["reason"], "the second signature does not verify",
        "{outcome}"
    );

    // After the window: result B is beyond challenge and final.
    let late = verdict(&keys[1], &id_b, "late2.json");
    let late3 = verdict(&keys[2], &id_b, "late3.json");
    let refused = backend.refused(
        "dev:4",
        t(31 + 100),
        &[
            "challenge",
            "committee",
            &id_b,
            "--verdict",
            s(&late),
            "--verdict",
            s(&late3),
        ],
    );
    assert!(refused.contains("is final"), "{refused}");
    assert_eq!(backend.ok("dev:0", t(132), &["finalize"]), id_b);
    let state: Value =
        serde_json::from_str(&backend.ok("dev:0", t(133), &["show", "--json"])).expect("json");
    let balance = |i: usize| {
        state["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|a| {
                a["address"]
                    .as_str()
                    .expect("address")
                    .eq_ignore_ascii_case(&backend.ok(&format!("dev:{i}"), None, &["account"]))
            })
            .map(|a| a["balance"].as_str().expect("balance").to_string())
    };
    assert_eq!(balance(1).as_deref(), Some("400"), "{state}");
    assert_eq!(balance(2).as_deref(), Some("400"), "{state}");
    // 50 - 10 - 10 (two failed challenges) + 50 + 50 (half of each slash).
    assert_eq!(balance(4).as_deref(), Some("130"), "{state}");
    assert_eq!(state["burned"], "120", "{state}");
    let states: Vec<&str> = state["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["slashed", "final"], "{state}");
    // Unlocked now: node 1 takes its stake back.
    assert_eq!(backend.ok("dev:1", t(134), &["withdraw", "400"]), "0");
}

/// Two `deposit 1` processes at once from one account, `rounds` times: all land.
fn concurrent_deposits(backend: &Backend, rounds: usize) {
    let before: u64 = backend
        .ok("dev:7", None, &["deposit", "1"])
        .parse()
        .expect("stake");
    for _ in 0..rounds {
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_zkinfer"))
                .arg("ledger")
                .args(&backend.chain)
                .args(["--from", "dev:7", "deposit", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let (a, b) = (spawn(), spawn());
        for child in [a, b] {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let after: u64 = backend
        .ok("dev:7", None, &["deposit", "1"])
        .parse()
        .expect("stake");
    assert_eq!(after, before + 2 * rounds as u64 + 1);
}

fn init_json(backend: &Backend) -> Value {
    let out = backend.ok(
        "dev:0",
        Some(T0),
        &["init", "--window-s", "100", "--threshold", "2"],
    );
    serde_json::from_str(&out).expect("init prints JSON")
}

#[test]
fn the_ledger_runs_in_the_embedded_evm() {
    let dir = Scratch::new("embedded");
    let state = dir.0.join("ledger.json");
    let backend = Backend::new(vec!["--state".into(), s(&state).into()]);
    let init = init_json(&backend);
    let contract = init["contract"].as_str().expect("contract").to_string();
    let again = backend.refused("dev:0", None, &["init"]);
    assert!(again.contains("init never replaces one"), "{again}");
    scenario(&backend, &contract, &dir.0);
    backend.report_gas("the embedded EVM");
    concurrent_deposits(&backend, 50);
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_ledger_runs_on_anvil() {
    let dir = Scratch::new("anvil");
    let anvil = Anvil::start();
    let rpc = Backend::new(vec!["--rpc".into(), anvil.url.clone()]);
    let init = init_json(&rpc);
    let contract = init["contract"].as_str().expect("contract").to_string();
    let backend = Backend::new(vec![
        "--rpc".into(),
        anvil.url.clone(),
        "--contract".into(),
        contract.clone(),
    ]);
    scenario(&backend, &contract, &dir.0);
    backend.gas.borrow_mut().extend(rpc.gas.take());
    backend.report_gas("anvil");
    concurrent_deposits(&backend, 50);
}

#[test]
fn a_chain_that_is_down_or_not_a_ledger_is_a_clear_error() {
    let dir = Scratch::new("errors");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let down = Backend::new(vec![
        "--rpc".into(),
        format!("http://127.0.0.1:{port}"),
        "--contract".into(),
        format!("0x{}", "11".repeat(20)),
    ]);
    let message = down.refused("dev:0", None, &["show"]);
    assert!(message.contains("eth_chainId"), "{message}");
    let anvil = Anvil::start();
    let nothing = Backend::new(vec![
        "--rpc".into(),
        anvil.url.clone(),
        "--contract".into(),
        format!("0x{}", "11".repeat(20)),
    ]);
    let message = nothing.refused("dev:0", None, &["show"]);
    assert!(
        message.contains("holds no zkinfer ledger contract"),
        "{message}"
    );
    // Bad input is refused before anything is sent (exit 2).
    let state = dir.0.join("l.json");
    let embedded = Backend::new(vec!["--state".into(), s(&state).into()]);
    init_json(&embedded);
    for args in [
        vec!["submit", "ab\ncd", "0x11"],
        vec!["submit", &"00".repeat(32), "0x11"],
        vec!["--from", "dev:10", "deposit", "1"],
        vec!["deposit", "0"],
        vec!["--now", "18446744073709551615", "show"],
        vec!["submit", &"aa".repeat(32), "not-a-node\u{1b}[2J"],
    ] {
        let out = embedded.run("dev:0", None, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains('\u{1b}'), "{stderr}");
    }
    let fresh = Backend::new(vec!["--state".into(), s(&dir.0.join("fresh.json")).into()]);
    for window in ["0", "315360001", "18446744073709551615"] {
        let out = fresh.run("dev:0", None, &["init", "--window-s", window]);
        assert_eq!(out.status.code(), Some(2), "{window}: {out:?}");
    }
    assert!(
        !dir.0.join("fresh.json").exists(),
        "a refused init writes nothing"
    );
    let back = embedded.refused("dev:0", Some(T0 - 1), &["deposit", "1"]);
    assert!(back.contains("does not go back"), "{back}");
}

#[test]
fn commands_killed_mid_write_leave_a_whole_state_and_no_temporary_file() {
    let dir = Scratch::new("kills");
    let state = dir.0.join("ledger.json");
    let backend = Backend::new(vec!["--state".into(), s(&state).into()]);
    init_json(&backend);
    for i in 0..30u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
            .args([
                "ledger",
                "--state",
                s(&state),
                "--from",
                "dev:5",
                "deposit",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(i % 15));
        let _ = child.kill();
        let _ = child.wait();
    }
    // Whatever each kill interrupted, the state reads whole and the next deposit lands on it.
    let stake: u64 = backend
        .ok("dev:5", None, &["deposit", "1"])
        .parse()
        .expect("stake");
    assert!((1..=31).contains(&stake), "{stake}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
