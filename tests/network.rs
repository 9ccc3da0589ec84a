//! `zkinfer bootstrap`, `serve --network` and `generate --network` on
//! separate network stacks: each host in its own Linux network namespace on
//! a private LAN the test creates and removes (harness::netns). Skipped, with
//! the reason, where namespaces cannot be made (not root).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::netns::{Host, Lan};

const BIN: &str = env!("CARGO_BIN_EXE_zkinfer");
const PORT: u16 = 4000;

fn lan_or_skip() -> Option<Lan> {
    match Lan::new() {
        Ok(lan) => Some(lan),
        Err(e) => {
            eprintln!("skipping: network namespaces are not available here: {e}");
            None
        }
    }
}

/// A child in a namespace, killed and reaped on drop, its stdout lines on a
/// channel and its stderr kept in a file.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Running {
    fn start(lan: &Lan, host: &Host, args: &[&str], dir: &Path, name: &str) -> Running {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = lan
            .command(host, BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start zkinfer in a namespace");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for a stdout line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line {prefix:?} within {timeout:?}; stderr: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Setup {
    dir: PathBuf,
    model: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir =
            std::env::temp_dir().join(format!("zkinfer-network-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("tiny.gguf");
        let config = models::testing::tiny_gemma3_config();
        models::testing::write_random_gemma3_with_tokenizer(&model, &config, 5).unwrap();
        Setup { dir, model }
    }

    fn key(&self, name: &str) -> String {
        let path = self.dir.join(format!("{name}.key"));
        let out = Command::new(BIN)
            .args(["keygen", "--out", path.to_str().unwrap()])
            .output()
            .expect("keygen");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path.to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// The tokens of an in-process generation: what every chain must give.
    fn reference_tokens(&self, max_tokens: &str) -> Vec<u64> {
        let transcript = self.path("reference.json");
        let out = Command::new(BIN)
            .args(["generate", "--model", self.model.to_str().unwrap()])
            .args([
                "--prompt",
                "hello world",
                "--max-tokens",
                max_tokens,
                "--seed",
                "7",
            ])
            .args(["--transcript", &transcript])
            .output()
            .expect("generate in process");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokens(&transcript)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tokens(transcript: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(transcript).expect("transcript");
    let json: serde_json::Value = serde_json::from_str(&text).expect("transcript JSON");
    json["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

fn bootstrap_addr(host: &Host) -> String {
    format!("/ip4/{}/tcp/{PORT}", host.ip)
}

fn start_bootstrap(lan: &Lan, host: &Host, setup: &Setup, listen: &str) -> Running {
    let mut b = Running::start(
        lan,
        host,
        &["bootstrap", "--listen", listen, "--relay"],
        &setup.dir,
        "bootstrap",
    );
    b.wait_for("bootstrap host", Duration::from_secs(30));
    b
}

fn start_node(
    lan: &Lan,
    host: &Host,
    setup: &Setup,
    layers: &str,
    bootstrap: &str,
    extra: &[&str],
) -> Running {
    let name = host.ns.clone();
    let key = setup.key(&name);
    let listen = format!("{}:{PORT}", host.ip);
    let mut args = vec![
        "serve",
        "--model",
        setup.model.to_str().unwrap(),
        "--layers",
        layers,
        "--listen",
        &listen,
        "--key",
        &key,
        "--threads",
        "1",
        "--network",
        "--bootstrap",
        bootstrap,
    ];
    args.extend_from_slice(extra);
    let mut node = Running::start(lan, host, &args, &setup.dir, &name);
    node.wait_for("peer ", Duration::from_secs(60));
    node
}

/// `zkinfer generate --network` in `host`'s namespace.
fn generate(
    lan: &Lan,
    host: &Host,
    setup: &Setup,
    bootstrap: &str,
    max_tokens: &str,
    name: &str,
) -> Command {
    let mut cmd = lan.command(host, BIN);
    cmd.args(["generate", "--model", setup.model.to_str().unwrap()])
        .args(["--network", "--bootstrap", bootstrap])
        .args([
            "--prompt",
            "hello world",
            "--max-tokens",
            max_tokens,
            "--seed",
            "7",
        ])
        .args([
            "--activations",
            "f32",
            "--transcript",
            &setup.path(&format!("{name}.json")),
        ]);
    cmd
}

#[test]
fn five_nodes_in_namespaces_are_found_and_serve_a_client_with_no_list() {
    let Some(mut lan) = lan_or_skip() else { return };
    let setup = Setup::new("five");
    let b = lan.add_host().unwrap();
    let hosts: Vec<Host> = (0..5).map(|_| lan.add_host().unwrap()).collect();
    let client = lan.add_host().unwrap();
    let _bootstrap = start_bootstrap(&lan, &b, &setup, &format!("{}:{PORT}", b.ip));
    let boot = bootstrap_addr(&b);
    let layers = ["0..3", "0..3", "0..3", "3..7", "3..7"];
    let _nodes: Vec<Running> = hosts
        .iter()
        .zip(layers)
        .map(|(h, l)| start_node(&lan, h, &setup, l, &boot, &[]))
        .collect();
    let reference = setup.reference_tokens("16");
    let start = Instant::now();
    let out = generate(&lan, &client, &setup, &boot, "16", "client")
        .output()
        .expect("generate --network");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("5 nodes of model"), "{stderr}");
    assert_eq!(tokens(&setup.path("client.json")), reference);
    // The transcript names the nodes by peer id, not by address.
    let transcript = std::fs::read_to_string(setup.path("client.json")).unwrap();
    assert!(transcript.contains("\"/p2p/12D3KooW"), "{transcript}");
    // The nodes' signed hops are audited through the network too.
    let audit = lan
        .command(&client, "timeout")
        .args([
            "120",
            BIN,
            "audit",
            "--transcript",
            &setup.path("client.json"),
        ])
        .args(["--model", setup.model.to_str().unwrap(), "--json"])
        .args(["--network", "--bootstrap", &boot])
        .output()
        .expect("audit --network");
    let report = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&report).expect("audit JSON");
    assert_eq!(report["verdict"], "accept", "{report}");
    eprintln!(
        "5 nodes: discovery and 16 tokens in {:.2} s; {stderr}",
        took.as_secs_f64()
    );
}

#[test]
fn a_node_killed_mid_generation_is_replaced_by_a_spare_found_in_the_dht() {
    let Some(mut lan) = lan_or_skip() else { return };
    let setup = Setup::new("kill");
    let b = lan.add_host().unwrap();
    let first = lan.add_host().unwrap();
    let fast = lan.add_host().unwrap();
    let spare = lan.add_host().unwrap();
    let client = lan.add_host().unwrap();
    let _bootstrap = start_bootstrap(&lan, &b, &setup, &format!("{}:{PORT}", b.ip));
    let boot = bootstrap_addr(&b);
    let _first = start_node(&lan, &first, &setup, "0..3", &boot, &[]);
    let mut used = start_node(&lan, &fast, &setup, "3..7", &boot, &[]);
    let _spare = start_node(&lan, &spare, &setup, "3..7", &boot, &[]);
    // The spare's link is slow, so the router picks the other node first.
    lan.rate_limit(&spare, 2000).unwrap();
    let max_tokens = "400";
    let reference = setup.reference_tokens(max_tokens);
    let mut child = generate(&lan, &client, &setup, &boot, max_tokens, "client")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("generate --network");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = 0;
    let mut buf = [0u8; 64];
    while seen < 40 {
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "the generation ended before the kill");
        seen += n;
    }
    used.kill();
    std::io::copy(&mut stdout, &mut std::io::sink()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("[0 failovers"),
        "nothing failed over: {stderr}"
    );
    assert_eq!(tokens(&setup.path("client.json")), reference, "{stderr}");
}

#[test]
fn a_node_that_only_reaches_the_relay_is_served_through_it() {
    let Some(mut lan) = lan_or_skip() else { return };
    let setup = Setup::new("relay");
    let b = lan.add_host().unwrap();
    let open = lan.add_host().unwrap();
    let client = lan.add_host().unwrap();
    let (hidden, _gateway) = lan.add_behind(&b).unwrap();
    let _bootstrap = start_bootstrap(&lan, &b, &setup, &format!("0.0.0.0:{PORT}"));
    let boot = bootstrap_addr(&b);
    let _open = start_node(&lan, &open, &setup, "0..3", &boot, &[]);
    let _hidden = start_node(&lan, &hidden, &setup, "3..7", &boot, &["--via-relay"]);
    // The client cannot reach the hidden node directly.
    let ping = lan
        .command(&client, "ip")
        .args(["route", "get", &hidden.ip.to_string()])
        .output()
        .unwrap();
    assert!(
        !ping.status.success(),
        "the hidden node is routable from the client"
    );
    let reference = setup.reference_tokens("12");
    let out = generate(&lan, &client, &setup, &boot, "12", "client")
        .output()
        .expect("generate --network");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(tokens(&setup.path("client.json")), reference, "{stderr}");
}

/// `zkinfer api` in `host`'s namespace (or this one's), ready to answer.
fn start_api(
    lan: &Lan,
    host: Option<&Host>,
    setup: &Setup,
    args: &[&str],
    name: &str,
) -> (Running, String) {
    let mut all = vec![
        "api",
        "--listen",
        "127.0.0.1:0",
        "--model",
        setup.model.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let stderr = setup.dir.join(format!("{name}.stderr"));
    let mut cmd = match host {
        Some(host) => lan.command(host, BIN),
        None => Command::new(BIN),
    };
    let mut child = cmd
        .args(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zkinfer api");
    let (tx, lines) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let log = stderr.clone();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).unwrap();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(file, "{line}");
            let _ = tx.send(line);
        }
    });
    let mut api = Running {
        child,
        lines,
        stderr,
    };
    let line = api.wait_for("[api on http://", Duration::from_secs(30));
    let base = line
        .trim_start_matches("[api on ")
        .split(": ")
        .next()
        .unwrap()
        .to_string();
    api.wait_for("[api ready]", Duration::from_secs(60));
    (api, base)
}

/// The token ids of a greedy completion from the api at `base`, asked with
/// curl in `host`'s namespace (or this one's).
fn completion_tokens(lan: &Lan, host: Option<&Host>, base: &str) -> Vec<u64> {
    let body = r#"{"prompt": "hello world", "max_tokens": 8, "temperature": 0, "seed": 7}"#;
    let mut cmd = match host {
        Some(host) => lan.command(host, "curl"),
        None => Command::new("curl"),
    };
    let out = cmd
        .args([
            "-s",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("{base}/v1/completions"))
        .output()
        .expect("curl");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    answer["verification"]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn the_http_api_answers_from_nodes_it_found_in_the_dht() {
    let Some(mut lan) = lan_or_skip() else { return };
    let setup = Setup::new("api");
    let b = lan.add_host().unwrap();
    let first = lan.add_host().unwrap();
    let second = lan.add_host().unwrap();
    let client = lan.add_host().unwrap();
    let _bootstrap = start_bootstrap(&lan, &b, &setup, &format!("{}:{PORT}", b.ip));
    let boot = bootstrap_addr(&b);
    let _first = start_node(&lan, &first, &setup, "0..3", &boot, &[]);
    let _second = start_node(&lan, &second, &setup, "3..7", &boot, &[]);
    let (_local, local_base) = start_api(&lan, None, &setup, &[], "api-local");
    let expected = completion_tokens(&lan, None, &local_base);
    let (_remote, base) = start_api(
        &lan,
        Some(&client),
        &setup,
        &["--network", "--bootstrap", &boot, "--activations", "f32"],
        "api-network",
    );
    assert!(!expected.is_empty());
    assert_eq!(completion_tokens(&lan, Some(&client), &base), expected);
}
