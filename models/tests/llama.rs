//! The Llama model by layer range: splits agree with the whole model, chunked
//! prefill agrees with one shot, tied and untied heads load, the math agrees with
//! an independent f64 reference, and `Model` dispatches on the architecture.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor, D};
use models::llama::{Config, Llama};
use models::testing::{
    greedy_chain, tiny_gemma3_config, tiny_llama_config, write_random_gemma3, write_random_llama,
    write_random_llama_as,
};
use models::Cache;
use models::Model;

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zkinfer-llama-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn read(path: &Path) -> (gguf_file::Content, BufReader<File>) {
    let mut reader = BufReader::new(File::open(path).unwrap());
    let content = gguf_file::Content::read(&mut reader).unwrap();
    (content, reader)
}

fn load(path: &Path, layers: Range<usize>) -> Llama {
    let (content, mut reader) = read(path);
    Llama::from_gguf(&content, &mut reader, &Device::Cpu, layers).unwrap()
}

fn load_model(path: &Path, layers: Range<usize>) -> models::Result<Model> {
    let (content, mut reader) = read(path);
    Model::from_gguf(&content, &mut reader, &Device::Cpu, layers)
}

/// A prompt, then greedy tokens one at a time, through a chain of shards.
fn run_chain(shards: Vec<Llama>, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Tensor>) {
    let shards: Vec<Model> = shards.into_iter().map(Model::from).collect();
    greedy_chain(&shards, prompt, steps).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn config_round_trips_through_the_file() {
    for tied in [false, true] {
        let path = temp_path(&format!("config-{tied}.gguf"));
        let config = Config {
            tied_head: tied,
            ..tiny_llama_config()
        };
        write_random_llama(&path, &config, 3).unwrap();
        let (content, _) = read(&path);
        let read = Config::from_gguf(&content).unwrap();
        // The file stores eps as f32.
        let want = Config {
            rms_eps: config.rms_eps as f32 as f64,
            ..config
        };
        assert_eq!(read, want);
    }
}

#[test]
fn splits_agree_with_the_whole_tiny_model() {
    let path = temp_path("splits.gguf");
    let config = tiny_llama_config();
    write_random_llama(&path, &config, 42).unwrap();
    let n = config.layers;
    let prompt = [2u32, 17, 99, 5, 260, 31];
    let (whole_tokens, whole_logits) = run_chain(vec![load(&path, 0..n)], &prompt, 9);
    assert_eq!(whole_logits[0].dims(), &[config.vocab]);
    for cuts in [vec![2], vec![1, 4], vec![4]] {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied());
        bounds.push(n);
        let shards: Vec<Llama> = bounds.windows(2).map(|w| load(&path, w[0]..w[1])).collect();
        assert!(shards[0].embeds() && !shards[0].has_head());
        assert!(shards[shards.len() - 1].has_head());
        assert!(!shards[shards.len() - 1].embeds());
        let (tokens, logits) = run_chain(shards, &prompt, 9);
        assert_eq!(tokens, whole_tokens, "split at {cuts:?}");
        for (a, b) in logits.iter().zip(&whole_logits) {
            assert!(max_abs_diff(a, b) < 1e-4, "split at {cuts:?}");
        }
    }
}

#[test]
fn chunked_prefill_equals_one_shot() {
    let path = temp_path("chunked.gguf");
    let config = tiny_llama_config();
    write_random_llama(&path, &config, 7).unwrap();
    let model = load(&path, 0..config.layers);
    let prompt = [1u32, 250, 8, 8, 40, 199, 3];
    let mut cache = Cache::new();
    let whole = model
        .forward(&model.embed(&prompt).unwrap(), 0, &mut cache)
        .unwrap();
    let mut cache = Cache::new();
    let mut parts = Vec::new();
    let mut position = 0;
    for chunk in [&prompt[..3], &prompt[3..4], &prompt[4..]] {
        let x = model.embed(chunk).unwrap();
        parts.push(model.forward(&x, position, &mut cache).unwrap());
        position += chunk.len();
    }
    assert_eq!(cache.len(), prompt.len());
    let chunked = Tensor::cat(&parts, 1).unwrap();
    assert_eq!(chunked.dims(), whole.dims());
    assert!(max_abs_diff(&chunked, &whole) < 1e-4);
    // A position that disagrees with the cache is refused.
    let x = model.embed(&[5]).unwrap();
    assert!(model.forward(&x, 3, &mut cache).is_err());
}

#[test]
fn tied_and_untied_heads_load() {
    let untied_path = temp_path("untied.gguf");
    let tied_path = temp_path("tied.gguf");
    let untied = tiny_llama_config();
    let tied = Config {
        tied_head: true,
        ..tiny_llama_config()
    };
    write_random_llama(&untied_path, &untied, 11).unwrap();
    write_random_llama(&tied_path, &tied, 11).unwrap();
    let (content, _) = read(&tied_path);
    assert!(!content.tensor_infos.contains_key("output.weight"));
    let (content, _) = read(&untied_path);
    assert!(content.tensor_infos.contains_key("output.weight"));
    let a = load(&untied_path, 0..untied.layers);
    let b = load(&tied_path, 0..tied.layers);
    assert!(!a.config.tied_head && b.config.tied_head);
    let prompt = [4u32, 5, 6];
    let la = a
        .forward(&a.embed(&prompt).unwrap(), 0, &mut Cache::new())
        .unwrap();
    let lb = b
        .forward(&b.embed(&prompt).unwrap(), 0, &mut Cache::new())
        .unwrap();
    assert_eq!(la.dims(), &[1, 3, untied.vocab]);
    assert_eq!(lb.dims(), &[1, 3, tied.vocab]);
    // Same seed and layer matrices, but a different head.
    assert!(max_abs_diff(&la, &lb) > 1e-3);
    // A last shard of a tied model loads the embedding for its head only.
    let last = load(&tied_path, 3..tied.layers);
    assert!(last.has_head() && !last.embeds());
    assert!(last.embed(&[1]).is_err());
}

#[test]
fn bad_ranges_and_tokens_are_refused() {
    let path = temp_path("bad.gguf");
    let config = tiny_llama_config();
    write_random_llama(&path, &config, 5).unwrap();
    let (content, mut reader) = read(&path);
    let reversed = Range { start: 3, end: 2 };
    for range in [0..0, reversed, 0..config.layers + 1] {
        assert!(Llama::from_gguf(&content, &mut reader, &Device::Cpu, range).is_err());
    }
    let model = load(&path, 0..2);
    assert!(model.embed(&[config.vocab as u32]).is_err());
    let wrong = Tensor::zeros(
        (1, 1, config.hidden + 1),
        candle_core::DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert!(model.forward(&wrong, 0, &mut Cache::new()).is_err());
}

#[test]
fn model_dispatches_on_the_architecture() {
    let llama_path = temp_path("dispatch-llama.gguf");
    let gemma_path = temp_path("dispatch-gemma.gguf");
    let lc = tiny_llama_config();
    let gc = tiny_gemma3_config();
    write_random_llama(&llama_path, &lc, 1).unwrap();
    write_random_gemma3(&gemma_path, &gc, 1).unwrap();

    let whole = load_model(&llama_path, 0..lc.layers).unwrap();
    assert!(matches!(whole, Model::Llama(_)));
    assert_eq!(whole.architecture_name(), "llama");
    assert_eq!(
        (whole.hidden_size(), whole.layers(), whole.vocab()),
        (lc.hidden, lc.layers, lc.vocab)
    );
    assert!(whole.embeds() && whole.has_head());
    // Through `Model`, a split still agrees with the whole model.
    let first = load_model(&llama_path, 0..2).unwrap();
    let second = load_model(&llama_path, 2..lc.layers).unwrap();
    assert_eq!(second.layer_range(), 2..lc.layers);
    assert!(!second.embeds());
    let prompt = [9u32, 8, 7, 6];
    let direct = whole
        .forward(&whole.embed(&prompt).unwrap(), 0, &mut Cache::new())
        .unwrap();
    let mid = first
        .forward(&first.embed(&prompt).unwrap(), 0, &mut Cache::new())
        .unwrap();
    let split = second.forward(&mid, 0, &mut Cache::new()).unwrap();
    assert!(max_abs_diff(&direct, &split) < 1e-4);

    let gemma = load_model(&gemma_path, 0..gc.layers).unwrap();
    assert!(matches!(gemma, Model::Gemma3(_)));
    assert_eq!(
        (gemma.hidden_size(), gemma.layers(), gemma.vocab()),
        (gc.hidden, gc.layers, gc.vocab)
    );
    let logits = gemma
        .forward(&gemma.embed(&prompt).unwrap(), 0, &mut Cache::new())
        .unwrap();
    assert_eq!(logits.dims(), &[1, 4, gc.vocab]);

    // Any other architecture is refused, by name.
    let (mut content, mut reader) = read(&llama_path);
    content.metadata.insert(
        "general.architecture".into(),
        gguf_file::Value::String("mamba".into()),
    );
    let err = Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..1).unwrap_err();
    assert!(err.to_string().contains("mamba"), "{err}");
}

/// A plain f64 Llama forward over a whole prompt, from the file's weights.
struct Reference {
    c: Config,
    content: gguf_file::Content,
    reader: BufReader<File>,
}

impl Reference {
    fn matrix(&mut self, name: &str) -> Vec<Vec<f64>> {
        let t = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        t.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(f64::from).collect())
            .collect()
    }

    fn vector(&mut self, name: &str) -> Vec<f64> {
        let t = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        t.to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn logits(&mut self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = self.c.clone();
        let mul = |w: &[Vec<f64>], x: &[f64]| -> Vec<f64> {
            w.iter()
                .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        };
        let rms = |x: &[f64], w: &[f64]| -> Vec<f64> {
            let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
            let r = 1.0 / (ms + c.rms_eps).sqrt();
            x.iter().zip(w).map(|(v, g)| v * r * g).collect()
        };
        let rope = |v: &mut [f64], pos: usize| {
            for head in v.chunks_mut(c.head_dim) {
                for i in 0..c.rope_dim / 2 {
                    let theta = pos as f64
                        * (c.rope_base as f64).powf(-(2.0 * i as f64) / c.rope_dim as f64);
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * theta.cos() - b * theta.sin();
                    head[2 * i + 1] = a * theta.sin() + b * theta.cos();
                }
            }
        };
        let embd = self.matrix("token_embd.weight");
        let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| embd[t as usize].clone()).collect();
        let group = c.heads / c.kv_heads;
        let hd = c.head_dim;
        for l in 0..c.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            let attn_norm = self.vector(&n("attn_norm"));
            let (wq, wk, wv, wo) = (
                self.matrix(&n("attn_q")),
                self.matrix(&n("attn_k")),
                self.matrix(&n("attn_v")),
                self.matrix(&n("attn_output")),
            );
            let ffn_norm = self.vector(&n("ffn_norm"));
            let (wg, wu, wd) = (
                self.matrix(&n("ffn_gate")),
                self.matrix(&n("ffn_up")),
                self.matrix(&n("ffn_down")),
            );
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = rms(x, &attn_norm);
                let mut q = mul(&wq, &h);
                let mut k = mul(&wk, &h);
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(mul(&wv, &h));
            }
            for (t, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0.0; c.heads * hd];
                for head in 0..c.heads {
                    let kvh = head / group;
                    let q = &qs[t][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=t)
                        .map(|s| {
                            let k = &ks[s][kvh * hd..(kvh + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = exps.iter().sum();
                    for (s, e) in exps.iter().enumerate() {
                        let v = &vs[s][kvh * hd..(kvh + 1) * hd];
                        for d in 0..hd {
                            attn[head * hd + d] += e / total * v[d];
                        }
                    }
                }
                let o = mul(&wo, &attn);
                for (a, b) in x.iter_mut().zip(o) {
                    *a += b;
                }
                let h = rms(x, &ffn_norm);
                let g = mul(&wg, &h);
                let u = mul(&wu, &h);
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                for (a, b) in x.iter_mut().zip(mul(&wd, &act)) {
                    *a += b;
                }
            }
        }
        let out_norm = self.vector("output_norm.weight");
        let head = if c.tied_head {
            embd
        } else {
            self.matrix("output.weight")
        };
        xs.iter().map(|x| mul(&head, &rms(x, &out_norm))).collect()
    }
}

#[test]
fn logits_match_an_f64_reference() {
    for (tied, layers, kv_heads) in [(false, 1, 2), (true, 2, 1)] {
        let path = temp_path(&format!("reference-{tied}.gguf"));
        let config = Config {
            layers,
            kv_heads,
            tied_head: tied,
            ..tiny_llama_config()
        };
        write_random_llama_as(&path, &config, 99, GgmlDType::F32).unwrap();
        let model = load(&path, 0..layers);
        let prompt = [3u32, 141, 77];
        let logits = model
            .forward(&model.embed(&prompt).unwrap(), 0, &mut Cache::new())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let (content, reader) = read(&path);
        let mut reference = Reference {
            c: model.config.clone(),
            content,
            reader,
        };
        let want = reference.logits(&prompt);
        let mut worst = 0f64;
        for (row, want_row) in logits.iter().zip(&want) {
            for (a, b) in row.iter().zip(want_row) {
                worst = worst.max((*a as f64 - b).abs());
            }
        }
        assert!(worst < 1e-4, "tied {tied}: max diff {worst}");
        // The reference is sensitive to the rotation: shuffling positions changes logits.
        let swapped = reference.logits(&[141, 3, 77]);
        let moved = swapped[2]
            .iter()
            .zip(&want[2])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(moved > 1e-3, "position must matter: {moved}");
    }
}
