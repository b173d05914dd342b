"""User errors (docs/architecture.md, "Errors in user code and data";
docs/wallaroo-compat.md, "Differences from Wallaroo"): a message whose user
code raises or returns the wrong type is dropped, reported on stderr with
the worker, the place and the cause (and the traceback for the first ones),
and counted; later messages still come out, in order, and the worker keeps
running. With `--on-user-error fail` the worker stops, non-zero, after
printing the error.

The app (apps/user_errors_app.py) runs decode -> computation ->
computation_multi -> key_by -> state computation -> encoder, and `--mode`
makes exactly one of those misbehave on the input line "boom".
"""

import re
from pathlib import Path

import pytest

from harness import error_lines, send_lines, wait_report, wait_until

APPS = Path(__file__).resolve().parent / "apps"
WORKER = "initializer"
TRACEBACK_HEADER = "Traceback (most recent call last):"


def run_app(make_cluster, make_receiver, mode, extra_flags=()):
    out = make_receiver()
    cluster = make_cluster(
        "user_errors_app", APPS, 1, extra_flags=extra_flags,
        app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr, "--mode", mode])
    return cluster, out


def expected_output(lines, mode):
    """What the app must write: the good lines, each with the count of
    messages that reached the 'number' state before it (inclusive)."""
    poison_reaches_state = mode in ("state", "encoder", "encoder_int")
    n, out = 0, []
    for line in lines:
        if line == "skip" and mode == "decoder_none":
            continue
        if line == "boom" and mode != "decoder_none":
            if poison_reaches_state:
                n += 1
            continue
        n += 1
        out.append(f"{line} {n}")
    return out


INPUT = ["m0", "m1", "boom", "m2", "m3", "boom", "m4", "boom", "m5"]

# mode -> (place, detail, cause, has_traceback)
CASES = {
    "decoder": ("source 'lines' (tcp)", "decoder, frame of 4 bytes",
                "ValueError: poison 'boom' in decoder", True),
    "compute": ("stage 'pass through' (computation)", "key 'tcp-source-key'",
                "ValueError: poison 'boom' in compute", True),
    "compute_multi": ("stage 'fan out' (computation_multi)", "key 'tcp-source-key'",
                      "ValueError: poison 'boom' in compute_multi", True),
    "multi_tuple": ("stage 'fan out' (computation_multi)", "key 'tcp-source-key'",
                    "compute_multi must return a list (or None), got tuple", False),
    "key": ("stage 'extract_group' (key_by)", "key extractor",
            "ValueError: poison 'boom' in key extractor", True),
    "key_float": ("stage 'extract_group' (key_by)", "key extractor",
                  "unexpected non-string value of type float: a key must be str, bytes or int", False),
    "state": ("stage 'number' (state_computation)", "key 'all'",
              "ValueError: poison 'boom' in state computation", True),
    "encoder": ("tcp sink {out} (encoder)", "key 'all'", "ValueError: poison 'boom' in encoder", True),
    "encoder_int": ("tcp sink {out} (encoder)", "key 'all'",
                    "encoder returned int; it must return bytes, str or None", False),
}

# The user function that raises, as the traceback must show it.
RAISING_FUNCTION = {
    "decoder": "decode_line", "compute": "pass_through", "compute_multi": "fan_out",
    "key": "extract_group", "state": "number", "encoder": "encode_line",
}


@pytest.mark.parametrize("mode", list(CASES))
def test_user_error_is_reported_dropped_and_counted(mode, make_cluster, make_receiver, tmp_path):
    cluster, out = run_app(make_cluster, make_receiver, mode)
    worker = cluster.workers[0]
    send_lines(cluster.in_ports[0], INPUT, tmp_path)
    expected = expected_output(INPUT, mode)
    out.wait_for_lines(len(expected), timeout=10)
    place, detail, cause, has_tb = CASES[mode]
    place = place.format(out=out.addr)
    poisons = INPUT.count("boom")

    report = wait_report(cluster.external_ports[0], lambda r: r.get("dropped") == poisons,
                         f"{poisons} dropped messages in report-status")
    assert report["dropped_by_place"] == {place: poisons}, report
    assert report["bad_frames"] == 0, report
    assert report["messages_in"] == len(INPUT), report

    # Later good messages come out, in order, and nothing else.
    assert out.settle(quiet=0.3) == expected, cluster.describe()
    assert worker.alive(), cluster.describe()

    stderr = worker.stderr()
    want = [f"quoll: error: worker '{WORKER}', {place}, {detail}: {cause}; "
            f"message dropped ({k} dropped here so far)" for k in range(1, poisons + 1)]
    assert error_lines(stderr) == want, stderr

    # Still serving: one more good line comes out after the errors.
    send_lines(cluster.in_ports[0], ["late"], tmp_path, label="late")
    last = out.wait_for_lines(len(expected) + 1, timeout=10)[-1]
    assert last.startswith("late "), last

    cluster.shutdown()
    assert [w.popen.returncode for w in cluster.workers] == [0]
    assert f"quoll: worker '{WORKER}': {poisons} messages were dropped after errors" in worker.stdout()

    if has_tb:
        # The first errors come with the traceback of the user's code.
        first = stderr.index(want[0])
        tail = stderr[first + len(want[0]):]
        assert TRACEBACK_HEADER in tail, f"no traceback after the first error:\n{stderr}"
        tb = tail[tail.index(TRACEBACK_HEADER):]
        assert "user_errors_app.py" in tb and RAISING_FUNCTION[mode] in tb, stderr
        assert stderr.count(TRACEBACK_HEADER) == poisons, stderr


def test_decoder_returning_none_drops_the_frame_silently(make_cluster, make_receiver, tmp_path):
    cluster, out = run_app(make_cluster, make_receiver, "decoder_none")
    lines = ["m0", "skip", "m1", "skip", "skip", "m2", "boom", "m3"]
    send_lines(cluster.in_ports[0], lines, tmp_path)
    expected = expected_output(lines, "decoder_none")
    assert expected == ["m0 1", "m1 2", "m2 3", "boom 4", "m3 5"]
    out.wait_for_lines(len(expected), timeout=10)
    report = wait_report(cluster.external_ports[0], lambda r: r.get("messages_in") == len(lines),
                         "all frames counted in")
    assert report["dropped"] == 0 and report["dropped_by_place"] == {}, report
    assert out.settle(quiet=0.3) == expected
    assert cluster.workers[0].alive()
    cluster.shutdown()
    stderr = cluster.workers[0].stderr()
    assert "error" not in stderr.lower(), stderr
    assert "dropped" not in cluster.workers[0].stdout()


def test_printing_is_bounded_but_counting_is_not(make_cluster, make_receiver, tmp_path):
    """A poison flood: every drop is counted, but stderr gets a bounded
    number of tracebacks, and the printed running counts are 1, 2, 3, ..."""
    cluster, out = run_app(make_cluster, make_receiver, "compute")
    lines = []
    for i in range(150):
        lines += [f"g{i}", "boom"]
    send_lines(cluster.in_ports[0], lines, tmp_path)
    expected = expected_output(lines, "compute")
    out.wait_for_lines(len(expected), timeout=10)
    report = wait_report(cluster.external_ports[0], lambda r: r.get("dropped") == 150, "150 drops counted")
    assert report["dropped_by_place"] == {"stage 'pass through' (computation)": 150}
    assert out.settle(quiet=0.3) == expected
    assert cluster.workers[0].alive()
    stderr = cluster.workers[0].stderr()
    printed = error_lines(stderr)
    assert 1 <= len(printed) < 150, f"{len(printed)} error lines printed for 150 drops"
    counts = [int(re.search(r"\((\d+) dropped here so far\)", l).group(1)) for l in printed]
    assert counts == list(range(1, len(printed) + 1))
    assert stderr.count("ValueError: poison 'boom' in compute") < 150 * 2
    cluster.shutdown()
    assert "quoll: worker 'initializer': 150 messages were dropped after errors" in cluster.workers[0].stdout()
    tracebacks = stderr.count(TRACEBACK_HEADER)
    assert 1 <= tracebacks < 150, f"{tracebacks} tracebacks for 150 drops:\n{stderr[:3000]}"


def test_on_user_error_fail_stops_the_worker(make_cluster, make_receiver, tmp_path):
    cluster, out = run_app(make_cluster, make_receiver, "compute", extra_flags=["--on-user-error", "fail"])
    worker = cluster.workers[0]
    send_lines(cluster.in_ports[0], ["m0", "m1", "boom", "m2", "m3"], tmp_path)
    wait_until(lambda: not worker.alive(), 10, "the worker to exit after the first user error")
    rc = worker.popen.returncode
    assert rc not in (0, None), f"rc={rc}\n{cluster.describe()}"
    stderr = worker.stderr()
    line = ("quoll: error: worker 'initializer', stage 'pass through' (computation), key 'tcp-source-key': "
            "ValueError: poison 'boom' in compute; message dropped (1 dropped here so far)")
    assert error_lines(stderr)[0] == line, stderr
    assert "--on-user-error fail" in stderr, stderr
    # Output produced before the poison was flushed; nothing after it was processed.
    assert out.settle(quiet=0.5) == ["m0 1", "m1 2"], cluster.describe()
    assert TRACEBACK_HEADER in stderr and "pass_through" in stderr, stderr
