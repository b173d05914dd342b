"""Workers reading and writing Kafka, against a real broker (tansu on
127.0.0.1, one per test).

- The Kafka examples (examples/kafka/) run unmodified on 1 and 3 workers
  and their output is exact.
- Word count from a 3-partition topic to a 3-partition topic on 3 workers
  with resilience, under a storm of SIGKILLs (random workers, the
  initializer too, at random moments, each restarted with its command):
  the committed output holds every (word, count) exactly once and the
  final counts are true. 15 s of storm, 90 s with `pytest --long`. The
  same storm with the broker stopped (SIGTERM) halfway and started again
  with its command (its data in S3 storage, a moto server).
- A record's Kafka key is its key in a keyed stage without `key_by`;
  decoder and encoder errors drop the record and are counted by place.
- With resilience, a clean shutdown commits the output no checkpoint
  covers yet.
- With resilience, the broker cut off for a few seconds mid-run (a proxy
  in front of it resets every connection and refuses new ones: tansu's
  memory storage would lose the topics in a real restart) delays the
  output and changes nothing in it.
- With resilience, the broker stopped mid-run (SIGTERM) and started
  again with its command (its data in S3 storage, a moto server, so the
  restarted broker has its topics, offsets and transactions back): the
  same. And the broker SIGKILLed instead: only with `--long`, see the
  test.
- A broker address that does not resolve and a topic that does not exist
  stop the worker with an error naming the source or sink, its topic and
  the worker.

Output is read with `committed_reader.py` (the read_committed rule applied
by the test itself: tansu hands aborted records to read_committed
consumers, see docs/kafka.md).
"""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from broker import Broker, S3Store, broker_bin, moto_bin
from committed_reader import fenced_batches, history, read_committed, read_uncommitted
from proxy import Proxy
from harness import EXAMPLES, Cluster, Proc, free_port, report_status, wait_report, wait_until, word_count_problems
from test_resilience_faults import fault_seed, resilience_flags

KAFKA_EXAMPLES = EXAMPLES / "kafka"
APPS = Path(__file__).resolve().parent / "apps"
WORDS = [f"w{i:03d}" for i in range(150)]


def produce(broker, topic, values, keys=None):
    """Sends `values` (str, with `keys` if given) to `topic`; every one must
    be delivered."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.address, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topic, v.encode("utf-8"), key=keys[i].encode("utf-8") if keys else None)
        p.poll(0)
    assert p.flush(30) == 0, f"records to {topic} not delivered"


def outputs_by_partition(broker, topic):
    """Committed values of `topic` as text, per partition in offset order."""
    out = collections.defaultdict(list)
    for r in read_committed(broker.address, topic):
        out[f"partition {r.partition}"].append(r.value.decode("utf-8"))
    return dict(out)


def word_count_args(broker, lines="lines", counts="counts"):
    return lambda c, i: ["--lines_topic", lines, "--lines_brokers", broker.address,
                         "--counts_topic", counts, "--counts_brokers", broker.address]


def random_lines(rng, n):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def truth_of(lines):
    return collections.Counter(w for line in lines for w in line.split())


@pytest.fixture
def clusters():
    made = []
    yield made
    for c in made:
        c.stop()


def start(clusters, tmp_path, module, workers, app_args, extra=(), pythonpath=KAFKA_EXAMPLES):
    c = Cluster(tmp_path, module, pythonpath, workers, app_args, extra_flags=extra)
    clusters.append(c)
    return c.start(timeout=60)


def wait_for_word_counts(broker, truth, cluster, timeout):
    """Waits until the committed counts are complete; returns the problems
    of the last look (empty once they are exact)."""
    problems = ["nothing read yet"]

    def done():
        nonlocal problems
        problems = word_count_problems(outputs_by_partition(broker, "counts"), truth)
        return not problems

    try:
        wait_until(done, timeout, "the committed word counts to be complete", interval=0.5)
    except AssertionError:
        pass
    return problems


def explain_word_count_problems(broker, problems, seed, cluster):
    """What a failing word-count test reports: the problems, every record
    of the first wrong word with its producer, epoch and fate, the batches
    tansu took from fenced epochs, and the cluster's logs."""
    word = problems[0].split(":")[0]
    fenced = fenced_batches(broker.address, "counts")
    return (f"seed {seed}: {len(problems)} problems, e.g.\n  " + "\n  ".join(problems[:10])
            + f"\nevery record of {word} in the topic:\n  "
            + "\n  ".join(history(broker.address, "counts", f"{word} => ".encode()))
            + f"\n{len(fenced)} batch(es) from fenced producer epochs\n" + cluster.describe())


@pytest.mark.parametrize("workers", [1, 3])
def test_celsius_example(broker, tmp_path, clusters, workers):
    broker.create_topic("celsius", 3)
    broker.create_topic("fahrenheit", 1)
    readings = [f"{c / 4:.2f}" for c in range(-400, 400)] + ["warm", "cold"]
    produce(broker, "celsius", readings)
    args = ["--kafka_source_topic", "celsius", "--kafka_source_brokers", broker.address,
            "--kafka_sink_topic", "fahrenheit", "--kafka_sink_brokers", broker.address,
            "--kafka_sink_max_message_size", "100000", "--kafka_sink_max_produce_buffer_ms", "10"]
    c = start(clusters, tmp_path, "celsius_kafka", workers, lambda c, i: args)
    want = sorted(f"{float(r) * 1.8 + 32:.2f}" for r in readings[:-2])

    def got():
        return sorted(v for vs in outputs_by_partition(broker, "fahrenheit").values() for v in vs)

    wait_until(lambda: len(got()) >= len(want), 60, "every reading converted", interval=0.3)
    time.sleep(1)
    assert got() == want, c.describe()
    c.shutdown()


@pytest.mark.parametrize("workers", [1, 3])
def test_word_count_example(broker, tmp_path, clusters, workers):
    broker.create_topic("lines", 3)
    broker.create_topic("counts", 3)
    lines = random_lines(random.Random(workers), 2000)
    produce(broker, "lines", lines)
    c = start(clusters, tmp_path, "word_count_kafka", workers, word_count_args(broker))
    problems = wait_for_word_counts(broker, truth_of(lines), c, 60)
    assert not problems, "\n".join(problems[:10]) + "\n" + c.describe()
    # Every count is keyed by its word.
    keys = {(r.key, r.value.decode().rpartition(" => ")[0].encode())
            for r in read_committed(broker.address, "counts")}
    assert all(k == w for k, w in keys)
    c.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_kafka_key_is_the_implicit_key_and_user_errors_are_counted(broker, tmp_path, clusters, workers):
    broker.create_topic("in", 3)
    broker.create_topic("out", 3)
    rng = random.Random(workers)
    keys = [rng.choice("abcdefg") for _ in range(600)]
    values = [f"{k}:{i}" for i, k in enumerate(keys)]
    values[10], values[20], values[30] = "bad-in", f"{keys[20]}:bad 1", f"{keys[30]}:bad 2"
    produce(broker, "in", values, keys)
    # What each key's outputs must be, in order: the state stage counts
    # every decoded record of the key; the encoder drops the bad ones.
    want = collections.defaultdict(list)
    seen = collections.Counter()
    for k, v in zip(keys, values):
        if v == "bad-in":
            continue
        seen[k] += 1
        if ":bad " not in v:
            want[k].append(f"{v} #{seen[k]}")
    args = ["--in_topic", "in", "--in_brokers", broker.address, "--out_topic", "out", "--out_brokers", broker.address]
    c = start(clusters, tmp_path, "kafka_passthrough", workers, lambda c, i: args, pythonpath=APPS)
    total = sum(len(v) for v in want.values())

    def got():
        out = collections.defaultdict(list)
        for r in read_committed(broker.address, "out"):
            out[r.key.decode()].append(r.value.decode())
        return out

    wait_until(lambda: sum(len(v) for v in got().values()) >= total, 60, "every good record out", interval=0.3)
    assert got() == want, c.describe()
    # Reports are published every 0.5 s.
    reports = [wait_report(port, lambda r: "dropped_by_place" in r, "a report") for port in c.external_ports]
    dropped = collections.Counter()
    for r in reports:
        dropped.update(r["dropped_by_place"])
    assert dropped == {"source 'in' (kafka)": 1, "kafka sink 'out' (topic 'out') (encoder)": 2}, dropped
    c.shutdown()


def test_clean_shutdown_commits_output_after_the_last_checkpoint(broker, tmp_path, clusters):
    broker.create_topic("lines", 1)
    broker.create_topic("counts", 1)
    lines = random_lines(random.Random(3), 300)
    produce(broker, "lines", lines)
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    # A checkpoint a minute: none commits during the run.
    c = start(clusters, tmp_path, "word_count_kafka", 1, word_count_args(broker),
              extra=resilience_flags(res_dir, 60_000_000_000))
    wait_until(lambda: report_status(c.external_ports[0]).get("messages_in", 0) >= len(lines), 30,
               "every line read")
    assert read_committed(broker.address, "counts") == []
    c.shutdown()
    assert not word_count_problems(outputs_by_partition(broker, "counts"), truth_of(lines))


@pytest.fixture
def storm_seconds(request):
    return 90.0 if request.config.getoption("--long") else 15.0


def test_word_count_exactly_once_under_sigkill_storm(broker, tmp_path, clusters, storm_seconds):
    sigkill_storm(broker, tmp_path, clusters, storm_seconds)


def test_word_count_exactly_once_under_sigkill_storm_across_a_broker_restart(tmp_path, clusters,
                                                                           storm_seconds):
    """The storm, and halfway through it the broker stopped (SIGTERM) and
    started again with its command, its data in S3 (moto)."""
    with s3_broker() as broker:
        sigkill_storm(broker, tmp_path, clusters, storm_seconds,
                      halfway=lambda c: restart_broker(broker, c, 2.0, signal.SIGTERM))


@contextlib.contextmanager
def s3_broker():
    """A broker whose data is in S3 storage (a moto server), so that it
    keeps its topics, offsets and transactions across a restart."""
    bin_path, moto = broker_bin(), moto_bin()
    if bin_path is None or moto is None:
        pytest.skip("no Kafka broker or moto binary: run scripts/kafka-broker.sh and "
                    "scripts/moto-server.sh (or set QUOLL_KAFKA_BROKER and QUOLL_MOTO)")
    with S3Store(moto) as store, Broker(bin_path, store=store) as broker:
        yield broker


def restart_broker(broker, c, down_s, sig):
    """Stops `broker` with `sig`, starts it again after `down_s`, and waits
    until a worker of `c` says the brokers went away."""
    broker.restart(down_s=down_s, sig=sig)
    wait_until(lambda: UNREACHABLE in worker_logs(c), 10, "a worker saying the brokers are down")


def sigkill_storm(broker, tmp_path, clusters, storm_seconds, halfway=None):
    """Word count on 3 workers with resilience while input keeps coming:
    at least 10 SIGKILLs of random workers (the initializer among them),
    each restarted with its command, and `halfway(cluster)` called once
    midway.
    The committed output must hold every (word, count) exactly once.
    Workers that exit with an error on their own are restarted too (a
    `Supervisor`), and each such exit must be a Kafka sink's error."""
    seed = fault_seed()
    rng = random.Random(seed)
    broker.create_topic("lines", 3)
    broker.create_topic("counts", 3)
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    c = start(clusters, tmp_path, "word_count_kafka", 3, word_count_args(broker),
              extra=resilience_flags(res_dir, 200_000_000))

    # Input keeps coming for the whole storm, so kills land mid-stream.
    lines = random_lines(rng, int(storm_seconds * 400))
    feeder_error = []

    def feed():
        try:
            step = 40
            pause = storm_seconds / (len(lines) / step)
            for i in range(0, len(lines), step):
                produce(broker, "lines", lines[i:i + step])
                time.sleep(pause)
        except Exception as e:  # noqa: BLE001 (reported by the test)
            feeder_error.append(e)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    supervisor = Supervisor(c, tmp_path)
    kills = []
    end = time.monotonic() + storm_seconds
    while time.monotonic() < end or len(kills) < 10:
        time.sleep(rng.uniform(0.3, 1.5))
        if halfway and time.monotonic() > end - storm_seconds / 2:
            halfway(c)
            halfway = None
            continue
        # Random workers, and the initializer at least once.
        i = 0 if len(kills) == 5 and "worker0" not in kills else rng.randrange(3)
        with supervisor.lock:
            w = c.workers[i]
            w.signal(signal.SIGKILL)
            w.wait(10)
            kills.append(w.label)
            time.sleep(rng.uniform(0.0, 0.3))
            c.workers[i] = Proc(c.command(i), tmp_path, w.label, env=c.env).start()
    feeder.join(storm_seconds + 60)
    assert not feeder_error, feeder_error
    print(f"{len(kills)} SIGKILLs: {collections.Counter(kills)}")
    assert len(kills) >= 10 and "worker0" in kills

    problems = wait_for_word_counts(broker, truth_of(lines), c, 90)
    supervisor.close()
    if problems:
        pytest.fail(explain_word_count_problems(broker, problems, seed, c))
    fenced = fenced_batches(broker.address, "counts")
    # What the kills did: records of aborted transactions (visible to a
    # raw reader) and output that restarted workers committed from their
    # write-ahead files.
    written = len(read_uncommitted(broker.address, "counts"))
    logs = worker_logs(c)
    print(f"{sum(truth_of(lines).values())} counts committed once each; {written} records written in all; "
          f"{logs.count('left in doubt')} in-doubt recoveries; {len(fenced)} batch(es) that tansu "
          "took from fenced producer epochs (dropped, as Kafka refuses them); workers restarted after "
          f"an error: {supervisor.exits}")
    supervisor.assert_kafka_sink_exits()
    c.shutdown(timeout=30)


@pytest.mark.parametrize("case", ["bad address", "missing source topic", "missing sink topic"])
def test_setup_errors_name_the_source_or_sink_topic_and_worker(broker, tmp_path, case):
    broker.create_topic("lines", 1)
    broker.create_topic("counts", 1)
    args = {"--lines_topic": "lines", "--lines_brokers": broker.address,
            "--counts_topic": "counts", "--counts_brokers": broker.address}
    if case == "bad address":
        args["--counts_brokers"] = "no-such-host.invalid:9092"
        want = ["sink 'counts'", "topic 'counts'", "worker 'initializer'", "no-such-host.invalid"]
    elif case == "missing source topic":
        args["--lines_topic"] = "nosuch"
        want = ["source 'lines'", "topic 'nosuch'", "worker 'initializer'", "does not exist"]
    else:
        args["--counts_topic"] = "nosuch"
        want = ["sink 'counts'", "topic 'nosuch'", "worker 'initializer'", "does not exist"]
    c = Cluster(tmp_path, "word_count_kafka", KAFKA_EXAMPLES, 1,
                lambda c, i: [a for kv in args.items() for a in kv])
    w = Proc(c.command(0), tmp_path, "worker0", env=c.env).start()
    try:
        rc = w.wait(60)
    finally:
        w.stop()
    err = w.stderr()
    assert rc != 0, w.describe()
    assert all(part in err for part in want), w.describe()


def brokers_reported_unreachable(c):
    """Every worker is alive and the log says the brokers went away (once
    per client)."""
    assert all(w.alive() for w in c.workers), c.describe()
    assert UNREACHABLE in worker_logs(c), c.describe()


# What a worker logs once per client when its brokers go away.
UNREACHABLE = "the brokers are unreachable"


def worker_logs(c):
    return "".join(w.stderr() for w in c.workers)


class Supervisor:
    """Restarts with its command every worker of `c` that exits with an
    error, as a process supervisor would, and keeps the last lines each
    said. A Kafka sink that can't go on stops its worker (docs/kafka.md);
    with resilience the restarted worker recovers it."""

    def __init__(self, c, tmp_path):
        self.c = c
        self.tmp_path = tmp_path
        self.exits = []
        # Held by whoever kills or restarts a worker (a kill storm too).
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()

    def watch(self):
        while not self.done.wait(0.2):
            with self.lock:
                for i, w in enumerate(self.c.workers):
                    # An error exit, not a signal: the test's own kills
                    # restart their workers themselves.
                    if (w.popen.poll() or 0) > 0:
                        self.exits.append((w.label, w.popen.returncode, w.stderr().strip().splitlines()[-1:]))
                        self.c.workers[i] = Proc(self.c.command(i), self.tmp_path, w.label,
                                                 env=self.c.env).start()

    def close(self):
        self.done.set()
        self.thread.join(5)

    def assert_kafka_sink_exits(self):
        assert all("Kafka sink" in "".join(last) for _, _, last in self.exits), self.exits


def word_count_across(broker, tmp_path, clusters, workers, seed, disrupt, timeout, supervise=False):
    """Word count with resilience on `workers` workers: lines before, then
    lines during `disrupt(cluster)`, then lines after; the committed counts
    must come out exact within `timeout` seconds, every worker alive.
    `supervise`: workers that exit with an error are restarted (a
    `Supervisor`), and each such exit must be a Kafka sink's error."""
    broker.create_topic("lines", 3)
    broker.create_topic("counts", 3)
    rng = random.Random(seed)
    before, during, after = random_lines(rng, 1500), random_lines(rng, 1500), random_lines(rng, 1500)
    produce(broker, "lines", before)
    res_dir = tmp_path / "res"
    res_dir.mkdir()
    c = start(clusters, tmp_path, "word_count_kafka", workers, word_count_args(broker),
              extra=resilience_flags(res_dir, 200_000_000))
    wait_until(lambda: read_committed(broker.address, "counts"), 30, "some output committed", interval=0.2)
    supervisor = Supervisor(c, tmp_path) if supervise else None
    produce(broker, "lines", during)
    disrupt(c)
    produce(broker, "lines", after)
    problems = wait_for_word_counts(broker, truth_of(before + during + after), c, timeout)
    if supervisor:
        supervisor.close()
        print(f"workers restarted after an error: {supervisor.exits}")
        supervisor.assert_kafka_sink_exits()
    if problems:
        # Were the missing counts ever stored (an aborted transaction),
        # or are they gone from the topic?
        word = problems[0].split(":")[0]
        values = (r.value.decode("utf-8") for r in read_uncommitted(broker.address, "counts"))
        raw = [v for v in values if v.startswith(f"{word} => ")]
        pytest.fail("\n".join(problems[:10]) + f"\nevery record of {word} in the topic, committed or "
                    f"not: {raw}\n" + c.describe() + "\n" + broker.log_text())
    assert all(w.alive() for w in c.workers), c.describe()
    c.shutdown(timeout=30)


def test_word_count_exact_across_a_broker_outage(tmp_path, clusters):
    bin_path = broker_bin()
    if bin_path is None:
        pytest.skip("no Kafka broker binary (see tests/kafka/conftest.py)")
    front = free_port()
    with Broker(bin_path, advertised_port=front) as broker, Proxy(front, broker.port) as proxy:
        def outage(c):
            proxy.cut()
            time.sleep(6)
            brokers_reported_unreachable(c)
            proxy.restore()

        word_count_across(broker, tmp_path, clusters, 2, 11, outage, timeout=90)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_word_count_exact_across_a_broker_restart(request, tmp_path, clusters, sig):
    """The broker itself stopped mid-run (SIGTERM, or SIGKILL) and started
    again with its command, its data in S3 (moto), while input keeps
    coming: the workers wait for it and the committed output is exact.
    tansu does not keep a producer's sequence numbers across a restart,
    so a transactional producer may find its open transaction unusable
    (OutOfOrderSequenceNumber, then no abort: no KIP-360); that worker
    stops with an error naming its Kafka sink, and, restarted with its
    command as a supervisor would, recovers it (a rollback).

    SIGKILL only with `pytest --long`: in about 3 of 20 runs, each under
    load, the committed output lacked consecutive counts of some words,
    records that were nowhere in the topic, while no worker saw a failed
    delivery, a failed commit or a rebuilt transaction: tansu seems to
    acknowledge records that its S3 storage loses in the kill
    (docs/kafka.md)."""
    if sig == signal.SIGKILL and not request.config.getoption("--long"):
        pytest.skip("a reproducer of a suspected broker defect; runs with --long (docs/kafka.md)")
    with s3_broker() as broker:
        word_count_across(broker, tmp_path, clusters, 3, 13, lambda c: restart_broker(broker, c, 3.0, sig),
                          timeout=120, supervise=True)
