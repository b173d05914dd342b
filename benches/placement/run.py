#!/usr/bin/env python3
"""Placement benchmark: word count on two workers with Zipf(1) keys, after
the cluster rebalanced its key groups, against the same amount of input
with uniform keys.

examples/word_count runs unmodified on an initializer and one worker, with
resilience (a checkpoint every second) and `--rebalance-interval`. Three
variants, on inputs made by benches/word_count/gen_input.py from the same
10,000-word vocabulary and the same seed:

  uniform    - uniform keys (Zipf s = 0), rebalancing on;
  zipf       - Zipf(1) keys, rebalancing on;
  zipf-fixed - Zipf(1) keys, `--rebalance-interval 0`: the even split of the
               key groups, as before load-aware placement.

Each run sends the first `--warm` lines (split over both workers' `--in`),
waits until the receiver has their outputs, then waits for the rebalance
(the initializer logs "rebalancing:" and restores again) or, where none
comes, for as long as one would take. Then it sends the rest (split the
same way) and times it, from the first send to the receiver having every
output: words/s. The whole output is then checked against a direct count
of the input (each word's counts 1..n in order); a wrong output fails the
run. Variants are interleaved round-robin over `--repeats` rounds; medians
are reported, with the ratio of each to uniform (target: zipf >= 0.9).

Each worker is pinned to its own CPU (`taskset`, as if on its own machine;
`--no-pin` to share them): otherwise, on a small machine, the busier worker
simply takes CPU time the other leaves idle and an uneven split costs
little.

    python benches/placement/run.py [--lines 1000000] [--warm 150000] [--repeats 3]
"""

import argparse
import importlib.util
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WC = REPO / "benches" / "word_count"

sys.path.insert(0, str(WC))
_spec = importlib.util.spec_from_file_location("wc_run", WC / "run.py")
wc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wc)
import gen_input  # noqa: E402

TARGET_RATIO = 0.9
INTERVAL_S = 3
REBALANCED = re.compile(r"the busiest worker had ([0-9.]+)x the mean, ([0-9.]+)x after")
RECEIVED = re.compile(r"quoll receive: (\d+) messages")


def split_lines(path, warm, workdir):
    """Four files: the first `warm` lines and the rest, each cut in two
    halves by alternating lines (one per worker); and the word totals."""
    lines = Path(path).read_bytes().splitlines(keepends=True)
    parts = {}
    for phase, chunk in (("warm", lines[:warm]), ("main", lines[warm:])):
        for i in range(2):
            p = Path(workdir) / f"{Path(path).stem}.{phase}{i}.txt"
            p.write_bytes(b"".join(chunk[i::2]))
            parts[(phase, i)] = p
    words = {phase: sum(len(l.split()) for l in chunk)
             for phase, chunk in (("warm", lines[:warm]), ("main", lines[warm:]))}
    return parts, words


def received(receiver):
    found = RECEIVED.findall(receiver.stderr())
    return int(found[-1]) if found else 0


def run_variant(name, input_path, parts, words, rebalance_s, workdir, timeout, pin):
    workdir = Path(workdir) / name
    workdir.mkdir(parents=True, exist_ok=True)
    res = workdir / "res"
    res.mkdir(exist_ok=True)
    total = words["warm"] + words["main"]
    env = dict(wc.os.environ)
    env["PYTHONPATH"] = str(wc.APP_DIR)
    out_port = wc.free_port()
    in_ports = [wc.free_port() for _ in range(2)]
    ext_ports = [wc.free_port() for _ in range(2)]
    control, data = wc.free_port(), wc.free_port()
    procs, workers = [], []
    try:
        out = workdir / "received.txt"
        receiver = wc.Proc([wc.QUOLL, "receive", "--listen", f"127.0.0.1:{out_port}", "--output", out,
                            "--expect", total, "--report-interval", "0.1", "--timeout", timeout], workdir, "receiver")
        procs.append(receiver)
        wc.wait_until(lambda: "listening on" in receiver.stderr(), 10, "the receiver")
        for i in range(2):
            cmd = [wc.MACHIDA3, "--application-module", wc.APP_MODULE, "--in", f"lines@127.0.0.1:{in_ports[i]}",
                   "--out", f"127.0.0.1:{out_port}", "--external", f"127.0.0.1:{ext_ports[i]}",
                   "--run-with-resilience", "--resilience-dir", res, "--time-between-checkpoints", 1_000_000_000,
                   "--rebalance-interval", rebalance_s]
            if i == 0:
                cmd += ["--cluster-initializer", "--name", "initializer", "--worker-count", 2,
                        "--control", f"127.0.0.1:{control}", "--data", f"127.0.0.1:{data}"]
            else:
                cmd += ["--name", "worker1", "--control", f"127.0.0.1:{control}"]
            if pin:
                cmd = ["taskset", "--cpu-list", str(i % wc.os.cpu_count())] + cmd
            w = wc.Proc(cmd, workdir, f"worker{i}", env=env)
            procs.append(w)
            workers.append(w)
        for w in workers:
            wc.wait_until(lambda: wc.READY_LINE in w.stdout() or not w.alive(), 60, f"{w.label} to be ready")

        def send(phase):
            s = [wc.Proc([wc.QUOLL, "send", "--host", f"127.0.0.1:{in_ports[i]}", "--file", parts[(phase, i)],
                          "--framing", "framed"], workdir, f"send-{phase}{i}") for i in range(2)]
            procs.extend(s)
            return s

        send("warm")
        wc.wait_until(lambda: received(receiver) >= words["warm"], timeout, "the warm-up's outputs")
        # A rebalance comes at the first commit INTERVAL_S after the
        # formation; give it that and a few checkpoints more.
        deadline = time.monotonic() + INTERVAL_S + 6
        rebalanced = None
        while time.monotonic() < deadline:
            log = workers[0].stdout()
            m = REBALANCED.search(log)
            if m and "Recovery COMPLETE" in log[m.end():]:
                rebalanced = dict(before=float(m.group(1)), after=float(m.group(2)))
                break
            time.sleep(0.05)
        if rebalance_s and name == "zipf" and rebalanced is None:
            raise RuntimeError(f"{name}: no rebalance within {INTERVAL_S + 6} s\n" + workers[0].describe())
        cpu0 = [wc.proc_cpu_s(w.pid) for w in workers]
        t0 = time.perf_counter()
        send("main")
        receiver.popen.wait(timeout=timeout)
        elapsed = time.perf_counter() - t0
        cpu = [wc.proc_cpu_s(w.pid) - c for w, c in zip(workers, cpu0)]
        if receiver.popen.returncode != 0:
            raise RuntimeError(f"{name}: the receiver did not get {total} outputs\n"
                               + "\n".join(p.describe() for p in procs))
        check = wc.check_output(out, wc.word_counts(input_path))
        out.unlink()
        if check["problems"]:
            raise RuntimeError(f"{name}: wrong output {check['problems'][:10]}\n"
                               + "\n".join(p.describe() for p in procs))
        return dict(variant=name, words=words["main"], elapsed_s=elapsed, words_per_s=words["main"] / elapsed,
                    cpu_s=cpu, rebalanced=rebalanced,
                    rebalances=workers[0].stdout().count("key groups move to even the load"))
    finally:
        wc.shutdown_cluster(workers, ext_ports, procs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--warm", type=int, default=150_000, help="lines sent before the timed part")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--no-pin", action="store_true", help="let the workers share every CPU")
    a = p.parse_args(argv)
    inputs = {s: gen_input.ensure_input(lines=a.lines, zipf_s=s)[0] for s in (0.0, 1.0)}
    variants = [("uniform", 0.0, INTERVAL_S), ("zipf", 1.0, INTERVAL_S), ("zipf-fixed", 1.0, 0)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="quoll-placement-") as tmp:
        split = {s: split_lines(path, a.warm, tmp) for s, path in inputs.items()}
        shares = {s: wc.owner_shares(wc.word_counts(path), 2) for s, path in inputs.items()}
        for r in range(a.repeats):
            for name, s, rebalance in variants:
                parts, words = split[s]
                run = run_variant(name, inputs[s], parts, words, rebalance, Path(tmp) / f"r{r}", a.timeout,
                                  pin=not a.no_pin)
                runs.append(run)
                print(f"round {r + 1} {name:10s} {run['words_per_s']:>12,.0f} words/s  "
                      f"rebalanced {run['rebalanced']}", file=sys.stderr)
    median = {name: statistics.median(x["words_per_s"] for x in runs if x["variant"] == name)
              for name, _, _ in variants}
    ratio = {name: median[name] / median["uniform"] for name in median}
    # How unevenly the work fell: the busier worker's CPU time in the timed
    # part over the mean of the two.
    cpu_skew = {name: statistics.median(max(x["cpu_s"]) * 2 / sum(x["cpu_s"]) for x in runs if x["variant"] == name)
                for name, _, _ in variants}
    result = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S"), host=platform.node(), rev=wc.git_rev(),
        lines=a.lines, warm_lines=a.warm, rebalance_interval_s=INTERVAL_S, pinned=not a.no_pin,
        even_split_share=dict(uniform=shares[0.0], zipf=shares[1.0]),
        median_words_per_s=median, ratio_to_uniform=ratio, busier_worker_cpu_over_mean=cpu_skew,
        target=dict(zipf_ratio_min=TARGET_RATIO),
        met=ratio["zipf"] >= TARGET_RATIO, runs=runs,
    )
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nword count, 2 workers, {a.lines - a.warm:,} lines timed after {a.warm:,} warm-up lines")
    print(f"even split, share of words on each worker: uniform {shares[0.0][0]:.2f}/{shares[0.0][1]:.2f}, "
          f"Zipf(1) {shares[1.0][0]:.2f}/{shares[1.0][1]:.2f}")
    for name, _, _ in variants:
        print(f"  {name:10s} {median[name]:>12,.0f} words/s  {ratio[name]:.2f}x uniform  "
              f"busier worker's CPU {cpu_skew[name]:.2f}x the mean")
    rb = [x["rebalanced"] for x in runs if x["variant"] == "zipf"]
    moves = ", ".join("{before:.2f}x -> {after:.2f}x".format(**r) for r in rb if r)
    print(f"  zipf rebalances: busiest worker at {moves} the mean load")
    print(f"target: zipf >= {TARGET_RATIO} x uniform: {'met' if result['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
