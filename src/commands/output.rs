//! Output files, each appearing whole or not at all.

use std::fs;
use std::path::Path;

use client::generation::ProofOutcome;
use prover::Records;
use transcript::{RecordsRef, Transcript};

use super::CliError;

/// Writes through a temporary file so a failed run never leaves a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    PendingFile::create(path)?.commit(bytes)
}

/// An output written through a temporary file beside it. [`PendingFile::create`]
/// checks before the work that the file can be written there (it creates the
/// temporary and removes it at once, so a run killed during the work leaves
/// nothing); [`PendingFile::commit`] writes the temporary and renames it into
/// place, removing it if that fails.
pub struct PendingFile {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl PendingFile {
    pub fn create(path: &Path) -> std::io::Result<PendingFile> {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        fs::File::create(&tmp)?;
        fs::remove_file(&tmp)?;
        Ok(PendingFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    pub fn commit(self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let result = (|| {
            let mut file = fs::File::create(&self.tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&self.tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }
}

/// Writes the collected proofs and reports failures, one stderr line each.
pub fn write_proofs(path: &Path, outcome: &ProofOutcome) -> Result<(), CliError> {
    for (position, message) in &outcome.failures {
        eprintln!("[proof of position {position} failed: {message}]");
    }
    let Some(bundle) = &outcome.bundle else {
        return Err(CliError::failed(format!(
            "no proofs came back for positions {:?}; nothing written to {}",
            outcome.asked,
            path.display()
        )));
    };
    let bytes = bundle.to_bytes();
    write_atomic(path, &bytes)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    eprintln!(
        "[{} proofs of positions {:?} ({} bytes) written to {} after {:.1} s of waiting]",
        bundle.proofs.len(),
        outcome.asked,
        bytes.len(),
        path.display(),
        outcome.wait.as_secs_f64()
    );
    Ok(())
}

/// Writes `transcript` to `path`, with the logits of `logits` in the side
/// file `<path>.logits.bin` (written first) if given, each atomically.
pub fn write_transcript(
    path: &Path,
    mut transcript: Transcript,
    logits: Option<&Records>,
) -> Result<(), CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::failed(format!("{}: {e}", path.display()));
    transcript.records = match logits {
        Some(records) => {
            let bytes =
                transcript::encode_logits(records.vocab, &records.steps).map_err(|e| failed(&e))?;
            let name = format!(
                "{}.logits.bin",
                path.file_stem().unwrap_or_default().to_string_lossy()
            );
            let side = path.with_file_name(&name);
            write_atomic(&side, &bytes)
                .map_err(|e| CliError::failed(format!("writing {}: {e}", side.display())))?;
            Some(RecordsRef::File {
                path: name,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
                vocab: records.vocab,
                count: records.steps.len(),
            })
        }
        None => None,
    };
    let json = serde_json::to_vec(&transcript).map_err(|e| failed(&e))?;
    write_atomic(path, &json)
        .map_err(|e| CliError::failed(format!("writing {}: {e}", path.display())))?;
    eprintln!(
        "[transcript of {} tokens, {} hop records written to {}]",
        transcript.tokens.len(),
        transcript.hops.len(),
        path.display()
    );
    Ok(())
}
