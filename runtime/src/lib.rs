//! The zkinfer runtime: models from GGUF files that run any layer range, and
//! the tokenizer stored in the GGUF metadata.

pub mod gemma3;
pub mod generate;
pub mod model_id;
pub mod testing;
pub mod tokenizer;
pub mod wire;

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
