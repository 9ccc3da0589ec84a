//! One type for every architecture a node can serve by layer range.
//!
//! [`Model::from_gguf`] reads `general.architecture` and loads a [`Gemma3`] or a
//! [`Llama`] shard; the methods delegate, so code that runs shards (embed on the
//! first shard, `forward` with a per-request [`Cache`], logits from the last)
//! works the same whichever model the operator has.

use std::io::{Read, Seek};
use std::ops::Range;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};

use crate::gemma3::{self, Gemma3};
use crate::layers::{meta, Cache};
use crate::llama::{self, Llama};
use crate::shard::Architecture;
use crate::{ModelError, Result};

/// The architectures this runtime serves, by `general.architecture`.
pub const ARCHITECTURES: &[&str] = &["gemma3", "llama"];

/// A shard (layer range) of a model of any supported architecture.
#[derive(Debug)]
pub enum Model {
    Gemma3(Gemma3),
    Llama(Llama),
}

/// What a client needs to know of a model to route and sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// The most positions one request may hold.
    pub context: usize,
    /// Key (and value) values one layer caches per position.
    pub kv_width: usize,
}

/// The context of a GGUF that does not state one.
pub const DEFAULT_CONTEXT: usize = 8192;

/// The same call on whichever architecture's shard `model` holds.
macro_rules! on_shard {
    ($model:expr, $shard:ident => $call:expr) => {
        match $model {
            Model::Gemma3($shard) => $call,
            Model::Llama($shard) => $call,
        }
    };
}

fn unsupported(architecture: &str) -> ModelError {
    ModelError::Metadata(format!(
        "unsupported architecture {architecture:?} (supported: {})",
        ARCHITECTURES.join(", ")
    ))
}

impl Model {
    /// The file's `general.architecture`.
    pub fn architecture(content: &gguf_file::Content) -> Result<String> {
        meta(content, "general.architecture")?
            .to_string()
            .cloned()
            .map_err(|e| ModelError::Metadata(format!("general.architecture: {e}")))
    }

    /// Loads layers `layers` of the model in a GGUF file, choosing the
    /// architecture from `general.architecture`. Anything other than
    /// [`ARCHITECTURES`] is an error naming it.
    pub fn from_gguf<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        layers: Range<usize>,
    ) -> Result<Model> {
        match Model::architecture(content)?.as_str() {
            "gemma3" => Ok(Gemma3::from_gguf(content, reader, device, layers)?.into()),
            "llama" => Ok(Llama::from_gguf(content, reader, device, layers)?.into()),
            other => Err(unsupported(other)),
        }
    }

    /// Layer count, hidden size and vocabulary of the model in a GGUF file,
    /// from its metadata alone (nothing is loaded).
    pub fn shape_of(content: &gguf_file::Content) -> Result<ModelShape> {
        match Model::architecture(content)?.as_str() {
            "gemma3" => Ok(gemma3::Config::from_gguf(content)?.shape()),
            "llama" => Ok(llama::Config::from_gguf(content)?.shape()),
            other => Err(unsupported(other)),
        }
    }

    /// The `general.architecture` name of this model.
    pub fn architecture_name(&self) -> &'static str {
        match self {
            Model::Gemma3(_) => "gemma3",
            Model::Llama(_) => "llama",
        }
    }

    /// Token ids `[seq]` to the input of the first layer, `[1, seq, d]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        on_shard!(self, m => m.embed(tokens))
    }

    /// Runs the shard's layers on `[1, seq, d]` at positions
    /// `position..position + seq`: hidden states, or logits if [`Model::has_head`].
    pub fn forward(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        on_shard!(self, m => m.forward(x, position, cache))
    }

    /// The shard's layers alone (no final norm or head even on the head
    /// shard): the hidden state an audit of the head starts from.
    pub fn forward_layers(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        on_shard!(self, m => m.forward_layers(x, position, cache))
    }

    /// [`Model::forward_layers`], handing each layer's output (and its
    /// absolute index) to `after_layer`, which returns what the next layer
    /// gets.
    pub fn forward_layers_with(
        &self,
        x: &Tensor,
        position: usize,
        cache: &mut Cache,
        after_layer: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        on_shard!(self, m => m.forward_layers_with(x, position, cache, after_layer))
    }

    /// The layers, then the final norm and head on the last row only
    /// (`[1, 1, V]`): what chooses the next token. Only on the head shard.
    pub fn forward_last(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        on_shard!(self, m => m.forward_last(x, position, cache))
    }

    /// Bytes of KV cache one position of one request takes on this shard.
    pub fn kv_bytes_per_position(&self) -> usize {
        on_shard!(self, m => m.kv_bytes_per_position())
    }

    /// The most positions one request may hold.
    pub fn context(&self) -> usize {
        self.shape().context
    }

    /// The final norm and head on the hidden states `[1, seq, d]` after the
    /// last layer (what [`Model::forward`] applies last on the head shard).
    pub fn head_forward(&self, x: &Tensor) -> Result<Tensor> {
        on_shard!(self, m => m.head_forward(x))
    }

    /// Whether this shard starts at layer 0 (takes token ids).
    pub fn embeds(&self) -> bool {
        on_shard!(self, m => m.embeds())
    }

    /// Whether this shard ends at the last layer (returns logits).
    pub fn has_head(&self) -> bool {
        on_shard!(self, m => m.has_head())
    }

    /// Layers, hidden width and vocabulary of the whole model.
    pub fn shape(&self) -> ModelShape {
        on_shard!(self, m => m.config.shape())
    }

    /// Width of the hidden states passed between shards.
    pub fn hidden_size(&self) -> usize {
        self.shape().hidden
    }

    /// Number of layers of the whole architecture (not of this shard).
    pub fn layers(&self) -> usize {
        self.shape().layers
    }

    /// The layers `[start, end)` this shard holds.
    pub fn layer_range(&self) -> Range<usize> {
        on_shard!(self, m => m.layers.clone())
    }

    /// Vocabulary size (width of the logits).
    pub fn vocab(&self) -> usize {
        self.shape().vocab
    }

    pub fn device(&self) -> &Device {
        on_shard!(self, m => m.device())
    }
}

impl From<Gemma3> for Model {
    fn from(m: Gemma3) -> Model {
        Model::Gemma3(m)
    }
}

impl From<Llama> for Model {
    fn from(m: Llama) -> Model {
        Model::Llama(m)
    }
}
