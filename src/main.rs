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
    // A token allocates and frees a few buffers of megabytes (the logits, their
    // fixed-point copy): glibc would map each afresh and return it at once,
    // so every token paid for zeroed pages. Keep such buffers in the heap.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
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
