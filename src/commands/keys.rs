//! `zkinfer keygen` and the key files nodes sign receipts with.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use rand::rngs::SysRng;
use rand_core::TryRng;
use verifier::receipt::SecretKey;

use super::CliError;
use crate::cli::KeygenArgs;

/// Writes a fresh secret key to `args.out` (mode 0600, never over an
/// existing file) and prints the public key. The secret is never printed.
pub fn keygen(args: KeygenArgs) -> Result<ExitCode, CliError> {
    let mut seed = [0u8; 64];
    SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| CliError::failed(format!("the system's random source: {e}")))?;
    let key = SecretKey::from_seed(&seed)
        .ok_or_else(|| CliError::failed("the random seed reduced to zero; run keygen again"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&args.out).map_err(|e| {
        CliError::failed(format!(
            "creating {}: {e} (keygen never overwrites a key file)",
            args.out.display()
        ))
    })?;
    writeln!(file, "{}", key.to_hex())
        .map_err(|e| CliError::failed(format!("writing {}: {e}", args.out.display())))?;
    println!("{}", key.public().to_hex());
    eprintln!(
        "[secret key written to {}; the line above is the public key]",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads a key file written by [`keygen`].
pub fn read_secret(path: &Path) -> Result<SecretKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::unreadable(format!("reading {}: {e}", path.display())))?;
    SecretKey::from_hex(text.trim()).map_err(|e| {
        CliError::unreadable(format!(
            "{}: {e} (create one with `zkinfer keygen --out FILE`)",
            path.display()
        ))
    })
}
