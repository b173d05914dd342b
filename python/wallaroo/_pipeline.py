"""Building an application: ``source``, the ``Pipeline`` builder and
``build_application``.

A pipeline is a tree: every ``source()`` starts a leaf, ``merge`` adds a
node above two trees, stages are appended to the root, and ``to_sink/s``
closes it.  ``build_application`` returns the tree as the application
tuple ``(app_name, root_idx, vs, es)`` that the engine interprets:
``vs[i]`` lists the stage tuples of node ``i``, ``es[i]`` its children.

Stage tuples: ``("source", pipeline_name, config_tuple)``,
``("to", computation)``, ``("to_state", state_computation)``,
``("to_range_windows", range, slide, delay, aggregation, policy)``,
``("to_count_windows", count, aggregation)``, ``("key_by", extractor)``,
``("collect", "")``, ``("to_sink", config_tuple)`` and
``("to_sinks", [config_tuple, ...])``; a config tuple is what the config
object's ``to_tuple()`` returns.
"""

import inspect
from typing import Any, Iterable, Optional, Protocol

from ._bases import Aggregation, StateComputation
from ._errors import _api_error, _describe
from ._windows import (
    CountWindows,
    CountWindowsBuilder,
    RangeWindows,
    RangeWindowsBuilder,
)

StageTuple = tuple[Any, ...]
AppTuple = tuple[str, int, list[list[StageTuple]], list[list[int]]]


class _Config(Protocol):
    """A source or sink config: anything with a ``to_tuple()`` method."""

    def to_tuple(self) -> tuple[Any, ...]: ...


def source(name: str, source_config: _Config) -> "Pipeline":
    """Start a pipeline named ``name`` reading from ``source_config``."""
    return Pipeline.from_source(name, source_config)


def build_application(app_name: str, pipeline: "Pipeline") -> AppTuple:
    """Return the application tuple ``(app_name, root_idx, vs, es)``."""
    if not isinstance(pipeline, Pipeline):
        raise _api_error(
            "build_application expects a Pipeline as its second argument "
            "(got {}).".format(_describe(pipeline)))
    if not pipeline._is_closed():
        raise _api_error("An application must end with to_sink/s.")
    if not isinstance(app_name, str):
        raise _api_error(
            "The application name must be a str (got {})."
            .format(_describe(app_name)))
    pipeline._pipeline_tree.validate()
    return pipeline.__to_tuple__(app_name)


_SINK_STAGES = ("to_sink", "to_sinks")
_KEYING_STAGES = ("key_by", "collect")


def _stage_tuple(config: Any, what: tuple[str, str]) -> tuple[Any, ...]:
    to_tuple = getattr(config, "to_tuple", None)
    if not callable(to_tuple):
        raise _api_error(
            "{} expects a {} config object with a to_tuple() method "
            "(got {}).".format(what[0], what[1], _describe(config)))
    result: tuple[Any, ...] = to_tuple()
    return result


class _PipelineTree(object):
    """The mutable tree behind an immutable ``Pipeline``.

    ``vs[i]`` is the list of stage tuples of node ``i`` (a leaf starts with
    its ``("source", ...)`` stage; a merge node holds the stages added after
    the merge).  ``es[i]`` lists the children of node ``i``.
    """

    __slots__ = ("root_idx", "vs", "es", "is_closed")

    def __init__(self, source_stage: Optional[StageTuple] = None) -> None:
        self.root_idx = 0
        self.vs: list[list[StageTuple]] = \
            [[source_stage]] if source_stage is not None else [[]]
        self.es: list[list[int]] = [[]]
        self.is_closed = False

    def clone(self) -> "_PipelineTree":
        t = _PipelineTree()
        t.root_idx = self.root_idx
        t.vs = [list(stages) for stages in self.vs]
        t.es = [list(children) for children in self.es]
        t.is_closed = self.is_closed
        return t

    def add_stage(self, stage: StageTuple) -> "_PipelineTree":
        if self.is_closed:
            raise _api_error("You can't add stages after to_sink/s.")
        self.vs[self.root_idx].append(stage)
        if stage[0] in _SINK_STAGES:
            self.is_closed = True
        return self

    def merge(self, other: "_PipelineTree") -> "_PipelineTree":
        # New empty merge node whose first child is our old root.
        merge_idx = len(self.vs)
        self.vs.append([])
        self.es.append([self.root_idx])
        self.root_idx = merge_idx
        # Append the other tree's nodes, indices shifted.
        shift = len(self.vs)
        for stages in other.vs:
            self.vs.append(list(stages))
        for children in other.es:
            self.es.append([c + shift for c in children])
        self.es[merge_idx].append(other.root_idx + shift)
        return self

    def to_tuple(self, app_name: str) -> AppTuple:
        t = self.clone()
        return (app_name, t.root_idx, t.vs, t.es)

    def sources(self) -> list[StageTuple]:
        return [stage for stages in self.vs for stage in stages
                if stage and stage[0] == "source"]

    def sinks(self) -> list[StageTuple]:
        return [stage for stages in self.vs for stage in stages
                if stage and stage[0] == "to_sink"]

    # -- validation ---------------------------------------------------------

    def _last_stage(self, idx: int) -> Optional[StageTuple]:
        """Last stage of the (sub)pipeline rooted at ``idx``; a merge node
        without stages of its own ends like its (first) input."""
        stages = self.vs[idx]
        if stages:
            return stages[-1]
        children = self.es[idx]
        if children:
            return self._last_stage(children[0])
        return None

    def _names(self, idx: int) -> list[str]:
        """Pipeline names of the sources under node ``idx``."""
        names = []
        for stage in self.vs[idx]:
            if stage and stage[0] == "source":
                names.append(repr(stage[1]))
        for child in self.es[idx]:
            names.extend(self._names(child))
        return names

    def validate(self) -> None:
        """Reject topologies Wallaroo only rejected at worker start-up."""
        for idx, stages in enumerate(self.vs):
            for stage in stages:
                if stage and stage[0] == "to_sinks" and len(stage[1]) == 0:
                    raise _api_error(
                        "to_sinks() was given an empty list in the pipeline "
                        "from source(s) {}: pass at least one sink config."
                        .format(", ".join(self._names(idx)) or "?"))
            children = self.es[idx]
            if len(children) == 2:
                left, right = children
                lstage = self._last_stage(left)
                rstage = self._last_stage(right)
                for side_idx, st in ((left, lstage), (right, rstage)):
                    if st is not None and st[0] in _SINK_STAGES:
                        raise _api_error(
                            "You can't merge with a pipeline that already "
                            "ends with to_sink/s (pipeline from source(s) "
                            "{}); merge first, then add the sink."
                            .format(", ".join(self._names(side_idx))))
                lkeyed = lstage is not None and lstage[0] in _KEYING_STAGES
                rkeyed = rstage is not None and rstage[0] in _KEYING_STAGES
                if lkeyed != rkeyed:
                    keyed, unkeyed = (left, right) if lkeyed else (right, left)
                    raise _api_error(
                        "A pipeline ending with key_by/collect can only be "
                        "merged with another one ending with key_by/collect: "
                        "the pipeline from source(s) {} ends with key_by or "
                        "collect but the one from source(s) {} does not. Add "
                        "a key_by()/collect() to both sides or to neither."
                        .format(", ".join(self._names(keyed)),
                                ", ".join(self._names(unkeyed))))
            elif len(children) not in (0, 2):
                raise _api_error("Malformed pipeline tree at node {}."
                                 .format(idx))


def _is_window_builder(obj: Any) -> bool:
    return isinstance(obj, (RangeWindowsBuilder, CountWindowsBuilder))


class Pipeline(object):
    """An immutable pipeline builder: every method returns a new Pipeline."""

    def __init__(self, pipeline_tree: _PipelineTree) -> None:
        self._pipeline_tree = pipeline_tree

    @classmethod
    def from_source(cls, name: str, source_config: _Config) -> "Pipeline":
        stage = ("source", name, _stage_tuple(source_config,
                                              ("source()", "source")))
        return cls(_PipelineTree(stage))

    def __to_tuple__(self, app_name: str) -> AppTuple:
        return self._pipeline_tree.to_tuple(app_name)

    def _is_closed(self) -> bool:
        return self._pipeline_tree.is_closed

    def clone(self) -> "Pipeline":
        return Pipeline(self._pipeline_tree.clone())

    def _sources(self) -> list[StageTuple]:
        return self._pipeline_tree.sources()

    def _sinks(self) -> list[StageTuple]:
        return self._pipeline_tree.sinks()

    def __repr__(self) -> str:
        t = self._pipeline_tree
        return "<wallaroo.Pipeline root={} nodes={} closed={}>".format(
            t.root_idx, len(t.vs), t.is_closed)

    # -- stages ---------------------------------------------------------------

    def _add(self, stage: StageTuple) -> "Pipeline":
        p = self.clone()
        p._pipeline_tree.add_stage(stage)
        return p

    def to(self, computation: Any) -> "Pipeline":
        """Append a computation, state computation or window stage."""
        if self._is_closed():
            raise _api_error("You can't add stages after to_sink/s.")
        return self._add(_to_stage(computation))

    def key_by(self, key_extractor: Any) -> "Pipeline":
        """Partition by ``key_extractor.extract_key(data)`` from here on."""
        if self._is_closed():
            raise _api_error("You can't add stages after to_sink/s.")
        if isinstance(key_extractor, type) or \
                not callable(getattr(key_extractor, "extract_key", None)):
            hint = ""
            if inspect.isfunction(key_extractor) or \
                    inspect.ismethod(key_extractor):
                hint = (" Decorate the function with @wallaroo.key_extractor "
                        "first.")
            raise _api_error(
                "key_by() expects a key extractor (an object with an "
                "extract_key(data) method), got {}.{}"
                .format(_describe(key_extractor), hint))
        return self._add(("key_by", key_extractor))

    def collect(self) -> "Pipeline":
        """Send everything to one partition until the next key_by."""
        return self._add(("collect", ""))

    def merge(self, pipeline: "Pipeline") -> "Pipeline":
        """Union of this pipeline and ``pipeline``; later stages see both."""
        if not isinstance(pipeline, Pipeline):
            raise _api_error("merge() expects a Pipeline, got {}."
                             .format(_describe(pipeline)))
        p = self.clone()
        p._pipeline_tree.merge(pipeline._pipeline_tree.clone())
        return p

    def to_sink(self, sink_config: _Config) -> "Pipeline":
        """Close the pipeline with one sink."""
        if self._is_closed():
            raise _api_error("You can't add stages after to_sink/s.")
        return self._add(("to_sink", _stage_tuple(sink_config,
                                                  ("to_sink()", "sink"))))

    def to_sinks(self, sink_configs: Iterable[_Config]) -> "Pipeline":
        """Close the pipeline with several sinks; each gets every output."""
        if self._is_closed():
            raise _api_error("You can't add stages after to_sink/s.")
        if isinstance(sink_configs, (str, bytes)) or \
                hasattr(sink_configs, "to_tuple"):
            raise _api_error(
                "to_sinks() expects a list of sink configs, got {}; use "
                "to_sink() for a single sink.".format(_describe(sink_configs)))
        try:
            configs = list(sink_configs)
        except TypeError:
            raise _api_error("to_sinks() expects a list of sink configs, "
                             "got {}.".format(_describe(sink_configs)))
        sinks = [_stage_tuple(sc, ("to_sinks()", "sink")) for sc in configs]
        return self._add(("to_sinks", sinks))


def _to_stage(computation: Any) -> StageTuple:
    if isinstance(computation, StateComputation):
        return ("to_state", computation)
    if isinstance(computation, RangeWindows):
        return ("to_range_windows", computation.range, computation.slide,
                computation.delay, computation.aggregation,
                computation.late_data_policy)
    if isinstance(computation, CountWindows):
        return ("to_count_windows", computation.count,
                computation.aggregation)
    if _is_window_builder(computation):
        raise _api_error(
            "to() was given a window specification without an aggregation: "
            "call .over(YourAggregationClass) on it, e.g. "
            "p.to(wallaroo.range_windows(...).over(MyAggregation)).")
    if isinstance(computation, type):
        raise _api_error(
            "to() was given the class {} instead of a computation object. "
            "Pass the decorated function (or an instance), not a class."
            .format(computation.__name__))
    if isinstance(computation, Aggregation):
        raise _api_error(
            "to() was given an Aggregation ({}); wrap it in a window: "
            "p.to(wallaroo.count_windows(n).over(...)) or "
            "p.to(wallaroo.range_windows(...).over(...))."
            .format(type(computation).__name__))
    if not (callable(getattr(computation, "compute", None)) or
            callable(getattr(computation, "compute_multi", None))):
        hint = ""
        if inspect.isfunction(computation) or inspect.ismethod(computation) \
                or inspect.isbuiltin(computation):
            hint = (" Decorate the function with @wallaroo.computation("
                    "name=...) (or computation_multi / state_computation / "
                    "state_computation_multi) first.")
        raise _api_error(
            "to() expects a computation (an object with a compute or "
            "compute_multi method), a state computation or a window; got "
            "{}.{}".format(_describe(computation), hint))
    return ("to", computation)
