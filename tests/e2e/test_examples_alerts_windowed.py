"""Windowed alerts end to end, on 1, 2 and 3 workers.

Range windows use ingest time, so which window holds which message depends on
timing. The test checks what does not: after the input stops, the quiet-input
flush fires every window, so for each account the counts over all its windows
add up to (messages for it) x (range / slide), and the same for the totals;
no window is empty and no account appears that was never sent.

Count windows: per account the windows cut its message sequence into
consecutive chunks of at most N (a partial chunk is flushed by the 5 s
timer). For accounts sent from a single connection, each window must be
exactly the next chunk of that account's messages.
"""

import collections
import random
import threading

import pytest

from harness import EXAMPLES, send, wait_until

APP_DIR = EXAMPLES / "alerts_windowed"
SHARED = ["shared-0", "shared-1"]


def make_transactions(conn, n):
    rng = random.Random(400 + conn)
    own = ["c%d-acct-%d" % (conn, k) for k in range(5)]
    return [(rng.choice(own + SHARED), rng.randint(-100, 1000)) for _ in range(n)]


def send_all(cluster, inputs, tmp_path, rate=None, warm_up=False):
    """Sends each connection's transactions to its worker, all at once.

    With `warm_up`, each connection first sends, on its own and one worker
    after the other, its first transaction for every account it uses. Then
    every worker has been heard by the window stages that will get its
    transactions (a live upstream, whose watermark counts: see
    docs/wallaroo-compat.md, "Windows") before
    the concurrent bulk arrives, so no transaction can be legitimately late.
    """
    if warm_up:
        bulk = []
        for i, txs in enumerate(inputs):
            first = {}
            for k, tx in enumerate(txs):
                first.setdefault(tx[0], k)
            path = tmp_path / f"warm-up-{i}.txt"
            path.write_text("".join("%s,%d\n" % txs[k] for k in sorted(first.values())))
            send(cluster.in_ports[i], path)
            bulk.append([tx for k, tx in enumerate(txs) if k not in set(first.values())])
        inputs = bulk
    paths = []
    for i, txs in enumerate(inputs):
        path = tmp_path / f"transactions-{i}.txt"
        path.write_text("".join("%s,%d\n" % tx for tx in txs))
        paths.append(path)
    extra = ("--rate", str(rate)) if rate else ()
    errors = []

    def run(i):
        try:
            send(cluster.in_ports[i], paths[i], extra=extra)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def parse(lines):
    windows = collections.defaultdict(list)
    for line in lines:
        account, count, total = line.split(" ")
        windows[account].append((int(count), int(total)))
    return windows


def assert_consecutive_chunks(account, ws, amounts):
    """Each window is the next chunk of the account's messages, in order."""
    rest = list(amounts)
    for count, total in ws:
        chunk, rest = rest[:count], rest[count:]
        assert total == sum(chunk), (account, ws)
    assert not rest, (account, ws)


def by_account(inputs):
    seen = collections.defaultdict(list)
    for txs in inputs:
        for account, amount in txs:
            seen[account].append(amount)
    return seen


@pytest.mark.parametrize("workers,range_ms,slide_ms,delay_ms", [
    (1, 400, 200, 0), (2, 400, 200, 0), (3, 400, 200, 0),
    (2, 600, 200, 0),
    (1, 300, 300, 100),  # tumbling, with a delay (rounded up to the slide)
])
def test_range_windows_sums(workers, range_ms, slide_ms, delay_ms, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "alerts_windowed", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--window-ms", str(range_ms), "--slide-ms", str(slide_ms),
                               "--delay-ms", str(delay_ms)],
    )
    factor = range_ms // slide_ms
    inputs = [make_transactions(conn, 300) for conn in range(workers)]
    # ~0.5 s of input per connection: several windows per account hold data.
    send_all(cluster, inputs, tmp_path, rate=600, warm_up=True)
    amounts = by_account(inputs)
    expected_count = {a: len(v) * factor for a, v in amounts.items()}
    expected_total = {a: sum(v) * factor for a, v in amounts.items()}

    def done():
        counts = {a: sum(c for c, _ in w) for a, w in parse(out.lines()).items()}
        return counts == expected_count

    try:
        wait_until(done, 12, "every window to be flushed")
    except AssertionError:
        raise AssertionError(f"{parse(out.lines())}\nexpected counts {expected_count}\n{cluster.describe()}")
    # Nothing more may come (no window fires twice).
    lines = out.settle(quiet=0.8)
    cluster.shutdown()

    windows = parse(lines)
    assert set(windows) == set(amounts)
    assert {a: sum(c for c, _ in w) for a, w in windows.items()} == expected_count
    assert {a: sum(t for _, t in w) for a, w in windows.items()} == expected_total
    for account, ws in windows.items():
        # Empty windows output None: every line covers at least one message,
        # and no window holds more than the account's messages.
        assert all(1 <= c <= len(amounts[account]) for c, _ in ws), (account, ws)
        # Sliding windows overlap: at least `factor` windows per account.
        assert len(ws) >= factor
        if factor == 1 and account not in SHARED:
            # Tumbling windows over one connection's in-order messages.
            assert_consecutive_chunks(account, ws, amounts[account])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_count_windows(workers, make_cluster, make_receiver, tmp_path):
    n = 7
    out = make_receiver()
    cluster = make_cluster(
        "alerts_windowed", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--count-windows", str(n)],
    )
    inputs = [make_transactions(conn, 200) for conn in range(workers)]
    send_all(cluster, inputs, tmp_path)
    amounts = by_account(inputs)
    # Some accounts end with a partial window, which only the timer flushes.
    assert any(len(v) % n for v in amounts.values())

    def done():
        counts = {a: sum(c for c, _ in w) for a, w in parse(out.lines()).items()}
        return counts == {a: len(v) for a, v in amounts.items()}

    try:
        wait_until(done, 12, "every count window, partial ones included")
    except AssertionError:
        raise AssertionError(f"{parse(out.lines())}\n{cluster.describe()}")
    lines = out.settle(quiet=0.5)
    cluster.shutdown()

    windows = parse(lines)
    assert set(windows) == set(amounts)
    for account, ws in windows.items():
        assert sum(c for c, _ in ws) == len(amounts[account])
        assert sum(t for _, t in ws) == sum(amounts[account])
        assert all(1 <= c <= n for c, _ in ws), (account, ws)
        if account not in SHARED:
            # One connection, so one order: each window is the next chunk.
            assert_consecutive_chunks(account, ws, amounts[account])
