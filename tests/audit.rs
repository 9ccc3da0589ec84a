//! `zkinfer audit`, `zkinfer verify --fraud-proof` and committee slashing
//! through `zkinfer ledger` end to end: two signing nodes of the tiny random Gemma 3 run
//! in this process (one of them tampers with layer 5 at one position, as
//! `zkinfer serve` never does), the CLI audits what the client wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::cheats::{Cheat, LiveChain, Models, Run};
use serde_json::Value;
use verifier::receipt::SecretKey;

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

    // The ledger: auditors sign a committee verdict only for a fraud proof that
    // holds; two verdicts slash the node inside the window, and not after it.
    let state = dir.join("ledger.json");
    let ledger_cmd = |from: &str, now: u64, rest: &[&str]| {
        let now = now.to_string();
        let mut args = vec![
            "ledger",
            "--state",
            s(&state),
            "--from",
            from,
            "--now",
            &now,
        ];
        args.extend_from_slice(rest);
        zkinfer(&args)
    };
    let ok = |r: (i32, Value, String)| {
        assert_eq!(r.0, 0, "{}", r.2);
        r.1
    };
    let init = ok(ledger_cmd(
        "dev:0",
        1000,
        &["init", "--window-s", "100", "--threshold", "2"],
    ));
    let contract = init["contract"].as_str().expect("contract").to_string();
    // The accused node's key is the harness's (seed of its index); it registers it.
    let accused_key = (1..=4u8)
        .filter_map(|n| SecretKey::from_seed(&[n; 32]))
        .find(|k| k.public().to_hex() == accused)
        .expect("the accused is one of the harness's nodes");
    let key_file = |name: &str, key: &SecretKey| {
        let path = dir.join(name);
        std::fs::write(&path, key.to_hex()).expect("write key");
        path
    };
    let auditors = [20u8, 21].map(|n| SecretKey::from_seed(&[n; 32]).expect("key"));
    let keys = [
        key_file("accused.key", &accused_key),
        key_file("auditor1.key", &auditors[0]),
        key_file("auditor2.key", &auditors[1]),
    ];
    for (i, key) in keys.iter().enumerate() {
        let from = format!("dev:{}", i + 1);
        ok(ledger_cmd(&from, 1001, &["register", "--key", s(key)]));
        ok(ledger_cmd(
            &from,
            1001,
            &["deposit", if i == 0 { "500" } else { "100" }],
        ));
    }
    ok(ledger_cmd("dev:4", 1001, &["deposit", "50"]));
    let tampered = blake3::hash(&std::fs::read(&path).expect("transcript"))
        .to_hex()
        .to_string();
    let later = "bb".repeat(32);
    ok(ledger_cmd("dev:0", 1002, &["submit", &tampered, &accused]));
    ok(ledger_cmd("dev:0", 1002, &["submit", &later, &accused]));
    let sign = |proof: &Path, auditor: &Path, result: &str, out: &Path| {
        zkinfer(&[
            "audit",
            "--fraud-proof",
            s(proof),
            "--model",
            model,
            "--sign-verdict",
            s(auditor),
            "--ledger",
            &contract,
            "--result",
            result,
            "--verdict-out",
            s(out),
        ])
    };
    // An auditor signs nothing for the forged proof.
    let no_verdict = dir.join("forged.verdict.json");
    let (code, _, text) = sign(&forged, &keys[1], &tampered, &no_verdict);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("no verdict signed") && !no_verdict.exists(),
        "{text}"
    );
    let verdicts: Vec<PathBuf> = (1..=2)
        .map(|i| {
            let out = dir.join(format!("verdict{i}.json"));
            let (code, _, text) = sign(&proof_path, &keys[i], &tampered, &out);
            assert_eq!(code, 0, "{text}");
            out
        })
        .collect();
    let outcome = ok(ledger_cmd(
        "dev:4",
        1020,
        &[
            "challenge",
            "committee",
            &tampered,
            "--verdict",
            s(&verdicts[0]),
            "--verdict",
            s(&verdicts[1]),
        ],
    ));
    assert_eq!(outcome["outcome"], "slashed", "{outcome}");
    let late: Vec<PathBuf> = (1..=2)
        .map(|i| {
            let out = dir.join(format!("late{i}.json"));
            assert_eq!(sign(&proof_path, &keys[i], &later, &out).0, 0);
            out
        })
        .collect();
    let (code, _, text) = ledger_cmd(
        "dev:4",
        1200,
        &[
            "challenge",
            "committee",
            &later,
            "--verdict",
            s(&late[0]),
            "--verdict",
            s(&late[1]),
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is final"), "{text}");
    ok(ledger_cmd("dev:0", 1200, &["finalize"]));
    let state = ok(ledger_cmd("dev:0", 1200, &["show", "--json"]));
    let accounts = state["accounts"].as_array().expect("accounts");
    assert_eq!(accounts[0]["key"], accused, "{state}");
    assert_eq!(accounts[0]["balance"], "400", "{state}");
    // 50 + 50 (half of the 100 slashed).
    assert_eq!(accounts[3]["balance"], "100", "{state}");
    let states: Vec<&str> = state["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["slashed", "final"], "{state}");
    let _ = std::fs::remove_dir_all(dir);
}
