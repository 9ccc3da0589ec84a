//! `zkinfer bench api`: what the HTTP layer costs. One run measures greedy
//! generation in this process and the same generation streamed through
//! `zkinfer api` on loopback (tokens/s and time to first token), then a
//! bounded load: `clients` concurrent clients sending short chat requests
//! for `duration`, with latency percentiles, 429s, errors and this
//! process's resident memory before and after.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::engine::{Backend, Engine};
use api::{ApiConfig, AppState};
use client::generation::{generate, Backend as Generation, GenerationOptions, Prompt, Quiet};
use models::generate::Generator;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transcript::Nonce;

use crate::runtime_bench::BenchError;

/// How to run the bench.
#[derive(Debug, Clone)]
pub struct ApiBenchConfig {
    /// Greedy tokens per generation of the speed comparison.
    pub tokens: usize,
    /// Runs of each side; the best is kept.
    pub runs: usize,
    pub clients: usize,
    pub duration: Duration,
    /// `max_tokens` of each load request.
    pub load_tokens: usize,
    /// The server's `--max-concurrent`.
    pub max_concurrent: usize,
}

/// One side of the speed comparison (the best of its runs).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Speed {
    /// Decode tokens per second: from the first token to the last.
    pub tokens_per_second: f64,
    /// From the start (the request) to the first token, in ms.
    pub first_token_ms: f64,
    pub tokens: usize,
}

/// The load test's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub clients: usize,
    pub seconds: f64,
    pub ok: usize,
    pub busy: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    /// After a second, identical load: what one more round leaves behind
    /// is `rss_after_second_mib - rss_after_mib`.
    pub rss_after_second_mib: f64,
    /// Answers the server kept for download at the end (bounded by its
    /// `max_stored`).
    pub stored: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiBenchReport {
    pub in_process: Speed,
    pub api: Speed,
    /// API tokens/s over in-process tokens/s; the target is ≥ 0.95.
    pub ratio: f64,
    pub load: Load,
}

/// The API tokens/s over in-process tokens/s the HTTP layer must keep.
pub const TARGET_RATIO: f64 = 0.95;

/// Runs the bench with `engine` (a model in this process) on `prompt`.
pub fn run(
    engine: Engine,
    prompt: &str,
    config: &ApiBenchConfig,
) -> Result<ApiBenchReport, BenchError> {
    let Backend::Local(model) = &engine.backend else {
        return Err(BenchError::Failed(
            "the API bench runs the model in this process".into(),
        ));
    };
    let model = Arc::clone(model);
    let fail = |e: &dyn fmt::Display| BenchError::Failed(e.to_string());
    let runs = config.runs.max(1);

    let tokenizer = engine.tokenizer.clone();
    let info = engine.model;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    let state = AppState::new(ApiConfig {
        max_concurrent: config.max_concurrent,
        max_tokens: config.tokens.max(config.load_tokens),
        ..ApiConfig::default()
    });
    state.ready(engine);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| fail(&e))?;
    let addr = listener.local_addr().map_err(|e| fail(&e))?.to_string();
    runtime.spawn(api::serve(listener, Arc::clone(&state)));

    // Alternated, so that a drift of the machine's speed touches both sides.
    eprintln!(
        "[bench api: {runs} generations of {} tokens in this process and {runs} streamed through http://{addr}, alternated]",
        config.tokens
    );
    let (mut in_process, mut api): (Option<Speed>, Option<Speed>) = (None, None);
    for _ in 0..runs {
        let options = GenerationOptions {
            max_tokens: config.tokens,
            temperature: None,
            nonce: Nonce::from_seed(0),
            request_id: 0,
            stops: Vec::new(),
            proving: None,
            keep_logits: false,
            observe_logits: false,
        };
        let mut backend = Generation::Local(Generator::new(&model).map_err(|e| fail(&e))?);
        let start = Instant::now();
        let generation = generate(
            &mut backend,
            info,
            None,
            Prompt::encode(&tokenizer, prompt),
            &options,
            &mut Quiet,
        )
        .map_err(|e| fail(&e))?;
        let tokens = generation.transcript.tokens.len();
        let first = start.elapsed() - generation.generation_time;
        in_process = best(
            in_process,
            Speed {
                // One forward per token after the first, which came with
                // the prompt's (the last token is fed too).
                tokens_per_second: tokens as f64 / generation.generation_time.as_secs_f64(),
                first_token_ms: first.as_secs_f64() * 1e3,
                tokens,
            },
        );
        let body = json!({"prompt": prompt, "max_tokens": config.tokens, "temperature": 0, "stream": true});
        let speed = runtime
            .block_on(streamed(&addr, &body))
            .map_err(|e| fail(&e))?;
        api = best(api, speed);
    }
    let (in_process, api) = (in_process.expect("a run"), api.expect("a run"));

    eprintln!(
        "[bench api: {} clients for {:.0} s, max_tokens {}, --max-concurrent {}]",
        config.clients,
        config.duration.as_secs_f64(),
        config.load_tokens,
        config.max_concurrent
    );
    // Waits for abandoned or finishing generations before memory is read.
    let settle = || {
        let start = Instant::now();
        while state
            .metrics()
            .render()
            .lines()
            .all(|l| l != "zkinfer:num_requests_running 0")
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let rss_before = rss_mib();
    let load = runtime.block_on(load(&addr, prompt, config));
    settle();
    let rss_after = rss_mib();
    eprintln!("[bench api: the same load again, for what it leaves behind]");
    runtime.block_on(self::load(&addr, prompt, config));
    settle();
    let mut latencies = load.latencies;
    latencies.sort_by(f64::total_cmp);
    let load = Load {
        clients: config.clients,
        seconds: config.duration.as_secs_f64(),
        ok: latencies.len(),
        busy: load.busy,
        errors: load.errors,
        p50_ms: percentile(&latencies, 0.50),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        rss_before_mib: rss_before,
        rss_after_mib: rss_after,
        rss_after_second_mib: rss_mib(),
        stored: state.store().len(),
    };
    Ok(ApiBenchReport {
        ratio: api.tokens_per_second / in_process.tokens_per_second,
        in_process,
        api,
        load,
    })
}

fn best(so_far: Option<Speed>, run: Speed) -> Option<Speed> {
    match so_far {
        Some(s) if s.tokens_per_second >= run.tokens_per_second => Some(s),
        _ => Some(run),
    }
}

/// Sends one HTTP/1.1 request and reads the answer to its end, with the
/// time each `data:` event arrived.
async fn request(
    addr: &str,
    path: &str,
    body: &Value,
) -> std::io::Result<(u16, Vec<(Instant, String)>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut events = Vec::new();
    let mut scanned = 0;
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let now = Instant::now();
        while let Some(end) = raw[scanned..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&raw[scanned..scanned + end]).into_owned();
            scanned += end + 1;
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                events.push((now, data.to_string()));
            }
        }
    }
    let status = String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, events))
}

/// One streamed completion: decode tokens/s and time to the first token.
async fn streamed(addr: &str, body: &Value) -> Result<Speed, String> {
    let start = Instant::now();
    let (status, events) = request(addr, "/v1/completions", body)
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("the API answered {status}"));
    }
    // One event per token, then the last chunk and [DONE].
    let token_events = events.len().saturating_sub(2);
    if token_events < 2 {
        return Err(format!("{} events: too few tokens to time", events.len()));
    }
    let first = events[0].0;
    let last = events[token_events - 1].0;
    Ok(Speed {
        tokens_per_second: (token_events - 1) as f64 / (last - first).as_secs_f64(),
        first_token_ms: (first - start).as_secs_f64() * 1e3,
        tokens: token_events,
    })
}

struct LoadRun {
    latencies: Vec<f64>,
    busy: usize,
    errors: usize,
}

async fn load(addr: &str, prompt: &str, config: &ApiBenchConfig) -> LoadRun {
    let deadline = Instant::now() + config.duration;
    let body = json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": config.load_tokens,
        "temperature": 0.7,
    });
    let tasks: Vec<_> = (0..config.clients)
        .map(|_| {
            let (addr, body) = (addr.to_string(), body.clone());
            tokio::spawn(async move {
                let mut run = LoadRun {
                    latencies: Vec::new(),
                    busy: 0,
                    errors: 0,
                };
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match request(&addr, "/v1/chat/completions", &body).await {
                        Ok((200, _)) => run.latencies.push(start.elapsed().as_secs_f64() * 1e3),
                        Ok((429, _)) => {
                            run.busy += 1;
                            // A quarter of the Retry-After second: clients
                            // that back off, but keep the slots contended.
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        _ => run.errors += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut all = LoadRun {
        latencies: Vec::new(),
        busy: 0,
        errors: 0,
    };
    for task in tasks {
        match task.await {
            Ok(run) => {
                all.latencies.extend(run.latencies);
                all.busy += run.busy;
                all.errors += run.errors;
            }
            Err(_) => all.errors += 1,
        }
    }
    all
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at]
}

/// This process's resident memory, from /proc (0 where there is none).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

impl fmt::Display for ApiBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, a, l) = (&self.in_process, &self.api, &self.load);
        writeln!(
            f,
            "{:<34} {:>12} {:>16}",
            "", "tokens/s", "first token (ms)"
        )?;
        writeln!(
            f,
            "{:<34} {:>12.1} {:>16.1}",
            "in this process", p.tokens_per_second, p.first_token_ms
        )?;
        writeln!(
            f,
            "{:<34} {:>12.1} {:>16.1}",
            "streamed through zkinfer api", a.tokens_per_second, a.first_token_ms
        )?;
        writeln!(
            f,
            "api / in-process tokens/s: {:.3} (target >= {TARGET_RATIO}: {})",
            self.ratio,
            if self.ratio >= TARGET_RATIO {
                "met"
            } else {
                "missed"
            }
        )?;
        writeln!(
            f,
            "load: {} clients for {:.0} s: {} answered, {} refused with 429, {} errors; latency p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            l.clients, l.seconds, l.ok, l.busy, l.errors, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        )?;
        writeln!(
            f,
            "resident memory: {:.0} MiB before the load, {:.0} MiB after, {:.0} MiB after a second load; {} answers kept for download",
            l.rss_before_mib, l.rss_after_mib, l.rss_after_second_mib, l.stored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
