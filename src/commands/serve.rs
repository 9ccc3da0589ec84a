//! `zkinfer serve`: serve a layer range of a model over TCP or, with
//! `--network`, over libp2p (see `node`, docs/network.md).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use models::model_id::ModelId;
use models::Model;
use node::proving::{ProofService, ProvingConfig};
use node::{serve, serve_network_until, NodeConfig};

use super::model::open_gguf;
use super::CliError;
use crate::cli::ServeArgs;

/// How long a started frame may take to arrive, or an answer to be sent.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: ServeArgs) -> Result<ExitCode, CliError> {
    let device = super::device::open(args.compute.device)?;
    set_threads(args.compute.threads);
    let path = args.model.path();
    let (id, model) = load_shard(&path, args.layers.clone(), &device)?;
    let proving = if args.prove {
        Some(Arc::new(start_prover(&args, &model)?))
    } else {
        None
    };
    if args.network.network && args.key.is_none() {
        return Err(CliError::unreadable(
            "--network needs --key: the node's announcement binds its libp2p identity to its receipt key",
        ));
    }
    let throughput = measure_throughput(&model);
    let config = NodeConfig {
        audit_window: Duration::from_secs(args.audit_window),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        io_timeout: IO_TIMEOUT,
        capacity: args.capacity.capacity(),
        proving,
        signer: args
            .key
            .as_deref()
            .map(super::keys::read_secret)
            .transpose()?
            .map(Arc::new),
        ..NodeConfig::new(id, args.layers.clone())
    };
    let runtime = tokio_runtime()?;
    if args.network.network {
        let signer = config.signer.clone().expect("checked above");
        let offer = super::p2p::NodeOffer {
            model_id: id,
            layers: args.layers.clone(),
            throughput,
            stake_account: args.stake_account,
        };
        return runtime.block_on(async {
            let (host, incoming) = super::p2p::start_node_host(
                &signer,
                args.listen,
                args.network.bootstrap.clone(),
                args.via_relay,
                offer,
            )
            .await?;
            for addr in host
                .addresses()
                .await
                .map_err(|e| CliError::failed(e.to_string()))?
            {
                println!("listening on {addr}");
            }
            println!(
                "peer {}: layers {}..{} of {} (model id {id}), {throughput:.0} rows/s",
                host.peer_id(),
                args.layers.start,
                args.layers.end,
                path.display()
            );
            serve_network_until(incoming, Arc::new(model), config, std::future::pending())
                .await
                .map_err(|e| CliError::failed(format!("serving on {}: {e}", args.listen)))?;
            Ok(ExitCode::SUCCESS)
        });
    }
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| CliError::failed(format!("listening on {}: {e}", args.listen)))?;
        let addr = listener.local_addr().unwrap_or(args.listen);
        println!(
            "listening on {addr}: layers {}..{} of {} (model id {id})",
            args.layers.start,
            args.layers.end,
            path.display()
        );
        serve(listener, Arc::new(model), config)
            .await
            .map_err(|e| CliError::failed(format!("serving on {addr}: {e}")))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Rows per second through the shard, from a few one-row forwards: what the
/// node announces (its best of three, after one to warm up).
fn measure_throughput(model: &Model) -> f32 {
    let rows = || -> models::Result<f32> {
        let x = candle_core::Tensor::zeros(
            (1, 1, model.hidden_size()),
            candle_core::DType::F32,
            model.device(),
        )?;
        let mut best = f32::INFINITY;
        for _ in 0..4 {
            let mut cache = models::Cache::new();
            let start = std::time::Instant::now();
            model.forward_layers(&x, 0, &mut cache)?;
            best = best.min(start.elapsed().as_secs_f32());
        }
        Ok(1.0 / best.max(1e-6))
    };
    rows().unwrap_or(0.0)
}

/// Starts the node's prover: keys are built on its own thread while the node
/// already serves; proofs asked for meanwhile wait for them.
fn start_prover(args: &ServeArgs, model: &Model) -> Result<ProofService, CliError> {
    if !model.has_head() {
        return Err(CliError::failed(format!(
            "--prove needs the shard with the head: this node serves layers {}..{} of {}",
            args.layers.start,
            args.layers.end,
            model.layers()
        )));
    }
    let shape = args.circuit.shape(model.vocab())?;
    let config = ProvingConfig {
        shape,
        params_dir: super::cache(&args.cache).dir().to_path_buf(),
        threads: args
            .prove_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1),
        max_positions: MAX_PROVABLE_POSITIONS,
        max_total_positions: MAX_PROVABLE_POSITIONS_IN_ALL,
    };
    eprintln!(
        "[prover: building keys for {} (k = {}) in the background]",
        shape.describe(),
        shape.k()
    );
    Ok(ProofService::start(config, |ready| match ready {
        Ok(took) => eprintln!("[prover: keys ready in {:.1} s]", took.as_secs_f64()),
        Err(e) => eprintln!("[prover: {e}]"),
    }))
}

/// Logits rows a proving node keeps per request, the newest (about 1 MiB
/// each for the packaged model's vocabulary; dropped at End).
const MAX_PROVABLE_POSITIONS: usize = 512;
/// ... and over all requests: 1 GiB of logits at the packaged vocabulary.
const MAX_PROVABLE_POSITIONS_IN_ALL: usize = 1024;

/// Sets candle's and rayon's thread counts; they read them once, at first use.
pub fn set_threads(threads: Option<usize>) {
    if let Some(threads) = threads {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// A multi-threaded tokio runtime for the network side.
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("starting the network runtime: {e}")))
}

/// The model id of a GGUF file and the shard for `layers`.
fn load_shard(
    path: &Path,
    layers: std::ops::Range<usize>,
    device: &Device,
) -> Result<(ModelId, Model), CliError> {
    let (content, mut reader) = open_gguf(path)?;
    let id = models::model_id::model_id(&content, &mut reader)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
    let model = Model::from_gguf(&content, &mut reader, device, layers)
        .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    Ok((id, model))
}
