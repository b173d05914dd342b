"""Window state for `quoll.testing`, with the engine's semantics.

One `RangeWindows` or `CountWindows` is the state of one key of one window
stage, as in the engine's window state machines (docs/testing-apps.md says
what they do). The arithmetic is the engine's, on Python's unbounded ints:

- range windows: panes of `gcd(range, slide)` on a grid anchored per key
  at `first watermark - delay - offset`; window `w` is
  `[anchor + w*slide, anchor + w*slide + range)`; a message is updated into
  the one pane holding its event time; window `w` fires, oldest first, when
  `anchor + w*slide + range + delay <= watermark`, folding its panes with
  `combine` onto `initial_accumulator()`, with its last nanosecond as the
  output's event time; empty windows fire too, at most
  `ceil(range/slide) + delay/slide` in a row after a window with data;
  late messages follow the late-data policy; `flush` fires every window
  starting at or before the highest event time seen.
- count windows: the key's live accumulator is output and dropped at the
  n-th message, or by `flush_partial` when it holds fewer.

Invariant (range windows): every stored pane belongs to an unfired window,
and windows fire exactly once, in index order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

LATE_DATA_POLICIES = ("drop", "fire-per-message", "place-in-oldest-window")

_U64 = (1 << 64) - 1


def stable_hash(key: bytes) -> int:
    """The engine's key hash: FNV-1a 64 over the key's bytes, then
    murmur3's 64-bit finaliser. It picks each key's window grid offset."""
    h = 0xCBF29CE484222325
    for b in key:
        h = ((h ^ b) * 0x100000001B3) & _U64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _U64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _U64
    return h ^ (h >> 33)


@dataclass(frozen=True)
class Aggregation:
    """The four calls of a Wallaroo `Aggregation`."""

    initial_accumulator: Callable[[], Any]
    update: Callable[[Any, Any], Any]
    combine: Callable[[Any, Any], Any]
    output: Callable[[str, Any], Any]


# One window output: (value, event time).
Fired = list[tuple[Any, int]]


@dataclass(frozen=True)
class RangeSpec:
    """A range window stage's parameters, in ns; the delay rounded up to a
    multiple of the slide."""

    range: int
    slide: int
    delay: int
    policy: str

    @staticmethod
    def of(range_ns: int, slide_ns: int, delay_ns: int, policy: str) -> RangeSpec:
        if range_ns <= 0 or slide_ns <= 0 or slide_ns > range_ns or delay_ns < 0:
            raise ValueError(f"invalid range windows: range {range_ns} ns, slide {slide_ns} ns, "
                             f"delay {delay_ns} ns (need 0 < slide <= range, delay >= 0)")
        if policy not in LATE_DATA_POLICIES:
            raise ValueError(f"invalid late_data_policy {policy!r}; use one of {LATE_DATA_POLICIES}")
        delay = -(-delay_ns // slide_ns) * slide_ns
        return RangeSpec(range_ns, slide_ns, delay, policy)

    @property
    def pane(self) -> int:
        return math.gcd(self.range, self.slide)

    @property
    def max_empty_run(self) -> int:
        return -(-self.range // self.slide) + self.delay // self.slide

    def offset(self, key: bytes) -> int:
        """The key's grid offset in `[0, 0.8 * range)`, from its hash."""
        return (stable_hash(key) * (self.range * 4 // 5)) >> 64


class RangeWindows:
    """Range window state of one key of one window stage."""

    def __init__(self, spec: RangeSpec, first_watermark: int, offset: int) -> None:
        self.spec = spec
        self.anchor = first_watermark - spec.delay - offset
        self.highest = first_watermark
        self.empty_run = 0
        self.panes: dict[int, Any] = {}
        self._pps = spec.slide // spec.pane
        self._ppw = spec.range // spec.pane
        self.next_window = self._first_window_containing_pane(0)

    # ---- grid arithmetic ----

    def _pane_of(self, t: int) -> int:
        return (t - self.anchor) // self.spec.pane

    def _window_start(self, w: int) -> int:
        return self.anchor + w * self.spec.slide

    def _window_last(self, w: int) -> int:
        return self._window_start(w) + self.spec.range - 1

    def _first_window_containing_pane(self, p: int) -> int:
        return (p - self._ppw) // self._pps + 1

    def _due_end(self, watermark: int) -> int:
        s = self.spec
        return (watermark - self.anchor - s.range - s.delay) // s.slide + 1

    # ---- events ----

    def on_message(self, agg: Aggregation, key: str, value: Any, event_time: int,
                   watermark: int) -> Fired:
        out: Fired = []
        pane = self._pane_of(event_time)
        first_open = self.next_window * self._pps
        if pane >= first_open:
            self._update_pane(agg, pane, value)
        elif self.spec.policy == "fire-per-message":
            acc = agg.initial_accumulator()
            agg.update(value, acc)
            result = agg.output(key, acc)
            if result is not None:
                out.append((result, event_time))
        elif self.spec.policy == "place-in-oldest-window":
            self._update_pane(agg, first_open, value)
            # It counts as an event at that window's start, for the flush.
            self.highest = max(self.highest, self._window_start(self.next_window))
        self.highest = max(self.highest, event_time)
        self._fire_before(agg, key, self._due_end(watermark), out)
        return out

    def on_timer(self, agg: Aggregation, key: str, watermark: int) -> Fired:
        out: Fired = []
        self._fire_before(agg, key, self._due_end(watermark), out)
        return out

    def flush(self, agg: Aggregation, key: str) -> Fired:
        """Fires every window starting at or before the highest event time."""
        out: Fired = []
        self._fire_before(agg, key, (self.highest - self.anchor) // self.spec.slide + 1, out)
        return out

    # ---- state changes ----

    def _update_pane(self, agg: Aggregation, pane: int, value: Any) -> None:
        if pane in self.panes:
            agg.update(value, self.panes[pane])
            return
        acc = agg.initial_accumulator()
        agg.update(value, acc)
        self.panes[pane] = acc

    def _advance_to(self, w: int) -> None:
        self.next_window = w
        first = w * self._pps
        for p in [p for p in self.panes if p < first]:
            del self.panes[p]

    def _fire_before(self, agg: Aggregation, key: str, end: int, out: Fired) -> None:
        while self.next_window < end:
            w = self.next_window
            first = w * self._pps
            next_data = min(self.panes) if self.panes else None
            if next_data is not None and next_data < first + self._ppw:
                try:
                    self._fire_window(agg, key, w, out)
                finally:
                    # A failing window counts as fired, like the engine's.
                    self.empty_run = 0
                    self._advance_to(w + 1)
                continue
            run_end = end if next_data is None else min(self._first_window_containing_pane(next_data), end)
            fire = min(run_end - w, max(self.spec.max_empty_run - self.empty_run, 0))
            for j in range(fire):
                try:
                    result = agg.output(key, agg.initial_accumulator())
                    if result is not None:
                        out.append((result, self._window_last(w + j)))
                finally:
                    self.empty_run += 1
                    self._advance_to(w + j + 1)
            self._advance_to(run_end)

    def _fire_window(self, agg: Aggregation, key: str, w: int, out: Fired) -> None:
        first = w * self._pps
        acc = agg.initial_accumulator()
        for p in sorted(p for p in self.panes if first <= p < first + self._ppw):
            acc = agg.combine(acc, self.panes[p])
        result = agg.output(key, acc)
        if result is not None:
            out.append((result, self._window_last(w)))


class CountWindows:
    """Count window state of one key of one window stage."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a count window's count must be >= 1, got {count}")
        self.n = count
        self.count = 0
        self.acc: Optional[Any] = None
        self.max_event_time: Optional[int] = None

    def on_message(self, agg: Aggregation, key: str, value: Any, event_time: int) -> Fired:
        if self.acc is None:
            acc = agg.initial_accumulator()
            agg.update(value, acc)
            self.acc = acc
        else:
            agg.update(value, self.acc)
        self.count += 1
        self.max_event_time = event_time if self.max_event_time is None else max(self.max_event_time, event_time)
        return self._emit(agg, key) if self.count >= self.n else []

    def flush_partial(self, agg: Aggregation, key: str) -> Fired:
        """Outputs and resets a window holding fewer than n messages."""
        return self._emit(agg, key) if self.count > 0 else []

    def _emit(self, agg: Aggregation, key: str) -> Fired:
        acc, event_time = self.acc, self.max_event_time
        self.count, self.acc, self.max_event_time = 0, None, None
        if acc is None or event_time is None:
            return []
        result = agg.output(key, acc)
        return [] if result is None else [(result, event_time)]
