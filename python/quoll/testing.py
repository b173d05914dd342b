"""Run a Wallaroo application's pipeline in-process, for the app's tests.

`run(app, inputs, args=...)` imports the app (a module, a module name or a
path to its `.py` file), calls its `application_setup(args)` once, flattens
the result with `quoll.topology.flatten` (the engine's own topology), and
pushes the given inputs through it in this process, with no sockets and no
threads. It returns what every sink received, and the final state of every
state stage::

    from quoll.testing import run

    result = run("examples/word_count/word_count.py", ["hello world", "hello"],
                 args=["--in", "lines@127.0.0.1:0", "--out", "127.0.0.1:0"])
    assert result.lines() == ["hello => 1", "world => 1", "hello => 2"]

What runs is what the engine runs, with its semantics (docs/testing-apps.md):
sources call the decoder on each payload (None drops it) and give the
source's implicit key (`tcp-source-key`, ...); stateless and state
computations (`*_multi` must return a list, None elements skipped; None
means no message); `key_by` keys (an int key becomes `chr(n)`), `collect`;
one state object per (stage, key), made by `initial_state()` on the key's
first message and passed by reference; range windows (panes, slide, delay,
late-data policies, empty windows) and count windows; encoders (bytes,
str as UTF-8, None for nothing). Messages move depth-first, so per-key
order is input order. When the inputs are exhausted, every window is
flushed (the engine's quiet-input flush and its count-window timer).

Event times: each input gets `start_ns + k * interval_ns` (k its index in
ingest order) unless given as `At(event_time_ns, payload)`. Range-window
watermarks are, per window stage, the highest event time seen so far, as
on a one-worker engine.

`codec=True` sends every message through the app's codec (its top-level
`serialize`/`deserialize` if it has both, else `wallaroo.serialize`, i.e.
pickle) before every keyed stage (state, windows), where the engine ships
messages to the key's owner when it is another worker, and the key as it
travels (bytes, back to `str` when UTF-8). `checkpoint_every=N` also
encodes and decodes every state object and window accumulator after every
N inputs, as a checkpoint and a rollback would. Either way an object the
codec can't round-trip fails the run here, long before a cluster would.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

from quoll import topology as topo
from quoll._testing_windows import Aggregation, CountWindows, RangeSpec, RangeWindows

__all__ = ["At", "Output", "Result", "AppError", "run", "load_app"]


class At(NamedTuple):
    """An input with its own event time (nanoseconds)."""

    event_time: int
    payload: Any


# A source's input: payloads (bytes, or str sent as UTF-8) or `At` items;
# for a generator source, how many values to draw.
Items = Union[Sequence[Any], int]
Inputs = Union[Items, Mapping[Union[int, str], Items], Sequence[tuple[Union[int, str], Any]]]
Key = Union[str, bytes]


class AppError(Exception):
    """User code raised, or returned something the engine refuses; the
    message names the stage (or source, sink) and the key."""

    def __init__(self, place: str, what: str) -> None:
        super().__init__(f"{place}: {what}")
        self.place = place


@dataclass(frozen=True)
class Output:
    """One message that reached a sink."""

    sink: int
    # What the encoder got, and the bytes it returned.
    value: Any
    data: bytes
    key: Key
    event_time: int


@dataclass
class Result:
    """What a run produced."""

    outputs: list[Output] = field(default_factory=list)
    # Per state stage name: key -> the final state object.
    states: dict[str, dict[Key, Any]] = field(default_factory=dict)
    # With on_user_error="skip": the errors of the dropped messages.
    errors: list[AppError] = field(default_factory=list)

    def data(self, sink: int = 0) -> list[bytes]:
        """The encoded outputs of sink `sink`, in order."""
        return [o.data for o in self.outputs if o.sink == sink]

    def values(self, sink: int = 0) -> list[Any]:
        """What sink `sink`'s encoder was given, in order."""
        return [o.value for o in self.outputs if o.sink == sink]

    def lines(self, sink: int = 0) -> list[str]:
        """Sink `sink`'s output as UTF-8 text, split into lines."""
        return b"".join(self.data(sink)).decode("utf-8").splitlines()


def load_app(app: Union[ModuleType, str, os.PathLike[str]]) -> ModuleType:
    """The application module: a module, an importable module name, or the
    path of its `.py` file (imported by module name with its directory on
    `sys.path`, as the workers import it; never as `__main__`)."""
    if isinstance(app, ModuleType):
        return app
    text = os.fspath(app)
    if text.endswith(".py") or os.sep in text:
        directory, filename = os.path.split(os.path.abspath(text))
        name, ext = os.path.splitext(filename)
        if ext != ".py" or not os.path.isfile(text):
            raise FileNotFoundError(f"quoll.testing: {text}: not an application's .py file")
        if directory not in sys.path:
            sys.path.insert(0, directory)
        text = name
    return importlib.import_module(text)


def _codec(module: ModuleType) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    from quoll.worker import select_codec
    import wallaroo
    pair = select_codec(module)
    return pair if pair is not None else (wallaroo.serialize, wallaroo.deserialize)


def _key_bytes(key: Any, place: str) -> bytes:
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as e:
            raise AppError(place, f"key {key!r} is not valid UTF-8: {e}") from e
    if isinstance(key, bytes):
        return key
    raise AppError(place, f"a key must be str or bytes, got {type(key).__name__}")


def _normalise_key(key: Any, place: str) -> Key:
    """A key extractor's result as the engine takes it: str and bytes as
    they are, an int (bool included) as chr(n)."""
    if isinstance(key, (str, bytes)):
        return key
    if isinstance(key, int):
        try:
            return chr(key)
        except (ValueError, OverflowError) as e:
            raise AppError(place, f"key_by returned int {key}, not a valid chr() code point") from e
    raise AppError(place, f"key_by returned {type(key).__name__}; a key must be str, bytes or int")


@dataclass
class _Keyed:
    """Per-key state of a keyed stage: the key as first seen, the value."""

    key: Key
    value: Any


class _Runner:
    def __init__(self, module: ModuleType, app: topo.Topology, codec: bool, checkpoints: bool,
                 on_user_error: str) -> None:
        self.app = app
        self.codec = _codec(module) if codec or checkpoints else None
        # Messages go through the codec (not only checkpointed state).
        self.codec_messages = codec
        self.module_name = module.__name__
        self.skip = on_user_error == "skip"
        self.result = Result()
        # Per stage: key bytes -> _Keyed (state objects, window states).
        self.keyed: list[dict[bytes, _Keyed]] = [{} for _ in app.stages]
        self.watermarks: dict[int, int] = {}
        self.aggs: dict[int, Aggregation] = {}
        for i, st in enumerate(app.stages):
            spec = st.spec
            if isinstance(spec, (topo.RangeWindowsStage, topo.CountWindowsStage)):
                a = spec.aggregation
                self.aggs[i] = Aggregation(a.initial_accumulator, a.update, a.combine, a.output)

    # ---- the codec ----

    def roundtrip(self, obj: Any, what: str, place: str) -> Any:
        assert self.codec is not None
        serialize, deserialize = self.codec
        try:
            blob = serialize(obj)
        except Exception as e:
            raise AppError(place, f"serialize() failed on {what} of type {type(obj).__name__}: {e!r}") from e
        if isinstance(blob, (bytearray, memoryview)):
            blob = bytes(blob)
        if not isinstance(blob, bytes):
            raise AppError(place, f"serialize() returned {type(blob).__name__} for {what} of type "
                                  f"{type(obj).__name__}; it must return bytes")
        try:
            return deserialize(blob)
        except Exception as e:
            raise AppError(place, f"deserialize() failed on the {len(blob)} bytes serialize() made of {what} "
                                  f"of type {type(obj).__name__}: {e!r}") from e

    def checkpoint(self) -> None:
        """Encodes and decodes every state object and accumulator."""
        for i, entries in enumerate(self.keyed):
            place = self.app.stages[i].place
            for kb, entry in entries.items():
                what = f"the state of key {kb!r} (checkpoint)"
                v = entry.value
                if isinstance(v, RangeWindows):
                    v.panes = {p: self.roundtrip(acc, what, place) for p, acc in v.panes.items()}
                elif isinstance(v, CountWindows):
                    if v.acc is not None:
                        v.acc = self.roundtrip(v.acc, what, place)
                else:
                    entry.value = self.roundtrip(v, what, place)

    # ---- messages ----

    def user(self, place: str, detail: str, call: Callable[[], Any]) -> Any:
        """Runs user code; its exception becomes an AppError naming the place."""
        try:
            return call()
        except AppError:
            raise
        except Exception as e:
            raise AppError(place, f"{detail}: {type(e).__name__}: {e}") from e

    def source(self, source: topo.Source, payload: Any, event_time: int) -> None:
        spec = source.spec
        assert not isinstance(spec, topo.GenSource)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"quoll.testing: the input of {source.place} must be bytes or str, "
                            f"got {type(payload).__name__}")
        value = self.user(source.place, "decode()", lambda: spec.decode(bytes(payload)))
        if value is not None:
            self.push(source.entry, value, source.implicit_key, event_time)

    def push(self, stage: int, value: Any, key: Key, et: int) -> None:
        st = self.app.stages[stage]
        spec = st.spec
        place = st.place
        nxt = st.next
        if isinstance(spec, (topo.StateStage, topo.RangeWindowsStage, topo.CountWindowsStage)):
            kb = _key_bytes(key, place)
            if self.codec_messages:
                # The engine ships the message to the key's owner here.
                value = self.roundtrip(value, f"a message for key {key!r}", place)
                key = kb.decode("utf-8") if _utf8(kb) else kb
        if isinstance(spec, topo.StatelessStage):
            result = self.user(place, f"key {key!r}, compute", lambda: spec.call(value))
            self.emit(place, nxt, result, spec.multi, key, et)
        elif isinstance(spec, topo.KeyByStage):
            raw = self.user(place, "extract_key", lambda: spec.call(value))
            assert nxt is not None
            self.push(nxt, value, _normalise_key(raw, place), et)
        elif isinstance(spec, topo.CollectStage):
            assert nxt is not None
            self.push(nxt, value, spec.key, et)
        elif isinstance(spec, topo.StateStage):
            entries = self.keyed[stage]
            entry = entries.get(kb)
            if entry is None:
                state = self.user(place, f"key {key!r}, initial_state()", spec.initial_state)
                entry = entries[kb] = _Keyed(key, state)
            state = entry.value
            result = self.user(place, f"key {key!r}, compute", lambda: spec.call(value, state))
            self.emit(place, nxt, result, spec.multi, key, et)
        elif isinstance(spec, topo.RangeWindowsStage):
            watermark = self.watermarks[stage] = max(self.watermarks.get(stage, et), et)
            entries = self.keyed[stage]
            entry = entries.get(kb)
            if entry is None:
                rs = RangeSpec.of(spec.range, spec.slide, spec.delay, spec.late_data_policy)
                entry = entries[kb] = _Keyed(key, RangeWindows(rs, watermark, rs.offset(kb)))
            w = entry.value
            fired = self.user(place, f"key {key!r}, aggregation",
                              lambda: w.on_message(self.aggs[stage], _agg_key(kb), value, et, watermark))
            self.fired(nxt, fired, key)
        elif isinstance(spec, topo.CountWindowsStage):
            entries = self.keyed[stage]
            entry = entries.get(kb)
            if entry is None:
                entry = entries[kb] = _Keyed(key, CountWindows(spec.count))
            c = entry.value
            fired = self.user(place, f"key {key!r}, aggregation",
                              lambda: c.on_message(self.aggs[stage], _agg_key(kb), value, et))
            self.fired(nxt, fired, key)
        elif isinstance(spec, topo.SinksStage):
            for sink in spec.sinks:
                self.sink(sink, value, key, et)

    def fired(self, nxt: Optional[int], fired: list[tuple[Any, int]], key: Key) -> None:
        assert nxt is not None
        for value, event_time in fired:
            self.push(nxt, value, key, event_time)

    def emit(self, place: str, nxt: Optional[int], result: Any, multi: bool, key: Key, et: int) -> None:
        assert nxt is not None
        if result is None:
            return
        if not multi:
            self.push(nxt, result, key, et)
            return
        if not isinstance(result, list):
            raise AppError(place, f"key {key!r}: compute_multi must return a list (or None), "
                                  f"got {type(result).__name__}")
        for item in result:
            if item is not None:
                self.push(nxt, item, key, et)

    def sink(self, index: int, value: Any, key: Key, et: int) -> None:
        sink = self.app.sinks[index]
        place = f"{sink.place} (encoder)"
        data = self.user(place, f"key {key!r}, encode", lambda: sink.spec.encode(value))
        if data is None:
            return
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise AppError(place, f"key {key!r}: encoder returned {type(data).__name__}; "
                                  "it must return bytes, str or None")
        self.result.outputs.append(Output(index, value, data, key, et))

    def flush_windows(self) -> None:
        """The engine's flush once input is quiet: every range window up to
        the highest event time, every partial count window."""
        for stage, entries in enumerate(self.keyed):
            st = self.app.stages[stage]
            for kb, entry in list(entries.items()):
                w = entry.value
                if isinstance(w, RangeWindows):
                    fired = self.user(st.place, f"key {entry.key!r}, aggregation",
                                      lambda: w.flush(self.aggs[stage], _agg_key(kb)))
                elif isinstance(w, CountWindows):
                    fired = self.user(st.place, f"key {entry.key!r}, aggregation",
                                      lambda: w.flush_partial(self.aggs[stage], _agg_key(kb)))
                else:
                    continue
                self.fired(st.next, fired, entry.key)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _agg_key(kb: bytes) -> str:
    """The key `Aggregation.output` gets: a str, invalid bytes escaped."""
    return kb.decode("utf-8", "surrogateescape")


def _source_index(app: topo.Topology, which: Union[int, str]) -> int:
    if isinstance(which, int):
        if 0 <= which < len(app.sources):
            return which
    else:
        for i, s in enumerate(app.sources):
            if which in (s.name, s.pipeline):
                return i
    names = ", ".join(f"{i}: '{s.pipeline}' ({s.name})" for i, s in enumerate(app.sources))
    raise KeyError(f"quoll.testing: no source {which!r} in application '{app.app_name}'; its sources are {names}")


def _plan(app: topo.Topology, inputs: Inputs) -> list[tuple[int, Any]]:
    """The inputs as (source index, item) in ingest order; a generator
    source's count stays an int."""
    if isinstance(inputs, Mapping):
        return [(_source_index(app, k), v) for k, v in inputs.items()]
    if isinstance(inputs, int):
        return [(0, inputs)]
    items = list(inputs)
    if items and all(isinstance(i, tuple) and not isinstance(i, At) and len(i) == 2 for i in items):
        return [(_source_index(app, k), [v]) for k, v in items]
    if len(app.sources) != 1:
        raise ValueError(f"quoll.testing: application '{app.app_name}' has {len(app.sources)} sources; "
                         "give the inputs as {source: items} or as [(source, item), ...]")
    return [(0, items)]


def run(app: Union[ModuleType, str, os.PathLike[str]], inputs: Inputs, *,
        args: Sequence[str] = (), codec: bool = False, checkpoint_every: Optional[int] = None,
        start_ns: int = 0, interval_ns: int = 1_000_000, on_user_error: str = "raise") -> Result:
    """Runs `app`'s pipeline on `inputs` in this process; see the module
    docstring. `args` are the application's arguments (what follows the
    worker flags on a machida3 command line; argv[0] is added);
    `on_user_error` is "raise" (the default: the first error fails the
    run) or "skip" (the engine's default: the message is dropped and the
    error kept in `Result.errors`)."""
    if on_user_error not in ("raise", "skip"):
        raise ValueError(f"quoll.testing: on_user_error must be 'raise' or 'skip', got {on_user_error!r}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"quoll.testing: checkpoint_every must be >= 1, got {checkpoint_every}")
    module = load_app(app)
    import wallaroo
    argv = [module.__name__, *args]
    wallaroo._ARGS = tuple(argv)
    flat = topo.flatten(module.application_setup(list(argv)))
    runner = _Runner(module, flat, codec, checkpoint_every is not None, on_user_error)
    k = 0

    def ingest(do: Callable[[], None]) -> None:
        nonlocal k
        try:
            do()
        except AppError as e:
            if not runner.skip:
                raise
            runner.result.errors.append(e)
        k += 1
        if checkpoint_every is not None and k % checkpoint_every == 0:
            runner.checkpoint()

    for index, items in _plan(flat, inputs):
        source = flat.sources[index]
        spec = source.spec
        if isinstance(spec, topo.GenSource):
            if not isinstance(items, int):
                raise TypeError(f"quoll.testing: {source.place} is a generator; give the number of values "
                                f"to draw, not {type(items).__name__}")
            _generate(runner, source, spec, items, lambda: start_ns + k * interval_ns, ingest)
            continue
        if isinstance(items, (int, str, bytes)):
            raise TypeError(f"quoll.testing: the inputs of {source.place} must be a list of payloads")
        for item in items:
            et, payload = (item.event_time, item.payload) if isinstance(item, At) else (start_ns + k * interval_ns, item)
            ingest(lambda: runner.source(source, payload, et))
    try:
        runner.flush_windows()
    except AppError as e:
        if not runner.skip:
            raise
        runner.result.errors.append(e)
    for i, st in enumerate(flat.stages):
        if isinstance(st.spec, topo.StateStage):
            runner.result.states.setdefault(st.name, {}).update(
                {entry.key: entry.value for entry in runner.keyed[i].values()})
    return runner.result


def _generate(runner: _Runner, source: topo.Source, spec: topo.GenSource, count: int,
              now: Callable[[], int], ingest: Callable[[Callable[[], None]], None]) -> None:
    """Draws up to `count` values: `apply(cur)` runs before `cur` goes on,
    and None from it stops the source (as in the engine)."""
    cur: Any = runner.user(source.place, "initial_value()", spec.initial_value)
    for _ in range(count):
        if cur is None:
            return
        value = cur
        cur = runner.user(source.place, "apply()", lambda: spec.apply(value))
        et = now()
        ingest(lambda: runner.push(source.entry, value, source.implicit_key, et))
