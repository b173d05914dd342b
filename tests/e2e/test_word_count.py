"""Word count end to end: exact counts on 1, 2 and 3 workers."""

import collections
import random
import string

import pytest

from harness import EXAMPLES, assert_word_counts, send_lines

APP_DIR = EXAMPLES / "word_count"


def reference_counts(lines):
    punct = string.punctuation + " "
    counts = collections.Counter()
    for line in lines:
        for w in line.lower().split():
            w = w.strip(punct)
            if w:
                counts[w] += 1
    return counts


def make_lines(n, seed):
    rng = random.Random(seed)
    vocab = ["apple", "Banana", "cherry!", "date", "elder,", "fig", "grape", "kiwi", "lemon", "mango"]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(n)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_word_count_exact(workers, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "word_count", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr],
    )
    inputs = [make_lines(300, seed=i) for i in range(workers)]
    for i, lines in enumerate(inputs):
        send_lines(cluster.in_ports[i], lines, tmp_path)
    expected = reference_counts([l for lines in inputs for l in lines])
    out.wait_for_lines(sum(expected.values()), timeout=60)
    cluster.shutdown()
    # Every word's counts are exactly 1..n, in order (one owner per key, per-key order kept).
    assert_word_counts({"receiver": out.lines()}, expected, cluster.describe)
