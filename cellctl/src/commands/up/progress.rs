//! One line per step of `up` on stderr: a spinner while the step runs and a
//! check mark (or a cross) when it ends, on a terminal; plain lines otherwise
//! (logs, CI, tests), so the record of what happened is the same.

use std::{borrow::Cow, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

/// A running step.
#[derive(Debug)]
pub struct Step {
    bar: ProgressBar,
    what: String,
}

/// Starts a step named `what`.
pub fn step(what: impl Into<String>) -> Step {
    let what = what.into();
    let bar = ProgressBar::new_spinner();
    if !bar.is_hidden() {
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.clone());
        bar.enable_steady_tick(Duration::from_millis(100));
    }
    Step { bar, what }
}

impl Step {
    /// The step succeeded; `detail` says how (`initialized`, `reused`).
    pub fn done(self, detail: &str) {
        self.end("ok", detail);
    }

    /// The step failed (the error itself is reported by the caller).
    pub fn failed(self) {
        self.end("FAILED", "");
    }

    fn end(self, mark: &str, detail: &str) {
        let line = if detail.is_empty() {
            format!("  [{mark}] {}", self.what)
        } else {
            format!("  [{mark}] {}: {detail}", self.what)
        };
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            self.bar.finish_with_message(Cow::Owned(line));
        }
    }
}

/// A line between steps (not a step itself).
pub fn note(line: &str) {
    eprintln!("{line}");
}
