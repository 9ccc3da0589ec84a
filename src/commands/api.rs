//! `zkinfer api`: the OpenAI-compatible endpoint (`api`) over a model in
//! this process or a chain of nodes. The port answers at once; `/health`
//! says 503 until the model is loaded or the chain answers.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use api::audits::Auditor;
use api::chat::ChatTemplate;
use api::engine::{Backend, Engine};
use api::{ApiConfig, AppState};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use client::generation::{Backend as Generation, ModelInfo};
use models::tokenizer::Tokenizer;
use models::{Model, ModelShape};
use transcript::ProvingPolicy;

use super::generate::{read_nodes, session_config};
use super::model::open_gguf;
use super::serve::{set_threads, tokio_runtime};
use super::{cache, CliError};
use crate::cli::{ApiArgs, DeviceKind};

/// How long to wait before asking an unreachable chain of nodes again.
const RETRY: Duration = Duration::from_secs(2);

/// A model file read for serving: all an [`Engine`] needs but where it
/// runs, and the file, open, to load the weights from.
pub struct ServedModel {
    pub name: String,
    pub info: ModelInfo,
    pub shape: ModelShape,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub content: gguf_file::Content,
    pub reader: BufReader<File>,
}

impl ServedModel {
    /// Reads `path`'s metadata, tokenizer, chat template and model id;
    /// `name` defaults to the file name without `.gguf`.
    pub fn read(path: &Path, name: Option<String>) -> Result<ServedModel, CliError> {
        let (content, mut reader) = open_gguf(path)?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let shape = Model::shape_of(&content)?;
        let id = models::model_id::model_id(&content, &mut reader)
            .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))?;
        let template = match content.metadata.get("tokenizer.chat_template") {
            Some(gguf_file::Value::String(source)) => Some(source.clone()),
            _ => None,
        };
        let token_text = |id: u32| tokenizer.token(id).unwrap_or_default().to_string();
        let template = ChatTemplate::new(
            template,
            &token_text(tokenizer.bos()),
            &token_text(tokenizer.eos()),
        )
        .map_err(|e| CliError::unreadable(format!("{}: its chat template: {e}", path.display())))?;
        let name = name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        Ok(ServedModel {
            name,
            info: ModelInfo {
                id: Some(id),
                layers: shape.layers,
                vocab: shape.vocab,
                context: shape.context,
            },
            shape,
            tokenizer,
            template,
            content,
            reader,
        })
    }

    /// Loads every layer onto `device`.
    pub fn load(&mut self, device: &Device) -> Result<Model, CliError> {
        Ok(Model::from_gguf(
            &self.content,
            &mut self.reader,
            device,
            0..self.shape.layers,
        )?)
    }

    pub fn engine(
        self,
        backend: Backend,
        proving: Option<ProvingPolicy>,
        auditor: Option<Auditor>,
    ) -> Engine {
        Engine {
            name: self.name,
            model: self.info,
            tokenizer: self.tokenizer,
            template: self.template,
            backend,
            proving,
            auditor,
        }
    }
}

pub fn run(args: ApiArgs) -> Result<ExitCode, CliError> {
    let proving = args.prove.0;
    let remote = args.nodes.is_some() || args.network.network;
    if proving.is_some() && !remote {
        return Err(CliError::unreadable(
            "--prove needs --nodes or --network: the head node of a chain proves (zkinfer serve --prove); \
             this process only generates",
        ));
    }
    if args.network.network && args.audit_sample.is_some() {
        return Err(CliError::unreadable(
            "--audit-sample reaches nodes by IP:PORT: use it with --nodes (docs/network.md, \"Not yet\")",
        ));
    }
    if remote && args.compute.device != DeviceKind::Cpu {
        return Err(CliError::unreadable(
            "--device is for the in-process model: with --nodes each node picks its own (zkinfer serve --device)",
        ));
    }
    set_threads(args.compute.threads);
    let path = args.model.path();
    let mut served = ServedModel::read(&path, args.name.clone())?;
    let (name, id) = (
        served.name.clone(),
        served.info.id.expect("read sets the id"),
    );
    let listed = args.nodes.as_deref().map(read_nodes).transpose()?;
    let device = match remote {
        false => Some(super::device::open(args.compute.device)?),
        true => None,
    };

    let runtime = tokio_runtime()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .map_err(|e| CliError::failed(format!("listening on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let state = AppState::new(ApiConfig {
        max_concurrent: args.max_concurrent,
        max_proving: args.max_proving,
        max_tokens: args.max_tokens,
        retention: Duration::from_secs(args.retention),
        max_stored: args.max_stored,
        max_stored_bytes: args.max_stored_mb << 20,
        params_dir: cache(&args.cache).dir().to_path_buf(),
    });
    let auditor = match args.audit_sample {
        Some(sample) => Some(
            Auditor::start(
                super::audit::open_replayer(&path)?,
                sample,
                Arc::clone(state.metrics()),
            )
            .map_err(|e| CliError::failed(format!("starting the auditor: {e}")))?,
        ),
        None => None,
    };
    eprintln!("[api on http://{addr}: model {name} ({id}); /health is 503 until it is ready]");

    let loading = Arc::clone(&state);
    let activations = args.activations;
    let standby = args.standby;
    let network = args.network.network.then_some(args.network.bootstrap);
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        let candidates = match (listed, network) {
            (Some(nodes), _) => Some(nodes),
            // Found once, before the first answer; the hosts live on the
            // server's runtime, as long as the nodes' addresses are used.
            (None, Some(bootstrap)) => loop {
                loading.not_ready("looking for nodes in the network");
                match super::p2p::discover_nodes(
                    &handle,
                    bootstrap.clone(),
                    id,
                    served.shape.layers,
                ) {
                    Ok((_host, hops)) => break Some(hops),
                    Err(e) => {
                        loading.not_ready(format!("no nodes found yet: {e}"));
                        std::thread::sleep(RETRY);
                    }
                }
            },
            (None, None) => None,
        };
        let backend = match (candidates, device) {
            (None, device) => {
                loading.not_ready("loading the model");
                match served.load(&device.unwrap_or(Device::Cpu)) {
                    Ok(model) => Backend::Local(Arc::new(model)),
                    Err(e) => {
                        eprintln!("error: loading {}: {e}", path.display());
                        std::process::exit(2);
                    }
                }
            }
            (Some(nodes), _) => {
                let shape = served.shape;
                let (session, encoding) =
                    session_config(shape.hidden, activations, standby, &nodes);
                // Ready once a whole chain answers.
                loop {
                    match Generation::remote(nodes.clone(), shape.layers, id, session.clone()) {
                        Ok(mut chain) => {
                            chain.finish();
                            break;
                        }
                        Err(e) => {
                            loading.not_ready(format!("no chain of nodes yet: {e}"));
                            std::thread::sleep(RETRY);
                        }
                    }
                }
                eprintln!("[activations {encoding:?}]");
                Backend::Remote { nodes, session }
            }
        };
        loading.ready(served.engine(backend, proving, auditor));
        eprintln!("[api ready]");
    });
    runtime
        .block_on(api::serve(listener, state))
        .map_err(|e| CliError::failed(format!("serving http://{addr}: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
