//! The head audit (runtime::audit) on the tiny random Gemma 3: an honest
//! opening is accepted, an opening that is not the committed vector or that
//! another head produced is rejected.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use circuits::commitment::commit_logits;
use circuits::{FixedPoint, Fp};
use runtime::audit::{audit_head, HEAD_TOLERANCE};
use runtime::gemma3::Cache;
use runtime::model::Model;
use runtime::testing::{tiny_gemma3_config, write_random_gemma3};

fn load(path: &Path) -> Model {
    let mut reader = BufReader::new(File::open(path).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("gguf");
    let layers = tiny_gemma3_config().layers;
    Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..layers).expect("load")
}

fn commit(logits: &[f32]) -> Fp {
    let fixed_point = FixedPoint::default();
    let z: Vec<i64> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| fixed_point.quantize(i, l as f64).expect("in range"))
        .collect();
    commit_logits(fixed_point, &z)
}

#[test]
fn the_head_audit_accepts_honest_openings_and_rejects_others() {
    let dir = std::env::temp_dir().join(format!("zkinfer-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (honest_path, other_path) = (dir.join("a.gguf"), dir.join("b.gguf"));
    write_random_gemma3(&honest_path, &tiny_gemma3_config(), 21).expect("model");
    write_random_gemma3(&other_path, &tiny_gemma3_config(), 22).expect("model");
    let (model, other) = (load(&honest_path), load(&other_path));
    let fixed_point = FixedPoint::default();

    // The node: final hidden state of the last prompt position, and logits.
    let x = model.embed(&[2, 40, 7, 99]).expect("embed");
    let hidden = model
        .forward_layers(&x, 0, &mut Cache::new())
        .expect("layers");
    let last = hidden.narrow(1, 3, 1).expect("last row");
    let logits: Vec<f32> = model
        .head_forward(&last)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
        .expect("head");
    // forward() is the layers then the head.
    let full: Vec<f32> = model
        .forward(&x, 0, &mut Cache::new())
        .and_then(|t| Ok(t.narrow(1, 3, 1)?.flatten_all()?.to_vec1()?))
        .expect("forward");
    assert_eq!(full, logits);
    let hidden: Vec<f32> = last
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("hidden");
    let commitment = commit(&logits);

    let honest = audit_head(&model, &hidden, &logits, commitment, fixed_point).expect("audit");
    assert!(honest.accepted(), "{honest:?}");
    assert_eq!(honest.max_abs_diff, 0.0);

    // Within the tolerance band (another device's rounding): accepted.
    let mut close = logits.clone();
    close[5] += HEAD_TOLERANCE / 2.0;
    let audit = audit_head(&model, &hidden, &close, commit(&close), fixed_point).expect("audit");
    assert!(audit.accepted(), "{audit:?}");

    // An opening that is not what was committed.
    let mut changed = logits.clone();
    changed[3] += 0.5;
    let audit = audit_head(&model, &hidden, &changed, commitment, fixed_point).expect("audit");
    assert!(!audit.opens_commitment && !audit.accepted(), "{audit:?}");

    // Logits from another head, committed and opened consistently.
    let swapped: Vec<f32> = other
        .head_forward(&last)
        .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
        .expect("other head");
    let audit =
        audit_head(&model, &hidden, &swapped, commit(&swapped), fixed_point).expect("audit");
    assert!(audit.opens_commitment, "{audit:?}");
    assert!(audit.max_abs_diff > 10.0 * HEAD_TOLERANCE, "{audit:?}");
    assert!(!audit.accepted());

    // Wrong sizes are an error, not a panic.
    assert!(audit_head(&model, &hidden[1..], &logits, commitment, fixed_point).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
