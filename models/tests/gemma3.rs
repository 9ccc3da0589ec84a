//! The Gemma 3 model by layer range: splits agree with the whole model, and the
//! packaged model agrees with llama.cpp's figures in docs/model.md.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor, D};
use models::gemma3::Gemma3;
use models::testing::{greedy_chain, tiny_gemma3_config, write_random_gemma3};
use models::Cache;
use models::Model;
use models::FORWARD_CHUNK;

fn load(path: &Path, layers: Range<usize>) -> Gemma3 {
    let mut reader = BufReader::new(File::open(path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, layers).unwrap()
}

/// A prompt, then greedy tokens one at a time, through a chain of shards.
fn run_chain(shards: Vec<Gemma3>, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Tensor>) {
    let shards: Vec<Model> = shards.into_iter().map(Model::from).collect();
    greedy_chain(&shards, prompt, steps).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn splits_agree_with_the_whole_tiny_model() {
    let dir = std::env::temp_dir().join(format!("zkinfer-gemma3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&path, &config, 42).unwrap();
    let n = config.layers;
    let prompt = [2u32, 17, 99, 5, 260, 31];
    // Past the window of 4 so the sliding mask matters.
    let (whole_tokens, whole_logits) = run_chain(vec![load(&path, 0..n)], &prompt, 8);
    for cuts in [vec![3], vec![1, 6], vec![5, 6]] {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied());
        bounds.push(n);
        let shards: Vec<Gemma3> = bounds.windows(2).map(|w| load(&path, w[0]..w[1])).collect();
        let (tokens, logits) = run_chain(shards, &prompt, 8);
        assert_eq!(tokens, whole_tokens, "split at {cuts:?}");
        for (a, b) in logits.iter().zip(&whole_logits) {
            assert!(max_abs_diff(a, b) < 1e-4, "split at {cuts:?}");
        }
    }
}

#[test]
fn chunked_prefill_matches_token_by_token() {
    let dir = std::env::temp_dir().join(format!("zkinfer-gemma3-chunk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&path, &config, 7).unwrap();
    let model = load(&path, 0..config.layers);
    let tokens = [2u32, 8, 9, 10, 11, 12, 13, 14];
    let mut cache = Cache::new();
    let all = model
        .forward(&model.embed(&tokens).unwrap(), 0, &mut cache)
        .unwrap();
    let mut cache = Cache::new();
    let first = model
        .forward(&model.embed(&tokens[..5]).unwrap(), 0, &mut cache)
        .unwrap();
    let rest = model
        .forward(&model.embed(&tokens[5..]).unwrap(), 5, &mut cache)
        .unwrap();
    let chunked = Tensor::cat(&[&first, &rest], 1).unwrap();
    let diff = (all - chunked)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
}

#[test]
fn a_long_input_runs_in_fixed_chunks_and_the_head_reads_its_last_row() {
    let dir = std::env::temp_dir().join(format!("zkinfer-gemma3-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&path, &config, 7).unwrap();
    let model = Model::from(load(&path, 0..config.layers));
    let rows = FORWARD_CHUNK + 40;
    let tokens: Vec<u32> = (0..rows).map(|i| 2 + (i * 7 % 300) as u32).collect();
    let x = model.embed(&tokens).unwrap();

    let mut cache = Cache::new();
    let mut seen = Vec::new();
    let whole = model
        .forward_layers_with(&x, 0, &mut cache, &mut |layer, out| {
            seen.push((layer, out.dim(1)?));
            Ok(out)
        })
        .unwrap();
    assert_eq!(cache.len(), rows);
    // Every layer once per chunk, chunk after chunk.
    let expected: Vec<(usize, usize)> = [FORWARD_CHUNK, 40]
        .iter()
        .flat_map(|&n| (0..config.layers).map(move |l| (l, n)))
        .collect();
    assert_eq!(seen, expected);

    // Exactly the two forwards a caller would make at the chunk boundary.
    let mut by_hand = Cache::new();
    let first = model
        .forward_layers(&x.narrow(1, 0, FORWARD_CHUNK).unwrap(), 0, &mut by_hand)
        .unwrap();
    let rest = model
        .forward_layers(
            &x.narrow(1, FORWARD_CHUNK, 40).unwrap(),
            FORWARD_CHUNK,
            &mut by_hand,
        )
        .unwrap();
    let by_hand = Tensor::cat(&[&first, &rest], 1).unwrap();
    assert_eq!(
        max_abs_diff(
            &whole.flatten_all().unwrap(),
            &by_hand.flatten_all().unwrap()
        ),
        0.0
    );

    // Another split computes the same function up to rounding.
    let mut other = Cache::new();
    let a = model
        .forward_layers(&x.narrow(1, 0, 100).unwrap(), 0, &mut other)
        .unwrap();
    let b = model
        .forward_layers(&x.narrow(1, 100, rows - 100).unwrap(), 100, &mut other)
        .unwrap();
    let other = Tensor::cat(&[&a, &b], 1).unwrap();
    assert!(max_abs_diff(&whole.flatten_all().unwrap(), &other.flatten_all().unwrap()) < 1e-3);

    // The head on the last row alone: one row of logits, as the head on every row gives there.
    let last = model.forward_last(&x, 0, &mut Cache::new()).unwrap();
    assert_eq!(last.dims(), &[1, 1, config.vocab]);
    let every = model.head_forward(&whole).unwrap();
    let every_last = every.narrow(1, rows - 1, 1).unwrap();
    assert!(
        max_abs_diff(
            &last.flatten_all().unwrap(),
            &every_last.flatten_all().unwrap()
        ) < 1e-3
    );
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("zkinfer-gemma3-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let config = tiny_gemma3_config();
    write_random_gemma3(&path, &config, 3).unwrap();
    let mut reader = BufReader::new(File::open(&path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    assert!(Gemma3::from_gguf(&content, &mut reader, &Device::Cpu, 3..99).is_err());
    let model = load(&path, 0..3);
    assert!(model.embed(&[config.vocab as u32]).is_err());
    let tail = load(&path, 3..config.layers);
    assert!(tail.embed(&[1]).is_err());
    let mut cache = Cache::new();
    let x = Tensor::zeros((1, 1, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        tail.forward(&x, 5, &mut cache).is_err(),
        "position must match the cache"
    );
}

#[test]
fn packaged_model_matches_llama_cpp_figures() {
    let Some(path) = models::installed_packaged_model() else {
        return;
    };
    // docs/model.md: llama.cpp's ids for "The quick brown fox jumps over the lazy dog. In the beginning".
    let prompt = [
        2u32, 818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 236761, 799, 506, 6534,
    ];
    let model = load(&path, 0..18);
    let mut cache = Cache::new();
    let logits = model
        .forward(&model.embed(&prompt).unwrap(), 0, &mut cache)
        .unwrap();
    let last = logits
        .narrow(1, prompt.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let top = last.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
    assert_eq!(top, 236764, "top-1 should be ','");
    let v: Vec<f32> = last.to_vec1().unwrap();
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    assert!((lse - 25.5595).abs() <= 0.3, "logsumexp {lse}");

    // A 2-way and a 3-way split give the same greedy continuation.
    let (whole, _) = run_chain(vec![load(&path, 0..18)], &prompt, 10);
    let (two, _) = run_chain(vec![load(&path, 0..9), load(&path, 9..18)], &prompt, 10);
    let (three, _) = run_chain(
        vec![load(&path, 0..5), load(&path, 5..12), load(&path, 12..18)],
        &prompt,
        10,
    );
    assert_eq!(two, whole);
    assert_eq!(three, whole);
}

#[test]
fn model_id_is_deterministic_and_covers_the_weights() {
    let dir = std::env::temp_dir().join(format!("zkinfer-gemma3-id-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let id = |seed: u64, window: usize| {
        let path = dir.join(format!("m-{seed}-{window}.gguf"));
        let mut config = tiny_gemma3_config();
        config.sliding_window = window;
        write_random_gemma3(&path, &config, seed).unwrap();
        let mut reader = BufReader::new(File::open(&path).unwrap());
        let content = gguf_file::Content::read(&mut reader).unwrap();
        models::model_id::model_id(&content, &mut reader).unwrap()
    };
    assert_eq!(id(1, 4), id(1, 4));
    assert_ne!(id(1, 4), id(2, 4), "weights");
    assert_ne!(id(1, 4), id(1, 8), "configuration");
}
