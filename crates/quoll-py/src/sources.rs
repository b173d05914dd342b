//! Sources that read sockets and files on tokio threads: TCP sources
//! (Wallaroo's framed TCP input) and quoll's replayable file source.
//! Nothing here touches Python: frames go to the executor as `Bytes`.
//!
//! Back-pressure: the executor's source inbox is a bounded channel, so a
//! connection whose frames the executor can't take yet stops reading its
//! socket, and TCP flow control slows the sender.

use crate::event::{frames_per_event, Event, IoStats, SourcePosition};
use bytes::Bytes;
use quoll_core::length_header::{FrameDecoder, FrameError, FramePart, LengthHeader};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, warn};

/// Connections of one TCP source that have not sent their first byte yet;
/// beyond this many, new ones are closed at once.
pub const MAX_UNSTARTED: usize = 256;
/// A connection that sends nothing this long after connecting is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a TCP source takes connections.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Connections read at once (the source's `parallelism`); more wait.
    pub parallelism: usize,
    /// A connection silent this long is closed (None: never).
    pub idle_timeout: Option<Duration>,
}

/// Accepts connections for one TCP source and splits each into frames.
///
/// A TCP source can't tell a client from a stranger (Wallaroo's framing has
/// no credentials), so it limits what a connection can hold: one that sends
/// nothing within [`FIRST_BYTE_TIMEOUT`] is closed and takes no slot; only
/// then does it wait for one of the `parallelism` slots, and a connection
/// silent for the idle timeout gives its slot back.
#[allow(clippy::too_many_arguments)]
pub async fn run_tcp_source(
    source: usize,
    name: String,
    listener: TcpListener,
    header: LengthHeader,
    max_frame_size: u64,
    limits: TcpLimits,
    tx: mpsc::Sender<Event>,
    stats: Arc<IoStats>,
) {
    let slots = Arc::new(Semaphore::new(limits.parallelism));
    let unstarted = Arc::new(Semaphore::new(MAX_UNSTARTED));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                error!(place = %format!("source '{name}'"), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let place = format!("source '{name}', connection from {peer}");
        let Ok(waiting) = unstarted.clone().try_acquire_owned() else {
            warn!(place = %place, "{MAX_UNSTARTED} connections have sent nothing yet; closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (slots, tx, stats) = (slots.clone(), tx.clone(), stats.clone());
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    return warn!(
                        place = %place,
                        "sent nothing for {} s; closed",
                        FIRST_BYTE_TIMEOUT.as_secs()
                    )
                }
            }
            drop(waiting);
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let origin = Origin {
                source,
                epoch: 0,
                offset: None,
            };
            let reader = Reader {
                place: &place,
                header,
                max_frame_size,
                idle_timeout: limits.idle_timeout,
            };
            reader.read_frames(origin, stream, tx, &stats).await;
        });
    }
}

/// Reads a file of framed records (quoll's file source) to its end.
#[allow(clippy::too_many_arguments)]
pub async fn run_file_source(
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
    let place = format!("source '{name}', file {path}");
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return error!(place = %place, "can't open: {e}; this source produces nothing"),
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return error!(place = %place, "can't seek to offset {start}: {e}; this source produces nothing");
    }
    let origin = Origin {
        source,
        epoch,
        offset: Some(start),
    };
    let reader = Reader {
        place: &place,
        header,
        max_frame_size,
        idle_timeout: None,
    };
    reader.read_frames(origin, file, tx, &stats).await;
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
/// How one connection or file is read.
struct Reader<'a> {
    place: &'a str,
    header: LengthHeader,
    max_frame_size: u64,
    idle_timeout: Option<Duration>,
}

impl Reader<'_> {
    async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
        &self,
        origin: Origin,
        mut stream: R,
        tx: mpsc::Sender<Event>,
        stats: &IoStats,
    ) {
        let place = self.place;
        let offset = origin.offset;
        let mut decoder = FrameDecoder::new(self.header, self.max_frame_size);
        // Bytes read so far; minus what the decoder still holds, the offset of
        // the next frame boundary.
        let mut read_total = offset.unwrap_or(0);
        let mut boundary = read_total;
        loop {
            let buf = decoder.read_buf();
            if buf.capacity() - buf.len() < (64 << 10) {
                buf.reserve(256 << 10);
            }
            let read = stream.read_buf(buf);
            let read = match self.idle_timeout {
                Some(idle) => match tokio::time::timeout(idle, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        warn!(place = %place, "idle for {} s; connection closed (--in-idle-timeout)", idle.as_secs());
                        return;
                    }
                },
                None => read.await,
            };
            let n = match read {
                Ok(n) => {
                    read_total += n as u64;
                    n
                }
                Err(e) => {
                    error!(place = %place, "read failed: {e}; connection closed");
                    return;
                }
            };
            if n == 0 {
                if let Some(t) = decoder.finish() {
                    stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    error!(
                        place = %place,
                        "input ended in the middle of a frame ({} of {} {} bytes received); \
                         that truncated frame is dropped",
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
                        if frames.len() >= frames_per_event()
                            && !hand_over(&tx, stats, origin, &mut frames, boundary).await
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(FrameError::Oversized { declared, max }) => {
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        error!(
                            place = %place,
                            "frame declares {declared} bytes, more than the limit of {max} \
                             (--max-frame-size); frame skipped, later frames still read"
                        );
                    }
                    Err(e) => {
                        // Frames before the bad header are good: they go on.
                        hand_over(&tx, stats, origin, &mut frames, boundary).await;
                        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                        error!(place = %place, "{e}; the stream can't be re-synchronised, connection closed");
                        return;
                    }
                }
            }
            if !hand_over(&tx, stats, origin, &mut frames, boundary).await {
                return;
            }
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
