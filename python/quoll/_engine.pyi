"""Type stubs of the compiled engine module (`crates/quoll-py`)."""

from typing import Any, Callable, Mapping, Optional

from quoll.topology import Topology

def run_worker(
    config: Mapping[str, Any],
    app: Topology,
    codec: Optional[tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = None,
) -> None:
    """Runs a worker until a clean shutdown. Raises `SystemExit(2)` on a
    set-up error and `RuntimeError` on a fatal error while running."""

def tool_main(args: list[str]) -> int:
    """Runs one of quoll's Rust tools (`send`, `receive`, `status`,
    `shutdown`) with its command-line arguments; returns the exit code."""

def codec_encode(
    obj: Any,
    serialize: Optional[Callable[[Any], bytes]] = None,
    deserialize: Optional[Callable[[bytes], Any]] = None,
) -> bytes: ...
def codec_decode(
    blob: bytes,
    serialize: Optional[Callable[[Any], bytes]] = None,
    deserialize: Optional[Callable[[bytes], Any]] = None,
) -> Any: ...
