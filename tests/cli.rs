//! End-to-end tests of the `zkinfer` binary: prove, verify, inspect, and the
//! rejection of bad records and tampered bundles. One bundle is proven once and
//! shared by the tests (proving at k = 17 takes about a minute on 2 cores).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{json, Value};

const VOCAB: usize = 600;
/// `vk digest` of decode-step v3 V=600 F=11 Q=30 T=4 L=2 tau=1.000.
const PINNED_VK_DIGEST: &str = "974015f94154608abb271ab8011720124aae55cb8a598cc9df4ad63bda08f712";

fn zkinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer")
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic logits with a clear maximum at `peak`.
fn logits(seed: u32, peak: usize) -> Vec<f32> {
    (0..VOCAB)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            let noise = (x >> 8) as f32 / (1u32 << 24) as f32 * 6.0 - 3.0;
            if i == peak {
                9.0
            } else {
                noise
            }
        })
        .collect()
}

fn records() -> Value {
    json!({"vocab": VOCAB, "steps": [
        {"position": 5, "logits": logits(1, 17), "token": 17, "sampler": {"greedy": {}}},
        // r = 0 picks the first token with non-zero weight: index 0.
        {"position": 6, "logits": logits(2, 40), "token": 0, "sampler": {"sample": {"temperature": 1.0, "r": "0"}}},
        {"position": 7, "logits": logits(3, 599), "token": 599, "sampler": {"greedy": {}}},
    ]})
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

/// The shared bundle: three steps in one proof of four (one padding step).
fn bundle() -> &'static PathBuf {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let dir = scratch();
        let records = dir.join("records.json");
        write_json(&records, &records_value());
        let out = dir.join("answer.zkp");
        let o = zkinfer(&[
            "prove",
            "--records",
            records.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch",
            "4",
            "--lanes",
            "2",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "prove failed: {err}");
        // stderr is a pipe here: progress comes as plain lines.
        for line in ["checking 3 records", "building keys for", "proofs: 1 of 1"] {
            assert!(err.contains(line), "no {line:?} in {err}");
        }
        out
    })
}

fn records_value() -> Value {
    records()
}

#[test]
fn verify_accepts_the_proven_bundle() {
    let o = zkinfer(&["verify", bundle().to_str().unwrap(), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["valid"], true);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "padding steps are not reported");
    let tokens: Vec<_> = steps.iter().map(|s| s["token"].as_u64().unwrap()).collect();
    assert_eq!(tokens, [17, 0, 599]);
    assert_eq!(steps[0]["position"], 5);
    for s in steps {
        assert_eq!(s["verdict"], "valid");
        assert!(s["logprob"].as_f64().unwrap() <= 0.0);
    }
    // The proven greedy log-probability matches float64 log-softmax within the
    // bound (2.6e-4 at this size) plus the quantization of the logits (2^-11).
    let z = logits(1, 17);
    let lse = z.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
    let exact = z[17] as f64 - lse;
    let proven = steps[0]["logprob"].as_f64().unwrap();
    assert!(
        (proven - exact).abs() < 1e-3,
        "proven {proven}, exact {exact}"
    );
}

#[test]
fn inspect_prints_statements_without_verifying() {
    let o = zkinfer(&["inspect", bundle().to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["circuit"]["vocab"], VOCAB);
    assert_eq!(v["circuit"]["steps_per_proof"], 4);
    assert_eq!(v["circuit"]["lanes"], 2);
    assert_eq!(v["steps"].as_array().unwrap().len(), 4);
    assert_eq!(v["steps"][3]["padding"], true);
    assert_eq!(v["steps"][1]["sampler"]["sample"]["r"], "0");
    // One commitment per lane to the logit columns: 32-byte points.
    let commitments = v["logit_commitments"][0].as_array().unwrap();
    assert_eq!(commitments.len(), 2);
    assert!(commitments.iter().all(|c| c.as_str().unwrap().len() == 64));
    // The verifying key of this shape is pinned: a change of circuit layout must be deliberate
    // (and bump the bundle format or the circuit description).
    assert_eq!(v["vk_digest"], PINNED_VK_DIGEST);
}

#[test]
fn corrupted_bundle_is_unreadable() {
    let mut bytes = std::fs::read(bundle()).unwrap();
    bytes[100] ^= 1;
    let path = scratch().join("corrupt.zkp");
    std::fs::write(&path, &bytes).unwrap();
    let o = zkinfer(&["verify", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum"));
    let o = zkinfer(&["verify", "/nonexistent/bundle.zkp"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn forged_statement_is_invalid() {
    let mut bundle = verifier::Bundle::from_bytes(&std::fs::read(bundle()).unwrap()).unwrap();
    // Claim a higher log-probability for the sampled step, and re-seal the file.
    bundle.proofs[0].steps[1].logprob += 1;
    let path = scratch().join("forged.zkp");
    std::fs::write(&path, bundle.to_bytes()).unwrap();
    let o = zkinfer(&["verify", path.to_str().unwrap(), "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["steps"][1]["verdict"], "invalid");
}

/// Runs `prove` on `records` (written to `name.json`); returns the exit code, stderr
/// and whether a bundle was written.
fn prove_records(name: &str, records: &Value) -> (Option<i32>, String, bool) {
    let dir = scratch();
    let path = dir.join(format!("{name}.json"));
    let out = dir.join(format!("{name}.zkp"));
    write_json(&path, records);
    let o = zkinfer(&[
        "prove",
        "--records",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    // Whatever happened, no temporary file is left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.zkp")))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        out.exists(),
    )
}

#[test]
fn endless_inputs_are_refused_on_their_first_bytes() {
    // /dev/zero never ends: each reader must stop at once, not fill memory.
    let zero = "/dev/zero";
    let dir = scratch();
    let out = dir.join("zero.zkp");
    let cases: [(&[&str], &str); 5] = [
        (
            &["prove", "--records", zero, "--out", out.to_str().unwrap()],
            "not a decode records file",
        ),
        (&["verify", zero], "bad magic bytes"),
        (&["inspect", zero], "bad magic bytes"),
        (&["verify", "--fraud-proof", zero], "not a fraud proof"),
        (
            &[
                "verify",
                "--transcript",
                zero,
                "--bundle",
                bundle().to_str().unwrap(),
            ],
            "not a transcript",
        ),
    ];
    for (args, message) in cases {
        let o = zkinfer(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn prove_killed_while_proving_leaves_no_file() {
    use std::io::BufRead;
    let dir = scratch().join("killed");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("records.json");
    write_json(&path, &records());
    let out = dir.join("killed.zkp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(["prove", "--records", path.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let proving = stderr
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("proofs: 0 of"));
    assert!(proving, "prove never started proving");
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "records.json")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn prove_checks_its_output_before_proving() {
    let dir = scratch();
    let path = dir.join("unwritable.json");
    write_json(&path, &records());
    let out = dir.join("no-such-dir").join("x.zkp");
    let o = zkinfer(&[
        "prove",
        "--records",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write"), "{err}");
    // It failed before any key or proof: no progress line was printed.
    assert!(!err.contains("proofs:"), "{err}");
}

#[test]
fn prove_refuses_a_token_that_does_not_follow() {
    let mut records = records();
    records["steps"][0]["token"] = json!(18);
    let (code, err, written) = prove_records("wrong-token", &records);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("position 5") && err.contains("token 18") && err.contains("gives 17"),
        "{err}"
    );
    assert!(!written, "nothing written on failure");
}

#[test]
fn prove_refuses_mixed_or_inexact_temperatures() {
    // Greedy steps count as temperature 1: a step at 1.5 beside them is refused.
    let mut mixed = records();
    mixed["steps"][1]["sampler"]["sample"]["temperature"] = json!(1.5);
    let (code, err, written) = prove_records("mixed-temperature", &mixed);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("position 6")
            && err.contains("temperature 1.500")
            && err.contains("one temperature"),
        "{err}"
    );
    assert!(!written, "nothing written on failure");
    // A temperature the statement cannot hold exactly is refused, not rounded.
    let mut inexact = records();
    inexact["steps"][1]["sampler"]["sample"]["temperature"] = json!(0.7355);
    let (code, err, _) = prove_records("inexact-temperature", &inexact);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("0.7355") && err.contains("multiple of 0.001"),
        "{err}"
    );
}

#[test]
fn prove_names_an_out_of_range_logit() {
    let mut records = records();
    records["steps"][2]["logits"][123] = json!(1.0e6);
    let (code, err, _) = prove_records("out-of-range", &records);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("position 7") && err.contains("index 123") && err.contains("1000000"),
        "{err}"
    );
}

#[test]
fn prove_rejects_malformed_records() {
    let dir = scratch();
    let path = dir.join("bad.json");
    std::fs::write(&path, b"{\"vocab\": 3, \"steps\": [").unwrap();
    let o = zkinfer(&[
        "prove",
        "--records",
        path.to_str().unwrap(),
        "--out",
        dir.join("z.zkp").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a decode records file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut records = records();
    records["steps"][1]["sampler"]["sample"]["r"] = json!("not a number");
    let (code, err, _) = prove_records("bad-r", &records);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a decimal u64"), "{err}");
}

#[test]
fn mutated_bundles_are_rejected_without_panicking() {
    let original = std::fs::read(bundle()).unwrap();
    let parsed = verifier::Bundle::from_bytes(&original).unwrap();
    let mut rejected = 0;
    // Flips, truncations and extensions at 1,200 positions spread over the file.
    for i in 0..400usize {
        let pos = i * original.len() / 400;
        let mut flipped = original.clone();
        flipped[pos] ^= 1 << (i % 8);
        let truncated = &original[..pos];
        let mut extended = original.clone();
        extended.insert(pos, (i % 251) as u8);
        for bytes in [flipped.as_slice(), truncated, extended.as_slice()] {
            assert!(
                verifier::Bundle::from_bytes(bytes).is_err(),
                "mutation at {pos} accepted"
            );
            rejected += 1;
        }
    }
    assert_eq!(rejected, 1200);

    // Mutations that keep the checksum valid (re-sealed): the parser or the
    // proof check must still reject each, never panic.
    let cache = verifier::ParamsCache::new(verifier::ParamsCache::default_dir());
    let params = cache.load_or_generate(parsed.shape.k(), |_| {}).unwrap();
    let key = verifier::verifying_key(parsed.shape, &params).unwrap();
    let body_len = original.len() - 32;
    // The seed is no public input: a bundle with another seed still verifies,
    // and only opening its commitments with the logits tells
    // (prover/tests/opening.rs).
    let seed_start = 57 + 2 + parsed.shape.steps * 33;
    let mut deep = 0;
    for i in 0..40usize {
        let pos = 10 + i * (body_len - 10) / 40;
        if (seed_start..seed_start + 32).contains(&pos) {
            continue;
        }
        let mut body = original[..body_len].to_vec();
        body[pos] ^= 0x5a;
        body.extend_from_slice(blake3::hash(&body).as_bytes());
        match verifier::Bundle::from_bytes(&body) {
            Err(_) => {}
            Ok(bundle) => {
                let report = verifier::verify_with_key(&bundle, &params, &key);
                assert!(
                    !matches!(report, Ok(ref r) if r.all_valid()),
                    "re-sealed mutation at {pos} verified"
                );
                deep += 1;
            }
        }
    }
    assert!(
        deep > 20,
        "most re-sealed mutations reach the proof check ({deep})"
    );
}

/// A `zkinfer serve` child process, killed (by its pid) and reaped on drop.
struct ServeChild {
    child: std::process::Child,
    addr: String,
}

impl ServeChild {
    /// Starts `zkinfer serve` on an ephemeral loopback port and waits for its
    /// "listening on ADDR: ..." line.
    fn start(model: &Path, layers: &str) -> ServeChild {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args([
                "--layers",
                layers,
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn zkinfer serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        let mut guard = ServeChild {
            child,
            addr: String::new(),
        };
        assert!(
            read.is_ok_and(|n| n > 0),
            "zkinfer serve {layers} printed nothing"
        );
        guard.addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(": ").next())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        guard
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nodes_toml(nodes: &[(&str, &str)]) -> String {
    nodes
        .iter()
        .map(|(addr, layers)| format!("[[node]]\naddr = \"{addr}\"\nlayers = \"{layers}\"\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn generate_over_serve_nodes_prints_the_single_process_text() {
    let dir = scratch().join("nodes");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    let config = models::testing::tiny_gemma3_config();
    models::testing::write_random_gemma3_with_tokenizer(&model, &config, 5).unwrap();
    let model_arg = model.to_str().unwrap();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            model_arg,
            "--prompt",
            "the quick fox",
            "--max-tokens",
            "8",
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        zkinfer(&args)
    };
    let local = generate(&[]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local_text = String::from_utf8(local.stdout).unwrap();
    assert!(
        !local_text.trim().is_empty(),
        "the tiny model generates some text"
    );

    // The tiny model's 7 layers on two nodes, and on three.
    let a = ServeChild::start(&model, "0..3");
    let b = ServeChild::start(&model, "3..7");
    let c = ServeChild::start(&model, "3..5");
    let d = ServeChild::start(&model, "5..7");
    for (name, nodes) in [
        (
            "two",
            vec![(a.addr.as_str(), "0..3"), (b.addr.as_str(), "3..7")],
        ),
        (
            "three",
            vec![
                (a.addr.as_str(), "0..3"),
                (c.addr.as_str(), "3..5"),
                (d.addr.as_str(), "5..7"),
            ],
        ),
    ] {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, nodes_toml(&nodes)).unwrap();
        let o = generate(&["--nodes", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {err}");
        assert!(
            err.contains("chain: "),
            "{name}: the route is reported: {err}"
        );
        // f32 hidden states: the nodes compute exactly what one process does.
        assert_eq!(
            String::from_utf8(o.stdout).unwrap(),
            local_text,
            "{name} nodes"
        );
    }

    // f16 hidden states round, and this model has near-ties (a margin of 0.016
    // at the 8th token), so compare the prompt's logits, not the text.
    let records = |extra: &[&str], file: &str| {
        let path = dir.join(file);
        let mut args = extra.to_vec();
        args.extend(["--records", path.to_str().unwrap()]);
        let o = generate(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let records: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let logits: Vec<f64> = records["steps"][0]["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        logits
    };
    let two = dir.join("two.toml");
    let local = records(&[], "local.json");
    let half = records(
        &["--nodes", two.to_str().unwrap(), "--activations", "f16"],
        "f16.json",
    );
    assert_eq!(local.len(), config.vocab);
    let diff = local
        .iter()
        .zip(&half)
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(diff > 0.0 && diff < 0.05, "f16 moves logits by {diff}");

    // Layers 3..7 served by nobody: a clear error, exit 1, no text.
    let file = dir.join("missing.toml");
    std::fs::write(&file, nodes_toml(&[(a.addr.as_str(), "0..3")])).unwrap();
    let o = generate(&["--nodes", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("layers 3..7"),
        "names the missing range: {err}"
    );
    assert!(o.stdout.is_empty(), "nothing generated: {:?}", o.stdout);
}

#[test]
fn bench_runtime_measures_a_tiny_model_and_reports_llama_cpp_as_not_measured() {
    let dir = scratch().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    let config = models::testing::tiny_gemma3_config();
    models::testing::write_random_gemma3_with_tokenizer(&model, &config, 5).unwrap();
    let no_python = dir.join("no-such-python");
    let bench = |tokens: &str, extra: &[&str]| {
        let mut args = vec!["bench", "runtime", "--model", model.to_str().unwrap()];
        args.extend(["--tokens", tokens, "--python", no_python.to_str().unwrap()]);
        args.extend(extra);
        zkinfer(&args)
    };
    let o = bench("8", &["--json"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["tokens"], 8);
    let rows = report["throughput"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(rows.len(), 6, "{names:?}");
    for row in &rows[..4] {
        assert_eq!(row["measured"], true, "{row}");
        assert!(row["tokens_per_s"].as_f64().unwrap() > 0.0, "{row}");
        // The forward rounds alike on any thread count, and f32 chains of
        // 2-thread nodes compute exactly what the 1-thread single process does.
        assert_eq!(row["tokens_equal_single_process"], "yes", "{row}");
    }
    assert!(names[2].contains("0..3 | 3..7"), "{names:?}");
    assert!(names[3].contains("0..2 | 2..4 | 4..7"), "{names:?}");
    for llama in &rows[4..] {
        assert_eq!(llama["measured"], false);
        assert!(
            llama["note"]
                .as_str()
                .unwrap()
                .contains("bash scripts/llama_cpp.sh"),
            "says how to install llama.cpp: {llama}"
        );
    }
    assert_eq!(names[4..], ["llama.cpp, 2 threads", "llama.cpp, 1 thread"]);

    let encodings = report["encodings"].as_array().unwrap();
    let by_name = |name: &str| {
        encodings
            .iter()
            .find(|e| e["encoding"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
    };
    let (f32_row, f16_row, q8_row) = (by_name("f32"), by_name("f16"), by_name("q8"));
    // f32 is exact (up to the last bit of a float printed as JSON by the child).
    assert!(
        f32_row["max_abs_logprob_drift"].as_f64().unwrap() < 1e-9,
        "{f32_row}"
    );
    assert_eq!(f32_row["greedy_matches"], 8);
    let sent = |row: &Value| row["hidden_bytes_sent_per_token"].as_f64().unwrap();
    // 64 values a token: 256 bytes in f32, 128 in f16, 64 + a scale in q8, plus framing.
    assert!(sent(f32_row) > 256.0, "{f32_row}");
    assert!(sent(f32_row) - sent(f16_row) == 128.0, "{f16_row}");
    assert!(sent(f32_row) - sent(q8_row) == 256.0 - 68.0, "{q8_row}");
    for row in [f16_row, q8_row] {
        assert!(
            row["mean_abs_logprob_drift"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }

    let failover = &report["failover"];
    assert_eq!(failover["failover_token"], 4, "{failover}");
    assert_eq!(failover["tokens_equal_no_fault_run"], true, "{failover}");
    assert!(failover["killed"].as_str().unwrap().ends_with("(3..7)"));
    // A head that picks sends its pick: a frame of about 100 bytes, not the
    // tiny model's 320 logits (1,280 bytes and a frame).
    let head = &report["head_picks"];
    let head_bytes = head["bytes_per_token"].as_f64().unwrap();
    assert!(head_bytes > 60.0 && head_bytes < 200.0, "{head}");
    assert_eq!(head["tokens_equal_single_process"], "yes", "{head}");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 8);
    let head_target = targets
        .iter()
        .find(|t| t["name"] == "bytes per token from the head node to the client")
        .expect("a head-bytes target");
    assert_eq!(head_target["verdict"], "met", "{head_target}");
    // Without llama.cpp its two ratios are not measured; the rest are.
    for t in &targets[..2] {
        assert_eq!(t["verdict"], "not measured", "{t}");
    }
    for t in &targets[2..] {
        assert!(
            ["met", "missed"].contains(&t["verdict"].as_str().unwrap()),
            "{t}"
        );
    }
    assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));

    // The text report holds the same rows.
    let o = bench("4", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    for line in [
        "tokens = single process",
        "2-shard chain 0..3 | 3..7 (serve --threads 2)",
        "llama.cpp, 1 thread",
        "failover: killed",
        "failover token / median token, latency",
        "bytes per token from the head node to the client",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_before_any_forward() {
    let dir = scratch().join("context");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    let config = models::testing::tiny_gemma3_config();
    models::testing::write_random_gemma3_with_tokenizer(&model, &config, 5).unwrap();
    // One token per word in the tiny vocabulary ("▁a"): past the context of 2048.
    let prompt = "a ".repeat(config.context + 10);
    let o = zkinfer(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--max-tokens",
        "2",
        "--threads",
        "1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the model's context holds {}", config.context)),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing generated");
}
