"""Growing and shrinking a cluster that reads Kafka, against a real broker
(tansu on 127.0.0.1, one per test).

Wallaroo's Kafka word count (examples/kafka/word_count_kafka.py,
unmodified) reads a 4-partition topic and writes its counts to a
3-partition topic through the exactly-once sink, with resilience, while
input keeps coming. The initializer starts alone and reads all four
partitions; worker1 joins (`--join`), and the partitions are shared again
(the members not leaving, in name order, read them round-robin): each
moves with its checkpointed offset, handed over with the state, so
worker1 starts partitions 1 and 3 where the initializer stopped. Then
worker1 is shrunk away (`quoll shrink`) and exits 0, handing its
partitions back. The committed output must hold every (word, count)
exactly once: a partition read again from its start, or left unread,
would double or lose counts. The same with worker1 SIGKILLed at a random
moment of its join, or of its leave, and restarted with its command.
Counts out of order fail the test too: a leaver killed before its sink
committed the shrink's first checkpoint sends that output again when it
restarts, and the keys' new owner must not have produced their next
counts before (docs/kafka.md).
"""

import random
import re
import signal
import threading
import time

import pytest

from committed_reader import read_committed
from harness import wait_until
from test_grow import Growing, shrink
from test_resilience_faults import fault_seed
from test_worker_kafka import (KAFKA_EXAMPLES, explain_word_count_problems, produce, random_lines, truth_of,
                               wait_for_word_counts, word_count_args)

PARTITIONS = re.compile(r"reading partitions \[(.*?)\]")


def partitions_read(log):
    """The partitions in a worker's last 'reading partitions' line."""
    found = PARTITIONS.findall(log)
    return sorted(int(p) for p in re.findall(r"\((\d+), -?\d+\)", found[-1])) if found else None


def kill_and_restart_soon(c, rng):
    """SIGKILLs worker1 0-0.3 s from now and starts it again with its
    command."""
    time.sleep(rng.choice([0, rng.uniform(0, 0.03), rng.uniform(0.03, 0.3)]))
    c.procs[1].signal(signal.SIGKILL)
    c.procs[1].wait(10)
    c.launch(1)


@pytest.mark.parametrize("kill", [None, "joiner", "leaver"])
def test_word_count_grows_and_shrinks_while_kafka_partitions_move(broker, tmp_path, kill):
    seed = fault_seed()
    rng = random.Random(seed)
    broker.create_topic("lines", 4)
    broker.create_topic("counts", 3)
    c = Growing(tmp_path, ["initializer", "worker1"], lines=1, line_delay=0, module="word_count_kafka",
                paths=(KAFKA_EXAMPLES,), fed=[])
    c.app = word_count_args(broker)(c, 0)
    lines = random_lines(rng, 6000)
    sent = [0]
    feeder_error = []

    def feed():
        try:
            for i in range(0, len(lines), 50):
                produce(broker, "lines", lines[i:i + 50])
                sent[0] = i + 50
                time.sleep(0.1)
        except Exception as e:  # noqa: BLE001 (reported by the test)
            feeder_error.append(e)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        c.launch(0)
        c.wait_members(1, timeout=60)
        assert partitions_read(c.procs[0].stdout() + c.procs[0].stderr()) == [0, 1, 2, 3], c.describe()
        feeder.start()
        wait_until(lambda: read_committed(broker.address, "counts"), 30, "committed output before the join")
        c.launch(1)
        if kill == "joiner":
            wait_until(lambda: "joins the cluster" in c.procs[0].stdout(), 20, "the join")
            kill_and_restart_soon(c, rng)
        c.wait_members(2, timeout=60)
        logs = [p.stdout() + p.stderr() for p in (c.procs[0], c.procs[1])]
        assert [partitions_read(log) for log in logs] == [[0, 2], [1, 3]], c.describe()
        wait_until(lambda: sent[0] >= len(lines) * 2 // 3, 30, "two thirds of the input")
        done = shrink(c, "--names", "worker1")
        assert done.returncode == 0, done
        if kill == "leaver":
            kill_and_restart_soon(c, rng)
        assert c.procs[1].wait(60) == 0, c.describe()
        c.wait_members(1, timeout=60)
        assert partitions_read(c.procs[0].stdout() + c.procs[0].stderr()) == [0, 1, 2, 3], c.describe()
        feeder.join(60)
        assert not feeder_error, feeder_error
        problems = wait_for_word_counts(broker, truth_of(lines), c, 90)
        assert not problems, explain_word_count_problems(broker, problems, seed, c)
    finally:
        c.stop()
