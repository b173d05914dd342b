#!/usr/bin/env python3
"""Kafka benchmark: Kafka in -> word count -> Kafka out.

examples/kafka/word_count_kafka.py, unmodified, on real machida3 workers
against a tansu broker on 127.0.0.1 (tests/kafka/broker.py, memory
storage): 1 and 2 workers, each without resilience (at-least-once,
idempotent producer) and with it (exactly-once, a checkpoint every 1 s).
Every run gets fresh 4-partition topics with the same input, written
before the workers start; the clock runs from starting the workers to the
moment the committed output (tests/kafka/committed_reader.py) holds every
count. The output is polled every 0.5 s and each poll reads the whole
topic, so a figure is accurate to about a second: read it as a ratio
between configurations of one run, not as an absolute rate.

Prints one line per run and a JSON summary (with the load average, since
the machine may be shared).

    python benches/kafka/run.py [--lines N] [--repeats R]
"""

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests" / "kafka"), str(REPO / "tests" / "e2e")]

from broker import Broker, broker_bin  # noqa: E402
from committed_reader import read_committed  # noqa: E402
from harness import EXAMPLES, Cluster  # noqa: E402

WORDS = [f"word{i}" for i in range(2000)]


def make_lines(n):
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


def produce(broker, topic, lines):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.address, "linger.ms": 20})
    for line in lines:
        p.produce(topic, line.encode())
        p.poll(0)
    if p.flush(60):
        raise RuntimeError(f"input to {topic} not delivered")


def one_run(broker, workdir, lines, words, workers, resilient, tag):
    src, out = f"lines-{tag}", f"counts-{tag}"
    broker.create_topic(src, 4)
    broker.create_topic(out, 4)
    produce(broker, src, lines)
    flags = []
    if resilient:
        res = Path(workdir) / f"res-{tag}"
        res.mkdir()
        flags = ["--run-with-resilience", "--resilience-dir", str(res),
                 "--time-between-checkpoints", "1000000000"]
    args = ["--lines_topic", src, "--lines_brokers", broker.address,
            "--counts_topic", out, "--counts_brokers", broker.address]
    c = Cluster(workdir, "word_count_kafka", EXAMPLES / "kafka", workers, lambda c, i: args, extra_flags=flags)
    t0 = time.monotonic()
    try:
        c.start(timeout=60)
        deadline = t0 + 600
        while time.monotonic() < deadline:
            if len(read_committed(broker.address, out)) >= words:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"run {tag}: output incomplete after 600 s\n{c.describe()}")
        elapsed = time.monotonic() - t0
        c.shutdown(timeout=30)
    finally:
        c.stop()
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=1)
    opts = ap.parse_args()
    bin_path = os.environ.get("QUOLL_KAFKA_BROKER") or broker_bin()
    if not bin_path:
        sys.exit("no Kafka broker binary: run scripts/kafka-broker.sh or set QUOLL_KAFKA_BROKER")
    lines = make_lines(opts.lines)
    words = sum(len(line.split()) for line in lines)
    results = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="quoll-kafka-bench-") as workdir, Broker(bin_path) as broker:
        n = 0
        for _ in range(opts.repeats):
            for workers in (1, 2):
                for resilient in (False, True):
                    n += 1
                    s = one_run(broker, workdir, lines, words, workers, resilient, str(n))
                    key = f"{workers} worker(s), {'exactly-once' if resilient else 'at-least-once'}"
                    results[key].append(s)
                    print(f"{key}: {s:.1f} s, {words / s:,.0f} words/s", flush=True)
    summary = {
        "lines": opts.lines,
        "words": words,
        "load_average": os.getloadavg(),
        "best_seconds": {k: min(v) for k, v in results.items()},
        "words_per_second": {k: round(words / min(v)) for k, v in results.items()},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
