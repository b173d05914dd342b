"""Tests of `quoll.testing`: every app in examples/ run in-process, with the
outputs the end-to-end tests (tests/e2e/test_examples_*.py,
test_word_count.py, test_codec_cluster.py) expect from the engine; the
window state machines on the engine's own unit-test scenarios; and the
API's semantics (keys, None, *_multi, generator sources, codec checks).
"""

import collections
import random
import string
import struct
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from quoll._testing_windows import Aggregation, CountWindows, RangeSpec, RangeWindows, stable_hash
from quoll.testing import AppError, At, run

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
E2E_APPS = REPO / "tests" / "e2e" / "apps"
TCP = ["--in", "input@127.0.0.1:7010", "--out", "127.0.0.1:7002"]


def app(name):
    return EXAMPLES / name / f"{name}.py"


# --------------------------------------------------------------------------
# The examples, with the expectations of their end-to-end tests
# --------------------------------------------------------------------------


def test_word_count():
    # tests/e2e/test_word_count.py's input and reference count.
    rng = random.Random(0)
    vocab = ["apple", "Banana", "cherry!", "date", "elder,", "fig", "grape", "kiwi", "lemon", "mango"]
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    punct = string.punctuation + " "
    counts = collections.Counter()
    expected = []
    for line in lines:
        for w in line.lower().split():
            w = w.strip(punct)
            if w:
                counts[w] += 1
                expected.append(f"{w} => {counts[w]}")
    for codec in (False, True):
        result = run(app("word_count"), lines, args=TCP, codec=codec, checkpoint_every=7 if codec else None)
        # One process: the exact sequence, not only 1..n per word.
        assert result.lines() == expected
        assert {w: s.count for w, s in result.states["count word"].items()} == dict(counts)


def test_alphabet():
    rng = random.Random(100)
    votes = [(rng.choice(string.ascii_lowercase), rng.randint(1, 1000) * 4) for _ in range(400)]
    votes.append(("z", 2**32 - 4))  # the unsigned decoding
    frames = [struct.pack(">cI", letter.encode("ascii"), count) for letter, count in votes]
    totals = collections.Counter()
    expected = []
    for letter, count in votes:
        totals[letter] += count
        expected.append(f"{letter} => {totals[letter]}")
    result = run(app("alphabet"), frames, args=TCP, codec=True)
    assert result.lines() == expected
    assert {k: s.total for k, s in result.states["add votes"].items()} == dict(totals)


def test_alerts_stateless():
    # tests/e2e/test_examples_alerts_stateless.py's input and expectation.
    rng = random.Random(200)
    lines = ["# a comment, dropped by the decoder", ""]
    for k in range(500):
        cents = rng.randint(0, 200000)
        amount = "%d.%02d" % divmod(cents, 100) if k % 3 else str(cents // 100)
        lines.append("acct-%d,%s" % (rng.randint(0, 20), amount))
    lines += ["edge,1000", "edge,1000.00", "edge,1000.01"]
    expected = []
    for line in lines:
        if line and not line.startswith("#"):
            account, amount = line.split(",")
            if Decimal(amount) > 1000:
                expected.append("ALERT %s %s > 1000" % (account, Decimal(amount)))
    result = run(app("alerts_stateless"), lines, args=TCP + ["--threshold", "1000"])
    assert 0 < len(expected) < len(lines)
    assert result.lines() == expected
    assert result.states == {}


def test_alerts_stateful():
    limit = 5000
    rng = random.Random(300)
    txs = [(rng.choice(["acct-%d" % k for k in range(8)]), rng.choice([0, rng.randint(-800, 1500)]))
           for _ in range(600)]
    balances = collections.Counter()
    expected = []
    for account, amount in txs:
        if amount == 0:
            continue
        balances[account] += amount
        expected.append("%s balance %d" % (account, balances[account]))
        if balances[account] > limit:
            expected.append("%s ALERT %d > %d" % (account, balances[account], limit))
    assert any("ALERT" in line for line in expected)
    result = run(app("alerts_stateful"), ["%s,%d" % tx for tx in txs],
                 args=TCP + ["--limit", str(limit)], codec=True, checkpoint_every=1)
    assert result.lines() == expected


def window_lines(result):
    windows = collections.defaultdict(list)
    for line in result.lines():
        account, count, total = line.split(" ")
        windows[account].append((int(count), int(total)))
    return windows


@pytest.mark.parametrize("range_ms,slide_ms,delay_ms", [(400, 200, 0), (600, 200, 0), (300, 300, 100)])
def test_alerts_windowed_range(range_ms, slide_ms, delay_ms):
    # tests/e2e/test_examples_alerts_windowed.py's checks: after the flush,
    # per account the counts add up to messages x range/slide, and the
    # totals likewise; no empty window is output.
    rng = random.Random(400)
    accounts = ["acct-%d" % k for k in range(5)]
    txs = [(rng.choice(accounts), rng.randint(-100, 1000)) for _ in range(300)]
    args = TCP + ["--window-ms", str(range_ms), "--slide-ms", str(slide_ms), "--delay-ms", str(delay_ms)]
    # ~600 messages a second, as the e2e test sends them.
    result = run(app("alerts_windowed"), ["%s,%d" % tx for tx in txs], args=args,
                 interval_ns=1_666_667, codec=True, checkpoint_every=10)
    factor = range_ms // slide_ms
    amounts = collections.defaultdict(list)
    for account, amount in txs:
        amounts[account].append(amount)
    windows = window_lines(result)
    assert set(windows) == set(amounts)
    for account, ws in windows.items():
        assert sum(c for c, _ in ws) == len(amounts[account]) * factor
        assert sum(t for _, t in ws) == sum(amounts[account]) * factor
        assert all(1 <= c <= len(amounts[account]) for c, _ in ws)
        assert len(ws) >= factor
        if factor == 1:
            rest = list(amounts[account])
            for count, total in ws:
                chunk, rest = rest[:count], rest[count:]
                assert total == sum(chunk)
            assert not rest


def brute_force_windows(events, range_ns, slide_ns, delay_ns, key):
    """(count, total) of each window with data, oldest first, from the
    windows' definition: [A + w*S, A + w*S + R), A = first event time -
    delay - the key's offset (a window stage's first watermark is its first
    event time, with in-order input)."""
    delay = -(-delay_ns // slide_ns) * slide_ns
    offset = (stable_hash(key.encode()) * (range_ns * 4 // 5)) >> 64
    anchor = events[0][0] - delay - offset
    out = []
    w = -range_ns // slide_ns + 1  # the first window holding the anchor
    while anchor + w * slide_ns <= events[-1][0]:
        start = anchor + w * slide_ns
        inside = [v for t, v in events if start <= t < start + range_ns]
        if inside:
            out.append((len(inside), sum(inside)))
        w += 1
    return out


def test_alerts_windowed_exact_windows_with_event_times():
    rng = random.Random(7)
    t = 10**12
    items, per_key = [], collections.defaultdict(list)
    for _ in range(200):
        t += rng.choice([0, 1, 50, 300, 2000]) * 1_000_000
        account, amount = rng.choice(["a", "b", "c"]), rng.randint(1, 100)
        items.append(At(t, f"{account},{amount}"))
        per_key[account].append((t, amount))
    args = TCP + ["--window-ms", "1000", "--slide-ms", "250"]
    windows = window_lines(run(app("alerts_windowed"), items, args=args))
    for account, events in per_key.items():
        assert windows[account] == brute_force_windows(events, 10**9, 250 * 10**6, 0, account), account


def test_alerts_windowed_count():
    n = 7
    rng = random.Random(401)
    txs = [(rng.choice(["acct-%d" % k for k in range(5)]), rng.randint(-100, 1000)) for _ in range(200)]
    result = run(app("alerts_windowed"), ["%s,%d" % tx for tx in txs],
                 args=TCP + ["--count-windows", str(n)], codec=True)
    amounts = collections.defaultdict(list)
    for account, amount in txs:
        amounts[account].append(amount)
    assert any(len(v) % n for v in amounts.values())
    windows = window_lines(result)
    for account, ws in windows.items():
        chunks = [amounts[account][i:i + n] for i in range(0, len(amounts[account]), n)]
        # Whole windows of n as they fill, the partial one at the end flush.
        assert ws == [(len(c), sum(c)) for c in chunks], account
    assert set(windows) == set(amounts)


def test_merge_sources():
    rng = random.Random(500)
    sensors = ["sensor-%d" % k for k in range(12)]
    inputs = []
    for k in range(300):
        inputs.append(("celsius readings", "%s,%s" % (rng.choice(sensors), round(rng.uniform(-20, 40), 2))))
        inputs.append(("fahrenheit readings", "%s,%s" % (rng.choice(sensors), round(rng.uniform(-4, 104), 2))))
    state = {}
    expected = []
    for source, line in inputs:
        sensor, value = line.split(",")
        c = float(value) if source.startswith("celsius") else (float(value) - 32) * 5 / 9
        n, mx = state.get(sensor, (0, None))
        mx = c if mx is None or c > mx else mx
        state[sensor] = (n + 1, mx)
        expected.append("%s readings=%d max=%r" % (sensor, n + 1, mx))
    args = ["--in", "celsius@127.0.0.1:7010,fahrenheit@127.0.0.1:7011", "--out", "127.0.0.1:7002,127.0.0.1:7003"]
    result = run(app("merge_sources"), inputs, args=args, codec=True)
    # to_sinks: both sinks get every line, in the same order.
    assert result.lines(0) == expected
    assert result.lines(1) == expected


def test_custom_codec(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "custom_codec"))
    lines = ["s%d,%d" % (k % 5, k) for k in range(50)]
    totals = collections.defaultdict(lambda: [0, 0])
    expected = []
    for line in lines:
        sensor, value = line.split(",")
        totals[sensor][0] += 1
        totals[sensor][1] += int(value)
        expected.append("%s %d %d" % (sensor, *totals[sensor]))
    result = run(app("custom_codec"), lines, args=TCP, codec=True, checkpoint_every=3)
    assert result.lines() == expected
    # Without the pair, the default codec (pickle) meets the lock: the run
    # fails where a cluster would, naming the stage and the type.
    with pytest.raises(AppError, match=r"total per sensor.*serialize\(\) failed on a message .* Reading"):
        run(E2E_APPS / "codec_only_serialize.py", lines, args=TCP, codec=True)
    # Without codec=True nothing is encoded, as on one worker.
    assert run(E2E_APPS / "codec_only_serialize.py", lines, args=TCP).lines() == expected
    with pytest.raises(AppError, match=r"serialize\(\) returned str .*it must return bytes"):
        run(E2E_APPS / "codec_str.py", lines, args=TCP, codec=True)


# --------------------------------------------------------------------------
# The window state machines, on the engine's unit-test scenarios
# --------------------------------------------------------------------------


def sum_agg():
    """Accumulators are lists; outputs (sum, count)."""
    return Aggregation(initial_accumulator=list, update=lambda v, acc: acc.append(v),
                       combine=lambda a, b: a + b, output=lambda key, acc: (sum(acc), len(acc)))


def summary(fired):
    return [(s, c, t) for (s, c), t in fired]


def send(w, agg, msgs):
    out = []
    for t, v in msgs:
        out += w.on_message(agg, "k", v, t, t)
    return summary(out)


def test_windows_tumbling():
    agg = sum_agg()
    w = RangeWindows(RangeSpec.of(10, 10, 0, "drop"), 100, 0)
    assert send(w, agg, [(100, 1), (105, 2), (109, 3)]) == []
    assert send(w, agg, [(110, 4)]) == [(6, 3, 109)]
    assert send(w, agg, [(125, 5)]) == [(4, 1, 119)]
    assert w.on_timer(agg, "k", 129) == []
    assert summary(w.flush(agg, "k")) == [(5, 1, 129)]
    assert not w.panes


def test_windows_offset_sliding_and_uneven():
    agg = sum_agg()
    w = RangeWindows(RangeSpec.of(10, 10, 0, "drop"), 100, 7)
    assert send(w, agg, [(100, 1), (102, 2), (103, 4)]) == [(3, 2, 102)]
    w = RangeWindows(RangeSpec.of(30, 10, 0, "drop"), 100, 0)
    assert send(w, agg, [(100, 1), (125, 2)]) == [(1, 1, 109), (1, 1, 119)]
    assert summary(w.flush(agg, "k")) == [(3, 2, 129), (2, 1, 139), (2, 1, 149)]
    w = RangeWindows(RangeSpec.of(5, 2, 0, "drop"), 0, 0)
    out = send(w, agg, [(0, 1), (3, 10), (4, 100)]) + summary(w.flush(agg, "k"))
    assert out == [(1, 1, 0), (1, 1, 2), (111, 3, 4), (110, 2, 6), (100, 1, 8)]


def test_windows_delay():
    agg = sum_agg()
    spec = RangeSpec.of(10, 10, 15, "drop")
    assert spec.delay == 20
    w = RangeWindows(spec, 100, 0)
    assert send(w, agg, [(100, 1)]) == []
    assert send(w, agg, [(129, 2)]) == [(0, 0, 89), (0, 0, 99)]
    assert send(w, agg, [(130, 4)]) == [(1, 1, 109)]
    assert summary(w.on_message(agg, "k", 8, 111, 131)) == []
    assert summary(w.on_timer(agg, "k", 140)) == [(8, 1, 119)]
    assert summary(w.flush(agg, "k")) == [(2, 1, 129), (4, 1, 139)]


@pytest.mark.parametrize("policy,now,later", [
    ("drop", [], [(2, 1, 119)]),
    ("fire-per-message", [(40, 1, 105)], [(2, 1, 119)]),
    ("place-in-oldest-window", [], [(42, 2, 119)]),
])
def test_windows_late_data(policy, now, later):
    agg = sum_agg()
    w = RangeWindows(RangeSpec.of(10, 10, 0, policy), 100, 0)
    assert send(w, agg, [(100, 1), (110, 2)]) == [(1, 1, 109)]
    assert summary(w.on_message(agg, "k", 40, 105, 111)) == now
    assert summary(w.flush(agg, "k")) == later


def test_windows_placed_late_data_is_flushed_and_far_messages_kept():
    agg = sum_agg()
    w = RangeWindows(RangeSpec.of(1, 1, 0, "place-in-oldest-window"), 64, 0)
    assert summary(w.on_message(agg, "k", 1, 64, 65)) == [(1, 1, 64)]
    assert summary(w.on_message(agg, "k", 2, 0, 65)) == []
    assert summary(w.flush(agg, "k")) == [(2, 1, 65)]
    w = RangeWindows(RangeSpec.of(10, 5, 0, "drop"), 100, 0)
    for i, t in enumerate([1_000_000, 100, 5_000, 1_000_003]):
        assert w.on_message(agg, "k", i + 1, t, 101) == []
    with_data = [o for o in summary(w.flush(agg, "k")) if o[1] > 0]
    assert with_data == [(2, 1, 104), (2, 1, 109), (3, 1, 5_004), (3, 1, 5_009),
                         (5, 2, 1_000_004), (5, 2, 1_000_009)]


def test_windows_empty_runs_are_bounded():
    # max_empty_run = ceil(range/slide) + delay/slide = 1 here: one empty
    # window after a window with data, then the run is skipped.
    agg = sum_agg()
    w = RangeWindows(RangeSpec.of(10, 10, 0, "drop"), 100, 0)
    assert send(w, agg, [(100, 1), (145, 2)]) == [(1, 1, 109), (0, 0, 119)]
    assert summary(w.flush(agg, "k")) == [(2, 1, 149)]


def test_count_windows():
    agg = sum_agg()
    c = CountWindows(3)
    out = []
    for t, v in enumerate([1, 2, 3, 4, 5]):
        out += c.on_message(agg, "k", v, t)
    assert summary(out) == [(6, 3, 2)]
    assert summary(c.flush_partial(agg, "k")) == [(9, 2, 4)]
    assert c.flush_partial(agg, "k") == []


def test_stable_hash_matches_the_engine():
    # Values from quoll-core's FNV-1a + fmix64 (see tests/e2e/harness.py's
    # independent copy, checked there against the engine's routing).
    import sys
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    try:
        from harness import stable_hash as harness_hash
    finally:
        sys.path.pop(0)
    for key in [b"", b"a", b"tcp-source-key", "\u00e9t\u00e9".encode(), bytes(range(256))]:
        assert stable_hash(key) == harness_hash(key)


# --------------------------------------------------------------------------
# Semantics of the API
# --------------------------------------------------------------------------


@pytest.fixture
def write_app(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name, body):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(body))
        return path

    return write


def test_keys_none_multi_collect_and_generators(write_app):
    path = write_app("semantics_app", '''
        import wallaroo

        def application_setup(args):
            gen = wallaroo.source("numbers", wallaroo.GenSourceConfig("counter", Counter()))
            pipeline = (gen
                        .to(fan_out)
                        .key_by(parity)
                        .to(count)
                        .collect()
                        .to(seen)
                        .to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "7002", encode)))
            return wallaroo.build_application("Semantics", pipeline)

        class Counter(object):
            def initial_value(self):
                return 0
            def apply(self, v):
                return None if v >= 5 else v + 1

        class Seen(object):
            def __init__(self):
                self.keys = []

        @wallaroo.computation_multi(name="fan out")
        def fan_out(n):
            return None if n == 0 else [n, None, n * 10]

        @wallaroo.key_extractor
        def parity(n):
            return 48 + n % 2   # an int key: chr(48) == "0"

        @wallaroo.state_computation(name="count", state=Seen)
        def count(n, state):
            state.keys.append(n)
            return n if n != 30 else None

        @wallaroo.state_computation(name="seen", state=Seen)
        def seen(n, state):
            state.keys.append(n)
            return (n, len(state.keys))

        @wallaroo.encoder
        def encode(item):
            return "%d %d\\n" % item
        ''')
    result = run(path, 100)
    # The generator stops after 5 (apply returned None); 0 fans out to None;
    # 30 is dropped by the state computation returning None.
    assert result.lines() == ["1 1", "10 2", "2 3", "20 4", "3 5", "4 6", "40 7", "5 8", "50 9"]
    assert sorted(result.states["count"]) == ["0", "1"]
    assert result.states["count"]["1"].keys == [1, 3, 5]
    assert list(result.states["seen"]) == ["collect-key-3"]
    assert [o.key for o in result.outputs] == ["collect-key-3"] * 9
    assert run(path, 3).lines() == ["1 1", "10 2", "2 3", "20 4"]


def test_user_errors_raise_or_skip(write_app):
    path = write_app("errors_app", '''
        import wallaroo

        def application_setup(args):
            src = wallaroo.source("in", wallaroo.TCPSourceConfig("in", "127.0.0.1", "7010", decode))
            return wallaroo.build_application("Errors", src.to(invert).to(pairs).to_sink(
                wallaroo.TCPSinkConfig("127.0.0.1", "7002", encode)))

        @wallaroo.decoder(header_length=4, length_fmt=">I")
        def decode(bs):
            return int(bs)

        @wallaroo.computation(name="invert")
        def invert(n):
            return 1 / n

        @wallaroo.computation_multi(name="pairs")
        def pairs(x):
            return (x, x) if x < 0 else [x]

        @wallaroo.encoder
        def encode(x):
            return "%.2f\\n" % x
        ''')
    with pytest.raises(AppError, match=r"stage 0 \('invert'\).*ZeroDivisionError"):
        run(path, ["1", "0", "2"])
    with pytest.raises(AppError, match="compute_multi must return a list"):
        run(path, ["-1"])
    result = run(path, ["4", "0", "-2", "x", "2"], on_user_error="skip")
    assert result.lines() == ["0.25", "0.50"]
    assert [e.place for e in result.errors] == [
        "stage 0 ('invert') of pipeline 'in'", "stage 1 ('pairs') of pipeline 'in'",
        "source of pipeline 'in' (tcp source 'in' at 127.0.0.1:7010)"]


def test_unknown_source_and_multi_source_inputs_are_explained():
    args = ["--in", "celsius@127.0.0.1:7010,fahrenheit@127.0.0.1:7011", "--out", "127.0.0.1:7002"]
    with pytest.raises(ValueError, match="has 2 sources"):
        run(app("merge_sources"), ["s,1"], args=args)
    with pytest.raises(KeyError, match="no source 'kelvin'.*'celsius readings'"):
        run(app("merge_sources"), {"kelvin": ["s,1"]}, args=args)
    result = run(app("merge_sources"), {"fahrenheit": ["s,212"], 0: ["s,20"]}, args=args)
    assert result.lines() == ["s readings=1 max=100.0", "s readings=2 max=100.0"]


def test_the_documented_example_runs(monkeypatch):
    """docs/testing-apps.md's example test, as written there."""
    import re
    text = (REPO / "docs" / "testing-apps.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(REPO)
    namespace = {}
    exec(compile(code, "docs/testing-apps.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for t in tests:
        t()
