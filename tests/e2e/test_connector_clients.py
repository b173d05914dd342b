"""`wallaroo.experimental`'s at-least-once client, as Wallaroo's connector
scripts use it, against real workers.

apps/multi_source_feed.py sends u32-framed files through
`connectors.MultiSourceConnector` (one stream per file) to apps/wc_app.py's
source connector; the word counts go out through the exactly-once file
sink. What is checked:

- the feed ends by itself once the worker has acknowledged every file's
  end, and the counts are exact (each word's counts 1..n, nothing lost or
  doubled), without and with resilience;
- a worker killed with SIGKILL mid-stream and restarted with its command:
  the client reconnects, notifies its streams again, resumes where the
  worker says, and the counts are still exact;
- a wrong cookie: the client's `connect()` raises with the worker's ERROR.
"""

import signal
import struct
import sys
import time

import pytest

from harness import Proc, wait_until
from test_resilience_connector import APPS, conn_run  # noqa: F401  (fixture)
from test_resilience_files import last_committed, out_lines

FEED = [sys.executable, str(APPS / "multi_source_feed.py")]


def framed_inputs(run, i, parts=2):
    """Worker i's input lines split round-robin over `parts` framed files."""
    lines = run.inputs[i].read_text().splitlines()
    paths = []
    for k in range(parts):
        path = run.tmp / f"in-{i}-{k}.bin"
        path.write_bytes(b"".join(struct.pack(">I", len(l)) + l.encode() for l in lines[k::parts]))
        paths.append(path)
    return paths


def start_feed(run, i, cookie="cookie"):
    args = [*FEED, f"127.0.0.1:{run.cluster.in_ports[i]}", cookie, *map(str, framed_inputs(run, i))]
    p = Proc(args, run.tmp, f"feed{i}").start()
    run.senders.append(p)
    return p


def wait_feeds(run, timeout=60):
    run.wait_senders(timeout)
    for s in run.senders:
        assert s.popen.returncode == 0 and "feed: done" in s.stdout(), run.describe()


@pytest.mark.parametrize("workers,resilience", [(1, False), (2, True)])
def test_feed_sends_every_file_and_ends(workers, resilience, conn_run):  # noqa: F811
    run = conn_run(workers, lines=2000, resilience=resilience)
    for i in range(workers):
        start_feed(run, i)
    wait_feeds(run)
    run.assert_exact()
    run.cluster.shutdown()


@pytest.mark.parametrize("workers,victim", [(1, 0), (2, 1)])
def test_feed_resumes_after_a_killed_worker(workers, victim, conn_run):  # noqa: F811
    run = conn_run(workers, lines=15000, app_args=("--line-delay", "0.0002"))
    for i in range(workers):
        start_feed(run, i)
    total = sum(run.truth.values())
    wait_until(lambda: (last_committed(run.res) or 0) >= 3 and len(out_lines(run.tmp)) >= total // 5, 30,
               "3 checkpoints and a fifth of the output")
    assert len(out_lines(run.tmp)) < total * 3 // 4, "the input went by too fast to kill mid-stream"
    w = run.workers[victim]
    w.signal(signal.SIGKILL)
    w.wait(10)
    w.stop()
    time.sleep(0.3)
    run.cluster.workers[victim] = Proc(run.cluster.command(victim), run.tmp, f"{w.label}~2",
                                       env=run.cluster.env).start()
    wait_feeds(run, timeout=90)
    feed = run.senders[victim]
    assert "reconnecting" in feed.stderr(), run.describe()
    run.assert_exact()
    run.cluster.shutdown()


def test_wrong_cookie_fails_connect(conn_run):  # noqa: F811
    run = conn_run(1, lines=100, cookie="s3cret")
    feed = start_feed(run, 0, cookie="wrong")
    assert feed.wait(20) != 0, run.describe()
    assert (f"ConnectorError: the worker at 127.0.0.1:{run.cluster.in_ports[0]} sent ERROR: "
            "Bad cookie: wrong, wanted: s3cret") in feed.stderr(), run.describe()
    assert out_lines(run.tmp) == []
    assert run.workers[0].alive(), run.describe()
