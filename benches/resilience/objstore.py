#!/usr/bin/env python3
"""Checkpoints in object storage against the local disk: a benchmark, not
a test (it prints figures and asserts nothing).

keyed_counter.py (run.py's state app: file source, exactly-once file sink)
on 1 worker with 100,000 keys, for each resilience dir kind in turn
(`local`: a directory; `s3`: a SeaweedFS on 127.0.0.1, as in the tests):

  - load: restart-free time from "ready" to all 100,000 outputs with a
    checkpoint every `--interval-ms` (default 100 ms, so that checkpoint
    cost shows in throughput), and how many checkpoints committed then;
  - recovery: after every key is in a committed checkpoint, SIGKILL the
    worker, (s3: delete its local working copy, an empty disk), restart it
    with the same command, time restart -> "Recovery COMPLETE"; `--cycles`
    times.

    python benches/resilience/objstore.py [--keys N] [--cycles N] [--interval-ms N]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "e2e"))
import run  # noqa: E402  (run.py: its Cluster, Worker and helpers)
from seaweed import SeaweedFS, weed_bin  # noqa: E402

BUCKET = "quoll-bench"


def one_mode(mode, a, workdir, store):
    wd = workdir / mode
    wd.mkdir()
    cl = run.Cluster(1, wd, "file", interval_ns=a.interval_ms * 1_000_000)
    target = str(cl.res) if mode == "local" else f"s3://{BUCKET}/{mode}-{os.getpid()}"
    for cmd in cl.cmds:
        cmd[cmd.index("--resilience-dir") + 1] = target
    if store is not None:
        cl.env.update(store.env())
    with open(cl.input_path(0), "wb") as f:
        f.write(b"".join(run.frame(run.key_name(k)) for k in range(a.keys)))
    out = dict(mode=mode, recovery_s=[])
    try:
        cl.start_all()
        t_ready = time.perf_counter()
        cl.wait_sink_lines(a.keys, a.timeout)
        out["load_s"] = time.perf_counter() - t_ready
        for _ in range(a.cycles):
            # Every key is in a checkpoint committed after this (interval << wait).
            time.sleep(max(2.0, 20 * a.interval_ms / 1000))
            cl.workers[0].kill9()
            if mode == "s3":
                shutil.rmtree(wd / ".quoll-cache")
            t = time.perf_counter()
            w = cl.start(0)
            t_done, _ = w.wait_line(run.COMPLETE_LINE, a.timeout)
            out["recovery_s"].append(t_done - t)
            replayed = w.wait_line("Replayed", 5)[1]
            out["replayed"] = replayed.strip()
    finally:
        cl.shutdown()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--interval-ms", type=int, default=100)
    p.add_argument("--modes", default="local,s3")
    p.add_argument("--timeout", type=int, default=120)
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="quoll-objstore-bench-"))
    store = None
    try:
        if "s3" in a.modes:
            path = weed_bin()
            if path is None:
                sys.exit("no SeaweedFS: run scripts/seaweedfs.sh")
            store = SeaweedFS(path, workdir / "seaweedfs").start()
            store.create_bucket(BUCKET)
        results = [one_mode(m, a, workdir, store) for m in a.modes.split(",")]
    finally:
        if store is not None:
            store.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    load = os.getloadavg()
    print(f"{a.keys} keys, 1 worker, checkpoint every {a.interval_ms} ms; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for r in results:
        rec = r["recovery_s"]
        print(f"{r['mode']:>6}: load {r['load_s']:.2f} s; recovery (restart -> COMPLETE) "
              f"median {statistics.median(rec):.2f} s, range {min(rec):.2f}-{max(rec):.2f} s "
              f"({len(rec)} cycles; {r['replayed']})")


if __name__ == "__main__":
    main()
