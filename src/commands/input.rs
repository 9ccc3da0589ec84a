//! Files the commands read, with limits: a file cannot make zkinfer hold more
//! than its format or the cap here allows, and garbage is refused on its first
//! bytes (JSON is parsed as it streams in).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::de::DeserializeOwned;

use verifier::Bundle;

use super::CliError;

/// Largest JSON input read (decode records, transcripts, fraud proofs): the
/// transcript of a 32-token answer with every logit of a 262,144-token
/// vocabulary inline is about 90 MB.
pub const MAX_JSON_BYTES: u64 = 1 << 30;

fn open(path: &Path) -> Result<File, CliError> {
    File::open(path).map_err(|e| CliError::unreadable(format!("reading {}: {e}", path.display())))
}

/// Counts what it passes on, to tell "too large" from "malformed".
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Parses the JSON file at `path` as `what`, reading at most [`MAX_JSON_BYTES`].
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, CliError> {
    let file = open(path)?;
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() > MAX_JSON_BYTES)
    {
        return Err(CliError::unreadable(format!(
            "{}: larger than the {MAX_JSON_BYTES}-byte limit for a {what}",
            path.display()
        )));
    }
    let mut reader = Counted {
        inner: BufReader::new(file).take(MAX_JSON_BYTES + 1),
        read: 0,
    };
    let parsed = serde_json::from_reader(&mut reader);
    if reader.read > MAX_JSON_BYTES {
        return Err(CliError::unreadable(format!(
            "{}: larger than the {MAX_JSON_BYTES}-byte limit for a {what}",
            path.display()
        )));
    }
    parsed.map_err(|e| CliError::unreadable(format!("{}: not a {what}: {e}", path.display())))
}

/// Reads a proof bundle, holding no more than its header allows.
pub fn read_bundle(path: &Path) -> Result<Bundle, CliError> {
    Bundle::read(BufReader::new(open(path)?))
        .map_err(|e| CliError::unreadable(format!("{}: {e}", path.display())))
}
