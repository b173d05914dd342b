//! Reporting of errors in user code and user data.
//!
//! Policy: an exception from a user call, a value of the wrong type, a
//! frame that can't be decoded: the message is dropped, the error is
//! printed with the worker, the stage, the key and the cause, and it is
//! counted. With `--on-user-error fail` the worker exits non-zero instead.
//!
//! A poison input can arrive millions of times a second, so printing is
//! bounded: the first [`FULL_REPORTS`] errors of each stage come with their
//! traceback, the next ones up to [`LINE_REPORTS`] as one line each, and the
//! rest only as a periodic count. Counting is never bounded.

use pyo3::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{error, warn};

const FULL_REPORTS: u64 = 5;
const LINE_REPORTS: u64 = 100;
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// What to do after a user error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUserError {
    Skip,
    Fail,
}

/// The worker must stop: a user error under `--on-user-error fail`, or a
/// failure the engine can't recover from.
#[derive(Debug)]
pub struct Fatal(pub String);

/// Counts of dropped messages per place (stage or source name).
pub struct UserErrors {
    worker: String,
    policy: OnUserError,
    counts: BTreeMap<String, u64>,
    unreported: u64,
    last_summary: Instant,
}

impl UserErrors {
    pub fn new(worker: &str, policy: OnUserError) -> Self {
        UserErrors {
            worker: worker.to_string(),
            policy,
            counts: BTreeMap::new(),
            unreported: 0,
            last_summary: Instant::now(),
        }
    }

    /// Records a dropped message at `place` (e.g. `stage 'count word'
    /// (state_computation)`), with `detail` (key, message kind) and `cause`.
    /// `traceback` is printed only for the first few errors of a place.
    pub fn report(
        &mut self,
        place: &str,
        detail: &str,
        cause: &str,
        traceback: Option<&str>,
    ) -> Result<(), Fatal> {
        let n = self.counts.entry(place.to_string()).or_insert(0);
        *n += 1;
        let line = format!("{cause}; message dropped ({} dropped here so far)", *n);
        let place = format!("{place}, {detail}");
        let with_traceback = |tb: Option<&str>| match tb {
            Some(tb) => format!("{line}\n{}", tb.trim_end()),
            None => line.clone(),
        };
        if self.policy == OnUserError::Fail {
            error!(place = %place, "{}", with_traceback(traceback));
            return Err(Fatal(format!(
                "stopping: --on-user-error fail, after: worker '{}', {place}: {line}",
                self.worker
            )));
        }
        if *n <= FULL_REPORTS {
            error!(place = %place, "{}", with_traceback(traceback));
        } else if *n <= LINE_REPORTS {
            error!(place = %place, "{line}");
        } else {
            self.unreported += 1;
        }
        Ok(())
    }

    /// Records a Python exception raised by a user call.
    pub fn report_py(
        &mut self,
        py: Python<'_>,
        place: &str,
        detail: &str,
        err: PyErr,
    ) -> Result<(), Fatal> {
        let cause = err.to_string();
        let traceback = format_traceback(py, &err);
        self.report(place, detail, &cause, traceback.as_deref())
    }

    /// Prints a count of errors that were not printed one by one, at most
    /// every few seconds.
    pub fn maybe_summarise(&mut self) {
        if self.unreported > 0 && self.last_summary.elapsed() >= SUMMARY_EVERY {
            warn!(
                "{} more messages dropped after errors (not printed one by one); totals: {}",
                self.unreported,
                self.totals_text()
            );
            self.unreported = 0;
            self.last_summary = Instant::now();
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn totals_text(&self) -> String {
        if self.counts.is_empty() {
            return "none".into();
        }
        self.counts
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The counts as a JSON object, for the external channel's status report.
    /// Dropped messages per place.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.clone()
    }
}

/// The Python traceback of `err`, as `traceback.format_exception` prints it.
pub fn format_traceback(py: Python<'_>, err: &PyErr) -> Option<String> {
    let tb = py.import("traceback").ok()?;
    let lines = tb
        .call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )
        .ok()?;
    let parts: Vec<String> = lines.extract().ok()?;
    Some(parts.concat())
}
