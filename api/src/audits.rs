//! Audits of answers from a chain of signing nodes, in the background: a
//! thread of its own re-executes `sample` randomly drawn forward positions
//! of each answer against the nodes' audit trails (`audit::audit`, as
//! `zkinfer audit --transcript T --sample K` does) and counts the verdicts
//! in the metrics. At most [`QUEUE`] answers wait; past that an answer is
//! not audited (counted as skipped), so the queue never grows.

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use audit::fraud::{Replayer, Verdict};
use audit::{audit, sample_positions, AuditOptions};
use transcript::Transcript;

use crate::metrics::Metrics;

/// Answers waiting for an audit at most.
pub const QUEUE: usize = 16;

/// The auditing thread's door.
pub struct Auditor {
    queue: SyncSender<Transcript>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// Starts the thread, re-executing with `replayer` (the model's
    /// weights); `sample` positions per answer.
    pub fn start(
        mut replayer: Replayer,
        sample: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Auditor> {
        let (queue, answers) = sync_channel::<Transcript>(QUEUE);
        let counts = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        eprintln!("[api: audits off: {e}]");
                        return;
                    }
                };
                for transcript in answers {
                    let hops = transcript.hops.iter().map(|h| h.position).collect();
                    let positions = match sample_positions(&hops, sample) {
                        Ok(positions) => positions,
                        Err(e) => {
                            eprintln!("[api: no audit: the system's random source: {e}]");
                            counts.audit("failed");
                            continue;
                        }
                    };
                    let options = AuditOptions {
                        positions: Some(positions),
                        io_timeout: Duration::from_secs(30),
                        peers: None,
                    };
                    let dir = Path::new(".");
                    let verdict =
                        match runtime.block_on(audit(&transcript, dir, &mut replayer, &options)) {
                            Ok(report) => match report.verdict {
                                Verdict::Accept => "accept",
                                Verdict::Ambiguous => "ambiguous",
                                Verdict::Reject => "reject",
                            },
                            Err(e) => {
                                eprintln!(
                                    "[api: audit of request {} failed: {e}]",
                                    transcript.request_id
                                );
                                "failed"
                            }
                        };
                    counts.audit(verdict);
                }
            })?;
        Ok(Auditor { queue, metrics })
    }

    /// Queues `transcript` for an audit (or counts it skipped).
    pub fn submit(&self, transcript: Transcript) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(transcript)
        {
            self.metrics.audit("skipped");
        }
    }
}
