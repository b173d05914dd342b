"""Cluster formation as users start it: any order, clear refusals, status,
shutdown from any worker, and `quoll run --workers N`."""

import json
import urllib.request

from harness import (EXAMPLES, QUOLL, Proc, READY_LINE, external, free_port, metric, scrape, send_lines,
                     wait_until)

APP = EXAMPLES / "word_count"


def wc_args(c, i, out):
    return ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr]


def test_joiner_started_first_waits_for_the_initializer(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    c = make_cluster("word_count", APP, 2, app_args=lambda c, i: wc_args(c, i, out), start=False)
    joiner = Proc(c.command(1), tmp_path, "worker1", env=c.env).start()
    c.workers.append(joiner)
    wait_until(lambda: "can't reach the initializer" in joiner.stdout(), 10, "the joiner to say it is retrying")
    assert f"127.0.0.1:{c.control}" in joiner.stdout()
    c.workers.insert(0, Proc(c.command(0), tmp_path, "worker0", env=c.env).start())
    c.wait_ready()
    status = external(c.external_ports[1], "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"worker_count": 2, "worker_names": ["initializer", "worker1"],
                                         "processing_messages": True}
    send_lines(c.in_ports[1], ["a b a"], tmp_path)
    out.wait_for_lines(3)
    # A clean shutdown asked of any worker stops them all.
    external(c.external_ports[1], "shutdown")
    for w in c.workers:
        assert w.wait(20) == 0, c.describe()


def test_refusals_name_the_problem(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    c = make_cluster("word_count", APP, 2, app_args=lambda c, i: wc_args(c, i, out))

    # A second process with a live member's name, after formation.
    dup_cmd = c.command(1)
    dup_cmd[dup_cmd.index("--external") + 1] = f"127.0.0.1:{free_port()}"
    dup_cmd[dup_cmd.index("--in") + 1] = f"lines@127.0.0.1:{free_port()}"
    # Without resilience a member can't rejoin: the initializer says so.
    dup = Proc(dup_cmd, tmp_path, "duplicate", env=c.env).start()
    assert dup.wait(20) == 2
    assert "can't rejoin" in dup.stderr(), dup.describe()

    # A worker beyond --worker-count.
    extra_cmd = [a.replace("worker1", "worker9") for a in dup_cmd]
    extra = Proc(extra_cmd, tmp_path, "extra", env=c.env).start()
    assert extra.wait(20) == 2
    assert "the cluster already has its 2 workers (initializer, worker1)" in extra.stderr(), extra.describe()

    # A second initializer on the same control address.
    second = c.command(0)
    second[second.index("--external") + 1] = f"127.0.0.1:{free_port()}"
    second[second.index("--in") + 1] = f"lines@127.0.0.1:{free_port()}"
    init2 = Proc(second, tmp_path, "initializer2", env=c.env).start()
    assert init2.wait(20) == 2
    assert f"can't listen on --control 127.0.0.1:{c.control}" in init2.stderr()
    assert "is another initializer running?" in init2.stderr()

    # The cluster is unharmed.
    send_lines(c.in_ports[0], ["x y x"], tmp_path)
    out.wait_for_lines(3)
    assert sorted(out.lines()) == ["x => 1", "x => 2", "y => 1"]


def test_a_different_app_is_refused(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    c = make_cluster("word_count", APP, 2, app_args=lambda c, i: wc_args(c, i, out), start=False)
    c.workers.append(Proc(c.command(0), tmp_path, "worker0", env=c.env).start())
    other = EXAMPLES / "alphabet"
    cmd = c.command(1)
    cmd[cmd.index("word_count")] = "alphabet"
    env = dict(c.env, PYTHONPATH=f"{other}")
    stranger = Proc(cmd, tmp_path, "stranger", env=env).start()
    assert stranger.wait(20) == 2
    assert "runs a different application" in stranger.stderr(), stranger.describe()
    assert "start every worker with the same app" in stranger.stderr()


def test_quoll_run_workers(make_receiver, tmp_path):
    out = make_receiver()
    base, ext, metrics = free_port(), free_port(), free_port()
    # Worker i listens on base + i; keep base + 1 free too.
    run = Proc([QUOLL, "run", str(APP / "word_count.py"), "--workers", "2", "--in", f"lines@127.0.0.1:{base}",
                "--out", out.addr, "--external", f"127.0.0.1:{ext}", "--metrics-listen", f"127.0.0.1:{metrics}"],
               tmp_path, "run").start()
    try:
        wait_until(lambda: run.stdout().count(READY_LINE) == 2, 30, "both workers to be ready")
        send_lines(base, ["p q"], tmp_path)
        send_lines(base + 1, ["q r"], tmp_path)
        out.wait_for_lines(4)
        assert sorted(out.lines()) == ["p => 1", "q => 1", "q => 2", "r => 1"]
        status = external(ext + 1, "status", "--json")
        assert json.loads(status.stdout)["worker_count"] == 2
        # --metrics-listen moves up by i too, and the initializer learnt
        # worker1's address from its join.
        names = ["initializer", "worker1"]
        wait_until(lambda: sum(metric(scrape(metrics + i)[1], "quoll_sink_messages_total", worker=name)
                               for i, name in enumerate(names)) == 4, 10,
                   f"the 4 outputs counted on ports {metrics} and {metrics} + 1")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/cluster", timeout=5) as r:
            members = json.loads(r.read())["members"]
        assert members["worker1"] == {"state": "up", "metrics": f"127.0.0.1:{metrics + 1}"}, members
        external(ext, "shutdown")
        assert run.wait(20) == 0, run.describe()
    finally:
        run.stop()


def test_duplicate_name_during_formation_is_refused(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    c = make_cluster("word_count", APP, 3, app_args=lambda c, i: wc_args(c, i, out), start=False)
    c.workers.append(Proc(c.command(0), tmp_path, "worker0", env=c.env).start())
    first = Proc(c.command(1), tmp_path, "worker1", env=c.env).start()
    c.workers.append(first)
    wait_until(lambda: "joined (2/3)" in c.workers[0].stdout(), 20, "worker1 to join")
    twin_cmd = c.command(1)
    twin_cmd[twin_cmd.index("--external") + 1] = f"127.0.0.1:{free_port()}"
    twin_cmd[twin_cmd.index("--in") + 1] = f"lines@127.0.0.1:{free_port()}"
    twin = Proc(twin_cmd, tmp_path, "twin", env=c.env).start()
    assert twin.wait(20) == 2
    assert "a worker named 'worker1' is already in the cluster; give each worker a unique --name" in twin.stderr()
    # The formation goes on with the first worker1.
    c.workers.append(Proc(c.command(2), tmp_path, "worker2", env=c.env).start())
    c.wait_ready()
    assert first.alive()
    send_lines(c.in_ports[1], ["d d"], tmp_path)
    out.wait_for_lines(2)
    assert sorted(out.lines()) == ["d => 1", "d => 2"]
