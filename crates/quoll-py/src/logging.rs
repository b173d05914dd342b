//! How a worker speaks: structured logs through `tracing`, and the fixed
//! Wallaroo lines that users and test harnesses wait for.
//!
//! Every log line is one `tracing` event rendered as
//!
//! ```text
//! quoll: [error: |warning: ]worker '<name>'[, <place>]: <message>[ key=value ...]
//! ```
//!
//! where `place` (an optional `place` field) names the source, stage, sink or
//! link as the user knows it. Info and below go to stdout, warnings and
//! errors to stderr. The level comes from `--log-level` (Wallaroo's syslog
//! names or numbers, see [`level_from_flag`]); the environment variable
//! `QUOLL_LOG` overrides it with `tracing` directives (`QUOLL_LOG=debug`,
//! `QUOLL_LOG=quoll_py::links=trace`), and `QUOLL_LOG_FORMAT=json` writes
//! one JSON object per line instead.
//!
//! The Wallaroo lines ([`wallaroo_line`]) are printed whatever the level,
//! byte for byte as Wallaroo prints them, each defined once here.

use std::fmt;
use std::io::Write;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The lines Wallaroo prints that users, scripts and tests wait for.
pub enum WallarooLine<'a> {
    ResilienceMode,
    AttemptingToRecover,
    RecoveringFromFiles,
    /// `entries` state entries were loaded.
    Replayed {
        entries: usize,
    },
    /// The rollback to `checkpoint` (None: nothing was committed) is done.
    RecoveryComplete {
        checkpoint: Option<u64>,
        generation: u64,
    },
    Initialized,
    Ready,
    GenSourceStopped {
        name: &'a str,
    },
}

/// Prints one of Wallaroo's fixed lines on stdout.
pub fn wallaroo_line(line: WallarooLine<'_>) {
    let text = match line {
        WallarooLine::ResilienceMode => "****RESILIENCE MODE is active****".to_string(),
        WallarooLine::AttemptingToRecover => "Attempting to recover...".to_string(),
        WallarooLine::RecoveringFromFiles => "Recovering from recovery files!".to_string(),
        WallarooLine::Replayed { entries } => {
            format!("RESILIENCE: Replayed {entries} entries from recovery log file.")
        }
        WallarooLine::RecoveryComplete {
            checkpoint: Some(id),
            generation,
        } => format!("|~~ - Recovery COMPLETE - ~~| (checkpoint {id}, generation {generation})"),
        WallarooLine::RecoveryComplete {
            checkpoint: None,
            generation,
        } => format!(
            "|~~ - Recovery COMPLETE - ~~| (no checkpoint was complete: started over, generation {generation})"
        ),
        WallarooLine::Initialized => "Application has successfully initialized.".to_string(),
        WallarooLine::Ready => "|~~ INIT PHASE III: Application is ready to work! ~~|".to_string(),
        WallarooLine::GenSourceStopped { name } => {
            format!("GenSource produced a None. Stopping GenSource '{name}'.")
        }
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the worker.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// The level a `--log-level` value asks for: Wallaroo's syslog names
/// (`emerg`, `alert`, `crit`, `err`, `warn`, `notice`, `info`, `debug`),
/// their numbers 0-7, or `error`/`warning`/`trace`. `None`: not a level.
pub fn level_from_flag(value: &str) -> Option<LevelFilter> {
    Some(match value.trim().to_ascii_lowercase().as_str() {
        "0" | "1" | "2" | "3" | "emerg" | "alert" | "crit" | "err" | "error" => LevelFilter::ERROR,
        "4" | "warn" | "warning" => LevelFilter::WARN,
        "5" | "6" | "notice" | "info" => LevelFilter::INFO,
        "7" | "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

/// Starts logging for worker `worker` at `level` (unless `QUOLL_LOG` says
/// otherwise). Only the first call in a process takes effect.
pub fn init(worker: &str, level: LevelFilter) {
    let mut filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .with_env_var("QUOLL_LOG")
        .from_env_lossy();
    // The object store client logs every retried request at info; the
    // worker reports a step that failed itself, naming the object.
    if level > LevelFilter::WARN && std::env::var_os("QUOLL_LOG").is_none() {
        if let Ok(quiet) = "object_store=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let writer = std::io::stderr
        .with_max_level(Level::WARN)
        .or_else(std::io::stdout);
    let json = std::env::var("QUOLL_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let result = if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(writer)
            .try_init()
    } else {
        tracing_subscriber::fmt()
            .event_format(LineFormat {
                worker: worker.to_string(),
            })
            .with_env_filter(filter)
            .with_writer(writer)
            .try_init()
    };
    // A second worker in one process (tests) keeps the first subscriber.
    drop(result);
}

/// The line format of the module doc.
struct LineFormat {
    worker: String,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let tag = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        write!(writer, "quoll: {tag}worker '{}'", self.worker)?;
        if let Some(place) = &fields.place {
            write!(writer, ", {place}")?;
        }
        write!(writer, ": {}", fields.message)?;
        for (k, v) in &fields.rest {
            write!(writer, " {k}={v}")?;
        }
        writeln!(writer)
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    place: Option<String>,
    rest: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "place" => self.place = Some(value.to_string()),
            name => self.rest.push((name, value.to_string())),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "place" => self.place = Some(format!("{value:?}")),
            name => self.rest.push((name, format!("{value:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallaroo_levels_and_numbers() {
        assert_eq!(level_from_flag("err"), Some(LevelFilter::ERROR));
        assert_eq!(level_from_flag("3"), Some(LevelFilter::ERROR));
        assert_eq!(level_from_flag("Warn"), Some(LevelFilter::WARN));
        assert_eq!(level_from_flag("notice"), Some(LevelFilter::INFO));
        assert_eq!(level_from_flag("7"), Some(LevelFilter::DEBUG));
        assert_eq!(level_from_flag("loud"), None);
    }
}
