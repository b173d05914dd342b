//! `quoll send`: feed a file to a worker's TCP source.
//!
//! The whole file is read and encoded once into one buffer with the end
//! offset of every message, so sending is a loop of `write_all` calls over
//! slices of that buffer (`--batch-size` messages per write): a million
//! lines cost a few milliseconds of CPU beyond the socket itself.
//!
//! Framings (`--framing`):
//!
//! - `framed` (default): the file is text, one message per line. Each line,
//!   without its `\n` (and without a `\r` just before it), is sent as a
//!   4-byte big-endian length followed by its bytes, which is what an app
//!   with `@decoder(header_length=4, length_fmt=">I")` reads. An empty
//!   line is an empty message (unless `--skip-empty`); a last line without
//!   `\n` is still a message.
//! - `lines`: each line is sent as it is in the file, with its `\n` (one is
//!   added to a last line that lacks it).
//! - `raw-framed`: the file already holds 4-byte big-endian length-prefixed
//!   frames; they are sent as they are, one message per frame.
//! - `fixed`: the file is a sequence of `--msg-size` byte messages, each
//!   sent as it is (Giles sender's `--binary --msg-size N`, whose files hold
//!   whole frames of N bytes, headers included).
//!
//! `--skip-empty` drops empty lines (`framed`, `lines`) instead of sending
//! them as empty messages, as Wallaroo's Giles sender does; the `sender`
//! compatibility command always passes it.
//!
//! `--messages N` stops after N messages, going round the file again as
//! often as needed; `--max-messages N` stops after N messages or at the end
//! of the file, whichever comes first (with `--repeat`, after N); `--repeat`
//! without either goes round forever.
//! `--rate R` paces the sends to R messages per second on average (batches
//! are then cut to about 10 ms worth of messages); `--batch-interval SECS`
//! sends one batch of `--batch-size` messages every SECS instead, as Giles
//! does with `--interval`.
//!
//! The connection is retried every 100 ms for `--connect-timeout` seconds
//! (workers take a moment to start listening) unless `--no-wait-connect`.
//! At the end the sending side of the socket is shut down, and one line is
//! printed on stdout:
//! `quoll send: sent N messages (B bytes) in T s (R msgs/s)`.
//! On a terminal a progress bar shows the count, the rate and, when the
//! total is known, the time left (`--no-progress` turns it off).
//!
//! `--sent-log PATH` writes one line per message sent, `NANOSECONDS,
//! PAYLOAD` (wall-clock time of the batch's write, then the message without
//! its framing: no length header for `framed` and `raw-framed`, no newline
//! for `lines`), as Giles writes its `sent.txt`.
//!
//! `--connector` speaks connector protocol v3 to a worker's source
//! connector instead (`--cookie`, `--stream-id`, `--stream-name`,
//! `--program-name`, `--instance-name`, `--reconnect-timeout`): every
//! record is one MESSAGE, credits are obeyed, and what the worker has not
//! acknowledged is sent again after a RESTART or a lost connection. See
//! [`crate::connector_client`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use quoll_core::frame::{ByteOrder, LengthPrefixed, LENGTH_FIELD_LEN};

use crate::progress::Progress;
use crate::{connect, parse_positive, parse_seconds, rate, secs, ToolError, EXIT_OK};

/// The 4-byte big-endian length-prefixed frames of `framed` and `raw-framed`.
const FRAMING: LengthPrefixed = LengthPrefixed::new(ByteOrder::Big, 0, u32::MAX);

/// How `quoll send` frames the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendFraming {
    /// One message per line, each sent as a 4-byte big-endian length + the line.
    Framed,
    /// One message per line, sent with its newline.
    Lines,
    /// The file is already a sequence of 4-byte big-endian length-prefixed frames.
    RawFramed,
    /// The file is a sequence of --msg-size byte messages, sent as they are.
    Fixed,
}

/// Arguments of `quoll send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// Address of the worker's TCP source (its --in address).
    #[arg(long, value_name = "HOST:PORT")]
    pub host: String,
    /// The file to send.
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// How to cut the file into messages and frame them.
    #[arg(long, value_enum, default_value_t = SendFraming::Framed)]
    pub framing: SendFraming,
    /// With --framing fixed: the size of every message in bytes.
    #[arg(long, value_name = "BYTES", required_if_eq("framing", "fixed"), value_parser = clap::value_parser!(u64).range(1..u64::from(u32::MAX)))]
    pub msg_size: Option<u64>,
    /// Drop empty lines instead of sending them as empty messages (as
    /// Wallaroo's Giles sender does); --framing framed or lines.
    #[arg(long)]
    pub skip_empty: bool,
    /// Messages per socket write.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Average messages per second (default: as fast as possible).
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = parse_positive, conflicts_with = "batch_interval")]
    pub rate: Option<f64>,
    /// Send one batch of --batch-size messages every SECS (Giles' --interval).
    #[arg(long, value_name = "SECS", value_parser = parse_positive, conflicts_with = "connector")]
    pub batch_interval: Option<f64>,
    /// Stop after N messages, going round the file again as needed.
    #[arg(long, value_name = "N", conflicts_with = "max_messages")]
    pub messages: Option<u64>,
    /// Stop after N messages or at the end of the file, whichever comes
    /// first (with --repeat: after N).
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Go round the file until --messages are sent, or forever without it.
    #[arg(long)]
    pub repeat: bool,
    /// Write `NANOSECONDS, PAYLOAD` per message sent to PATH (Giles' sent.txt).
    #[arg(long, value_name = "PATH", conflicts_with = "connector")]
    pub sent_log: Option<PathBuf>,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Try to connect once instead of retrying until --connect-timeout.
    #[arg(long)]
    pub no_wait_connect: bool,
    /// Seconds to keep retrying the connection (every 100 ms).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_seconds)]
    pub connect_timeout: f64,
    /// Speak the connector protocol (v3) to a worker's source connector:
    /// one MESSAGE per record, resent from the last acknowledged one after
    /// a restart.
    #[arg(long)]
    pub connector: bool,
    /// With --connector: the source connector's cookie.
    #[arg(
        long,
        value_name = "COOKIE",
        default_value = "cookie",
        requires = "connector"
    )]
    pub cookie: String,
    /// With --connector: the stream id (message ids restart at 1 per run,
    /// so a worker that already has a stream's messages skips them).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "connector")]
    pub stream_id: u64,
    /// With --connector: the stream name (default: the --file path).
    #[arg(long, value_name = "NAME", requires = "connector")]
    pub stream_name: Option<String>,
    /// With --connector: the program name sent in HELLO.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "quoll-send",
        requires = "connector"
    )]
    pub program_name: String,
    /// With --connector: the instance name sent in HELLO (default: quoll-send-PID).
    #[arg(long, value_name = "NAME", requires = "connector")]
    pub instance_name: Option<String>,
    /// With --connector: seconds to keep trying to resume after a restart or
    /// a lost connection, and to wait for any reply (credits, the final ACK).
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_seconds, requires = "connector")]
    pub reconnect_timeout: f64,
}

/// A file encoded for sending: one buffer and the end offset of each message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessages {
    /// The bytes to send, messages back to back.
    pub buf: Vec<u8>,
    /// `ends[i]` is the offset just past message `i` in `buf`.
    pub ends: Vec<usize>,
}

impl EncodedMessages {
    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True if there is no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// The bytes of messages `from..to`.
    pub fn slice(&self, from: usize, to: usize) -> &[u8] {
        &self.buf[self.start(from)..self.start(to)]
    }
}

fn line_spans(data: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    // (start, end) of each line, newline excluded; a last line without a
    // newline counts, the empty remainder after a final newline does not.
    let mut pos = 0;
    let mut nl = memchr::memchr_iter(b'\n', data);
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let start = pos;
        let end = match nl.next() {
            Some(i) => {
                pos = i + 1;
                i
            }
            None => {
                pos = data.len();
                data.len()
            }
        };
        Some((start, end))
    })
}

/// How a file is cut into messages: the framing and its options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// The framing.
    pub framing: SendFraming,
    /// Drop empty lines (`framed`, `lines`).
    pub skip_empty: bool,
    /// The message size of `fixed`.
    pub msg_size: Option<usize>,
}

impl Encoding {
    /// `framing` with empty lines kept and no message size.
    pub fn new(framing: SendFraming) -> Encoding {
        Encoding {
            framing,
            skip_empty: false,
            msg_size: None,
        }
    }

    /// The encoding `quoll send`'s arguments ask for.
    pub fn of(args: &SendArgs) -> Encoding {
        Encoding {
            framing: args.framing,
            skip_empty: args.skip_empty,
            msg_size: args.msg_size.map(|n| n as usize),
        }
    }

    /// The payload of an encoded message: without its length header
    /// (`framed`, `raw-framed`) or its newline (`lines`).
    pub fn payload<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        match self.framing {
            SendFraming::Framed | SendFraming::RawFramed => &msg[LENGTH_FIELD_LEN.min(msg.len())..],
            SendFraming::Lines => msg.strip_suffix(b"\n").unwrap_or(msg),
            SendFraming::Fixed => msg,
        }
    }
}

/// Encodes the contents of a file for sending.
pub fn encode_messages(data: Vec<u8>, enc: &Encoding) -> Result<EncodedMessages, String> {
    match enc.framing {
        SendFraming::Lines => {
            let mut buf = data;
            if !buf.is_empty() && buf.last() != Some(&b'\n') {
                buf.push(b'\n');
            }
            if enc.skip_empty {
                let mut kept = Vec::with_capacity(buf.len());
                let mut ends = Vec::new();
                for (start, end) in line_spans(&buf) {
                    if !is_blank(&buf[start..end]) {
                        kept.extend_from_slice(&buf[start..=end]);
                        ends.push(kept.len());
                    }
                }
                return Ok(EncodedMessages { buf: kept, ends });
            }
            let ends = memchr::memchr_iter(b'\n', &buf).map(|i| i + 1).collect();
            Ok(EncodedMessages { buf, ends })
        }
        SendFraming::Framed => {
            let lines = memchr::memchr_iter(b'\n', &data).count() + 1;
            let mut buf = Vec::with_capacity(data.len() + 4 * lines);
            let mut ends = Vec::with_capacity(lines);
            for (start, mut end) in line_spans(&data) {
                if end > start && data[end - 1] == b'\r' && end < data.len() {
                    end -= 1;
                }
                if enc.skip_empty && end == start {
                    continue;
                }
                let at = FRAMING.begin(&mut buf);
                buf.extend_from_slice(&data[start..end]);
                FRAMING.finish(&mut buf, at).map_err(|_| {
                    format!(
                        "a line of {} bytes does not fit a 4-byte length",
                        end - start
                    )
                })?;
                ends.push(buf.len());
            }
            Ok(EncodedMessages { buf, ends })
        }
        SendFraming::RawFramed => {
            let mut ends = Vec::new();
            let mut pos = 0usize;
            while pos < data.len() {
                let rest = &data[pos..];
                let size = FRAMING
                    .frame_size(rest)
                    .map_err(|e| format!("the frame at offset {pos}: {e}"))?
                    .ok_or_else(|| {
                        format!(
                            "the file ends with {} stray bytes at offset {pos}, too few for a 4-byte length header",
                            rest.len()
                        )
                    })?;
                if size > rest.len() {
                    return Err(format!(
                        "the frame at offset {pos} announces {} bytes but only {} remain",
                        size - LENGTH_FIELD_LEN,
                        rest.len() - LENGTH_FIELD_LEN
                    ));
                }
                pos += size;
                ends.push(pos);
            }
            Ok(EncodedMessages { buf: data, ends })
        }
        SendFraming::Fixed => {
            let size = enc
                .msg_size
                .filter(|&n| n > 0)
                .ok_or_else(|| "--framing fixed needs --msg-size BYTES".to_string())?;
            let rest = data.len() % size;
            if rest != 0 {
                return Err(format!(
                    "{} bytes are not a whole number of {size}-byte messages ({rest} bytes left over); \
                     check --msg-size",
                    data.len()
                ));
            }
            let ends = (1..=data.len() / size).map(|i| i * size).collect();
            Ok(EncodedMessages { buf: data, ends })
        }
    }
}

/// A line that holds nothing once its `\r\n` or `\n` is taken away.
fn is_blank(line: &[u8]) -> bool {
    line.is_empty() || line == b"\r"
}

/// How many messages to send for a file of `len` messages: `None` is
/// forever (`--repeat` alone).
pub fn planned_total(args: &SendArgs, len: usize) -> Option<u64> {
    let len = len as u64;
    match (args.messages, args.max_messages, args.repeat) {
        (Some(n), _, _) => Some(n),
        (None, Some(n), true) => Some(n),
        (None, Some(n), false) => Some(n.min(len)),
        (None, None, true) => None,
        (None, None, false) => Some(len),
    }
}

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Messages written.
    pub messages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// From connected to done.
    pub elapsed: Duration,
}

impl SendReport {
    /// The final report line.
    pub fn line(&self) -> String {
        format!(
            "quoll send: sent {} messages ({} bytes) in {:.3} s ({} msgs/s)",
            self.messages,
            self.bytes,
            self.elapsed.as_secs_f64(),
            rate(self.messages, self.elapsed)
        )
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ToolError> {
    std::fs::read(path).map_err(|e| {
        ToolError::new(format!(
            "cannot read {}: {e}; check the --file path",
            path.display()
        ))
    })
}

/// Reads and encodes the file as `args` say.
pub fn read_messages(args: &SendArgs) -> Result<EncodedMessages, ToolError> {
    let data = read_file(&args.file)?;
    encode_messages(data, &Encoding::of(args)).map_err(|e| {
        let hint = match args.framing {
            SendFraming::RawFramed => {
                "; for a text file with one message per line use --framing framed"
            }
            _ => "",
        };
        ToolError::new(format!("{}: {e}{hint}", args.file.display()))
    })
}

/// The `--sent-log` file: one `NANOSECONDS, PAYLOAD` line per message.
struct SentLog {
    file: BufWriter<File>,
    path: PathBuf,
    encoding: Encoding,
}

impl SentLog {
    fn create(path: &Path, encoding: Encoding) -> Result<SentLog, ToolError> {
        let file = File::create(path).map_err(|e| {
            ToolError::new(format!(
                "cannot create the sent log {}: {e}; check the --sent-log path",
                path.display()
            ))
        })?;
        Ok(SentLog {
            file: BufWriter::new(file),
            path: path.to_path_buf(),
            encoding,
        })
    }

    fn failed(&self, e: std::io::Error) -> ToolError {
        ToolError::new(format!(
            "cannot write the sent log {}: {e}",
            self.path.display()
        ))
    }

    /// Logs messages `from..to` of `msgs`, all written at `at_ns`.
    fn log(
        &mut self,
        msgs: &EncodedMessages,
        from: usize,
        to: usize,
        at_ns: u128,
    ) -> Result<(), ToolError> {
        for i in from..to {
            let payload = self.encoding.payload(msgs.slice(i, i + 1));
            let r = write!(self.file, "{at_ns}, ")
                .and_then(|_| self.file.write_all(payload))
                .and_then(|_| self.file.write_all(b"\n"));
            r.map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), ToolError> {
        self.file.flush().map_err(|e| self.failed(e))
    }
}

fn wall_clock_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Reads, encodes, connects and sends as `args` say; with `show_progress`,
/// draws a progress bar on the process's stderr.
pub fn send(args: &SendArgs, show_progress: bool) -> Result<SendReport, ToolError> {
    let msgs = read_messages(args)?;
    let total = planned_total(args, msgs.len());
    if msgs.is_empty() && total != Some(0) {
        return Err(ToolError::new(format!(
            "{} holds no message to send (framing {:?}) but --messages/--repeat ask for more; give a non-empty file",
            args.file.display(),
            args.framing
        )));
    }
    let mut sent_log = match &args.sent_log {
        Some(path) => Some(SentLog::create(path, Encoding::of(args))?),
        None => None,
    };

    let mut stream = connect(
        &args.host,
        secs(args.connect_timeout),
        !args.no_wait_connect,
        "a worker's TCP source",
        if args.no_wait_connect {
            " (its --in address), or drop --no-wait-connect to retry while it starts"
        } else {
            " (its --in address), or raise --connect-timeout"
        },
    )?;
    let _ = stream.set_nodelay(true);

    let mut batch = args.batch_size.max(1);
    if let Some(r) = args.rate {
        // About 10 ms worth of messages per write, so pacing stays smooth.
        batch = batch.min(((r / 100.0).ceil() as u64).max(1));
    }
    let bar = Progress::new(show_progress, total, "send");
    let n = msgs.len();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut batches: u64 = 0;
    let mut bytes: u64 = 0;
    let mut idx = 0usize;
    loop {
        let remaining = match total {
            Some(t) => t - sent,
            None => u64::MAX,
        };
        if remaining == 0 {
            break;
        }
        let k = (batch.min(remaining) as usize).min(n - idx);
        let due = match (args.rate, args.batch_interval) {
            (Some(r), _) => Some(started + secs(sent as f64 / r)),
            (None, Some(every)) => Some(started + secs(batches as f64 * every)),
            (None, None) => None,
        };
        if let Some(due) = due {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let chunk = msgs.slice(idx, idx + k);
        stream.write_all(chunk).map_err(|e| {
            ToolError::new(format!(
                "the connection to {} failed after {sent} messages: {e}; the worker may have stopped or closed its source, check its log",
                args.host
            ))
        })?;
        if let Some(log) = &mut sent_log {
            log.log(&msgs, idx, idx + k, wall_clock_ns())?;
        }
        sent += k as u64;
        batches += 1;
        bytes += chunk.len() as u64;
        bar.set(sent);
        idx += k;
        if idx == n {
            idx = 0;
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    if let Some(log) = sent_log {
        log.finish()?;
    }
    bar.clear();
    Ok(SendReport {
        messages: sent,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// `quoll send`: prints the report line on `out`; a progress bar on stderr
/// when `terminal`.
pub fn run_send(
    args: &SendArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
    terminal: bool,
) -> Result<i32, ToolError> {
    if args.connector {
        return crate::connector_client::run_send_connector(args, out, err);
    }
    let report = send(args, terminal && !args.no_progress)?;
    let _ = writeln!(out, "{}", report.line());
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for m in msgs {
            v.extend_from_slice(&(m.len() as u32).to_be_bytes());
            v.extend_from_slice(m);
        }
        v
    }

    #[test]
    fn framed_encoding() {
        let e = encode_messages(
            b"a\nbc\r\n\nlast".to_vec(),
            &Encoding::new(SendFraming::Framed),
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e.buf, frames(&[b"a", b"bc", b"", b"last"]));
        assert_eq!(e.slice(1, 2), frames(&[b"bc"]).as_slice());
        let e = encode_messages(b"x\n".to_vec(), &Encoding::new(SendFraming::Framed)).unwrap();
        assert_eq!(e.buf, frames(&[b"x"]));
        let e = encode_messages(Vec::new(), &Encoding::new(SendFraming::Framed)).unwrap();
        assert!(e.is_empty());
        // A lone trailing \r without a newline after it is data.
        let e = encode_messages(b"a\r".to_vec(), &Encoding::new(SendFraming::Framed)).unwrap();
        assert_eq!(e.buf, frames(&[b"a\r"]));
    }

    #[test]
    fn lines_encoding() {
        let e = encode_messages(
            b"a\nbc\n\nlast".to_vec(),
            &Encoding::new(SendFraming::Lines),
        )
        .unwrap();
        assert_eq!(e.buf, b"a\nbc\n\nlast\n");
        assert_eq!(e.ends, vec![2, 5, 6, 11]);
        assert!(
            encode_messages(Vec::new(), &Encoding::new(SendFraming::Lines))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn raw_framed_encoding() {
        let data = frames(&[b"one", b"", b"three"]);
        let e = encode_messages(data.clone(), &Encoding::new(SendFraming::RawFramed)).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e.buf, data);
        let mut bad = data.clone();
        bad.extend_from_slice(&[0, 0]);
        assert!(encode_messages(bad, &Encoding::new(SendFraming::RawFramed))
            .unwrap_err()
            .contains("stray bytes"));
        let bad = data[..data.len() - 1].to_vec();
        assert!(encode_messages(bad, &Encoding::new(SendFraming::RawFramed))
            .unwrap_err()
            .contains("announces 5 bytes"));
    }

    fn skipping(framing: SendFraming) -> Encoding {
        Encoding {
            skip_empty: true,
            ..Encoding::new(framing)
        }
    }

    #[test]
    fn skip_empty_drops_blank_lines() {
        let data = b"a\n\n\r\nbc\r\n\nlast".to_vec();
        let e = encode_messages(data.clone(), &skipping(SendFraming::Framed)).unwrap();
        assert_eq!(e.buf, frames(&[b"a", b"bc", b"last"]));
        assert_eq!(e.len(), 3);
        let e = encode_messages(data, &skipping(SendFraming::Lines)).unwrap();
        assert_eq!(e.buf, b"a\nbc\r\nlast\n");
        assert_eq!(e.ends, vec![2, 6, 11]);
        let e = encode_messages(b"\n\n".to_vec(), &skipping(SendFraming::Framed)).unwrap();
        assert!(e.is_empty());
        // A line of spaces is not empty: Giles sends it too.
        let e = encode_messages(b" \n".to_vec(), &skipping(SendFraming::Framed)).unwrap();
        assert_eq!(e.buf, frames(&[b" "]));
    }

    #[test]
    fn fixed_size_encoding() {
        let enc = Encoding {
            msg_size: Some(3),
            ..Encoding::new(SendFraming::Fixed)
        };
        let e = encode_messages(b"abcdef\n\x00\x01".to_vec(), &enc).unwrap();
        assert_eq!(e.ends, vec![3, 6, 9]);
        assert_eq!(e.slice(2, 3), b"\n\x00\x01");
        let err = encode_messages(b"abcd".to_vec(), &enc).unwrap_err();
        assert!(err.contains("1 bytes left over"), "{err}");
        let err = encode_messages(b"abc".to_vec(), &Encoding::new(SendFraming::Fixed)).unwrap_err();
        assert!(err.contains("--msg-size"), "{err}");
    }

    #[test]
    fn payloads_lose_their_framing() {
        assert_eq!(
            Encoding::new(SendFraming::Framed).payload(&frames(&[b"xy"])),
            b"xy"
        );
        assert_eq!(
            Encoding::new(SendFraming::RawFramed).payload(&frames(&[b""])),
            b""
        );
        assert_eq!(Encoding::new(SendFraming::Lines).payload(b"xy\n"), b"xy");
        assert_eq!(
            Encoding::new(SendFraming::Fixed).payload(b"\0\0\0\x01z"),
            b"\0\0\0\x01z"
        );
    }

    #[test]
    fn totals() {
        use clap::Parser;
        let args = |extra: &[&str]| {
            let mut v = vec!["send", "--host", "h:1", "--file", "f"];
            v.extend_from_slice(extra);
            match crate::Cli::try_parse_from(std::iter::once("quoll").chain(v)) {
                Ok(crate::Cli {
                    command: crate::Command::Send(a),
                }) => a,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(planned_total(&args(&[]), 5), Some(5));
        assert_eq!(planned_total(&args(&["--repeat"]), 5), None);
        assert_eq!(planned_total(&args(&["--messages", "12"]), 5), Some(12));
        assert_eq!(planned_total(&args(&["--max-messages", "12"]), 5), Some(5));
        assert_eq!(planned_total(&args(&["--max-messages", "3"]), 5), Some(3));
        assert_eq!(
            planned_total(&args(&["--max-messages", "12", "--repeat"]), 5),
            Some(12)
        );
    }
}
