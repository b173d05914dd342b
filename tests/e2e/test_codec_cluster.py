"""The codec on several workers (docs/wallaroo-compat.md, "Serialization"
and "Differences from Wallaroo"; docs/formats.md, "The codec blob").

examples/custom_codec's Readings hold a threading.Lock, which pickle
refuses; the app's own top-level serialize/deserialize carry them between
workers. Keyed by sensor on 3 workers, most readings cross workers. Checked:
exact outputs; one serialize call per shipped message and one deserialize
per received one (the report-status `shipped` counters), each deserialize
getting exactly the bytes a serialize produced (the app logs a hash of
every blob). Then variants of the app: without the pair (or with only
`serialize`) the default codec is used and refuses the lock, with an error
naming the type, the stage, the worker and pickle's reason; a `serialize`
returning str; a `deserialize` that raises on the receiving worker. Each
failure drops and counts that message only.
"""

import collections
import random
import re
from pathlib import Path

from harness import EXAMPLES, error_lines, report_status, send_lines, wait_until

APPS = Path(__file__).resolve().parent / "apps"
APP_DIR = EXAMPLES / "custom_codec"
PATHS = [APPS, APP_DIR]
STAGE = "stage 'total per sensor' (state_computation)"
NAMES = ["initializer", "worker1", "worker2"]


def reports(cluster):
    """Every worker's report (counters default to 0 until the first one is published)."""
    keys = ("messages_in", "shipped", "frames_in", "bad_frames", "dropped")
    out = []
    for p in cluster.external_ports:
        r = report_status(p)
        out.append({**{k: 0 for k in keys}, "dropped_by_place": {}, **r})
    return out


def wait_reports(cluster, predicate, what, timeout=10):
    last = []

    def ok():
        nonlocal last
        last = reports(cluster)
        return predicate(last)

    try:
        wait_until(ok, timeout, what, interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last reports: {last}")
    return last


def start(make_cluster, make_receiver, module, trace_dir, workers=3):
    out = make_receiver()
    env = dict(__import__("os").environ, CUSTOM_CODEC_TRACE=str(trace_dir))
    cluster = make_cluster(module, PATHS, workers, env=env,
                           app_args=lambda c, i: ["--in", f"readings@127.0.0.1:{c.in_ports[i]}", "--out", out.addr])
    return cluster, out


def trace(trace_dir):
    """(serialize hashes, deserialize hashes, pids that deserialized)."""
    s, d, pids = [], [], set()
    for f in Path(trace_dir).glob("*.log"):
        for line in f.read_text().splitlines():
            kind, digest = line.split()
            (s if kind == "S" else d).append(digest)
            if kind == "D":
                pids.add(f.stem)
    return s, d, pids


def parse_output(lines):
    by_sensor = collections.defaultdict(list)
    for line in lines:
        sensor, count, total = line.split()
        by_sensor[sensor].append((int(count), int(total)))
    return by_sensor


def running(values):
    out, t = [], 0
    for i, v in enumerate(values, 1):
        t += v
        out.append((i, t))
    return out


def test_custom_codec_ships_unpicklable_messages_between_workers(make_cluster, make_receiver, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    cluster, out = start(make_cluster, make_receiver, "custom_codec", trace_dir)
    rng = random.Random(7)
    sent = collections.defaultdict(list)  # sensor -> values, any worker
    per_worker = []
    for i in range(3):
        lines = []
        for seq in range(150):
            sensor, value = f"s{rng.randrange(20)}", 1000 * seq + i + 1  # value says worker and order
            lines.append(f"{sensor},{value}")
            sent[sensor].append(value)
        per_worker.append(lines)
    for i, lines in enumerate(per_worker):
        send_lines(cluster.in_ports[i], lines, tmp_path)
    total = sum(len(v) for v in sent.values())
    out.wait_for_lines(total, timeout=15)
    lines = out.settle(quiet=0.3)
    assert len(lines) == total, cluster.describe()

    seen = parse_output(lines)
    assert set(seen) == set(sent)
    for sensor, outs in seen.items():
        assert [c for c, _ in outs] == list(range(1, len(sent[sensor]) + 1)), sensor
        increments = [t - p for (_, t), (_, p) in zip(outs, [(0, 0)] + outs[:-1])]
        assert sorted(increments) == sorted(sent[sensor]), sensor
        for i in range(3):  # each connection's readings of a sensor keep their order
            mine = [v for v in increments if v % 1000 == i + 1]
            assert mine == sorted(mine), (sensor, i)

    s, d, pids = trace(trace_dir)
    reps = wait_reports(cluster, lambda rs: sum(r["shipped"] for r in rs) == len(s),
                        f"shipped counters to add up to the {len(s)} serialize calls")
    shipped = sum(r["shipped"] for r in reps)
    assert shipped > total // 2, f"only {shipped} of {total} messages crossed workers"
    assert len(d) == len(s) == shipped
    # Every deserialize got exactly the bytes some serialize produced.
    assert collections.Counter(d) == collections.Counter(s)
    assert len(pids) == 3, "every worker should receive readings"
    assert all(r["dropped"] == 0 for r in reps), reps
    for w in cluster.workers:
        assert error_lines(w.stderr()) == [], cluster.describe()
        assert w.alive()
    cluster.shutdown()


def send_to_initializer(cluster, tmp_path, sensors, per_sensor):
    lines = [f"{s},{10 * k + j}" for j in range(per_sensor) for k, s in enumerate(sensors)]
    send_lines(cluster.in_ports[0], lines, tmp_path)
    return lines


def check_default_codec_refuses(make_cluster, make_receiver, tmp_path, module):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    cluster, out = start(make_cluster, make_receiver, module, trace_dir)
    sensors = [f"s{k}" for k in range(12)]
    send_to_initializer(cluster, tmp_path, sensors, 4)
    # Readings of sensors owned elsewhere are dropped: wait for all 48 to be accounted for.
    reps = wait_reports(cluster, lambda rs: rs[0]["messages_in"] == 48 and
                        rs[0]["dropped"] + 0 == 48 - len(out.lines()), "every reading processed or dropped")
    lines = out.settle(quiet=0.5)
    seen = parse_output(lines)
    local = set(seen)
    remote = set(sensors) - local
    assert local and remote, f"expected sensors both local and remote; local={local}"
    for sensor in local:
        k = int(sensor[1:])
        assert seen[sensor] == running([10 * k + j for j in range(4)]), sensor
    reps = wait_reports(cluster, lambda rs: rs[0]["dropped"] == 4 * len(remote), "drops counted")
    assert reps[0]["dropped_by_place"] == {STAGE: 4 * len(remote)}, reps
    assert all(r["shipped"] == 0 for r in reps), reps
    assert [r["dropped"] for r in reps[1:]] == [0, 0], reps

    errors = error_lines(cluster.workers[0].stderr())
    assert len(errors) == 4 * len(remote), cluster.describe()
    pattern = re.compile(
        r"quoll: error: worker 'initializer', stage 'total per sensor' \(state_computation\), "
        r"key '(s\d+)', sending to worker '(worker1|worker2)': "
        r"pickle can't serialize a Reading: TypeError: cannot pickle '_thread\.lock' object "
        r"\(define serialize/deserialize in the app module to handle it\); "
        r"message dropped \((\d+) dropped here so far\)")
    named = []
    for n, line in enumerate(errors, 1):
        m = pattern.fullmatch(line)
        assert m, f"unexpected error line:\n{line}"
        assert int(m.group(3)) == n
        named.append(m.group(1))
    assert collections.Counter(named) == {s: 4 for s in remote}
    assert trace(trace_dir) == ([], [], set()), "the app's serialize/deserialize must not be called"
    # Still serving: a reading of a local sensor comes out.
    some = sorted(local)[0]
    send_lines(cluster.in_ports[0], [f"{some},5"], tmp_path, label="late")
    assert out.wait_for_lines(len(lines) + 1, timeout=10)[-1].startswith(f"{some} 5 ")
    assert all(w.alive() for w in cluster.workers), cluster.describe()
    cluster.shutdown()


def test_default_codec_refuses_a_lock_without_the_pair(make_cluster, make_receiver, tmp_path):
    check_default_codec_refuses(make_cluster, make_receiver, tmp_path, "codec_default")


def test_serialize_alone_means_the_default_codec(make_cluster, make_receiver, tmp_path):
    check_default_codec_refuses(make_cluster, make_receiver, tmp_path, "codec_only_serialize")


def test_serialize_returning_str_is_refused(make_cluster, make_receiver, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    cluster, out = start(make_cluster, make_receiver, "codec_str", trace_dir)
    sensors = [f"s{k}" for k in range(12)]
    send_to_initializer(cluster, tmp_path, sensors, 2)
    reps = wait_reports(cluster, lambda rs: rs[0]["messages_in"] == 24 and
                        rs[0]["dropped"] == 24 - len(out.lines()), "every reading processed or dropped")
    seen = parse_output(out.settle(quiet=0.5))
    remote = set(sensors) - set(seen)
    assert seen and remote
    errors = error_lines(cluster.workers[0].stderr())
    assert len(errors) == 2 * len(remote) == reps[0]["dropped"], cluster.describe()
    for line in errors:
        assert re.fullmatch(
            r"quoll: error: worker 'initializer', stage 'total per sensor' \(state_computation\), "
            r"key 's\d+', sending to worker 'worker[12]': the app's serialize\(\) returned str for a Reading; "
            r"it must return bytes; message dropped \(\d+ dropped here so far\)", line), line
    assert all(r["shipped"] == 0 for r in reps)
    assert all(w.alive() for w in cluster.workers)
    cluster.shutdown()


def test_deserialize_raising_drops_the_message_on_the_receiving_worker(make_cluster, make_receiver, tmp_path):
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    cluster, out = start(make_cluster, make_receiver, "codec_bad_deser", trace_dir)
    good = [f"s{k}" for k in range(12)]
    poison = [f"poison{k}" for k in range(10)]
    lines = [f"{s},{10 * k + j}" for j in range(3) for k, s in enumerate(good)]
    lines += [f"{p},1" for p in poison] + [f"{s},{10 * k + 3}" for k, s in enumerate(good)]
    send_lines(cluster.in_ports[0], lines, tmp_path)
    out.wait_for_lines(4 * len(good), timeout=10)

    def settled(rs):
        dropped = sum(r["dropped"] for r in rs)
        return rs[0]["messages_in"] == len(lines) and len(out.lines()) + dropped == len(lines)

    reps = wait_reports(cluster, settled, "every reading processed or dropped")
    seen = parse_output(out.settle(quiet=0.5))
    for k, s in enumerate(good):
        assert seen[s] == running([10 * k + j for j in range(4)]), s
    local_poison = {p for p in poison if p in seen}
    remote_poison = set(poison) - local_poison
    assert remote_poison, "expected some poison sensors owned by other workers"
    assert reps[0]["dropped"] == 0, reps
    assert sum(r["dropped"] for r in reps[1:]) == len(remote_poison), reps

    named = []
    for i in (1, 2):
        stderr = cluster.workers[i].stderr()
        errs = error_lines(stderr)
        assert reps[i]["dropped"] == len(errs), (reps, stderr)
        if errs:
            assert reps[i]["dropped_by_place"] == {STAGE: len(errs)}, reps
        for n, line in enumerate(errs, 1):
            m = re.fullmatch(
                rf"quoll: error: worker '{NAMES[i]}', stage 'total per sensor' \(state_computation\), "
                r"(?:key '(poison\d+)', )?message from worker 'initializer'(?:, key '(poison\d+)')?: "
                r"the app's deserialize\(\) raised: ValueError: refusing a reading of (poison\d+); "
                rf"message dropped \({n} dropped here so far\)", line)
            assert m, f"unexpected error line:\n{line}"
            named.append(m.group(3))
            # A user error's report names the key (docs/architecture.md,
            # "Errors in user code and data").
            assert (m.group(1) or m.group(2)) == m.group(3), f"the error line does not name the key:\n{line}"
        if errs:
            # ... and shows the traceback of the user's deserialize.
            assert "Traceback (most recent call last):" in stderr and "refuse" in stderr, stderr
    assert sorted(named) == sorted(remote_poison)
    assert all(w.alive() for w in cluster.workers), cluster.describe()
    cluster.shutdown()
