//! `zkinfer bench conformance` and `--device` on a tiny random-weight model:
//! CPU against CPU works everywhere; CUDA is refused with a way forward when
//! the binary was built without it.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn zkinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer")
}

fn tiny_model(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join(name);
    let config = models::testing::tiny_gemma3_config();
    models::testing::write_random_gemma3_with_tokenizer(&model, &config, 5).unwrap();
    model
}

#[test]
fn cpu_against_cpu_on_another_thread_count_agrees() {
    let model = tiny_model("cpu.gguf");
    let o = zkinfer(&[
        "bench",
        "conformance",
        "--model",
        model.to_str().unwrap(),
        "--reference-threads",
        "2",
        "--candidate-threads",
        "1",
        "--prompt",
        "the quick brown fox",
        "--prompt",
        "a b c",
        "--tokens",
        "6",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let prompts = report["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    for p in prompts {
        assert_eq!(p["rows"], 6, "{p}");
        assert_eq!(p["tokens_identical"], true, "{p}");
        assert!(p["max_abs_hidden"].as_f64().unwrap() > 0.0, "{p}");
    }
    assert_eq!(report["tokens_identical"], true);
    for key in [
        "max_abs_logit_diff",
        "max_abs_hidden_diff",
        "max_abs_head_diff",
    ] {
        let diff = report[key].as_f64().unwrap();
        // Thread counts may only reorder f32 sums: far inside the auditor's tolerances.
        assert!((0.0..1e-3).contains(&diff), "{key} = {diff}");
    }
    for key in ["hidden_score", "logits_score"] {
        assert!(report[key].as_f64().unwrap() <= 0.25, "{key}: {report}");
    }
    for p in prompts {
        for part in ["logits", "hidden", "head"] {
            assert_eq!(p[part]["verdict"], "accept", "{part}: {p}");
        }
    }
    let atol = report["recommended_logits_tolerance"]["atol"]
        .as_f64()
        .unwrap();
    let current = report["logits_tolerance"]["atol"].as_f64().unwrap();
    assert!(atol >= 1.0 / 2048.0 - 1e-12 && atol <= current, "{report}");
    assert!(report["candidate"]["describe"]
        .as_str()
        .unwrap()
        .contains("1 thread"));
}

#[test]
fn cuda_without_the_feature_is_refused_with_a_way_forward() {
    if cfg!(feature = "cuda") {
        return;
    }
    let model = tiny_model("nocuda.gguf");
    let o = zkinfer(&[
        "bench",
        "conformance",
        "--model",
        model.to_str().unwrap(),
        "--candidate",
        "cuda",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("built without CUDA") && err.contains("--features cuda"),
        "{err}"
    );
    assert!(o.stdout.is_empty());

    let o = zkinfer(&[
        "serve",
        "--model",
        model.to_str().unwrap(),
        "--layers",
        "0..7",
        "--listen",
        "127.0.0.1:0",
        "--device",
        "cuda:1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--device cuda:1") && err.contains("use --device cpu"),
        "{err}"
    );
}

#[test]
fn a_malformed_device_is_a_usage_error() {
    let o = zkinfer(&[
        "serve",
        "--layers",
        "0..1",
        "--listen",
        "127.0.0.1:0",
        "--device",
        "gpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
}

#[test]
fn throughput_reports_decode_speed_and_refuses_cuda_without_it() {
    let model = tiny_model("throughput.gguf");
    let o = zkinfer(&[
        "bench",
        "throughput",
        "--model",
        model.to_str().unwrap(),
        "--threads",
        "1",
        "--tokens",
        "5",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["tokens"], 4, "{report}");
    assert_eq!(report["prompt_tokens"], 8, "{report}");
    assert!(report["tokens_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["latency_p90_ms"].as_f64().unwrap() >= report["latency_median_ms"].as_f64().unwrap(),
        "{report}"
    );
    if !cfg!(feature = "cuda") {
        let o = zkinfer(&["bench", "throughput", "--random", "--device", "cuda"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("built without CUDA"));
    }
}
