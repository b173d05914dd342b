import subprocess
from pathlib import Path

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


# ---------------------------------------------------------------- the work tree stays clean
#
# No test may write into the repository (a run once left `in.txt` and a file
# named `127.0.0.1:17302` at its root): tests write under their tmp_path.
# The untracked files are listed when the session starts and again when it
# ends; a file that appeared in between fails the run.

REPO = Path(__file__).resolve().parents[2]
IGNORED = (".venv/", "target/")


def _untracked():
    """Untracked files of the work tree, or None outside a git checkout."""
    try:
        r = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return {line[3:] for line in r.stdout.splitlines()
            if line.startswith("?? ") and not line[3:].startswith(IGNORED)}


def pytest_configure(config):
    config._quoll_untracked_before = _untracked()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_quoll_untracked_before", None)
    after = _untracked()
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = (f"the tests left {len(new)} new untracked file(s) in the work tree {REPO}: {new[:20]}; "
               "a test must write under its tmp_path")
        if reporter is not None:
            reporter.write_line(f"ERROR: {msg}", red=True)
        else:
            print(f"ERROR: {msg}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
