//! `zkinfer`: prove and verify decode steps of LLM inference.
//!
//! Parsing lives in `cli`, each command in `commands`; the work is done by the
//! `circuits`, `prover` and `verifier` crates.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}
