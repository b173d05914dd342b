import pytest

from harness import Cluster, Receiver


@pytest.fixture
def make_cluster(tmp_path):
    """Builds clusters and receivers that are stopped after the test."""
    started = []

    def make(module, pythonpath, workers=1, app_args=None, extra_flags=(), start=True, env=None):
        c = Cluster(tmp_path, module, pythonpath, workers, app_args, extra_flags, env=env)
        started.append(c)
        return c.start() if start else c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def make_receiver(tmp_path):
    started = []

    def make(label="receiver", framing="raw"):
        r = Receiver(tmp_path, label, framing).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()
