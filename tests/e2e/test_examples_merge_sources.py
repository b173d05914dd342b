"""Merged sources end to end, on 1, 2 and 3 workers.

Every worker has two TCP sources (Celsius, Fahrenheit) and two sinks (the
same two receivers, through `to_sinks`). Sensors get readings from both
sources and from every worker. Per sensor, the owner processes readings one
at a time, so its lines count 1..N in order and the last max is exact; both
receivers get identical output.
"""

import collections
import random

import pytest

from harness import EXAMPLES, free_port, send_lines

APP_DIR = EXAMPLES / "merge_sources"
SENSORS = ["sensor-%d" % k for k in range(12)]


def make_readings(seed, n, low, high):
    rng = random.Random(seed)
    return [(rng.choice(SENSORS), round(rng.uniform(low, high), 2)) for _ in range(n)]


def parse(lines):
    seen = collections.defaultdict(list)
    for line in lines:
        sensor, readings, mx = line.split(" ")
        assert readings.startswith("readings=") and mx.startswith("max=")
        seen[sensor].append((int(readings[len("readings="):]), float(mx[len("max="):])))
    return seen


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_merge_sources_max(workers, make_cluster, make_receiver, tmp_path):
    out_a = make_receiver("receiver-a")
    out_b = make_receiver("receiver-b")
    f_ports = [free_port() for _ in range(workers)]
    cluster = make_cluster(
        "merge_sources", APP_DIR, workers,
        app_args=lambda c, i: ["--in", f"celsius@127.0.0.1:{c.in_ports[i]},fahrenheit@127.0.0.1:{f_ports[i]}",
                               "--out", f"{out_a.addr},{out_b.addr}"],
    )
    celsius = [make_readings(500 + i, 300, -20.0, 40.0) for i in range(workers)]
    fahrenheit = [make_readings(600 + i, 300, -4.0, 104.0) for i in range(workers)]
    # Make sure the maximum comes from Fahrenheit for some sensors and from
    # Celsius for others.
    celsius[0].append(("sensor-0", 45.5))
    fahrenheit[-1].append(("sensor-1", 120.2))
    for i in range(workers):
        send_lines(cluster.in_ports[i], ["%s,%s" % r for r in celsius[i]], tmp_path, label="celsius")
        send_lines(f_ports[i], ["%s,%s" % r for r in fahrenheit[i]], tmp_path, label="fahrenheit")

    converted = collections.defaultdict(list)
    for readings in celsius:
        for sensor, c in readings:
            converted[sensor].append(float(c))
    for readings in fahrenheit:
        for sensor, f in readings:
            converted[sensor].append((float(f) - 32) * 5 / 9)
    n = sum(len(v) for v in converted.values())

    out_a.wait_for_lines(n, timeout=30)
    out_b.wait_for_lines(n, timeout=30)
    cluster.shutdown()
    lines_a, lines_b = out_a.lines(), out_b.lines()
    assert len(lines_a) == n and len(lines_b) == n, cluster.describe()
    seen_a, seen_b = parse(lines_a), parse(lines_b)
    # to_sinks: both receivers get the same output, per sensor in the same order.
    assert seen_a == seen_b

    assert set(seen_a) == set(converted)
    for sensor, values in converted.items():
        outputs = seen_a[sensor]
        assert [r for r, _ in outputs] == list(range(1, len(values) + 1)), sensor
        maxes = [m for _, m in outputs]
        assert all(a <= b for a, b in zip(maxes, maxes[1:])), sensor
        assert set(maxes) <= set(values), sensor
        assert maxes[-1] == max(values), sensor
    assert seen_a["sensor-0"][-1][1] == 45.5
    assert seen_a["sensor-1"][-1][1] == (120.2 - 32) * 5 / 9
