//! A client of a worker's external channel, and the `quoll status` and
//! `quoll shutdown` tools built on it.
//!
//! The channel's frames and payloads are those of
//! [`quoll_core::external`]: `u32` BE length (2 + payload size), `u16` BE
//! message type, UTF-8 payload, read with [`ExternalCodec`] through
//! [`BlockingFramedRead`]. A request goes out on a fresh connection and its
//! reply comes back on it.
//!
//! - `quoll status HOST:PORT [--json] [--timeout SECS]` sends a
//!   cluster-status query (type 9). A response (type 10) is printed on
//!   stdout, as `key: value` lines or, with `--json`, as the JSON payload
//!   exactly as received; exit 0. "not initialized" (type 11) prints `not
//!   initialized` and exits 2. Anything else is an error (exit 1).
//! - `quoll shutdown HOST:PORT [--message TEXT] [--timeout SECS]` sends a
//!   clean shutdown (type 3) and waits for the worker to close the
//!   connection or reply, printing what happened; exit 0 once the request
//!   was delivered, 1 if it could not be.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::Args;
use quoll_core::external::{
    try_encode_frame, ClusterStatus, ExternalCodec, Frame, FrameError, MessageType, StateEntities,
};
use quoll_core::frame::{BlockingFramedRead, ReadError};

use crate::{
    connect, parse_seconds, secs, ToolError, EXIT_FAILURE, EXIT_NOT_INITIALIZED, EXIT_OK,
    EXIT_USAGE,
};

/// Arguments of `quoll status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// A worker's external channel address (its --external).
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// Print the JSON payload exactly as the worker sent it.
    #[arg(long)]
    pub json: bool,
    /// Instead of the cluster status, print the keys whose state this
    /// worker holds, per state or window stage (the state-entity query).
    #[arg(long)]
    pub keys: bool,
    /// Seconds to wait for the connection and for the reply.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = parse_seconds)]
    pub timeout: f64,
}

/// Arguments of `quoll shutdown`.
#[derive(Args, Debug, Clone)]
pub struct ShutdownArgs {
    /// A worker's external channel address (its --external).
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// Optional text carried by the shutdown request.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub message: String,
    /// Seconds to wait for the connection, then for the worker to close it or reply.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_seconds)]
    pub timeout: f64,
}

/// Arguments of `quoll shrink`.
#[derive(Args, Debug, Clone)]
pub struct ShrinkArgs {
    /// The initializer's external channel address (its --external).
    #[arg(value_name = "HOST:PORT")]
    pub address: String,
    /// The workers to remove, by name (comma-separated).
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        conflicts_with = "count"
    )]
    pub names: Vec<String>,
    /// How many workers to remove (the last ones by name).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Only ask which workers may leave; change nothing.
    #[arg(long, conflicts_with_all = ["names", "count"])]
    pub query: bool,
    /// Seconds to wait for the connection, then for the reply.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = parse_seconds)]
    pub timeout: f64,
}

/// Reply to a cluster-status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusReply {
    /// Type 10: the status, and the JSON text as received.
    Ready(ClusterStatus, String),
    /// Type 11: the worker is not ready yet.
    NotInitialized,
}

/// What became of a shutdown request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The worker closed (or reset) the connection.
    Closed,
    /// The worker answered with a frame.
    Replied(Frame),
    /// Nothing happened within the timeout (the request was delivered).
    NoReply,
}

/// A connection to one worker's external channel.
#[derive(Debug)]
pub struct ExternalClient {
    frames: BlockingFramedRead<TcpStream, ExternalCodec>,
    addr: String,
}

impl ExternalClient {
    /// Connects (one attempt, waiting up to `timeout`); reads wait up to
    /// `timeout` too.
    pub fn connect(addr: &str, timeout: Duration) -> Result<ExternalClient, ToolError> {
        let stream = connect(
            addr,
            timeout,
            false,
            "a worker's external channel",
            " (its --external address); the worker may not be started yet",
        )?;
        let _ = stream.set_nodelay(true);
        let client = ExternalClient {
            frames: BlockingFramedRead::new(stream, ExternalCodec::default()),
            addr: addr.to_string(),
        };
        client.set_timeout(timeout);
        Ok(client)
    }

    /// Sets the read and write timeout (zero means none).
    pub fn set_timeout(&self, timeout: Duration) {
        let t = if timeout.is_zero() {
            None
        } else {
            Some(timeout)
        };
        let stream = self.frames.get_ref();
        let _ = stream.set_read_timeout(t);
        let _ = stream.set_write_timeout(t);
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one frame (a payload too long for a frame is `InvalidInput`).
    pub fn send(&mut self, ty: MessageType, payload: &[u8]) -> io::Result<()> {
        let bytes = try_encode_frame(ty, payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = self.frames.get_mut();
        stream.write_all(&bytes)?;
        stream.flush()
    }

    /// Receives one frame; `Ok(None)` when the worker closed the connection.
    /// A read that times out keeps what arrived of a frame for the next call.
    pub fn recv(&mut self) -> Result<Option<Frame>, ReadError<FrameError>> {
        self.frames.next_frame()
    }

    fn io_error(&self, doing: &str, e: &ReadError<FrameError>) -> ToolError {
        if is_timeout(e) {
            ToolError::new(format!(
                "{} did not answer {doing} in time; the worker may be busy or hung: check its log, or raise --timeout",
                self.addr
            ))
        } else {
            ToolError::new(format!(
                "{doing} failed on {}: {e}; check the worker's log",
                self.addr
            ))
        }
    }

    /// Sends a request and waits for its reply frame.
    pub fn request(&mut self, ty: MessageType, payload: &[u8]) -> Result<Frame, ToolError> {
        let doing = format!("the {} request", ty.name());
        self.send(ty, payload)
            .map_err(|e| self.io_error(&doing, &e.into()))?;
        match self.recv() {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(ToolError::new(format!(
                "{} closed the connection without answering {doing}; is that address a worker's --external channel?",
                self.addr
            ))),
            Err(e) => Err(self.io_error(&doing, &e)),
        }
    }

    /// Asks for the cluster status (type 9).
    pub fn cluster_status(&mut self) -> Result<StatusReply, ToolError> {
        let reply = self.request(MessageType::ClusterStatusQuery, b"")?;
        match reply.message_type() {
            Some(MessageType::ClusterStatusResponse) => {
                let text = reply.payload_str().map_err(|_| {
                    ToolError::new(format!("{} sent a cluster-status payload that is not UTF-8", self.addr))
                })?;
                let status: ClusterStatus = serde_json::from_str(text).map_err(|e| {
                    ToolError::new(format!("{} sent an invalid cluster-status payload ({e}): {text}", self.addr))
                })?;
                Ok(StatusReply::Ready(status, text.to_string()))
            }
            Some(MessageType::ClusterStatusNotInitialized) => Ok(StatusReply::NotInitialized),
            _ => Err(ToolError::new(format!(
                "{} answered the cluster-status query with message type {} ({}); is that address a worker's --external channel?",
                self.addr,
                reply.msg_type,
                reply.payload_lossy()
            ))),
        }
    }

    /// Asks for the keys held per state or window stage (type 17); returns
    /// them and the payload as sent.
    pub fn state_entities(&mut self) -> Result<(StateEntities, String), ToolError> {
        let reply = self.request(MessageType::StateEntityQuery, b"")?;
        if reply.message_type() != Some(MessageType::StateEntityQueryResponse) {
            return Err(ToolError::new(format!(
                "{} answered the state-entity query with message type {} ({}); is that address a quoll worker's --external channel?",
                self.addr,
                reply.msg_type,
                reply.payload_lossy()
            )));
        }
        let text = reply.payload_str().map_err(|_| {
            ToolError::new(format!(
                "{} sent a state-entity payload that is not UTF-8",
                self.addr
            ))
        })?;
        let entities = serde_json::from_str(text).map_err(|e| {
            ToolError::new(format!(
                "{} sent an invalid state-entity payload ({e}): {text}",
                self.addr
            ))
        })?;
        Ok((entities, text.to_string()))
    }

    /// Sends a clean shutdown (type 3) and waits up to `wait` for the
    /// worker to close the connection or reply.
    pub fn shutdown(
        &mut self,
        message: &str,
        wait: Duration,
    ) -> Result<ShutdownOutcome, ToolError> {
        self.send(MessageType::CleanShutdown, message.as_bytes())
            .map_err(|e| self.io_error("the clean-shutdown request", &e.into()))?;
        if wait.is_zero() {
            return Ok(ShutdownOutcome::NoReply);
        }
        self.set_timeout(wait);
        Ok(match self.recv() {
            Ok(Some(f)) => ShutdownOutcome::Replied(f),
            Ok(None) => ShutdownOutcome::Closed,
            Err(e) if is_timeout(&e) => ShutdownOutcome::NoReply,
            // Reset, closed in the middle of a frame, or garbage: the worker
            // went away.
            Err(_) => ShutdownOutcome::Closed,
        })
    }
}

/// A read or write that ran out of time (the socket's timeout).
fn is_timeout(e: &ReadError<FrameError>) -> bool {
    matches!(e, ReadError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// `quoll status`.
pub fn run_status(
    args: &StatusArgs,
    out: &mut dyn Write,
    _err: &mut dyn Write,
) -> Result<i32, ToolError> {
    let mut client = ExternalClient::connect(&args.address, secs(args.timeout))?;
    if args.keys {
        let (entities, text) = client.state_entities()?;
        if args.json {
            let _ = writeln!(out, "{text}");
        } else {
            for (stage, keys) in &entities.by_stage {
                let _ = writeln!(
                    out,
                    "stage {stage}: {} keys: {}",
                    keys.len(),
                    keys.join(", ")
                );
            }
        }
        return Ok(EXIT_OK);
    }
    match client.cluster_status()? {
        StatusReply::Ready(status, text) => {
            if args.json {
                let _ = writeln!(out, "{text}");
            } else {
                let _ = writeln!(out, "worker_count: {}", status.worker_count);
                let _ = writeln!(out, "worker_names: {}", status.worker_names.join(", "));
                let _ = writeln!(out, "processing_messages: {}", status.processing_messages);
            }
            Ok(EXIT_OK)
        }
        StatusReply::NotInitialized => {
            let _ = writeln!(out, "not initialized");
            Ok(EXIT_NOT_INITIALIZED)
        }
    }
}

/// `quoll shrink`: the external channel's shrink request (type 4),
/// answered with the workers that may leave or now leave (type 5), or why
/// not (type 6, exit status 1).
pub fn run_shrink(
    args: &ShrinkArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, ToolError> {
    if !args.query && args.names.is_empty() && args.count.is_none() {
        return Err(ToolError::with_code(
            EXIT_USAGE,
            "say which workers leave: --names NAME[,NAME...] or --count N (or --query)",
        ));
    }
    let mut client = ExternalClient::connect(&args.address, secs(args.timeout))?;
    let request = quoll_core::external::ShrinkRequest {
        query: args.query,
        node_names: args.names.clone(),
        node_count: args.count.unwrap_or(0),
    };
    let payload = serde_json::to_vec(&request).map_err(|e| ToolError::new(e.to_string()))?;
    let reply = client.request(MessageType::ShrinkRequest, &payload)?;
    let text = reply.payload_lossy();
    match reply.message_type() {
        Some(MessageType::ShrinkQueryResponse) => {
            let answer: quoll_core::external::ShrinkQueryResponse = serde_json::from_str(&text)
                .map_err(|e| {
                    ToolError::new(format!(
                        "{} sent an invalid shrink answer ({e}): {text}",
                        args.address
                    ))
                })?;
            let what = if args.query {
                "may leave"
            } else {
                "are leaving"
            };
            let _ = writeln!(
                out,
                "{} worker(s) {what}: {}",
                answer.node_count,
                answer.node_names.join(", ")
            );
            Ok(EXIT_OK)
        }
        Some(MessageType::ShrinkError) => {
            let _ = writeln!(err, "quoll shrink: refused: {text}");
            Ok(EXIT_FAILURE)
        }
        _ => Err(ToolError::new(format!(
            "{} answered the shrink request with type {}: {text}",
            args.address, reply.msg_type
        ))),
    }
}

/// `quoll shutdown`.
pub fn run_shutdown(
    args: &ShutdownArgs,
    out: &mut dyn Write,
    _err: &mut dyn Write,
) -> Result<i32, ToolError> {
    let wait = secs(args.timeout);
    let mut client = ExternalClient::connect(&args.address, wait)?;
    let addr = args.address.as_str();
    match client.shutdown(&args.message, wait)? {
        ShutdownOutcome::Closed => {
            let _ = writeln!(
                out,
                "quoll shutdown: {addr} accepted the clean shutdown and closed the connection"
            );
        }
        ShutdownOutcome::Replied(f) => {
            let kind = match f.message_type() {
                Some(t) => t.to_string(),
                None => format!("unknown type {}", f.msg_type),
            };
            let _ = writeln!(
                out,
                "quoll shutdown: {addr} replied with {kind}: {}",
                f.payload_lossy()
            );
        }
        ShutdownOutcome::NoReply => {
            let _ = writeln!(
                out,
                "quoll shutdown: sent the clean shutdown to {addr}; no reply and the connection stayed open for {:.1} s",
                args.timeout
            );
        }
    }
    Ok(EXIT_OK)
}
