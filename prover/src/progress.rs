//! Progress of long work on stderr: a spinner or bar on a terminal, plain lines
//! otherwise, so a log or a CI run shows what a minutes-long proof is doing.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    /// Plain lines instead of the bar (stderr is not a terminal).
    lines: bool,
    show: bool,
    label: String,
    total: u64,
    done: AtomicU64,
    start: Instant,
}

impl Progress {
    fn new(show: bool, bar: impl FnOnce() -> ProgressBar, label: String, total: u64) -> Self {
        let lines = !std::io::stderr().is_terminal();
        let bar = if show && !lines {
            bar()
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            lines,
            show,
            label,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// A spinner with a message that changes as the work goes.
    pub fn spinner(show: bool, message: String) -> Self {
        let progress = Progress::new(
            show,
            || {
                let bar = ProgressBar::new_spinner().with_message(message.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            },
            String::new(),
            0,
        );
        progress.line(&message);
        progress
    }

    /// A count of `total` items, each reported as done with [`Progress::inc`].
    pub fn counter(show: bool, total: u64, label: &str) -> Self {
        let template = format!("{label} {{bar:30}} {{pos}}/{{len}} ({{elapsed}}, eta {{eta}})");
        let progress = Progress::new(
            show,
            || {
                let bar = ProgressBar::new(total)
                    .with_style(ProgressStyle::with_template(&template).expect("valid template"));
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            },
            label.to_string(),
            total,
        );
        progress.line(&format!("{label}: 0 of {total}"));
        progress
    }

    fn line(&self, text: &str) {
        if self.show && self.lines {
            eprintln!("{text}");
        }
    }

    pub fn set_message(&self, message: String) {
        self.line(&message);
        self.bar.set_message(message);
    }

    /// One more item done (from any thread).
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.inc(1);
        self.line(&format!(
            "{}: {done} of {} ({:.1} s)",
            self.label,
            self.total,
            self.start.elapsed().as_secs_f64()
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
