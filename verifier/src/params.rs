//! Public parameters (IPA over Vesta) cached on disk, keyed by `k`.
//!
//! Parameters are deterministic (hash-to-curve), so every party can generate the
//! same ones; generating them takes minutes at k >= 17, loading a cached copy
//! seconds. Files are written to a temporary name and renamed, so an interrupted
//! run never leaves a truncated cache entry.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use halo2_proofs::{pasta::EqAffine, poly::commitment::Params};

/// A directory of `params-k{k}.bin` files.
#[derive(Clone, Debug)]
pub struct ParamsCache {
    dir: PathBuf,
}

impl ParamsCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ParamsCache { dir: dir.into() }
    }

    /// `$ZKINFER_CACHE`, else `$XDG_CACHE_HOME/zkinfer`, else `~/.cache/zkinfer`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("ZKINFER_CACHE") {
            return dir.into();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("zkinfer")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("params-k{k}.bin"))
    }

    /// Loads the parameters for `k`, generating and storing them if absent or
    /// unreadable. `on_generate(k)` is called before a (slow) generation.
    pub fn load_or_generate(
        &self,
        k: u32,
        on_generate: impl FnOnce(u32),
    ) -> io::Result<Params<EqAffine>> {
        let path = self.path(k);
        if let Ok(file) = File::open(&path) {
            if let Ok(params) = Params::<EqAffine>::read(&mut BufReader::new(file)) {
                if params.k() == k {
                    return Ok(params);
                }
            }
        }
        on_generate(k);
        let params = Params::<EqAffine>::new(k);
        fs::create_dir_all(&self.dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating cache directory {}: {e}", self.dir.display()),
            )
        })?;
        let tmp = self
            .dir
            .join(format!(".params-k{k}.{}.tmp", unique_suffix()));
        {
            let mut out = BufWriter::new(File::create(&tmp)?);
            params.write(&mut out)?;
            out.flush()?;
        }
        fs::rename(&tmp, &path)?;
        Ok(params)
    }
}

/// A name part no other writer uses at the same time: threads of one process
/// and other processes may fill the same cache at once.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
