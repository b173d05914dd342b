//! Snapshots and restores of a worker's state: keyed state, window and
//! count state, generator values, source positions and sink lengths,
//! encoded with the worker's one codec (the app's `serialize`, else the
//! default), and decoded again on recovery.
//!
//! Invariants: a delta holds exactly the keys changed since the previous
//! snapshot (dirty marks are cleared only once everything encoded); a
//! restore replaces all state, so nothing of the rolled-back run survives.

use super::keys::{key_object, quote_key};
use super::{Executor, Keyed, Op, SourceProgress};
use crate::codec::Codec;
use pyo3::prelude::*;
use quoll_core::windows::{CountWindows, RangeWindows};
use std::time::Instant;

/// This worker's part of a checkpoint, encoded and ready to write.
pub struct Snapshot {
    /// `(stage, key, blob)`: state objects (codec blobs) and window state
    /// (postcard of the window snapshot, accumulators as codec blobs).
    pub entries: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// `(source, position)`: postcard of (file offset, [(stream, point of
    /// reference)]), or for a generator its value (codec blob, empty once
    /// stopped).
    pub sources: Vec<(u32, Vec<u8>)>,
    /// `(sink, length)`: bytes of output produced before the barrier (u64 LE).
    pub sinks: Vec<(u32, Vec<u8>)>,
}

/// Where sources resume and sinks stand after a restore.
pub struct Restored {
    pub entries: usize,
    pub progress: Vec<SourceProgress>,
    pub sink_offsets: Vec<u64>,
}

fn encode_blob(codec: &Codec, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>, String> {
    let mut v = Vec::new();
    codec.encode(obj, &mut v).map_err(|e| e.to_string())?;
    Ok(v)
}

fn u64_blob(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn blob_u64(b: &[u8]) -> Result<u64, String> {
    b.try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| format!("expected 8 bytes, found {}", b.len()))
}

/// Restores one window stage's keys from their blobs (`build` decodes
/// one); the first that fails is named by `fail`.
fn restore_windows<W>(
    py: Python<'_>,
    windows: &mut super::KeyMap<Keyed<W>>,
    entries: quoll_core::checkpoint_store::StageEntries,
    fail: impl Fn(&[u8], String) -> String,
    mut build: impl FnMut(&[u8]) -> Result<W, String>,
) -> Result<(), String> {
    windows.reserve(entries.len());
    for (kb, blob) in entries {
        let value = build(&blob).map_err(|e| fail(&kb, e))?;
        let key = key_object(py, &kb).unbind();
        windows.insert(
            kb,
            Keyed {
                key,
                value,
                dirty: false,
            },
        );
    }
    Ok(())
}

impl Executor {
    /// Hands buffered output to the sinks and returns each sink's length:
    /// the output produced before a barrier.
    pub fn sink_offsets(&mut self, py: Python<'_>) -> Vec<u64> {
        self.flush_sinks(py);
        self.sinks.iter().map(|s| s.offset).collect()
    }

    /// Encodes the keyed state that changed since the last snapshot (all of
    /// it if `full`), the source positions and `sink_offsets`. Dirty marks
    /// are cleared only if everything encoded: a failed snapshot leaves the
    /// next one to write the same changes.
    pub fn snapshot(
        &mut self,
        py: Python<'_>,
        full: bool,
        sink_offsets: &[u64],
    ) -> Result<Snapshot, String> {
        let mut entries = Vec::new();
        for (id, st) in self.stages.iter_mut().enumerate() {
            let stage = id as u32;
            let place = &st.place;
            let fail = |kb: &[u8], e: String| format!("{place}, key {}: {e}", quote_key(kb));
            match &mut st.op {
                Op::State {
                    states, restored, ..
                } => {
                    if full {
                        // Untouched since the restore: the blob it came as.
                        for (kb, blob) in restored.iter() {
                            entries.push((stage, kb.to_vec(), blob.clone()));
                        }
                    }
                    for (kb, e) in states.iter_mut().filter(|(_, e)| full || e.dirty) {
                        let value = e.value.bind(py);
                        let blob = encode_blob(&self.codec, value).map_err(|err| fail(kb, err))?;
                        if let Some(copy) = self.compactor.compact(value) {
                            e.value = copy.unbind();
                        }
                        entries.push((stage, kb.to_vec(), blob));
                    }
                }
                Op::Range { windows, .. } => {
                    for (kb, e) in windows.iter().filter(|(_, e)| full || e.dirty) {
                        let snap = e
                            .value
                            .snapshot()
                            .try_map(|acc| encode_blob(&self.codec, acc.bind(py)))
                            .map_err(|err| fail(kb, err))?;
                        let blob = postcard::to_allocvec(&snap)
                            .map_err(|err| fail(kb, err.to_string()))?;
                        entries.push((stage, kb.to_vec(), blob));
                    }
                }
                Op::Count { windows, .. } => {
                    for (kb, e) in windows.iter().filter(|(_, e)| full || e.dirty) {
                        let snap = e
                            .value
                            .snapshot()
                            .try_map(|acc| encode_blob(&self.codec, acc.bind(py)))
                            .map_err(|err| fail(kb, err))?;
                        let blob = postcard::to_allocvec(&snap)
                            .map_err(|err| fail(kb, err.to_string()))?;
                        entries.push((stage, kb.to_vec(), blob));
                    }
                }
                _ => {}
            }
        }
        let mut sources = Vec::new();
        for (i, p) in self.progress.iter().enumerate() {
            sources.push((i as u32, p.encode()?));
        }
        for g in &self.gens {
            let blob = match &g.cur {
                Some(cur) => encode_blob(&self.codec, cur.bind(py))
                    .map_err(|e| format!("source '{}' (gen) value: {e}", g.name))?,
                None => Vec::new(),
            };
            sources.retain(|(i, _)| *i as usize != g.source);
            sources.push((g.source as u32, blob));
        }
        let sinks = sink_offsets
            .iter()
            .enumerate()
            .map(|(i, o)| (i as u32, u64_blob(*o)))
            .collect();
        for st in self.stages.iter_mut() {
            match &mut st.op {
                Op::State { states, .. } => states.values_mut().for_each(|e| e.dirty = false),
                Op::Range { windows, .. } => windows.values_mut().for_each(|e| e.dirty = false),
                Op::Count { windows, .. } => windows.values_mut().for_each(|e| e.dirty = false),
                _ => {}
            }
        }
        Ok(Snapshot {
            entries,
            sources,
            sinks,
        })
    }

    /// Replaces all keyed state, generator values and positions with those
    /// of a checkpoint (`None`: the state before any input). Errors name the
    /// stage and key: state that can't be decoded can't be recovered.
    pub fn restore(
        &mut self,
        py: Python<'_>,
        entries: std::collections::BTreeMap<u32, quoll_core::checkpoint_store::StageEntries>,
        sources: &std::collections::BTreeMap<u32, Vec<u8>>,
        sinks: &std::collections::BTreeMap<u32, Vec<u8>>,
    ) -> Result<Restored, String> {
        for st in self.stages.iter_mut() {
            match &mut st.op {
                Op::State {
                    states, restored, ..
                } => {
                    states.clear();
                    restored.clear();
                }
                Op::Range {
                    windows, timers, ..
                } => {
                    windows.clear();
                    timers.watermark = i64::MIN;
                    timers.upstreams.clear();
                    timers.last_input = Instant::now();
                    timers.flushed_since_input = true;
                    timers.idle_done = true;
                }
                Op::Count { windows, .. } => windows.clear(),
                _ => {}
            }
        }
        if let Some(r) = &mut self.router {
            r.reset();
        }
        let restored_entries = entries.values().map(|m| m.len()).sum();
        for (stage, stage_entries) in entries {
            let st = self.stages.get_mut(stage as usize).ok_or_else(|| {
                format!("checkpoint names stage {stage}, which this app does not have")
            })?;
            let place = &st.place;
            let fail = |kb: &[u8], e: String| {
                format!(
                    "{place}, key {}: can't restore its state: {e}",
                    quote_key(kb)
                )
            };
            let codec = &self.codec;
            let decode = |b: Vec<u8>| {
                codec
                    .decode(py, &b)
                    .map(|v| v.unbind())
                    .map_err(|e| e.to_string())
            };
            match &mut st.op {
                Op::State { restored, .. } => {
                    // The stage's map taken over whole; each state is
                    // decoded on its key's first message, not here: a
                    // recovery then costs no Python call per key, and keys
                    // that see no more input are never decoded (their blob
                    // goes into full snapshots as it is). A blob that does
                    // not decode is reported on that message, as a data
                    // error of the stage and key.
                    *restored = stage_entries;
                }
                Op::Range { windows, spec, .. } => {
                    restore_windows(py, windows, stage_entries, fail, |blob| {
                        let snap: quoll_core::windows::RangeWindowsSnapshot<Vec<u8>> =
                            postcard::from_bytes(blob).map_err(|e| e.to_string())?;
                        RangeWindows::restore(*spec, snap.try_map(decode)?)
                            .map_err(|e| e.to_string())
                    })?;
                }
                Op::Count { windows, spec, .. } => {
                    restore_windows(py, windows, stage_entries, fail, |blob| {
                        let snap: quoll_core::windows::CountWindowsSnapshot<Vec<u8>> =
                            postcard::from_bytes(blob).map_err(|e| e.to_string())?;
                        CountWindows::restore(*spec, snap.try_map(decode)?)
                            .map_err(|e| e.to_string())
                    })?;
                }
                _ => {
                    return Err(format!(
                        "checkpoint has state for {}, which keeps none",
                        st.place
                    ))
                }
            }
        }
        let gen_sources: Vec<usize> = self.gens.iter().map(|g| g.source).collect();
        let mut progress: Vec<SourceProgress> = (0..self.sources.len())
            .map(|_| SourceProgress::default())
            .collect();
        for g in self.gens.iter_mut() {
            g.cur = match sources.get(&(g.source as u32)) {
                Some(b) if b.is_empty() => None,
                Some(b) => Some(
                    self.codec
                        .decode(py, b)
                        .map_err(|e| {
                            format!("source '{}' (gen): can't restore its value: {e}", g.name)
                        })?
                        .unbind(),
                ),
                // Nothing checkpointed: start over, calling initial_value()
                // again only if the first value has already gone out.
                None if !g.emitted => g.cur.take(),
                None => match g.initial_value.bind(py).call0() {
                    Ok(v) if v.is_none() => None,
                    Ok(v) => Some(v.unbind()),
                    Err(e) => {
                        return Err(format!(
                            "source '{}' (gen): initial_value() raised: {e}",
                            g.name
                        ))
                    }
                },
            };
            g.emitted = false;
        }
        for (&i, b) in sources {
            let i = i as usize;
            if i >= progress.len() || gen_sources.contains(&i) {
                continue;
            }
            progress[i] =
                SourceProgress::decode(b).map_err(|e| format!("source {i} position: {e}"))?;
        }
        self.progress = progress.clone();
        let mut sink_offsets = vec![0u64; self.sinks.len()];
        for (&i, b) in sinks {
            if let Some(o) = sink_offsets.get_mut(i as usize) {
                *o = blob_u64(b)?;
            }
        }
        for (s, o) in self.sinks.iter_mut().zip(&sink_offsets) {
            s.buf.clear();
            s.messages = 0;
            s.offset = *o;
        }
        Ok(Restored {
            entries: restored_entries,
            progress,
            sink_offsets,
        })
    }

    /// Where every source stands now.
    pub fn progress(&self) -> Vec<SourceProgress> {
        self.progress.clone()
    }

    /// Whether generator sources may emit (with resilience: only once a
    /// first checkpoint is complete; docs/wallaroo-compat.md, "Sources").
    pub fn enable_generators(&mut self, enabled: bool) {
        self.gens_enabled = enabled;
    }
}
