//! Every 2-way and every 3-way layer split of a model gives the unsplit model's
//! greedy tokens and its logits to within float rounding:
//! all 17 + 136 splits of the packaged model's 18 layers (skipped when it is not
//! installed), and all 6 + 15 splits of the tiny random-weight model (always).
//!
//! Each split really runs as separate shard models: a [`Gemma3`] loaded for each
//! layer range `[a, b)` (its own weights, embedding only on the first, head only
//! on the last), with its own KV cache, fed the f32 hidden states the previous
//! shard returned. What keeps 153 splits cheap is that no shard model is loaded
//! or run twice on the same input:
//! - each range `[a, b)` is loaded once and run on every *distinct* input that
//!   reaches boundary `a` along some split (a hidden-state sequence is identified
//!   by the blake3 of its bytes); splits whose earlier shards produced identical
//!   bytes share that run, splits whose bytes differ get runs of their own;
//! - the token sequence is fixed: the prompt, then the unsplit model's greedy
//!   tokens fed back one at a time (teacher forcing). A split has the same greedy
//!   continuation as the unsplit model iff at every step its argmax is the
//!   unsplit model's token, which is what is checked, step by step.
//!
//! On the packaged model the splits are also held to the llama.cpp fixture
//! tolerances of `llama_cpp.rs` on the steps where both continuations agree.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use models::argmax;
use models::gemma3::Gemma3;
use models::testing::{tiny_gemma3_config, write_random_gemma3};
use models::Cache;

/// Splits must agree with the unsplit model to within this much per logit
/// (float rounding; in practice the shards hand over identical bytes).
const ROUNDING: f32 = 1e-3;

/// llama.cpp fixture bounds (see `llama_cpp.rs`).
const LSE_TOLERANCE: f64 = 0.75;
const LOGPROB_TOLERANCE: f64 = 0.4;
const NEAR_TIE: f64 = 0.3;

/// A GGUF file opened once; shards are loaded from it by range.
struct GgufFile {
    content: gguf_file::Content,
    reader: BufReader<File>,
    layers: usize,
}

impl GgufFile {
    fn open(path: &Path) -> GgufFile {
        let mut reader = BufReader::new(File::open(path).expect("open model"));
        let content = gguf_file::Content::read(&mut reader).expect("gguf");
        let layers = models::gemma3::Config::from_gguf(&content)
            .expect("config")
            .layers;
        GgufFile {
            content,
            reader,
            layers,
        }
    }

    fn load(&mut self, layers: Range<usize>) -> Gemma3 {
        Gemma3::from_gguf(&self.content, &mut self.reader, &Device::Cpu, layers).expect("load")
    }
}

/// What a shard is fed, chunk by chunk (the prompt, then one token at a time).
enum Input<'a> {
    Tokens(&'a [Vec<u32>]),
    Hidden(&'a [Tensor]),
}

/// Runs `shard` on every chunk in order with a fresh cache: its outputs per chunk.
fn run(shard: &Gemma3, input: Input<'_>) -> Vec<Tensor> {
    let mut cache = Cache::new();
    let mut position = 0;
    let chunks: Vec<Tensor> = match input {
        Input::Tokens(chunks) => chunks
            .iter()
            .map(|c| shard.embed(c).expect("embed"))
            .collect(),
        Input::Hidden(chunks) => chunks.to_vec(),
    };
    chunks
        .iter()
        .map(|x| {
            let out = shard.forward(x, position, &mut cache).expect("forward");
            position += x.dim(1).expect("seq");
            out
        })
        .collect()
}

/// The last position's logits of every chunk.
fn last_rows(outputs: &[Tensor]) -> Vec<Vec<f32>> {
    outputs
        .iter()
        .map(|t| {
            let seq = t.dim(1).expect("seq");
            t.narrow(1, seq - 1, 1)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("logits row")
        })
        .collect()
}

fn digest(chunks: &[Tensor]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for t in chunks {
        let values = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("hidden");
        for v in values {
            h.update(&v.to_le_bytes());
        }
    }
    h.finalize()
}

/// The unsplit model's greedy run: the chunks fed (prompt, then each greedy
/// token but the last) and the logits row after each.
fn unsplit(file: &mut GgufFile, prompt: &[u32], steps: usize) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let whole = file.load(0..file.layers);
    let mut cache = Cache::new();
    let mut chunks = vec![prompt.to_vec()];
    let mut rows = Vec::new();
    loop {
        let chunk = chunks.last().expect("chunk");
        let x = whole.embed(chunk).expect("embed");
        let out = whole.forward(&x, cache.len(), &mut cache).expect("forward");
        let row = last_rows(&[out]).remove(0);
        let next = argmax(&row);
        rows.push(row);
        if rows.len() == steps {
            return (chunks, rows);
        }
        chunks.push(vec![next]);
    }
}

/// Hidden states that reach a boundary, with the cut lists that produce them.
struct State {
    chunks: Arc<Vec<Tensor>>,
    digest: blake3::Hash,
    /// The cut points strictly inside `0..boundary`: `[]` when the state comes
    /// from the first shard `[0, boundary)`, `[c]` from `[0, c)` then `[c, boundary)`.
    paths: Vec<Vec<usize>>,
}

/// What the splits did.
struct Report {
    /// Logits rows per split, keyed by its cut points (`[c]` or `[c1, c2]`).
    rows: HashMap<Vec<usize>, Arc<Vec<Vec<f32>>>>,
    /// Shard runs done (each range `[a, b)` once per distinct input).
    shard_runs: usize,
    /// Distinct shard models loaded.
    shards_loaded: usize,
}

/// Runs every 2-way and 3-way split of the file's layers on `chunks`.
fn all_splits(file: &mut GgufFile, chunks: &[Vec<u32>]) -> Report {
    let n = file.layers;
    // The distinct states at each boundary.
    let mut at: HashMap<usize, Vec<State>> = HashMap::new();
    let mut report = Report {
        rows: HashMap::new(),
        shard_runs: 0,
        shards_loaded: 0,
    };
    fn arrive(states: &mut Vec<State>, chunks: Vec<Tensor>, path: Vec<usize>) {
        let d = digest(&chunks);
        match states.iter_mut().find(|s| s.digest == d) {
            Some(s) => s.paths.push(path),
            None => states.push(State {
                chunks: Arc::new(chunks),
                digest: d,
                paths: vec![path],
            }),
        }
    }
    // First shards [0, c): the tokens.
    for c in 1..n {
        let shard = file.load(0..c);
        report.shards_loaded += 1;
        report.shard_runs += 1;
        arrive(
            at.entry(c).or_default(),
            run(&shard, Input::Tokens(chunks)),
            Vec::new(),
        );
    }
    // Then every range [a, b) on the distinct inputs at a that some split uses:
    // into the last shard (b = n) after one or two shards, or into a middle
    // shard (b < n) after exactly one.
    for a in 1..n {
        let states = at.remove(&a).unwrap_or_default();
        for b in a + 1..=n {
            let wanted: Vec<&State> = states
                .iter()
                .filter(|s| b == n || s.paths.iter().any(|p| p.is_empty()))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let shard = file.load(a..b);
            report.shards_loaded += 1;
            for state in wanted {
                report.shard_runs += 1;
                let out = run(&shard, Input::Hidden(&state.chunks));
                if b == n {
                    let rows = Arc::new(last_rows(&out));
                    for path in &state.paths {
                        let mut cuts = path.clone();
                        cuts.push(a);
                        report.rows.insert(cuts, rows.clone());
                    }
                } else {
                    // Only single-shard paths go on to a last shard.
                    arrive(at.entry(b).or_default(), out, vec![a]);
                }
            }
        }
    }
    report
}

/// Checks every 2- and 3-way split of `layers` layers against the unsplit
/// model's logits rows (and so its greedy tokens); returns the largest logit
/// difference seen.
fn check(report: &Report, layers: usize, reference: &[Vec<f32>]) -> Result<f32, String> {
    let expected: Vec<Vec<usize>> = (1..layers)
        .map(|c| vec![c])
        .chain((1..layers).flat_map(|c1| (c1 + 1..layers).map(move |c2| vec![c1, c2])))
        .collect();
    let mut worst = 0f32;
    for cuts in &expected {
        let rows = report
            .rows
            .get(cuts)
            .ok_or_else(|| format!("split at {cuts:?} was not run"))?;
        if rows.len() != reference.len() {
            return Err(format!("split at {cuts:?}: {} steps", rows.len()));
        }
        for (step, (row, want)) in rows.iter().zip(reference).enumerate() {
            if argmax(row) != argmax(want) {
                return Err(format!(
                    "split at {cuts:?} step {step}: greedy {} vs unsplit {}",
                    argmax(row),
                    argmax(want)
                ));
            }
            let diff = row
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(diff);
            if diff.is_nan() || diff > ROUNDING {
                return Err(format!(
                    "split at {cuts:?} step {step}: logits differ by {diff}"
                ));
            }
        }
    }
    if report.rows.len() != expected.len() {
        return Err(format!(
            "{} splits run, expected {}",
            report.rows.len(),
            expected.len()
        ));
    }
    Ok(worst)
}

#[test]
fn every_split_of_the_tiny_model_matches_the_unsplit_model() {
    let dir = std::env::temp_dir().join(format!("zkinfer-splits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&path, &config, 21).unwrap();
    let mut file = GgufFile::open(&path);
    // 6 prompt tokens + 7 more: past the sliding window of 4.
    let (chunks, reference) = unsplit(&mut file, &[2, 40, 7, 300, 12, 99], 8);
    let report = all_splits(&mut file, &chunks);
    let worst = check(&report, config.layers, &reference).unwrap();
    eprintln!(
        "tiny model: {} splits, {} shards loaded, {} shard runs, max |Δlogit| {worst:e}",
        report.rows.len(),
        report.shards_loaded,
        report.shard_runs
    );
    assert_eq!(report.rows.len(), 6 + 15);

    // The check is not vacuous: a split that loses a layer fails it.
    let broken = [file.load(0..3), file.load(4..7)];
    let hidden = run(&broken[0], Input::Tokens(&chunks));
    let rows = last_rows(&run(&broken[1], Input::Hidden(&hidden)));
    let mut bad = Report {
        rows: report.rows.clone(),
        shard_runs: 0,
        shards_loaded: 0,
    };
    bad.rows.insert(vec![3], Arc::new(rows));
    let err = check(&bad, config.layers, &reference).unwrap_err();
    assert!(err.contains("split at [3]"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_split_of_the_packaged_model_matches_the_unsplit_model_and_llama_cpp() {
    let Some(path) = models::installed_packaged_model() else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llama_cpp.json"))
            .expect("fixtures/llama_cpp.json"),
    )
    .expect("fixture JSON");
    let prompt = &fixture["prompts"][0];
    let ids: Vec<u32> = prompt["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mut file = GgufFile::open(&path);
    assert_eq!(file.layers, 18);
    let start = std::time::Instant::now();
    let (chunks, reference) = unsplit(&mut file, &ids, 6);
    let report = all_splits(&mut file, &chunks);
    let worst = check(&report, file.layers, &reference).unwrap();
    assert_eq!(report.rows.len(), 17 + 136);
    eprintln!(
        "packaged model: {} splits, {} shards loaded, {} shard runs, max |Δlogit| {worst:e}, {:.1} s",
        report.rows.len(),
        report.shards_loaded,
        report.shard_runs,
        start.elapsed().as_secs_f64()
    );

    // Every split within the llama.cpp fixture's tolerances, on the steps
    // where its greedy tokens are the fixture's, up to the first near-tie.
    let expected = prompt["greedy"].as_array().unwrap();
    for (cuts, rows) in &report.rows {
        for (step, (row, want)) in rows.iter().zip(expected).enumerate() {
            let token = want["id"].as_u64().unwrap() as usize;
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let d_lse = (lse - want["lse"].as_f64().unwrap()).abs();
            let d_lp = ((row[token] as f64 - lse) - want["logprob"].as_f64().unwrap()).abs();
            assert!(
                d_lse <= LSE_TOLERANCE && d_lp <= LOGPROB_TOLERANCE,
                "split at {cuts:?} step {step}: |Δlse| {d_lse:.3}, |Δlogprob| {d_lp:.3}"
            );
            let near_tie = want["margin"].as_f64().unwrap() < NEAR_TIE;
            if argmax(row) as usize != token {
                assert!(
                    near_tie,
                    "split at {cuts:?} step {step}: not llama.cpp's token"
                );
                break;
            }
            if near_tie {
                break;
            }
        }
    }
}
