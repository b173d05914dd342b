#!/usr/bin/env python3
"""End-to-end latency of quoll, measured from outside the workers.

Word count (examples/word_count, unmodified), TCP source to TCP sink, on 1
and 2 workers, with and without resilience (checkpoints every second). For
each of those four clusters, in one run:

  1. ping-pong - one line at a time, the next sent when the previous one's
                 output is back: latency at the lowest load;
  2. max       - the benchmark's input (benches/word_count/gen_input.py)
                 sent as fast as possible: words/s until the last count is
                 out; the loads below are fractions of this figure;
  3. loads     - 10 %, 50 % and 90 % of that rate, paced every 0.5 ms, for
                 a few seconds each: latency of probe lines.

A probe is a line holding one word found nowhere else (`qx<number>`: the
input's made-up words have no q or x), so its count `qx<n> => 1` marks
exactly when that line's output left the cluster. Latency = the time the
receiver process read the output line minus the time the sender process
handed the probe's chunk to the socket (CLOCK_MONOTONIC, shared by the two
processes). Sender and receiver are separate processes so neither stalls
the other's clock readings.

Then the window-after-quiet latency: examples/alerts_windowed with tumbling
range windows, one transaction per account sent at once, then silence; for
each account the time its window came out after that window's end plus
delay (computed from the key's hash, tests/e2e/harness.py).

Prints tables and writes JSON (with the load average before and after each
part: on a shared machine these figures move with the load).

    python benches/latency/run.py [--seconds 4] [--workers-list 1,2] [--out results.json]
"""

import argparse
import datetime
import importlib.util
import json
import multiprocessing
import os
import platform
import selectors
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benches" / "word_count"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import gen_input  # noqa: E402
from harness import Cluster, free_port, tumbling_window_end_ns  # noqa: E402

# The word count benchmark's helpers that say which build ran (a module of
# the same file name as this one, hence loaded by path).
_spec = importlib.util.spec_from_file_location("word_count_bench", REPO / "benches" / "word_count" / "run.py")
assert _spec is not None and _spec.loader is not None
word_count_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(word_count_bench)

TARGETS = dict(p99_50pct_1w_ms=1.0, p99_50pct_2w_ms=2.0)
PROBE_TAG = b"qx"
PROBES_PER_S = 2000


def loadavg():
    return [round(x, 2) for x in os.getloadavg()]


def wake_delay(seconds=1.0):
    """The machine's scheduling noise: how late a 0.2 ms sleep wakes, in µs
    (p50, p99, max). On an idle machine tens of µs; when processes queue for
    the cores, milliseconds, and every latency below carries that delay."""
    late = []
    end = time.monotonic_ns() + int(seconds * 1e9)
    while time.monotonic_ns() < end:
        t = time.monotonic_ns()
        time.sleep(0.0002)
        late.append(time.monotonic_ns() - t - 200_000)
    r = percentiles(late)
    return dict(p50_us=r["p50_us"], p99_us=r["p99_us"], max_us=r["max_us"])


def frame(line):
    return struct.pack(">I", len(line)) + line


# --------------------------------------------------------------------------- the receiver process

def receive(listener, stop, lines_seen, notify, conn):
    """Accepts every sink connection and reads until told to stop; sends
    back {probe number: monotonic ns when its output line was read}. With
    `notify` set, each probe's number also goes through `conn` at once."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    tails = {}
    arrivals = {}
    count = 0
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            if s is listener:
                c, _ = listener.accept()
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                tails[c] = b""
                continue
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not data:
                sel.unregister(s)
                s.close()
                continue
            count += data.count(b"\n")
            buf = tails[s] + data
            cut = buf.rfind(b"\n") + 1
            tails[s] = buf[cut:]
            at = buf.find(PROBE_TAG, 0, cut)
            while at >= 0:
                end = buf.find(b" ", at)
                n = int(buf[at + 2:end])
                arrivals[n] = now
                if notify.value:
                    conn.send(n)
                at = buf.find(PROBE_TAG, end, cut)
            lines_seen.value = count
    conn.send(arrivals)


class Receiver:
    def __init__(self):
        ctx = multiprocessing.get_context("fork")
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.stop = ctx.Event()
        self.lines = ctx.Value("q", 0, lock=False)
        self.notify = ctx.Value("b", 0, lock=False)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=receive, args=(self.listener, self.stop, self.lines, self.notify, child),
                                daemon=True)
        self.proc.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def wait_lines(self, n, timeout):
        deadline = time.monotonic() + timeout
        while self.lines.value < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"output stalled at {self.lines.value} of {n} lines")
            time.sleep(0.002)

    def finish(self):
        self.stop.set()
        while True:
            msg = self.conn.recv()
            if isinstance(msg, dict):
                break
        self.proc.join(10)
        self.listener.close()
        return msg


# --------------------------------------------------------------------------- measurements

def percentiles(lat_ns):
    if not lat_ns:
        return dict(n=0)
    s = sorted(lat_ns)

    def at(q):
        return round(s[min(len(s) - 1, int(q * len(s)))] / 1000, 1)

    return dict(n=len(s), p50_us=at(0.50), p99_us=at(0.99), p999_us=at(0.999), max_us=round(s[-1] / 1000, 1),
                mean_us=round(statistics.fmean(s) / 1000, 1))


class Probes:
    """Numbers probes across a run and remembers when each was sent."""

    def __init__(self):
        self.next = 0
        self.sent = {}

    def line(self):
        n = self.next
        self.next += 1
        return n, frame(PROBE_TAG + str(n).encode())


def ping_pong(sock, rx, probes, count):
    """One probe at a time; returns the probe numbers used."""
    rx.notify.value = 1
    used = []
    for _ in range(count):
        n, data = probes.line()
        probes.sent[n] = time.monotonic_ns()
        sock.sendall(data)
        if not rx.conn.poll(10):
            raise RuntimeError(f"ping {n}: no output within 10 s")
        got = rx.conn.recv()
        assert got == n, (got, n)
        used.append(n)
    rx.notify.value = 0
    return used


def send_max(sock, rx, blob, words, timeout):
    """Sends `blob` (framed lines holding `words` words) at full speed;
    returns words/s until the last of their counts is out."""
    base = rx.lines.value
    t0 = time.monotonic()
    view = memoryview(blob)
    for i in range(0, len(blob), 1 << 20):
        sock.sendall(view[i:i + (1 << 20)])
    rx.wait_lines(base + words, timeout)
    return words / (time.monotonic() - t0)


class Input:
    """The input lines, framed, as one blob with each line's byte offset and
    a running count of words, so a chunk of lines is one slice."""

    def __init__(self, lines):
        frames = [frame(line) for line in lines]
        self.blob = b"".join(frames)
        self.n = len(frames)
        self.offsets = [0]
        self.words = [0]
        for f, line in zip(frames, lines):
            self.offsets.append(self.offsets[-1] + len(f))
            self.words.append(self.words[-1] + len(line.split()))
        self.words_per_line = self.words[-1] / self.n

    def lines(self, a, b):
        """(bytes, words) of lines a..b, counted from 0 and wrapping around."""
        parts, words = [], 0
        while a < b:
            i = a % self.n
            j = min(self.n, i + (b - a))
            parts.append(self.blob[self.offsets[i]:self.offsets[j]])
            words += self.words[j] - self.words[i]
            a += j - i
        return parts, words


def send_paced(sock, rx, inp, probes, lines_per_s, seconds, timeout):
    """Sends input lines at `lines_per_s` for `seconds`, every 0.5 ms what
    is due, plus a probe every k lines; returns a dict of what was sent."""
    k = max(1, round(lines_per_s / PROBES_PER_S))
    base = rx.lines.value
    expect = 0
    used = []
    sent = 0
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    while True:
        now = time.monotonic_ns()
        if now >= end:
            break
        due = int((now - t0) * lines_per_s / 1e9)
        if due <= sent:
            time.sleep(0.0002)
            continue
        parts, words = inp.lines(sent, due)
        expect += words
        chunk_probes = []
        for _ in range(sent // k, due // k):
            n, data = probes.line()
            chunk_probes.append(n)
            parts.append(data)
        expect += len(chunk_probes)
        data = b"".join(parts)
        stamp = time.monotonic_ns()
        for n in chunk_probes:
            probes.sent[n] = stamp
        used += chunk_probes
        sock.sendall(data)
        sent = due
    t_end = time.monotonic_ns()
    rx.wait_lines(base + expect, timeout)
    drain_ms = (time.monotonic_ns() - t_end) / 1e6
    elapsed = (t_end - t0) / 1e9
    return dict(used=used, offered_words_per_s=round(expect / elapsed), target_lines_per_s=round(lines_per_s),
                sent_lines_per_s=round(sent / elapsed), drain_ms=round(drain_ms, 1))


def latencies(probes, arrivals, used):
    lat = [arrivals[n] - probes.sent[n] for n in used if n in arrivals]
    r = percentiles(lat)
    r["lost"] = sum(1 for n in used if n not in arrivals)
    return r


def run_word_count(workers, resilient, args, inp, workdir):
    label = f"{workers}w-{'ckpt' if resilient else 'plain'}"
    wd = Path(workdir) / label
    wd.mkdir(parents=True)
    extra = []
    if resilient:
        (wd / "res").mkdir()
        extra = ["--run-with-resilience", "--resilience-dir", str(wd / "res"),
                 "--time-between-checkpoints", "1000000000"]
    rx = Receiver()
    cluster = Cluster(wd, "word_count", REPO / "examples" / "word_count", workers,
                      app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", rx.addr],
                      extra_flags=extra)
    result = dict(workers=workers, resilience=resilient, load_before=loadavg(), wake_delay=wake_delay())
    probes = Probes()
    socks = []
    try:
        cluster.start(60)
        socks = [socket.create_connection(("127.0.0.1", p)) for p in cluster.in_ports]
        for s in socks:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ping_pong(socks[0], rx, probes, 200)  # warm-up: sinks connected, code paths hot
        pp_used = ping_pong(socks[0], rx, probes, args.pings)
        # Only worker 0's source is driven: with 2 workers about half the
        # words cross to the other worker, so links are on the path.
        max_wps = send_max(socks[0], rx, inp.blob, inp.words[-1], args.timeout)
        result["max_words_per_s"] = round(max_wps)
        loads = {}
        for pct in args.loads:
            lines_per_s = max_wps * pct / 100 / inp.words_per_line
            loads[pct] = send_paced(socks[0], rx, inp, probes, lines_per_s, args.seconds, args.timeout)
            time.sleep(0.3)
        for s in socks:
            s.close()
        socks = []
        cluster.shutdown()
        arrivals = rx.finish()
        rx = None
        result["ping_pong"] = latencies(probes, arrivals, pp_used)
        result["loads"] = {}
        for pct, d in loads.items():
            r = latencies(probes, arrivals, d.pop("used"))
            r.update(d)
            result["loads"][str(pct)] = r
        result["load_after"] = loadavg()
        return label, result
    finally:
        for s in socks:
            s.close()
        cluster.stop()
        if rx is not None:
            rx.stop.set()
            rx.proc.join(5)


def stamp_lines(listener, wanted, deadline):
    """Reads lines from every connection to `listener` until `wanted` lines
    are in or `deadline` (monotonic s) passes; returns [(line, time_ns)],
    stamped with the wall clock when read."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    tails, got = {}, []
    while len(got) < wanted and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            if s is listener:
                c, _ = listener.accept()
                sel.register(c, selectors.EVENT_READ)
                tails[c] = b""
                continue
            data = s.recv(1 << 16)
            now = time.time_ns()
            if not data:
                sel.unregister(s)
                continue
            lines = (tails[s] + data).split(b"\n")
            tails[s] = lines.pop()
            got += [(line.decode(), now) for line in lines]
    sel.close()
    return got


def run_window_quiet(workers, accounts, workdir, range_ms, delay_ms):
    """How long after its end + delay each account's window came out, the
    input being quiet since one transaction per account was sent."""
    wd = Path(workdir) / f"window-{workers}w"
    wd.mkdir(parents=True)
    listener = socket.create_server(("127.0.0.1", free_port()))
    out = "127.0.0.1:%d" % listener.getsockname()[1]
    range_ns, delay_ns = range_ms * 1_000_000, delay_ms * 1_000_000
    cluster = Cluster(wd, "alerts_windowed", REPO / "examples" / "alerts_windowed", workers,
                      app_args=lambda c, i: ["--in", f"transactions@127.0.0.1:{c.in_ports[i]}", "--out", out,
                                             "--window-ms", str(range_ms), "--slide-ms", str(range_ms),
                                             "--delay-ms", str(delay_ms)])
    result = dict(workers=workers, range_ms=range_ms, delay_ms=delay_ms, windows=accounts, load_before=loadavg())
    try:
        cluster.start(60)
        names = [f"acct-{k}" for k in range(accounts)]
        data = b"".join(frame(f"{a},1".encode()) for a in names)
        with socket.create_connection(("127.0.0.1", cluster.in_ports[0])) as s:
            t_from = time.time_ns()
            s.sendall(data)
            t_to = time.time_ns()
            got = stamp_lines(listener, accounts, time.monotonic() + 4 * (range_ms + delay_ms) / 1000 + 10)
        cluster.shutdown()
    finally:
        cluster.stop()
        listener.close()
    # The event time lies in [t_from, t_to] (the sendall, plus the time
    # the worker takes to read it): lateness is measured from the latest
    # end + delay the sendall allows.
    late = [at - (tumbling_window_end_ns(line.split(" ")[0].encode(), t_to, range_ns, delay_ns) + delay_ns)
            for line, at in got]
    result.update(out=len(got), lateness=percentiles(late), send_us=round((t_to - t_from) / 1000),
                  after_input_ms=round((max(at for _, at in got) - t_to) / 1e6, 1) if got else None,
                  load_after=loadavg())
    return result


# --------------------------------------------------------------------------- report

def report(res):
    print(f"\nquoll latency, word count, TCP in and out (load average before/after each cluster)")
    print("| workers | checkpoints | max words/s | load | offered words/s | probes | p50 µs | p99 µs | p99.9 µs | max µs | drain ms | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in res["word_count"].items():
        ck = "1 s" if r["resilience"] else "off"
        la = f"{r['load_before'][0]} / {r['load_after'][0]}; sleep wakes late p99 {r['wake_delay']['p99_us']:.0f} µs"
        pp = r["ping_pong"]
        print(f"| {r['workers']} | {ck} | {r['max_words_per_s']:,} | ping-pong | - | {pp['n']} | {pp['p50_us']} | "
              f"{pp['p99_us']} | {pp['p999_us']} | {pp['max_us']} | - | {la} |")
        for pct, l in r["loads"].items():
            print(f"| {r['workers']} | {ck} | | {pct} % | {l['offered_words_per_s']:,} | {l['n']} | {l['p50_us']} | "
                  f"{l['p99_us']} | {l['p999_us']} | {l['max_us']} | {l['drain_ms']} | |")
    for w in res["window_quiet"]:
        lt = w["lateness"]
        print(f"\nwindow after quiet, {w['workers']} worker(s), {w['windows']} tumbling windows of {w['range_ms']} ms, "
              f"delay {w['delay_ms']} ms: {w['out']} out; after end + delay: p50 {lt.get('p50_us', 0) / 1000:.1f} ms, "
              f"max {lt.get('max_us', 0) / 1000:.1f} ms; last one {w['after_input_ms']} ms after the input "
              f"(load {w['load_before'][0]} / {w['load_after'][0]})")
    for name, ok in evaluate(res).items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


def evaluate(res):
    out = {}
    for label, r in res["word_count"].items():
        fifty = r["loads"].get("50")
        if fifty is None or r["resilience"]:
            continue
        limit = TARGETS[f"p99_50pct_{r['workers']}w_ms"] * 1000
        out[f"p99 at 50 % load on {r['workers']} worker(s) <= {limit / 1000:g} ms"] = fifty["p99_us"] <= limit
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers-list", default="1,2", help="cluster sizes (default 1,2)")
    p.add_argument("--modes", default="plain,ckpt", help="plain (no resilience), ckpt (checkpoints every 1 s)")
    p.add_argument("--loads", default="10,50,90", help="percentages of the measured maximum (default 10,50,90)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per load level (default 4)")
    p.add_argument("--pings", type=int, default=2000, help="ping-pong round trips (default 2000)")
    p.add_argument("--lines", type=int, default=200_000, help="input lines for the maximum (default 200,000)")
    p.add_argument("--window-accounts", type=int, default=50)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--report", help="print the tables of a results file and exit")
    args = p.parse_args(argv)
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    args.loads = [int(x) for x in args.loads.split(",")]

    path, _ = gen_input.ensure_input(lines=args.lines, quiet=True)
    inp = Input([line.encode() for line in Path(path).read_text().splitlines()])

    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               git=word_count_bench.git_rev(), engine=word_count_bench.engine_build(),
               python=platform.python_version(), cpus=os.cpu_count(),
               args=dict(seconds=args.seconds, pings=args.pings, lines=args.lines, loads=args.loads,
                         probes_per_s=PROBES_PER_S),
               word_count={}, window_quiet=[])
    with tempfile.TemporaryDirectory(prefix="quoll-latency-") as workdir:
        for workers in [int(x) for x in args.workers_list.split(",")]:
            for mode in args.modes.split(","):
                label, r = run_word_count(workers, mode == "ckpt", args, inp, workdir)
                res["word_count"][label] = r
                print(f"{label}: done (load {loadavg()[0]})", flush=True)
            res["window_quiet"].append(run_window_quiet(workers, args.window_accounts, workdir, 1000, 0))
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
