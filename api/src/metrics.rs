//! `GET /metrics`: Prometheus text exposition, with names in the style of
//! llama.cpp's server and vLLM (`<prefix>:<what>_<unit>`, counters ending in
//! `_total`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const SECONDS_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; SECONDS_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in SECONDS_BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in SECONDS_BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Default)]
struct State {
    /// By endpoint and HTTP status.
    requests: BTreeMap<(&'static str, u16), u64>,
    running: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    time_to_first_token: Histogram,
    generation_seconds: Histogram,
    /// Tokens per second of the last finished generation.
    last_tokens_per_second: f64,
    proofs_made: u64,
    proofs_failed: u64,
    proof_seconds: Histogram,
    /// Verdicts of `POST /v1/verify`.
    verify_verdicts: BTreeMap<&'static str, u64>,
    /// Verdicts of the background audits.
    audit_verdicts: BTreeMap<&'static str, u64>,
    /// The last measured round trip per node.
    hop_rtt: BTreeMap<String, f64>,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// The verdicts of a background audit, as the metrics label them.
pub const AUDIT_VERDICTS: [&str; 5] = ["accept", "ambiguous", "reject", "failed", "skipped"];

/// The metric names' prefix.
pub const PREFIX: &str = "zkinfer";

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.with(|s| *s.requests.entry((endpoint, status)).or_default() += 1);
    }

    pub fn started(&self) {
        self.with(|s| s.running += 1);
    }

    pub fn first_token(&self, after: Duration) {
        self.with(|s| s.time_to_first_token.observe(after.as_secs_f64()));
    }

    /// A generation ended (finished, failed or abandoned).
    pub fn ended(&self, prompt_tokens: usize, tokens: usize, took: Duration) {
        self.with(|s| {
            s.running = s.running.saturating_sub(1);
            s.prompt_tokens += prompt_tokens as u64;
            s.generation_tokens += tokens as u64;
            if tokens > 0 {
                s.generation_seconds.observe(took.as_secs_f64());
                s.last_tokens_per_second = tokens as f64 / took.as_secs_f64().max(1e-9);
            }
        });
    }

    /// Proofs of one answer came back: `made` proven steps, `failed` not,
    /// after `waited`.
    pub fn proofs(&self, made: usize, failed: usize, waited: Duration) {
        self.with(|s| {
            s.proofs_made += made as u64;
            s.proofs_failed += failed as u64;
            if made > 0 {
                s.proof_seconds.observe(waited.as_secs_f64());
            }
        });
    }

    pub fn verdict(&self, valid: bool) {
        self.with(|s| {
            *s.verify_verdicts
                .entry(if valid { "valid" } else { "invalid" })
                .or_default() += 1
        });
    }

    /// A background audit's verdict: accept, ambiguous, reject, failed or
    /// skipped (the queue was full).
    pub fn audit(&self, verdict: &'static str) {
        self.with(|s| *s.audit_verdicts.entry(verdict).or_default() += 1);
    }

    pub fn hop_rtt(&self, node: String, rtt: Duration) {
        self.with(|s| {
            s.hop_rtt.insert(node, rtt.as_secs_f64());
        });
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let p = PREFIX;
        let counter = |name: &str, help: &str, value: u64, out: &mut String| {
            let _ = writeln!(
                out,
                "# HELP {p}:{name} {help}\n# TYPE {p}:{name} counter\n{p}:{name} {value}"
            );
        };
        counter(
            "prompt_tokens_total",
            "Prompt tokens processed.",
            s.prompt_tokens,
            &mut out,
        );
        counter(
            "generation_tokens_total",
            "Tokens generated.",
            s.generation_tokens,
            &mut out,
        );
        counter(
            "proofs_made_total",
            "Token steps proven by the head node.",
            s.proofs_made,
            &mut out,
        );
        counter(
            "proofs_failed_total",
            "Token steps asked for that were not proven.",
            s.proofs_failed,
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP {p}:requests_total HTTP requests by endpoint and status.\n# TYPE {p}:requests_total counter"
        );
        for ((endpoint, status), n) in &s.requests {
            let _ = writeln!(
                out,
                "{p}:requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}:num_requests_running Generations in progress.\n# TYPE {p}:num_requests_running gauge\n{p}:num_requests_running {}",
            s.running
        );
        let _ = writeln!(
            out,
            "# HELP {p}:tokens_per_second Tokens per second of the last finished generation.\n# TYPE {p}:tokens_per_second gauge\n{p}:tokens_per_second {}",
            s.last_tokens_per_second
        );
        s.time_to_first_token.render(
            &mut out,
            &format!("{p}:time_to_first_token_seconds"),
            "From the request to its first generated token.",
        );
        s.generation_seconds.render(
            &mut out,
            &format!("{p}:generation_seconds"),
            "From the first generated token to the last.",
        );
        s.proof_seconds.render(
            &mut out,
            &format!("{p}:proof_seconds"),
            "From the end of a generation until its proofs came back.",
        );
        let _ = writeln!(
            out,
            "# HELP {p}:verify_verdicts_total Answers checked by POST /v1/verify, by verdict.\n# TYPE {p}:verify_verdicts_total counter"
        );
        for verdict in ["valid", "invalid"] {
            let n = s.verify_verdicts.get(verdict).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{p}:verify_verdicts_total{{verdict=\"{verdict}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {p}:audit_verdicts_total Background audits of answers (zkinfer api --audit-sample), by verdict.\n# TYPE {p}:audit_verdicts_total counter"
        );
        for verdict in AUDIT_VERDICTS {
            let n = s.audit_verdicts.get(verdict).copied().unwrap_or(0);
            let _ = writeln!(out, "{p}:audit_verdicts_total{{verdict=\"{verdict}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {p}:hop_rtt_seconds The last measured round trip to each node.\n# TYPE {p}:hop_rtt_seconds gauge"
        );
        for (node, rtt) in &s.hop_rtt {
            let _ = writeln!(out, "{p}:hop_rtt_seconds{{node=\"{node}\"}} {rtt}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_prometheus_text() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 429);
        m.started();
        m.first_token(Duration::from_millis(40));
        m.ended(5, 10, Duration::from_secs(2));
        m.proofs(2, 1, Duration::from_secs(3));
        m.verdict(false);
        m.audit("accept");
        m.audit("skipped");
        m.audit("skipped");
        m.hop_rtt("127.0.0.1:7001".into(), Duration::from_millis(2));
        let text = m.render();
        for line in [
            "zkinfer:requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 2",
            "zkinfer:requests_total{endpoint=\"/v1/chat/completions\",status=\"429\"} 1",
            "zkinfer:num_requests_running 0",
            "zkinfer:prompt_tokens_total 5",
            "zkinfer:generation_tokens_total 10",
            "zkinfer:tokens_per_second 5",
            "zkinfer:time_to_first_token_seconds_bucket{le=\"0.025\"} 0",
            "zkinfer:time_to_first_token_seconds_bucket{le=\"0.05\"} 1",
            "zkinfer:time_to_first_token_seconds_count 1",
            "zkinfer:proofs_made_total 2",
            "zkinfer:proofs_failed_total 1",
            "zkinfer:proof_seconds_sum 3",
            "zkinfer:verify_verdicts_total{verdict=\"invalid\"} 1",
            "zkinfer:verify_verdicts_total{verdict=\"valid\"} 0",
            "zkinfer:audit_verdicts_total{verdict=\"accept\"} 1",
            "zkinfer:audit_verdicts_total{verdict=\"reject\"} 0",
            "zkinfer:audit_verdicts_total{verdict=\"skipped\"} 2",
            "zkinfer:hop_rtt_seconds{node=\"127.0.0.1:7001\"} 0.002",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("a name");
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{line}"
            );
        }
    }
}
