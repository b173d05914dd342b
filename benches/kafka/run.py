#!/usr/bin/env python3
"""Kafka benchmark: Kafka in -> word count -> Kafka out, quoll beside Bytewax.

One tansu broker on 127.0.0.1 (tests/kafka/broker.py, memory storage) holds
an input topic of `--partitions` partitions, filled once before any run with
the word count benchmark's lines (benches/word_count/gen_input.py), spread
evenly. Every run reads it from its beginning and writes `word => count`
records, keyed by the word, to a fresh output topic of as many partitions:

  quoll    examples/kafka/word_count_kafka.py, unmodified, on 1 and 2
           machida3 workers;
             plain      no resilience: an idempotent producer, at least once,
                        with --counts_max_produce_buffer_ms 5 (librdkafka's
                        default linger, which Bytewax's producer has);
             unbuffered the same with Wallaroo's default buffer time, 0 ms;
             resilient  --run-with-resilience, a checkpoint every 1 s: a
                        transaction per checkpoint, exactly once;
  bytewax  Bytewax 0.21.1's KafkaSource/KafkaSink (bytewax_kafka_wc.py,
           the same user functions), 1 and 2 processes, in its own venv;
             plain      no recovery;
             resilient  recovery, 1 s snapshots (-s 1 -b 0); its sink has
                        no transactions, so this is still at least once.

The clock runs from the first output record to the moment the output holds
one committed record per input word, as a tail reader sees them: one
thread per output partition fetches the new record batches (Fetch v4, the
protocol code of tests/kafka/committed_reader.py) and counts records by
batch header, a transactional batch only once its producer's COMMIT marker
follows (tansu hands aborted records to read_committed clients, so the
rule is applied here). Start-up is outside the clock. CPU per word is the
user+system time of the engine's processes over the same window, from
/proc/PID/stat; the broker's is given apart. After the clock stops, the
whole output is read once more (committed_reader.read_committed) and
checked: each word's counts must be exactly 1, 2, ..., n in order.

Configurations run alternately (repeat by repeat, the two engines back to
back), so paired ratios share the machine's load; medians and ranges over
repeats are printed, and the JSON (results.json here by default) keeps
every run and the load average.

    .venv/bin/python benches/kafka/run.py [--lines 400000] [--repeats 3]
        [--workers 1,2] [--engines quoll,bytewax] [--modes plain,unbuffered,resilient]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(REPO / "benches" / "peers"), str(REPO / "tests" / "kafka")]

from common import BYTEWAX_VERSION, bytewax_version, ensure_bytewax, load_word_count_bench  # noqa: E402

wc = load_word_count_bench()  # puts benches/word_count and tests/e2e on sys.path
import gen_input  # noqa: E402
from broker import Broker, broker_bin  # noqa: E402
from committed_reader import ATTR_CONTROL, ATTR_TRANSACTIONAL, CONTROL_COMMIT, Connection, read_committed  # noqa: E402
from harness import EXAMPLES, READY_LINE, Cluster, Proc, external, free_port, wait_until  # noqa: E402

CHECKPOINT_NS = 1_000_000_000
ENGINES = ("quoll", "bytewax")
MODES = ("plain", "unbuffered", "resilient")
# Which engines run a mode: `unbuffered` is quoll's plain mode with
# Wallaroo's default sink buffer time (0 ms), to show what it costs.
MODE_ENGINES = {"plain": ENGINES, "unbuffered": ("quoll",), "resilient": ENGINES}
PLAIN_BUFFER_MS = 5
GUARANTEE = {("quoll", "plain"): f"at-least-once, {PLAIN_BUFFER_MS} ms buffer",
             ("quoll", "unbuffered"): "at-least-once, 0 ms buffer",
             ("quoll", "resilient"): "exactly-once",
             ("bytewax", "plain"): "at-least-once", ("bytewax", "resilient"): "at-least-once, recovery"}


# --------------------------------------------------------------------------- input

def fill_input(broker: Broker, topic: str, partitions: int, path: Path) -> int:
    """Writes every line of `path` to `topic`, line i to partition
    i % partitions; returns the line count."""
    from confluent_kafka import Producer

    broker.create_topic(topic, partitions)
    p = Producer({"bootstrap.servers": broker.address, "linger.ms": 50, "batch.num.messages": 10000,
                  "queue.buffering.max.messages": 1_000_000})
    n = 0
    with open(path, "rb") as f:
        for line in f:
            while True:
                try:
                    p.produce(topic, line.rstrip(b"\n"), partition=n % partitions)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 10000 == 0:
                p.poll(0)
    if p.flush(120):
        raise RuntimeError(f"the input to {topic} was not all delivered")
    return n


# --------------------------------------------------------------------------- output tail

# A record batch (v2) after its base offset and length: leader epoch,
# magic, crc, attributes, last offset delta, two timestamps, producer id,
# producer epoch, base sequence, record count.
BATCH_HEADER = struct.Struct(">ibIhiqqqhii")


def _varint(raw: bytes, pos: int) -> Tuple[int, int]:
    """A zigzag varint at `pos`: (value, position after it)."""
    shift = value = 0
    while True:
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7


def control_type(raw: bytes, pos: int) -> int:
    """The marker type (COMMIT or ABORT) of the control record at `pos`."""
    _, pos = _varint(raw, pos)  # record length
    pos += 1  # attributes
    _, pos = _varint(raw, pos)  # timestamp delta
    _, pos = _varint(raw, pos)  # offset delta
    _, pos = _varint(raw, pos)  # key length
    return struct.unpack_from(">hh", raw, pos)[1]


GAP_WAIT_S = 1.0


class Tail:
    """Follows one output topic, a thread per partition (see the module
    docs). `first` (the first record), `all_out` (every record written,
    committed or not) and `done` (every record committed) are perf_counter
    times; `on_first` and `on_done` run at those instants (in the tail's
    thread)."""

    def __init__(self, address: str, topic: str, partitions: int, expected: int,
                 on_first: Callable[[], None], on_done: Callable[[], None]) -> None:
        host, port = address.rsplit(":", 1)
        self.addr = (host, int(port))
        self.topic, self.expected = topic, expected
        self.on_first, self.on_done = on_first, on_done
        self.lock = threading.Lock()
        self.committed = 0
        self.produced = 0
        self.first: Optional[float] = None
        self.all_out: Optional[float] = None
        self.done: Optional[float] = None
        self.error: Optional[BaseException] = None
        self.halt = threading.Event()
        self.threads = [threading.Thread(target=self._follow, args=(p,), daemon=True) for p in range(partitions)]
        for t in self.threads:
            t.start()

    def _add(self, produced: int, committed: int) -> None:
        now = time.perf_counter()
        with self.lock:
            if produced and self.first is None:
                self.first = now
                self.on_first()
            self.produced += produced
            if self.all_out is None and self.produced >= self.expected:
                self.all_out = now
            self.committed += committed
            if self.done is None and self.committed >= self.expected:
                self.done = now
                self.on_done()

    def _follow(self, partition: int) -> None:
        offset = 0
        pending: Dict[int, int] = {}  # producer id -> records of its open transaction
        # tansu can make a batch visible before an earlier one of another
        # producer (seen with 2 workers writing one partition): a fetch then
        # starts past `offset`. The records in between come a moment later,
        # so a gap is waited out (GAP_WAIT_S) before it is skipped.
        gap_since: Optional[float] = None
        try:
            with Connection(*self.addr) as conn:
                while not self.halt.is_set():
                    high, raw = conn.fetch(self.topic, partition, offset)
                    produced, committed, pos = 0, 0, 0
                    while len(raw) - pos >= 12:
                        base, length = struct.unpack_from(">qi", raw, pos)
                        end = pos + 12 + length
                        if end > len(raw):
                            break  # a fetch may end inside a batch
                        if base > offset:
                            now = time.monotonic()
                            gap_since = gap_since if gap_since is not None else now
                            if now - gap_since < GAP_WAIT_S:
                                break
                        gap_since = None
                        _, _, _, attrs, last_delta, _, _, producer, _, _, count = BATCH_HEADER.unpack_from(raw, pos + 12)
                        if base + last_delta >= offset:
                            if attrs & ATTR_CONTROL:
                                n = pending.pop(producer, 0)
                                if control_type(raw, pos + 12 + BATCH_HEADER.size) == CONTROL_COMMIT:
                                    committed += n
                            elif attrs & ATTR_TRANSACTIONAL:
                                pending[producer] = pending.get(producer, 0) + count
                                produced += count
                            else:
                                committed += count
                                produced += count
                            offset = base + last_delta + 1
                        pos = end
                    if gap_since is not None:
                        time.sleep(0.005)
                    elif pos == 0 and raw and offset < high:
                        raise RuntimeError(f"{self.topic}/{partition}: a batch at {offset} is larger than a fetch")
                    if produced or committed:
                        self._add(produced, committed)
        except BaseException as e:  # reported by the run, which stops waiting
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=5)


def check_output(address: str, topic: str, counts: Dict[str, int]) -> Dict[str, Any]:
    """The committed output against the true counts: each word's records
    must say `word => 1`, ..., `word => n` in order, n its count."""
    seen: Dict[str, int] = {}
    problems: List[str] = []
    records = read_committed(address, topic)
    for r in records:
        word, _, n = (r.value or b"").decode().partition(" => ")
        if not n.isdigit() or int(n) != seen.get(word, 0) + 1:
            if len(problems) < 10:
                problems.append(f"partition {r.partition} offset {r.offset}: {r.value!r} after {seen.get(word, 0)}")
            continue
        seen[word] = int(n)
    short = [w for w, n in counts.items() if seen.get(w, 0) != n]
    problems += [f"{w}: {seen.get(w, 0)} of {counts[w]}" for w in short[:10]]
    return dict(exact=not problems and len(records) == sum(counts.values()), records=len(records),
                problems=problems)


# --------------------------------------------------------------------------- processes

def cpu_s(pid: int) -> Optional[float]:
    try:
        return wc.proc_cpu_s(pid)
    except (OSError, ValueError, IndexError):
        return None


def reap(proc: Proc, timeout: float) -> Dict[str, Any]:
    """Waits for `proc` to exit (killed after `timeout` s); its exit code
    and whole-life CPU seconds, from wait4()."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.popen.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.popen.kill()
            deadline = float("inf")
        time.sleep(0.01)
    proc.popen.returncode = os.waitstatus_to_exitcode(status)
    proc.stop()  # closes its log files
    return dict(name=proc.label, rc=proc.popen.returncode, cpu_s=ru.ru_utime + ru.ru_stime,
                peak_rss_mb=ru.ru_maxrss / 1024.0)


class QuollRun:
    def __init__(self, rd: Path, n: int, mode: str, broker: str, in_topic: str, out_topic: str) -> None:
        flags = []
        if mode == "resilient":
            (rd / "res").mkdir()
            flags = ["--run-with-resilience", "--resilience-dir", str(rd / "res"),
                     "--time-between-checkpoints", str(CHECKPOINT_NS)]
        args = ["--lines_topic", in_topic, "--lines_brokers", broker,
                "--counts_topic", out_topic, "--counts_brokers", broker]
        if mode == "plain":
            # librdkafka's default buffer time, which Bytewax's producer has.
            args += ["--counts_max_produce_buffer_ms", str(PLAIN_BUFFER_MS)]
        self.cluster = Cluster(rd, "word_count_kafka", EXAMPLES / "kafka", n, lambda c, i: args, extra_flags=flags)
        self.rd, self.n = rd, n
        self.procs: List[Proc] = []

    def start(self) -> None:
        c = self.cluster
        self.procs = c.workers = [Proc(c.command(i), self.rd, f"worker{i}", env=c.env).start() for i in range(self.n)]

    def ready(self) -> None:
        for w in self.procs:
            wait_until(lambda: READY_LINE in w.stdout() or not w.alive(), 60, f"{w.label} to be ready")

    def finish(self) -> List[Dict[str, Any]]:
        external(self.cluster.external_ports[0], "shutdown")
        return [reap(w, 30) for w in self.procs]


class BytewaxRun:
    def __init__(self, rd: Path, n: int, mode: str, broker: str, in_topic: str, out_topic: str,
                 python: str) -> None:
        self.rd, self.n = rd, n
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            str(p) for p in (HERE, EXAMPLES / "kafka", REPO / "benches" / "word_count", REPO / "python")))
        base = [python, "-m", "bytewax.run", f"bytewax_kafka_wc:get_flow({broker!r}, {in_topic!r}, {out_topic!r})"]
        if mode == "resilient":
            res = rd / "res"
            res.mkdir()
            subprocess.run([python, "-m", "bytewax.recovery", str(res), str(n)], check=True, env=self.env,
                           capture_output=True)
            base += ["-r", str(res), "-s", str(CHECKPOINT_NS // 1_000_000_000), "-b", "0"]
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(n))
        self.commands = [base + (["-i", str(i), "-a", addresses] if n > 1 else []) for i in range(n)]
        self.procs: List[Proc] = []

    def start(self) -> None:
        self.procs = [Proc(cmd, self.rd, f"bytewax{i}", env=self.env).start() for i, cmd in enumerate(self.commands)]

    def ready(self) -> None:
        pass

    def finish(self) -> List[Dict[str, Any]]:
        # tail=False: each process exits once its partitions are read.
        return [reap(w, 60) for w in self.procs]


# --------------------------------------------------------------------------- one run

def run_one(engine: str, n: int, mode: str, broker: Broker, partitions: int, in_topic: str, tag: str,
            counts: Dict[str, int], workdir: Path, bytewax_python: Optional[str], timeout: float) -> Dict[str, Any]:
    out_topic = f"counts-{tag}"
    broker.create_topic(out_topic, partitions)
    rd = Path(tempfile.mkdtemp(prefix=f"{tag}-{engine}-{n}-{mode}-", dir=workdir))
    run: Any = (QuollRun(rd, n, mode, broker.address, in_topic, out_topic) if engine == "quoll"
                else BytewaxRun(rd, n, mode, broker.address, in_topic, out_topic, bytewax_python or ""))
    words = sum(counts.values())
    pids: List[int] = []
    cpu_at: Dict[str, Tuple[List[Optional[float]], Optional[float]]] = {}

    def sample(when: str) -> Callable[[], None]:
        def f() -> None:
            cpu_at[when] = ([cpu_s(p) for p in pids], cpu_s(broker.proc.pid))
        return f

    tail = Tail(broker.address, out_topic, partitions, words, sample("first"), sample("done"))
    t0 = time.perf_counter()
    try:
        run.start()
        pids[:] = [p.popen.pid for p in run.procs]
        run.ready()
        deadline = time.monotonic() + timeout
        while tail.done is None:
            if tail.error is not None:
                raise RuntimeError(f"{engine} {n}p {mode}: reading the output failed: {tail.error!r}")
            dead = [p for p in run.procs if p.popen.poll() not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{engine} {n}p {mode}: {'a process failed' if dead else 'timed out'} "
                                   f"({tail.committed:,} of {words:,} records out)\n"
                                   + "\n".join(p.describe() for p in run.procs))
            time.sleep(0.02)
        ended = run.finish()
    except BaseException:
        for p in run.procs:
            if p.alive():
                p.popen.kill()
                p.popen.wait()
        print(f"logs kept in {rd}", file=sys.stderr)
        raise
    finally:
        tail.stop()
    assert tail.first is not None and tail.done is not None
    (first_cpu, broker_first), (done_cpu, broker_done) = cpu_at["first"], cpu_at["done"]
    # A process that exited before the last record was seen (Bytewax's do,
    # at their input's end) counts with its whole-life CPU.
    life = {e["name"]: e["cpu_s"] for e in ended}
    window_cpu = sum((d if d is not None else life[p.label]) - (f or 0.0)
                     for p, f, d in zip(run.procs, first_cpu, done_cpu))
    wall = tail.done - tail.first
    check = check_output(broker.address, out_topic, counts)
    # tansu keeps topics in memory; no client of this one is left.
    subprocess.run([broker.bin, "topic", "delete", "--broker", f"tcp://{broker.address}", out_topic],
                   capture_output=True, timeout=30, check=True)
    if check["exact"]:
        shutil.rmtree(rd, ignore_errors=True)
    else:
        print(f"WRONG OUTPUT of {engine} {n}p {mode}: {check['problems'][:3]}; logs kept in {rd}", file=sys.stderr)
    return dict(
        engine=engine, procs=n, mode=mode, guarantee=GUARANTEE[(engine, mode)], out_topic=out_topic,
        wall_s=wall, words=words, words_per_s=words / wall, launch_to_first_output_s=tail.first - t0,
        # The clock up to the last record written (committed or not): the
        # rest of wall_s is the wait for the last transaction's commit.
        words_per_s_written=words / ((tail.all_out or tail.done) - tail.first),
        cpu_s=window_cpu, cpu_us_per_word=window_cpu / words * 1e6,
        broker_cpu_us_per_word=((broker_done - broker_first) / words * 1e6
                                if broker_done is not None and broker_first is not None else None),
        life_cpu_s=sum(life.values()), peak_rss_mb=max(e["peak_rss_mb"] for e in ended),
        loadavg=os.getloadavg(), output=check,
    )


# --------------------------------------------------------------------------- report

def span(values: List[float], spec: str) -> str:
    """`low-high` of the values, formatted (`low to high` if low < 0)."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}{' to ' if min(values) < 0 else '-'}{hi}"


def paired(runs: List[Dict[str, Any]], num: Tuple[str, int, str], den: Tuple[str, int, str],
           field: str) -> List[float]:
    """Per repeat, num's `field` over den's (run back to back)."""
    by: Dict[int, Dict[Tuple[str, int, str], Dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["repeat"], {})[(r["engine"], r["procs"], r["mode"])] = r
    return [rep[num][field] / rep[den][field] for rep in by.values() if num in rep and den in rep]


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    groups: Dict[Tuple[str, int, str], List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["engine"], r["procs"], r["mode"]), []).append(r)
    out: Dict[str, Any] = {}
    for (engine, n, mode), rs in groups.items():
        def med(f: str) -> Optional[float]:
            vals = [r[f] for r in rs if r[f] is not None]
            return statistics.median(vals) if vals else None

        out[f"{engine}/{n}/{mode}"] = dict(
            engine=engine, procs=n, mode=mode, guarantee=GUARANTEE[(engine, mode)], repeats=len(rs),
            words_per_s_median=med("words_per_s"), words_per_s_all=[r["words_per_s"] for r in rs],
            words_per_s_written_median=med("words_per_s_written"),
            cpu_us_per_word_median=med("cpu_us_per_word"), cpu_us_per_word_all=[r["cpu_us_per_word"] for r in rs],
            broker_cpu_us_per_word_median=med("broker_cpu_us_per_word"),
            launch_to_first_output_s_all=[r["launch_to_first_output_s"] for r in rs],
            exact=all(r["output"]["exact"] for r in rs))
    for n in sorted({r["procs"] for r in runs}):
        for mode in MODES:
            w = paired(runs, ("quoll", n, mode), ("bytewax", n, mode), "words_per_s")
            c = paired(runs, ("quoll", n, mode), ("bytewax", n, mode), "cpu_us_per_word")
            if w:
                out[f"quoll_over_bytewax/{n}/{mode}"] = dict(words_per_s=w, cpu_per_word=c,
                                                             words_per_s_median=statistics.median(w))
        for engine in ENGINES:
            w = paired(runs, (engine, n, "resilient"), (engine, n, "plain"), "words_per_s")
            ww = paired(runs, (engine, n, "resilient"), (engine, n, "plain"), "words_per_s_written")
            c = paired(runs, (engine, n, "resilient"), (engine, n, "plain"), "cpu_us_per_word")
            if w:
                out[f"resilience_cost/{engine}/{n}"] = dict(
                    words_per_s_lower_pct=[(1 - x) * 100 for x in w],
                    median_pct=statistics.median([(1 - x) * 100 for x in w]),
                    written_words_per_s_lower_pct=[(1 - x) * 100 for x in ww],
                    written_median_pct=statistics.median([(1 - x) * 100 for x in ww]),
                    cpu_per_word_higher_pct=[(x - 1) * 100 for x in c])
    return out


def report(res: Dict[str, Any]) -> str:
    m, summ = res["meta"], res["summary"]
    lines = [f"Kafka word count, quoll vs Bytewax {BYTEWAX_VERSION}: {m['lines']:,} lines, {m['words']:,} words, "
             f"{m['partitions']} partitions in and out, tansu on loopback; {m['cpus']} CPUs; quoll git {m['git']}; "
             f"{m['repeats']} repeat(s): median (range)", ""]
    hdr = (f"{'engine':<9}{'procs':>6}  {'guarantee':<30}{'words/s':>10}{'(range)':>20}{'written/s':>11}"
           f"{'CPU us/word':>13}{'(range)':>14}{'broker us/w':>12}{'exact':>7}")
    lines += [hdr, "-" * len(hdr)]
    for n in m["workers"]:
        for mode in MODES:
            for engine in ENGINES:
                s = summ.get(f"{engine}/{n}/{mode}")
                if not s:
                    continue
                b = s["broker_cpu_us_per_word_median"]
                lines.append(
                    f"{engine:<9}{n:>6}  {s['guarantee']:<30}{s['words_per_s_median']:>10,.0f}"
                    f"{'(' + span(s['words_per_s_all'], ',.0f') + ')':>20}{s['words_per_s_written_median']:>11,.0f}"
                    f"{s['cpu_us_per_word_median']:>13.2f}"
                    f"{'(' + span(s['cpu_us_per_word_all'], '.2f') + ')':>14}"
                    f"{(format(b, '.2f') if b is not None else '-'):>12}{'yes' if s['exact'] else 'NO':>7}")
    lines += ["", "quoll / Bytewax, paired per repeat: words/s (CPU per word):"]
    for n in m["workers"]:
        for mode in MODES:
            q = summ.get(f"quoll_over_bytewax/{n}/{mode}")
            if q:
                lines.append(f"  {n}p {mode:<10} x{span(q['words_per_s'], '.2f')} "
                             f"(CPU per word x{span(q['cpu_per_word'], '.2f')})")
    lines += ["", "resilience cost (resilient vs plain, paired per repeat), words/s lower by:"]
    for engine in ENGINES:
        for n in m["workers"]:
            c = summ.get(f"resilience_cost/{engine}/{n}")
            if c:
                lines.append(f"  {engine:<8}{n}p  {span(c['words_per_s_lower_pct'], '.0f')} % "
                             f"(median {c['median_pct']:.0f} %); to the last record written "
                             f"{span(c['written_words_per_s_lower_pct'], '.0f')} % "
                             f"(median {c['written_median_pct']:.0f} %); CPU per word "
                             f"{span(c['cpu_per_word_higher_pct'], '+.0f')} %")
    lines += ["", f"load average at start {m['loadavg_start']}, at end {m['loadavg_end']}",
              "words/s: words / (first output record -> the output holds every committed count);",
              "written/s: the same up to the last record written, committed or not (exactly-once output",
              "is visible only once its checkpoint's transaction commits, up to a checkpoint interval later);",
              "CPU: user+system of the engine's processes over that window; broker: tansu's over it."]
    bad = [f"{r['engine']} {r['procs']}p {r['mode']}" for r in res["runs"] if not r["output"]["exact"]]
    if bad:
        lines += ["", "WRONG OUTPUT in: " + ", ".join(bad)]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=400_000, help="input lines (default 400,000)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input and output topics")
    p.add_argument("--workers", default="1,2", help="process counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--timeout", type=float, default=600, help="seconds a run may take")
    p.add_argument("--bytewax-python", default=getattr(sys, "_base_executable", sys.executable),
                   help="the Python the Bytewax venv is made with (default: this one's base)")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier run's results and exit")
    a = p.parse_args(argv)
    if a.report:
        print(report(json.loads(Path(a.report).read_text())))
        return 0
    workers = [int(x) for x in a.workers.split(",") if x]
    engines = [e for e in a.engines.split(",") if e]
    modes = [m for m in a.modes.split(",") if m]
    bin_path = broker_bin()
    if not bin_path:
        sys.exit("no Kafka broker binary: run scripts/kafka-broker.sh or set QUOLL_KAFKA_BROKER")
    bytewax_python = ensure_bytewax(a.bytewax_python, extras=("kafka",)) if "bytewax" in engines else None
    input_path, meta = gen_input.ensure_input(lines=a.lines)
    counts = wc.word_counts(input_path)
    res: Dict[str, Any] = dict(meta=dict(
        lines=a.lines, words=meta["total_words"], distinct_words=len(counts), partitions=a.partitions,
        workers=workers, repeats=a.repeats, checkpoint_s=CHECKPOINT_NS / 1e9, cpus=os.cpu_count(),
        machine=platform.machine(), kernel=platform.release(), git=wc.git_rev(), engine=wc.engine_build(),
        python_version=platform.python_version(),
        bytewax=bytewax_version(bytewax_python) if bytewax_python else None,
        when=datetime.datetime.now().isoformat(timespec="seconds"), loadavg_start=os.getloadavg(),
    ), runs=[])
    workdir = Path(tempfile.mkdtemp(prefix="quoll-kafka-bench-"))
    with Broker(bin_path) as broker:
        t = time.perf_counter()
        fill_input(broker, "lines", a.partitions, input_path)
        print(f"kafka: {a.lines:,} lines in topic 'lines' ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        k = 0
        for rep in range(a.repeats):
            for n in workers:
                for mode in modes:
                    for engine in [e for e in engines if e in MODE_ENGINES[mode]]:
                        k += 1
                        print(f"kafka: repeat {rep + 1}, {engine} {n}p {mode} ...", file=sys.stderr)
                        r = run_one(engine, n, mode, broker, a.partitions, "lines", str(k), counts, workdir,
                                    bytewax_python, a.timeout)
                        r["repeat"] = rep
                        res["runs"].append(r)
                        print(f"kafka:   {r['words_per_s']:,.0f} words/s, {r['cpu_us_per_word']:.2f} CPU us/word "
                              f"(broker {r['broker_cpu_us_per_word'] or 0:.2f}), first output after "
                              f"{r['launch_to_first_output_s']:.1f} s, exact: {r['output']['exact']}",
                              file=sys.stderr)
    if all(r["output"]["exact"] for r in res["runs"]):
        shutil.rmtree(workdir, ignore_errors=True)
    res["meta"]["loadavg_end"] = os.getloadavg()
    res["summary"] = summarise(res["runs"])
    print(report(res))
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nresults written to {a.out}")
    return 0 if all(r["output"]["exact"] for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
