"""Resilience files on disk (docs/formats.md, "Resilience files";
docs/architecture.md, "Recovery"), with real worker processes.

The app (apps/wc_app.py) counts words read through quoll's replayable
file source and writes `word => count` lines through the exactly-once file
sink, so the final output can be checked exactly: every word's counts must
be 1..n, in order, each once, n being its true count.

The kills that test recovery land mid-stream (the app sleeps per line):
after a few checkpoints committed, with input left, and with output written
after the last commit, which recovery must cut away before the replay
writes it again. Each such test checks that the kill left such output
(reading the committed sink length from the checkpoint file).

What is checked:

- damaged files after a SIGKILL of every worker (a checkpoint file cut
  short, a flipped byte in a checkpoint file, a checkpoint file the chain
  needs deleted, a flipped byte in the commit log) are never loaded: the
  worker that owns the file exits non-zero with an error naming the file
  and the problem, the output files are left as they were, and once the
  file is restored from a backup the same command recovers and the counts
  are exact. Damage to a checkpoint that is not committed is harmless;
- a `*.tmp` left by a crash mid-write is ignored;
- a clean shutdown removes every resilience file of the app (and nothing
  else), and the next start begins from zero;
- a file of another worker or app is refused ("belongs to ...");
- without `--run-with-resilience` nothing is written;
- the log lines of recovery (`****RESILIENCE MODE is active****`,
  `RESILIENCE: Replayed N entries from recovery log file.`), N being
  exactly the number of words whose counts are in the worker's committed
  output;
- checkpoints keep being taken while a backlog of slow input is processed.

The checkpoint files and the commit log are parsed here (framing: u32 LE
length, u32 LE crc32, postcard payload; see
crates/quoll-core/src/checkpoint_store.rs) so that each test knows which
checkpoint is committed, which files its chain uses and which record a
damaged byte falls in, and can expect the exact error message.
"""

import collections
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import READY_LINE, Proc, wait_until, word_count_problems

APPS = Path(__file__).resolve().parent / "apps"
APP = "wc app"
STEM = "wc_app"  # the app name as file names spell it (sanitized)
INTERVAL_NS = 100_000_000  # 100 ms between checkpoints
# For kills mid-stream: 0.1 ms per line (about 10,000 lines/s per worker)
# and a checkpoint every 300 ms. A worker hands its sinks the output of up to
# 1024 input lines at a time (~0.1 s here), and a checkpoint can only begin
# between two such batches; with about three batches per checkpoint, output
# written after the last checkpoint is on disk most of the time.
SLOW = ["--line-delay", "0.0001"]
SLOW_INTERVAL_NS = 300_000_000
ACTIVE = "****RESILIENCE MODE is active****"
REPLAYED = re.compile(r"RESILIENCE\: Replayed (\d+) entries from recovery log file\.")
ADVICE = "delete the resilience directory to start fresh, or restore it from a backup"


# ---------------------------------------------------------------- input and output

def make_input(workdir, names, lines, seed=1, hot=()):
    """One framed input file per worker (4-byte big-endian length + line);
    returns the true word counts. With `hot` words, four words in five are
    drawn from them."""
    rng = random.Random(seed)
    vocab = [f"w{i:03d}" for i in range(300)]
    truth = collections.Counter()

    def word():
        return rng.choice(hot if hot and rng.random() < 0.8 else vocab)
    for name in names:
        with open(Path(workdir) / f"in-{name}.bin", "wb") as f:
            for _ in range(lines):
                words = [word() for _ in range(rng.randint(1, 6))]
                truth.update(words)
                line = " ".join(words).encode()
                f.write(len(line).to_bytes(4, "big") + line)
    return truth


def out_files(workdir):
    return sorted(Path(workdir).glob("out-*.txt"))


def out_lines(workdir):
    lines = []
    for p in out_files(workdir):
        lines += p.read_text().splitlines()
    return lines


# ---------------------------------------------------------------- the files

def varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def short_str(buf, i):
    n, i = varint(buf, i)
    return buf[i:i + n].decode(), i + n


def records(path):
    """[(offset, payload length, payload)] of a framed resilience file."""
    data = Path(path).read_bytes()
    out, off = [], 0
    while off + 8 <= len(data):
        n = int.from_bytes(data[off:off + 4], "little")
        if off + 8 + n > len(data):
            break  # cut short (being appended to while read)
        out.append((off, n, data[off + 8:off + 8 + n]))
        off += 8 + n
    return out


def ckpt_header(path):
    payload = records(path)[0][2]
    tag, i = varint(payload, 0)
    assert tag == 0, f"{path}: record 1 is not a header"
    _version, i = varint(payload, i)
    app, i = short_str(payload, i)
    worker, i = short_str(payload, i)
    checkpoint, i = varint(payload, i)
    kind, i = varint(payload, i)
    return {"app": app, "worker": worker, "checkpoint": checkpoint,
            "parent": varint(payload, i)[0] if kind == 1 else None}


def commit_log_path(res, stem=STEM):
    return Path(res) / f"{stem}-initializer.commits"


def last_committed(res, stem=STEM):
    """The newest checkpoint the commit log names (None: none yet)."""
    path = commit_log_path(res, stem)
    if not path.exists():
        return None
    committed = None
    for _, _, payload in records(path)[1:]:
        if payload and payload[0] == 1:
            committed = varint(payload, 1)[0]
    return committed


def ckpt_path(res, worker, checkpoint, stem=STEM):
    return Path(res) / f"{stem}-{worker}.ckpt-{checkpoint:020d}"


def sink_offsets(res, worker, checkpoint, stem=STEM):
    """{sink index: committed length in bytes} of `worker` at `checkpoint`
    (a Sink record is variant 4: index, then the position as a
    length-prefixed blob holding a u64 LE)."""
    out = {}
    for _, _, payload in records(ckpt_path(res, worker, checkpoint, stem))[1:]:
        tag, i = varint(payload, 0)
        if tag == 4:
            index, i = varint(payload, i)
            n, i = varint(payload, i)
            out[index] = int.from_bytes(payload[i:i + n], "little")
    return out


def ckpt_files(res, worker):
    """{checkpoint id: path} of a worker's checkpoint files (no *.tmp)."""
    prefix = f"{STEM}-{worker}.ckpt-"
    return {int(p.name[len(prefix):]): p for p in Path(res).iterdir()
            if p.name.startswith(prefix) and not p.name.endswith(".tmp")}


def chain(res, worker, checkpoint):
    """The files checkpoint `checkpoint` of `worker` is loaded from, newest
    first (the last one is a full checkpoint)."""
    ids = [checkpoint]
    while (parent := ckpt_header(ckpt_path(res, worker, ids[-1]))["parent"]) is not None:
        ids.append(parent)
    return ids


def app_files(res, stem=STEM):
    return sorted(p.name for p in Path(res).iterdir() if p.name.startswith(stem + "-"))


def flip_byte_in_middle_record(path, first=0):
    """Flips one bit of a payload byte in the middle record (from index
    `first` on); returns (record number from 1, its offset)."""
    recs = records(path)
    index = first + (len(recs) - first) // 2
    off, n, _ = recs[index]
    data = bytearray(Path(path).read_bytes())
    data[off + 8 + n // 2] ^= 0x40
    Path(path).write_bytes(bytes(data))
    return index + 1, off


def truncation_problem(path, cut):
    """The store's words for `path` cut to `cut` bytes."""
    for number, (off, n, _) in enumerate(records(path), 1):
        if off == cut:
            return "is empty" if number == 1 else "has no trailer"
        if off < cut < off + 8:
            return f"ends inside record {number} (at byte {off}, {cut - off} bytes of its 8-byte length and checksum)"
        if off + 8 <= cut < off + 8 + n:
            return f"ends inside record {number} (at byte {off} it declares {n} bytes, only {cut - off - 8} follow)"
    raise AssertionError(f"cut {cut} is not inside {path}")


# ---------------------------------------------------------------- running

class Run:
    """The word count on N workers with its files in tmp_path: inputs
    `in-<worker>.bin`, outputs `out-<worker>.txt`, resilience dir `res`."""

    def __init__(self, make_cluster, tmp_path, workers, lines=2000, resilience=True, app_args=(), flags=None,
                 interval_ns=INTERVAL_NS):
        self.tmp = Path(tmp_path)
        self.res = self.tmp / "res"
        self.res.mkdir(exist_ok=True)
        self.names = ["initializer"] + [f"worker{i}" for i in range(1, workers)]
        self.truth = make_input(self.tmp, self.names, lines)
        if flags is None:
            flags = (["--run-with-resilience"] if resilience else []) + [
                "--resilience-dir", str(self.res), "--time-between-checkpoints", str(interval_ns)]
        self.app_args = ["--in-file", str(self.tmp / "in-{worker}.bin"),
                         "--out-file", str(self.tmp / "out-{worker}.txt"), *app_args]
        self.cluster = make_cluster("wc_app", APPS, workers, app_args=lambda c, i: self.app_args,
                                    extra_flags=flags, start=False)
        self.starts = collections.Counter()

    @property
    def workers(self):
        return self.cluster.workers

    def start(self):
        self.cluster.start()
        for i in range(len(self.names)):
            self.starts[i] += 1
        return self

    def describe(self):
        return self.cluster.describe() + f"\nresilience dir: {sorted(p.name for p in self.res.iterdir())}"

    def committed(self):
        return last_committed(self.res)

    def wait_committed(self, at_least, timeout=15):
        wait_until(lambda: (self.committed() or 0) >= at_least, timeout, f"checkpoint {at_least} to commit")

    def total(self):
        return sum(self.truth.values())

    def wait_output(self, timeout=20):
        wait_until(lambda: len(out_lines(self.tmp)) >= self.total(), timeout,
                   f"{self.total()} output lines (have {len(out_lines(self.tmp))})")

    def settled(self, quiet=0.5, timeout=20):
        """The output once it has stopped changing for `quiet` seconds."""
        deadline = time.time() + timeout
        last, since = None, time.time()
        while time.time() < deadline:
            sizes = [p.stat().st_size for p in out_files(self.tmp)]
            if sizes != last:
                last, since = sizes, time.time()
            elif time.time() - since >= quiet:
                return out_lines(self.tmp)
            time.sleep(0.05)
        raise AssertionError("the output never settled\n" + self.describe())

    def out_path(self, name):
        return self.tmp / f"out-{name}.txt"

    def committed_words(self, name, checkpoint):
        """The words whose counts are in `name`'s sink up to its length
        committed with `checkpoint`, that is the keys of its state then."""
        data = self.out_path(name).read_bytes()[:sink_offsets(self.res, name, checkpoint)[0]]
        return {line.rsplit(" => ", 1)[0] for line in data.decode().splitlines()}

    def output_after_newest_checkpoint(self, name):
        """Whether `name`'s sink holds output written after the newest
        checkpoint file `name` has written (committed or not): a recovery to
        any checkpoint then has output to cut away and write again."""
        files = ckpt_files(self.res, name)
        newest = sink_offsets(self.res, name, max(files))[0] if files else 0
        return self.out_path(name).stat().st_size > newest

    def kill_mid_stream(self, victims, commits, fraction, timeout=30):
        """SIGKILLs the workers `victims` (indexes) once checkpoint
        `commits` has committed and `fraction` of the output is out, at a
        moment when each victim's sink holds output written after its newest
        checkpoint and input is left. To look at the files at one moment,
        the cluster is frozen (SIGSTOP) while they are read, then the
        victims are killed and the others continued (or all are continued,
        and it tries again shortly)."""
        want = int(fraction * self.total())
        deadline = time.time() + timeout
        while True:
            wait_until(lambda: (self.committed() or 0) >= commits and len(out_lines(self.tmp)) >= want,
                       max(0.1, deadline - time.time()),
                       f"checkpoint {commits} and {want} output lines (have {self.committed()}, "
                       f"{len(out_lines(self.tmp))})")
            for w in self.workers:
                w.signal(signal.SIGSTOP)
            done = len(out_lines(self.tmp))
            assert done < self.total(), f"all the output was out before the kill ({done} lines)\n{self.describe()}"
            if all(self.output_after_newest_checkpoint(self.names[i]) for i in victims):
                break
            for w in self.workers:
                w.signal(signal.SIGCONT)
            assert time.time() < deadline, f"never found output after the newest checkpoint\n{self.describe()}"
            time.sleep(0.005)
        for i in victims:
            self.kill(i)
        for w in self.workers:
            w.signal(signal.SIGCONT)

    def kill_all_mid_stream(self, commits=3, fraction=0.2):
        """Kills every worker mid-stream (see `kill_mid_stream`); returns
        the last committed checkpoint, which recovery must go back to."""
        self.kill_mid_stream(range(len(self.workers)), commits, fraction)
        return self.committed()

    def kill_all(self):
        for w in self.workers:
            w.signal(signal.SIGKILL)
        for w in self.workers:
            w.wait(10)
            w.stop()

    def kill(self, i):
        self.workers[i].signal(signal.SIGKILL)
        self.workers[i].wait(10)
        self.workers[i].stop()

    def restart(self, i, args=None):
        """Starts worker i again with its original command (or `args`)."""
        self.starts[i] += 1
        old = self.workers[i]
        old.stop()
        proc = Proc(args or self.cluster.command(i), self.tmp, f"{old.label.split('~')[0]}~{self.starts[i]}",
                    env=self.cluster.env)
        self.workers[i] = proc.start()
        return proc

    def wait_ready(self, indexes=None, timeout=20):
        for i in indexes if indexes is not None else range(len(self.workers)):
            w = self.workers[i]
            wait_until(lambda: READY_LINE in w.stdout() or not w.alive(), timeout, f"{w.label} to be ready")
            assert w.alive(), f"{w.label} exited\n{self.describe()}"

    def assert_exact(self):
        """The output, once settled, is exactly the counts of the input."""
        self.settled()
        outputs = {p.name: p.read_text().splitlines() for p in out_files(self.tmp)}
        problems = word_count_problems(outputs, self.truth)
        assert not problems, f"{len(problems)} problems: {problems[:5]}\n{self.describe()}"

    def shutdown(self):
        self.cluster.shutdown()
        for w in self.workers:
            assert w.popen.returncode == 0, self.describe()


def errors(proc):
    return [l for l in proc.stderr().splitlines() if l.startswith("quoll: error:") or l.startswith("machida3: error:")]


def assert_the_error(run, proc, expected):
    """`proc` reported `expected` first, and nothing else: a second error
    (such as a sink's "sync failed" while the failed worker exits) would
    send an operator after the wrong file."""
    got = errors(proc)
    assert got[:1] == [expected], run.describe()
    assert got[1:] == [], f"spurious errors after the real one: {got[1:]}\n{run.describe()}"


# ---------------------------------------------------------------- 1. damaged files

CASES = ["truncate-committed", "truncate-uncommitted", "flip-byte", "delete-needed", "flip-commit-log"]


def damage(run, case, victim):
    """Damages the files of `victim` (a worker name) as `case` says, after
    a SIGKILL of every worker. Returns (the paths changed, with their
    original bytes or None if created, the expected error or None)."""
    res, k = run.res, run.committed()
    if case == "flip-commit-log":
        log = commit_log_path(res)
        original = log.read_bytes()
        number, off = flip_byte_in_middle_record(log, first=1)
        return {log: original}, f"resilience file {log}: record {number} (at byte {off}) fails its checksum (the file is corrupt); {ADVICE}"
    files = ckpt_files(res, victim)
    if case == "truncate-committed":
        path = files[k]
        original = path.read_bytes()
        cut = len(original) // 2
        problem = truncation_problem(path, cut)
        path.write_bytes(original[:cut])
        return {path: original}, f"resilience file {path} {problem} (it was cut short); {ADVICE}"
    if case == "truncate-uncommitted":
        # The newest file when it is newer than the commit (the checkpoint
        # in flight at the kill); if there is none, one such cut-short file.
        newer = [i for i in files if i > k]
        if newer:
            path = files[max(newer)]
            original = path.read_bytes()
            path.write_bytes(original[:len(original) // 2])
            return {path: original}, None
        path = ckpt_path(res, victim, k + 1)
        data = files[k].read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return {path: None}, None
    if case == "flip-byte":
        # The biggest file of the chain (the one with the state), a byte in
        # the payload of its middle record.
        path = max((ckpt_path(res, victim, i) for i in chain(res, victim, k)), key=lambda p: p.stat().st_size)
        original = path.read_bytes()
        number, off = flip_byte_in_middle_record(path)
        return {path: original}, f"resilience file {path}: record {number} (at byte {off}) fails its checksum (the file is corrupt); {ADVICE}"
    if case == "delete-needed":
        ids = chain(res, victim, k)
        path = ckpt_path(res, victim, ids[-1])  # the full file the chain starts from
        original = path.read_bytes()
        path.unlink()
        if len(ids) == 1:
            expected = f"checkpoint {k}: resilience file {path} is missing; {ADVICE}"
        else:
            expected = (f"checkpoint {ids[-2]} needs .ckpt-{ids[-1]} which is missing (it is a delta on checkpoint "
                        f"{ids[-1]}, resilience file {path}); {ADVICE}")
        return {path: original}, expected
    raise ValueError(case)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_damaged_files_are_never_loaded(case, workers, make_cluster, tmp_path):
    """Every worker is killed mid-stream (after 3 commits, with input left
    and output written after the last commit), a file is damaged, and the
    workers are restarted with their commands. Damage to a file recovery
    needs: its owner exits with code 2 and exactly one error naming the
    file and the problem, loads nothing, and leaves its output file as it
    was (another worker's is as it was or cut back to its committed
    length); restored from the backup, the file recovers, the output
    written after the commit is cut away and replayed, and the counts are
    exact. Damage to the checkpoint in flight at the kill: recovery from
    the commit."""
    run = Run(make_cluster, tmp_path, workers, lines=30000, app_args=SLOW, interval_ns=SLOW_INTERVAL_NS).start()
    k = run.kill_all_mid_stream()
    committed = {run.out_path(n): sink_offsets(run.res, n, k)[0] for n in run.names}
    # The initializer's own checkpoint files on 1 worker, worker1's on 2;
    # the commit log is the initializer's.
    victim = 0 if workers == 1 or case == "flip-commit-log" else 1
    changed, expected = damage(run, case, run.names[victim])
    output_before = {p: p.read_bytes() for p in out_files(tmp_path)}

    for i in range(workers):
        run.restart(i)

    if expected is None:
        # Damage to a checkpoint that never completed: it is not read;
        # every worker recovers from checkpoint k, and the counts are exact.
        run.wait_ready()
        for w in run.workers:
            assert f"|~~ - Recovery COMPLETE - ~~| (checkpoint {k}," in w.stdout(), run.describe()
            assert REPLAYED.search(w.stdout()), run.describe()
        run.assert_exact()
        run.shutdown()
        return

    bad = run.workers[victim]
    try:
        rc = bad.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{bad.label} went on with a damaged file\n{run.describe()}")
    assert rc == 2, run.describe()
    # One error, naming the file and the problem; nothing loaded.
    assert_the_error(run, bad, f"quoll: error: worker '{run.names[victim]}': "
                     + ("" if case == "flip-commit-log" else "recovery: ") + expected)
    assert "Recovery COMPLETE" not in bad.stdout(), run.describe()
    assert READY_LINE not in bad.stdout(), run.describe()
    # The failed worker's output file is untouched (it loaded nothing). A
    # live worker that rolled back has cut its own back to the commit, and
    # may have written new output since (it takes input as soon as it has
    # restored itself, before the failed worker's error ends the recovery);
    # nothing after the commit is kept twice: its counts are 1, 2, ... in
    # order per word.
    for p, before in output_before.items():
        after = p.read_bytes()
        why = f"{p.name}: {len(after)} bytes, {len(before)} at the kill, {committed[p]} committed\n{run.describe()}"
        if p == run.out_path(run.names[victim]) or after == before:
            assert after == before, why
            continue
        assert after[:committed[p]] == before[:committed[p]], why
        whole_lines = after[:after.rfind(b"\n") + 1].decode().splitlines()
        problems = word_count_problems({p.name: whole_lines})
        assert not problems, f"{problems[:5]}\n{why}"
    if workers == 2:
        # The other worker waits for the failed one to come back.
        other = run.workers[1 - victim]
        time.sleep(0.5)
        assert other.alive(), run.describe()
        if victim == 1:
            wait_until(lambda: "rolling back to the last complete checkpoint: lost worker 'worker1'" in other.stdout(),
                       10, "the initializer to roll back")
            assert other.stdout().rstrip().endswith("quoll: worker 'initializer': waiting for 1 more worker(s) on "
                                                    f"127.0.0.1:{run.cluster.control}"), run.describe()
        else:
            assert "can't reach the initializer" in other.stdout(), run.describe()
            assert "Recovery COMPLETE" not in other.stdout(), run.describe()

    # Restore the damaged file from a backup, as the message advises, and
    # start the failed worker again: it recovers and the counts are exact.
    for path, data in changed.items():
        path.write_bytes(data)
    restarted = run.restart(victim)
    run.wait_ready()
    wait_until(lambda: "Recovery COMPLETE" in restarted.stdout() or not restarted.alive(), 20,
               f"{restarted.label} to recover")
    assert REPLAYED.search(restarted.stdout()), run.describe()
    run.assert_exact()
    run.shutdown()


# ---------------------------------------------------------------- 2. *.tmp files

def recover_with_tmp_files(make_cluster, tmp_path):
    """Two workers killed after checkpoint 3, then what a crash in the
    middle of writing leaves added: checkpoint files under their temporary
    names (cut short, garbage, empty), newer and older than the commit, and
    a membership file and a commit log being created. Both workers are
    restarted; returns the run and the commit recovered from."""
    run = Run(make_cluster, tmp_path, 2).start()
    run.wait_committed(3)
    run.kill_all()
    k = run.committed()
    res = run.res
    w1 = ckpt_files(res, "worker1")[k].read_bytes()
    tmps = {
        res / f"{STEM}-worker1.ckpt-{k + 1:020d}.tmp": w1[:len(w1) // 2],
        res / f"{STEM}-initializer.ckpt-{k + 1:020d}.tmp": b"\x07garbage" * 100,
        res / f"{STEM}-initializer.ckpt-{k:020d}.tmp": b"",
        res / f"{STEM}-worker1.cluster.tmp": b"\xff" * 33,
        res / f"{STEM}-initializer.commits.tmp": b"\x00" * 5,
    }
    for path, data in tmps.items():
        path.write_bytes(data)
    for i in range(2):
        run.restart(i)
    run.wait_ready()
    return run, k


def test_tmp_files_are_ignored(make_cluster, tmp_path):
    run, k = recover_with_tmp_files(make_cluster, tmp_path)
    for w in run.workers:
        assert f"|~~ - Recovery COMPLETE - ~~| (checkpoint {k}," in w.stdout(), run.describe()
        assert not errors(w), run.describe()
    run.assert_exact()
    # Checkpoints go on (the ids the *.tmp files had are written for real).
    run.wait_committed(k + 3)
    run.shutdown()


def test_clean_shutdown_removes_tmp_files_too(make_cluster, tmp_path):
    run, k = recover_with_tmp_files(make_cluster, tmp_path)
    run.wait_committed(k + 3)
    run.shutdown()
    assert app_files(run.res) == [], run.describe()


# ---------------------------------------------------------------- 3. clean shutdown

def test_clean_shutdown_removes_the_files_and_the_next_start_is_fresh(make_cluster, tmp_path):
    run = Run(make_cluster, tmp_path, 2)
    res = run.res
    # Files that are not this app's stay where they are.
    foreign = {
        "other_app-initializer.ckpt-00000000000000000001": b"x" * 40,
        "other_app-initializer.commits": b"y" * 30,
        "wc_app2-worker1.ckpt-00000000000000000004": b"z",
        "notes.txt": b"keep me\n",
    }
    for name, data in foreign.items():
        (res / name).write_bytes(data)
    run.start()
    run.wait_output()
    run.wait_committed(3)
    assert len(app_files(res)) >= 3, run.describe()  # checkpoint files of both workers, the commit log
    run.shutdown()
    assert app_files(res) == [], run.describe()
    assert sorted(p.name for p in res.iterdir()) == sorted(foreign)
    for name, data in foreign.items():
        assert (res / name).read_bytes() == data

    # The same commands again: nothing to recover, counting starts from zero
    # (with the old state the counts would go on from n), and the sink files
    # are written afresh.
    for i in range(2):
        run.restart(i)
    run.wait_ready()
    for w in run.workers:
        assert ACTIVE in w.stdout(), run.describe()
        assert "Attempting to recover" not in w.stdout(), run.describe()
        assert not REPLAYED.search(w.stdout()), run.describe()
    run.assert_exact()
    run.shutdown()


# ---------------------------------------------------------------- 4. stale files

def test_a_file_of_another_worker_is_refused(make_cluster, tmp_path):
    run = Run(make_cluster, tmp_path, 2).start()
    run.wait_committed(3)
    run.kill_all()
    k = run.committed()
    res = run.res
    # worker1's files replaced by a copy of the initializer's under worker1's name.
    backup = {p: p.read_bytes() for p in ckpt_files(res, "worker1").values()}
    for p in backup:
        p.unlink()
    stale = ckpt_path(res, "worker1", k)
    shutil.copyfile(ckpt_path(res, "initializer", k), stale)

    for i in range(2):
        run.restart(i)
    bad = run.workers[1]
    try:
        assert bad.wait(20) == 2, run.describe()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker1 went on with another worker's file\n{run.describe()}")
    assert_the_error(
        run, bad,
        f"quoll: error: worker 'worker1': recovery: resilience file {stale} belongs to app '{APP}' worker "
        f"'initializer', not app '{APP}' worker 'worker1': it is a stale file of another app or worker (names "
        f"differing only in characters other than A-Z a-z 0-9 . _ - share file names); move it away or use "
        f"another resilience directory")
    assert "Recovery COMPLETE" not in bad.stdout()

    # With its own files back, worker1 recovers.
    stale.unlink()
    for p, data in backup.items():
        p.write_bytes(data)
    run.restart(1)
    run.wait_ready()
    run.assert_exact()
    run.shutdown()


def test_a_file_of_another_app_with_the_same_file_name_is_refused(make_cluster, tmp_path):
    # "wc app" and "wc_app" share file names; the names inside differ.
    run = Run(make_cluster, tmp_path, 1).start()
    run.wait_committed(3)
    run.kill_all()
    before = app_files(run.res)
    other = run.cluster.command(0) + ["--app-name", "wc_app"]
    bad = run.restart(0, args=other)
    assert bad.wait(20) == 2, run.describe()
    log = commit_log_path(run.res)
    assert_the_error(
        run, bad,
        f"quoll: error: worker 'initializer': resilience file {log} belongs to app '{APP}' worker 'initializer', "
        f"not app 'wc_app' worker 'initializer': it is a stale file of another app or worker (names differing "
        f"only in characters other than A-Z a-z 0-9 . _ - share file names); move it away or use another "
        f"resilience directory")
    # Nothing of the other app's was touched.
    assert app_files(run.res) == before


# ---------------------------------------------------------------- 5. resilience off

def test_without_resilience_no_files_are_written(make_cluster, tmp_path):
    run = Run(make_cluster, tmp_path, 2, resilience=False).start()
    run.wait_output()
    time.sleep(5 * INTERVAL_NS / 1e9)  # several checkpoint intervals
    assert list(run.res.iterdir()) == [], run.describe()
    for w in run.workers:
        assert ACTIVE not in w.stdout(), run.describe()
    run.assert_exact()
    run.kill_all()
    assert list(run.res.iterdir()) == []


# ---------------------------------------------------------------- 6. log lines

@pytest.mark.parametrize("workers", [1, 2])
def test_restarted_workers_report_what_they_replayed(workers, make_cluster, tmp_path):
    """Every worker killed mid-stream and restarted: each says it replayed
    exactly as many state entries as there are words in its committed
    output (one state per word it owns), and recovers from the last commit.
    On 2 workers, later, worker1 alone is killed mid-stream while the
    initializer lives on: the same, for the commit the cluster rolled back
    to. The counts end exact (the output written after each commit was cut
    away and written again)."""
    run = Run(make_cluster, tmp_path, workers, lines=40000, app_args=SLOW, interval_ns=SLOW_INTERVAL_NS).start()
    for w in run.workers:
        assert ACTIVE in w.stdout(), run.describe()
        assert not REPLAYED.search(w.stdout()), run.describe()
    k = run.kill_all_mid_stream()
    expected = [len(run.committed_words(name, k)) for name in run.names]
    for i in range(workers):
        run.restart(i)
    run.wait_ready()
    replayed = []
    for w in run.workers:
        out = w.stdout()
        assert out.startswith(ACTIVE + "\n"), run.describe()
        m = REPLAYED.findall(out)
        assert len(m) == 1, run.describe()
        replayed.append(int(m[0]))
        assert f"|~~ - Recovery COMPLETE - ~~| (checkpoint {k}," in out, run.describe()
    assert all(n > 0 for n in expected), expected
    assert replayed == expected, f"replayed {replayed}, words in the committed output {expected}\n{run.describe()}"

    if workers == 2:
        # worker1 alone, mid-stream again, while the initializer lives on.
        run.kill_mid_stream([1], k + 3, 0.6)
        init = run.workers[0]
        wait_until(lambda: "rolling back to the last complete checkpoint: lost worker 'worker1'" in init.stdout(),
                   10, "the initializer to roll back")
        k2 = run.committed()  # final: the initializer commits nothing more before worker1 is back
        assert k2 > k, run.describe()
        words = len(run.committed_words("worker1", k2))
        w = run.restart(1)
        run.wait_ready([1])
        wait_until(lambda: "Recovery COMPLETE" in w.stdout(), 20, "worker1 to recover")
        assert ACTIVE in w.stdout()
        assert f"|~~ - Recovery COMPLETE - ~~| (checkpoint {k2}," in w.stdout(), run.describe()
        assert [int(n) for n in REPLAYED.findall(w.stdout())] == [words], run.describe()
    run.assert_exact()
    run.shutdown()


# ---------------------------------------------------------------- checkpoints under load

def test_checkpoints_are_taken_while_a_backlog_is_processed(make_cluster, tmp_path):
    """A checkpoint every --time-between-checkpoints. 12000 lines at
    0.25 ms each are 3 s of work: with a 100 ms interval about 25
    checkpoints should commit before the input is done; at least 5 are
    demanded. (A checkpoint that waits until the backlog is gone leaves
    nothing to recover from but the start.)"""
    run = Run(make_cluster, tmp_path, 1, lines=12000, app_args=["--line-delay", "0.00025"]).start()
    t0 = time.time()
    timeline = []
    while len(out_lines(tmp_path)) < run.total() and time.time() - t0 < 30:
        timeline.append((round(time.time() - t0, 2), run.committed(), len(out_lines(tmp_path))))
        time.sleep(0.05)
    done = time.time() - t0
    committed_before_done = run.committed() or 0
    assert done >= 2.4, timeline
    assert committed_before_done >= 5, (
        f"only {committed_before_done} checkpoints committed during {done:.1f} s of processing "
        f"(interval 100 ms); (time, committed, output lines): {timeline[::5]}")
    run.assert_exact()
    run.shutdown()
