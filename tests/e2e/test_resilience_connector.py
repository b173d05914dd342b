"""A source connector (docs/formats.md, "Connector protocol v3") with
resilience, with real processes.

The app (apps/wc_app.py with `--in`) counts words: each worker listens for
connector clients on its own `--in` address, and writes `word => count` lines through
quoll's exactly-once file sink. Input goes in with `quoll send --connector`,
one sender per worker, each on its own stream id; a sender keeps what the
worker has not acknowledged (acks come only after a checkpoint completes)
and resends it after a restart.

What is checked:

- a worker killed with SIGKILL mid-stream and restarted with its command:
  the cluster rolls back, the senders reconnect and resume after their
  acknowledged position, and at the end every word's counts are exactly
  1..n (nothing lost, nothing doubled) and every sender exits 0 reporting
  all messages acknowledged (1 worker, and 2 workers with either killed);
- a wrong cookie gets `Bad cookie: <got>, wanted: <cookie>`;
- without resilience a connector source works end to end (and writes no
  resilience files).
"""

import collections
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import QUOLL, READY_LINE, Proc, moved_word_count_problems, wait_until, word_count_problems
from test_resilience_files import last_committed, out_files, out_lines

APPS = Path(__file__).resolve().parent / "apps"
INTERVAL_NS = 100_000_000
REPLAYED = re.compile(r"RESILIENCE\: Replayed (\d+) entries from recovery log file\.")
SENT = re.compile(r"^quoll send: sent (\d+) messages \(\d+ bytes\) over the connector protocol in [\d.]+ s "
                  r"\(\d+ msgs/s\), all acknowledged \((\d+) resent after restarts\)$", re.M)
RESUMED = re.compile(r"resuming after the last acknowledged message \((\d+)\)")


def make_lines(n, seed):
    rng = random.Random(seed)
    vocab = [f"w{i:03d}" for i in range(200)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def settled(workdir, quiet=0.6, timeout=30):
    deadline = time.time() + timeout
    last, since = None, time.time()
    while time.time() < deadline:
        sizes = [p.stat().st_size for p in out_files(workdir)]
        if sizes != last:
            last, since = sizes, time.time()
        elif time.time() - since >= quiet:
            return out_lines(workdir)
        time.sleep(0.05)
    raise AssertionError("the output never settled")


class ConnRun:
    def __init__(self, make_cluster, tmp_path, workers, lines=15000, resilience=True, decoder="stream",
                 cookie="cookie", app_args=()):
        self.tmp = Path(tmp_path)
        self.extra_app = list(app_args)
        self.res = self.tmp / "res"
        self.res.mkdir()
        self.inputs, self.truth = [], collections.Counter()
        for i in range(workers):
            ls = make_lines(lines, seed=10 + i)
            for l in ls:
                self.truth.update(l.split())
            path = self.tmp / f"in-{i}.txt"
            path.write_text("".join(l + "\n" for l in ls))
            self.inputs.append(path)
        self.lines = lines
        flags = (["--run-with-resilience"] if resilience else []) + [
            "--resilience-dir", str(self.res), "--time-between-checkpoints", str(INTERVAL_NS)]
        self.cluster = make_cluster(
            "wc_app", APPS, workers,
            app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}",
                                   "--out-file", str(self.tmp / "out-{worker}.txt"),
                                   "--decoder", decoder, "--cookie", cookie] + self.extra_app,
            extra_flags=flags)
        self.senders = []

    @property
    def workers(self):
        return self.cluster.workers

    def send(self, i, *extra, label=None):
        """Starts `quoll send --connector` to worker i, stream id i + 1."""
        args = [QUOLL, "send", "--connector", "--host", f"127.0.0.1:{self.cluster.in_ports[i]}",
                "--file", self.inputs[i], "--framing", "framed", "--stream-id", str(i + 1), *extra]
        p = Proc(args, self.tmp, label or f"send{i}").start()
        self.senders.append(p)
        return p

    def describe(self):
        return "\n".join([self.cluster.describe()] + [s.describe() for s in self.senders])

    def wait_senders(self, timeout=40):
        for s in self.senders:
            try:
                s.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{s.label} did not finish\n{self.describe()}")
            s.stop()

    def assert_exact(self):
        settled(self.tmp)
        problems = word_count_problems({p.name: p.read_text().splitlines() for p in out_files(self.tmp)},
                                       self.truth)
        assert not problems, f"{len(problems)} problems: {problems[:5]}\n{self.describe()}"

    def stop_senders(self):
        for s in self.senders:
            s.stop()


@pytest.fixture
def conn_run(make_cluster, tmp_path):
    runs = []

    def make(*args, **kwargs):
        r = ConnRun(make_cluster, tmp_path, *args, **kwargs)
        runs.append(r)
        return r

    yield make
    for r in runs:
        r.stop_senders()


@pytest.mark.parametrize("workers,victim,decoder", [(1, 0, "stream"), (2, 1, "plain"), (2, 0, "stream")])
def test_killed_worker_restarts_and_the_senders_resume(workers, victim, decoder, conn_run):
    run = conn_run(workers, decoder=decoder)
    for i in range(workers):
        run.send(i, "--rate", "5000")
    total = sum(run.truth.values())
    # Mid-stream: a few checkpoints complete, much of the input still to come.
    wait_until(lambda: (last_committed(run.res) or 0) >= 3 and len(out_lines(run.tmp)) >= total // 5, 20,
               "3 checkpoints and a fifth of the output")
    assert len(out_lines(run.tmp)) < total * 3 // 4, "the input went by too fast to kill mid-stream"
    for s in run.senders:
        assert s.alive(), run.describe()

    w = run.workers[victim]
    w.signal(signal.SIGKILL)
    w.wait(10)
    w.stop()
    k = last_committed(run.res)
    time.sleep(0.3)
    restarted = Proc(run.cluster.command(victim), run.tmp, f"{w.label}~2", env=run.cluster.env).start()
    run.cluster.workers[victim] = restarted

    run.wait_senders()
    for s in run.senders:
        out = s.stdout()
        m = SENT.findall(out)
        assert s.popen.returncode == 0 and len(m) == 1, run.describe()
        assert int(m[0][0]) == run.lines, run.describe()
        # It resumed after a position the worker had acknowledged: not from
        # the start, not past the end.
        resumed = [int(n) for n in RESUMED.findall(s.stderr())]
        assert resumed, run.describe()
        assert all(0 < n < run.lines for n in resumed), run.describe()

    wait_until(lambda: READY_LINE in restarted.stdout(), 10, "the restarted worker to be ready")
    replayed = [int(n) for n in REPLAYED.findall(restarted.stdout())]
    assert len(replayed) == 1 and replayed[0] > 0, run.describe()
    assert int(re.search(r"Recovery COMPLETE - ~~\| \(checkpoint (\d+),", restarted.stdout()).group(1)) >= k
    run.assert_exact()
    run.cluster.shutdown()
    for w in run.workers:
        assert w.popen.returncode == 0, run.describe()


def test_wrong_cookie_is_refused(conn_run):
    run = conn_run(1, lines=300, cookie="s3cret")
    bad = run.send(0, "--cookie", "wrong", "--reconnect-timeout", "3", label="bad-sender")
    try:
        rc = bad.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a sender with a wrong cookie kept going\n{run.describe()}")
    assert rc != 0, run.describe()
    assert bad.stderr().splitlines() == [
        f"quoll send: error: the worker at 127.0.0.1:{run.cluster.in_ports[0]} sent ERROR: Bad cookie: wrong, "
        "wanted: s3cret; give the source connector's cookie with --cookie"], run.describe()
    assert bad.stdout() == ""
    assert re.search(r"^quoll: error: worker 'initializer', source 'lines', connection from 127\.0\.0\.1:\d+: "
                     r"Bad cookie: wrong, wanted: s3cret; connection closed$", run.workers[0].stderr(), re.M), \
        run.describe()
    assert out_lines(run.tmp) == []
    # The worker goes on, and a client with the right cookie gets through.
    assert run.workers[0].alive(), run.describe()
    run.senders.remove(bad)
    good = run.send(0, "--cookie", "s3cret")
    run.wait_senders()
    assert good.popen.returncode == 0 and SENT.search(good.stdout()), run.describe()
    run.assert_exact()
    run.cluster.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_connector_source_without_resilience(workers, conn_run):
    run = conn_run(workers, lines=3000, resilience=False)
    for i in range(workers):
        run.send(i)
    run.wait_senders()
    for s in run.senders:
        m = SENT.findall(s.stdout())
        assert s.popen.returncode == 0 and m == [(str(run.lines), "0")], run.describe()
    run.assert_exact()
    assert list(run.res.iterdir()) == []
    run.cluster.shutdown()
    for w in run.workers:
        assert w.popen.returncode == 0, run.describe()


def test_a_shrink_sends_the_leavers_connector_clients_to_a_worker_that_stays(conn_run):
    """worker1 leaves (`quoll shrink`) while a sender streams to it: the
    sender gets RESTART with the initializer's address for the same source,
    goes on there from its last acknowledged message, and ends with all
    acknowledged; worker1 exits 0, and every word's counts are exact across
    the two sink files (its words moved to the initializer)."""
    run = conn_run(2)
    for i in range(2):
        run.send(i, "--rate", "4000")
    wait_until(lambda: (last_committed(run.res) or 0) >= 3, 20, "3 checkpoints")
    shrink = subprocess.run([QUOLL, "shrink", f"127.0.0.1:{run.cluster.external_ports[0]}", "--names", "worker1"],
                            capture_output=True, text=True, timeout=30)
    assert shrink.returncode == 0, (shrink, run.describe())
    assert run.workers[1].wait(60) == 0, run.describe()
    run.wait_senders(60)
    initializer_in = f"127.0.0.1:{run.cluster.in_ports[0]}"
    moved = run.senders[1].stderr()
    assert f"the worker asked for a restart; reconnecting to {initializer_in}" in moved, run.describe()
    for s in run.senders:
        m = SENT.findall(s.stdout())
        assert s.popen.returncode == 0 and len(m) == 1 and int(m[0][0]) == run.lines, run.describe()
    assert "leaves the cluster: its connector clients are sent to " + initializer_in in run.workers[1].stdout() \
        + run.workers[1].stderr(), run.describe()
    settled(run.tmp)
    problems = moved_word_count_problems({p.name: p.read_text().splitlines() for p in out_files(run.tmp)},
                                         run.truth)
    assert not problems, f"{len(problems)} problems: {problems[:5]}\n{run.describe()}"
