//! Child processes that never outlive the process that started them: a
//! guard kills and reaps each on drop (errors included), `PR_SET_PDEATHSIG`
//! (Linux) kills them if the parent dies, and a terminal's Ctrl-C reaches the
//! whole process group.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use client::Hop;

/// A command whose process is killed when this one dies (Linux), so that no
/// child outlives the bench, whatever ends it.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    #[allow(unused_mut)]
    let mut cmd = Command::new(program);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// A `zkinfer serve` child, killed and reaped on drop.
pub struct ServeChild {
    child: Child,
    pub addr: SocketAddr,
    pub layers: Range<usize>,
    /// Kept open: the node must never write to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl ServeChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn hop(&self) -> Hop {
        Hop {
            addr: self.addr.into(),
            layers: self.layers.clone(),
        }
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills and reaps children that are not yet wrapped in a [`ServeChild`].
fn kill_all(children: &mut [(Child, Range<usize>, PathBuf)]) {
    for (child, _, _) in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Why serving children did not start.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting zkinfer serve: {0}")]
    Spawn(std::io::Error),
    #[error("zkinfer serve --layers {}..{} did not start: {log}", layers.start, layers.end)]
    NotListening { layers: Range<usize>, log: String },
}

/// Starts one `ZKINFER serve --threads THREADS` per range on ephemeral
/// loopback ports (loading in parallel) and waits until each listens; their
/// logs go to `dir`.
pub fn start_serve_children(
    zkinfer: &Path,
    model: &Path,
    ranges: &[Range<usize>],
    threads: usize,
    dir: &Path,
) -> Result<Vec<ServeChild>, ChildError> {
    let mut started = Vec::new();
    for layers in ranges {
        let log = dir.join(format!(
            "serve-{}-{}-{}.log",
            layers.start,
            layers.end,
            started.len()
        ));
        let spawned = std::fs::File::create(&log)
            .map_err(|source| ChildError::Log {
                path: log.clone(),
                source,
            })
            .and_then(|stderr| {
                command(zkinfer)
                    .args(["serve", "--model"])
                    .arg(model)
                    .args(["--layers", &format!("{}..{}", layers.start, layers.end)])
                    .args(["--listen", "127.0.0.1:0"])
                    .args(["--threads", &threads.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(stderr)
                    .spawn()
                    .map_err(ChildError::Spawn)
            });
        match spawned {
            Ok(child) => started.push((child, layers.clone(), log)),
            Err(e) => {
                kill_all(&mut started);
                return Err(e);
            }
        }
    }
    let mut nodes = Vec::new();
    let mut pending: Vec<_> = started.into_iter().rev().collect();
    while let Some((mut child, layers, log)) = pending.pop() {
        let mut line = String::new();
        let stdout = child.stdout.take().map(BufReader::new);
        let read = stdout.map(|mut out| (out.read_line(&mut line), out));
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split(": ").next())
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, addr) {
            (Some((Ok(_), stdout)), Some(addr)) => nodes.push(ServeChild {
                child,
                addr,
                layers,
                _stdout: stdout,
            }),
            _ => {
                // The nodes already started die with `nodes`.
                let _ = child.kill();
                let _ = child.wait();
                kill_all(&mut pending);
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(ChildError::NotListening {
                    layers,
                    log: log.trim().to_string(),
                });
            }
        }
    }
    Ok(nodes)
}
