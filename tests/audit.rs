//! `zkinfer audit`, `zkinfer verify --fraud-proof` and `zkinfer ledger
//! challenge` end to end: two signing nodes of the tiny random Gemma 3 run
//! in this process (one of them tampers with layer 5 at one position, as
//! `zkinfer serve` never does), the CLI audits what the client wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::cheats::{Cheat, LiveChain, Models, Run};
use serde_json::Value;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-audit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn zkinfer(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), json, text)
}

fn start(models: &Models, cheat: Option<Cheat>, dir: &Path, name: &str) -> (LiveChain, PathBuf) {
    let run = Run {
        models,
        cheat,
        prompt: vec![2, 17, 101, 45],
        tokens: 6,
        seed: 7,
        prove: None,
    };
    let chain = run.start().expect("generation");
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(&chain.transcript).expect("json")).expect("write");
    (chain, path)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8")
}

#[test]
fn audit_accepts_honest_chains_and_a_fraud_proof_slashes_a_cheating_node() {
    let dir = scratch();
    let models = Models::write(&dir.join("models")).expect("models");
    let model = s(&models.honest);
    let audit = |transcript: &Path, extra: &[&str]| {
        let mut args = vec![
            "audit",
            "--transcript",
            s(transcript),
            "--model",
            model,
            "--json",
        ];
        args.extend_from_slice(extra);
        zkinfer(&args)
    };

    // Honest: every hop accepted, in full or sampled.
    let (honest, path) = start(&models, None, &dir, "honest.json");
    let (code, report, text) = audit(&path, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["verdict"], "accept");
    let hops = report["hops"].as_array().expect("hops");
    assert_eq!(hops.len(), honest.transcript.hops.len());
    assert!(
        hops.iter().all(|h| h["span"]["max_abs_diff"] == 0.0),
        "{report}"
    );
    let (code, report, text) = audit(&path, &["--sample", "2"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(report["hops"].as_array().expect("hops").len(), 2 * 2);
    drop(honest);
    // The nodes are gone: nothing to re-execute, so no verdict either way.
    let (code, report, text) = audit(&path, &[]);
    assert_eq!(code, 3, "{text}");
    assert_eq!(report["verdict"], "ambiguous");

    // Node B tampers: the audit rejects, bisects to layer 5, writes the proof.
    let (cheating, path) = start(
        &models,
        Some(Cheat::TamperedActivation),
        &dir,
        "tampered.json",
    );
    let proofs = dir.join("proofs");
    let (code, report, text) = audit(&path, &["--fraud-proofs", s(&proofs)]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["verdict"], "reject");
    let bad: Vec<&Value> = report["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .filter(|h| h["first_bad"] != Value::Null)
        .collect();
    assert_eq!(bad.len(), 1, "{report}");
    assert_eq!(bad[0]["first_bad"]["layer"], 5);
    let proof_path = PathBuf::from(report["fraud_proofs"][0].as_str().expect("a fraud proof"));
    drop(cheating);

    // The fraud proof stands alone (the nodes are gone now).
    let (code, verdict, text) = zkinfer(&[
        "verify",
        "--fraud-proof",
        s(&proof_path),
        "--model",
        model,
        "--json",
    ]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(verdict["valid"], true);
    let accused = verdict["node"].as_str().expect("node key").to_string();
    // Against another model, or with any value changed, it shows nothing.
    let other = models.honest.with_file_name("other.gguf");
    let (code, verdict, _) = zkinfer(&[
        "verify",
        "--fraud-proof",
        s(&proof_path),
        "--model",
        s(&other),
        "--json",
    ]);
    assert_eq!((code, &verdict["valid"]), (1, &Value::Bool(false)));
    let mut proof: Value =
        serde_json::from_slice(&std::fs::read(&proof_path).expect("read")).expect("json");
    let data = proof["output"]["matrix"]["data"]
        .as_str()
        .expect("data")
        .to_string();
    let flipped = format!(
        "{}{}",
        if data.starts_with('0') { "1" } else { "0" },
        &data[1..]
    );
    proof["output"]["matrix"]["data"] = Value::String(flipped);
    let forged = dir.join("forged.json");
    std::fs::write(&forged, serde_json::to_vec(&proof).expect("json")).expect("write");
    let (code, verdict, _) = zkinfer(&[
        "verify",
        "--fraud-proof",
        s(&forged),
        "--model",
        model,
        "--json",
    ]);
    assert_eq!(code, 1);
    assert!(
        verdict["reason"]
            .as_str()
            .expect("reason")
            .contains("did not sign"),
        "{verdict}"
    );

    // The ledger: a forged proof costs the challenger its bond, the real
    // one slashes the node inside the window, and not after it.
    let ledger = dir.join("stakes.json");
    let l = s(&ledger);
    let ledger_cmd = |now: &str, rest: &[&str]| {
        let mut args = vec!["ledger", "--file", l, "--now", now];
        args.extend_from_slice(rest);
        zkinfer(&args)
    };
    let ok = |r: (i32, Value, String)| assert_eq!(r.0, 0, "{}", r.2);
    ok(ledger_cmd(
        "1000",
        &[
            "init",
            "--window-s",
            "100",
            "--slash",
            "100",
            "--bond",
            "10",
            "--min-stake",
            "100",
        ],
    ));
    ok(ledger_cmd("1000", &["deposit", &accused, "500"]));
    ok(ledger_cmd("1000", &["deposit", "alice", "50"]));
    ok(ledger_cmd("1000", &["submit", "tampered", &accused]));
    ok(ledger_cmd("1000", &["submit", "later", &accused]));
    ok(ledger_cmd(
        "1010",
        &[
            "challenge",
            "tampered",
            "alice",
            "--fraud-proof",
            s(&forged),
            "--model",
            model,
        ],
    ));
    ok(ledger_cmd(
        "1020",
        &[
            "challenge",
            "tampered",
            "alice",
            "--fraud-proof",
            s(&proof_path),
            "--model",
            model,
        ],
    ));
    let (code, after_window, _) = ledger_cmd(
        "1200",
        &[
            "challenge",
            "later",
            "alice",
            "--fraud-proof",
            s(&proof_path),
            "--model",
            model,
        ],
    );
    assert_eq!(code, 1, "{after_window}");
    ok(ledger_cmd("1200", &["finalize"]));
    let (_, state, _) = ledger_cmd("1200", &["show", "--json"]);
    assert_eq!(state["balances"][accused.as_str()], 400, "{state}");
    // 50 - 10 (forged proof's bond) + 50 (half of the 100 slashed).
    assert_eq!(state["balances"]["alice"], 90, "{state}");
    assert!(
        state["results"]["tampered"]["state"]
            .to_string()
            .contains("slashed"),
        "{state}"
    );
    assert!(
        state["results"]["later"]["state"]
            .to_string()
            .contains("final"),
        "{state}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
