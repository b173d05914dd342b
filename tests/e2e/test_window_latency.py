"""A range window fires promptly once its input goes quiet.

One transaction per account is sent at once, then nothing. Each account's
window grid is known from outside: its anchor is the first event time minus
the delay minus an offset derived from the key's hash
(docs/wallaroo-compat.md, "Windows"), so the tumbling window holding the
transaction ends at a time the test computes. The window must come out
after that end plus the delay (never early) and within the stated bound
after it (0.11 s, given 2 s of slack here: this checks behaviour, not
speed). Before the idle watermark it came out only after two timer periods
of silence, 4 x (range + delay) = 8 s here.
"""

import time

import pytest

from harness import EXAMPLES, send_lines, tumbling_window_end_ns

APP_DIR = EXAMPLES / "alerts_windowed"
RANGE_NS = 1_000_000_000
DELAY_NS = 1_000_000_000
BOUND_NS = 110_000_000  # IDLE_ALLOWANCE + IDLE_TICK in the executor
SLACK_NS = 2_000_000_000
ACCOUNTS = [f"acct-{k}" for k in range(8)]


def window_end_ns(account, event_time_ns):
    return tumbling_window_end_ns(account.encode(), event_time_ns, RANGE_NS, DELAY_NS)


@pytest.mark.parametrize("workers", [1, 2])
def test_window_fires_within_bound_after_input_stops(workers, make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster(
        "alerts_windowed", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--window-ms", "1000", "--slide-ms", "1000", "--delay-ms", "1000"],
    )
    sent_from = time.time_ns()
    send_lines(cluster.in_ports[0], [f"{a},{k + 1}" for k, a in enumerate(ACCOUNTS)], tmp_path)
    sent_to = time.time_ns()

    # The event time of every transaction lies in [sent_from, sent_to].
    latest_due = max(window_end_ns(a, sent_to) for a in ACCOUNTS) + DELAY_NS
    arrived = {}
    deadline = latest_due + BOUND_NS + SLACK_NS
    while len(arrived) < len(ACCOUNTS) and time.time_ns() < deadline:
        now = time.time_ns()
        for line in out.lines():
            arrived.setdefault(line.split(" ")[0], (line, now))
        time.sleep(0.01)
    lines = out.settle(quiet=0.5)
    cluster.shutdown()

    assert sorted(lines) == sorted(f"{a} 1 {k + 1}" for k, a in enumerate(ACCOUNTS)), cluster.describe()
    for account in ACCOUNTS:
        assert account in arrived, f"{account}'s window not out {(deadline - sent_to) / 1e9:.2f} s after the input"
        _, at = arrived[account]
        earliest = window_end_ns(account, sent_from) + DELAY_NS
        latest = window_end_ns(account, sent_to) + DELAY_NS + BOUND_NS
        assert at >= earliest, f"{account}: fired {(earliest - at) / 1e6:.0f} ms before its end + delay"
        assert at <= latest + SLACK_NS, f"{account}: fired {(at - latest) / 1e6:.0f} ms after the bound"
