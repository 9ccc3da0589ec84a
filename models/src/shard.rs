//! A layer range of one architecture: what every shard holds around its
//! layers (the input embedding on the first shard, the final norm and output
//! head on the last) and the walk through its layers, with the layers
//! themselves left to the [`Architecture`].

use std::ops::Range;

use candle_core::{Device, Tensor};

use crate::layers::{lookup, Cache, Linear, RmsNorm};
use crate::{ModelError, ModelShape, Result};

/// What one architecture adds to a [`Shard`]: its configuration and one
/// layer's computation.
pub trait Architecture {
    /// One layer's weights.
    type Layer: std::fmt::Debug;

    /// Layers, hidden width and vocabulary of the whole model.
    fn shape(&self) -> ModelShape;

    /// What the embedding rows are multiplied by (Gemma: sqrt(d)).
    fn embedding_scale(&self) -> Option<f64>;

    /// One layer on hidden states `[1, seq, d]` at positions
    /// `position..position + seq`, extending the layer's cached keys and
    /// values.
    fn layer(
        &self,
        layer: &Self::Layer,
        x: &Tensor,
        position: usize,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor>;
}

/// Rows a forward runs through the layers at once. A longer input runs in
/// chunks of this many rows, each at its own positions over the cache the
/// earlier ones filled, so that a forward's activations (attention scores
/// above all: heads × rows × cached positions) are bounded whatever the
/// prompt's length; only the KV cache grows with it. The split depends on
/// the row count alone, so every caller of a shard (node, auditor, single
/// process) computes the same values.
pub const FORWARD_CHUNK: usize = 256;

/// Layers `[start, end)` of a model of architecture `A`. The shard that starts
/// at 0 embeds tokens; the shard that ends at the last layer applies the final
/// norm and the head. Weights are shared; the KV cache of a request lives in a
/// [`Cache`] the caller owns, so one shard serves many requests.
#[derive(Debug)]
pub struct Shard<A: Architecture> {
    pub config: A,
    pub layers: Range<usize>,
    embedding: Option<Tensor>,
    blocks: Vec<A::Layer>,
    head: Option<(RmsNorm, Linear)>,
    device: Device,
}

/// `layers` must be a non-empty range inside the model's `total` layers.
pub(crate) fn check_range(layers: &Range<usize>, total: usize) -> Result<()> {
    if layers.start >= layers.end || layers.end > total {
        return Err(ModelError::LayerRange {
            start: layers.start,
            end: layers.end,
            layers: total,
        });
    }
    Ok(())
}

impl<A: Architecture> Shard<A> {
    /// `embedding` (dequantized, first shard only) and `head` (last shard
    /// only) as the architecture loaded them.
    pub(crate) fn new(
        config: A,
        layers: Range<usize>,
        embedding: Option<Tensor>,
        blocks: Vec<A::Layer>,
        head: Option<(RmsNorm, Linear)>,
        device: &Device,
    ) -> Shard<A> {
        Shard {
            config,
            layers,
            embedding,
            blocks,
            head,
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether this shard embeds tokens (takes token ids as input).
    pub fn embeds(&self) -> bool {
        self.embedding.is_some()
    }

    /// Whether this shard ends with the head (returns logits).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Token ids `[seq]` to the input of the first layer, `[1, seq, d]`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        let x = lookup(self.embedding.as_ref(), tokens, self.config.shape().vocab)?;
        match self.config.embedding_scale() {
            Some(scale) => Ok((x * scale)?),
            None => Ok(x),
        }
    }

    /// The shard's layers alone: hidden states after its last layer (before
    /// the final norm, even on the head shard).
    pub fn forward_layers(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        self.forward_layers_with(x, position, cache, &mut |_, x| Ok(x))
    }

    /// [`Shard::forward_layers`], handing each layer's output (with the
    /// layer's absolute index) to `after_layer`, which returns what the next
    /// layer gets: a node keeps what it computed for audits this way. An
    /// input of more than [`FORWARD_CHUNK`] rows runs chunk by chunk, so
    /// `after_layer` sees each layer once per chunk, in row order.
    pub fn forward_layers_with(
        &self,
        x: &Tensor,
        position: usize,
        cache: &mut Cache,
        after_layer: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let rows = x.dim(1)?;
        if rows > FORWARD_CHUNK {
            let chunks = (0..rows)
                .step_by(FORWARD_CHUNK)
                .map(|start| {
                    let len = FORWARD_CHUNK.min(rows - start);
                    let chunk = x.narrow(1, start, len)?;
                    self.forward_layers_with(&chunk, position + start, cache, after_layer)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&chunks, 1)?);
        }
        let seq = cache.enter(x, self.config.shape().hidden, position, self.blocks.len())?;
        let mut x = x.clone();
        for ((block, slot), index) in self
            .blocks
            .iter()
            .zip(cache.layers.iter_mut())
            .zip(self.layers.clone())
        {
            x = after_layer(index, self.config.layer(block, &x, position, slot)?)?;
        }
        cache.advance(seq);
        Ok(x)
    }

    /// Runs the shard's layers on hidden states `[1, seq, d]` at positions
    /// `position..position + seq`, returning hidden states, or logits `[1, seq, V]`
    /// if the shard holds the head.
    pub fn forward(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        let x = self.forward_layers(x, position, cache)?;
        if self.head.is_some() {
            self.head_forward(&x)
        } else {
            Ok(x)
        }
    }

    /// The layers, then the final norm and the head on the last row only:
    /// the logits `[1, 1, V]` that choose the next token, without the
    /// `V` values per row a whole prompt's logits would take.
    pub fn forward_last(&self, x: &Tensor, position: usize, cache: &mut Cache) -> Result<Tensor> {
        let hidden = self.forward_layers(x, position, cache)?;
        let rows = hidden.dim(1)?;
        self.head_forward(&hidden.narrow(1, rows - 1, 1)?)
    }

    /// Bytes of KV cache one position of one request takes on this shard.
    pub fn kv_bytes_per_position(&self) -> usize {
        2 * self.blocks.len() * self.config.shape().kv_width * std::mem::size_of::<f32>()
    }

    /// The final norm and the head on hidden states `[1, seq, d]` after the
    /// last layer: logits `[1, seq, V]`. Only the shard with the head has it.
    pub fn head_forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.head {
            Some((norm, head)) => Ok(head.forward(&norm.forward(x)?)?),
            None => Err(ModelError::Shape(
                "this shard does not hold the head".into(),
            )),
        }
    }
}
