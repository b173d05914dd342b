"""Alphabet votes end to end: exact per-letter totals on 1, 2 and 3 workers."""

import collections
import random
import string
import struct

import pytest

from harness import EXAMPLES, send

APP_DIR = EXAMPLES / "alphabet"


TAG = 4  # vote counts sent by connection i are = i (mod TAG)


def make_votes(n, conn):
    """n votes for connection `conn`; every count is > 0 and = conn (mod TAG),
    so each increment in the output tells which connection it came from."""
    rng = random.Random(100 + conn)
    letters = string.ascii_lowercase
    return [(rng.choice(letters), rng.randint(1, 1000) * TAG + conn) for _ in range(n)]


def write_frames(path, votes):
    """Framed messages, ready for `quoll send --framing raw-framed`."""
    payloads = [struct.pack(">cI", letter.encode("ascii"), count) for letter, count in votes]
    path.write_bytes(b"".join(struct.pack(">I", len(p)) + p for p in payloads))
    return path


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_alphabet_totals(workers, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "alphabet", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"votes@127.0.0.1:{c.in_ports[i]}", "--out", out.addr],
    )
    inputs = [make_votes(400, conn=i) for i in range(workers)]
    # A vote count near the maximum u32 checks the unsigned decoding.
    inputs[0].append(("z", 2**32 - TAG))
    for i, votes in enumerate(inputs):
        send(cluster.in_ports[i], write_frames(tmp_path / f"votes-{i}.bin", votes), framing="raw-framed")

    n_messages = sum(len(v) for v in inputs)
    out.wait_for_lines(n_messages, timeout=30)
    cluster.shutdown()
    lines = out.lines()
    assert len(lines) == n_messages, cluster.describe()

    expected_totals = collections.Counter()
    expected_counts = collections.Counter()
    for votes in inputs:
        for letter, count in votes:
            expected_totals[letter] += count
            expected_counts[letter] += 1

    seen = collections.defaultdict(list)
    for line in lines:
        letter, total = line.split(" => ")
        seen[letter].append(int(total))

    assert set(seen) == set(expected_totals)
    # Final (last) total per letter is exact, one output per vote.
    assert {l: t[-1] for l, t in seen.items()} == dict(expected_totals)
    assert {l: len(t) for l, t in seen.items()} == dict(expected_counts)
    for letter, totals in seen.items():
        # A running sum of positive votes: strictly increasing.
        assert all(a < b for a, b in zip(totals, totals[1:])), (letter, totals)
        # Each step adds exactly one vote; per source connection, the votes
        # for a letter are applied in the order they were sent.
        increments = [b - a for a, b in zip([0] + totals, totals)]
        for conn, votes in enumerate(inputs):
            sent = [c for l, c in votes if l == letter]
            applied = [d for d in increments if d % TAG == conn]
            assert applied == sent, (letter, conn)
