//! quoll's command-line tools, the Rust side.
//!
//! The Python console script `quoll` hands the subcommands below to
//! [`run`] with the arguments that follow `quoll` (so `args[0]` is the
//! subcommand name):
//!
//! - `send`: feed a file to a worker's TCP source ([`send`]), or with
//!   `--connector` to a source connector over connector protocol v3
//!   ([`connector_client`]).
//! - `receive`: listen for the workers' TCP sinks and store or count what
//!   arrives ([`receive`]).
//! - `status`, `shutdown`: talk to a worker's external channel
//!   ([`external_client`]).
//!
//! On a terminal, `send` and `receive` also draw their progress
//! ([`progress`]); piped or redirected they print only their text lines.
//!
//! Every tool prints its problems on stderr as `quoll TOOL: error: what
//! happened; what to do` and returns an exit code: 0 success, 1 failure,
//! 2 a usage error (from the argument parser) or, for `status`, a worker
//! that is not initialized yet, 3 `receive` timed out before `--expect`.
//!
//! The tools block the calling thread until they finish (a receive without
//! `--expect`, `--idle-timeout` or `--timeout` runs until the process is
//! killed). A Python caller should release the GIL around [`run`] and leave
//! SIGINT/SIGTERM at their default action so that Ctrl-C ends the process.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

pub mod connector_client;
pub mod external_client;
pub mod progress;
pub mod receive;
pub mod send;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failed run.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a usage error, and of `status` on a worker not initialized yet.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `status` on a worker that is not initialized yet.
pub const EXIT_NOT_INITIALIZED: i32 = 2;
/// Exit code of `receive` when `--timeout` (or `--idle-timeout`) ends it
/// before `--expect` messages arrived.
pub const EXIT_TIMEOUT: i32 = 3;

/// A failure to report: the message says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// Exit code to return.
    pub code: i32,
    /// One line: what happened; what to do.
    pub message: String,
}

impl ToolError {
    /// A failure with exit code 1.
    pub fn new(message: impl Into<String>) -> Self {
        ToolError {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }

    /// A failure with a given exit code.
    pub fn with_code(code: i32, message: impl Into<String>) -> Self {
        ToolError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}

#[derive(Parser, Debug)]
#[command(
    name = "quoll",
    about = "quoll's tools: send, receive, status, shutdown, shrink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send a file to a worker's TCP source.
    Send(send::SendArgs),
    /// Listen for the workers' TCP sinks; store or count what arrives.
    Receive(receive::ReceiveArgs),
    /// Ask a worker's external channel for the cluster status.
    Status(external_client::StatusArgs),
    /// Ask a worker's external channel for a clean shutdown of the cluster.
    Shutdown(external_client::ShutdownArgs),
    /// Ask the initializer to remove workers from the running cluster.
    Shrink(external_client::ShrinkArgs),
}

/// Runs one tool and returns its exit code, printing on the process's
/// stdout and stderr. `args[0]` is the subcommand: `["send", "--host",
/// "127.0.0.1:7000", "--file", "in.txt"]`. Progress is drawn when stderr
/// is a terminal.
pub fn run(args: Vec<String>) -> i32 {
    // Unlocked handles: the progress display draws on stderr from its own
    // thread, which a lock held for the whole run would block.
    let terminal = io::stderr().is_terminal();
    run_tool(args, &mut io::stdout(), &mut io::stderr(), terminal)
}

/// Like [`run`], with the tool's messages written to `out` and `err`
/// instead (received data that `receive --output -` writes still goes to
/// the process's stdout), and no progress display.
pub fn run_with_io(args: Vec<String>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    run_tool(args, out, err, false)
}

/// `terminal`: `err` is the process's stderr and a terminal, so progress
/// may be drawn there.
fn run_tool(args: Vec<String>, out: &mut dyn Write, err: &mut dyn Write, terminal: bool) -> i32 {
    let cli = match Cli::try_parse_from(std::iter::once("quoll".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            let sink: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = sink.write_all(text.as_bytes());
            let _ = sink.flush();
            return e.exit_code();
        }
    };
    let tool = match &cli.command {
        Command::Send(_) => "send",
        Command::Receive(_) => "receive",
        Command::Status(_) => "status",
        Command::Shutdown(_) => "shutdown",
        Command::Shrink(_) => "shrink",
    };
    let result = match cli.command {
        Command::Send(a) => send::run_send(&a, out, err, terminal),
        Command::Receive(a) => receive::run_receive(&a, out, err, terminal),
        Command::Status(a) => external_client::run_status(&a, out, err),
        Command::Shutdown(a) => external_client::run_shutdown(&a, out, err),
        Command::Shrink(a) => external_client::run_shrink(&a, out, err),
    };
    let _ = out.flush();
    match result {
        Ok(code) => {
            let _ = err.flush();
            code
        }
        Err(e) => {
            let _ = writeln!(err, "quoll {tool}: error: {}", e.message);
            let _ = err.flush();
            e.code
        }
    }
}

/// Parses a positive, finite number of seconds (for clap).
pub(crate) fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}` must be a finite number of seconds >= 0"));
    }
    Ok(v)
}

/// Parses a positive, finite rate (for clap).
pub(crate) fn parse_positive(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("`{s}` must be a finite number > 0"));
    }
    Ok(v)
}

/// Seconds as a `Duration`, saturating.
pub(crate) fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::MAX)
}

/// Formats a rate for the report lines.
pub(crate) fn rate(count: u64, elapsed: Duration) -> u64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        0
    } else {
        (count as f64 / s).round() as u64
    }
}

fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolves to no address",
        ));
    }
    Ok(addrs)
}

/// Connects to `addr` (HOST:PORT). With `wait`, retries every 100 ms until
/// `timeout` has passed; without, tries once (each attempt itself waits up
/// to `timeout`). The error says what to check; `what` names the peer for
/// it ("a worker's TCP source (its --in address)").
pub(crate) fn connect(
    addr: &str,
    timeout: Duration,
    wait: bool,
    what: &str,
    flag_hint: &str,
) -> Result<TcpStream, ToolError> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let last_err = match resolve(addr) {
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(ToolError::new(format!(
                    "`{addr}` is not a HOST:PORT address ({e}); give it as e.g. 127.0.0.1:7000"
                )));
            }
            Err(e) => io::Error::new(e.kind(), format!("cannot resolve {addr}: {e}")),
            Ok(addrs) => {
                let mut last = None;
                let mut done = None;
                for a in addrs {
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(100));
                    match TcpStream::connect_timeout(&a, left) {
                        Ok(s) => {
                            done = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                if let Some(s) = done {
                    return Ok(s);
                }
                last.unwrap_or_else(|| io::Error::other("no address to try"))
            }
        };
        let now = Instant::now();
        if !wait || now >= deadline {
            let how = if wait {
                format!(
                    "within {:.1} s ({attempts} attempts)",
                    timeout.as_secs_f64()
                )
            } else {
                "(one attempt)".to_string()
            };
            return Err(ToolError::new(format!(
                "could not connect to {addr} {how}: {last_err}; check that {what} is listening on {addr}{flag_hint}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100).min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_capture(args: &[&str]) -> (i32, String, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run_with_io(
            args.iter().map(|s| s.to_string()).collect(),
            &mut out,
            &mut err,
        );
        (
            code,
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    }

    #[test]
    fn help_and_usage_errors() {
        let (code, out, _) = run_capture(&["send", "--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("--framing") && out.contains("quoll send"),
            "{out}"
        );
        let (code, _, err) = run_capture(&["send", "--file", "x"]);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("--host"), "{err}");
        let (code, _, err) = run_capture(&["frobnicate"]);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("frobnicate"), "{err}");
        let (code, _, err) = run_capture(&[]);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("send"), "{err}");
        let (code, _, err) = run_capture(&["send", "--host", "h:1", "--file", "f", "--rate", "0"]);
        assert_eq!(code, EXIT_USAGE);
        assert!(err.contains("--rate"), "{err}");
        let (code, out, _) = run_capture(&["receive", "--help"]);
        assert_eq!(code, 0);
        assert!(
            out.contains("--expect") && out.contains("--idle-timeout"),
            "{out}"
        );
    }

    #[test]
    fn bad_address_is_explained() {
        let e = connect(
            "no-port-here",
            Duration::from_millis(200),
            true,
            "a worker",
            "",
        )
        .unwrap_err();
        assert!(e.message.contains("HOST:PORT"), "{}", e.message);
    }
}
