"""Stateful alerts end to end: exact per-account outputs on 1, 2 and 3 workers.

Each "own" account is sent from exactly one source connection, so its whole
output sequence is deterministic (per key, per connection, order is kept).
A few "shared" accounts are sent from every connection: their interleaving
varies, so the test checks the final balance and the sequence's structure.
"""

import collections
import random

import pytest

from harness import EXAMPLES, send_lines, wait_until

APP_DIR = EXAMPLES / "alerts_stateful"
LIMIT = 5000
SHARED = ["shared-0", "shared-1"]


def make_transactions(conn, n):
    rng = random.Random(300 + conn)
    own = ["c%d-acct-%d" % (conn, k) for k in range(8)]
    txs = []
    for _ in range(n):
        account = rng.choice(own + SHARED)
        amount = rng.choice([0, rng.randint(-800, 1500)])
        txs.append((account, amount))
    return txs


def expected_outputs(txs):
    """The exact output lines of one account fed `txs` in order."""
    balance, lines = 0, []
    for account, amount in txs:
        if amount == 0:
            continue
        balance += amount
        lines.append("%s balance %d" % (account, balance))
        if balance > LIMIT:
            lines.append("%s ALERT %d > %d" % (account, balance, LIMIT))
    return lines


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_alerts_stateful(workers, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "alerts_stateful", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--limit", str(LIMIT)],
    )
    inputs = [make_transactions(conn, 600) for conn in range(workers)]
    for i, txs in enumerate(inputs):
        send_lines(cluster.in_ports[i], ["%s,%d" % tx for tx in txs], tmp_path)

    per_account = collections.defaultdict(list)
    for txs in inputs:
        for tx in txs:
            per_account[tx[0]].append(tx)
    own_expected = {a: expected_outputs(txs) for a, txs in per_account.items() if a not in SHARED}
    shared_final = {a: sum(amount for _, amount in per_account[a]) for a in SHARED}
    shared_nonzero = {a: sum(1 for _, amount in per_account[a] if amount) for a in SHARED}
    n_balance_lines = sum(1 for txs in inputs for _, amount in txs if amount)
    assert any("ALERT" in l for lines in own_expected.values() for l in lines)

    wait_until_balances(out, n_balance_lines)
    cluster.shutdown()

    seen = collections.defaultdict(list)
    for line in out.lines():
        seen[line.split(" ", 1)[0]].append(line)
    assert set(seen) == set(own_expected) | set(SHARED), cluster.describe()
    for account, lines in own_expected.items():
        assert seen[account] == lines, account
    for account in SHARED:
        lines = seen[account]
        balances = [int(l.split()[-1]) for l in lines if " balance " in l]
        assert len(balances) == shared_nonzero[account]
        assert balances[-1] == shared_final[account]
        # Every non-zero transaction was applied exactly once.
        increments = [b - a for a, b in zip([0] + balances, balances)]
        assert sorted(increments) == sorted(amount for _, amount in per_account[account] if amount)
        # Each balance line is followed by an alert exactly when over the limit.
        assert lines == [l for b in balances for l in expected_after(account, b)]


def expected_after(account, balance):
    lines = ["%s balance %d" % (account, balance)]
    if balance > LIMIT:
        lines.append("%s ALERT %d > %d" % (account, balance, LIMIT))
    return lines


def wait_until_balances(out, n):
    """Waits for n balance lines, then for the output to settle (alerts)."""
    wait_until(lambda: sum(" balance " in l for l in out.lines()) >= n, 30, f"{n} balance lines")
    out.settle(quiet=0.3)
