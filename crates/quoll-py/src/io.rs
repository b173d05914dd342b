//! The worker's I/O, on tokio threads: TCP source listeners and sink
//! writers (the external channel is in `external_channel`). Nothing here
//! touches Python: sources hand the
//! executor whole frames as `Bytes`, sinks receive encoded bytes.
//!
//! Back-pressure: the executor's inbox and each sink's queue are bounded
//! channels. A source connection whose frames the executor can't take yet
//! stops reading its socket, so TCP flow control slows the sender; a sink
//! that can't keep up makes the executor wait.

use bytes::Bytes;
use quoll_core::length_header::{FrameDecoder, FrameError, FramePart, LengthHeader};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What the I/O threads tell the executor. Source frames come through one
/// inbox, everything else (peers, control) through another that the
/// executor serves first.
pub enum Event {
    /// Frames read from one connection of a source, in order. `position`
    /// (replayable sources only) is where the source stands once these
    /// frames are processed; a checkpoint records it. `epoch` is the
    /// incarnation of a restartable source (0 for others): frames of an
    /// incarnation stopped by a rollback are dropped. `keys` (connector
    /// sources) gives each frame's MESSAGE key, empty for none; with no
    /// keys at all every frame has the source's implicit key.
    Frames {
        source: usize,
        frames: Vec<Bytes>,
        keys: Vec<Bytes>,
        position: Option<SourcePosition>,
        epoch: u32,
    },
    /// A data batch from the worker with index `from`.
    PeerData { from: usize, body: Bytes },
    /// A checkpoint barrier on the data link from worker `from`.
    PeerBarrier {
        from: usize,
        generation: u64,
        checkpoint: u64,
    },
    /// A control message from worker `from` (0 is the initializer).
    Control {
        from: usize,
        generation: u64,
        msg: quoll_core::wire::Control,
    },
    /// A link of formation `generation` to another worker closed, failed or
    /// went silent. Only a control link's loss (`control`) starts recovery:
    /// the control link carries `Shutdown` ahead of its close, so a clean
    /// stop is never mistaken for a failure.
    PeerLost {
        name: String,
        generation: u64,
        why: String,
        control: bool,
    },
    /// This worker's part of checkpoint `id` (a delta on `parent`, or full)
    /// is on disk, or failed.
    CheckpointWritten {
        id: u64,
        generation: u64,
        parent: Option<u64>,
        result: Result<(), String>,
    },
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
/// Frames per event handed to the executor: bounds latency, memory, and
/// how long the executor is busy before it can start a checkpoint.
const FRAMES_PER_EVENT: usize = 1024;

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
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
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
            read_frames(
                &place,
                Origin {
                    source,
                    epoch: 0,
                    offset: None,
                },
                stream,
                header,
                max_frame_size,
                tx,
                &stats,
            )
            .await;
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
    start: u64,
    epoch: u32,
    tx: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
) {
    use tokio::io::AsyncSeekExt;
    let place = format!("worker '{worker}', source '{name}', file {path}");
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return eprintln!(
                "quoll: error: {place}: can't open: {e}; this source produces nothing"
            )
        }
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return eprintln!("quoll: error: {place}: can't seek to offset {start}: {e}; this source produces nothing");
    }
    let origin = Origin {
        source,
        epoch,
        offset: Some(start),
    };
    read_frames(&place, origin, file, header, max_frame_size, tx, &stats).await;
}

/// Where frames come from: the source, its incarnation, and (for a file)
/// the offset the reading started at, so events carry positions.
#[derive(Clone, Copy)]
struct Origin {
    source: usize,
    epoch: u32,
    offset: Option<u64>,
}

/// Splits a byte stream into frames and hands them to the executor in
/// order, until the end of the stream.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    place: &str,
    origin: Origin,
    mut stream: R,
    header: LengthHeader,
    max_frame_size: u64,
    tx: mpsc::Sender<Event>,
    stats: &IoStats,
) {
    let offset = origin.offset;
    let mut decoder = FrameDecoder::new(header, max_frame_size);
    // Bytes read so far; minus what the decoder still holds, the offset of
    // the next frame boundary.
    let mut read_total = offset.unwrap_or(0);
    let mut boundary = read_total;
    loop {
        let buf = decoder.read_buf();
        if buf.capacity() - buf.len() < (64 << 10) {
            buf.reserve(256 << 10);
        }
        let n = match stream.read_buf(buf).await {
            Ok(n) => {
                read_total += n as u64;
                n
            }
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
                    // Right after a frame, what the decoder holds starts at a frame boundary.
                    boundary = read_total - decoder.buffered_len() as u64;
                    if frames.len() >= FRAMES_PER_EVENT
                        && !hand_over(&tx, stats, origin, &mut frames, boundary).await
                    {
                        return;
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
                    // Frames before the bad header are good: they go on.
                    hand_over(&tx, stats, origin, &mut frames, boundary).await;
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    eprintln!("quoll: error: {place}: {e}; the stream can't be re-synchronised, connection closed");
                    return;
                }
            }
        }
        if !hand_over(&tx, stats, origin, &mut frames, boundary).await {
            return;
        }
    }
}

/// Hands the frames split so far to the executor (nothing if there are
/// none), with the file position after them; false if the executor is gone.
async fn hand_over(
    tx: &mpsc::Sender<Event>,
    stats: &IoStats,
    origin: Origin,
    frames: &mut Vec<Bytes>,
    boundary: u64,
) -> bool {
    if frames.is_empty() {
        return true;
    }
    stats
        .frames_in
        .fetch_add(frames.len() as u64, Ordering::Relaxed);
    let event = Event::Frames {
        source: origin.source,
        frames: std::mem::take(frames),
        keys: Vec::new(),
        position: origin.offset.map(|_| SourcePosition::FileOffset(boundary)),
        epoch: origin.epoch,
    };
    tx.send(event).await.is_ok()
}

/// Encoded output for one sink, and how many messages it holds.
pub struct SinkChunk {
    pub bytes: Bytes,
    pub messages: u64,
}

/// What the executor asks of a sink writer, in order.
pub enum SinkCommand {
    Write(SinkChunk),
    /// Make everything written so far durable (a checkpoint's sink
    /// pre-commit). TCP sinks answer at once: they are at-least-once.
    Sync(oneshot::Sender<Result<(), String>>),
    /// Cut the output back to `len` bytes: the start of an exactly-once file
    /// sink (0, or the checkpointed length after a rollback).
    Truncate(u64, oneshot::Sender<Result<(), String>>),
}

/// Writes a TCP sink: connects (retrying every 250 ms), writes chunks in
/// order, reconnects after a failure. While disconnected it holds up to
/// [`SINK_HOLD_BYTES`] of output and drops (and counts) what comes beyond.
pub async fn run_tcp_sink(
    worker: Arc<str>,
    label: String,
    addr: String,
    rx: mpsc::Receiver<SinkCommand>,
    stats: Arc<IoStats>,
) {
    let mut rx = tcp_sink_chunks(rx);
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

/// A TCP sink has nothing to sync or truncate: it is at-least-once. This
/// answers those commands and passes the chunks on.
fn tcp_sink_chunks(mut rx: mpsc::Receiver<SinkCommand>) -> mpsc::Receiver<SinkChunk> {
    let (tx, chunks) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                SinkCommand::Write(c) => {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                SinkCommand::Sync(reply) | SinkCommand::Truncate(_, reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    });
    chunks
}

fn hold(
    worker: &str,
    label: &str,
    held: &mut VecDeque<SinkChunk>,
    held_bytes: &mut usize,
    c: SinkChunk,
    stats: &IoStats,
) {
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

/// Writes a file sink. The worker starts it with a `Truncate` (to 0 on a
/// fresh start, to the checkpointed length after a rollback); chunks are
/// appended in order; `Sync` makes them durable.
pub async fn run_file_sink(
    worker: Arc<str>,
    label: String,
    mut file: tokio::fs::File,
    mut rx: mpsc::Receiver<SinkCommand>,
) {
    use tokio::io::AsyncSeekExt;
    let mut failed = false;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            SinkCommand::Write(c) => {
                if let Err(e) = file.write_all(&c.bytes).await {
                    if !failed {
                        eprintln!("quoll: error: worker '{worker}', {label}: write failed: {e}");
                    }
                    failed = true;
                }
            }
            SinkCommand::Sync(reply) => {
                let r = match (failed, file.sync_data().await) {
                    (true, _) => Err(format!("{label}: an earlier write failed")),
                    (false, r) => r.map_err(|e| format!("{label}: sync failed: {e}")),
                };
                let _ = reply.send(r);
            }
            SinkCommand::Truncate(len, reply) => {
                let r = async {
                    file.flush().await?;
                    file.set_len(len).await?;
                    file.seek(std::io::SeekFrom::Start(len)).await?;
                    file.sync_all().await
                }
                .await
                .map_err(|e| format!("{label}: can't truncate to {len} bytes: {e}"));
                failed = r.is_err();
                let _ = reply.send(r);
            }
        }
    }
    if let Err(e) = file.sync_all().await {
        eprintln!("quoll: error: worker '{worker}', {label}: sync failed: {e}");
    }
}
