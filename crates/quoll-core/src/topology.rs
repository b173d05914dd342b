//! The dataflow as the engine sees it.
//!
//! The Python side flattens Wallaroo's application tuple (a tree of nodes
//! whose leaves are sources and whose root ends in sinks) into a list of
//! stages, each with at most one successor. A message entering at a source's
//! entry stage follows `next` links until a sink stage; consecutive stages run
//! as one call chain on the executor thread (they are fused: no queue between
//! them). Merges are simply two chains whose links meet at the same stage.
//!
//! Invariants checked by [`Topology::validate`]:
//! - every `next` and every source entry names an existing stage;
//! - every path from a source ends at exactly one sink stage, and sink stages
//!   have no successor (so the graph has no cycle);
//! - window parameters are valid (range > 0, 0 < slide <= range).
//!
//! Routing points: a state or window stage runs on the worker that owns the
//! message's key group; every other stage runs where the message is.

use crate::windows::RangeWindowSpec;

/// Index of a stage in [`Topology::stages`].
pub type StageId = usize;

/// What a stage does. Python callables live beside this, in the binding.
#[derive(Debug, Clone, PartialEq)]
pub enum StageKind {
    /// `to(computation)`: one call per message, no state.
    Stateless { multi: bool },
    /// `key_by(extractor)`: sets the key for the stages after it.
    KeyBy,
    /// `collect()`: a constant key, so everything meets on one worker.
    Collect { key: Vec<u8> },
    /// `to(state_computation)`: one state object per key.
    State { multi: bool },
    /// `to(range_windows(..).over(agg))`.
    RangeWindows(RangeWindowSpec),
    /// `to(count_windows(n).over(agg))`.
    CountWindows { count: u64 },
    /// `to_sink` / `to_sinks`: every output goes to each listed sink.
    Sinks { sinks: Vec<usize> },
}

impl StageKind {
    /// True where a message must be on the owner of its key group.
    pub fn is_keyed(&self) -> bool {
        matches!(
            self,
            StageKind::State { .. } | StageKind::RangeWindows(_) | StageKind::CountWindows { .. }
        )
    }

    /// Short name of the kind, for errors and the structural fingerprint.
    pub fn label(&self) -> &'static str {
        match self {
            StageKind::Stateless { multi: false } => "computation",
            StageKind::Stateless { multi: true } => "computation_multi",
            StageKind::KeyBy => "key_by",
            StageKind::Collect { .. } => "collect",
            StageKind::State { multi: false } => "state_computation",
            StageKind::State { multi: true } => "state_computation_multi",
            StageKind::RangeWindows(_) => "range_windows",
            StageKind::CountWindows { .. } => "count_windows",
            StageKind::Sinks { .. } => "sink",
        }
    }
}

/// One stage of the flattened dataflow.
#[derive(Debug, Clone, PartialEq)]
pub struct StageDef {
    /// The user's name for it (`name()` of the computation or aggregation).
    pub name: String,
    pub kind: StageKind,
    /// The stage its outputs go to; `None` only for sink stages.
    pub next: Option<StageId>,
}

/// A source and where its messages enter.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDef {
    pub name: String,
    /// `tcp`, `gen`, `file`, ... as in the config tuple.
    pub kind: String,
    pub entry: StageId,
    /// The key every message has until the first `key_by`
    /// (docs/wallaroo-compat.md, "Keys").
    pub implicit_key: Vec<u8>,
}

/// The whole dataflow of one application.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub app_name: String,
    pub sources: Vec<SourceDef>,
    pub stages: Vec<StageDef>,
    /// Number of sink configs; sink stages index into them.
    pub sink_count: usize,
}

/// Why a topology can't run.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TopologyError {
    #[error("source '{source_name}' enters at stage {entry}, but there are only {stages} stages")]
    BadEntry {
        source_name: String,
        entry: StageId,
        stages: usize,
    },
    #[error("stage {stage} ('{name}') links to stage {next}, but there are only {stages} stages")]
    BadLink {
        stage: StageId,
        name: String,
        next: StageId,
        stages: usize,
    },
    #[error("stage {stage} ('{name}') is not a sink but has nothing after it: an application must end with to_sink/s")]
    Unterminated { stage: StageId, name: String },
    #[error("sink stage {stage} has a successor; nothing may follow to_sink/s")]
    SinkHasNext { stage: StageId },
    #[error("sink stage {stage} names sink {sink}, but there are only {sinks} sinks")]
    BadSink {
        stage: StageId,
        sink: usize,
        sinks: usize,
    },
    #[error("to_sinks([]) at stage {stage}: give at least one sink")]
    NoSinks { stage: StageId },
    #[error("the path from source '{source_name}' loops back on itself")]
    Cycle { source_name: String },
    #[error("the application has no source")]
    NoSource,
}

impl Topology {
    /// Checks the invariants in the module doc.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let n = self.stages.len();
        if self.sources.is_empty() {
            return Err(TopologyError::NoSource);
        }
        for (id, stage) in self.stages.iter().enumerate() {
            match (&stage.kind, stage.next) {
                (StageKind::Sinks { sinks }, next) => {
                    if next.is_some() {
                        return Err(TopologyError::SinkHasNext { stage: id });
                    }
                    if sinks.is_empty() {
                        return Err(TopologyError::NoSinks { stage: id });
                    }
                    if let Some(&sink) = sinks.iter().find(|&&s| s >= self.sink_count) {
                        return Err(TopologyError::BadSink {
                            stage: id,
                            sink,
                            sinks: self.sink_count,
                        });
                    }
                }
                (_, None) => {
                    return Err(TopologyError::Unterminated {
                        stage: id,
                        name: stage.name.clone(),
                    })
                }
                (_, Some(next)) if next >= n => {
                    return Err(TopologyError::BadLink {
                        stage: id,
                        name: stage.name.clone(),
                        next,
                        stages: n,
                    })
                }
                _ => {}
            }
        }
        for source in &self.sources {
            if source.entry >= n {
                return Err(TopologyError::BadEntry {
                    source_name: source.name.clone(),
                    entry: source.entry,
                    stages: n,
                });
            }
            let mut at = Some(source.entry);
            let mut steps = 0;
            while let Some(id) = at {
                steps += 1;
                if steps > n {
                    return Err(TopologyError::Cycle {
                        source_name: source.name.clone(),
                    });
                }
                at = self.stages[id].next;
            }
        }
        Ok(())
    }

    /// A structural fingerprint: stage kinds, names, links, window
    /// parameters and source kinds, never addresses. Workers compare it at
    /// cluster formation so a mismatched app version fails fast.
    pub fn fingerprint(&self) -> u64 {
        let mut text = format!("{}|", self.app_name);
        for s in &self.sources {
            text.push_str(&format!("src:{}:{}:{};", s.name, s.kind, s.entry));
        }
        for s in &self.stages {
            text.push_str(&format!("{}:{}:{:?};", s.kind.label(), s.name, s.next));
            match &s.kind {
                StageKind::RangeWindows(spec) => text.push_str(&format!("{spec:?};")),
                StageKind::CountWindows { count } => text.push_str(&format!("{count};")),
                StageKind::Sinks { sinks } => text.push_str(&format!("{sinks:?};")),
                _ => {}
            }
        }
        crate::key_group::stable_hash(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(kind: StageKind, next: Option<StageId>) -> StageDef {
        StageDef {
            name: "s".into(),
            kind,
            next,
        }
    }

    fn topo(stages: Vec<StageDef>, entry: StageId) -> Topology {
        Topology {
            app_name: "app".into(),
            sources: vec![SourceDef {
                name: "in".into(),
                kind: "tcp".into(),
                entry,
                implicit_key: b"tcp-source-key".to_vec(),
            }],
            stages,
            sink_count: 1,
        }
    }

    #[test]
    fn valid_chain() {
        let t = topo(
            vec![
                stage(StageKind::Stateless { multi: true }, Some(1)),
                stage(StageKind::KeyBy, Some(2)),
                stage(StageKind::State { multi: false }, Some(3)),
                stage(StageKind::Sinks { sinks: vec![0] }, None),
            ],
            0,
        );
        assert_eq!(t.validate(), Ok(()));
        assert!(t.stages[2].kind.is_keyed());
        assert!(!t.stages[0].kind.is_keyed());
    }

    #[test]
    fn rejects_bad_shapes() {
        let t = topo(vec![stage(StageKind::KeyBy, None)], 0);
        assert!(matches!(
            t.validate(),
            Err(TopologyError::Unterminated { .. })
        ));
        let t = topo(vec![stage(StageKind::KeyBy, Some(0))], 0);
        assert!(matches!(t.validate(), Err(TopologyError::Cycle { .. })));
        let t = topo(vec![stage(StageKind::Sinks { sinks: vec![] }, None)], 0);
        assert!(matches!(t.validate(), Err(TopologyError::NoSinks { .. })));
        let t = topo(vec![stage(StageKind::Sinks { sinks: vec![3] }, None)], 0);
        assert!(matches!(t.validate(), Err(TopologyError::BadSink { .. })));
        let t = topo(vec![stage(StageKind::Sinks { sinks: vec![0] }, None)], 5);
        assert!(matches!(t.validate(), Err(TopologyError::BadEntry { .. })));
    }

    #[test]
    fn fingerprint_ignores_nothing_structural() {
        let a = topo(vec![stage(StageKind::Sinks { sinks: vec![0] }, None)], 0);
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.stages[0].name = "other".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
