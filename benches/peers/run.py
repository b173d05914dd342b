#!/usr/bin/env python3
"""Peer benchmark: quoll against Bytewax on the same word count.

Both engines run the word count of examples/word_count (the same user
functions; Bytewax through bytewax_wc.py) on the word count benchmark's
input (benches/word_count/gen_input.py, 1,000,000 lines by default), file in
and file out, on 1 and 2 processes:

  plain    - no checkpoints;
  ckpt     - checkpoints every second (quoll: --run-with-resilience
             --time-between-checkpoints 1 s; Bytewax: its recovery, SQLite
             snapshots, 1 s epochs, -s 1 -b 0);
  recover  - with checkpoints: SIGKILL one process once half of the output
             is out, restart it (Bytewax: every process, since its survivors
             exit), time from the restart to its first new output and to
             the last.

Every run's output is checked, after the timed part, against a direct count
of the input: each word's counts must be exactly 1, 2, ..., n in order.
Prints a table, writes JSON (results.json here by default). Method, figures
and how to read them: docs/performance.md.

    .venv/bin/python benches/peers/run.py [--lines N] [--procs 1,2] [--repeats 2] [--out FILE]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from common import BYTEWAX_VERSION, bytewax_version, ensure_bytewax, load_word_count_bench

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WC_DIR = REPO / "benches" / "word_count"
APP_DIR = REPO / "examples" / "word_count"
APP_MODULE = "word_count"
CACHE = HERE / ".cache"
CHECKPOINT_NS = 1_000_000_000


wc = load_word_count_bench()
import gen_input  # noqa: E402  (on sys.path through wc)
from harness import Cluster, Proc, external, free_port  # noqa: E402


# --------------------------------------------------------------------------- set-up

def framed(text_part: Path) -> Path:
    """The part as quoll's file source reads it: each line (without its
    newline) as a 4-byte big-endian length + the bytes. Cached in .cache/."""
    CACHE.mkdir(exist_ok=True)
    out = CACHE / (text_part.stem + ".framed")
    if out.exists() and out.stat().st_mtime >= text_part.stat().st_mtime:
        return out
    tmp = out.with_suffix(".tmp")
    with open(text_part, "rb") as src, open(tmp, "wb") as dst:
        for line in src:
            line = line.rstrip(b"\n")
            dst.write(len(line).to_bytes(4, "big") + line)
    os.replace(tmp, out)
    return out


def output_bytes(counts: Dict[str, int]) -> int:
    """Size of a correct output: `word => k\\n` for k = 1..n of every word."""
    total = 0
    for word, n in counts.items():
        total += n * (len(word.encode()) + 5)
        digits, low = 1, 1
        while low <= n:  # numbers with `digits` digits among 1..n
            total += digits * (min(n, low * 10 - 1) - low + 1)
            digits, low = digits + 1, low * 10
    return total


# --------------------------------------------------------------------------- processes

def exit_code(proc: Proc) -> Optional[int]:
    """`proc`'s exit code if it has exited (negative: the signal), else
    None; without reaping it, so that reap() still gets its resource use
    (Popen.poll(), which Proc.alive() calls, would reap it)."""
    r = os.waitid(os.P_PID, proc.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if r is None:
        return None
    return r.si_status if r.si_code == os.CLD_EXITED else -r.si_status


def reap(proc: Proc, timeout: float) -> Dict[str, Any]:
    """Waits for `proc` (ours) to exit, up to `timeout` s, then kills it;
    returns its exit code, CPU seconds (user + system) and peak RSS in MB
    over its whole life, from wait4()."""
    deadline = time.time() + timeout
    killed = False
    while True:
        pid, status, ru = os.wait4(proc.popen.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline and not killed:
            os.kill(proc.popen.pid, signal.SIGKILL)  # not Popen.kill(): it would reap
            killed = True
        time.sleep(0.01)
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
    proc.stop()  # closes its log files
    return dict(name=proc.label, rc=proc.popen.returncode, killed_after_timeout=killed,
                cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mb=ru.ru_maxrss / 1024.0)


class Watcher(threading.Thread):
    """Polls the sizes of the output files every 3 ms (a file may be
    truncated by a recovery, then grow again) and records: the first output,
    the first time the total is the expected size, and, once `arm(files)`
    was called, the first time one of `files` grew."""

    def __init__(self, files: List[Path], expected: int) -> None:
        super().__init__(daemon=True)
        self.files = list(files)
        self.expected = expected
        self.first_output = None
        self.done = None
        self.total = 0
        self._armed = None
        self.first_growth = None
        self._halt = threading.Event()

    def sizes(self) -> List[int]:
        return [f.stat().st_size if f.exists() else 0 for f in self.files]

    def arm(self, files: List[Path]) -> None:
        self.first_growth = None
        self._armed = ([self.files.index(f) for f in files], self.sizes())

    def run(self) -> None:
        last = self.sizes()
        while not self._halt.is_set():
            now = time.perf_counter()
            sizes = self.sizes()
            self.total = sum(sizes)
            if self.first_output is None and self.total > 0:
                self.first_output = now
            if self._armed is not None and self.first_growth is None:
                idx, _ = self._armed
                if any(sizes[i] > last[i] for i in idx):
                    self.first_growth = now
            if self.done is None and self.total == self.expected:
                self.done = now
            last = sizes
            time.sleep(0.003)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class QuollRun:
    """quoll workers (examples/word_count with --in-file/--out-file) on
    their parts of the input."""

    engine = "quoll"

    def __init__(self, rd: Path, parts: List[Path], ckpt: bool) -> None:
        self.rd, self.n = rd, len(parts)
        self.names = ["initializer"] + [f"worker{i}" for i in range(1, self.n)]
        for name, part in zip(self.names, parts):
            (rd / f"in-{name}.bin").symlink_to(framed(part))
        flags = []
        if ckpt:
            (rd / "res").mkdir()
            flags = ["--run-with-resilience", "--resilience-dir", str(rd / "res"),
                     "--time-between-checkpoints", str(CHECKPOINT_NS)]
        app_args = ["--in-file", str(rd / "in-{worker}.bin"), "--out-file", str(rd / "out-{worker}.txt")]
        self.cluster = Cluster(rd, APP_MODULE, APP_DIR, self.n, app_args=lambda c, i: app_args,
                               extra_flags=flags)
        self.outputs = [rd / f"out-{name}.txt" for name in self.names]
        self.ended = []  # reaped processes (killed ones, then all at the end)

    def start(self) -> None:
        self.cluster.workers = [Proc(self.cluster.command(i), self.rd, f"worker{i}", env=self.cluster.env).start()
                                for i in range(self.n)]

    def procs(self) -> List[Proc]:
        return self.cluster.workers

    def victim(self) -> int:
        """The process a recovery run kills: the last worker (on 2, not the initializer)."""
        return self.n - 1

    def kill(self, i: int) -> None:
        w = self.cluster.workers[i]
        os.kill(w.popen.pid, signal.SIGKILL)  # not Proc.signal(): it would reap (see exit_code)
        self.ended.append(reap(w, 10))

    def restart(self, i: int) -> List[Path]:
        """Worker i again, with its original command; its output files."""
        self.cluster.workers[i] = Proc(self.cluster.command(i), self.rd, f"worker{i}-restarted",
                                       env=self.cluster.env).start()
        return [self.outputs[i]]

    def finish(self) -> List[Dict[str, Any]]:
        external(self.cluster.external_ports[0], "shutdown")
        self.ended += [reap(w, 30) for w in self.cluster.workers]
        return self.ended


class BytewaxRun:
    """`python -m bytewax.run` processes (bytewax_wc.py), one worker each,
    on the same parts of the input (text lines)."""

    engine = "bytewax"

    def __init__(self, rd: Path, parts: List[Path], ckpt: bool, python: str) -> None:
        self.rd, self.n = rd, len(parts)
        (rd / "in").mkdir()
        (rd / "out").mkdir()
        for i, part in enumerate(parts):
            (rd / "in" / f"part{i}.txt").symlink_to(part)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            str(p) for p in (HERE, WC_DIR, APP_DIR, REPO / "python")))
        flow = f"bytewax_wc:get_flow({str(rd / 'in')!r}, {str(rd / 'out')!r}, {self.n})"
        base = [python, "-m", "bytewax.run", flow]
        if ckpt:
            res = rd / "res"
            res.mkdir()
            subprocess.run([python, "-m", "bytewax.recovery", str(res), str(self.n)], check=True, env=self.env)
            base += ["-r", str(res), "-s", str(CHECKPOINT_NS // 1_000_000_000), "-b", "0"]
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(self.n))
        self.commands = [base + (["-i", str(i), "-a", addresses] if self.n > 1 else []) for i in range(self.n)]
        # DirSink's files (file_count = processes).
        self.outputs = [rd / "out" / f"part_{i}" for i in range(self.n)]
        self.starts = 0
        self.ended = []
        self.workers = []
        self.survivors = []

    def start(self) -> None:
        self.starts += 1
        self.workers = [Proc(cmd, self.rd, f"bytewax{i}-start{self.starts}", env=self.env).start()
                        for i, cmd in enumerate(self.commands)]

    def procs(self) -> List[Proc]:
        return self.workers

    def victim(self) -> int:
        return self.n - 1

    def kill(self, i: int) -> None:
        """SIGKILLs process i; the others (which can't go on without it)
        are given 10 s to exit by themselves, then killed; how each ended is
        recorded in `survivors`."""
        t = time.perf_counter()
        os.kill(self.workers[i].popen.pid, signal.SIGKILL)  # not Proc.signal() (see exit_code)
        self.ended.append(reap(self.workers[i], 10))
        for j, w in enumerate(self.workers):
            if j != i:
                r = reap(w, 10)
                r["exit_after_kill_s"] = time.perf_counter() - t
                self.survivors.append(r)
                self.ended.append(r)

    def restart(self, i: int) -> List[Path]:
        """Every process again (the survivors have exited); all output files."""
        self.start()
        return list(self.outputs)

    def finish(self) -> List[Dict[str, Any]]:
        # A bounded source: each process exits once its input is done.
        self.ended += [reap(w, 60) for w in self.workers]
        return self.ended


# --------------------------------------------------------------------------- one run

def check_exact(outputs: List[Path], counts: Dict[str, int], rd: Path) -> Dict[str, Any]:
    """wc.check_output on the output files concatenated (each word's counts
    must be 1..n in order; a word whose counts start again in a second file
    is a problem too)."""
    joined = rd / "all-output.txt"
    with open(joined, "wb") as dst:
        for p in outputs:
            if p.exists():
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
    check = wc.check_output(joined, counts)
    joined.unlink()
    return dict(exact=not check["problems"], lines=check["lines"], words=check["words"],
                problems=check["problems"][:10])


def run_one(engine: str, n: int, mode: str, parts: List[Path], counts: Dict[str, int], expected: int, workdir: Path,
            bytewax_python: Optional[str], timeout: float, kill_fraction: float, kill_after: float) -> Dict[str, Any]:
    """One run: `mode` is plain, ckpt or recover."""
    rd = Path(tempfile.mkdtemp(prefix=f"{engine}-{n}p-{mode}-", dir=workdir))
    ckpt = mode != "plain"
    run = QuollRun(rd, parts, ckpt) if engine == "quoll" else BytewaxRun(rd, parts, ckpt, bytewax_python)
    watcher = Watcher(run.outputs, expected)
    watcher.start()
    t0 = time.perf_counter()
    run.start()
    res = dict(engine=engine, procs=n, mode=mode)
    try:
        deadline = time.time() + timeout

        def wait_for(predicate, what):
            while not predicate():
                codes = {p: exit_code(p) for p in run.procs()}
                dead = [p for p, code in codes.items() if code is not None]
                # A Bytewax process exits by itself (rc 0) once its input is
                # done, maybe before the watcher's next poll: allow for that.
                if dead and not (engine == "bytewax" and all(codes[p] == 0 for p in dead)):
                    raise RuntimeError(f"{engine} {n}p {mode}: {dead[0].label} exited while waiting for {what}\n"
                                       + "\n".join(p.describe() for p in run.procs()))
                if len(dead) == len(run.procs()) and time.time() > settle_by(dead):
                    raise RuntimeError(f"{engine} {n}p {mode}: every process exited before {what} "
                                       f"(output {watcher.total:,} of {expected:,} bytes)\n"
                                       + "\n".join(p.describe() for p in run.procs()))
                if time.time() > deadline:
                    raise RuntimeError(f"{engine} {n}p {mode}: timed out waiting for {what} "
                                       f"(output {watcher.total:,} of {expected:,} bytes)")
                time.sleep(0.005)

        exited = {}

        def settle_by(dead):
            """1 s after the first time every process was seen exited."""
            key = tuple(p.popen.pid for p in dead)
            return exited.setdefault(key, time.time() + 1.0)

        if mode == "recover":
            wait_for(lambda: watcher.done is not None
                     or (watcher.total >= kill_fraction * expected and time.perf_counter() - t0 >= kill_after),
                     f"{kill_fraction:.0%} of the output")
            if watcher.done is not None:
                raise RuntimeError(f"{engine} {n}p {mode}: all the output was out before the kill point "
                                   f"({kill_fraction:.0%} of it, {kill_after} s after the launch): use more --lines")
            victim = run.victim()
            res["killed_at_output_fraction"] = watcher.total / expected
            res["killed_at_s"] = time.perf_counter() - t0
            run.kill(victim)
            if isinstance(run, BytewaxRun):
                res["survivors"] = run.survivors
            t_restart = time.perf_counter()
            watch = run.restart(victim)
            watcher.arm(watch)
            wait_for(lambda: watcher.first_growth is not None or watcher.done is not None, "new output")
            wait_for(lambda: watcher.done is not None, "the whole output")
            res["restart_to_first_output_s"] = (watcher.first_growth or watcher.done) - t_restart
            res["restart_to_done_s"] = watcher.done - t_restart
        else:
            wait_for(lambda: watcher.done is not None, "the whole output")
        wall = watcher.done - t0
        ended = run.finish()
    except BaseException:
        for p in run.procs():
            if p.alive():
                p.popen.kill()
                p.popen.wait()
        print(f"logs kept in {rd}", file=sys.stderr)
        raise
    finally:
        watcher.stop()
    words = sum(counts.values())
    cpu = sum(e["cpu_s"] for e in ended)
    res.update(
        wall_s=wall, words=words, words_per_s=words / wall, first_output_s=watcher.first_output - t0,
        cpu_s=cpu, cpu_us_per_word=cpu / words * 1e6,
        peak_rss_mb=max(e["peak_rss_mb"] for e in ended), processes=ended,
        output=check_exact(run.outputs, counts, rd),
    )
    if res["output"]["exact"]:
        shutil.rmtree(rd, ignore_errors=True)
    else:
        res["logs"] = str(rd)
    return res


# --------------------------------------------------------------------------- report

def spread(values: List[Optional[float]], spec: str = ",.0f", sep: str = "-") -> str:
    """`min-max` of the values, formatted (one value if they format alike)."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high = format(min(present), spec), format(max(present), spec)
    return low if low == high else f"{low}{sep}{high}"


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per (engine, procs, mode): the fastest run's figures, the spreads
    over repeats, and per-repeat paired ratios."""
    groups = {}
    for r in runs:
        groups.setdefault((r["engine"], r["procs"], r["mode"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        best = max(rs, key=lambda r: r["words_per_s"])
        out["/".join(map(str, key))] = dict(
            engine=key[0], procs=key[1], mode=key[2], repeats=len(rs),
            words_per_s=best["words_per_s"], words_per_s_all=[r["words_per_s"] for r in rs],
            cpu_us_per_word=min(r["cpu_us_per_word"] for r in rs),
            cpu_us_per_word_all=[r["cpu_us_per_word"] for r in rs],
            peak_rss_mb=max(r["peak_rss_mb"] for r in rs),
            # The fastest run's processes, in order (a recovery run lists the
            # killed and the restarted ones too).
            peak_rss_mb_per_process=[p["peak_rss_mb"] for p in best["processes"]],
            first_output_s_all=[r["first_output_s"] for r in rs],
            exact=all(r["output"]["exact"] for r in rs),
            restart_to_first_output_s_all=[r.get("restart_to_first_output_s") for r in rs],
            restart_to_done_s_all=[r.get("restart_to_done_s") for r in rs],
        )
    return out


def paired(runs: List[Dict[str, Any]], num: Tuple[str, int, str], den: Tuple[str, int, str],
           field: str) -> List[float]:
    """Per repeat, num's field over den's (runs of the same repeat ran one
    after the other, so they share the machine's load)."""
    by = {}
    for r in runs:
        by.setdefault(r["repeat"], {})[(r["engine"], r["procs"], r["mode"])] = r
    return [rep[num][field] / rep[den][field] for rep in by.values() if num in rep and den in rep]


def report(res: Dict[str, Any]) -> str:
    runs, summ = res["runs"], res["summary"]
    m = res["meta"]
    lines = [f"word count, quoll vs Bytewax {BYTEWAX_VERSION}: {m['lines']:,} lines, {m['total_words']:,} words, "
             f"file in and file out; {m['cpus']} CPUs; quoll git {m['git']}; Python {m['python_version']}; "
             f"{m['repeats']} repeat(s), fastest shown, spread over repeats in brackets", ""]
    hdr = (f"{'engine':<9}{'procs':>6}{'checkpoints':>13}{'words/s':>12}{'(spread)':>22}{'CPU us/word':>13}"
           f"{'(spread)':>14}{'peak RSS MB':>13}{'1st out s':>11}{'exact':>7}")
    lines += [hdr, "-" * len(hdr)]
    for n in res["meta"]["procs"]:
        for mode in ("plain", "ckpt"):
            for engine in ("quoll", "bytewax"):
                s = summ.get(f"{engine}/{n}/{mode}")
                if not s:
                    continue
                lines.append(
                    f"{engine:<9}{n:>6}{'1 s' if mode == 'ckpt' else 'off':>13}{s['words_per_s']:>12,.0f}"
                    f"{'(' + spread(s['words_per_s_all']) + ')':>22}{s['cpu_us_per_word']:>13.2f}"
                    f"{'(' + spread(s['cpu_us_per_word_all'], '.2f') + ')':>14}"
                    f"{'/'.join(f'{x:.0f}' for x in s['peak_rss_mb_per_process']):>13}"
                    f"{spread(s['first_output_s_all'], '.2f'):>11}{'yes' if s['exact'] else 'NO':>7}")
    lines.append("")
    lines.append("quoll / Bytewax, paired per repeat (words/s; CPU per word):")
    for n in res["meta"]["procs"]:
        for mode in ("plain", "ckpt"):
            w = paired(runs, ("quoll", n, mode), ("bytewax", n, mode), "words_per_s")
            c = paired(runs, ("quoll", n, mode), ("bytewax", n, mode), "cpu_us_per_word")
            if w:
                lines.append(f"  {n}p {mode:<6} words/s x{spread(w, '.2f')}   CPU/word x{spread(c, '.2f')}")
    if any(r["mode"] == "ckpt" for r in runs) and any(r["mode"] == "plain" for r in runs):
        lines.append("")
        lines.append("checkpoint overhead (1 s checkpoints vs none, paired per repeat):")
    for engine in ("quoll", "bytewax"):
        for n in res["meta"]["procs"]:
            w = paired(runs, (engine, n, "ckpt"), (engine, n, "plain"), "words_per_s")
            c = paired(runs, (engine, n, "ckpt"), (engine, n, "plain"), "cpu_us_per_word")
            if w:
                lines.append(f"  {engine:<8}{n}p  words/s {spread([(1 - x) * 100 for x in w], '.0f', ' to ')} % lower, "
                             f"CPU per word {spread([(x - 1) * 100 for x in c], '.0f', ' to ')} % higher")
    rec = [r for r in runs if r["mode"] == "recover"]
    if rec:
        lines.append("")
        lines.append("kill -9 of one process once half the output is out, then restart (checkpoints every 1 s):")
        for r in rec:
            surv = ""
            if r.get("survivors"):
                surv = "; survivors: " + ", ".join(
                    f"{s['name']} exited rc={s['rc']} after {s['exit_after_kill_s']:.2f} s"
                    + (" (killed: had not exited in 10 s)" if s["killed_after_timeout"] else "")
                    for s in r["survivors"])
            lines.append(f"  {r['engine']:<8}{r['procs']}p  killed at {r['killed_at_output_fraction']:.0%} "
                         f"({r['killed_at_s']:.1f} s); restart -> first new output {r['restart_to_first_output_s']:.2f} s, "
                         f"-> all output {r['restart_to_done_s']:.2f} s; exact: "
                         f"{'yes' if r['output']['exact'] else 'NO ' + str(r['output']['problems'][:3])}{surv}")
    lines.append("")
    lines.append("words/s: words / (launch -> the output files hold every count); CPU: user+system of every")
    lines.append("engine process over its whole life (start-up, run, exit; killed and restarted ones too);")
    lines.append("peak RSS: per process, of the fastest run (a recovery run's killed and restarted ones too); 1st out: launch -> first output byte.")
    bad = [f"{r['engine']} {r['procs']}p {r['mode']}" for r in runs if not r["output"]["exact"]]
    if bad:
        lines.append("")
        lines.append("WRONG OUTPUT in: " + ", ".join(bad) + " (problems in the JSON; logs kept)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="input lines (default 1,000,000)")
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each case, interleaved (default 2)")
    p.add_argument("--engines", default="quoll,bytewax")
    p.add_argument("--modes", default="plain,ckpt,recover")
    p.add_argument("--kill-at", type=float, default=0.5, help="output fraction at the kill (default 0.5)")
    p.add_argument("--kill-after", type=float, default=2.5,
                   help="and not before this many seconds after the launch, so that checkpoints exist (default 2.5)")
    p.add_argument("--timeout", type=int, default=600, help="seconds a run may take")
    p.add_argument("--bytewax-python", default=getattr(sys, "_base_executable", sys.executable),
                   help="the Python the Bytewax venv is made with (default: this one's base)")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier run's results and exit")
    a = p.parse_args(argv)
    if a.report:
        res = json.loads(Path(a.report).read_text())
        res["summary"] = summarise(res["runs"])
        print(report(res))
        return 0
    procs = [int(x) for x in a.procs.split(",") if x]
    engines = [e for e in a.engines.split(",") if e]
    modes = [m for m in a.modes.split(",") if m]

    bytewax_python = ensure_bytewax(a.bytewax_python) if "bytewax" in engines else None
    input_path, meta = gen_input.ensure_input(lines=a.lines)
    counts = wc.word_counts(input_path)
    expected = output_bytes(counts)
    parts = {n: wc.split_input(input_path, n) for n in procs}
    for ps in parts.values():
        for part in ps:
            framed(part)
    bw_version = None
    if bytewax_python:
        bw_version = bytewax_version(bytewax_python)
    res = dict(meta=dict(
        lines=a.lines, total_words=meta["total_words"], distinct_words=len(counts), output_bytes=expected,
        input=str(input_path), procs=procs, repeats=a.repeats, kill_at=a.kill_at, kill_after_s=a.kill_after, checkpoint_s=CHECKPOINT_NS / 1e9,
        cpus=os.cpu_count(), machine=platform.machine(), kernel=platform.release(), git=wc.git_rev(),
        engine=wc.engine_build(), python=wc.PYTHON, python_version=platform.python_version(),
        bytewax=bw_version, bytewax_python=bytewax_python,
        when=datetime.datetime.now().isoformat(timespec="seconds"), loadavg_start=os.getloadavg(),
    ), runs=[])
    workdir = Path(tempfile.mkdtemp(prefix="quoll-peers-"))
    try:
        for rep in range(a.repeats):
            for n in procs:
                for mode in modes:
                    for engine in engines:  # the two engines back to back: paired figures
                        print(f"peers: repeat {rep + 1}, {engine} {n}p {mode} ...", file=sys.stderr)
                        r = run_one(engine, n, mode, parts[n], counts, expected, workdir, bytewax_python,
                                    a.timeout, a.kill_at, a.kill_after)
                        r["repeat"] = rep
                        res["runs"].append(r)
                        extra = (f", restart -> first new output {r['restart_to_first_output_s']:.2f} s"
                                 if mode == "recover" else "")
                        print(f"peers:   {r['words_per_s']:,.0f} words/s, {r['cpu_us_per_word']:.2f} CPU us/word, "
                              f"peak RSS {r['peak_rss_mb']:.0f} MB{extra}, exact: {r['output']['exact']}",
                              file=sys.stderr)
    except BaseException:
        print(f"runs kept in {workdir}", file=sys.stderr)
        raise
    if all(r["output"]["exact"] for r in res["runs"]):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"runs with wrong output kept in {workdir}", file=sys.stderr)
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["summary"] = summarise(res["runs"])
    text = report(res)
    print(text)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nresults written to {a.out}")
    return 0 if all(r["output"]["exact"] for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
