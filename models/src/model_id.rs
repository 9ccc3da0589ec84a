//! The model id: a blake3 Merkle root over a GGUF file's metadata and tensors.
//!
//! Leaves, in this order: every metadata entry sorted by key, hashed as
//! `blake3("zkinfer.meta.v1" || len(key) || key || encoding(value))`; then every
//! tensor sorted by name, hashed as `blake3("zkinfer.tensor.v1" || len(name) || name ||
//! ggml type name || rank || dims || raw bytes)`. Values are encoded with a type tag and
//! little-endian bytes (strings and arrays length-prefixed). Inner nodes are
//! `blake3("zkinfer.node.v1" || left || right)`; an odd node is carried up unchanged.
//! The id thus covers weights, configuration and tokenizer, and does not depend on
//! the order of entries in the file.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{self, Value};

use crate::{ModelError, Result};

/// A 32-byte model id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelId(pub [u8; 32]);

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn encode(value: &Value, out: &mut Vec<u8>) {
    let tag = value.value_type() as u8;
    out.push(tag);
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode(item, out);
            }
        }
    }
}

fn leaf(domain: &str, name: &str, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(domain.as_bytes());
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(body);
    *h.finalize().as_bytes()
}

/// The Merkle root of `leaves` (see the module docs).
fn merkle_root(mut level: Vec<[u8; 32]>) -> [u8; 32] {
    if level.is_empty() {
        return *blake3::hash(b"zkinfer.empty.v1").as_bytes();
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => {
                    let mut h = blake3::Hasher::new();
                    h.update(b"zkinfer.node.v1");
                    h.update(l);
                    h.update(r);
                    *h.finalize().as_bytes()
                }
                [single] => *single,
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    level[0]
}

/// Computes the model id of an opened GGUF file.
pub fn model_id<R: Read + Seek>(content: &gguf_file::Content, reader: &mut R) -> Result<ModelId> {
    let mut leaves = Vec::new();
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    for key in keys {
        let mut body = Vec::new();
        encode(&content.metadata[key], &mut body);
        leaves.push(leaf("zkinfer.meta.v1", key, &body));
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut buf = Vec::new();
    for name in names {
        let info = &content.tensor_infos[name];
        let dims = info.shape.dims();
        let elements: usize = dims.iter().product();
        let dtype = info.ggml_dtype;
        if !elements.is_multiple_of(dtype.block_size()) {
            return Err(ModelError::Metadata(format!(
                "tensor {name}: {elements} elements is not a whole number of blocks"
            )));
        }
        let size = elements / dtype.block_size() * dtype.type_size();
        buf.resize(size, 0);
        reader
            .seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
            .and_then(|_| reader.read_exact(&mut buf))
            .map_err(|e| ModelError::Metadata(format!("reading tensor {name}: {e}")))?;
        let mut h = blake3::Hasher::new();
        h.update(b"zkinfer.tensor.v1");
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let dtype_name = format!("{dtype:?}");
        h.update(&(dtype_name.len() as u64).to_le_bytes());
        h.update(dtype_name.as_bytes());
        h.update(&(dims.len() as u64).to_le_bytes());
        for d in dims {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&buf);
        leaves.push(*h.finalize().as_bytes());
    }
    Ok(ModelId(merkle_root(leaves)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_root_depends_on_every_leaf_and_order() {
        let leaves: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        let root = merkle_root(leaves.clone());
        for i in 0..5 {
            let mut changed = leaves.clone();
            changed[i][0] ^= 1;
            assert_ne!(merkle_root(changed), root);
        }
        let mut swapped = leaves.clone();
        swapped.swap(0, 1);
        assert_ne!(merkle_root(swapped), root);
    }

    #[test]
    fn value_encoding_separates_types() {
        let mut a = Vec::new();
        encode(&Value::U32(1), &mut a);
        let mut b = Vec::new();
        encode(&Value::I32(1), &mut b);
        assert_ne!(a, b);
    }
}
