"""The main job, end to end: word count on 3 workers with resilience, one
worker killed with SIGKILL mid-stream and restarted with its original
command, and the final counts checked against the input.

Each worker reads its own part of the input through quoll's replayable file
source and writes its counts through the exactly-once file sink; the cluster
checkpoints every 200 ms. After the kill, the whole cluster rolls back to
the last complete checkpoint, the restarted worker rejoins, and processing
continues. At the end every word's last count must equal its true count,
and the sink files must hold every (word, count) exactly once.
"""

import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quoll.ports import free_port

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "examples" / "word_count"
BIN = Path(sys.executable).parent
WORKERS = 3
VICTIM = int(os.environ.get("DEMO_VICTIM", "1"))
LINES_PER_WORKER = 40_000


def make_input(workdir):
    """Lines of words drawn from a Zipf-like vocabulary, fixed seed; one
    framed file per worker (4-byte big-endian length + line)."""
    rng = random.Random(7)
    vocab = [f"w{i:04d}" for i in range(2000)]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(vocab))]
    truth = collections.Counter()
    for i in range(WORKERS):
        name = "initializer" if i == 0 else f"worker{i}"
        with open(workdir / f"in-{name}.bin", "wb") as f:
            for _ in range(LINES_PER_WORKER):
                words = rng.choices(vocab, weights, k=rng.randint(3, 12))
                truth.update(words)
                line = " ".join(words).encode()
                f.write(len(line).to_bytes(4, "big") + line)
    return truth


def sink_lines(workdir):
    lines = []
    for p in sorted(workdir.glob("out-*.txt")):
        lines += p.read_text().splitlines()
    return lines


def main():
    workdir = Path(tempfile.mkdtemp(prefix="quoll-demo-"))
    resilience = workdir / "resilience"
    resilience.mkdir()
    print(f"demo: working in {workdir}")
    truth = make_input(workdir)
    total = sum(truth.values())
    print(f"demo: {WORKERS} x {LINES_PER_WORKER} lines, {total} words, {len(truth)} distinct")

    control, data = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(APP_DIR))
    commands = []
    for i in range(WORKERS):
        cmd = [str(BIN / "machida3"), "--application-module", "word_count",
               "--in-file", str(workdir / "in-{worker}.bin"), "--out-file", str(workdir / "out-{worker}.txt"),
               "--run-with-resilience", "--resilience-dir", str(resilience),
               "--time-between-checkpoints", "200000000", "--control", f"127.0.0.1:{control}",
               "--external", f"127.0.0.1:{free_port()}", "--ponythreads", "1"]
        if i == 0:
            cmd += ["--cluster-initializer", "--name", "initializer", "--worker-count", str(WORKERS),
                    "--data", f"127.0.0.1:{data}"]
        else:
            cmd += ["--name", f"worker{i}"]
        commands.append(cmd)

    logs = []
    def start(i):
        log = open(workdir / f"worker{i}.log", "ab")
        logs.append(log)
        return subprocess.Popen(commands[i], env=env, stdout=log, stderr=subprocess.STDOUT)

    procs = [start(i) for i in range(WORKERS)]
    try:
        # Let processing get going, then kill worker1 mid-stream.
        deadline = time.time() + 60
        while len(sink_lines(workdir)) < total // 4 and time.time() < deadline:
            time.sleep(0.05)
        done = len(sink_lines(workdir))
        victim = "initializer" if VICTIM == 0 else f"worker{VICTIM}"
        print(f"demo: {done} of {total} counts out; kill -9 {victim} (pid {procs[VICTIM].pid})")
        procs[VICTIM].send_signal(signal.SIGKILL)
        procs[VICTIM].wait()
        time.sleep(0.5)
        print(f"demo: restarting {victim} with its original command")
        t0 = time.time()
        log = workdir / f"worker{VICTIM}.log"
        procs[VICTIM] = start(VICTIM)
        while "Recovery COMPLETE" not in log.read_text(errors="replace"):
            if time.time() - t0 > 60 or procs[VICTIM].poll() is not None:
                raise SystemExit(f"demo: {victim} did not recover; see {log}")
            time.sleep(0.05)
        print(f"demo: {victim} recovered in {time.time() - t0:.2f} s; the cluster rolled back and goes on")

        deadline = time.time() + 120
        while len(sink_lines(workdir)) < total and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        lines = sink_lines(workdir)
    finally:
        ext = commands[0][commands[0].index("--external") + 1]
        subprocess.run([str(BIN / "quoll"), "shutdown", ext], capture_output=True)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    last = {}
    pairs = collections.Counter()
    for line in lines:
        word, count = line.rsplit(" => ", 1)
        pairs[(word, int(count))] += 1
        last[word] = max(last.get(word, 0), int(count))
    doubled = sum(1 for n in pairs.values() if n > 1)
    wrong = {w: (last.get(w), n) for w, n in truth.items() if last.get(w) != n}
    print("demo: top words:")
    for word, n in truth.most_common(10):
        print(f"    {word}  {last.get(word)}  (true count {n})")
    print(f"demo: {len(lines)} output lines for {total} words; "
          f"{len(wrong)} words with a wrong final count; {doubled} (word, count) lines duplicated")
    if wrong or doubled or len(lines) != total:
        print("demo: FAILED", file=sys.stderr)
        return 1
    print("demo: OK: every count is exact after the crash and recovery")
    return 0


if __name__ == "__main__":
    sys.exit(main())
