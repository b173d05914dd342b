//! Live progress of `quoll send` and `quoll receive` on a terminal.
//!
//! A [`Progress`] is a bar (when the total is known) or a counter with the
//! rate, drawn on the process's stderr by indicatif at most 10 times a
//! second. It exists only when the tool runs with the process's own stderr
//! and that stderr is a terminal (see [`crate::run`]); piped, redirected or
//! run in-process through [`crate::run_with_io`], a tool draws nothing and
//! its output is exactly the text lines it always printed.
//!
//! Invariant: while a bar is on screen, text for stderr goes through
//! [`Progress::line`], which lifts the bar, writes the line and redraws it,
//! so lines and bar never overwrite each other. The bar is cleared before
//! the tool's final report line.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second.
const REFRESH_HZ: u8 = 10;

/// A progress display, or nothing when progress is off.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// No display.
    pub fn off() -> Progress {
        Progress { bar: None }
    }

    /// A display when `on`: a bar out of `total` messages, or a running
    /// count when the total is unknown. `tool` names the tool ("send").
    pub fn new(on: bool, total: Option<u64>, tool: &str) -> Progress {
        if !on {
            return Progress::off();
        }
        let bar =
            ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(REFRESH_HZ));
        // The templates are constants, checked by the tests.
        if let Ok(style) = style(total.is_some()) {
            bar.set_style(style);
        }
        bar.set_prefix(format!("quoll {tool}"));
        Progress { bar: Some(bar) }
    }

    /// True when something is drawn.
    pub fn is_on(&self) -> bool {
        self.bar.is_some()
    }

    /// Messages done so far.
    pub fn set(&self, count: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(count);
        }
    }

    /// A short note after the counts (e.g. open connections).
    pub fn note(&self, text: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text);
        }
    }

    /// Writes one line to `err` without garbling the bar.
    pub fn line(&self, err: &mut dyn Write, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| {
                let _ = writeln!(err, "{text}");
                let _ = err.flush();
            }),
            None => {
                let _ = writeln!(err, "{text}");
            }
        }
    }

    /// Takes the bar off the screen (before the final report line).
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The look of the display: a bar when the total is known.
fn style(known_total: bool) -> Result<ProgressStyle, indicatif::style::TemplateError> {
    let template = if known_total {
        "{spinner} {prefix} [{bar:30}] {human_pos}/{human_len} msgs, {per_sec}, eta {eta} {msg}"
    } else {
        "{spinner} {prefix} {human_pos} msgs, {per_sec}, {elapsed} {msg}"
    };
    Ok(ProgressStyle::with_template(template)?.progress_chars("=> "))
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error path returns early: leave no half-drawn bar behind.
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_draws_nothing_and_passes_lines_through() {
        let p = Progress::new(false, Some(10), "send");
        assert!(!p.is_on());
        p.set(5);
        p.note("x".into());
        let mut err = Vec::new();
        p.line(&mut err, "quoll receive: connection from 127.0.0.1:1");
        assert_eq!(err, b"quoll receive: connection from 127.0.0.1:1\n");
    }

    #[test]
    fn templates_are_valid() {
        assert!(style(true).is_ok());
        assert!(style(false).is_ok());
        for total in [Some(3), None] {
            let p = Progress::new(true, total, "send");
            assert!(p.is_on());
            let bar = p.bar.as_ref().unwrap();
            // Keep the test's terminal clean.
            bar.set_draw_target(ProgressDrawTarget::hidden());
            p.set(2);
            assert_eq!(bar.position(), 2);
            assert_eq!(bar.length(), total);
            assert_eq!(bar.prefix(), "quoll send");
        }
    }
}
