"""The default codec of values that cross workers or go to disk."""

import pickle
from typing import Any


def serialize(o: Any) -> bytes:
    """Default encoder for messages, state, accumulators and GenSource values
    that cross workers or go to disk: ``pickle`` at the highest protocol."""
    return pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL)


def deserialize(bs: bytes) -> Any:
    """Inverse of :func:`serialize`."""
    return pickle.loads(bs)
