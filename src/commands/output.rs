//! Output files that appear whole or not at all.

use std::fs;
use std::path::Path;

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
