#!/usr/bin/env python3
"""Grow and shrink benchmark: how long a join, and then a shrink, pause a
loaded cluster that holds 100,000 keys of state, and what they do to
latency.

benches/resilience/keyed_counter.py (one key per record, a running count
per key, TCP in and TCP out) runs on an initializer alone, with resilience
(a checkpoint every second). This script

  1. sends each of KEYS distinct keys once (the state to move), waits for
     every count and for two checkpoints,
  2. then sends random keys among them at RATE records/s for SECONDS s;
     a third of the way in starts a second worker with `--join`, and two
     thirds of the way in asks for it to leave again (`quoll shrink
     --count 1`);
  3. receives every output line on its own TCP receiver and matches each
     `key => n` with the time the n-th record of that key was sent: the
     latency of that record, from outside, send to receive.

It prints, for the records sent before the join, from the join to the
shrink, and from the shrink on: the longest gap between two outputs, and
latency p50, p99, p99.9 and max; and how long the join took from the
joiner's start to the cluster reporting two workers, and the shrink from
the request to one worker again (the leaver having exited 0). Every count must arrive exactly once (the
run fails otherwise). Results go to a JSON file.

    python benches/grow/run.py [--keys 100000] [--rate 5000] [--seconds 9] [--repeats 3]
"""

import argparse
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP_DIR = REPO / "benches" / "resilience"


def tool(name):
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        sys.exit(f"{name} not found: run scripts/setup.sh and use .venv/bin/python")
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """Accepts the workers' TCP sinks; records each output line's arrival."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.got = []  # (time, key, n)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        rest = b""
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            now = time.monotonic()
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            parsed = []
            for line in lines:
                key, _, n = line.decode().rpartition(" => ")
                parsed.append((now, key, int(n)))
            with self.lock:
                self.got.extend(parsed)

    def count(self):
        with self.lock:
            return len(self.got)


def frame(key):
    b = key.encode()
    return len(b).to_bytes(4, "big") + b


def status(port):
    r = subprocess.run([tool("quoll"), "status", f"127.0.0.1:{port}", "--json"], capture_output=True, text=True,
                       timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def one_run(args, workdir):
    res = workdir / "res"
    res.mkdir()
    ports = {k: free_port() for k in ("control", "data", "in0", "in1", "ext0", "ext1")}
    recv = Receiver()
    common = ["--application-module", "keyed_counter", "--ponythreads", "1", "--run-with-resilience",
              "--resilience-dir", str(res), "--time-between-checkpoints", str(args.interval_ns),
              "--out", f"127.0.0.1:{recv.port}"]
    env = dict(os.environ, PYTHONPATH=str(APP_DIR))
    init_cmd = [tool("machida3"), *common, "--cluster-initializer", "--name", "initializer",
                "--control", f"127.0.0.1:{ports['control']}", "--data", f"127.0.0.1:{ports['data']}",
                "--external", f"127.0.0.1:{ports['ext0']}", "--in", f"keys@127.0.0.1:{ports['in0']}"]
    join_cmd = [tool("machida3"), *common, "--name", "worker1", "--join", f"127.0.0.1:{ports['control']}",
                "--external", f"127.0.0.1:{ports['ext1']}", "--in", f"keys@127.0.0.1:{ports['in1']}"]
    procs = []
    try:
        init = subprocess.Popen(init_cmd, env=env, cwd=workdir, stdout=open(workdir / "init.out", "w"),
                                stderr=subprocess.STDOUT)
        procs.append(init)
        wait(lambda: status(ports["ext0"]).get("processing_messages"), 30, "the initializer")
        keys = [f"k{i:06d}" for i in range(args.keys)]
        sock = socket.create_connection(("127.0.0.1", ports["in0"]))
        sock.sendall(b"".join(frame(k) for k in keys))
        wait(lambda: recv.count() >= args.keys, 60, "the first count of every key")
        time.sleep(2.5 * args.interval_ns / 1e9)  # a checkpoint holds every key
        sent = {k: [None] for k in keys}  # the n-th record's send time at index n-1
        rng = random.Random(1)
        total = int(args.rate * args.seconds)
        join_at = total // 3
        start = time.monotonic()
        joined = {}
        shrunk = {}
        shrink_at = 2 * total // 3
        batch = max(1, args.rate // 1000)  # a write per millisecond
        i = 0
        while i < total:
            due = start + i / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            chunk = []
            for _ in range(min(batch, total - i)):
                k = keys[rng.randrange(len(keys))]
                sent[k].append(time.monotonic())
                chunk.append(frame(k))
                i += 1
            sock.sendall(b"".join(chunk))
            if i >= shrink_at and not shrunk and "done" in joined:
                shrunk["at"] = time.monotonic()

                def shrink():
                    r = subprocess.run([tool("quoll"), "shrink", f"127.0.0.1:{ports['ext0']}", "--count", "1"],
                                       capture_output=True, text=True, timeout=30)
                    if r.returncode != 0:
                        shrunk["error"] = r.stderr
                        return
                    wait(lambda: status(ports["ext0"]).get("worker_count") == 1, 60, "the shrink")
                    shrunk["done"] = time.monotonic()
                threading.Thread(target=shrink, daemon=True).start()
            if i >= join_at and not joined:
                joined["at"] = time.monotonic()
                procs.append(subprocess.Popen(join_cmd, env=env, cwd=workdir,
                                              stdout=open(workdir / "join.out", "w"), stderr=subprocess.STDOUT))
                threading.Thread(target=lambda: (
                    wait(lambda: status(ports["ext0"]).get("worker_count") == 2, 60, "the join"),
                    joined.__setitem__("done", time.monotonic())), daemon=True).start()
        want = args.keys + total
        wait(lambda: recv.count() >= want, 60, f"{want} outputs (have {recv.count()})")
        time.sleep(0.5)
        wait(lambda: "done" in joined, 30, "the join to be reported")
        wait(lambda: "done" in shrunk or "error" in shrunk, 60, "the shrink to be reported")
        if "error" in shrunk:
            raise SystemExit(f"the shrink was refused: {shrunk['error']}")
        if procs[1].wait(30) != 0:
            raise SystemExit("the leaving worker did not exit 0")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    got = sorted(recv.got)
    seen = set()
    phases = {"before_join": ([], []), "from_join": ([], []), "from_shrink": ([], [])}
    for t, key, n in got:
        if (key, n) in seen:
            raise SystemExit(f"{key} => {n} arrived twice")
        seen.add((key, n))
        if n == 1:
            continue
        t0 = sent[key][n - 1]
        phase = "before_join" if t0 < joined["at"] else "from_join" if t0 < shrunk["at"] else "from_shrink"
        phases[phase][0].append(t - t0)
        phases[phase][1].append(t)
    if len(seen) != want:
        raise SystemExit(f"{len(seen)} distinct counts arrived, want {want}")

    def gap(ts):
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)

    def lat(xs):
        xs = sorted(xs)
        return {"p50_ms": 1e3 * percentile(xs, 0.5), "p99_ms": 1e3 * percentile(xs, 0.99),
                "p999_ms": 1e3 * percentile(xs, 0.999), "max_ms": 1e3 * xs[-1] if xs else float("nan")}

    result = {name: {"records": len(lats), "longest_gap_ms": 1e3 * gap(times), **lat(lats)}
              for name, (lats, times) in phases.items()}
    result["join_to_two_workers_s"] = joined["done"] - joined["at"]
    result["shrink_to_one_worker_s"] = shrunk["done"] - shrunk["at"]
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=5000, help="records/s after the keys are loaded")
    ap.add_argument("--seconds", type=float, default=9.0)
    ap.add_argument("--interval-ns", type=int, default=1_000_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    runs = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="quoll-grow-") as d:
            try:
                result = one_run(args, Path(d))
            except SystemExit:
                for log in ("init.out", "join.out"):
                    if (Path(d) / log).exists():
                        print(f"--- {log}\n" + (Path(d) / log).read_text()[-3000:], file=sys.stderr)
                raise
        runs.append(result)
        b, a, s = result["before_join"], result["from_join"], result["from_shrink"]
        print(f"run {r + 1}: longest output gap {b['longest_gap_ms']:.0f} ms before the join, "
              f"{a['longest_gap_ms']:.0f} ms from it, {s['longest_gap_ms']:.0f} ms from the shrink; "
              f"p99 {b['p99_ms']:.1f} / {a['p99_ms']:.1f} / {s['p99_ms']:.1f} ms, "
              f"max {b['max_ms']:.0f} / {a['max_ms']:.0f} / {s['max_ms']:.0f} ms; join reported after "
              f"{result['join_to_two_workers_s']:.2f} s, shrink after {result['shrink_to_one_worker_s']:.2f} s",
              flush=True)
    for phase, what in (("from_join", "a join (1 -> 2 workers)"), ("from_shrink", "a shrink (2 -> 1)")):
        gaps = [r[phase]["longest_gap_ms"] for r in runs]
        print(f"longest output gap during {what}, {args.keys:,} keys, {args.rate:,} records/s: "
              f"median {statistics.median(gaps):.0f} ms (runs: {', '.join(f'{g:.0f}' for g in gaps)})")
    Path(args.out).write_text(json.dumps({
        "what": "grow 1 -> 2 workers, then shrink 2 -> 1, under load; benches/grow/run.py",
        "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "cpus": os.cpu_count(),
        "keys": args.keys, "rate": args.rate, "seconds": args.seconds, "interval_ns": args.interval_ns,
        "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
