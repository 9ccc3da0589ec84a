//! Nodes of test chains on loopback: a head node's prover, and a node served
//! on a fresh port.

use std::path::PathBuf;
use std::sync::Arc;

use circuits::CircuitShape;
use client::Hop;
use models::Model;
use node::proving::{ProofService, ProvingConfig};
use node::{serve, NodeConfig};

/// A prover for a test chain's head node: circuit `shape`, public
/// parameters in `params_dir`, 2 threads, 64 positions of logits kept.
pub fn test_prover(shape: CircuitShape, params_dir: PathBuf) -> Arc<ProofService> {
    Arc::new(ProofService::start(
        ProvingConfig {
            shape,
            params_dir,
            threads: 2,
            max_positions: 64,
            max_total_positions: 64,
        },
        |_| {},
    ))
}

/// Serves `model` as `config` says on a fresh loopback port of `runtime`;
/// returns its hop.
pub fn spawn_node(
    runtime: &tokio::runtime::Runtime,
    model: Model,
    config: NodeConfig,
) -> std::io::Result<Hop> {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let layers = config.layers.clone();
    runtime.spawn(serve(listener, Arc::new(model), config));
    Ok(Hop {
        addr: addr.into(),
        layers,
    })
}
