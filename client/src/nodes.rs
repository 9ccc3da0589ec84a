//! `nodes.toml`: the nodes a client may route through.
//!
//! ```toml
//! [[node]]
//! addr = "127.0.0.1:7001"
//! layers = "0..9"
//! ```

use std::net::SocketAddr;
use std::ops::Range;

use crate::Hop;

/// Why a nodes file or a layer range was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodesError {
    #[error("{0}")]
    Syntax(String),
    #[error("node {addr}: {source}")]
    Layers {
        addr: SocketAddr,
        #[source]
        source: LayersError,
    },
    #[error("no [[node]] entries")]
    Empty,
}

/// Why a layer range `A..B` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayersError {
    #[error("expected a range like 0..9, got {0:?}")]
    NotARange(String),
    #[error("{bound:?} in {range:?} is not a layer index")]
    NotAnIndex { bound: String, range: String },
    #[error("empty layer range {0:?}: the start must be below the end")]
    Empty(String),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesFile {
    node: Vec<NodeEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    addr: SocketAddr,
    layers: String,
}

/// The candidate hops of a nodes file, in file order.
pub fn parse_nodes(text: &str) -> Result<Vec<Hop>, NodesError> {
    let file: NodesFile = toml::from_str(text).map_err(|e| NodesError::Syntax(e.to_string()))?;
    if file.node.is_empty() {
        return Err(NodesError::Empty);
    }
    file.node
        .into_iter()
        .map(|n| {
            let layers = parse_layers(&n.layers).map_err(|source| NodesError::Layers {
                addr: n.addr,
                source,
            })?;
            Ok(Hop {
                addr: n.addr.into(),
                layers,
            })
        })
        .collect()
}

/// A non-empty layer range written `A..B`.
pub fn parse_layers(range: &str) -> Result<Range<usize>, LayersError> {
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| LayersError::NotARange(range.to_string()))?;
    let index = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| LayersError::NotAnIndex {
                bound: v.to_string(),
                range: range.to_string(),
            })
    };
    let (a, b) = (index(a)?, index(b)?);
    if a >= b {
        return Err(LayersError::Empty(range.to_string()));
    }
    Ok(a..b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "[[node]]\naddr = \"127.0.0.1:7001\"\nlayers = \"0..9\"\n\n[[node]]\naddr = \"127.0.0.1:7002\"\nlayers = \"9..18\"\n";

    #[test]
    fn reads_hops_in_file_order() {
        let hops = parse_nodes(FILE).unwrap();
        assert_eq!(
            hops,
            vec![
                Hop {
                    addr: "127.0.0.1:7001"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                    layers: 0..9
                },
                Hop {
                    addr: "127.0.0.1:7002"
                        .parse::<std::net::SocketAddr>()
                        .unwrap()
                        .into(),
                    layers: 9..18
                },
            ]
        );
    }

    #[test]
    fn every_mutation_is_refused() {
        let mutations = [
            (FILE.replace("0..9", "9..9"), "empty"),
            (FILE.replace("0..9", "0-9"), "not a range"),
            (FILE.replace("0..9", "0..x"), "not an index"),
            (FILE.replace("0..9", "-1..9"), "not an index"),
            (FILE.replace("127.0.0.1:7001", "127.0.0.1"), "syntax"),
            (
                FILE.replace("layers = \"9..18\"", "layer = \"9..18\""),
                "syntax",
            ),
            (FILE.replace("[[node]]", "[[nodes]]"), "syntax"),
            (format!("{FILE}extra = 1\n"), "syntax"),
            (String::new(), "syntax"),
        ];
        for (text, kind) in mutations {
            let err = parse_nodes(&text).unwrap_err();
            let matches = match kind {
                "empty" => matches!(
                    err,
                    NodesError::Layers {
                        source: LayersError::Empty(_),
                        ..
                    }
                ),
                "not a range" => matches!(
                    err,
                    NodesError::Layers {
                        source: LayersError::NotARange(_),
                        ..
                    }
                ),
                "not an index" => matches!(
                    err,
                    NodesError::Layers {
                        source: LayersError::NotAnIndex { .. },
                        ..
                    }
                ),
                _ => matches!(err, NodesError::Syntax(_)),
            };
            assert!(matches, "{kind}: {err:?} for {text:?}");
        }
    }

    #[test]
    fn a_file_without_nodes_is_refused() {
        assert_eq!(parse_nodes("node = []\n"), Err(NodesError::Empty));
    }
}
