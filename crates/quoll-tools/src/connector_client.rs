//! `quoll send --connector`: feed a file to a worker's source connector
//! over connector protocol v3 ([`quoll_core::connector`]), replaying what
//! the worker has not acknowledged after a rollback or a lost connection.
//!
//! Every record of the file (a line, or a framed record, as `--framing`
//! says; see below) is one MESSAGE on one stream (`--stream-id`), with
//! `message_id` = its 0-based index in the sequence sent + 1 (with
//! `--messages` beyond the file's length the file is gone round again and
//! ids keep increasing), so ids strictly increase and the worker can drop
//! duplicates. The payload is what the app's decoder would get from a TCP
//! source:
//!
//! - `framed` (default): a line without its newline (and without a `\r`
//!   just before it);
//! - `lines`: a line with its newline;
//! - `raw-framed`: the payload of each 4-byte big-endian length-prefixed
//!   record of the file.
//!
//! # Protocol
//!
//! HELLO (version `0.0.1`, `--cookie`, `--program-name`, `--instance-name`),
//! wait for OK and its credits, NOTIFY the stream, wait for NOTIFY_ACK,
//! then send MESSAGE frames while credits last (one credit each, and one
//! for NOTIFY); ACK frames add credits and acknowledge positions. At the
//! end: EOS, then wait until an ACK covers the last message.
//!
//! The whole file stays in memory, so anything not acknowledged can be sent
//! again. On RESTART (to the address it names, or the same one when empty)
//! or a lost connection, the client reconnects (retrying for
//! `--reconnect-timeout` seconds), repeats HELLO and NOTIFY, and resumes
//! right after the point of reference NOTIFY_ACK returns (`u64::MAX`: from
//! the start). A NOTIFY_ACK refusing the stream (still open on the old
//! connection, or a rollback in progress) is retried the same way. An ERROR
//! from the worker (a bad cookie, say) ends the run with its text.
//!
//! One line is printed at the end:
//! `quoll send: sent N messages (B bytes) over the connector protocol in
//! T s (R msgs/s), all acknowledged (K resent after restarts)`.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use quoll_core::connector::{
    self, ConnectorCodec, ConnectorMessage, MAX_FRAME_SIZE, MESSAGE_OVERHEAD, NO_POSITION,
    PROTOCOL_VERSION,
};
use quoll_core::frame::{BlockingFramedRead, ReadError};

use crate::send::{planned_total, read_messages, EncodedMessages, SendArgs, SendFraming};
use crate::{connect, rate, secs, ToolError, EXIT_OK};

/// The payloads to send: one buffer and the span of each record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Records {
    /// The record payloads of a file encoded with `framing`: each message
    /// without its length header (`lines` records keep their newline).
    pub fn from_encoded(e: EncodedMessages, framing: SendFraming) -> Records {
        let header = match framing {
            SendFraming::Lines | SendFraming::Fixed => 0,
            SendFraming::Framed | SendFraming::RawFramed => 4,
        };
        let mut spans = Vec::with_capacity(e.ends.len());
        let mut start = 0;
        for &end in &e.ends {
            spans.push((start + header, end));
            start = end;
        }
        Records { buf: e.buf, spans }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True if there is no record.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Record `i` (0-based).
    pub fn get(&self, i: usize) -> &[u8] {
        let (a, b) = self.spans[i];
        &self.buf[a..b]
    }

    /// The payload of message id `id` (1-based, going round the file).
    fn payload(&self, id: u64) -> &[u8] {
        self.get(((id - 1) % self.spans.len() as u64) as usize)
    }
}

/// What a connector send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectorReport {
    /// Distinct messages sent (and acknowledged).
    pub messages: u64,
    /// Messages never sent because the worker had them already (its
    /// NOTIFY_ACK resumed after them: a stream id used by an earlier run).
    pub skipped: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Messages sent again after a restart or a lost connection.
    pub resent: u64,
    /// Sessions that ended in a RESTART or a lost connection.
    pub restarts: u64,
    /// From the first connection to the final acknowledgement.
    pub elapsed: Duration,
}

impl ConnectorReport {
    /// The final report line.
    pub fn line(&self) -> String {
        let skipped = if self.skipped > 0 {
            format!(", {} skipped as the worker already had them", self.skipped)
        } else {
            String::new()
        };
        format!(
            "quoll send: sent {} messages ({} bytes) over the connector protocol in {:.3} s ({} msgs/s), all acknowledged ({} resent after restarts){skipped}",
            self.messages,
            self.bytes,
            self.elapsed.as_secs_f64(),
            rate(self.messages, self.elapsed),
            self.resent
        )
    }
}

/// What the reader thread hands over.
enum Incoming {
    Msg(ConnectorMessage),
    /// The connection ended (EOF, error or an undecodable frame).
    Closed(String),
}

/// Why a session ended without finishing.
enum SessionEnd {
    /// Reconnect (to `addr` if given) and carry on.
    Reconnect { why: String, addr: Option<String> },
    /// Give up.
    Fatal(ToolError),
}

fn fatal(msg: impl Into<String>) -> SessionEnd {
    SessionEnd::Fatal(ToolError::new(msg))
}

fn reconnect(why: impl Into<String>) -> SessionEnd {
    SessionEnd::Reconnect {
        why: why.into(),
        addr: None,
    }
}

/// State that survives reconnections.
struct Progress {
    /// Messages to send in all; `None` = forever (`--repeat`).
    total: Option<u64>,
    /// Highest message id the worker acknowledged (0 = none).
    acked: u64,
    /// Highest message id sent so far (0 = none).
    highest_sent: u64,
    /// Messages sent at least once.
    distinct: u64,
    /// MESSAGE frames sent, resends included (for `--rate`).
    frames_sent: u64,
    resent: u64,
    bytes: u64,
    started: Instant,
}

struct Session<'a> {
    args: &'a SendArgs,
    addr: &'a str,
    stream: TcpStream,
    rx: Receiver<Incoming>,
    credits: u64,
    stream_name: &'a str,
    instance_name: &'a str,
}

/// Reads frames from `stream` until it ends; forwards them to the channel.
fn spawn_reader(stream: TcpStream) -> Receiver<Incoming> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut frames = BlockingFramedRead::new(stream, ConnectorCodec::default());
        loop {
            let why = match frames.next_frame() {
                Ok(Some(m)) => {
                    if tx.send(Incoming::Msg(m)).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) | Err(ReadError::Truncated { .. }) => {
                    "the worker closed the connection".to_string()
                }
                Err(ReadError::Io(e)) => format!("the connection failed: {e}"),
                Err(ReadError::Protocol(e)) => format!("the worker sent a bad frame: {e}"),
            };
            let _ = tx.send(Incoming::Closed(why));
            return;
        }
    });
    rx
}

impl Session<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        self.stream
            .write_all(bytes)
            .map_err(|e| reconnect(format!("writing to {} failed: {e}", self.addr)))
    }

    fn send_msg(&mut self, m: &ConnectorMessage) -> Result<(), SessionEnd> {
        let bytes = m
            .encode()
            .map_err(|e| fatal(format!("can't encode {}: {e}", m.frame_type())))?;
        self.write(&bytes)
    }

    /// Handles a frame that may come at any time; returns it if the
    /// caller should look at it.
    fn common(
        &mut self,
        inc: Incoming,
        p: &mut Progress,
    ) -> Result<Option<ConnectorMessage>, SessionEnd> {
        match inc {
            Incoming::Closed(why) => Err(reconnect(why)),
            Incoming::Msg(ConnectorMessage::Ack { credits, acks }) => {
                self.credits += credits as u64;
                for (id, por) in acks {
                    if id == self.args.stream_id && por != NO_POSITION && por > p.acked {
                        p.acked = por;
                    }
                }
                Ok(None)
            }
            Incoming::Msg(ConnectorMessage::Restart { address }) => Err(SessionEnd::Reconnect {
                why: "the worker asked for a restart".into(),
                addr: (!address.is_empty()).then_some(address),
            }),
            Incoming::Msg(ConnectorMessage::Error { message }) => {
                let hint = if message.starts_with("Bad cookie") {
                    "; give the source connector's cookie with --cookie"
                } else if message.starts_with("Unknown protocol version") {
                    "; the worker speaks another version of the connector protocol"
                } else {
                    "; check the worker's log"
                };
                Err(fatal(format!(
                    "the worker at {} sent ERROR: {message}{hint}",
                    self.addr
                )))
            }
            Incoming::Msg(m) => Ok(Some(m)),
        }
    }

    /// Waits up to `timeout` until `done` holds (`Ok(None)`) or a frame
    /// arrives that [`Session::common`] does not handle (`Ok(Some(..))`).
    fn wait(
        &mut self,
        p: &mut Progress,
        timeout: Duration,
        what: &str,
        done: fn(&Self, &Progress) -> bool,
    ) -> Result<Option<ConnectorMessage>, SessionEnd> {
        let deadline = Instant::now() + timeout;
        while !done(self, p) {
            let left = deadline.saturating_duration_since(Instant::now());
            let inc = match self.rx.recv_timeout(left) {
                Ok(i) => i,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(fatal(format!(
                        "the worker at {} sent no {what} within {:.1} s; check its log, or raise --reconnect-timeout",
                        self.addr,
                        timeout.as_secs_f64()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(reconnect("the connection ended"))
                }
            };
            if let Some(m) = self.common(inc, p)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Waits for the next frame that [`Session::common`] does not handle.
    fn next_frame(
        &mut self,
        p: &mut Progress,
        timeout: Duration,
        what: &str,
    ) -> Result<ConnectorMessage, SessionEnd> {
        match self.wait(p, timeout, what, |_, _| false)? {
            Some(m) => Ok(m),
            None => unreachable!("the condition never holds"),
        }
    }

    /// Waits until the client has credits.
    fn wait_credits(&mut self, p: &mut Progress, timeout: Duration) -> Result<(), SessionEnd> {
        match self.wait(p, timeout, "credits", |s, _| s.credits > 0)? {
            None => Ok(()),
            Some(m) => Err(self.unexpected(&m)),
        }
    }

    /// Handles what already arrived, without waiting.
    fn poll(&mut self, p: &mut Progress) -> Result<(), SessionEnd> {
        loop {
            match self.rx.try_recv() {
                Ok(inc) => {
                    if let Some(m) = self.common(inc, p)? {
                        return Err(self.unexpected(&m));
                    }
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(reconnect("the connection ended")),
            }
        }
    }

    fn unexpected(&self, m: &ConnectorMessage) -> SessionEnd {
        fatal(format!(
            "the worker at {} sent an unexpected {} frame; is {} a source connector?",
            self.addr,
            m.frame_type(),
            self.addr
        ))
    }

    /// One connection: handshake, stream, messages, EOS, final ACK.
    fn run(
        &mut self,
        p: &mut Progress,
        records: &Records,
        outage: &mut Option<Instant>,
    ) -> Result<(), SessionEnd> {
        let timeout = secs(self.args.reconnect_timeout);
        self.send_msg(&ConnectorMessage::Hello {
            version: PROTOCOL_VERSION.into(),
            cookie: self.args.cookie.clone(),
            program_name: self.args.program_name.clone(),
            instance_name: self.instance_name.to_string(),
        })?;
        match self.next_frame(p, timeout, "reply to HELLO")? {
            ConnectorMessage::Ok { initial_credits } => self.credits += initial_credits as u64,
            m => return Err(self.unexpected(&m)),
        }
        self.wait_credits(p, timeout)?;
        let asked = if p.acked == 0 { NO_POSITION } else { p.acked };
        self.send_msg(&ConnectorMessage::Notify {
            stream_id: self.args.stream_id,
            stream_name: self.stream_name.to_string(),
            point_of_ref: asked,
        })?;
        self.credits -= 1;
        let resume = loop {
            match self.next_frame(p, timeout, "NOTIFY_ACK")? {
                ConnectorMessage::NotifyAck {
                    success,
                    stream_id,
                    point_of_ref,
                } if stream_id == self.args.stream_id => {
                    if !success {
                        return Err(reconnect(format!(
                            "the worker refused stream {stream_id} for now (still open on an old connection, or a rollback in progress)"
                        )));
                    }
                    break point_of_ref;
                }
                ConnectorMessage::NotifyAck { .. } => continue,
                m => return Err(self.unexpected(&m)),
            }
        };
        *outage = None;
        let mut next = if resume == NO_POSITION {
            1
        } else {
            resume.saturating_add(1)
        };
        if resume != NO_POSITION && resume > p.acked {
            p.acked = resume;
        }

        let mut batch = self.args.batch_size.max(1);
        if let Some(r) = self.args.rate {
            batch = batch.min(((r / 100.0).ceil() as u64).max(1));
        }
        let mut buf = Vec::new();
        while p.total.is_none_or(|t| next <= t) {
            self.poll(p)?;
            if self.credits == 0 {
                self.wait_credits(p, timeout)?;
                continue;
            }
            let remaining = p.total.map_or(u64::MAX, |t| t - next + 1);
            let k = batch.min(self.credits).min(remaining);
            if let Some(r) = self.args.rate {
                let due = p.started + secs(p.frames_sent as f64 / r);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            buf.clear();
            for id in next..next + k {
                let payload = records.payload(id);
                if payload.len() + MESSAGE_OVERHEAD - connector::LENGTH_FIELD_LEN
                    > MAX_FRAME_SIZE as usize
                {
                    return Err(fatal(format!(
                        "record {} is {} bytes, more than a connector frame carries ({} bytes)",
                        (id - 1) % records.len() as u64 + 1,
                        payload.len(),
                        MAX_FRAME_SIZE as usize + connector::LENGTH_FIELD_LEN - MESSAGE_OVERHEAD
                    )));
                }
                connector::encode_message_into(&mut buf, self.args.stream_id, id, 0, b"", payload)
                    .map_err(|e| fatal(format!("can't encode message {id}: {e}")))?;
            }
            self.write(&buf)?;
            for id in next..next + k {
                if id <= p.highest_sent {
                    p.resent += 1;
                } else {
                    p.highest_sent = id;
                    p.distinct += 1;
                    p.bytes += records.payload(id).len() as u64;
                }
            }
            p.frames_sent += k;
            self.credits -= k;
            next += k;
        }
        self.send_msg(&ConnectorMessage::Eos {
            stream_id: self.args.stream_id,
        })?;
        let covered = |_: &Self, p: &Progress| p.total.is_none_or(|t| p.acked >= t);
        match self.wait(p, timeout, "final acknowledgement", covered)? {
            None => Ok(()),
            Some(m) => Err(self.unexpected(&m)),
        }
    }
}

/// Reads the file and sends it as `args` say (`args.connector` is set).
pub fn send_connector(args: &SendArgs, err: &mut dyn Write) -> Result<ConnectorReport, ToolError> {
    let records = Records::from_encoded(read_messages(args)?, args.framing);
    let total = planned_total(args, records.len());
    if records.is_empty() && total != Some(0) {
        return Err(ToolError::new(format!(
            "{} holds no message to send (framing {:?}) but --messages/--repeat ask for more; give a non-empty file",
            args.file.display(),
            args.framing
        )));
    }
    let stream_name = args
        .stream_name
        .clone()
        .unwrap_or_else(|| args.file.display().to_string());
    let instance_name = args
        .instance_name
        .clone()
        .unwrap_or_else(|| format!("quoll-send-{}", std::process::id()));
    let mut p = Progress {
        total,
        acked: 0,
        highest_sent: 0,
        distinct: 0,
        frames_sent: 0,
        resent: 0,
        bytes: 0,
        started: Instant::now(),
    };
    let mut addr = args.host.clone();
    let mut restarts = 0u64;
    let mut outage: Option<Instant> = None;
    loop {
        let stream = match outage {
            None if restarts == 0 => connect(
                &addr,
                secs(args.connect_timeout),
                !args.no_wait_connect,
                "a worker's source connector",
                if args.no_wait_connect {
                    " (its SourceConnectorConfig host and port), or drop --no-wait-connect to retry while it starts"
                } else {
                    " (its SourceConnectorConfig host and port), or raise --connect-timeout"
                },
            )?,
            _ => {
                let since = *outage.get_or_insert_with(Instant::now);
                let left = secs(args.reconnect_timeout).saturating_sub(since.elapsed());
                connect(
                    &addr,
                    left,
                    true,
                    "the worker's source connector",
                    ", or raise --reconnect-timeout",
                )?
            }
        };
        if restarts == 0 && outage.is_none() {
            p.started = Instant::now();
        }
        let _ = stream.set_nodelay(true);
        let reader = stream
            .try_clone()
            .map_err(|e| ToolError::new(format!("cannot use the connection to {addr}: {e}")))?;
        let mut s = Session {
            args,
            addr: &addr,
            stream,
            rx: spawn_reader(reader),
            credits: 0,
            stream_name: &stream_name,
            instance_name: &instance_name,
        };
        let r = s.run(&mut p, &records, &mut outage);
        let _ = s.stream.shutdown(Shutdown::Both);
        match r {
            Ok(()) => break,
            Err(SessionEnd::Fatal(e)) => return Err(e),
            Err(SessionEnd::Reconnect { why, addr: to }) => {
                restarts += 1;
                let since = *outage.get_or_insert_with(Instant::now);
                if since.elapsed() >= secs(args.reconnect_timeout) {
                    return Err(ToolError::new(format!(
                        "{why}, and no session with {addr} could resume within {:.1} s (--reconnect-timeout); {} of {} messages acknowledged",
                        args.reconnect_timeout,
                        p.acked,
                        total.map_or("unlimited".to_string(), |t| t.to_string())
                    )));
                }
                if let Some(a) = to {
                    addr = a;
                }
                let _ = writeln!(
                    err,
                    "quoll send: {why}; reconnecting to {addr} and resuming after the last acknowledged message ({})",
                    p.acked
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(ConnectorReport {
        messages: p.distinct,
        skipped: total.map_or(0, |t| t.saturating_sub(p.distinct)),
        bytes: p.bytes,
        resent: p.resent,
        restarts,
        elapsed: p.started.elapsed(),
    })
}

/// `quoll send --connector`: prints the report line on `out`.
pub fn run_send_connector(
    args: &SendArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ToolError> {
    let report = send_connector(args, err)?;
    let _ = writeln!(out, "{}", report.line());
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::{encode_messages, Encoding};

    /// The records of a file's contents cut as `framing` says.
    fn records(data: Vec<u8>, framing: SendFraming) -> Result<Records, String> {
        Ok(Records::from_encoded(
            encode_messages(data, &Encoding::new(framing))?,
            framing,
        ))
    }

    fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for m in msgs {
            v.extend_from_slice(&(m.len() as u32).to_be_bytes());
            v.extend_from_slice(m);
        }
        v
    }

    #[test]
    fn records_per_framing() {
        let r = records(b"a\nbc\r\n\nlast".to_vec(), SendFraming::Framed).unwrap();
        let got: Vec<&[u8]> = (0..r.len()).map(|i| r.get(i)).collect();
        assert_eq!(got, vec![&b"a"[..], b"bc", b"", b"last"]);
        let r = records(b"a\nbc\n".to_vec(), SendFraming::Lines).unwrap();
        let got: Vec<&[u8]> = (0..r.len()).map(|i| r.get(i)).collect();
        assert_eq!(got, vec![&b"a\n"[..], b"bc\n"]);
        let r = records(frames(&[b"one", b"", b"three"]), SendFraming::RawFramed).unwrap();
        let got: Vec<&[u8]> = (0..r.len()).map(|i| r.get(i)).collect();
        assert_eq!(got, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(r.payload(1), b"one");
        assert_eq!(r.payload(4), b"one");
        assert_eq!(r.payload(6), b"three");
        assert!(records(Vec::new(), SendFraming::Framed).unwrap().is_empty());
    }

    #[test]
    fn report_line() {
        let mut r = ConnectorReport {
            messages: 20,
            skipped: 0,
            bytes: 100,
            resent: 3,
            restarts: 1,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(
            r.line(),
            "quoll send: sent 20 messages (100 bytes) over the connector protocol in 2.000 s (10 msgs/s), all acknowledged (3 resent after restarts)"
        );
        r.skipped = 4;
        assert!(r
            .line()
            .ends_with("(3 resent after restarts), 4 skipped as the worker already had them"));
    }
}
