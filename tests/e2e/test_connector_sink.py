"""Connector sinks (docs/connectors.md) with real processes on loopback.

The app is apps/wc_app.py with `--sink-connector`: three workers read their
own input file (quoll's replayable file source), count words, and write
`word => n` lines to a connector sink; the sink connector is quoll's file
sink connector (`python -m quoll.sink_connector`), which keeps each
worker's stream in `<stream>.out`.

What is checked:

- under SIGKILLs of random workers and of the sink connector process itself
  (at least 10 kills; more with `pytest --long`), each restarted with its
  command, the committed files end up exact: every word's counts are 1..n in
  order, in one worker's file, nothing lost or doubled, which is what an
  uninterrupted run writes (per file, up to the interleaving of words);
- a sink connector that votes abort on some transactions: those checkpoints
  are not in the coordinator's commit log, their PHASE2 is an abort, the
  worker says which sink refused, and the output is still exact;
- a Wallaroo-style `SinkConnector` script (apps/sink_script.py), unmodified
  API, prints each output exactly once through a SIGKILL of the worker;
- a shrink (`quoll shrink`): the leaver exits 0, the sink connector is
  told which worker left (WORKERS_LEFT, logged), and the output stays
  exact with the leaver's words counted on by the workers that stay;
- a sink that refuses the stream in NOTIFY_ACK or answers ERROR: an error
  line naming the worker and the sink, the worker keeps running, and once a
  working sink connector listens there the output arrives, exact.
"""

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness import QUOLL, Proc, moved_word_count_problems, wait_until, word_count_problems
from quoll.ports import free_port
from test_resilience_faults import (NAMES, Faults, fault_seed, make_word_input, resilience_flags, total_size,
                                    word_count_bytes)
from test_resilience_files import STEM, commit_log_path, records, varint

APPS = Path(__file__).resolve().parent / "apps"
LINE_DELAY = "0.0002"  # 5,000 lines/s per worker: the input outlasts the first kills


def file_sink_connector(port, out):
    return [sys.executable, "-m", "quoll.sink_connector", "--listen", f"127.0.0.1:{port}",
            "--cookie", "sekrit", "--dir", str(out)]


def committed_ids(res):
    path = commit_log_path(res, STEM)
    if not path.exists():
        return []
    return [varint(p, 1)[0] for _, _, p in records(path)[1:] if p and p[0] == 1]


class SinkRun:
    """The sink connector process, a 3-worker word count into it, and the
    kills."""

    def __init__(self, make_cluster, tmp, lines, workers=3, connector_cmd=None):
        self.tmp = tmp
        self.out = tmp / "sink"
        self.res = tmp / "res"
        self.res.mkdir()
        in_dir = tmp / "in"
        in_dir.mkdir()
        self.truth = make_word_input(in_dir, lines, min_words=1, max_words=4)
        self.target = word_count_bytes(self.truth)
        self.port = free_port()
        self.connector_cmd = (connector_cmd or file_sink_connector)(self.port, self.out)
        self.connectors = []
        self.start_connector()
        self.cluster = make_cluster(
            "wc_app", APPS, workers, start=False, extra_flags=resilience_flags(self.res),
            app_args=lambda c, i: ["--in-file", str(in_dir / "in-{worker}.bin"), "--sink-connector",
                                   f"127.0.0.1:{self.port}", "--cookie", "sekrit", "--line-delay", LINE_DELAY])
        self.cluster.start()
        self.faults = Faults(self.cluster, fault_seed())

    def start_connector(self):
        p = Proc(self.connector_cmd, self.tmp, f"sink-connector-{len(self.connectors)}").start()
        self.connectors.append(p)
        wait_until(lambda: "listening on" in p.stdout() or not p.alive(), 10, "the sink connector to listen")
        assert p.alive(), p.describe()
        return p

    @property
    def connector(self):
        return self.connectors[-1]

    def kill_connector(self, pause):
        c = self.connector
        c.signal(signal.SIGKILL)
        c.wait(10)
        c.stop()
        self.faults.note(f"killed the sink connector (pid {c.popen.pid})")
        time.sleep(pause)
        self.start_connector()

    def outputs(self):
        return {p.name: p.read_text().splitlines() for p in sorted(self.out.glob("*.out"))}

    def size(self):
        return total_size(sorted(self.out.glob("*.out")))

    def describe(self):
        return "\n".join([self.faults.describe()] + [c.describe() for c in self.connectors])

    def assert_exact(self):
        self.faults.wait_final(self.size, self.target, "all the output in the sink connector's files", quiet=1.0)
        outputs = self.outputs()
        assert len(outputs) == self.cluster.n, f"one stream per worker: {sorted(outputs)}"
        problems = word_count_problems(outputs, self.truth)
        assert not problems, f"{len(problems)} problems: {problems[:8]}\n{self.describe()}"

    def stop(self):
        for c in self.connectors:
            c.stop()


@pytest.fixture
def sink_run(make_cluster, tmp_path):
    runs = []

    def make(*args, **kwargs):
        r = SinkRun(make_cluster, tmp_path, *args, **kwargs)
        runs.append(r)
        return r

    yield make
    for r in runs:
        r.stop()


@pytest.mark.timeout(600)
def test_kills_of_workers_and_of_the_sink_connector_leave_the_output_exact(sink_run, request):
    long = request.config.getoption("--long")
    run = sink_run(60_000 if long else 25_000)
    f, rng = run.faults, run.faults.rng
    kills = 30 if long else 12
    # Most kills while input is still being read, at random fractions of it.
    fractions = sorted(rng.uniform(0.05, 0.85) for _ in range(kills - 2))
    for k in range(kills):
        if k < len(fractions):
            f.wait_progress(run.size, int(fractions[k] * run.target), f"{fractions[k]:.0%} of the output")
        time.sleep(rng.uniform(0, 0.3))
        f.note(f"kill {k + 1} at {run.size() / run.target:.1%} of the output")
        # Random victims, but at least 3 workers and the sink connector once.
        left = kills - k
        must_kill_worker = 3 - sum(f.kills.values()) >= left
        must_kill_connector = len(run.connectors) == 1 and left == 1
        if must_kill_connector or (not must_kill_worker and rng.random() < 0.35):
            run.kill_connector(rng.uniform(0, 0.5))
        else:
            victim = rng.randrange(run.cluster.n)
            f.kill_and_restart(victim)
            f.wait_recovered(victim)
    run.assert_exact()
    print(f.report())
    killed_workers = sum(f.kills.values())
    assert killed_workers >= 3 and len(run.connectors) >= 2, f.report()
    assert killed_workers + len(run.connectors) - 1 == kills
    # A clean stop commits what the last checkpoint did not cover: nothing here.
    run.cluster.shutdown()
    assert run.size() == run.target


@pytest.mark.timeout(300)
def test_a_shrink_tells_the_sink_connector_who_left(sink_run):
    run = sink_run(3000)
    run.faults.wait_final(run.size, run.target, "all the output in the sink connector's files", quiet=0.5)
    external = f"127.0.0.1:{run.cluster.external_ports[0]}"
    done = subprocess.run([QUOLL, "shrink", external, "--names", "worker2"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    leaver = run.cluster.workers[2]
    assert leaver.wait(60) == 0, run.describe()
    wait_until(lambda: "worker(s) worker2 left the cluster" in run.connector.stderr(), 30,
               "WORKERS_LEFT at the sink connector")
    problems = moved_word_count_problems(run.outputs(), run.truth)
    assert not problems, f"{problems[:8]}\n{run.describe()}"


REFUSING = textwrap.dedent("""
    import sys
    from wallaroo.experimental._sink import DirectoryStore, SinkServer

    port, out, refused_log = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def vote(stream, txn):
        # Refuse every checkpoint whose id is a multiple of 4.
        c_id = int(txn.rsplit("c_id=", 1)[1])
        if c_id % 4 == 0:
            with open(refused_log, "a") as f:
                f.write(txn + "\\n")
            return False
        return True

    server = SinkServer("127.0.0.1", port, "sekrit", DirectoryStore(out), lambda s, d: None, vote)
    print("listening on", port, flush=True)
    while True:
        server.poll(0.2)
""")


@pytest.mark.timeout(300)
def test_an_abort_vote_keeps_that_checkpoint_from_committing(sink_run, tmp_path):
    script = tmp_path / "refusing_sink.py"
    script.write_text(REFUSING)
    refused = tmp_path / "refused.txt"
    run = sink_run(8_000, connector_cmd=lambda port, out: [sys.executable, str(script), str(port), str(out),
                                                           str(refused)])
    run.assert_exact()
    committed = set(committed_ids(run.res))
    refused_ids = {int(l.rsplit("c_id=", 1)[1]) for l in refused.read_text().splitlines()}
    assert refused_ids and committed, run.describe()
    assert not refused_ids & committed, f"refused {sorted(refused_ids)}, committed {sorted(committed)}"
    assert re.search(r"connector sink 'counts' at 127\.0\.0\.1:\d+: the sink connector voted to abort "
                     r"wc app-w-\w+-id-counts:c_id=\d+", "".join(w.stderr() for w in run.cluster.workers)), \
        run.describe()


class FakeSink:
    """A listener that answers each connection with OK and `answer` (the
    bytes of a frame) and reads until the worker closes it."""

    def __init__(self, port, answer):
        self.answer = answer
        self.lst = socket.socket()
        self.lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lst.bind(("127.0.0.1", port))
        self.lst.listen(8)
        self.lst.settimeout(0.1)
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                conn, _ = self.lst.accept()
            except OSError:
                continue
            conn.sendall(struct.pack(">IBI", 5, 1, 100) + self.answer)
            conn.settimeout(0.1)
            while self.running:
                try:
                    if not conn.recv(4096):
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            conn.close()

    def close(self):
        self.running = False
        self.thread.join()
        self.lst.close()


NOTIFY_REFUSED = struct.pack(">IBBQQ", 18, 4, 0, 1, 0)
ERROR_FRAME = struct.pack(">IBH", 3 + 9, 2, 9) + b"disk full"


@pytest.mark.parametrize("answer,said", [
    (NOTIFY_REFUSED, r"the sink connector refused stream 1 \('wc app-w-initializer-id-counts'\) in NOTIFY_ACK"),
    (ERROR_FRAME, r"the sink connector sent ERROR: disk full"),
])
@pytest.mark.timeout(300)
def test_a_refusing_sink_is_named_and_the_worker_goes_on(answer, said, make_cluster, tmp_path):
    port = free_port()
    fake = FakeSink(port, answer)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    res = tmp_path / "res"
    res.mkdir()
    # One file per worker name; this single worker reads the initializer's.
    make_word_input(in_dir, 2_000)
    cluster = make_cluster(
        "wc_app", APPS, 1, extra_flags=resilience_flags(res),
        app_args=lambda c, i: ["--in-file", str(in_dir / "in-{worker}.bin"), "--sink-connector",
                               f"127.0.0.1:{port}", "--cookie", "sekrit"])
    w = cluster.workers[0]
    line = re.compile(r"^quoll: error: worker 'initializer', connector sink 'counts' at 127\.0\.0\.1:%d: %s$"
                      % (port, said), re.M)
    wait_until(lambda: line.search(w.stderr()), 20, "the error naming the worker and the sink")
    time.sleep(1.0)
    assert w.alive(), cluster.describe()
    assert len(line.findall(w.stderr())) == 1, "a sink that keeps refusing is reported once"
    fake.close()
    # A working sink connector at that address: the output arrives, exact.
    out = tmp_path / "sink"
    conn = Proc([sys.executable, "-m", "quoll.sink_connector", "--listen", f"127.0.0.1:{port}",
                 "--cookie", "sekrit", "--dir", str(out)], tmp_path, "sink-connector").start()
    try:
        expected = word_count_lines(in_dir / f"in-{NAMES[0]}.bin")
        target = sum(len(l) + 1 for l in expected)
        wait_until(lambda: total_size(sorted(out.glob("*.out"))) >= target, 60,
                   "the output in the sink connector's file")
        got = (out / "wc_app-w-initializer-id-counts.out").read_text().splitlines()
        assert sorted(got) == sorted(expected), cluster.describe()
    finally:
        conn.stop()


def word_count_lines(path):
    """The `word => n` lines a word count of the framed input file writes."""
    data = path.read_bytes()
    counts, lines, i = {}, [], 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        for word in data[i + 4:i + 4 + n].decode().split():
            counts[word] = counts.get(word, 0) + 1
            lines.append(f"{word} => {counts[word]}")
        i += 4 + n
    return lines


@pytest.mark.timeout(300)
def test_a_sink_connector_script_reads_each_output_once(make_cluster, tmp_path):
    port = free_port()
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    res = tmp_path / "res"
    res.mkdir()
    make_word_input(in_dir, 15_000)
    app_args = ["--in-file", str(in_dir / "in-{worker}.bin"), "--sink-connector", f"127.0.0.1:{port}",
                "--cookie", "sekrit", "--sink-framed", "--line-delay", LINE_DELAY]
    env = dict(os.environ, PYTHONPATH=str(APPS))
    script = Proc([sys.executable, str(APPS / "sink_script.py"), "--application-module", "wc_app",
                   "--connector", "counts"] + app_args, tmp_path, "sink-script", env=env).start()
    try:
        wait_until(lambda: "listening" in script.stdout() or not script.alive(), 20, "the script to listen")
        cluster = make_cluster("wc_app", APPS, 1, extra_flags=resilience_flags(res), app_args=lambda c, i: app_args)
        expected = word_count_lines(in_dir / f"in-{NAMES[0]}.bin")
        printed = lambda: script.stdout().count(" => ")  # noqa: E731
        wait_until(lambda: printed() >= len(expected) // 3, 60, "a third of the output")
        f = Faults(cluster, fault_seed())
        assert printed() < len(expected), "the input went by too fast to kill mid-stream"
        f.kill_and_restart(0)
        f.wait_recovered(0)
        wait_until(lambda: printed() >= len(expected), 60, "all the output")
        time.sleep(1.0)
        got = [l for l in script.stdout().splitlines() if " => " in l]
        assert sorted(got) == sorted(expected), f"{len(got)} lines, want {len(expected)}\n{f.describe()}"
    finally:
        script.stop()
