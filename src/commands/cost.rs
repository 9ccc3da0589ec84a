//! `zkinfer cost`: placeholder replaced below.
use std::process::ExitCode;

use super::CliError;
use crate::cli::CostArgs;

pub fn run(_args: CostArgs) -> Result<ExitCode, CliError> {
    Err(CliError::failed("not yet"))
}
