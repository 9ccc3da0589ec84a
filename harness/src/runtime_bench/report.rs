//! What the runtime bench measured, against its targets, as JSON or text.

use std::fmt;
use std::ops::Range;

use serde_json::{json, Value};
use wire::Encoding;

use super::{median, Run, PROMPT};

/// The targets each figure is held to (docs/runtime-bench.md).
const TARGET_VS_LLAMA_CPP: f64 = 1.0;
const TARGET_PREFILL_VS_LLAMA_CPP: f64 = 1.5;
const TARGET_CHAIN_VS_SINGLE: f64 = 0.9;
/// The encoding `zkinfer generate` uses off loopback, held to the targets.
const WAN_ENCODING: Encoding = Encoding::Q6o;
const TARGET_WAN_BYTES: f64 = 0.3;
const TARGET_WAN_DRIFT: f64 = 0.01;
const TARGET_FAILOVER: f64 = 3.0;
const TARGET_HEAD_BYTES: f64 = 1024.0;

/// A throughput row.
pub struct Speed {
    pub name: String,
    pub run: Option<Run>,
    /// Why there is no run.
    pub note: String,
}

impl Speed {
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.run.as_ref().map(Run::tokens_per_s)
    }

    fn prefill_s(&self) -> Option<f64> {
        self.run.as_ref().map(|r| r.prefill_s)
    }
}

/// The throughput rows, by what they measure.
pub struct Speeds {
    pub single_1_thread: Speed,
    pub single_2_threads: Speed,
    pub chain_2_shards: Speed,
    pub chain_3_shards: Speed,
    pub llama_cpp_2_threads: Speed,
    pub llama_cpp_1_thread: Speed,
}

impl Speeds {
    /// The rows in the order they are reported.
    pub fn rows(&self) -> [&Speed; 6] {
        [
            &self.single_1_thread,
            &self.single_2_threads,
            &self.chain_2_shards,
            &self.chain_3_shards,
            &self.llama_cpp_2_threads,
            &self.llama_cpp_1_thread,
        ]
    }
}

/// One encoding on the 2-shard chain, teacher-forced with `reference`'s tokens.
pub struct EncodingRow {
    pub encoding: Encoding,
    /// Per hop: layers, bytes sent to and received from the node per token.
    pub hops: Vec<(Range<usize>, f64, f64)>,
    pub mean_drift: f64,
    pub max_drift: f64,
    pub greedy_matches: usize,
    pub steps: usize,
}

impl EncodingRow {
    /// Hidden-state bytes per token crossing the cut(s): received from every
    /// hop but the last, sent to every hop but the first.
    pub fn hidden_bytes(&self) -> f64 {
        let n = self.hops.len();
        let received: f64 = self.hops[..n - 1].iter().map(|h| h.2).sum();
        let sent: f64 = self.hops[1..].iter().map(|h| h.1).sum();
        received + sent
    }

    /// Hidden-state bytes per token the client sends in its chosen encoding.
    pub fn hidden_bytes_sent(&self) -> f64 {
        self.hops[1..].iter().map(|h| h.1).sum()
    }
}

/// What a head node that picks sends the client.
pub struct HeadPicks {
    pub bytes_per_token: f64,
    pub tokens: Vec<u32>,
}

/// The failover measurement.
pub struct Failover {
    pub killed: String,
    pub at: Option<usize>,
    pub failover_token_s: f64,
    pub median_token_s: f64,
    pub no_fault_median_token_s: f64,
    pub tokens_match: bool,
    pub replayed_positions: usize,
}

/// Everything measured.
pub struct Report {
    pub model: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub speeds: Speeds,
    pub encodings: Vec<EncodingRow>,
    pub head_picks: HeadPicks,
    pub failover: Failover,
    /// The single-process 1-thread run: the reference of tokens and drift.
    pub reference: Run,
    pub elapsed_s: f64,
    /// The 1-minute load average at the start and at the end (other work on
    /// the machine skews every figure, two threads most).
    pub load: [Option<f64>; 2],
}

/// One target: what was measured against what was asked.
struct Target {
    name: &'static str,
    measured: Option<f64>,
    bound: f64,
    at_most: bool,
    detail: String,
}

impl Target {
    fn met(&self) -> Option<bool> {
        self.measured.map(|m| {
            if self.at_most {
                m <= self.bound
            } else {
                m >= self.bound
            }
        })
    }

    fn verdict(&self) -> &'static str {
        match self.met() {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        }
    }
}

impl Report {
    fn targets(&self) -> Vec<Target> {
        let s = &self.speeds;
        let (single1, single2, chain2, llama) = (
            s.single_1_thread.tokens_per_s(),
            s.single_2_threads.tokens_per_s(),
            s.chain_2_shards.tokens_per_s(),
            s.llama_cpp_2_threads.tokens_per_s(),
        );
        let best_single = match (single1, single2) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let f32_row = self.encodings.iter().find(|e| e.encoding == Encoding::F32);
        let wan_row = self.encodings.iter().find(|e| e.encoding == WAN_ENCODING);
        let wan_sent = match (wan_row, f32_row) {
            (Some(q), Some(f)) => Some(q.hidden_bytes_sent() / f.hidden_bytes_sent()),
            _ => None,
        };
        let wan_both = match (wan_row, f32_row) {
            (Some(q), Some(f)) => Some(q.hidden_bytes() / f.hidden_bytes()),
            _ => None,
        };
        let fo = &self.failover;
        vec![
            Target {
                name: "single process (2 threads) / llama.cpp (2 threads), tokens/s",
                measured: ratio(single2, llama),
                bound: TARGET_VS_LLAMA_CPP,
                at_most: false,
                detail: format!(
                    "1 thread each: {}",
                    fmt_opt(ratio(single1, s.llama_cpp_1_thread.tokens_per_s()), 2)
                ),
            },
            Target {
                name: "single process (2 threads) / llama.cpp (2 threads), prefill seconds",
                measured: ratio(s.single_2_threads.prefill_s(), s.llama_cpp_2_threads.prefill_s()),
                bound: TARGET_PREFILL_VS_LLAMA_CPP,
                at_most: true,
                detail: format!(
                    "1 thread each: {}",
                    fmt_opt(
                        ratio(s.single_1_thread.prefill_s(), s.llama_cpp_1_thread.prefill_s()),
                        2
                    )
                ),
            },
            Target {
                name: "2-shard chain / best single process, tokens/s",
                measured: ratio(chain2, best_single),
                bound: TARGET_CHAIN_VS_SINGLE,
                at_most: false,
                detail: format!(
                    "vs 1 thread {}, vs 2 threads {}",
                    fmt_opt(ratio(chain2, single1), 2),
                    fmt_opt(ratio(chain2, single2), 2)
                ),
            },
            Target {
                name: "q6o / f32 hidden-state bytes sent to the second shard",
                measured: wan_sent,
                bound: TARGET_WAN_BYTES,
                at_most: true,
                detail: "the client's chosen encoding, framing included".into(),
            },
            Target {
                name: "q6o / f32 hidden-state bytes across the cut, both legs",
                measured: wan_both,
                bound: TARGET_WAN_BYTES,
                at_most: true,
                detail: "first shard's answer and second shard's input, framing included".into(),
            },
            Target {
                name: "q6o mean |Δ log-prob| vs single process f32, nats",
                measured: wan_row.map(|q| q.mean_drift),
                bound: TARGET_WAN_DRIFT,
                at_most: true,
                detail: wan_row
                    .map(|q| format!("greedy tokens equal {}/{}", q.greedy_matches, q.steps))
                    .unwrap_or_default(),
            },
            Target {
                name: "bytes per token from the head node to the client",
                measured: Some(self.head_picks.bytes_per_token),
                bound: TARGET_HEAD_BYTES,
                at_most: true,
                detail: format!(
                    "its pick and the logits' digest; the logits themselves: {}; greedy tokens = single process: {}",
                    f32_row
                        .and_then(|f| f.hops.last())
                        .map_or("-".into(), |h| format!("{:.0} bytes", h.2)),
                    agree(&self.head_picks.tokens, &self.reference.tokens)
                ),
            },
            Target {
                name: "failover token / median token, latency",
                measured: (fo.median_token_s > 0.0 && fo.at.is_some())
                    .then(|| fo.failover_token_s / fo.median_token_s),
                bound: TARGET_FAILOVER,
                at_most: true,
                detail: format!(
                    "a warm standby mirrored the span; {} positions replayed",
                    fo.replayed_positions
                ),
            },
        ]
    }

    pub fn json(&self) -> Value {
        let reference = &self.reference.tokens;
        let speeds: Vec<Value> = self
            .speeds
            .rows()
            .into_iter()
            .map(|s| match &s.run {
                Some(r) => json!({
                    "name": s.name,
                    "measured": true,
                    "prefill_s": r.prefill_s,
                    "tokens_per_s": r.tokens_per_s(),
                    "median_token_ms": median(&r.token_s) * 1e3,
                    "tokens_equal_single_process": agree(&r.tokens, reference),
                }),
                None => json!({"name": s.name, "measured": false, "note": s.note}),
            })
            .collect();
        let encodings: Vec<Value> = self
            .encodings
            .iter()
            .map(|e| {
                json!({
                    "encoding": Encoding::name(e.encoding),
                    "hops": e.hops.iter().map(|(l, s, r)| json!({
                        "layers": [l.start, l.end],
                        "sent_bytes_per_token": s,
                        "received_bytes_per_token": r,
                    })).collect::<Vec<_>>(),
                    "hidden_bytes_per_token": e.hidden_bytes(),
                    "hidden_bytes_sent_per_token": e.hidden_bytes_sent(),
                    "mean_abs_logprob_drift": e.mean_drift,
                    "max_abs_logprob_drift": e.max_drift,
                    "greedy_matches": e.greedy_matches,
                    "steps": e.steps,
                })
            })
            .collect();
        let fo = &self.failover;
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "measured": t.measured,
                    "target": t.bound,
                    "at_most": t.at_most,
                    "verdict": t.verdict(),
                    "detail": t.detail,
                })
            })
            .collect();
        json!({
            "model": self.model,
            "prompt": PROMPT,
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.tokens,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "throughput": speeds,
            "encodings": encodings,
            "head_picks": {
                "bytes_per_token": self.head_picks.bytes_per_token,
                "tokens_equal_single_process": agree(&self.head_picks.tokens, reference),
            },
            "failover": {
                "killed": fo.killed,
                "failover_token": fo.at,
                "failover_token_ms": fo.failover_token_s * 1e3,
                "median_token_ms": fo.median_token_s * 1e3,
                "no_fault_median_token_ms": fo.no_fault_median_token_s * 1e3,
                "ratio": fo.failover_token_s / fo.median_token_s,
                "tokens_equal_no_fault_run": fo.tokens_match,
                "replayed_positions": fo.replayed_positions,
            },
            "targets": targets,
            "elapsed_s": self.elapsed_s,
            "load_average_1min": self.load,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = &self.reference.tokens;
        writeln!(f,
            "zkinfer bench runtime: {}\n{} prompt tokens, {} greedy tokens, {} cores, load average {} -> {}, {:.0} s in all\n",
            self.model,
            self.prompt_tokens,
            self.tokens,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            fmt_opt(self.load[0], 2),
            fmt_opt(self.load[1], 2),
            self.elapsed_s
        )?;
        writeln!(
            f,
            "{:<56} {:>9} {:>9} {:>10}  tokens = single process",
            "generation", "prefill s", "tokens/s", "ms/token"
        )?;
        for s in self.speeds.rows() {
            match &s.run {
                Some(r) => writeln!(
                    f,
                    "{:<56} {:>9.3} {:>9.2} {:>10.1}  {}",
                    s.name,
                    r.prefill_s,
                    r.tokens_per_s(),
                    median(&r.token_s) * 1e3,
                    agree(&r.tokens, reference)
                )?,
                None => writeln!(f, "{:<56} {}", s.name, s.note)?,
            }
        }
        writeln!(
            f,
            "\n{:<8} {:>28} {:>28} {:>11} {:>11} {:>8}",
            "encoding",
            "bytes/token first hop",
            "bytes/token second hop",
            "mean |Δlp|",
            "max |Δlp|",
            "greedy"
        )?;
        if let Some(e) = self.encodings.first() {
            let head = |i: usize| {
                e.hops
                    .get(i)
                    .map(|(l, _, _)| format!("{}..{} sent / received", l.start, l.end))
                    .unwrap_or_default()
            };
            writeln!(f, "{:<8} {:>28} {:>28}", "", head(0), head(1))?;
        }
        for e in &self.encodings {
            let hop = |i: usize| {
                e.hops
                    .get(i)
                    .map(|(_, s, r)| format!("{s:.0} / {r:.0}"))
                    .unwrap_or_default()
            };
            writeln!(
                f,
                "{:<8} {:>28} {:>28} {:>11.5} {:>11.5} {:>8}",
                Encoding::name(e.encoding),
                hop(0),
                hop(1),
                e.mean_drift,
                e.max_drift,
                format!("{}/{}", e.greedy_matches, e.steps)
            )?;
        }
        let fo = &self.failover;
        writeln!(f,
            "\nfailover: killed {} before token {}; that token took {:.0} ms, the median token {:.1} ms \
             ({:.1} ms without a fault): {:.1}x; tokens {} the no-fault run",
            fo.killed,
            fo.at.map_or("-".into(), |i| i.to_string()),
            fo.failover_token_s * 1e3,
            fo.median_token_s * 1e3,
            fo.no_fault_median_token_s * 1e3,
            fo.failover_token_s / fo.median_token_s,
            if fo.tokens_match { "equal" } else { "DIFFER from" }
        )?;
        writeln!(
            f,
            "\n{:<62} {:>9} {:>9}  verdict",
            "target", "measured", "bound"
        )?;
        for t in self.targets() {
            writeln!(
                f,
                "{:<62} {:>9} {:>9}  {}{}",
                t.name,
                fmt_opt(t.measured, 3),
                format!("{}{}", if t.at_most { "<= " } else { ">= " }, t.bound),
                t.verdict(),
                if t.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.detail)
                }
            )?;
        }
        Ok(())
    }
}

/// The 1-minute load average (Linux), if readable.
pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// "yes", or where the tokens first part.
fn agree(tokens: &[u32], reference: &[u32]) -> String {
    match tokens.iter().zip(reference).position(|(a, b)| a != b) {
        None if tokens.len() == reference.len() => "yes".into(),
        None => format!(
            "{} of {}",
            tokens.len().min(reference.len()),
            reference.len()
        ),
        Some(i) => format!("first {i} of {}", reference.len()),
    }
}
