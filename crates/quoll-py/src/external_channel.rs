//! The worker's side of the external channel (`--external`): one task per
//! connection, one reply per request frame, answered from an
//! [`ExternalView`] the worker keeps up to date.
//!
//! Frames are those of [`quoll_core::external`], read with
//! `FramedRead<_, ExternalCodec>`. A frame of an unknown type gets a
//! report-status reply naming it; a bad length closes the connection (the
//! stream can't be re-synchronised). Replies: cluster status (or "not
//! initialized" until the worker is ready), source ids, the report-status
//! counters, the keys held (state-entity query, answered by the executor
//! through [`Event::StateEntities`]), the answer to a shrink request (the
//! node decides, through [`Event::Shrink`]: the workers that may leave or
//! now leave, type 5, or why not, type 6);
//! a clean-shutdown request is passed to the worker as
//! [`Event::Shutdown`]; other known types are answered as unsupported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use quoll_core::external::{self, ExternalCodec, FrameError, MessageType};
use quoll_core::frame::ReadError;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;

use crate::event::Event;
use std::io::Write as _;
use tracing::{info, warn};

/// What the external channel reports; the worker updates it.
pub struct ExternalView {
    pub ready: AtomicBool,
    pub processing: AtomicBool,
    pub worker_names: Mutex<Vec<String>>,
    pub source_ids: Vec<String>,
    /// A JSON object with the worker's counters, refreshed by the executor.
    pub report: Mutex<String>,
}

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no request this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a query the executor answers (state entities, shrink) may wait
/// for it.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the external channel: one task per connection, one reply per
/// request frame. Wallaroo's tools speak it without credentials, so it
/// only limits what a connection can hold: at most [`MAX_CONNECTIONS`],
/// each closed after [`IDLE_TIMEOUT`] without a request.
pub async fn run_external(listener: TcpListener, view: Arc<ExternalView>, tx: mpsc::Sender<Event>) {
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let place = format!("external channel connection from {peer}");
        let Ok(permit) = open.clone().try_acquire_owned() else {
            warn!(place = %place, "{MAX_CONNECTIONS} connections are open; closed");
            continue;
        };
        let (view, tx) = (view.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_external(stream, &view, &tx).await {
                warn!(place = %place, "{e}");
            }
            drop(permit);
        });
    }
}

async fn serve_external(
    stream: TcpStream,
    view: &ExternalView,
    tx: &mpsc::Sender<Event>,
) -> Result<(), ServeError> {
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, ExternalCodec::default());
    while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, frames.next())
        .await
        .map_err(|_| ServeError::Idle)?
    {
        let frame = frame?;
        let payload = frame.payload_lossy().to_string();
        let Some(message_type) = frame.message_type() else {
            let text = format!("quoll: unknown request type {}", frame.msg_type);
            write
                .write_all(&external::try_encode_frame(
                    MessageType::ReportStatus,
                    text,
                )?)
                .await?;
            continue;
        };
        let reply: Option<(MessageType, Vec<u8>)> = match message_type {
            MessageType::ClusterStatusQuery => Some(if view.ready.load(Ordering::SeqCst) {
                let names = view
                    .worker_names
                    .lock()
                    .map(|n| n.clone())
                    .unwrap_or_default();
                let status = external::ClusterStatus {
                    worker_count: names.len() as u64,
                    worker_names: names,
                    processing_messages: view.processing.load(Ordering::SeqCst),
                };
                (
                    MessageType::ClusterStatusResponse,
                    serde_json::to_vec(&status)?,
                )
            } else {
                (MessageType::ClusterStatusNotInitialized, Vec::new())
            }),
            MessageType::CleanShutdown => {
                info!("clean shutdown requested through the external channel");
                let _ = tx
                    .send(Event::Shutdown {
                        reason: "external clean-shutdown request".into(),
                    })
                    .await;
                None
            }
            MessageType::Print => {
                // The external channel's print request writes the text as it is.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{payload}");
                let _ = out.flush();
                None
            }
            MessageType::SourceIdsQuery => {
                let ids = external::SourceIds {
                    source_ids: view.source_ids.clone(),
                };
                Some((
                    MessageType::SourceIdsQueryResponse,
                    serde_json::to_vec(&ids)?,
                ))
            }
            MessageType::ReportStatus => Some((
                MessageType::ReportStatus,
                view.report
                    .lock()
                    .map(|r| r.clone())
                    .unwrap_or_default()
                    .into_bytes(),
            )),
            MessageType::ShrinkRequest => Some(
                match serde_json::from_str::<external::ShrinkRequest>(&payload) {
                    Err(e) => (
                        MessageType::ShrinkError,
                        format!("bad shrink request {payload:?}: {e}; nothing changed")
                            .into_bytes(),
                    ),
                    Ok(request) => match ask(tx, |reply| Event::Shrink { request, reply }).await? {
                        Ok(names) => {
                            let r = external::ShrinkQueryResponse {
                                node_count: names.len() as u64,
                                node_names: names,
                            };
                            (MessageType::ShrinkQueryResponse, serde_json::to_vec(&r)?)
                        }
                        Err(why) => (MessageType::ShrinkError, why.into_bytes()),
                    },
                },
            ),
            MessageType::StateEntityQuery => {
                let entities = ask(tx, Event::StateEntities).await?;
                Some((
                    MessageType::StateEntityQueryResponse,
                    serde_json::to_vec(&entities)?,
                ))
            }
            other => Some((
                MessageType::ReportStatus,
                format!("quoll: request type {other:?} is not supported").into_bytes(),
            )),
        };
        if let Some((ty, payload)) = reply {
            write
                .write_all(&external::try_encode_frame(ty, payload)?)
                .await?;
        }
    }
    Ok(())
}

/// Asks the executor a question (the event `ask` makes carries the reply
/// channel) and waits up to [`QUERY_TIMEOUT`] for the answer.
async fn ask<T>(
    tx: &mpsc::Sender<Event>,
    ask: impl FnOnce(oneshot::Sender<T>) -> Event,
) -> Result<T, ServeError> {
    let (reply, answer) = oneshot::channel();
    tx.send(ask(reply)).await.map_err(|_| ServeError::Stopped)?;
    tokio::time::timeout(QUERY_TIMEOUT, answer)
        .await
        .map_err(|_| ServeError::Busy)?
        .map_err(|_| ServeError::Stopped)
}

/// Why a connection of the external channel ended early.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{0}")]
    Read(#[from] ReadError<FrameError>),
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("can't frame the reply: {0}")]
    Reply(#[from] FrameError),
    #[error("can't encode the reply as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no request for {} s; closed", IDLE_TIMEOUT.as_secs())]
    Idle,
    #[error("the worker did not answer the query within {} s; closed", QUERY_TIMEOUT.as_secs())]
    Busy,
    #[error("the worker is stopping; closed")]
    Stopped,
}
