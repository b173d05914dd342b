"""Window specifications: range (time) windows and count windows.

``range_windows(r)`` and ``count_windows(n)`` start a builder; its
``over(AggregationClass)`` makes the stage object that ``Pipeline.to``
takes.  Durations are integer nanoseconds (see ``_time``).
"""

from typing import Any, Optional

from ._errors import _api_error, _describe

_LATE_DATA_POLICIES = ("drop", "fire-per-message", "place-in-oldest-window")


def range_windows(wrange: float) -> "RangeWindowsBuilder":
    """Start a range (time) window specification of ``wrange`` nanoseconds."""
    return RangeWindowsBuilder(wrange)


def count_windows(count: int) -> "CountWindowsBuilder":
    """Start a count window specification of ``count`` messages per key."""
    return CountWindowsBuilder(count)


def _validate_aggregation(agg: Any) -> None:
    for method in ("name", "initial_accumulator", "update", "combine",
                   "output"):
        if not hasattr(agg, method):
            raise _api_error("Aggregation must have method '{}'."
                             .format(method))


def _duration(value: Any, what: str, allow_zero: bool) -> int:
    if isinstance(value, bool):
        raise _api_error("{} must be a number of nanoseconds, got {}."
                         .format(what, _describe(value)))
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise _api_error("{} must be a number of nanoseconds, got {}."
                         .format(what, _describe(value)))
    if n < 0 or (n == 0 and not allow_zero):
        raise _api_error("{} must be {} 0, got {!r}.".format(
            what, ">=" if allow_zero else ">", value))
    return n


def _make_aggregation(aggregation_cls: Any) -> Any:
    if isinstance(aggregation_cls, type) or callable(aggregation_cls):
        try:
            agg = aggregation_cls()
        except TypeError as e:
            if isinstance(aggregation_cls, type):
                raise _api_error(
                    "over() instantiates {} with no arguments, which failed: "
                    "{}".format(aggregation_cls.__name__, e))
            raise
    else:
        agg = aggregation_cls
    return agg


class RangeWindowsBuilder(object):
    """Built by :func:`range_windows`; methods return the builder itself."""

    def __init__(self, wrange: float) -> None:
        self.range = wrange
        self.slide: Optional[float] = None
        self.delay: Optional[float] = None
        self.late_data_policy: Optional[str] = None

    def with_slide(self, slide: float) -> "RangeWindowsBuilder":
        if self.slide is not None:
            raise _api_error(
                "Only call `with_slide()` once per window specification.")
        self.slide = slide
        return self

    def with_delay(self, delay: float) -> "RangeWindowsBuilder":
        if self.delay is not None:
            raise _api_error(
                "Only call `with_delay()` once per window specification.")
        self.delay = delay
        return self

    def with_late_data_policy(
            self, late_data_policy: str) -> "RangeWindowsBuilder":
        if self.late_data_policy is not None:
            raise _api_error("Only call `with_late_data_policy()` once per "
                             "window specification.")
        _check_late_data_policy(late_data_policy)
        self.late_data_policy = late_data_policy
        return self

    def over(self, aggregation_cls: Any) -> "RangeWindows":
        slide = self.range if self.slide is None else self.slide
        delay = 0 if self.delay is None else self.delay
        policy = "drop" if self.late_data_policy is None \
            else self.late_data_policy
        return RangeWindows(self.range, slide, delay,
                            _make_aggregation(aggregation_cls), policy)


def _check_late_data_policy(policy: Any) -> None:
    if policy not in _LATE_DATA_POLICIES:
        raise _api_error(
            "Invalid value for late_data_policy: {!r}; use one of {}."
            .format(policy, ", ".join(repr(p) for p in _LATE_DATA_POLICIES)))


class RangeWindows(object):
    """A range window stage: ``range``, ``slide`` and ``delay`` in integer
    nanoseconds, an aggregation instance and the late data policy."""

    def __init__(self, wrange: float, slide: float, delay: float, agg: Any,
                 late: str) -> None:
        self.range = _duration(wrange, "A window's range", False)
        self.slide = _duration(slide, "A window's slide", False)
        self.delay = _duration(delay, "A window's delay", True)
        if self.slide > self.range:
            raise _api_error(
                "A window's slide cannot be greater than its range "
                "(slide {} ns, range {} ns).".format(self.slide, self.range))
        _check_late_data_policy(late)
        _validate_aggregation(agg)
        self.aggregation = agg
        self.late_data_policy = late


class CountWindowsBuilder(object):
    """Built by :func:`count_windows`."""

    def __init__(self, count: int) -> None:
        self.count = count

    def over(self, aggregation_cls: Any) -> "CountWindows":
        return CountWindows(self.count, _make_aggregation(aggregation_cls))


class CountWindows(object):
    """A count window stage: ``count`` messages per key, an aggregation."""

    def __init__(self, count: int, agg: Any) -> None:
        if isinstance(count, bool):
            raise _api_error("A count window's count must be an int >= 1, "
                             "got {}.".format(_describe(count)))
        try:
            n = int(count)
        except (TypeError, ValueError, OverflowError):
            raise _api_error("A count window's count must be an int >= 1, "
                             "got {}.".format(_describe(count)))
        if n < 1:
            raise _api_error("A count window's count must be an int >= 1, "
                             "got {!r}.".format(count))
        _validate_aggregation(agg)
        self.count = n
        self.aggregation = agg
