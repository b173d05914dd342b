"""Strangers can't stall, join or roll back a cluster.

Every attacker is a separate process (apps/attacker.py, or a real machida3
with another cluster secret). The cluster is 3 workers of word count with
resilience, replayable file sources and exactly-once file sinks.

- `test_silent_connections_hold_nothing_up`: 40 silent connections held on
  every port (--control, --data, each --external) while the cluster forms
  and while it recovers from a SIGKILL: it forms and recovers on time, and
  the output is exact.
- `test_strangers_change_nothing`: a recorded handshake replayed on a new
  control connection, an impostor machida3 with a member's name and another
  cookie, a second machida3 with a live member's name and the right cookie,
  and random bytes on every port, all while the cluster processes its
  input: each is refused and says why, and nothing rolls back (no worker
  logs a rollback, every word's counts are 1, 2, ..., n in order in its
  owner's sink, and the final counts are exact).
- `test_tcp_source_connections_are_bounded`: silent and garbage connections
  on a TCP source's --in don't keep a real client out.
"""

import sys
import time
from pathlib import Path

from harness import EXAMPLES, MACHIDA3, Proc, Receiver, free_port, send_lines, wait_until
from test_resilience_faults import (NAMES, Faults, check_word_counts, file_args, make_word_input, out_paths,
                                    resilience_flags, total_size, word_count_bytes)

APPS = Path(__file__).resolve().parent / "apps"
ATTACKER = [sys.executable, str(APPS / "attacker.py")]
WC = EXAMPLES / "word_count"


def word_count_cluster(make_cluster, tmp_path, lines=4000, line_delay="0.0005"):
    """A 3-worker resilient word count, not started; its input and truth."""
    in_dir, out_dir, res_dir = tmp_path / "in", tmp_path / "out", tmp_path / "res"
    for d in (in_dir, out_dir, res_dir):
        d.mkdir()
    truth = make_word_input(in_dir, lines)
    app_args = file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt", "--line-delay", line_delay)
    cluster = make_cluster("wc_app", APPS, 3, extra_flags=resilience_flags(res_dir), app_args=app_args, start=False)
    return cluster, truth, out_paths(out_dir)


def attack(tmp_path, label, *args):
    return Proc([*ATTACKER, *[str(a) for a in args]], tmp_path, label).start()


def start_worker(cluster, i, command=None):
    p = Proc(command or cluster.command(i), cluster.workdir, f"worker{i}", env=cluster.env).start()
    cluster.workers.append(p)
    return p


def rollbacks(cluster):
    return [w.stdout().count("rolling back") for w in cluster.workers]


def test_silent_connections_hold_nothing_up(make_cluster, tmp_path):
    cluster, truth, paths = word_count_cluster(make_cluster, tmp_path)
    attackers = []
    try:
        start_worker(cluster, 0)
        wait_until(lambda: "waiting for 2 more worker(s)" in cluster.workers[0].stdout(), 15, "the initializer")
        for port in (cluster.control, cluster.data, cluster.external_ports[0]):
            attackers.append(attack(tmp_path, f"silent-{port}", "silent", f"127.0.0.1:{port}", 40))
        time.sleep(1)  # the silent connections are in before the others join
        t0 = time.time()
        start_worker(cluster, 1)
        start_worker(cluster, 2)
        cluster.wait_ready(timeout=15)
        formed = time.time() - t0
        for i in (1, 2):
            port = cluster.external_ports[i]
            attackers.append(attack(tmp_path, f"silent-{port}", "silent", f"127.0.0.1:{port}", 40))
        f = Faults(cluster, seed=1)
        target = word_count_bytes(truth)
        f.wait_progress(lambda: total_size(paths), target // 3, "a third of the output")
        t1 = time.time()
        f.kill_and_restart(1, max_pause=0.1)
        f.wait_recovered(1, timeout=15)
        recovered = time.time() - t1
        f.wait_final(lambda: total_size(paths), target, "all the output", quiet=1.0)
        assert all(a.alive() for a in attackers), "the attackers held their connections throughout"
        print(f"formed in {formed:.2f} s and recovered in {recovered:.2f} s with 40 silent connections per port")
        assert formed < 10 and recovered < 10, f.describe()
        check_word_counts(paths, truth, f.describe)
    finally:
        for a in attackers:
            a.stop()


def test_strangers_change_nothing(make_cluster, tmp_path):
    cluster, truth, paths = word_count_cluster(make_cluster, tmp_path, lines=6000, line_delay="0.001")
    proxy_port = free_port()
    record = tmp_path / "control-link.bin"
    attackers = [attack(tmp_path, "proxy", "proxy", proxy_port, f"127.0.0.1:{cluster.control}", record)]
    try:
        start_worker(cluster, 0)
        # worker1 reaches the initializer through the recording proxy.
        via_proxy = [a if a != f"127.0.0.1:{cluster.control}" else f"127.0.0.1:{proxy_port}"
                     for a in cluster.command(1)]
        start_worker(cluster, 1, via_proxy)
        start_worker(cluster, 2)
        cluster.wait_ready(timeout=20)
        init = cluster.workers[0]

        # 1. The recorded handshake (and Join) replayed on a new connection.
        wait_until(lambda: record.exists() and record.stat().st_size > 100, 10, "a recorded control link")
        replay = attack(tmp_path, "replay", "replay", f"127.0.0.1:{cluster.control}", record)
        assert replay.wait(15) == 0, replay.describe()
        wait_until(lambda: "not authenticated" in init.stderr(), 10, "the initializer to refuse the replay")

        # 2. An impostor with worker2's name and its own (other) cookie.
        other_home = tmp_path / "other-home"
        other_home.mkdir()
        impostor_cmd = cluster.command(2)
        impostor_cmd[impostor_cmd.index("--external") + 1] = f"127.0.0.1:{free_port()}"
        impostor = Proc(impostor_cmd, tmp_path, "impostor", env=dict(cluster.env, HOME=str(other_home))).start()
        assert impostor.wait(20) == 2, impostor.describe()
        assert f"the initializer at 127.0.0.1:{cluster.control} and this worker can't authenticate each other" \
            in impostor.stderr(), impostor.describe()
        assert "different cluster secrets" in init.stderr() or "different cluster secrets" in impostor.stderr()

        # 3. A second process with a live member's name and the right cookie.
        twin = Proc(impostor_cmd, tmp_path, "twin", env=cluster.env).start()
        assert twin.wait(20) == 2, twin.describe()
        assert "a worker named 'worker2' is already in the cluster" in twin.stderr(), twin.describe()

        # 4. Random bytes on every port we know.
        for port in (cluster.control, cluster.data, *cluster.external_ports):
            attackers.append(attack(tmp_path, f"garbage-{port}", "garbage", f"127.0.0.1:{port}"))

        target = word_count_bytes(truth)
        f = Faults(cluster, seed=2)
        f.wait_final(lambda: total_size(paths), target, "all the output", quiet=1.0, timeout=120)
        assert rollbacks(cluster) == [0, 0, 0], f"a stranger made the cluster roll back\n{f.describe()}"
        assert all("Recovery COMPLETE" not in w.stdout() for w in cluster.workers), f.describe()
        check_word_counts(paths, truth, f.describe)
        assert all(w.alive() for w in cluster.workers), f.describe()
    finally:
        for a in attackers:
            a.stop()


def test_tcp_source_connections_are_bounded(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    cluster = make_cluster("word_count", WC, 1,
                           app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr])
    port = cluster.in_ports[0]
    attackers = [attack(tmp_path, "silent-in", "silent", f"127.0.0.1:{port}", 200),
                 attack(tmp_path, "garbage-in", "garbage", f"127.0.0.1:{port}")]
    try:
        time.sleep(1.5)
        t0 = time.time()
        send_lines(port, ["the quick fox", "the lazy dog"], tmp_path)
        want = ["dog => 1", "fox => 1", "lazy => 1", "quick => 1", "the => 1", "the => 2"]
        # Garbage frames that decode count words of their own: only the
        # client's words are looked at.
        ours = lambda: sorted(l for l in out.lines() if l.split(" => ")[0] in {"the", "quick", "fox", "lazy", "dog"})  # noqa: E731
        wait_until(lambda: ours() == want, 10, f"the client's counts (have {ours()})")
        assert time.time() - t0 < 5, "a real client waited behind strangers"
        assert cluster.workers[0].alive(), cluster.describe()
    finally:
        for a in attackers:
            a.stop()
