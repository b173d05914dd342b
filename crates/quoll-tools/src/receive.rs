//! `quoll receive`: listen for the workers' TCP sinks, store or count what
//! arrives.
//!
//! The receiver binds `--listen`, prints `quoll receive: listening on
//! HOST:PORT` (the bound address, so port 0 works) on stderr, and accepts
//! any number of connections (a sink connects once per worker, and again
//! after a restart), reading each on its own thread with 256 KiB reads.
//!
//! Framings (`--framing`):
//!
//! - `raw` (default): bytes are written to the output as they arrive. A
//!   message is a `\n`-terminated line (an unterminated tail is not
//!   counted). So that lines from different connections do not interleave,
//!   each connection's data is written up to its last newline and the rest
//!   is held until more arrives (or the connection closes, or 256 KiB pile
//!   up without a newline, as binary data would).
//! - `framed`: the stream is 4-byte big-endian length-prefixed frames (as an
//!   app packs with `struct.pack(">I...")`); a message is a frame, and the
//!   output gets each payload without its header, followed by `\n` if
//!   `--framed-newline` is given (what Wallaroo's `data_receiver --framed`
//!   prints), or, with `--keep-headers`, each whole frame, header included
//!   (what Wallaroo's test harness stores for its validators). A frame above
//!   64 MiB is taken for a framing mistake and ends that connection.
//!
//! With several connections (one per worker), each connection's frames or
//! lines reach the output whole: a connection thread holds the output while
//! it writes the complete frames (or lines) it has, so nothing from another
//! connection can land inside one. Raw mode only knows lines: a framed
//! (binary) stream received raw can be cut at any `\n` byte and mixed with
//! another connection's bytes, so framed sinks want `--framing framed`.
//!
//! `--count-only` stores nothing. Otherwise `--output PATH` (created or
//! truncated at start) or `--output -` (stdout, the default).
//!
//! It ends:
//! - with exit 0 once `--expect N` messages have arrived;
//! - after `--idle-timeout SECS` without data once some data has arrived:
//!   exit 0, or 3 if `--expect` was given and not reached;
//! - at `--timeout SECS` overall: exit 0, or 3 if `--expect` was given and
//!   not reached;
//! - otherwise never (kill it).
//!
//! On a terminal, a progress display on stderr shows the count, the rate
//! and, with `--expect`, a bar (`--no-progress` turns it off). Otherwise,
//! every `--report-interval` seconds (default 5, 0 for never) a progress
//! line goes to stderr. At the end the line
//! `quoll receive: received N messages (B bytes) in T s (R msgs/s)`, where
//! B counts bytes read from the sockets (frame headers included) and T runs
//! from the first accepted connection to the last data received.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use quoll_core::frame::{BlockingFramedRead, ByteOrder, LengthError, LengthPrefixed, ReadError};

use crate::progress::Progress;
use crate::{parse_seconds, rate, secs, ToolError, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE};

const READ_SIZE: usize = 256 * 1024;
const MAX_RECEIVE_FRAME: u32 = 64 * 1024 * 1024;
const TICK: Duration = Duration::from_millis(10);
const NONE_YET: u64 = u64::MAX;

/// How `quoll receive` cuts the stream into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReceiveFraming {
    /// Bytes as they are; a message is a newline-terminated line.
    Raw,
    /// 4-byte big-endian length-prefixed frames; the output gets the payloads.
    Framed,
}

/// Arguments of `quoll receive`.
#[derive(Args, Debug, Clone)]
pub struct ReceiveArgs {
    /// Address to listen on (the workers' --out address); port 0 picks a free one.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    /// Where to write what arrives: a file (truncated) or - for stdout.
    #[arg(long, value_name = "PATH|-", conflicts_with = "count_only")]
    pub output: Option<String>,
    /// How to cut the stream into messages.
    #[arg(long, value_enum, default_value_t = ReceiveFraming::Raw)]
    pub framing: ReceiveFraming,
    /// With --framing framed: write a newline after each payload.
    #[arg(long, conflicts_with = "keep_headers")]
    pub framed_newline: bool,
    /// With --framing framed: write each frame whole, its 4-byte length
    /// header included (the file Wallaroo's validators read).
    #[arg(long)]
    pub keep_headers: bool,
    /// Count messages without storing them.
    #[arg(long)]
    pub count_only: bool,
    /// Exit (0) once N messages have arrived.
    #[arg(long, value_name = "N")]
    pub expect: Option<u64>,
    /// Exit after SECS without data, once some data has arrived.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub idle_timeout: Option<f64>,
    /// Exit after SECS overall (exit 3 if --expect was not reached).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<f64>,
    /// Seconds between progress lines on stderr; 0 for none (on a
    /// terminal the progress display replaces them).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_seconds)]
    pub report_interval: f64,
    /// No progress display, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// What a framed connection writes per frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameOutput {
    Payload,
    PayloadNewline,
    WholeFrame,
}

type Output = Mutex<Box<dyn Write + Send>>;

struct Shared {
    start: Instant,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Nanoseconds since `start` of the last data received (NONE_YET before).
    last_data_ns: AtomicU64,
    output: Option<Output>,
    notices: Mutex<Sender<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos().min(NONE_YET as u128 - 1) as u64
    }

    fn notice(&self, text: String) {
        if let Ok(tx) = self.notices.lock() {
            let _ = tx.send(text);
        }
    }

    fn write(&self, data: &[u8]) -> io::Result<()> {
        match &self.output {
            Some(out) => out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(data),
            None => Ok(()),
        }
    }
}

/// What a receive saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Messages counted.
    pub messages: u64,
    /// Bytes read from the sockets.
    pub bytes: u64,
    /// From the first accepted connection to the last data.
    pub elapsed: Duration,
    /// Connections accepted.
    pub connections: u64,
}

impl ReceiveReport {
    /// The final report line.
    pub fn line(&self) -> String {
        format!(
            "quoll receive: received {} messages ({} bytes) in {:.3} s ({} msgs/s)",
            self.messages,
            self.bytes,
            self.elapsed.as_secs_f64(),
            rate(self.messages, self.elapsed)
        )
    }
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn output_failed(e: io::Error) -> String {
    format!("cannot write the output: {e}")
}

/// Reads one connection until it ends. Returns messages counted on it, or
/// an error text for the main thread.
fn serve_raw(shared: &Shared, stream: &mut TcpStream) -> Result<u64, String> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut filled = 0usize;
    let mut count = 0u64;
    let store = shared.output.is_some();
    loop {
        let n = match read_some(stream, &mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fresh = &buf[filled..filled + n];
        let lines = memchr::memchr_iter(b'\n', fresh).count() as u64;
        if store {
            filled += n;
            if let Some(p) = memchr::memrchr(b'\n', &buf[..filled]) {
                shared.write(&buf[..=p]).map_err(output_failed)?;
                buf.copy_within(p + 1..filled, 0);
                filled -= p + 1;
            } else if filled == buf.len() {
                shared.write(&buf[..filled]).map_err(output_failed)?;
                filled = 0;
            }
        }
        count += lines;
        shared.messages.fetch_add(lines, Ordering::Relaxed);
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        shared
            .last_data_ns
            .store(shared.now_ns(), Ordering::Relaxed);
    }
    if filled > 0 {
        shared.write(&buf[..filled]).map_err(output_failed)?;
    }
    Ok(count)
}

fn serve_framed(
    shared: &Shared,
    stream: &mut TcpStream,
    output: FrameOutput,
    peer: &str,
) -> Result<u64, String> {
    let framing = LengthPrefixed::new(ByteOrder::Big, 0, MAX_RECEIVE_FRAME);
    let mut frames = BlockingFramedRead::new(stream, framing);
    let mut count = 0u64;
    let store = shared.output.is_some();
    loop {
        let n = match frames.fill() {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut done = 0u64;
        let mut guard = None;
        let failed = loop {
            let payload = match frames.decode_buffered() {
                Ok(Some(p)) => p,
                Ok(None) => break None,
                Err(ReadError::Protocol(LengthError::TooLong { len, .. })) => break Some(format!(
                    "connection from {peer} sent a frame header announcing {len} bytes (over 64 MiB); \
                     is the sink's output really 4-byte length-prefixed? If not, use --framing raw"
                )),
                Err(e) => break Some(format!("connection from {peer}: {e}")),
            };
            if store {
                let out = guard.get_or_insert_with(|| {
                    shared
                        .output
                        .as_ref()
                        .expect("store")
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                });
                if output == FrameOutput::WholeFrame {
                    // The payload fits the header: the decoder bounds it by
                    // MAX_RECEIVE_FRAME.
                    let len = payload.len() as u32;
                    out.write_all(&len.to_be_bytes()).map_err(output_failed)?;
                }
                out.write_all(&payload).map_err(output_failed)?;
                if output == FrameOutput::PayloadNewline {
                    out.write_all(b"\n").map_err(output_failed)?;
                }
            }
            done += 1;
        };
        drop(guard);
        count += done;
        shared.messages.fetch_add(done, Ordering::Relaxed);
        if let Some(msg) = failed {
            return Err(msg);
        }
        shared.bytes.fetch_add(n as u64, Ordering::Relaxed);
        shared
            .last_data_ns
            .store(shared.now_ns(), Ordering::Relaxed);
    }
    let left = frames.read_buffer().len();
    if left > 0 {
        shared.notice(format!(
            "quoll receive: connection from {peer} closed inside a frame; {left} bytes of an incomplete frame dropped"
        ));
    }
    Ok(count)
}

struct Conn {
    stream: TcpStream,
    handle: JoinHandle<Result<u64, String>>,
}

fn open_output(args: &ReceiveArgs) -> Result<Option<Output>, ToolError> {
    if args.count_only {
        return Ok(None);
    }
    let path = args.output.as_deref().unwrap_or("-");
    let w: Box<dyn Write + Send> = if path == "-" {
        Box::new(BufWriter::with_capacity(1 << 20, io::stdout()))
    } else {
        let f = File::create(path).map_err(|e| {
            ToolError::new(format!(
                "cannot create the output file {path}: {e}; check the --output path"
            ))
        })?;
        Box::new(BufWriter::with_capacity(1 << 20, f))
    };
    Ok(Some(Mutex::new(w)))
}

enum End {
    Expected,
    Idle,
    Timeout,
    Failed(String),
}

/// Runs a receiver as `args` say; progress and notices go to `err`, and
/// with `show_progress` a progress display to the process's stderr.
/// Returns the report and the exit code (0, or 3 for `--expect` not reached).
pub fn receive(
    args: &ReceiveArgs,
    err: &mut dyn Write,
    show_progress: bool,
) -> Result<(ReceiveReport, i32), ToolError> {
    if (args.keep_headers || args.framed_newline) && args.framing != ReceiveFraming::Framed {
        let flag = if args.keep_headers {
            "--keep-headers"
        } else {
            "--framed-newline"
        };
        return Err(ToolError::with_code(
            EXIT_USAGE,
            format!("{flag} applies to framed streams only; add --framing framed"),
        ));
    }
    let frame_output = if args.keep_headers {
        FrameOutput::WholeFrame
    } else if args.framed_newline {
        FrameOutput::PayloadNewline
    } else {
        FrameOutput::Payload
    };
    let listener = TcpListener::bind(&args.listen).map_err(|e| {
        ToolError::new(format!(
            "cannot listen on {}: {e}; is another receiver or a worker using that port? Choose another --listen address",
            args.listen
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| ToolError::new(format!("cannot read the bound address: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ToolError::new(format!("cannot set the listener non-blocking: {e}")))?;
    let output = open_output(args)?;
    let (tx, notices): (Sender<String>, Receiver<String>) = mpsc::channel();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        messages: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        last_data_ns: AtomicU64::new(NONE_YET),
        output,
        notices: Mutex::new(tx),
    });
    let _ = writeln!(err, "quoll receive: listening on {local}");
    let _ = err.flush();
    let progress = Progress::new(show_progress, args.expect, "receive");

    let mut conns: Vec<Conn> = Vec::new();
    let mut first_accept: Option<Instant> = None;
    let mut accepted = 0u64;
    let report_every = if args.report_interval > 0.0 {
        Some(secs(args.report_interval))
    } else {
        None
    };
    let mut next_report = report_every.map(|d| Instant::now() + d);
    let mut last_report = (Instant::now(), 0u64);
    let deadline = args.timeout.map(|t| Instant::now() + secs(t));
    let idle = args.idle_timeout.map(secs);

    let end = loop {
        // Accept every pending connection.
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    first_accept.get_or_insert_with(Instant::now);
                    let _ = stream.set_nonblocking(false);
                    let clone = match stream.try_clone() {
                        Ok(c) => c,
                        Err(e) => {
                            progress.line(
                                err,
                                &format!(
                                    "quoll receive: cannot use the connection from {peer}: {e}"
                                ),
                            );
                            continue;
                        }
                    };
                    progress.line(err, &format!("quoll receive: connection from {peer}"));
                    let sh = Arc::clone(&shared);
                    let framing = args.framing;
                    let handle = std::thread::Builder::new()
                        .name(format!("quoll-receive-{peer}"))
                        .spawn(move || {
                            let mut s = stream;
                            let peer = peer.to_string();
                            let r = match framing {
                                ReceiveFraming::Raw => serve_raw(&sh, &mut s),
                                ReceiveFraming::Framed => serve_framed(&sh, &mut s, frame_output, &peer),
                            };
                            if let Ok(n) = &r {
                                sh.notice(format!("quoll receive: connection from {peer} closed after {n} messages"));
                            }
                            r
                        })
                        .map_err(|e| ToolError::new(format!("cannot start a connection thread: {e}")))?;
                    conns.push(Conn {
                        stream: clone,
                        handle,
                    });
                    accepted += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    progress.line(err, &format!("quoll receive: accept failed: {e}"));
                    break;
                }
            }
        }
        while let Ok(text) = notices.try_recv() {
            progress.line(err, &text);
        }
        // Reap finished connection threads; one that failed ends the run.
        let mut failed = None;
        while let Some(i) = conns.iter().position(|c| c.handle.is_finished()) {
            let c = conns.swap_remove(i);
            if let Ok(Err(msg)) = c.handle.join() {
                failed.get_or_insert(msg);
            }
        }
        if let Some(msg) = failed {
            break End::Failed(msg);
        }
        let got = shared.messages.load(Ordering::Relaxed);
        progress.set(got);
        progress.note(format!("{} open connections", conns.len()));
        if let Some(n) = args.expect {
            if got >= n {
                break End::Expected;
            }
        }
        let now = Instant::now();
        if let (Some(idle), ns) = (idle, shared.last_data_ns.load(Ordering::Relaxed)) {
            if ns != NONE_YET && now.duration_since(shared.start) >= Duration::from_nanos(ns) + idle
            {
                break End::Idle;
            }
        }
        if deadline.is_some_and(|d| now >= d) {
            break End::Timeout;
        }
        if let (Some(every), Some(at), false) = (report_every, next_report, progress.is_on()) {
            if now >= at {
                let (t0, n0) = last_report;
                let dt = now.duration_since(t0);
                let _ = writeln!(
                    err,
                    "quoll receive: {got} messages ({} bytes) so far, {} msgs/s over the last {:.1} s, {} open connections",
                    shared.bytes.load(Ordering::Relaxed),
                    rate(got - n0, dt),
                    dt.as_secs_f64(),
                    conns.len()
                );
                last_report = (now, got);
                next_report = Some(at + every);
            }
        }
        let _ = err.flush();
        // Readers of the output file (tests, people) see data as it comes.
        if let Some(out) = &shared.output {
            if let Ok(mut w) = out.try_lock() {
                let _ = w.flush();
            }
        }
        std::thread::sleep(TICK);
    };

    // Stop the connection threads and collect what they wrote.
    let mut failure = match &end {
        End::Failed(m) => Some(m.clone()),
        _ => None,
    };
    for c in &conns {
        let _ = c.stream.shutdown(Shutdown::Both);
    }
    for c in conns {
        if let Ok(Err(msg)) = c.handle.join() {
            failure.get_or_insert(msg);
        }
    }
    while let Ok(text) = notices.try_recv() {
        progress.line(err, &text);
    }
    progress.clear();
    if let Some(out) = &shared.output {
        if let Err(e) = out.lock().unwrap_or_else(|p| p.into_inner()).flush() {
            failure.get_or_insert(output_failed(e));
        }
    }
    let messages = shared.messages.load(Ordering::Relaxed);
    let last_ns = shared.last_data_ns.load(Ordering::Relaxed);
    let elapsed = match first_accept {
        Some(t0) if last_ns != NONE_YET => {
            (shared.start + Duration::from_nanos(last_ns)).saturating_duration_since(t0)
        }
        _ => Duration::ZERO,
    };
    let report = ReceiveReport {
        messages,
        bytes: shared.bytes.load(Ordering::Relaxed),
        elapsed,
        connections: accepted,
    };
    let _ = writeln!(err, "{}", report.line());
    let _ = err.flush();
    if let Some(msg) = failure {
        return Err(ToolError::new(msg));
    }
    if let Some(n) = args.expect {
        if messages < n {
            let (what, flag) = match end {
                End::Timeout => (
                    format!("timed out after {:.1} s", args.timeout.unwrap_or(0.0)),
                    "--timeout",
                ),
                _ => (
                    format!("no data for {:.1} s", args.idle_timeout.unwrap_or(0.0)),
                    "--idle-timeout",
                ),
            };
            return Err(ToolError::with_code(
                EXIT_TIMEOUT,
                format!(
                    "{what} with {messages} of {n} expected messages; the workers sent fewer than expected or are \
                     slow: check their logs, or raise {flag}"
                ),
            ));
        }
    }
    Ok((report, EXIT_OK))
}

/// `quoll receive`: all its messages go to `err` (stdout may carry the
/// data); a progress display on stderr when `terminal`.
pub fn run_receive(
    args: &ReceiveArgs,
    _out: &mut dyn Write,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<i32, ToolError> {
    // Received data printed on the same terminal would tear the display.
    let data_on_terminal = !args.count_only
        && args.output.as_deref().is_none_or(|o| o == "-")
        && io::stdout().is_terminal();
    let show = terminal && !args.no_progress && !data_on_terminal;
    receive(args, err, show).map(|(_, code)| code)
}
