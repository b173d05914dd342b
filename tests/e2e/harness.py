"""Drive real quoll processes for end-to-end tests.

Everything here starts real processes (`machida3`, `quoll send`,
`quoll receive`) on loopback with free ports, and stops only the processes
it started, by PID. Worker output goes to files in the test's tmp dir so a
failing test can show it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from quoll.ports import free_port  # noqa: F401 (re-exported to the tests)

READY_LINE = "|~~ INIT PHASE III: Application is ready to work! ~~|"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _bin(name):
    """The console script `name` from the Python running the tests."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name) or name


QUOLL = _bin("quoll")
MACHIDA3 = _bin("machida3")


KEY_GROUPS = 1024
_U64 = (1 << 64) - 1


def stable_hash(key):
    """quoll's key hash, written here from its description (FNV-1a 64 over
    the key's bytes, then murmur3's fmix64 finaliser), independently of the
    engine's code: tests compare it with where the engine routes keys."""
    h = 0xcbf29ce484222325
    for b in key:
        h = ((h ^ b) * 0x100000001b3) & _U64
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & _U64
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & _U64
    return h ^ (h >> 33)


def key_owner(key, workers):
    """Index, in the sorted list of worker names, of the worker that owns
    `key` (bytes): the key groups are split into `workers` contiguous
    ranges of equal size."""
    return (stable_hash(key) % KEY_GROUPS) * workers // KEY_GROUPS


def moved_word_count_problems(outputs, truth):
    """`word_count_problems` for a cluster whose key groups moved (a grow,
    a shrink, a rebalance): a word's counts may be split over several
    outputs, but all of them together must be exactly 1..n, and within one
    output in increasing order."""
    counts, problems = {}, []
    for name, lines in outputs.items():
        last = {}
        for line in lines:
            word, _, n = line.rpartition(" => ")
            n = int(n)
            if n <= last.get(word, 0):
                problems.append(f"{name}: {word} => {n} after {last[word]}")
            last[word] = n
            counts.setdefault(word, []).append(n)
    for word, n in truth.items():
        got = sorted(counts.get(word, []))
        if got != list(range(1, n + 1)):
            problems.append(f"{word}: counts {got[:6]}... ({len(got)}), want 1..{n}")
    problems += [f"unexpected word {w}" for w in set(counts) - set(truth)]
    return problems


def placed_owner(res_dir, members):
    """A function from a key (bytes) to the index in `members` (the
    cluster's worker names, initializer first, the others sorted) of the
    worker that owns it: by the placement in the initializer's membership
    record (`*.cluster` in `res_dir`, docs/formats.md) if it holds one,
    else by the even split (`key_owner`)."""
    records = sorted(Path(res_dir).glob("*.cluster"))
    # The record's JSON follows the file's header (checksum, app, worker).
    raw = records[0].read_bytes() if records else b"{}"
    runs = json.loads(raw[raw.index(b'{"'):] if b'{"' in raw else b"{}").get("placement", [])
    if not runs:
        return lambda key: key_owner(key, len(members))
    owners = [members.index(run["worker"]) for run in runs for _ in range(run["groups"])]
    assert len(owners) == KEY_GROUPS, runs
    return lambda key: owners[stable_hash(key) % KEY_GROUPS]


def tumbling_window_end_ns(key, event_time_ns, range_ns, delay_ns):
    """End (exclusive) of the tumbling range window that holds a key's
    first message, from the documented grid (docs/wallaroo-compat.md,
    "Windows"): anchor = first event time - delay - an offset in
    [0, 0.8 x range) taken from the key's hash."""
    offset = (stable_hash(key) * (range_ns * 4 // 5)) >> 64
    anchor = event_time_ns - delay_ns - offset
    return anchor + ((event_time_ns - anchor) // range_ns + 1) * range_ns


def wait_until(predicate, timeout, what, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Proc:
    """A started process whose stdout/stderr go to files."""

    def __init__(self, args, workdir, label, env=None):
        self.args = [str(a) for a in args]
        self.label = label
        self.out_path = Path(workdir) / f"{label}.out"
        self.err_path = Path(workdir) / f"{label}.err"
        self.env = env
        self.workdir = workdir
        self.popen = None

    def start(self):
        self._out = open(self.out_path, "ab")
        self._err = open(self.err_path, "ab")
        self.popen = subprocess.Popen(self.args, stdout=self._out, stderr=self._err,
                                      stdin=subprocess.DEVNULL, cwd=self.workdir, env=self.env)
        return self

    def stdout(self):
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def stderr(self):
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout):
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout=10):
        if self.popen is None:
            return
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        self._err.close()

    def describe(self):
        return (f"--- {self.label} ({' '.join(self.args)}) rc={self.popen.poll() if self.popen else None}\n"
                f"stdout:\n{self.stdout()[-4000:]}\nstderr:\n{self.stderr()[-4000:]}")


class Receiver(Proc):
    """`quoll receive` writing what a sink sends to a file."""

    def __init__(self, workdir, label="receiver", framing="raw", port=None):
        self.port = port or free_port()
        self.output = Path(workdir) / f"{label}.data"
        super().__init__([QUOLL, "receive", "--listen", f"127.0.0.1:{self.port}", "--output", self.output,
                          "--framing", framing, "--report-interval", "0"], workdir, label)

    def start(self):
        super().start()
        wait_until(lambda: "listening on" in self.stderr(), 10, "the receiver to listen")
        return self

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def data(self):
        return self.output.read_bytes() if self.output.exists() else b""

    def lines(self):
        return self.data().decode("utf-8", "replace").splitlines()

    def wait_for_lines(self, n, timeout=30):
        wait_until(lambda: len(self.lines()) >= n, timeout, f"{n} output lines (have {len(self.lines())})")
        return self.lines()

    def settle(self, quiet=1.0, timeout=60):
        """Waits until the output has not grown for `quiet` seconds."""
        deadline = time.time() + timeout
        last, since = -1, time.time()
        while time.time() < deadline:
            size = len(self.data())
            if size != last:
                last, since = size, time.time()
            elif time.time() - since >= quiet:
                return self.lines()
            time.sleep(0.05)
        raise AssertionError("output never settled")


def send(port, path, framing="framed", extra=()):
    """Sends a file to a TCP source with `quoll send`; returns its stdout."""
    r = subprocess.run([QUOLL, "send", "--host", f"127.0.0.1:{port}", "--file", str(path),
                        "--framing", framing, *extra], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"quoll send failed: {r.stdout}\n{r.stderr}"
    return r.stdout


def send_lines(port, lines, workdir, framing="framed", label="input"):
    path = Path(workdir) / f"{label}-{port}.txt"
    path.write_text("".join(l + "\n" for l in lines))
    return send(port, path, framing)


def external_frame(port, request, payload=b"", timeout=5):
    """Sends one external-channel request of type `request` and returns the
    reply as (type, payload bytes). quoll's CLI has no command for most of
    these, so the frame is spoken here: u32 BE length (2 + payload), u16 BE
    type, payload."""
    import struct
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(struct.pack(">IH", 2 + len(payload), request) + payload)
        data = b""
        while len(data) < 6 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, "external channel closed before replying"
            data += chunk
    length, msg_type = struct.unpack(">IH", data[:6])
    return msg_type, data[6:4 + length]


def external_query(port, request, reply, timeout=5):
    """A worker's reply to a request of type `request`, which must be of
    type `reply`, its payload parsed as JSON."""
    import json
    msg_type, payload = external_frame(port, request, timeout=timeout)
    assert msg_type == reply, (msg_type, payload)
    return json.loads(payload.decode("utf-8"))


def report_status(port, timeout=5):
    """A worker's report-status (external type 16) reply: its counters."""
    return external_query(port, 16, 16, timeout)


def state_entities(port, timeout=5):
    """A worker's state-entity (external type 17/18) reply: stage index
    (a decimal string) -> the keys its state or windows hold there."""
    return external_query(port, 17, 18, timeout)


def wait_report(port, predicate, what, timeout=10):
    """Polls a worker's report-status until `predicate(report)`; returns
    the report (the last one is in the failure message)."""
    last = {}

    def ok():
        nonlocal last
        last = report_status(port)
        return predicate(last)

    try:
        wait_until(ok, timeout, what, interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last report: {last}")
    return last


def error_lines(text):
    """The `quoll: error:` lines of a worker's stderr."""
    return [l for l in text.splitlines() if l.startswith("quoll: error:")]


def word_count_problems(outputs, truth=None):
    """What is wrong with word count output (`word => n` lines), empty if
    nothing. `outputs` maps a name (a sink file, a receiver) to its lines
    in the order they were written. Each word's counts must all be in one
    output, and there exactly 1, 2, ..., n in that order, n being the
    word's count in `truth`: a word's outputs come from the one worker that
    owns its key, which processes a word's occurrences in order. So a
    count lost, doubled, or written out of order is a problem, and so is a
    word in two outputs or one that is not in `truth`. Without `truth`
    (output still growing), n is however many counts a word has so far."""
    seen = {}
    where = {}
    problems = []
    for name, lines in outputs.items():
        for i, line in enumerate(lines):
            word, sep, n = line.rpartition(" => ")
            if not sep or not n.isdigit():
                problems.append(f"{name} line {i + 1}: not 'word => n': {line!r}")
                continue
            if word in where and where[word] != name:
                problems.append(f"{word}: counts in {where[word]} and in {name}")
            where.setdefault(word, name)
            seen.setdefault(word, []).append(int(n))
    want = truth if truth is not None else {w: len(c) for w, c in seen.items()}
    for word, n in sorted(want.items()):
        got = seen.get(word, [])
        if got != list(range(1, n + 1)):
            bad = next((i for i, c in enumerate(got) if c != i + 1), len(got))
            problems.append(f"{word}: {_what_is_wrong(got, n)}: {len(got)} counts, want 1..{n}; from index {bad}: "
                            f"{got[bad:bad + 4]}")
    problems += [f"unexpected word {w!r} in {where[w]}" for w in sorted(set(seen) - set(want))]
    return problems


def _what_is_wrong(got, n):
    """Why a word's counts `got` are not 1..n: out of order (all there),
    counts missing, doubled, or beyond n."""
    if sorted(got) == list(range(1, n + 1)):
        return "out of order"
    missing = sorted(set(range(1, n + 1)) - set(got))
    doubled = sorted(c for c in set(got) if got.count(c) > 1)
    extra = sorted(c for c in set(got) if not 1 <= c <= n)
    parts = [f"{what} {cs[:6]}" for what, cs in (("missing", missing), ("doubled", doubled), ("beyond n", extra))
             if cs]
    return ", ".join(parts)


def assert_word_counts(outputs, truth, describe=lambda: ""):
    """Asserts `word_count_problems(outputs, truth)` is empty."""
    problems = word_count_problems(outputs, truth)
    total = sum(len(v) for v in outputs.values())
    assert not problems, (f"{len(problems)} problems in {total} output lines for {sum(truth.values())} words, "
                          f"e.g.\n  " + "\n  ".join(problems[:10]) + f"\n{describe()}")


def external(port, command, *extra):
    """Runs `quoll status|shutdown 127.0.0.1:PORT`."""
    return subprocess.run([QUOLL, command, f"127.0.0.1:{port}", *extra], capture_output=True, text=True, timeout=30)


class Cluster:
    """N workers of one app on loopback, each with its own --in port.

    `app_args(cluster, i)` gives worker i's application arguments (for example
    `--in NAME@127.0.0.1:PORT --out 127.0.0.1:PORT`); use `cluster.in_ports[i]`.
    """

    def __init__(self, workdir, module, pythonpath, workers=1, app_args=None, extra_flags=(), env=None):
        self.workdir = Path(workdir)
        self.module = module
        self.n = workers
        self.in_ports = [free_port() for _ in range(workers)]
        self.external_ports = [free_port() for _ in range(workers)]
        self.control = free_port()
        self.data = free_port()
        self.app_args = app_args or (lambda cluster, i: [])
        self.extra_flags = list(extra_flags)
        self.env = dict(os.environ if env is None else env)
        paths = [str(p) for p in ([pythonpath] if isinstance(pythonpath, (str, Path)) else pythonpath)]
        self.env["PYTHONPATH"] = os.pathsep.join(paths + [self.env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.workers = []

    def command(self, i):
        base = [MACHIDA3, "--application-module", self.module, "--external", f"127.0.0.1:{self.external_ports[i]}",
                "--ponythreads", "1"]
        if i == 0:
            base += ["--cluster-initializer", "--name", "initializer"]
            if self.n > 1:
                base += ["--worker-count", str(self.n), "--control", f"127.0.0.1:{self.control}",
                         "--data", f"127.0.0.1:{self.data}"]
        else:
            base += ["--name", f"worker{i}", "--control", f"127.0.0.1:{self.control}"]
        return base + self.extra_flags + list(self.app_args(self, i))

    def start(self, timeout=30):
        for i in range(self.n):
            self.workers.append(Proc(self.command(i), self.workdir, f"worker{i}", env=self.env).start())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30):
        for w in self.workers:
            try:
                wait_until(lambda: READY_LINE in w.stdout() or not w.alive(), timeout, f"{w.label} to be ready")
            except AssertionError:
                raise AssertionError(self.describe())
            assert w.alive(), f"{w.label} exited during start-up\n{self.describe()}"

    def shutdown(self, timeout=20):
        """Clean shutdown through worker 0's external channel; waits for all to exit."""
        external(self.external_ports[0], "shutdown")
        for w in self.workers:
            try:
                w.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{w.label} did not stop after a clean shutdown\n{self.describe()}")

    def stop(self):
        for w in self.workers:
            w.stop()

    def describe(self):
        return "\n".join(w.describe() for w in self.workers)


def pytest_report(procs):
    return "\n".join(p.describe() for p in procs)


def scrape(port, timeout=5):
    """GET /metrics of the worker whose --metrics-listen port is `port`:
    the raw text and its samples as {(name, ((label, value), ...)): float}
    (labels sorted). The text format is parsed here, independently of the
    engine's encoder."""
    import re
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode("utf-8")
    samples = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = tuple(sorted(label_re.findall(m.group(2) or "")))
        samples[(m.group(1), labels)] = float(m.group(3))
    return text, samples


def metric(samples, name, **labels):
    """Sum of the samples named `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))
