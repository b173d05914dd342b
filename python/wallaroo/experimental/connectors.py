"""Building blocks for external connector processes.

``BaseIter`` and ``BaseSource`` are the abstract interfaces of Wallaroo's
connector sources, ``FramedFileReader`` a resettable reader of u32-framed
files.  ``MultiSourceConnector`` (which needs the asyncore-based
``AtLeastOnceSourceConnector`` client) is not provided by quoll yet: the
name exists so that imports work, but instantiating it raises
``NotImplementedError``.
"""

from abc import ABCMeta, abstractmethod
import hashlib
import logging
import struct
from typing import Any, NoReturn, Union

from . import (connector_wire_messages as cwm,  # noqa: F401
               AtLeastOnceSourceConnector,
               ConnectorError,  # noqa: F401
               ProtocolError)  # noqa: F401


U64_MAX = 18446744073709551615


class BaseMeta(metaclass=ABCMeta):
    pass


class BaseIter(BaseMeta):
    """Base for iterator classes: implement ``__next__``."""

    def throw(self, type: Any = None, value: Any = None,
              traceback: Any = None) -> NoReturn:
        raise StopIteration

    def __iter__(self) -> "BaseIter":
        return self

    def next(self) -> Any:
        return self.__next__()

    @abstractmethod
    def __next__(self) -> Any:
        raise NotImplementedError


class BaseSource(BaseMeta):
    """A connector source: ``__str__``, ``reset(pos)``, ``point_of_ref()``,
    ``__next__() -> (value, point_of_ref)`` and ``wallaroo_acked(por)``.

    ``reset`` receives the last point of reference the worker processed, or
    ``U64_MAX`` when it has processed nothing of this stream yet (start from
    the beginning).
    """

    @abstractmethod
    def __str__(self) -> str:
        raise NotImplementedError

    @abstractmethod
    def reset(self, pos: int = 0) -> None:
        raise NotImplementedError

    @abstractmethod
    def point_of_ref(self) -> int:
        raise NotImplementedError

    @abstractmethod
    def __next__(self) -> Any:
        raise NotImplementedError

    @abstractmethod
    def wallaroo_acked(self, point_of_ref: int) -> None:
        raise NotImplementedError


def stream_id_for(name: Union[str, bytes]) -> int:
    """Stream id of a stream name: the first 64 bits of its SHA-256."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big")


class FramedFileReader(BaseIter, BaseSource):
    """Iterate over a file of u32 BE length-framed records, yielding
    ``(payload, offset_after_record)``; resettable to an offset."""

    def __init__(self, filename: str) -> None:
        self.file = open(filename, mode='rb')
        self.name = filename.encode()
        self.key = filename.encode()

    def __str__(self) -> str:
        # (``name`` is bytes: {!r} shows it as str() of bytes always did.)
        return ("FramedFileReader(filename: {!r}, closed: {}, "
                "point_of_ref: {})"
                .format(self.name, self.file.closed, self.point_of_ref()))

    def point_of_ref(self) -> int:
        try:
            return self.file.tell()
        except (OSError, ValueError):
            return -1

    def _read_record(self) -> tuple[bytes, int]:
        header = self.file.read(4)
        if len(header) < 4:
            raise StopIteration
        (length,) = struct.unpack('>I', header)
        payload = self.file.read(length)
        if len(payload) < length or (length > 0 and not payload):
            raise StopIteration
        return (payload, self.file.tell())

    def reset(self, pos: int = 0) -> None:
        if pos == U64_MAX:
            logging.debug("resetting %s to the beginning", self)
            self.file.seek(0)
            return
        logging.debug("resetting %s to %s", self, pos)
        self.file.seek(pos)
        # ``pos`` is the end of the last record the worker processed: the
        # stream resumes after it (a record starting at ``pos``).

    def __next__(self) -> tuple[bytes, int]:
        return self._read_record()

    def wallaroo_acked(self, point_of_ref: int) -> None:
        pass

    def close(self) -> None:
        self.file.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class MultiSourceConnector(AtLeastOnceSourceConnector, BaseIter):
    """Placeholder; see the module docstring."""

    get_id = staticmethod(stream_id_for)

    def __next__(self) -> NoReturn:
        raise StopIteration
