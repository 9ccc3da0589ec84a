//! `zkinfer generate` with the packaged model (skipped when it is not installed).

use std::path::PathBuf;
use std::process::Command;

fn zkinfer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer")
}

fn installed() -> bool {
    let ok = zkinfer(&["model", "path"]).status.success();
    if !ok {
        eprintln!("skipping: packaged model not installed (run scripts/install_model.sh)");
    }
    ok
}

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. In the beginning";

#[test]
fn greedy_generation_follows_the_reference_start() {
    if !installed() {
        return;
    }
    let o = zkinfer(&[
        "generate",
        "--prompt",
        PROMPT,
        "--max-tokens",
        "5",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    // llama.cpp (docs/model.md): ", the dog was a little bit lazy. ..."
    assert!(text.starts_with(", the dog was a"), "{text}");
}

#[test]
fn seeded_sampling_is_reproducible_and_records_are_provable_inputs() {
    if !installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("zkinfer-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |seed: &str, records: &PathBuf| {
        let o = zkinfer(&[
            "generate",
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "6",
            "--temperature",
            "0.9",
            "--seed",
            seed,
            "--records",
            records.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b, c) = (dir.join("a.json"), dir.join("b.json"), dir.join("c.json"));
    assert_eq!(run("7", &a), run("7", &b));
    let _ = run("8", &c);
    let records: prover::Records = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    assert_eq!(records.vocab, 262_144);
    assert_eq!(records.steps.len(), 6);
    // Every record passes the prover's check that its token follows from its logits.
    prover::prepare(&records, circuits::FixedPoint::default()).expect("records are provable");
    let other: prover::Records = serde_json::from_slice(&std::fs::read(&c).unwrap()).unwrap();
    let rs = |r: &prover::Records| {
        format!(
            "{:?}",
            r.steps.iter().map(|s| &s.sampler).collect::<Vec<_>>()
        )
    };
    assert_ne!(
        rs(&records),
        rs(&other),
        "another seed gives other randomness"
    );
}

#[test]
fn transcripts_hold_digests_by_default_and_provable_logits_when_asked() {
    if !installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("zkinfer-transcript-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |path: &PathBuf, logits: bool| {
        let mut args = vec![
            "generate",
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "3",
            "--temperature",
            "0.9",
            "--seed",
            "7",
            "--threads",
            "1",
            "--transcript",
            path.to_str().unwrap(),
        ];
        if logits {
            args.push("--transcript-logits");
        }
        let o = zkinfer(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let transcript: transcript::Transcript = serde_json::from_str(&text).unwrap();
        (value, transcript, text.len())
    };

    let (value, slim, size) = run(&dir.join("t.json"), false);
    assert_eq!(value["version"], 3);
    assert_eq!(value["model_id"].as_str().unwrap().len(), 64);
    assert_eq!(value["prompt"], "Once upon a time");
    assert_eq!(value["sampler"]["sample"]["temperature"], 0.9);
    // --seed fixes the nonce and request id that r is derived from.
    let nonce = transcript::Nonce::from_seed(7);
    assert_eq!(value["client_nonce"], nonce.to_hex());
    assert_eq!(value["request_id"], nonce.request_id());
    assert!(value["proving"].is_null());
    // Digests only: no logits, a few kilobytes.
    assert!(value.get("records").is_none(), "{value}");
    assert!(size < 8 * 1024, "{size} bytes");
    let prompt_tokens = value["prompt_tokens"].as_array().unwrap();
    assert!(!prompt_tokens.is_empty());
    let tokens = value["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 3);
    let logprobs = value["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), tokens.len());
    assert!(logprobs.iter().all(|l| l.as_f64().unwrap() <= 0.0));
    // One local hop per forward: the prompt, then each token fed back, the
    // last one too.
    let hops = value["hops"].as_array().unwrap();
    assert_eq!(hops.len(), tokens.len() + 1, "{hops:?}");
    assert_eq!(hops[0]["node"], "local");
    assert_eq!(hops[0]["position"], 0);
    assert_eq!(hops[0]["layers"], serde_json::json!([0, 18]));
    assert_eq!(hops[1]["position"], prompt_tokens.len());

    // With --transcript-logits, the side file holds records exactly as
    // `prove --records` takes them (same seed: same tokens).
    let (value, full, _) = run(&dir.join("b.json"), true);
    let side = &value["records"]["file"];
    assert_eq!(side["path"], "b.logits.bin");
    assert_eq!(full.tokens, slim.tokens);
    assert_eq!(full.hops, slim.hops);
    let records = full.records(&dir).expect("side file").expect("records");
    let json = serde_json::to_value(&records).unwrap();
    let records: prover::Records = serde_json::from_value(json).unwrap();
    assert_eq!(records.vocab, 262_144);
    assert_eq!(records.steps.len(), tokens.len());
    for (step, token) in records.steps.iter().zip(tokens) {
        assert_eq!(u64::from(step.token), token.as_u64().unwrap());
    }
    prover::prepare(&records, circuits::FixedPoint::default()).expect("records are provable");
    // The last hop of the forward that produced step i's logits hashes them.
    let logits_digest = |logits: &[f32]| {
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        blake3::hash(&bytes).to_hex().to_string()
    };
    assert_eq!(
        hops[0]["output_blake3"].as_str().unwrap(),
        logits_digest(&records.steps[0].logits)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
