"""The base classes of decorated objects and window aggregations.

The decorators generate one subclass per decorated function (see
``_decorators``); applications may also subclass these bases themselves.
"""

import datetime
import struct
from typing import Any, Optional, Union


class BaseWrapped(object):
    """Base of every decorated object: calling it returns itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> "BaseWrapped":
        return self


class Computation(BaseWrapped):
    is_stateful = False
    initial_state: Any = None
    _is_multi = False


class ComputationMulti(Computation):
    _is_multi = True


class StateComputation(Computation):
    is_stateful = True


class StateComputationMulti(StateComputation, ComputationMulti):
    pass


class Aggregation(BaseWrapped):
    """Base class for window aggregations.

    Subclasses implement ``initial_accumulator()``, ``update(data, acc)``
    (mutates ``acc`` in place), ``combine(acc1, acc2)`` (returns a new
    accumulator) and ``output(key, acc)``; ``name()`` defaults to the class
    name.
    """

    def name(self) -> str:
        return self.__class__.__name__


class KeyExtractor(BaseWrapped):
    pass


class Encoder(BaseWrapped):
    pass


class Decoder(BaseWrapped):
    pass


class OctetDecoder(Decoder):
    pass


class OctetEncoder(Encoder):
    pass


class ConnectorDecoder(Decoder):
    pass


def _key_bytes(key: Optional[Union[str, bytes, bytearray]]) -> bytes:
    if not key:
        return b""
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    return key.encode()


def dt_to_timestamp(dt: datetime.datetime) -> float:
    """Seconds since the epoch (float) of a ``datetime``; naive datetimes
    are interpreted in the local timezone, as ``datetime.timestamp`` does."""
    return dt.timestamp()


class ConnectorEncoder(Encoder):
    def _encode(self, encoded_data: Union[str, bytes],
                event_time: Union[int, datetime.datetime] = 0,
                key: Optional[Union[str, bytes, bytearray]] = None) -> bytes:
        """Legacy connector record ``>IqI{k}s{n}s`` whose length field counts
        the bytes after itself (``n + k + 12``)."""
        if isinstance(event_time, datetime.datetime):
            event_time = int(dt_to_timestamp(event_time) * 1000)
        if isinstance(encoded_data, str):
            encoded_data = encoded_data.encode("utf-8")
        encoded_key = _key_bytes(key)
        return struct.pack(
            ">IqI{}s{}s".format(len(encoded_key), len(encoded_data)),
            8 + 4 + len(encoded_key) + len(encoded_data),
            event_time,
            len(encoded_key),
            encoded_key,
            encoded_data)
