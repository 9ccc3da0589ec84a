//! Single-process generation state: a whole model and one request's cache.

use crate::Cache;
use crate::Model;
use crate::{ModelError, Result};

/// Feeds tokens through a model that embeds and has the head, one request at a time.
pub struct Generator<'a> {
    model: &'a Model,
    cache: Cache,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a Model) -> Result<Self> {
        if !model.embeds() || !model.has_head() {
            return Err(ModelError::Shape(
                "generation needs all layers of the model in one shard".into(),
            ));
        }
        Ok(Generator {
            model,
            cache: Cache::new(),
        })
    }

    /// Positions fed so far.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    /// Feeds `tokens` (the prompt, or one generated token) and returns the logits
    /// at the last position.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(ModelError::Shape("nothing to feed".into()));
        }
        let x = self.model.embed(tokens)?;
        let logits = self
            .model
            .forward_last(&x, self.cache.len(), &mut self.cache)?;
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}
