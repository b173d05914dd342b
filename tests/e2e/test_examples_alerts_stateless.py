"""Stateless alerts end to end: the exact set of alerts on 1, 2 and 3 workers.

The app has no key_by, but every worker runs its own source and sink, so the
test spreads the input over all of them and checks the union.
"""

import random
from decimal import Decimal

import pytest

from harness import EXAMPLES, send_lines

APP_DIR = EXAMPLES / "alerts_stateless"
THRESHOLD = Decimal("1000")


def make_transactions(n, seed):
    rng = random.Random(seed)
    lines = ["# a comment, dropped by the decoder", ""]
    for k in range(n):
        account = "acct-%d" % rng.randint(0, 20)
        cents = rng.randint(0, 200000)
        amount = "%d.%02d" % divmod(cents, 100) if k % 3 else str(cents // 100)
        lines.append("%s,%s" % (account, amount))
    # The threshold itself is not an alert; just over it is.
    lines += ["edge,1000", "edge,1000.00", "edge,1000.01"]
    return lines


def expected_alerts(lines):
    alerts = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        account, amount = line.split(",")
        if Decimal(amount) > THRESHOLD:
            alerts.append("ALERT %s %s > %s" % (account, Decimal(amount), THRESHOLD))
    return alerts


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_alerts_stateless(workers, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "alerts_stateless", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--threshold", str(THRESHOLD)],
    )
    inputs = [make_transactions(500, seed=200 + i) for i in range(workers)]
    for i, lines in enumerate(inputs):
        send_lines(cluster.in_ports[i], lines, tmp_path)
    expected = [a for lines in inputs for a in expected_alerts(lines)]
    assert 0 < len(expected) < sum(len(l) for l in inputs)  # both branches taken
    out.wait_for_lines(len(expected), timeout=30)
    out.settle(quiet=0.3)
    cluster.shutdown()
    lines = out.lines()
    # Unkeyed stateless work has no ordering guarantee across workers
    # (docs/wallaroo-compat.md, "Partitioning and order"): compare as
    # multisets.
    assert sorted(lines) == sorted(expected), cluster.describe()
