"""Time units, in nanoseconds (no rounding: floats stay floats)."""

from typing import TypeVar

# An int stays an int and a float a float.
_N = TypeVar("_N", int, float)


def nanoseconds(x: _N) -> _N:
    return x


def microseconds(x: _N) -> _N:
    return x * 1000


def milliseconds(x: _N) -> _N:
    return x * 1000000


def seconds(x: _N) -> _N:
    return x * 1000000000


def minutes(x: _N) -> _N:
    return x * 60 * 1000000000


def hours(x: _N) -> _N:
    return x * 3600 * 1000000000
