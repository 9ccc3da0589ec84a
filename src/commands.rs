//! The commands: read inputs, call the library crates, print results.

use std::fmt;
use std::process::ExitCode;

use verifier::ParamsCache;

use crate::cli::{CacheArgs, Cli, Command};

mod answer;
mod api;
mod audit;
mod bench;
mod conformance;
mod cost;
mod device;
mod generate;
mod input;
mod inspect;
mod keys;
mod ledger;
mod model;
mod output;
mod p2p;
mod prove;
mod serve;
mod throughput;
mod verify;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// Bad input or a refused request: exit 1.
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
    /// Unreadable input: exit 2.
    pub fn unreadable(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

/// Errors of the library crates: the request failed (exit 1), with the
/// library's own message.
macro_rules! failed_from {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for CliError {
            fn from(e: $error) -> CliError {
                CliError::failed(e.to_string())
            }
        }
    )*};
}

failed_from!(
    std::io::Error,
    serde_json::Error,
    circuits::ShapeError,
    prover::ProveError,
    prover::RecordError,
    transcript::TranscriptError,
    models::ModelError,
    models::tokenizer::TokenizerError,
    client::ClientError,
    client::generation::GenerationError,
    ::audit::AuditError,
    harness::cheats::SuiteError,
    harness::conformance::CandidateError,
);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Prove(args) => prove::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Cost(args) => cost::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Model(command) => model::run(command),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Api(args) => api::run(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Audit(args) => audit::run(args),
        Command::Ledger(args) => ledger::run(args),
        Command::Bootstrap(args) => p2p::bootstrap(args),
    }
}

pub fn cache(args: &CacheArgs) -> ParamsCache {
    ParamsCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ParamsCache::default_dir),
    )
}
