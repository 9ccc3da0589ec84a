//! `zkinfer api` as a process, driven by real clients: the official `openai`
//! Python package (scripts/python_env.sh installs it) and `curl`, on the
//! tiny random Gemma 3. One test generates in the API's own process; one
//! through two nodes whose head proves, fetching the proof and the
//! transcript and checking them with `zkinfer verify` and `/v1/verify`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use candle_core::quantized::gguf_file;
use candle_core::Device;
use circuits::{CircuitShape, FixedPoint};
use harness::loopback::{spawn_node, test_prover};
use models::model_id::model_id;
use models::testing::{tiny_gemma3_config, write_random_gemma3_with_tokenizer, TempDir};
use models::Model;
use node::{Capacity, NodeConfig};
use serde_json::{json, Value};
use verifier::receipt::SecretKey;
use verifier::ParamsCache;

/// A running `zkinfer api`, killed on drop.
struct Api {
    child: Child,
    base: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `zkinfer api` on a free port and waits until `/health` is 200.
fn start_api(args: &[&str]) -> Api {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(["api", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zkinfer api");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("zkinfer api exited before it listened")
            .expect("stderr line");
        eprintln!("{line}");
        if let Some(rest) = line.strip_prefix("[api on http://") {
            break rest.split(": ").next().expect("an address").to_string();
        }
    };
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| eprintln!("{l}")));
    let api = Api {
        child,
        base: format!("http://{addr}"),
    };
    let start = Instant::now();
    while curl_status(&api, "/health") != 200 {
        assert!(start.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    api
}

fn curl_status(api: &Api, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}{path}", api.base))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

/// `curl` with `args` against `path`: the HTTP status and the body.
fn curl(api: &Api, path: &str, args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("{}{path}", api.base))
        .output()
        .expect("curl");
    let mut body = out.stdout;
    let split = body
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("a status line");
    let status = String::from_utf8_lossy(&body[split + 1..])
        .parse()
        .unwrap_or(0);
    body.truncate(split);
    (status, body)
}

fn post_json(api: &Api, path: &str, body: &Value) -> (u16, Value) {
    let data = body.to_string();
    let (status, bytes) = curl(
        api,
        path,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ],
    );
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.gguf");
    // This model's greedy answer to "the" runs long without a stop token.
    write_random_gemma3_with_tokenizer(&path, &tiny_gemma3_config(), 11).expect("model");
    path
}

/// The interpreter of the environment scripts/python_env.sh makes.
fn python() -> PathBuf {
    let venv = std::env::var_os("ZKINFER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/zkinfer-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/python_env.sh` (bash .ci/run does)",
        python.display()
    );
    python
}

#[test]
fn the_openai_client_and_curl_get_verifiable_answers_from_the_tiny_model() {
    let dir = TempDir::new("api-clients").expect("scratch");
    let model = tiny_model(dir.path());
    let api = start_api(&["--model", model.to_str().expect("utf-8"), "--name", "tiny"]);

    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api_client.py"))
        .arg(format!("{}/v1", api.base))
        .output()
        .expect("run the openai client");
    assert!(
        out.status.success(),
        "the openai client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["model"], "tiny");
    let chat = &summary["chat"];
    let tokens = chat["token_ids"].as_array().expect("token ids");
    assert!(!tokens.is_empty());
    assert_eq!(chat["completion_tokens"], tokens.len());
    // Same seed, same nonce, same tokens.
    assert_eq!(chat["again_token_ids"], chat["token_ids"]);
    assert_eq!(chat["again_nonce"], chat["nonce"]);
    // The stream adds up to the whole answer.
    let stream = &summary["stream"];
    assert_eq!(stream["content"], chat["content"]);
    assert_eq!(stream["token_ids"], chat["token_ids"]);
    assert_eq!(stream["finish_reason"], chat["finish_reason"]);
    assert_eq!(stream["completion_tokens"], chat["completion_tokens"]);
    let logprobs = summary["logprobs"].as_array().expect("logprobs");
    assert!(!logprobs.is_empty());
    for entry in logprobs {
        let top = entry["top"].as_array().expect("top");
        assert_eq!(top.len(), 2, "{entry}");
        assert!(top[0][1].as_f64() >= top[1][1].as_f64(), "{entry}");
        assert!(entry["logprob"].as_f64().expect("lp") <= 0.0);
    }
    assert!(summary["completion"]["text"].is_string());
    assert_eq!(
        summary["bad_temperature"],
        json!({"status": 400, "param": "temperature"})
    );
    assert_eq!(
        summary["unknown_model"],
        json!({"status": 404, "code": "model_not_found"})
    );

    // curl: a whole answer and a stream.
    let body =
        json!({"messages": [{"role": "user", "content": "the fox"}], "max_tokens": 4, "seed": 5});
    let (status, answer) = post_json(&api, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{answer}");
    let curl_tokens = answer["verification"]["token_ids"]
        .as_array()
        .expect("token ids");
    assert!((1..=4).contains(&curl_tokens.len()), "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], curl_tokens.len());
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let data = stream_body.to_string();
    let (status, raw) = curl(
        &api,
        "/v1/chat/completions",
        &[
            "-N",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(status, 200);
    let raw = String::from_utf8(raw).expect("utf-8");
    assert!(raw.trim_end().ends_with("data: [DONE]"), "{raw}");
    let (status, metrics) = curl(&api, "/metrics", &[]);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).expect("utf-8");
    assert!(metrics
        .contains("zkinfer:requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}"));
}

const SPLIT: usize = 4;

/// Two nodes on a runtime of their own, the head one proving, each signing
/// with its own key and holding at most one request's cache.
fn start_nodes(path: &Path) -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    let config = tiny_gemma3_config();
    let shape = CircuitShape::new(config.vocab, FixedPoint::default(), 1, 1).expect("shape");
    let mut toml = String::new();
    for range in [0..SPLIT, SPLIT..config.layers] {
        let (id, model) = shard(path, range.clone());
        let proving = model
            .has_head()
            .then(|| test_prover(shape, ParamsCache::default_dir()));
        let node = NodeConfig {
            proving,
            signer: SecretKey::from_seed(&[range.start as u8 + 7; 32]).map(Arc::new),
            capacity: Capacity {
                requests: 1,
                ..Capacity::default()
            },
            ..NodeConfig::new(id, range.clone())
        };
        let hop = spawn_node(&runtime, model, node).expect("a node");
        toml.push_str(&format!(
            "[[node]]\naddr = \"{}\"\nlayers = \"{}..{}\"\n",
            hop.addr, range.start, range.end
        ));
    }
    (runtime, toml)
}

fn shard(path: &Path, layers: Range<usize>) -> (models::model_id::ModelId, Model) {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let id = model_id(&content, &mut reader).expect("model id");
    let model = Model::from_gguf(&content, &mut reader, &Device::Cpu, layers).expect("load");
    (id, model)
}

fn zkinfer(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zkinfer"))
        .args(args)
        .output()
        .expect("run zkinfer");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_proof_from_the_head_node_downloads_and_verifies_and_a_tampered_transcript_does_not() {
    let dir = TempDir::new("api-proofs").expect("scratch");
    let model = tiny_model(dir.path());
    let (_nodes, toml) = start_nodes(&model);
    let nodes = dir.path().join("nodes.toml");
    std::fs::write(&nodes, toml).expect("nodes.toml");
    let api = start_api(&[
        "--model",
        model.to_str().expect("utf-8"),
        "--nodes",
        nodes.to_str().expect("utf-8"),
        "--prove",
        "challenged:1",
        "--audit-sample",
        "2",
    ]);

    let body =
        json!({"messages": [{"role": "user", "content": "the fox"}], "max_tokens": 6, "seed": 9});
    let (status, answer) = post_json(&api, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{answer}");
    let v = &answer["verification"];
    assert_eq!(v["receipts"]["aggregate_signature"], "verified", "{v}");
    assert_eq!(v["receipts"]["nodes"], 2);
    assert_eq!(
        v["proofs"]["policy"],
        json!({"policy": "challenged", "challenges": 1})
    );
    assert_eq!(v["proofs"]["status"], "pending");
    assert_eq!(v["proofs"]["tokens"][0]["status"], "pending");

    // The proof, once the head node is done.
    let id = answer["id"].as_str().expect("id");
    let bundle = dir.path().join("answer.zkp");
    let start = Instant::now();
    loop {
        let (status, bytes) = curl(&api, &format!("/v1/proofs/{id}"), &[]);
        if status == 200 {
            std::fs::write(&bundle, bytes).expect("bundle");
            break;
        }
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&bytes));
        assert!(start.elapsed() < Duration::from_secs(600), "no proof came");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, transcript) = curl(&api, &format!("/v1/transcripts/{id}"), &[]);
    assert_eq!(status, 200);
    let transcript_path = dir.path().join("answer.json");
    std::fs::write(&transcript_path, &transcript).expect("transcript");

    // `zkinfer verify` takes the downloaded files as they are.
    let (code, cli, stderr) = zkinfer(&[
        "verify",
        "--transcript",
        transcript_path.to_str().expect("utf-8"),
        "--bundle",
        bundle.to_str().expect("utf-8"),
        "--require",
        "challenged:1",
        "--json",
    ]);
    assert_eq!(code, 0, "{cli} {stderr}");
    assert_eq!(cli["valid"], true);
    assert_eq!(cli["proved"], 1);

    // /v1/verify answers exactly what the CLI printed.
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&bundle).expect("bundle"));
    let mut transcript: Value = serde_json::from_slice(&transcript).expect("json");
    let request = json!({"transcript": transcript, "bundle": encoded, "require": "challenged:1"});
    let (status, served) = post_json(&api, "/v1/verify", &request);
    assert_eq!(status, 200, "{served}");
    assert_eq!(served, cli);

    // A tampered token is caught.
    let first = transcript["tokens"][0].as_u64().expect("a token");
    transcript["tokens"][0] = json!((first + 1) % 320);
    let request = json!({"transcript": transcript, "bundle": encoded, "require": "challenged:1"});
    let (status, served) = post_json(&api, "/v1/verify", &request);
    assert_eq!(status, 200, "{served}");
    assert_eq!(served["valid"], false, "{served}");

    // A reader that goes away mid-stream stops its generation and frees the
    // nodes' caches: they hold one request each, so the next answer needs
    // them free.
    let generated_before = generated_tokens(&api);
    let addr = api.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    let body =
        json!({"prompt": "the", "max_tokens": 1000, "temperature": 0, "stream": true}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut first = [0u8; 256];
    let n = stream.read(&mut first).expect("the stream begins");
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(stream);
    let start = Instant::now();
    let body = json!({"prompt": "the", "max_tokens": 2, "temperature": 0});
    loop {
        let (status, answer) = post_json(&api, "/v1/completions", &body);
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the nodes still hold the abandoned request: {status} {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let abandoned = generated_tokens(&api) - generated_before - 2;
    assert!(
        abandoned < 1000,
        "the abandoned generation ran on: {abandoned} tokens"
    );

    // Every answer was audited in the background against the nodes' trails.
    let start = Instant::now();
    loop {
        let (_, metrics) = curl(&api, "/metrics", &[]);
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let count = |verdict: &str| {
            let prefix = format!("zkinfer:audit_verdicts_total{{verdict=\"{verdict}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()))
                .expect("an audit counter")
        };
        assert_eq!(
            count("reject") + count("failed") + count("ambiguous"),
            0,
            "{metrics}"
        );
        if count("accept") >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the audits never came: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn generated_tokens(api: &Api) -> u64 {
    let (_, metrics) = curl(api, "/metrics", &[]);
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| l.strip_prefix("zkinfer:generation_tokens_total "))
        .and_then(|n| n.parse().ok())
        .expect("the token counter")
}

#[test]
fn the_packaged_model_answers_as_generate_does_and_its_chat_turns_are_its_own_tokens() {
    let path = models::packaged_model_path();
    if !path.exists() {
        eprintln!("skipping: packaged model not installed (run scripts/install_model.sh)");
        return;
    }
    let api = start_api(&["--threads", "2"]);
    let (_, models) = curl(&api, "/v1/models", &[]);
    let models: Value = serde_json::from_slice(&models).expect("json");
    assert_eq!(models["data"][0]["id"], "gemma-3-270m-q4_k_m");

    // Greedy through the API is greedy in `zkinfer generate` (tests/generate.rs).
    let prompt = "The quick brown fox jumps over the lazy dog. In the beginning";
    let body = json!({"prompt": prompt, "max_tokens": 5, "temperature": 0});
    let (status, answer) = post_json(&api, "/v1/completions", &body);
    assert_eq!(status, 200, "{answer}");
    let text = answer["choices"][0]["text"].as_str().expect("text");
    assert!(text.starts_with(", the dog was a"), "{text}");

    // Gemma's turns, with `<start_of_turn>` as the model's own token.
    let mut reader = BufReader::new(File::open(&path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let tokenizer = models::tokenizer::Tokenizer::from_gguf(&content).expect("tokenizer");
    let start = tokenizer
        .token_id("<start_of_turn>")
        .expect("Gemma has turns");
    let body = json!({"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0});
    let (status, chat) = post_json(&api, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{chat}");
    let prompt_ids = chat["verification"]["prompt_token_ids"]
        .as_array()
        .expect("ids");
    let turns = prompt_ids.iter().filter(|&id| *id == json!(start)).count();
    assert_eq!(turns, 2, "{prompt_ids:?}");
    assert_eq!(prompt_ids[0], json!(tokenizer.bos()));
}
