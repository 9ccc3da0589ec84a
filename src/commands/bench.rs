//! `zkinfer bench`: `runtime` reads the model and runs `harness::runtime_bench`,
//! `api` runs `harness::api_bench`; `conformance` and `throughput` have
//! their own modules.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use harness::api_bench::ApiBenchConfig;
use harness::runtime_bench::{self, BenchConfig, BenchError, PROMPT};
use models::tokenizer::Tokenizer;
use models::Model;

use super::model::open_gguf;
use super::serve::set_threads;
use super::CliError;
use crate::cli::{BenchApiArgs, BenchCommand, BenchRuntimeArgs};

pub fn run(command: BenchCommand) -> Result<ExitCode, CliError> {
    match command {
        BenchCommand::Runtime(args) => runtime(args),
        BenchCommand::Conformance(args) => super::conformance::run(args),
        BenchCommand::Throughput(args) => super::throughput::run(args),
        BenchCommand::Api(args) => api(args),
    }
}

fn api(args: BenchApiArgs) -> Result<ExitCode, CliError> {
    set_threads(args.threads);
    let mut served = super::api::ServedModel::read(&args.model.path(), None)?;
    let model = served.load(&Device::Cpu)?;
    let engine = served.engine(::api::engine::Backend::Local(Arc::new(model)), None, None);
    let report = harness::api_bench::run(
        engine,
        PROMPT,
        &ApiBenchConfig {
            tokens: args.tokens,
            runs: args.runs,
            clients: args.clients,
            duration: Duration::from_secs(args.seconds),
            load_tokens: args.load_tokens,
            max_concurrent: args.max_concurrent,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime(args: BenchRuntimeArgs) -> Result<ExitCode, CliError> {
    let model = args.model.path();
    if let Some(threads) = args.in_process {
        // The single-process child: candle sizes its thread pool at first use.
        set_threads(Some(threads.max(1)));
    }
    let (content, mut reader) = open_gguf(&model)?;
    let tokenizer = Tokenizer::from_gguf(&content)?;
    let shape = Model::shape_of(&content)?;
    let prompt = tokenizer.encode(PROMPT, true);
    if args.in_process.is_some() {
        let whole = Model::from_gguf(&content, &mut reader, &Device::Cpu, 0..shape.layers)?;
        let run = runtime_bench::single_process(&whole, &prompt, args.tokens)?;
        println!("{}", serde_json::to_string(&run)?);
        return Ok(ExitCode::SUCCESS);
    }
    let model_id = models::model_id::model_id(&content, &mut reader)
        .map_err(|e| CliError::unreadable(format!("{}: {e}", model.display())))?;
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cache/zkinfer-llama-venv/bin/python"))
            .unwrap_or_default();
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let report = runtime_bench::run(BenchConfig {
        zkinfer: std::env::current_exe()?,
        model,
        shape,
        model_id,
        prompt,
        tokens: args.tokens,
        python,
    })?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

impl From<BenchError> for CliError {
    fn from(e: BenchError) -> CliError {
        CliError::failed(e.to_string())
    }
}
