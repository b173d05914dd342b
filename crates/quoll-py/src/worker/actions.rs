//! Carrying out what the coordination node decides.
//!
//! [`Worker::node_event`] gives an event to the node and performs the
//! actions it returns, in order: link actions go to [`crate::links`],
//! checkpoint steps to the executor, the sinks and the resilience files,
//! restores to all three. An action that completes at once (a restore, a
//! commit record written synchronously, a snapshot that fails) yields the
//! node's next event, handled in the same call.

use super::Worker;
use crate::checkpoint_files::Image;
use crate::connector_source::ConnectorCommand;
use crate::error::WorkerError;
use crate::event::Event;
use crate::executor::SourceProgress;
use crate::kafka_io::{positions_stage, PartitionShare};
use crate::logging::{wallaroo_line, WallarooLine};
use crate::router::Router;
use crate::sinks::SinkCommand;
use bytes::Bytes;
use pyo3::prelude::*;
use quoll_core::checkpoint::participant::ParticipantAction;
use quoll_core::checkpoint::CheckpointId;
use quoll_core::membership::Generation;
use quoll_core::node::{NodeAction, NodeEvent, NodeFatal, Notice};
use quoll_core::placement::KeyGroupLoad;
use quoll_core::wire::{self, BatchWriter, Control, Member};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

type Action = NodeAction<Vec<SourceProgress>, Bytes>;

/// A handoff frame is sent once it holds this much.
const HANDOFF_BATCH_BYTES: usize = 1 << 20;

impl Worker {
    /// Gives `event` to the node and carries out what follows.
    pub(super) fn node_event(
        &mut self,
        py: Python<'_>,
        event: NodeEvent,
    ) -> Result<(), WorkerError> {
        if let Some(links) = &self.links {
            // Only what open links say reaches the node: a link this worker
            // closed may still have events queued.
            let open = match &event {
                NodeEvent::LinkClosed { link, .. } => links.closed(*link),
                NodeEvent::Control { link, .. } | NodeEvent::Connected { link } => {
                    links.is_open(*link)
                }
                _ => true,
            };
            if !open {
                return Ok(());
            }
        }
        if let NodeEvent::Control {
            msg: Control::Join {
                name, metrics_addr, ..
            },
            ..
        } = &event
        {
            self.metrics.member_joined(name, metrics_addr.clone());
        }
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let mut out = Vec::new();
            let ex = &self.ex;
            self.node
                .handle(event, Instant::now(), &mut || ex.progress(), &mut out);
            for action in out {
                if let Some(next) = self.carry_out_one(py, action)? {
                    queue.push_back(next);
                }
            }
        }
        Ok(())
    }

    /// Carries out actions the node returned outside an event (its start).
    pub(super) fn carry_out(
        &mut self,
        py: Python<'_>,
        actions: Vec<Action>,
    ) -> Result<(), WorkerError> {
        for action in actions {
            if let Some(next) = self.carry_out_one(py, action)? {
                self.node_event(py, next)?;
            }
        }
        Ok(())
    }

    fn links(&mut self) -> Result<&mut crate::links::Links, WorkerError> {
        self.links
            .as_mut()
            .ok_or_else(|| WorkerError::Fatal("a link action on a worker that is alone".into()))
    }

    fn carry_out_one(
        &mut self,
        py: Python<'_>,
        action: Action,
    ) -> Result<Option<NodeEvent>, WorkerError> {
        match action {
            NodeAction::Connect { after } => self.links()?.connect(after),
            NodeAction::SendJoin { link, has_files } => {
                let name = self.config.name.clone();
                let fingerprint = self.fingerprint;
                let metrics_addr = self.config.metrics_listen.clone();
                let grow = self.config.join;
                let batch = if grow {
                    self.config.worker_count.max(1) as u32
                } else {
                    1
                };
                let sources = self.source_addrs.clone();
                let links = self.links()?;
                let msg = Control::Join {
                    name,
                    data_addr: links.data_addr(),
                    sources,
                    fingerprint,
                    has_files,
                    grow,
                    batch,
                    metrics_addr,
                };
                links.send(link, msg);
                info!(
                    "connected to the initializer at {}; asking to join the cluster",
                    links.control_addr()
                );
            }
            NodeAction::Send { link, msg } => self.links()?.send(link, msg),
            NodeAction::Redirect { to } => {
                info!("the cluster's initializer is at {to}: joining there");
                self.links()?.redirect(to);
            }
            NodeAction::Refuse {
                link,
                reason,
                retry,
            } => {
                let links = self.links()?;
                let peer = links.peer(link);
                if retry {
                    warn!("refused {peer} for now: {reason}");
                } else {
                    error!("refused {peer}: {reason}");
                }
                links.send(link, Control::Refused { reason, retry });
                links.close(link);
            }
            NodeAction::Close { link } => self.links()?.close(link),
            NodeAction::RecordGeneration { generation } => {
                if let (Some(log), Some(files)) = (&mut self.commit_log, &self.files) {
                    py.detach(|| files.record_generation(log, generation))?;
                }
            }
            NodeAction::OpenDataLinks {
                members,
                me,
                generation,
            } => {
                let name = self.config.name.clone();
                self.links()?.open_data(&name, &members, me, generation);
            }
            NodeAction::TearDown { reform, keep } => {
                self.view.processing.store(false, Ordering::SeqCst);
                if self.started_up {
                    self.metrics.rolling_back();
                }
                self.ex.router = None;
                let last = reform.map(|reason| Control::Reform { reason });
                if let Some(links) = &mut self.links {
                    // The writers close their links once `last` is out.
                    drop(links.tear_down(last, &keep));
                }
            }
            NodeAction::Formed {
                members,
                me,
                generation,
                leaving,
                placement,
            } => {
                let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
                debug!(
                    "formed: generation {generation}, workers {}",
                    names.join(", ")
                );
                if let Ok(mut n) = self.view.worker_names.lock() {
                    n.clone_from(&names);
                }
                let metrics_addr = self.config.metrics_listen.as_deref();
                self.metrics.formed(
                    &names,
                    placement.owned_by(me),
                    !self.started_up,
                    metrics_addr,
                );
                self.share =
                    PartitionShare::new(me, members.iter().map(|m| leaving.contains(&m.name)));
                let data_out = self.links.as_ref().map_or_else(Vec::new, |l| l.data_out());
                if leaving.contains(&self.config.name) {
                    info!(
                        "leaving the cluster (shrink): handing this worker's state to the others; \
                         its sources take no more input"
                    );
                    self.leave_sources(&members, &leaving);
                }
                if names.len() > 1 {
                    self.ex.router = Some(Router::new(me, names, placement, generation, data_out));
                }
            }
            NodeAction::RecordMembership { record } => {
                if let Some(files) = &self.files {
                    py.detach(|| files.record_membership(&record))?;
                }
            }
            NodeAction::Leave => {
                info!("left the cluster (shrink): its state is with the other workers; stopping");
                self.left = true;
            }
            NodeAction::Load {
                generation,
                checkpoint,
            } => {
                let (files_read, moved) = self.load(py, generation, checkpoint)?;
                return Ok(Some(NodeEvent::Loaded {
                    generation,
                    files_read,
                    moved,
                }));
            }
            NodeAction::Restore {
                generation,
                checkpoint,
            } => {
                self.restore(py, generation, checkpoint)?;
                self.metrics
                    .restored(checkpoint.is_some() || generation > 1);
                self.started_up = true;
                return Ok(Some(NodeEvent::Restored { generation }));
            }
            NodeAction::Running { announce } => {
                self.view.ready.store(true, Ordering::SeqCst);
                self.view.processing.store(true, Ordering::SeqCst);
                self.metrics.running();
                if announce {
                    if self.config.cluster_initializer {
                        wallaroo_line(WallarooLine::Initialized);
                    }
                    wallaroo_line(WallarooLine::Ready);
                }
            }
            NodeAction::Release { from, data } => self.ex.on_peer_data(py, from, &data)?,
            NodeAction::Checkpoint(step) => return self.checkpoint_step(py, step),
            NodeAction::RecordCommit { id, generation } => {
                let result = match (&mut self.commit_log, &self.files) {
                    (Some(log), Some(files)) => {
                        py.detach(|| files.record_commit(log, id, generation))
                    }
                    _ => Ok(()),
                };
                if let Err(e) = &result {
                    error!("checkpoint {id} could not be marked complete: {e}");
                }
                return Ok(Some(NodeEvent::CommitRecorded {
                    generation,
                    id,
                    result: result.map_err(|e| e.to_string()),
                }));
            }
            NodeAction::Notice(Notice::Left { names }) => {
                // One sink connector serves every worker's connection to
                // it: the initializer's tells it who left.
                for i in 0..self.ex.sink_count() {
                    self.ex
                        .send_to_sink(py, i, SinkCommand::WorkersLeft(names.clone()));
                }
                self.notice(Notice::Left { names });
            }
            NodeAction::Notice(notice) => self.notice(notice),
            NodeAction::Fatal(fatal) => {
                return Err(match fatal {
                    NodeFatal::NoFilesForRollback { .. } => WorkerError::NoFiles {
                        fatal,
                        dir: self
                            .files
                            .as_ref()
                            .map(|f| f.dir.clone())
                            .unwrap_or_default(),
                    },
                    other => WorkerError::Cluster(other),
                })
            }
        }
        Ok(None)
    }

    fn notice(&self, notice: Notice) {
        match notice {
            Notice::WaitingForWorkers { more } => {
                let at = self.links.as_ref().map_or_else(String::new, |l| l.control_addr());
                info!("waiting for {more} more worker(s) on {at}");
            }
            Notice::Joined {
                name,
                joined,
                expected,
            } => info!("worker '{name}' joined ({joined}/{expected})"),
            Notice::FormationInterrupted { reason } => {
                info!("cluster formation interrupted ({reason}); starting over")
            }
            Notice::WorkerLost { name, why } => {
                self.metrics.member_lost(&name);
                error!("lost worker '{name}': {why}")
            }
            Notice::NoRecovery { name } => {
                self.metrics.member_lost(&name);
                // The status shows the loss: the workers left, not processing
                // everything (the lost worker's keys have no owner).
                if let Ok(mut names) = self.view.worker_names.lock() {
                    names.retain(|n| *n != name);
                }
                self.view.processing.store(false, Ordering::SeqCst);
                error!(
                    "without --run-with-resilience the cluster can't recover: worker '{name}' and its state \
                     are gone, and messages for its keys are dropped; restart the whole cluster (every worker \
                     with --run-with-resilience recovers by itself)"
                )
            }
            Notice::RollingBack { reason } => {
                self.view.processing.store(false, Ordering::SeqCst);
                self.metrics.rolling_back();
                info!("rolling back to the last complete checkpoint: {reason}");
            }
            Notice::Growing { name } => info!("worker '{name}' joins the cluster"),
            Notice::WaitingForJoiners { more } => info!(
                "waiting for {more} more joiner(s) of the batch (their --worker-count) before the \
                 cluster takes them in"
            ),
            Notice::Shrinking { names } => info!(
                "worker(s) {} leave the cluster (shrink): pausing input for a checkpoint",
                names.join(", ")
            ),
            Notice::Left { names } => info!("worker(s) {} left the cluster", names.join(", ")),
            Notice::Dismissed { name } => info!(
                "worker '{name}' left the cluster earlier and restarted with its resilience files: \
                 told to leave again"
            ),
            Notice::Rebalancing {
                before,
                after,
                moved,
            } => info!(
                "rebalancing: {moved} key groups move to even the load (the busiest worker had \
                 {before:.2}x the mean, {after:.2}x after); pausing input for a checkpoint"
            ),
            Notice::StartingFresh => info!(
                "resilience files in {} are from a run that never completed a checkpoint; starting fresh",
                self.config.resilience_dir
            ),
            Notice::CheckpointAbandoned { id, reason } => error!("checkpoint {id} abandoned: {reason}"),
        }
    }

    // ---- checkpoints

    fn checkpoint_step(
        &mut self,
        py: Python<'_>,
        step: ParticipantAction<Vec<SourceProgress>, Bytes>,
    ) -> Result<Option<NodeEvent>, WorkerError> {
        let generation = self.node.generation();
        match step {
            ParticipantAction::SendBarriers { id } => {
                self.metrics.checkpoint_begun(id);
                if let Some(r) = &mut self.ex.router {
                    r.send_to_all(wire::barrier_frame(generation, id));
                }
            }
            ParticipantAction::TakeSnapshot { id, parent } => {
                return Ok(self.take_snapshot(py, generation, id, parent))
            }
            ParticipantAction::Release { from, data } => self.ex.on_peer_data(py, from, &data)?,
            ParticipantAction::Commit {
                id,
                positions,
                compact,
            } => {
                self.metrics.checkpoint_committed(id);
                self.committed(py, id, &positions, compact)
            }
            ParticipantAction::Abort { id } => {
                self.metrics.checkpoint_abandoned();
                // Kafka sinks keep the output in the open transaction, for
                // the next checkpoint that commits; other sinks ignore it.
                debug!("checkpoint {id} abandoned");
                for i in 0..self.ex.sink_count() {
                    self.ex.send_to_sink(py, i, SinkCommand::Abort(id));
                }
            }
            ParticipantAction::PartDone { id } | ParticipantAction::PartFailed { id, .. } => {
                debug!("checkpoint {id}: part report handled by the node")
            }
        }
        Ok(None)
    }

    /// Snapshots state and sink lengths now, resumes, and has an I/O thread
    /// pre-commit the sinks and write the part file; the outcome comes back
    /// as [`NodeEvent::PartWritten`]. A snapshot that can't be taken fails
    /// the part at once.
    fn take_snapshot(
        &mut self,
        py: Python<'_>,
        generation: Generation,
        id: CheckpointId,
        parent: Option<CheckpointId>,
    ) -> Option<NodeEvent> {
        let files = self.files.clone()?;
        debug!("checkpoint {id}: taking the snapshot");
        // Output of peer messages processed while aligning belongs before
        // the barrier too, so sink lengths are taken now, with the state.
        let sink_offsets = self.ex.sink_offsets(py);
        let snapshot = match self.ex.snapshot(py, parent.is_none(), &sink_offsets) {
            Ok(s) => s,
            Err(e) => {
                error!("checkpoint {id} can't be taken: {e}; it is abandoned and the next one will retry");
                return Some(NodeEvent::PartWritten {
                    generation,
                    id,
                    result: Err(e),
                    load: KeyGroupLoad::default(),
                });
            }
        };
        // Queued now, behind the output before the barrier and ahead of
        // any after it.
        let pre_commits: Vec<_> = (0..self.ex.sink_count())
            .map(|i| {
                let (reply, done) = oneshot::channel();
                self.ex
                    .send_to_sink(py, i, SinkCommand::PreCommit(id, reply));
                done
            })
            .collect();
        let events = self.ctl_tx.clone();
        let metrics = self.metrics.clone();
        // What was routed before the barrier: reported with this part.
        let load = self
            .ex
            .router
            .as_mut()
            .map(|r| r.load.take())
            .unwrap_or_default();
        self.part_writes.retain(|t| !t.is_finished());
        self.part_writes.push(self.rt.spawn(async move {
            let mut result = Ok(());
            for done in pre_commits {
                if let Ok(Err(e)) = done.await {
                    result = Err(e);
                }
            }
            if result.is_ok() {
                result = tokio::task::spawn_blocking(move || files.write(id, parent, snapshot))
                    .await
                    .map_err(|e| format!("the checkpoint writer failed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|bytes| metrics.checkpoint_written(bytes));
            }
            if let Err(e) = &result {
                error!("checkpoint {id} could not be written: {e}");
            }
            let done = NodeEvent::PartWritten {
                generation,
                id,
                result,
                load,
            };
            let _ = events.send(Event::Node(done)).await;
        }));
        None
    }

    /// Checkpoint `id` is complete cluster-wide: Kafka sinks commit its
    /// transactions, connector clients may forget what it covers,
    /// generators may run, older files go.
    fn committed(
        &mut self,
        py: Python<'_>,
        id: CheckpointId,
        positions: &[SourceProgress],
        compact: bool,
    ) {
        debug!("checkpoint {id} committed");
        for i in 0..self.ex.sink_count() {
            self.ex.send_to_sink(py, i, SinkCommand::Commit(id));
        }
        for k in &self.kafka_sources {
            if let Some(p) = positions.get(k.index) {
                k.committed(crate::kafka_io::offsets(&p.streams));
            }
        }
        for c in &self.connectors {
            let positions = positions
                .get(c.index)
                .map(|p| p.streams.iter().map(|(s, p)| (*s, *p)).collect())
                .unwrap_or_default();
            let _ = c
                .commands
                .try_send(ConnectorCommand::Committed { positions });
        }
        self.ex.enable_generators(true);
        if let Some(files) = self.files.clone() {
            self.rt.spawn_blocking(move || {
                if let Err(e) = files.after_commit(id, compact) {
                    error!("after checkpoint {id}: {e}");
                }
            });
        }
    }

    // ---- restore

    /// Loads this worker's part of `checkpoint` (None: the empty image),
    /// keeps the entries of key groups it owns and hands the others to
    /// their owners, and likewise the offsets of Kafka partitions (which
    /// move when the membership does), then tells every peer its handoff is
    /// done (see `quoll_core::node`, "Restore"). Returns the part files
    /// read and whether anything moved.
    fn load(
        &mut self,
        py: Python<'_>,
        generation: Generation,
        checkpoint: Option<CheckpointId>,
    ) -> Result<(usize, bool), WorkerError> {
        let writes = std::mem::take(&mut self.part_writes);
        let rt = &self.rt;
        py.detach(|| {
            rt.block_on(async {
                for w in writes {
                    let _ = w.await;
                }
            })
        });
        let mut image = match self.files.clone() {
            Some(files) => py
                .detach(|| files.load(checkpoint))
                .map_err(WorkerError::Load)?,
            None => Image::default(),
        };
        let mut moved = false;
        if let (Some(router), Some(links)) = (&self.ex.router, &self.links) {
            let me = router.me;
            let peers = router.names.len();
            let mut frames: Vec<Vec<Vec<u8>>> = vec![Vec::new(); peers];
            let mut open: Vec<Option<BatchWriter>> = (0..peers).map(|_| None).collect();
            for (&stage, entries) in image.entries.iter_mut() {
                entries.retain(|key, blob| {
                    let owner = router.map.owner(key);
                    if owner == me {
                        return true;
                    }
                    let batch = open[owner].get_or_insert_with(|| BatchWriter::handoff(generation));
                    let pushed: Result<(), std::convert::Infallible> =
                        batch.push(stage, key, 0, |v| {
                            v.extend_from_slice(blob);
                            Ok(())
                        });
                    if pushed.is_ok() && batch.size() >= HANDOFF_BATCH_BYTES {
                        frames[owner].extend(open[owner].take().map(BatchWriter::finish));
                    }
                    moved = true;
                    false
                });
            }
            for k in &self.kafka_sources {
                let Some(blob) = image.sources.get_mut(&(k.index as u32)) else {
                    continue;
                };
                let mut progress = kafka_position(blob, k.index)?;
                progress.streams.retain(|&partition, &mut offset| {
                    let owner = self.share.owner(partition);
                    if owner == me {
                        return true;
                    }
                    let batch = open[owner].get_or_insert_with(|| BatchWriter::handoff(generation));
                    let pushed: Result<(), std::convert::Infallible> =
                        batch.push(positions_stage(k.index), &partition.to_be_bytes(), 0, |v| {
                            v.extend_from_slice(&offset.to_be_bytes());
                            Ok(())
                        });
                    moved |= pushed.is_ok();
                    false
                });
                *blob = progress.encode().map_err(WorkerError::Restore)?;
            }
            let data_out = links.data_out();
            for (peer, (mut queue, last)) in frames.into_iter().zip(open).enumerate() {
                let Some(Some(tx)) = data_out.get(peer).cloned() else {
                    continue;
                };
                queue.extend(last.map(BatchWriter::finish));
                queue.push(BatchWriter::handoff(generation).finish());
                // Queued by a task: a peer busy handing over to this worker
                // must not wait on this thread, nor this thread on it.
                self.rt.spawn(async move {
                    for frame in queue {
                        if tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        let files_read = image.files_read;
        self.loaded = Some(image);
        Ok((files_read, moved))
    }

    /// A handoff batch from member `from`: keeps its entries for the
    /// restore of `generation`; the empty batch that ends it goes to the
    /// node.
    pub(super) fn on_handoff(
        &mut self,
        py: Python<'_>,
        from: usize,
        generation: Generation,
        body: &[u8],
    ) -> Result<(), WorkerError> {
        let reader = match wire::BatchReader::new(body) {
            Ok(r) if r.generation == generation => r,
            Ok(_) => return Ok(()),
            Err(e) => {
                warn!("a handoff batch from worker {from}: {e}; ignored");
                return Ok(());
            }
        };
        let current = self.node.generation();
        self.handed_in.retain(|g, _| *g >= current);
        let stash = self.handed_in.entry(generation).or_default();
        let mut count = 0;
        for m in reader {
            // A restore without these entries would lose state.
            let m = m.map_err(|e| {
                WorkerError::Fatal(format!(
                    "a handoff batch from worker {from} is corrupt: {e}"
                ))
            })?;
            stash
                .entry(m.stage)
                .or_default()
                .insert(m.key.into(), m.value.to_vec());
            count += 1;
        }
        if count == 0 {
            let moved = stash.values().any(|e| !e.is_empty());
            self.node_event(
                py,
                NodeEvent::HandoffDone {
                    from,
                    generation,
                    moved,
                },
            )?;
        }
        Ok(())
    }

    /// Puts the executor, sinks and sources where checkpoint `checkpoint`
    /// left them (None: the beginning), from the loaded image and the
    /// entries handed over.
    fn restore(
        &mut self,
        py: Python<'_>,
        generation: Generation,
        checkpoint: Option<CheckpointId>,
    ) -> Result<(), WorkerError> {
        let started = Instant::now();
        let mut image = self.loaded.take().unwrap_or_default();
        let mut handed = std::mem::take(&mut self.handed_in)
            .remove(&generation)
            .unwrap_or_default();
        if self.files.is_none() {
            // Without resilience nothing is loaded, so nothing is handed over.
            self.restore_sinks(py, None, &vec![0; self.sinks.len()])?;
            self.restart_sources(&[]);
            return Ok(());
        }
        for k in &self.kafka_sources {
            let Some(offsets) = handed.remove(&positions_stage(k.index)) else {
                continue;
            };
            let key = k.index as u32;
            let mut progress = match image.sources.get(&key) {
                Some(blob) => kafka_position(blob, k.index)?,
                None => SourceProgress::default(),
            };
            for (partition, offset) in &offsets {
                let (Ok(p), Ok(o)) = (
                    <[u8; 8]>::try_from(&partition[..]),
                    <[u8; 8]>::try_from(&offset[..]),
                ) else {
                    return Err(WorkerError::Restore(format!(
                        "kafka source {}: a handed-over partition offset is malformed",
                        k.index
                    )));
                };
                progress
                    .streams
                    .insert(u64::from_be_bytes(p), u64::from_be_bytes(o));
            }
            image
                .sources
                .insert(key, progress.encode().map_err(WorkerError::Restore)?);
        }
        let handed_entries: usize = handed.values().map(|e| e.len()).sum();
        for (stage, entries) in handed {
            image.entries.entry(stage).or_default().extend(entries);
        }
        let entries = std::mem::take(&mut image.entries);
        let restored = self
            .ex
            .restore(py, entries, &image.sources, &image.sinks)
            .map_err(WorkerError::Restore)?;
        self.restore_sinks(py, checkpoint, &restored.sink_offsets)?;
        if let Some(id) = checkpoint {
            info!(
                "restored checkpoint {id}: {} entries ({handed_entries} handed over by other workers) \
                 from {} file(s) in {:.1} ms",
                restored.entries,
                image.files_read,
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        self.restart_sources(&restored.progress);
        self.ex.enable_generators(checkpoint.is_some());
        if checkpoint.is_some() || generation > 1 {
            wallaroo_line(WallarooLine::Replayed {
                entries: restored.entries,
            });
            wallaroo_line(WallarooLine::RecoveryComplete {
                checkpoint,
                generation,
            });
        }
        Ok(())
    }

    /// Puts every sink where `checkpoint` left it: file sinks cut back to
    /// `offsets`, Kafka sinks recovered.
    fn restore_sinks(
        &self,
        py: Python<'_>,
        checkpoint: Option<CheckpointId>,
        offsets: &[u64],
    ) -> Result<(), WorkerError> {
        let (rt, sinks) = (&self.rt, &self.sinks);
        py.detach(|| {
            rt.block_on(async {
                for (tx, &len) in sinks.iter().zip(offsets) {
                    let (reply, done) = oneshot::channel();
                    let restore = SinkCommand::Restore {
                        checkpoint,
                        len,
                        reply,
                    };
                    if tx.send(restore).await.is_ok() {
                        if let Ok(Err(e)) = done.await {
                            return Err(WorkerError::Sink(e));
                        }
                    }
                }
                Ok(())
            })
        })
    }

    /// This worker leaves the cluster: its connector clients go to the
    /// same source on a member that stays (RESTART with its address), and
    /// its TCP sources stop accepting (plain TCP can't redirect a client).
    fn leave_sources(&mut self, members: &[Member], leaving: &[String]) {
        let elsewhere = |source: &str| {
            members
                .iter()
                .filter(|m| !leaving.contains(&m.name))
                .find_map(|m| m.sources.iter().find(|(n, _)| n == source))
                .map(|(_, addr)| addr.clone())
        };
        for c in &self.connectors {
            let redirect = elsewhere(&c.name).unwrap_or_else(|| {
                warn!(
                    "source '{}': no worker that stays has this source, so its connector clients \
                     are told to reconnect here, where they will find no one",
                    c.name
                );
                String::new()
            });
            if c.commands
                .try_send(ConnectorCommand::Leave { redirect })
                .is_err()
            {
                error!("connector source '{}' did not take its leave", c.name);
            }
        }
        for t in &self.tcp_sources {
            t.accept.abort();
            let instead =
                elsewhere(&t.name).map_or_else(String::new, |a| format!("; send to {a} instead"));
            info!(
                "source '{}': stopped accepting connections on {} (this worker leaves the cluster){instead}",
                t.name, t.addr
            );
        }
    }

    /// Starts the replayable sources again where `progress` says (from the
    /// beginning where it says nothing), as a new incarnation.
    fn restart_sources(&mut self, progress: &[SourceProgress]) {
        self.source_epoch += 1;
        for f in self.file_sources.iter_mut() {
            if let Some(t) = f.task.take() {
                t.abort();
            }
            let offset = progress.get(f.index).map_or(0, |p| p.file_offset);
            let task = self.rt.spawn(crate::sources::run_file_source(
                f.index,
                f.name.clone(),
                f.path.clone(),
                f.header,
                self.config.max_frame_size,
                offset,
                self.source_epoch,
                self.src_tx.clone(),
                self.stats.clone(),
            ));
            f.task = Some(task.abort_handle());
        }
        for c in &self.connectors {
            let resume = progress
                .get(c.index)
                .map(|p| p.streams.iter().map(|(s, p)| (*s, *p)).collect())
                .unwrap_or_default();
            let restart = ConnectorCommand::Restart {
                resume,
                epoch: self.source_epoch,
            };
            if c.commands.try_send(restart).is_err() {
                error!("connector source {} did not take its restart", c.index);
            }
        }
        for k in self.kafka_sources.iter_mut() {
            let positions = progress
                .get(k.index)
                .map(|p| crate::kafka_io::offsets(&p.streams))
                .unwrap_or_default();
            k.restart(
                &self.rt,
                positions,
                self.source_epoch,
                &self.share,
                self.src_tx.clone(),
                self.ctl_tx.clone(),
                self.stats.clone(),
            );
        }
    }
}

/// Kafka source `source`'s checkpointed position, decoded.
fn kafka_position(blob: &[u8], source: usize) -> Result<SourceProgress, WorkerError> {
    SourceProgress::decode(blob)
        .map_err(|e| WorkerError::Restore(format!("kafka source {source} position: {e}")))
}
