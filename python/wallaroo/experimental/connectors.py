"""Building blocks for external connector processes.

``BaseIter`` and ``BaseSource`` are the abstract interfaces of Wallaroo's
connector sources, ``FramedFileReader`` a resettable reader of u32-framed
files, and ``MultiSourceConnector`` an at-least-once client that sends
several such sources round-robin, one stream each.
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
    """Sends several ``BaseSource``s round-robin, each as the stream whose
    id is ``get_id(source.name)``, and stops once every source has ended
    and the worker has acknowledged its end.

        client = MultiSourceConnector("0.0.1", cookie, "feed", "instance",
                                      host, port)
        client.connect()
        for path in paths:
            client.add_source(FramedFileReader(filename=path))
        client.join()

    A source's life: ``add_source`` notifies its stream; when the worker
    opens it, the source is reset to where the worker says (the start for
    a new stream) and read; at its end an EOS goes out, and once the
    worker acknowledges the last message it is closed. If the stream is
    closed on the way (a restart, a lost worker), it is notified again and
    resumes from the worker's position: nothing is lost, and what the
    worker had not acknowledged may be sent twice, which the worker drops
    by message id. Each MESSAGE carries ``message_id`` = the source's
    point of reference after the record, ``key`` = ``source.key`` and
    ``event_time`` 0.
    """

    get_id = staticmethod(stream_id_for)

    def __init__(self, version: str, cookie: str, program_name: str,
                 instance_name: str, host: str, port: Union[str, int],
                 delay: float = 0) -> None:
        AtLeastOnceSourceConnector.__init__(self, version, cookie,
                                            program_name, instance_name,
                                            host, port, delay)
        self.sources: dict[int, Any] = {}
        self._order: list[int] = []
        self._turn = 0
        self._open: set[int] = set()
        self._last_sent: dict[int, int] = {}
        # Streams whose EOS went out: the message id the final ACK names.
        self._ending: dict[int, int] = {}
        self._added = False

    def add_source(self, source: Any) -> None:
        with self._lock:
            stream_id = self.get_id(source.name)
            if stream_id in self.sources:
                raise ConnectorError("Cannot add Source {}. A source exists "
                                     "with that ID: {}".format(
                                         source, self.sources[stream_id]))
            self.sources[stream_id] = source
            self._order.append(stream_id)
            self._added = True
            self.notify(stream_id, source.name, source.point_of_ref())

    def __next__(self) -> Any:
        if self._added and not self.sources:
            raise StopIteration
        for _ in range(len(self._order)):
            self._turn = (self._turn + 1) % len(self._order)
            stream_id = self._order[self._turn]
            if stream_id not in self._open:
                continue
            source = self.sources[stream_id]
            try:
                value, point_of_ref = next(source)
            except StopIteration:
                self._open.discard(stream_id)
                self._ending[stream_id] = self._last_sent.get(stream_id,
                                                              U64_MAX)
                self.end_of_stream(stream_id)
                continue
            self._last_sent[stream_id] = point_of_ref
            return cwm.Message(stream_id, point_of_ref, 0, key=source.key,
                               message=value)
        return None

    def stream_opened(self, stream: Any) -> None:
        source = self.sources.get(stream.id)
        if source is None:
            return
        source.reset(stream.point_of_ref)
        self._ending.pop(stream.id, None)
        self._last_sent.pop(stream.id, None)
        if stream.point_of_ref != U64_MAX:
            self._last_sent[stream.id] = stream.point_of_ref
        self._open.add(stream.id)

    def stream_closed(self, stream: Any) -> None:
        self._open.discard(stream.id)

    def stream_acked(self, stream: Any) -> None:
        end = self._ending.get(stream.id)
        if end is not None and stream.point_of_ref == end:
            del self._ending[stream.id]
            source = self.sources.pop(stream.id)
            self._order.remove(stream.id)
            # Ended for good: not notified again after a restart.
            self._streams.pop(stream.id, None)
            self._turn = -1
            source.close()
