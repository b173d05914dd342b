"""An unreachable TCP sink (docs/wallaroo-compat.md, "Sinks"): the worker
starts anyway, says clearly which sink address it can't reach, holds the
output and retries; once a receiver listens there the held output arrives,
complete and in order. (The app, apps/frames_app.py, echoes each input line.)"""

import time
from pathlib import Path

from harness import Receiver, free_port, send_lines, wait_until

APPS = Path(__file__).resolve().parent / "apps"


def test_unreachable_sink_holds_output_until_a_receiver_listens(make_cluster, tmp_path):
    sink_port = free_port()
    sink = f"127.0.0.1:{sink_port}"
    cluster = make_cluster("frames_app", APPS, 1,
                           app_args=lambda c, i: ["--in", f"frames@127.0.0.1:{c.in_ports[i]}", "--out", sink])
    worker = cluster.workers[0]
    wait_until(lambda: f"can't connect to {sink}" in worker.stderr(), 5, "the sink connection error")
    err = [l for l in worker.stderr().splitlines() if l.startswith("quoll: error:")]
    assert len(err) == 1, worker.stderr()
    assert err[0].startswith(f"quoll: error: worker 'initializer', tcp sink {sink}: can't connect to {sink}: "), err
    assert "retrying every 250 ms" in err[0], err

    lines = [f"line {i} " + "x" * (i % 50) for i in range(2000)]
    send_lines(cluster.in_ports[0], lines, tmp_path)
    time.sleep(0.7)  # the output is held meanwhile, and the connection retried
    assert worker.alive(), cluster.describe()
    assert worker.stderr().count("can't connect") == 1, "the retry loop should not repeat the error every 250 ms"

    receiver = Receiver(tmp_path, "late-receiver", port=sink_port).start()
    try:
        receiver.wait_for_lines(len(lines), timeout=10)
        assert receiver.settle(quiet=0.3) == lines
        wait_until(lambda: f"connected to {sink}" in worker.stderr(), 5, "the reconnection line")
        assert worker.alive()
        cluster.shutdown()
        assert worker.popen.returncode == 0, cluster.describe()
    finally:
        receiver.stop()
