"""Flatten a Wallaroo application tuple into the stage list the engine runs.

`build_application` returns `(app_name, root_idx, vs, es)`: a tree of nodes
whose leaves start with a source and whose root ends with the sinks
(spec 2.14). The engine wants something flatter: stages with one successor
each, sources that name the stage they enter at, and sink configs by index.
Merges become two chains whose last stages both link to the same stage.

This is also where the Python callables the engine will invoke are resolved,
once, at start-up: for objects made by wallaroo's decorators the raw user
function (`_quoll_func`) is called directly, saving a Python frame per
message; any other duck-typed object is called through its methods, exactly
as the spec's call table says.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple



class TopologyError(Exception):
    """The application tuple can't be run; the message says where and why."""


IMPLICIT_KEYS = {
    "tcp": "tcp-source-key",
    "gen": "gen-source-key",
    "file": "file-source-key",
}


@dataclass
class Stage:
    kind: str  # computation, computation_multi, key_by, collect, state_computation, ...
    name: str
    next: Optional[int] = None
    # Resolved callables / parameters, by kind (see the engine's stage table).
    call: Any = None
    initial_state: Any = None
    aggregation: Any = None
    params: Tuple = ()
    sinks: List[int] = field(default_factory=list)


@dataclass
class Source:
    kind: str
    name: str
    pipeline: str
    entry: int
    implicit_key: str
    config: Tuple


@dataclass
class Topology:
    app_name: str
    sources: List[Source]
    stages: List[Stage]
    sinks: List[Tuple]


def _name_of(obj, default="undefined-name"):
    name = getattr(obj, "name", None)
    if callable(name):
        try:
            value = name()
        except Exception as e:  # a broken name() is a set-up error, said clearly
            raise TopologyError(f"calling name() on {obj!r} failed: {e!r}") from e
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)
    return default


def _direct(obj, method):
    """The raw user function of a decorator-made object, else the bound method.

    Only the generated classes themselves (module `wallaroo`) qualify; a user
    subclass may have changed the method, so it is called as a method.
    """
    cls = type(obj)
    func = getattr(cls, "_quoll_func", None)
    if func is not None and cls.__module__ == "wallaroo":
        return func
    bound = getattr(obj, method, None)
    if not callable(bound):
        raise TopologyError(f"{obj!r} has no {method}() method")
    return bound


def _multi(obj):
    return hasattr(obj, "compute_multi")


def flatten(app) -> Topology:
    try:
        app_name, root, vs, es = app
    except (TypeError, ValueError) as e:
        raise TopologyError(
            "application_setup must return wallaroo.build_application(name, pipeline); "
            f"got {type(app).__name__}"
        ) from e
    topo = Topology(app_name=str(app_name), sources=[], stages=[], sinks=[])

    def add_stage(stage: Stage, dangling):
        sid = len(topo.stages)
        topo.stages.append(stage)
        for kind, idx in dangling:
            if kind == "source":
                topo.sources[idx].entry = sid
            else:
                topo.stages[idx].next = sid
        return [("stage", sid)]

    def add_sinks(configs):
        ids = []
        for cfg in configs:
            ids.append(len(topo.sinks))
            topo.sinks.append(tuple(cfg))
        return ids

    def stage_for(t, index):
        op = t[0]
        if op == "to":
            c = t[1]
            if _multi(c):
                return Stage("computation_multi", _name_of(c), call=_direct(c, "compute_multi"))
            if not hasattr(c, "compute"):
                raise TopologyError(f"to() got {c!r}, which has neither compute() nor compute_multi()")
            return Stage("computation", _name_of(c), call=_direct(c, "compute"))
        if op == "to_state":
            c = t[1]
            kind = "state_computation_multi" if _multi(c) else "state_computation"
            method = "compute_multi" if _multi(c) else "compute"
            return Stage(kind, _name_of(c), call=_direct(c, method), initial_state=c.initial_state)
        if op == "key_by":
            ke = t[1]
            return Stage("key_by", getattr(getattr(ke, "_quoll_func", None), "__name__", "key_by"),
                         call=_direct(ke, "extract_key"))
        if op == "collect":
            return Stage("collect", "collect", params=(f"collect-key-{index}",))
        if op == "to_range_windows":
            _, rng, slide, delay, agg, policy = t[:6]
            return Stage("range_windows", _name_of(agg, type(agg).__name__),
                         aggregation=_bind_aggregation(agg),
                         params=(int(rng), int(slide), int(delay), str(policy)))
        if op == "to_count_windows":
            _, count, agg = t[:3]
            return Stage("count_windows", _name_of(agg, type(agg).__name__),
                         aggregation=_bind_aggregation(agg), params=(int(count),))
        if op == "to_sink":
            return Stage("sinks", "sink", sinks=add_sinks([t[1]]))
        if op == "to_sinks":
            return Stage("sinks", "sinks", sinks=add_sinks(t[1]))
        raise TopologyError(f"unknown stage {op!r} in the application tuple")

    def build(i):
        node = vs[i]
        stages = list(node)
        dangling = []
        if stages and stages[0][0] == "source":
            _, pipeline_name, cfg = stages[0]
            kind = cfg[0]
            topo.sources.append(Source(kind=kind, name=str(cfg[1]), pipeline=str(pipeline_name),
                                       entry=-1, implicit_key=IMPLICIT_KEYS.get(kind, f"{kind}-source-key"),
                                       config=tuple(cfg)))
            dangling = [("source", len(topo.sources) - 1)]
            stages = stages[1:]
        for child in es[i]:
            dangling += build(child)
        for t in stages:
            dangling = add_stage(stage_for(t, len(topo.stages)), dangling)
        return dangling

    build(root)
    if not topo.sinks:
        raise TopologyError("An application must end with to_sink/s.")
    return topo


def _bind_aggregation(agg):
    for m in ("initial_accumulator", "update", "combine", "output"):
        if not callable(getattr(agg, m, None)):
            raise TopologyError(f"aggregation {agg!r} has no {m}() method")
    return (agg.initial_accumulator, agg.update, agg.combine, agg.output)


def as_engine_tuples(topo: Topology):
    """The plain tuples `quoll._engine.run_worker` reads."""
    sources = [(s.kind, s.name, s.entry, s.implicit_key, s.config) for s in topo.sources]
    stages = [(s.kind, s.name, s.next, s.call, s.initial_state, s.aggregation, s.params, s.sinks)
              for s in topo.stages]
    return topo.app_name, sources, stages, topo.sinks
