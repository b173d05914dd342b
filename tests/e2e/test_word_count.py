"""Word count end to end: exact counts on 1, 2 and 3 workers."""

import collections
import random
import string

import pytest

from harness import (EXAMPLES, assert_word_counts, error_lines, external_frame, key_owner, send_lines, state_entities,
                     wait_until)

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


def test_external_channel_shows_where_state_lives_and_refuses_shrink_without_resilience(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "word_count", APP_DIR, 2,
        app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr],
    )
    lines = make_lines(200, seed=5)
    send_lines(cluster.in_ports[0], lines, tmp_path)
    expected = reference_counts(lines)
    out.wait_for_lines(sum(expected.values()), timeout=60)
    # State entities (17 -> 18): each word's state on exactly the worker
    # that owns its key group.
    held = {}
    for i, port in enumerate(cluster.external_ports):
        for stage, keys in state_entities(port).items():
            for k in keys:
                assert k not in held, f"{k!r} held by workers {held[k]} and {i}"
                held[k] = i
    assert set(held) == set(expected), (sorted(held), sorted(expected))
    assert all(i == key_owner(k.encode(), 2) for k, i in held.items()), held
    # A shrink request (4) to another worker than the initializer, or to a
    # cluster without resilience, gets a shrink error (6) saying why, and
    # changes nothing.
    request = b'{"query": false, "node_names": ["worker1"], "node_count": 0}'
    ty, payload = external_frame(cluster.external_ports[1], 4, request)
    assert ty == 6 and b"initializer's external channel" in payload, (ty, payload)
    ty, payload = external_frame(cluster.external_ports[0], 4, request)
    assert ty == 6 and b"needs --run-with-resilience" in payload, (ty, payload)
    more = make_lines(50, seed=6)
    send_lines(cluster.in_ports[1], more, tmp_path)
    expected.update(reference_counts(more))
    out.wait_for_lines(sum(expected.values()), timeout=60)
    cluster.shutdown()
    assert_word_counts({"receiver": out.lines()}, expected, cluster.describe)


def test_a_key_too_long_to_cross_workers_is_reported(make_cluster, make_receiver, tmp_path):
    """A key longer than a data link can carry (64 KiB) is an error in the
    message, named with the stage and the key, not a key silently cut to
    another one; everything else is counted exactly."""
    out = make_receiver()
    cluster = make_cluster(
        "word_count", APP_DIR, 2,
        app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr],
    )
    # A word owned by the other worker, so it must cross the data link.
    n = 0
    while key_owner(f"{'x' * 70_000}{n}".encode(), 2) != 1:
        n += 1
    long_word = f"{'x' * 70_000}{n}"
    lines = make_lines(200, seed=7)
    send_lines(cluster.in_ports[0], lines[:100] + [f"apple {long_word} fig"] + lines[100:], tmp_path)
    expected = reference_counts(lines + ["apple fig"])
    out.wait_for_lines(sum(expected.values()), timeout=60)
    wait_until(lambda: error_lines(cluster.workers[0].stderr()), 10, "the long key's error")
    cluster.shutdown()
    assert_word_counts({"receiver": out.lines()}, expected, cluster.describe)
    errors = error_lines(cluster.workers[0].stderr())
    assert len(errors) == 1, errors
    assert "a key that crosses workers can be at most 65535 bytes" in errors[0], errors
    assert "'xxxxxxxx" in errors[0] and "sending to worker" in errors[0], errors
    assert len(errors[0]) < 1000, "the error quotes the whole key"
