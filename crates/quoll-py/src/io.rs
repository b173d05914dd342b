//! The worker's I/O, on tokio threads: TCP source listeners, sink writers and
//! the external channel. Nothing here touches Python: sources hand the
//! executor whole frames as `Bytes`, sinks receive encoded bytes.
//!
//! Back-pressure: the executor's inbox and each sink's queue are bounded
//! channels. A source connection whose frames the executor can't take yet
//! stops reading its socket, so TCP flow control slows the sender; a sink
//! that can't keep up makes the executor wait.

use bytes::Bytes;
use quoll_core::external::{self, ExternalFrameDecoder, MessageType};
use quoll_core::length_header::{FrameDecoder, FrameError, FramePart, LengthHeader};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// What the I/O threads tell the executor. Source frames come through one
/// inbox, everything else (peers, control) through another that the
/// executor serves first.
pub enum Event {
    /// Frames read from one connection of a source, in order. `position`
    /// (replayable sources only) is where the source stands once these
    /// frames are processed; a checkpoint records it.
    Frames { source: usize, frames: Vec<Bytes>, position: Option<SourcePosition> },
    /// A data batch from the worker with index `from`.
    PeerData { from: usize, body: Bytes },
    /// A link to another worker closed or failed.
    PeerLost { name: String, why: String },
    /// A clean shutdown: requested here (external channel) or relayed by
    /// the cluster (`from_cluster`).
    Shutdown { reason: String, from_cluster: bool },
}

/// A replayable source's position after some frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePosition {
    /// File source: the byte offset after the last frame.
    FileOffset(u64),
    /// Connector source: a stream and the message id of its last frame.
    Stream { id: u64, point_of_ref: u64 },
}

/// Counters shared by the I/O tasks and the executor.
#[derive(Default)]
pub struct IoStats {
    pub frames_in: AtomicU64,
    pub bad_frames: AtomicU64,
    pub sink_dropped: AtomicU64,
}

/// How long a sink waits between connection attempts (Wallaroo: 250 ms).
const SINK_RETRY: Duration = Duration::from_millis(250);
/// How much output a disconnected sink holds before it drops messages.
const SINK_HOLD_BYTES: usize = 64 << 20;
/// Frames per event handed to the executor: bounds latency and memory.
const FRAMES_PER_EVENT: usize = 4096;

/// Accepts connections for one TCP source and splits each into frames.
#[allow(clippy::too_many_arguments)]
pub async fn run_tcp_source(
    worker: Arc<str>,
    source: usize,
    name: String,
    listener: TcpListener,
    header: LengthHeader,
    max_frame_size: u64,
    parallelism: usize,
    tx: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
) {
    let permits = Arc::new(Semaphore::new(parallelism));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("quoll: error: worker '{worker}', source '{name}': accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (worker, name, tx, stats) = (worker.clone(), name.clone(), tx.clone(), stats.clone());
        tokio::spawn(async move {
            let place = format!("worker '{worker}', source '{name}', connection from {peer}");
            read_frames(&place, source, stream, header, max_frame_size, tx, &stats).await;
            drop(permit);
        });
    }
}

/// Reads a file of framed records (quoll's file source) to its end.
#[allow(clippy::too_many_arguments)]
pub async fn run_file_source(
    worker: Arc<str>,
    source: usize,
    name: String,
    path: String,
    header: LengthHeader,
    max_frame_size: u64,
    tx: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
) {
    let place = format!("worker '{worker}', source '{name}', file {path}");
    match tokio::fs::File::open(&path).await {
        Ok(file) => read_frames(&place, source, file, header, max_frame_size, tx, &stats).await,
        Err(e) => eprintln!("quoll: error: {place}: can't open: {e}; this source produces nothing"),
    }
}

/// Splits a byte stream into frames and hands them to the executor in
/// order, until the end of the stream.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    place: &str,
    source: usize,
    mut stream: R,
    header: LengthHeader,
    max_frame_size: u64,
    tx: mpsc::Sender<Event>,
    stats: &IoStats,
) {
    let mut decoder = FrameDecoder::new(header, max_frame_size);
    loop {
        let buf = decoder.read_buf();
        if buf.capacity() - buf.len() < (64 << 10) {
            buf.reserve(256 << 10);
        }
        let n = match stream.read_buf(buf).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("quoll: error: {place}: read failed: {e}; connection closed");
                return;
            }
        };
        if n == 0 {
            if let Some(t) = decoder.finish() {
                stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "quoll: error: {place}: input ended in the middle of a frame \
                     ({} of {} {} bytes received); that truncated frame is dropped",
                    t.got,
                    t.expected,
                    match t.part {
                        FramePart::Header => "header",
                        FramePart::Payload | FramePart::SkippedPayload => "payload",
                    }
                );
            }
            return;
        }
        let mut frames = Vec::new();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    frames.push(frame.payload);
                    if frames.len() >= FRAMES_PER_EVENT {
                        stats.frames_in.fetch_add(frames.len() as u64, Ordering::Relaxed);
                        if tx.send(Event::Frames { source, frames: std::mem::take(&mut frames), position: None }).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(FrameError::Oversized { declared, max }) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "quoll: error: {place}: frame declares {declared} bytes, more than the limit of {max} \
                         (--max-frame-size); frame skipped, later frames still read"
                    );
                }
                Err(e) => {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    eprintln!("quoll: error: {place}: {e}; the stream can't be re-synchronised, connection closed");
                    return;
                }
            }
        }
        if !frames.is_empty() {
            stats.frames_in.fetch_add(frames.len() as u64, Ordering::Relaxed);
            if tx.send(Event::Frames { source, frames, position: None }).await.is_err() {
                return;
            }
        }
    }
}

/// Encoded output for one sink, and how many messages it holds.
pub struct SinkChunk {
    pub bytes: Bytes,
    pub messages: u64,
}

/// Writes a TCP sink: connects (retrying every 250 ms), writes chunks in
/// order, reconnects after a failure. While disconnected it holds up to
/// [`SINK_HOLD_BYTES`] of output and drops (and counts) what comes beyond.
pub async fn run_tcp_sink(worker: Arc<str>, label: String, addr: String, mut rx: mpsc::Receiver<SinkChunk>, stats: Arc<IoStats>) {
    let mut held: VecDeque<SinkChunk> = VecDeque::new();
    let mut held_bytes = 0usize;
    let mut warned = false;
    let mut closed = false;
    loop {
        // Connect, taking in (and holding) output meanwhile.
        let mut stream = loop {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    if warned {
                        eprintln!("quoll: worker '{worker}', {label}: connected to {addr}");
                    }
                    let _ = s.set_nodelay(true);
                    break s;
                }
                Err(e) => {
                    if closed && held.is_empty() {
                        return;
                    }
                    if !warned {
                        eprintln!(
                            "quoll: error: worker '{worker}', {label}: can't connect to {addr}: {e}; \
                             retrying every 250 ms and holding up to {} MiB of output meanwhile",
                            SINK_HOLD_BYTES >> 20
                        );
                        warned = true;
                    }
                    let deadline = tokio::time::sleep(SINK_RETRY);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            chunk = rx.recv(), if !closed => match chunk {
                                Some(c) => hold(&worker, &label, &mut held, &mut held_bytes, c, &stats),
                                None => closed = true,
                            },
                        }
                    }
                    if closed {
                        // The worker is stopping: give the sink a last few chances.
                        tokio::time::sleep(SINK_RETRY).await;
                    }
                }
            }
        };
        warned = false;
        // Connected: write what was held, then what arrives.
        let mut failed = false;
        while let Some(c) = held.front() {
            if let Err(e) = stream.write_all(&c.bytes).await {
                eprintln!("quoll: error: worker '{worker}', {label}: write to {addr} failed: {e}; reconnecting");
                failed = true;
                break;
            }
            held_bytes -= c.bytes.len();
            held.pop_front();
        }
        if failed {
            continue;
        }
        while let Some(c) = if closed { None } else { rx.recv().await } {
            if let Err(e) = stream.write_all(&c.bytes).await {
                eprintln!("quoll: error: worker '{worker}', {label}: write to {addr} failed: {e}; reconnecting");
                held_bytes += c.bytes.len();
                held.push_back(c);
                failed = true;
                break;
            }
        }
        if !failed {
            let _ = stream.flush().await;
            let _ = stream.shutdown().await;
            return;
        }
    }
}

fn hold(worker: &str, label: &str, held: &mut VecDeque<SinkChunk>, held_bytes: &mut usize, c: SinkChunk, stats: &IoStats) {
    if *held_bytes + c.bytes.len() > SINK_HOLD_BYTES {
        let before = stats.sink_dropped.fetch_add(c.messages, Ordering::Relaxed);
        if before == 0 || (before + c.messages) / 100_000 != before / 100_000 {
            eprintln!(
                "quoll: error: worker '{worker}', {label}: not connected and {} MiB already held; \
                 {} messages dropped so far",
                SINK_HOLD_BYTES >> 20,
                before + c.messages
            );
        }
        return;
    }
    *held_bytes += c.bytes.len();
    held.push_back(c);
}

/// Writes a file sink: the file is created (truncated) at start-up and every
/// chunk appended in order.
pub async fn run_file_sink(worker: Arc<str>, label: String, mut file: tokio::fs::File, mut rx: mpsc::Receiver<SinkChunk>) {
    while let Some(c) = rx.recv().await {
        if let Err(e) = file.write_all(&c.bytes).await {
            eprintln!("quoll: error: worker '{worker}', {label}: write failed: {e}");
        }
    }
    if let Err(e) = file.sync_all().await {
        eprintln!("quoll: error: worker '{worker}', {label}: sync failed: {e}");
    }
}

/// What the external channel reports; the worker updates it.
pub struct ExternalView {
    pub ready: AtomicBool,
    pub processing: AtomicBool,
    pub worker_names: Mutex<Vec<String>>,
    pub source_ids: Vec<String>,
    /// A JSON object with the worker's counters, refreshed by the executor.
    pub report: Mutex<String>,
}

/// Serves the external channel (spec 8.5): one task per connection, one
/// reply per request frame.
pub async fn run_external(worker: Arc<str>, listener: TcpListener, view: Arc<ExternalView>, tx: mpsc::Sender<Event>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let (worker, view, tx) = (worker.clone(), view.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_external(&worker, stream, &view, &tx).await {
                eprintln!("quoll: worker '{worker}': external channel connection from {peer}: {e}");
            }
        });
    }
}

async fn serve_external(worker: &str, mut stream: TcpStream, view: &ExternalView, tx: &mpsc::Sender<Event>) -> std::io::Result<()> {
    let mut decoder = ExternalFrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.pop().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))? {
            let payload = frame.payload_lossy().to_string();
            let Some(message_type) = frame.message_type() else {
                let text = format!("quoll: unknown request type {}", frame.msg_type);
                stream.write_all(&external::encode_frame(MessageType::ReportStatus, text.as_bytes())).await?;
                continue;
            };
            let reply: Option<(MessageType, String)> = match message_type {
                MessageType::ClusterStatusQuery => Some(if view.ready.load(Ordering::SeqCst) {
                    let names = view.worker_names.lock().map(|n| n.clone()).unwrap_or_default();
                    let status = external::ClusterStatus {
                        worker_count: names.len() as u64,
                        worker_names: names,
                        processing_messages: view.processing.load(Ordering::SeqCst),
                    };
                    (MessageType::ClusterStatusResponse, status.to_json())
                } else {
                    (MessageType::ClusterStatusNotInitialized, String::new())
                }),
                MessageType::CleanShutdown => {
                    println!("quoll: worker '{worker}': clean shutdown requested through the external channel");
                    let _ = tx.send(Event::Shutdown { reason: "external clean-shutdown request".into(), from_cluster: false }).await;
                    None
                }
                MessageType::Print => {
                    println!("{payload}");
                    None
                }
                MessageType::SourceIdsQuery => {
                    let ids: Vec<String> = view.source_ids.iter().map(|s| crate::user_errors::json_string(s)).collect();
                    Some((MessageType::SourceIdsQueryResponse, format!("{{\"source_ids\":[{}]}}", ids.join(","))))
                }
                MessageType::ReportStatus => {
                    Some((MessageType::ReportStatus, view.report.lock().map(|r| r.clone()).unwrap_or_default()))
                }
                other => Some((MessageType::ReportStatus, format!("quoll: request type {other:?} is not supported"))),
            };
            if let Some((ty, text)) = reply {
                stream.write_all(&external::encode_frame(ty, text.as_bytes())).await?;
            }
        }
    }
}
