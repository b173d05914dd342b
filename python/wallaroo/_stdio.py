"""stdout and stderr that flush on every write (the package installs the
wrappers when it is imported)."""

from typing import Any, Iterable, Optional, TextIO


class Unbuffered(object):
    """Wrap a text stream so that every write is flushed immediately.

    Test harnesses read worker stdout files while the worker runs, so output
    from ``print`` must not sit in a buffer.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, data: str) -> int:
        n = self.stream.write(data)
        self.stream.flush()
        return n

    def writelines(self, datas: Iterable[str]) -> None:
        self.stream.writelines(datas)
        self.stream.flush()

    def __getattr__(self, attr: str) -> Any:
        if attr == "stream":
            # Not yet initialised (e.g. during copy/unpickle): no recursion.
            raise AttributeError(attr)
        return getattr(self.stream, attr)


def _wrap_unbuffered(stream: Optional[TextIO]) -> Any:
    if stream is None or isinstance(stream, Unbuffered):
        return stream
    try:
        tty = stream.isatty()
    except Exception:
        tty = False
    if tty:
        return stream
    return Unbuffered(stream)
