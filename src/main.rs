//! `zkinfer`: prove and verify decode steps of LLM inference.
//!
//! Parsing lives in `cli`, each command in `commands`; the work is done by the
//! `circuits`, `prover` and `verifier` crates.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Exit quietly when the reader of our output goes away (`zkinfer inspect x | head`)
    // instead of panicking on a failed print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}
