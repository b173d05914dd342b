"""Resilience under repeated faults.

Every test runs 3 workers with `--run-with-resilience` and checkpoints
every 150 ms, reads its input through quoll's replayable file source and
writes through the exactly-once file sink (`{worker}` in both paths is the
worker's name), injects faults while the input is being processed, and ends
with a clean shutdown after which every worker exits 0 and the resilience
directory is empty. A restarted worker runs its original command and must
print the recovery lines (`RESILIENCE: Replayed N entries from recovery log
file.`, `|~~ - Recovery COMPLETE - ~~|`).

- `test_repeated_kills_word_count`: examples/word_count, 12+ SIGKILLs of
  random workers (the initializer at least twice), some while the cluster
  is still recovering from the previous one. Every word's counts are
  1, 2, ..., its true count, in this order, in the sink of the worker that
  owns the word's key, and each worker's sink holds what it holds after an
  uninterrupted run.
- `test_custom_codec_state_under_kills`: per-key state that pickle refuses
  (it holds a lock) is checkpointed through the app's own top-level
  serialize/deserialize: the checkpoint files hold the app's magic, and a
  restarted worker deserializes exactly the entries it says it replayed.
- `test_windows_under_kills` (count and range windows): every message is in
  exactly the window outputs of its key the window spec puts it in (count
  windows: one; sliding range windows: the two consecutive windows sharing
  its pane, or an output of its own when late), so no window output is
  lost or written twice (see `check_windows`).
- `test_sigstop`: a stopped worker is declared lost by the heartbeat
  timeout and rejoins by itself on SIGCONT; a 1.5 s stop of the initializer
  (under the 3 s timeout) changes nothing.
- `test_gen_source_under_kills`: the generator's value is checkpointed:
  after each recovery it goes on from the value of the checkpoint the
  recovery line names (one more than the values the committed output
  holds), and per key the running sums are exactly those of 1..N in order.

The fault schedule is random; the seed is printed (and is in every failure
message with the log of what was done). Set QUOLL_FAULT_SEED to replay one.
"""

import collections
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from harness import EXAMPLES, Proc, key_owner, report_status, state_entities, wait_until, word_count_problems
from test_resilience_files import last_committed, sink_offsets

APPS = Path(__file__).resolve().parent / "apps"
WC_DIR = EXAMPLES / "word_count"
NAMES = ["initializer", "worker1", "worker2"]
CHECKPOINT_NS = 150_000_000
RECOVERED = "|~~ - Recovery COMPLETE - ~~|"
REPLAYED = re.compile(r"RESILIENCE: Replayed \d+ entries from recovery log file\.")


def fault_seed():
    env = os.environ.get("QUOLL_FAULT_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2 ** 32)
    print(f"fault schedule seed: QUOLL_FAULT_SEED={seed}")
    return seed


def write_framed(path, records):
    with open(path, "wb") as f:
        for r in records:
            b = r.encode("utf-8")
            f.write(len(b).to_bytes(4, "big") + b)


def resilience_flags(res_dir, interval_ns=CHECKPOINT_NS):
    """Resilience with the even split kept: these tests check each word in
    the sink of the worker that owns it by the key hash (rebalancing, which
    moves words between sinks, has its own tests in test_grow.py)."""
    return ["--run-with-resilience", "--resilience-dir", str(res_dir), "--time-between-checkpoints", str(interval_ns),
            "--rebalance-interval", "0"]


def file_args(in_pattern, out_pattern, *extra):
    return lambda c, i: ["--in-file", str(in_pattern), "--out-file", str(out_pattern), *extra]


def out_paths(out_dir):
    return [Path(out_dir) / f"out-{n}.txt" for n in NAMES]


def total_size(paths):
    s = 0
    for p in paths:
        try:
            s += os.path.getsize(p)
        except FileNotFoundError:
            pass
    return s


def read_lines(paths):
    lines = []
    for p in paths:
        if p.exists():
            lines += p.read_text().splitlines()
    return lines


class Faults:
    """Kills and restarts the workers of a resilient cluster and keeps a log
    of what was done, for failure messages."""

    def __init__(self, cluster, seed):
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.t0 = time.time()
        self.events = []
        self.incarnation = [0] * cluster.n
        self.all_procs = list(cluster.workers)
        self.kills = collections.Counter()

    def note(self, msg):
        self.events.append(f"{time.time() - self.t0:7.2f}s {msg}")

    def report(self):
        return f"seed {self.seed}; fault log:\n  " + "\n  ".join(self.events)

    def describe(self, tail=3000):
        parts = [self.report()]
        for p in self.all_procs:
            rc = p.popen.poll() if p.popen else None
            parts.append(f"--- {p.label} rc={rc}\nstdout:\n{p.stdout()[-tail:]}\nstderr:\n{p.stderr()[-tail:]}")
        return "\n".join(parts)

    def commit_mark(self, res_dir):
        """The size of the coordinator's commit log (`<app>-initializer.commits`,
        append-only: it grows by a record at every new generation and every
        committed checkpoint)."""
        return total_size([Path(res_dir) / n for n in os.listdir(res_dir) if n.endswith(".commits")])

    def wait_commit(self, res_dir, mark, timeout=5):
        """Paces the faults: waits (up to `timeout`) until a checkpoint was
        committed after `mark` was taken in the current generation. Not an
        assertion: under load a checkpoint may take long."""
        try:
            wait_until(lambda: self.commit_mark(res_dir) > mark, timeout, "a checkpoint commit", interval=0.02)
            return True
        except AssertionError:
            self.note(f"no checkpoint committed within {timeout} s")
            return False

    def kill(self, i, sig=signal.SIGKILL):
        p = self.cluster.workers[i]
        assert p.alive(), f"{p.label} died on its own before it was killed\n{self.describe()}"
        p.signal(sig)
        rc = p.wait(10)
        assert rc == -sig, f"{p.label} exited with {rc} on signal {sig}\n{self.describe()}"
        p.stop()  # closes its output files
        self.kills[i] += 1
        self.note(f"killed {NAMES[i]} ({p.label}, pid {p.popen.pid})")

    def restart(self, i):
        self.incarnation[i] += 1
        label = f"worker{i}-r{self.incarnation[i]}"
        p = Proc(self.cluster.command(i), self.cluster.workdir, label, env=self.cluster.env).start()
        self.cluster.workers[i] = p
        self.all_procs.append(p)
        self.note(f"restarted {NAMES[i]} as {label} (pid {p.popen.pid})")
        return p

    def wait_recovered(self, i, timeout=30):
        """Waits for the current incarnation of worker i to print the
        recovery lines (docs/wallaroo-compat.md, "Resilience")."""
        p = self.cluster.workers[i]
        try:
            wait_until(lambda: RECOVERED in p.stdout() or not p.alive(), timeout, f"{p.label} to recover")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.describe()}")
        assert p.alive(), f"{p.label} exited during recovery\n{self.describe()}"
        assert REPLAYED.search(p.stdout()), f"{p.label} did not print the replay line\n{self.describe()}"
        line = [l for l in p.stdout().splitlines() if RECOVERED in l][-1]
        self.note(f"{p.label} recovered: {line.split(RECOVERED)[1].strip()}")

    def kill_to_rollback(self, i, res_dir, stem):
        """Kills worker i and returns the checkpoint the cluster will roll
        back to (the last committed) with each worker's committed sink
        length then, {name: bytes}: once the initializer has started rolling
        back (or is the one killed) it commits nothing more."""
        init = self.cluster.workers[0]
        rollbacks = init.stdout().count("rolling back")
        self.kill(i)
        if i != 0:
            try:
                wait_until(lambda: init.stdout().count("rolling back") > rollbacks, 10, "the initializer to roll back")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{self.describe()}")
        committed = last_committed(res_dir, stem)
        assert committed, f"no checkpoint committed before the kill\n{self.describe()}"
        return committed, {name: sink_offsets(res_dir, name, committed, stem)[0] for name in NAMES}

    def kill_and_restart(self, i, max_pause=0.5):
        self.kill(i)
        time.sleep(self.rng.uniform(0, max_pause))
        return self.restart(i)

    def all_alive(self):
        dead = [p.label for p in self.cluster.workers if not p.alive()]
        assert not dead, f"workers exited on their own: {dead}\n{self.describe()}"

    def wait_progress(self, measure, target, what, timeout=60, interval=0.02):
        try:
            wait_until(lambda: measure() >= target or not all(p.alive() for p in self.cluster.workers),
                       timeout, what, interval=interval)
        except AssertionError as e:
            raise AssertionError(f"{e} (at {measure()})\n{self.describe()}")
        self.all_alive()

    def wait_final(self, measure, target, what, quiet=1.0, timeout=60, interval=0.05):
        """Waits until `measure()` reaches `target`, then checks that it
        stays there for `quiet` seconds. Returns the last value."""
        self.wait_progress(measure, target, what, timeout, interval)
        end = time.time() + quiet
        while time.time() < end:
            v = measure()
            assert v == target, f"{what}: reached {target}, then {v}\n{self.describe()}"
            time.sleep(interval)
        self.all_alive()
        self.note(f"done: {what}")
        return measure()

    def wait_settled(self, measure, what, quiet, timeout=60, interval=0.05):
        """Waits until `measure()` has not changed for `quiet` seconds (for
        output whose final size the test can't know in advance; what it
        holds is checked afterwards). Returns the settled value."""
        deadline = time.time() + timeout
        last, since = measure(), time.time()
        while time.time() - since < quiet:
            assert time.time() < deadline, f"{what}: still changing after {timeout} s\n{self.describe()}"
            time.sleep(interval)
            v = measure()
            if v != last:
                last, since = v, time.time()
        self.all_alive()
        self.note(f"done: {what} ({last})")
        return last

    def shutdown(self, res_dir, app_prefix):
        """Clean shutdown: every worker exits 0 and the resilience files of
        the app are gone (docs/wallaroo-compat.md, "Resilience")."""
        self.cluster.shutdown()
        rcs = {p.label: p.popen.poll() for p in self.cluster.workers}
        assert all(rc == 0 for rc in rcs.values()), f"exit codes after a clean shutdown: {rcs}\n{self.describe()}"
        left = sorted(os.listdir(res_dir))
        assert not [f for f in left if f.startswith(app_prefix)], \
            f"resilience files left after a clean shutdown: {left}\n{self.describe()}"
        assert not left, f"files left in the resilience dir: {left}"


# ---------------------------------------------------------------- word count

def make_word_input(in_dir, lines_per_worker, seed=7, min_words=1, max_words=8):
    """Framed lines of Zipf-distributed words, one file per worker."""
    rng = random.Random(seed)
    vocab = [f"w{i:04d}" for i in range(2000)]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(vocab))]
    truth = collections.Counter()
    for name in NAMES:
        lines = []
        for _ in range(lines_per_worker):
            words = rng.choices(vocab, weights, k=rng.randint(min_words, max_words))
            truth.update(words)
            lines.append(" ".join(words))
        write_framed(Path(in_dir) / f"in-{name}.bin", lines)
    return truth


def word_count_bytes(truth):
    """Total size of the sink files once every count is out."""
    total = 0
    for w, c in truth.items():
        total += c * (len(w) + 5)  # "w => " + "\n"
        total += sum(len(str(n)) for n in range(1, c + 1))
    return total


def check_word_counts(paths, truth, describe):
    """Each word's counts are 1..n in order, n its true count, all in the
    sink file of one worker: the one that owns the word's key by quoll's
    key hash (recomputed here, see harness.key_owner)."""
    outputs = {name: p.read_text().splitlines() for name, p in zip(NAMES, paths)}
    problems = word_count_problems(outputs, truth)
    for name, lines in outputs.items():
        # Each distinct word hashed once: the hash is pure Python, and the
        # outputs are hundreds of thousands of lines.
        words = collections.Counter(l.rsplit(" => ", 1)[0] for l in lines)
        owners = collections.Counter({NAMES[key_owner(w.encode(), len(NAMES))]: 0 for w in words})
        for w, n in words.items():
            owners[NAMES[key_owner(w.encode(), len(NAMES))]] += n
        if set(owners) - {name}:
            problems.append(f"{name}'s sink holds counts of words other workers own: {dict(owners)}")
    total = sum(len(v) for v in outputs.values())
    assert not problems, (f"{len(problems)} problems in {total} output lines for {sum(truth.values())} words, "
                          f"e.g.\n  " + "\n  ".join(problems[:10]) + f"\n{describe()}")


def check_state_placement(cluster, truth, describe):
    """Asks every worker which keys its state holds (external state-entity
    query): each word's state is on exactly one worker, the owner of its
    key group, and every word has state somewhere."""
    held = collections.defaultdict(list)
    for name, port in zip(NAMES, cluster.external_ports):
        for stage, keys in state_entities(port).items():
            for k in keys:
                held[k].append((name, stage))
    problems = [f"{w}: held by {where}" for w, where in held.items()
                if len(where) != 1 or where[0][0] != NAMES[key_owner(w.encode(), len(NAMES))]]
    problems += [f"{w}: no state anywhere" for w in set(truth) - set(held)]
    assert not problems, f"{len(problems)} misplaced keys, e.g. {problems[:5]}\n{describe()}"


def start_cluster(make_cluster, workdir, module, pythonpath, flags, app_args, env=None):
    """A 3-worker cluster whose logs go to `workdir` (several clusters of a
    test must not share log files)."""
    workdir.mkdir(exist_ok=True)
    c = make_cluster(module, pythonpath, 3, extra_flags=flags, app_args=app_args, env=env, start=False)
    c.workdir = workdir
    return c.start()


def start_word_count(make_cluster, in_dir, out_dir, res_dir):
    for d in (out_dir, res_dir):
        d.mkdir()
    return start_cluster(make_cluster, out_dir.parent / f"logs-{out_dir.name}", "word_count", WC_DIR,
                         resilience_flags(res_dir), file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt"))


# 400,000 words and 8 kills: minutes on a busy 2-core machine.
@pytest.mark.timeout(900)
def test_repeated_kills_word_count(make_cluster, tmp_path):
    seed = fault_seed()
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    # Enough input that the cluster is still reading it through the first
    # kills even on a fast machine (a whole pass can take a tenth of a second).
    truth = make_word_input(in_dir, 400_000)
    target = word_count_bytes(truth)
    t_start = time.time()

    # The uninterrupted run: what each worker's sink must end up holding.
    ref = start_word_count(make_cluster, in_dir, tmp_path / "ref-out", tmp_path / "ref-res")
    ref_faults = Faults(ref, seed)
    ref_paths = out_paths(tmp_path / "ref-out")
    ref_faults.wait_final(lambda: total_size(ref_paths), target, "the uninterrupted run's output")
    t_ref = time.time() - t_start
    expected = {n: sorted(p.read_text().splitlines()) for n, p in zip(NAMES, ref_paths)}
    ref_faults.shutdown(tmp_path / "ref-res", "Word_Count_Application-")
    check_word_counts(ref_paths, truth, ref_faults.describe)

    # The same input under repeated SIGKILLs: the first 8 when the output
    # reaches random points (so they hit a cluster with input left, whatever
    # its speed); the last 4 at random times, some of them only after a
    # checkpoint was committed in the current generation (often after the
    # end of the input: a rollback must then leave the output as it was).
    res_dir = tmp_path / "res"
    cluster = start_word_count(make_cluster, in_dir, tmp_path / "out", res_dir)
    f = Faults(cluster, seed)
    rng = f.rng
    paths = out_paths(tmp_path / "out")
    progress = lambda: total_size(paths)  # noqa: E731
    victims = [0, 0, 1, 1, 2, 2] + [rng.randrange(3) for _ in range(6)]
    rng.shuffle(victims)
    fractions = sorted(rng.uniform(0.05, 0.9) for _ in range(8))
    mid_stream = 0
    for k, victim in enumerate(victims):
        if k < len(fractions):
            f.wait_progress(progress, int(fractions[k] * target), f"{fractions[k]:.0%} of the output")
            time.sleep(rng.uniform(0, 0.05))
        else:
            if rng.random() < 0.5:
                f.wait_commit(res_dir, f.commit_mark(res_dir), timeout=1.5)
            time.sleep(rng.uniform(0.05, 0.4))
        done = progress() / target
        mid_stream += done < 1
        f.note(f"kill {k + 1} at {done:.1%} of the output")
        restarted = {victim}
        f.kill_and_restart(victim)
        if rng.random() < 0.3:
            # Again, while the cluster is still recovering.
            time.sleep(rng.uniform(0, 0.4))
            again = rng.randrange(3)
            f.note(f"kill during recovery: {NAMES[again]}")
            f.kill_and_restart(again)
            restarted.add(again)
        for i in sorted(restarted):
            f.wait_recovered(i)
    f.wait_final(progress, target, "all the output after the kills", quiet=1.5)
    t_faults = time.time() - t_start - t_ref
    print(f.report())

    kills = sum(f.kills.values())
    assert kills >= 10 and f.kills[0] >= 2, f.report()
    assert mid_stream >= 6, f"only {mid_stream} kills came before the output was complete\n{f.report()}"
    check_word_counts(paths, truth, f.describe)
    check_state_placement(cluster, truth, f.describe)
    for name, p in zip(NAMES, paths):
        got = sorted(p.read_text().splitlines())
        if got != expected[name]:
            diff = collections.Counter(got)
            diff.subtract(expected[name])
            extra = [l for l, k in diff.items() if k > 0][:5]
            lacking = [l for l, k in diff.items() if k < 0][:5]
            raise AssertionError(f"{name}'s sink differs from the uninterrupted run's: extra {extra}, "
                                 f"missing {lacking}\n{f.describe()}")
    f.shutdown(res_dir, "Word_Count_Application-")
    print(f"reference run {t_ref:.1f} s, {kills} kills ({dict(f.kills)}) and recovery "
          f"{t_faults:.1f} s, {sum(truth.values())} words")


# ---------------------------------------------------------------- custom codec

def codec_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("resilient_custom_codec_for_test", APPS / "resilient_custom_codec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_custom_codec_state_under_kills(make_cluster, tmp_path):
    seed = fault_seed()
    magic = codec_module().MAGIC
    rng_in = random.Random(11)
    in_dir, out_dir, res_dir = tmp_path / "in", tmp_path / "out", tmp_path / "res"
    for d in (in_dir, out_dir, res_dir):
        d.mkdir()
    truth = collections.defaultdict(lambda: [0, 0])
    sensors = [f"s{i:03d}" for i in range(200)]
    for name in NAMES:
        recs = []
        for _ in range(200_000):
            s, v = rng_in.choice(sensors), rng_in.randint(-1000, 1000)
            truth[s][0] += 1
            truth[s][1] += v
            recs.append(f"{s},{v}")
        write_framed(in_dir / f"in-{name}.bin", recs)
    total = sum(c for c, _ in truth.values())
    log = tmp_path / "deserialize.log"
    env = dict(os.environ, RESILIENT_CODEC_LOG=str(log))
    cluster = make_cluster("resilient_custom_codec", APPS, 3, env=env, extra_flags=resilience_flags(res_dir),
                           app_args=file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt"))
    f = Faults(cluster, seed)
    paths = out_paths(out_dir)
    progress = lambda: sum(p.read_bytes().count(b"\n") for p in paths if p.exists())  # noqa: E731

    def magic_on_disk():
        """Which workers have a checkpoint file holding the codec's magic."""
        found = set()
        for name in os.listdir(res_dir):
            if ".ckpt-" not in name or name.endswith(".tmp"):
                continue
            try:
                data = (res_dir / name).read_bytes()
            except FileNotFoundError:
                continue
            if magic in data:
                found.add(name.split(".ckpt-")[0].rsplit("-", 1)[1])
        return found

    victims = [1, 0, 2, 1]
    with_state = 0
    for k, (victim, frac) in enumerate(zip(victims, [0.1, 0.25, 0.4, 0.55])):
        f.wait_progress(progress, int(frac * total), f"{frac:.0%} of the output", interval=0.1)
        # A checkpoint committed from here on holds state (not just the
        # empty one taken before any input).
        f.wait_commit(res_dir, f.commit_mark(res_dir))
        before = log.read_text().splitlines() if log.exists() else []
        f.note(f"kill {k + 1} at {progress()} of {total} lines")
        p = f.kill_and_restart(victim)
        f.wait_recovered(victim)
        # The restarted process restores each state entry it replayed
        # through deserialize, once, when the entry's sensor next gets a
        # reading (state is decoded on first touch; every sensor gets
        # readings all through the input).
        replayed = int(re.search(r"Replayed (\d+) entries", p.stdout()).group(1))

        def restored():
            after = log.read_text().splitlines() if log.exists() else []
            return collections.Counter(l.split()[1] for l in after[len(before):])[str(p.popen.pid)]
        # Bounded generously: a loaded CI machine once took over 15 s here
        # (the output progress in the message tells a stall from states
        # that were never decoded).
        at_recovery = progress()
        try:
            wait_until(lambda: restored() >= replayed, 30, "every replayed state to be deserialized", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}: {p.label} replayed {replayed} entries, deserialized {restored()}; "
                                 f"output lines {at_recovery} at its recovery, {progress()} now, of {total}\n"
                                 f"{f.describe()}")
        f.note(f"{p.label} replayed {replayed} entries and deserialized {restored()} states")
        assert restored() == replayed, \
            f"the restarted {p.label} replayed {replayed} entries but deserialized {restored()} states\n" \
            f"{f.describe()}"
        with_state += replayed > 0
    assert with_state >= 3, f"only {with_state} recoveries restored any state\n{f.report()}"
    f.wait_final(progress, total, "all the output after the kills", quiet=1.0, interval=0.2)
    print(f.report())
    # The state on disk went through the app's serialize (each worker's
    # newest checkpoint chain starts with a full checkpoint of its state).
    found = magic_on_disk()
    assert found == set(NAMES), f"the codec's magic is in checkpoint files of {sorted(found)} only; files: " \
                                f"{sorted(os.listdir(res_dir))}\n{f.describe()}"

    lines = read_lines(paths)
    pairs = collections.Counter()
    last = {}
    for line in lines:
        s, c, t = line.split()
        pairs[(s, int(c))] += 1
        if int(c) >= last.get(s, (0, 0))[0]:
            last[s] = (int(c), int(t))
    doubled = [p for p, k in pairs.items() if k > 1]
    missing = [(s, n) for s, (c, _) in truth.items() for n in range(1, c + 1) if (s, n) not in pairs]
    wrong = {s: (last.get(s), tuple(v)) for s, v in truth.items() if last.get(s) != tuple(v)}
    assert not doubled and not missing and not wrong and len(lines) == total, (
        f"{len(lines)} lines for {total} readings; doubled {doubled[:5]}; missing {missing[:5]}; "
        f"wrong (got, true) {dict(list(wrong.items())[:5])}\n{f.describe()}")
    f.shutdown(res_dir, "Resilient_custom_codec-")


def test_state_that_cannot_be_restored_is_a_data_error(make_cluster, tmp_path):
    """Restored state is decoded on its key's first message; if the app's
    `deserialize` refuses it, that message is dropped and reported with the
    stage and key, the state is kept (never replaced by a fresh one), and
    every other key goes on."""
    in_dir, out_dir, res_dir = tmp_path / "in", tmp_path / "out", tmp_path / "res"
    for d in (in_dir, out_dir, res_dir):
        d.mkdir()
    in_file = in_dir / "in-initializer.bin"
    write_framed(in_file, [f"s{i % 10:03d},1" for i in range(3000)])
    cluster = make_cluster("resilient_custom_codec", APPS, 1, extra_flags=resilience_flags(res_dir),
                           app_args=file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt"))
    f = Faults(cluster, fault_seed())
    paths = out_paths(out_dir)
    lines = lambda: len(read_lines(paths))  # noqa: E731
    f.wait_progress(lines, 3000, "the output of the first 3000 readings")
    # Two commits: the second one's barrier came after every reading.
    for _ in range(2):
        assert f.wait_commit(res_dir, f.commit_mark(res_dir)), f"no checkpoint after the input\n{f.describe()}"
    f.kill(0)
    # More readings for an old sensor (its state can't be decoded after the
    # restart) and for a new one.
    with open(in_file, "ab") as out:
        for r in ["s003,1", "fresh,1"] * 50:
            out.write(len(r).to_bytes(4, "big") + r.encode())
    cluster.env = dict(cluster.env, RESILIENT_CODEC_REFUSE_STATE="1")
    p = f.restart(0)
    f.wait_recovered(0)
    f.wait_progress(lines, 3050, "the new sensor's 50 outputs")
    wait_until(lambda: report_status(cluster.external_ports[0]).get("dropped") == 50, 10,
               "the 50 readings of s003 to be dropped")
    err = p.stderr()
    assert "stage 'total per sensor'" in err and "key 's003', restoring its state" in err \
        and "RESILIENT_CODEC_REFUSE_STATE" in err, err
    new = read_lines(paths)[3000:]
    assert sorted(new) == sorted(f"fresh {n} {n}" for n in range(1, 51)), new[:10]
    f.all_alive()


# ---------------------------------------------------------------- windows

def window_outputs(paths):
    """Every window output line, per sink file, as (account, count, [ids],
    byte offset of the line in the file)."""
    out = {}
    for p in paths:
        rows = []
        if p.exists():
            data = p.read_bytes()
            at = 0
            for line in data[:data.rfind(b"\n") + 1].splitlines(keepends=True):
                acct, n, ids = line.decode().split()
                rows.append((acct, int(n), [int(i) for i in ids.split(";")], at))
                at += len(line)
        out[p.name] = rows
    return out


PER_SOURCE = 60_000  # messages in each worker's input file; ids are numbered file after file


def check_windows(kind, outputs, owner, restores, describe):
    """Checks every window output against the messages (`owner`: id ->
    account); returns how many messages are in how many outputs, and how
    many late messages were output alone. `restores` gives, per sink file,
    the lengths the recoveries cut it back to: they split each file into
    epochs (from the start or a recovery to the next recovery).

    Every key's outputs must be in one worker's sink, and per key the
    messages of one input file in the order of that file (ids increase).

    Count windows (7 messages): every message in exactly one output of its
    key, at most 7 per output, and per key the outputs add up to its
    messages.

    Sliding range windows (range = 2 x slide, so a pane of one slide is in
    two consecutive windows; the grid of a key starts with a window that
    holds its first pane; windows fire once each, in order; empty windows
    give no output since the app returns None): a message is in the two
    windows holding its pane, consecutive among its key's outputs, with
    three exceptions, all accounted for:
    - late (its pane's windows had both fired or were gone when it
      arrived): with the late policy `fire-per-message` it is output alone;
    - its pane's first window fired before it arrived, its second had not:
      it is in that second window only. Only an upstream the stage has not
      heard from yet can bring such a message (a heard upstream holds the
      watermark at or below its own event times), and the stage forgets its
      upstreams only at a start or a recovery. The first message of each
      other upstream can find one such pane per key, so per key and epoch
      at most two outputs (three upstreams, one heard first) hold such
      messages.
    So a window output dropped (its panes then in one window each, in the
    outputs before and after it) or written twice (three outputs, or two
    not consecutive) fails, after a few windows of the epoch at most."""
    problems = []
    files_of_key = collections.defaultdict(set)
    rows_of_key = collections.defaultdict(list)  # key -> [(ids, epoch)] in output order (one file: checked)
    for fname, rows in outputs.items():
        cuts = sorted(restores.get(fname, []))
        for acct, n, ids, at in rows:
            files_of_key[acct].add(fname)
            rows_of_key[acct].append((ids, sum(1 for c in cuts if c <= at)))
            if n != len(ids) or len(set(ids)) != n or (kind == "count" and n > 7):
                problems.append(f"malformed output {acct} {n} {ids[:10]}")
            for i in ids:
                if owner.get(i) != acct:
                    problems.append(f"id {i} of {owner.get(i)} in an output of {acct}")
    split = {k: v for k, v in files_of_key.items() if len(v) > 1}
    if split:
        problems.append(f"keys with outputs on several workers: {split}")
    appearances = collections.Counter(i for rows in rows_of_key.values() for ids, _ in rows for i in ids)
    where = collections.defaultdict(list)  # id -> [(key, index among the key's window outputs, epoch)]
    solo = 0
    for acct, rows in rows_of_key.items():
        index = 0
        first = {}  # id -> (index of its first output, place in it)
        for ids, epoch in rows:
            if kind == "range" and len(ids) == 1 and appearances[ids[0]] == 1:
                solo += 1  # a late message, fired on its own
                where[ids[0]].append((acct, "alone", epoch))
                continue
            for place, i in enumerate(ids):
                where[i].append((acct, index, epoch))
                first.setdefault(i, (index, place))
            index += 1
        # The key's messages in order (count windows: output after output;
        # range windows: pane after pane, a pane's messages in arrival
        # order), so the messages of one input file in the file's order.
        seq = sorted(first, key=first.get)
        for src in range(len(NAMES)):
            mine = [i for i in seq if (i - 1) // PER_SOURCE == src]
            if mine != sorted(mine):
                bad = next(j for j in range(len(mine) - 1) if mine[j] > mine[j + 1])
                problems.append(f"{acct}: messages of input file {src} out of order: {mine[max(0, bad - 3):bad + 4]}")
    counts = collections.Counter(len(where[i]) for i in owner)
    single = collections.defaultdict(set)  # (key, epoch) -> indexes of outputs holding messages in one window only
    for i in owner:
        w = where[i]
        if kind == "count":
            ok = len(w) == 1
        elif len(w) == 1:
            ok = True
            if w[0][1] != "alone":
                single[(w[0][0], w[0][2])].add(w[0][1])
        else:
            ok = len(w) == 2 and w[1][1] == w[0][1] + 1
        if not ok:
            problems.append(f"id {i} ({owner[i]}) in outputs (key, index among its key's windows, epoch) {w}")
    for (acct, epoch), indexes in sorted(single.items()):
        if len(indexes) > 2:
            problems.append(f"{acct}, epoch {epoch}: {len(indexes)} window outputs hold messages that are in no "
                            f"other window (outputs {sorted(indexes)[:10]}); at most 2 can")
    if kind == "count":
        per_key = collections.Counter({a: sum(len(ids) for ids, _ in rows) for a, rows in rows_of_key.items()})
        messages = collections.Counter(owner.values())
        wrong = {a: (per_key[a], m) for a, m in messages.items() if per_key[a] != m}
        if wrong:
            problems.append(f"per-key sums of window counts (got, messages): {wrong}")
    assert not problems, (f"{len(problems)} problems, e.g.\n  " + "\n  ".join(problems[:12]) +
                          f"\nids by number of outputs: {dict(counts)}; {solo} late messages alone; outputs "
                          f"holding messages in one window only, per (key, epoch): "
                          f"{ {k: sorted(v) for k, v in list(single.items())[:12]} }\n{describe()}")
    return counts, solo


@pytest.mark.parametrize("kind", ["count", "range"])
def test_windows_under_kills(kind, make_cluster, tmp_path):
    seed = fault_seed()
    in_dir, out_dir, res_dir = tmp_path / "in", tmp_path / "out", tmp_path / "res"
    for d in (in_dir, out_dir, res_dir):
        d.mkdir()
    rng_in = random.Random(5)
    accounts = [f"acct{i:02d}" for i in range(40)]
    owner = {}
    ident = 0
    for name in NAMES:
        recs = []
        for _ in range(PER_SOURCE):
            ident += 1
            a = rng_in.choice(accounts)
            owner[ident] = a
            recs.append(f"{a},{ident}")
        write_framed(in_dir / f"in-{name}.bin", recs)
    if kind == "count":
        extra, quiet = ["--count-windows", "7"], 1.0
    else:
        # Range windows fire as the watermark passes them; after the input
        # ends, the quiet flush fires the rest (about 2 x 2 x range later).
        # A late message is fired on its own, so it can be told apart.
        extra, quiet = ["--window-ms", "400", "--slide-ms", "200", "--late-policy", "fire-per-message"], 3.0
    # 0.1 ms per message: each input file takes about 6 s to read, so the
    # kills come mid-stream and each recovery is followed by many windows.
    extra += ["--message-delay", "0.0001"]
    cluster = make_cluster("resilient_windows", APPS, 3, extra_flags=resilience_flags(res_dir),
                           app_args=file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt", *extra))
    f = Faults(cluster, seed)
    paths = out_paths(out_dir)

    def progress():
        """How many distinct messages are in some window output."""
        return len({i for rows in window_outputs(paths).values() for _, _, ids, _ in rows for i in ids})

    restores = {p.name: [] for p in paths}  # sink length each recovery went back to, per file
    for k, (victim, frac) in enumerate(zip([1, 0, 2], [0.2, 0.45, 0.7])):
        f.wait_progress(progress, int(frac * len(owner)), f"{frac:.0%} of the messages in window outputs",
                        interval=0.1)
        done = progress()
        f.note(f"kill {k + 1} with {done} of {len(owner)} messages out")
        assert done < len(owner), f"every message was out before kill {k + 1}\n{f.describe()}"
        committed, offsets = f.kill_to_rollback(victim, res_dir, "Resilient_windows")
        for name, path in zip(NAMES, paths):
            restores[path.name].append(offsets[name])
        f.note(f"rolling back to checkpoint {committed}, sink lengths {offsets}")
        time.sleep(f.rng.uniform(0, 0.5))
        f.restart(victim)
        f.wait_recovered(victim)
    # Partial count windows wait for the 5 s flush.
    f.wait_progress(progress, len(owner), "every message in a window output", timeout=30, interval=0.2)
    # The last windows of some keys can still fire after every message is in
    # one window (a sliding window holds each message twice).
    f.wait_settled(lambda: total_size(paths), "the window outputs to settle", quiet=quiet)
    print(f.report())
    counts, solo = check_windows(kind, window_outputs(paths), owner, restores, f.describe)
    print(f"messages by number of window outputs holding them: {dict(counts)}; late, alone: {solo}")
    f.shutdown(res_dir, "Resilient_windows-")


# ---------------------------------------------------------------- SIGSTOP

def test_sigstop(make_cluster, tmp_path):
    seed = fault_seed()
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    truth = make_word_input(in_dir, 30_000, seed=3)
    target = word_count_bytes(truth)
    res_dir = tmp_path / "res"
    cluster = start_word_count(make_cluster, in_dir, tmp_path / "out", res_dir)
    f = Faults(cluster, seed)
    paths = out_paths(tmp_path / "out")
    progress = lambda: total_size(paths)  # noqa: E731
    init, w1 = cluster.workers[0], cluster.workers[1]

    # A stopped worker is lost by heartbeat timeout and rejoins when continued.
    f.wait_progress(progress, int(0.15 * target), "15% of the output")
    recovered_before = [w.stdout().count(RECOVERED) for w in cluster.workers]
    lost = re.compile(r"lost worker 'worker1': no heartbeat for (\d+(?:\.\d+)?) s")
    t0 = time.time()
    w1.signal(signal.SIGSTOP)
    f.note("SIGSTOP worker1")
    try:
        wait_until(lambda: lost.search(init.stderr()), 10, "the initializer to declare worker1 lost by heartbeat")
    except AssertionError as e:
        w1.signal(signal.SIGCONT)
        raise AssertionError(f"{e}\n{f.describe()}")
    detected = time.time() - t0
    silent = float(lost.search(init.stderr()).group(1))
    f.note(f"initializer: {lost.search(init.stderr()).group(0)} (after {detected:.2f} s)")
    time.sleep(max(0.0, 5.0 - (time.time() - t0)))
    w1.signal(signal.SIGCONT)
    f.note("SIGCONT worker1")
    t1 = time.time()
    try:
        wait_until(lambda: all(w.stdout().count(RECOVERED) > b for w, b in zip(cluster.workers, recovered_before)),
                   20, "every worker to recover after SIGCONT")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{f.describe()}")
    f.note(f"cluster re-formed {time.time() - t1:.2f} s after SIGCONT")
    f.all_alive()
    assert 2.5 <= detected <= 5.0 and silent >= 3.0, f"worker1 declared lost {detected:.2f} s after SIGSTOP ({silent} s)"

    # A stop of the initializer shorter than the heartbeat timeout changes nothing.
    f.wait_progress(progress, int(0.55 * target), "55% of the output")
    err_before = [len(w.stderr()) for w in cluster.workers]
    out_before = [w.stdout().count("rolling back") for w in cluster.workers]
    init.signal(signal.SIGSTOP)
    f.note(f"SIGSTOP initializer at {progress() / target:.0%}")
    time.sleep(1.5)
    init.signal(signal.SIGCONT)
    f.note("SIGCONT initializer")
    f.wait_final(progress, target, "all the output", quiet=1.5)
    print(f.report())
    new_err = "".join(w.stderr()[b:] for w, b in zip(cluster.workers, err_before))
    assert "lost worker" not in new_err, f"a 1.5 s stop of the initializer broke the cluster:\n{new_err}\n{f.describe()}"
    assert [w.stdout().count("rolling back") for w in cluster.workers] == out_before, f.describe()
    check_word_counts(paths, truth, f.describe)
    f.shutdown(res_dir, "Word_Count_Application-")


# ---------------------------------------------------------------- generator

def test_gen_source_under_kills(make_cluster, tmp_path):
    """Kills mid-stream (the initializer, which runs the generator, and the
    others). After each, the cluster recovers from the last committed
    checkpoint N (the recovery line must name it) and the generator goes on
    from the value N stored, not from its start: its first value after the
    recovery (the app logs it) is one more than the values the committed
    output of N accounts for (one output line per value, every value
    before the barrier is in it). A recovery that started over, or a
    generator restarted from initial_value(), fails this even though its
    final output would be exact."""
    seed = fault_seed()
    n, keys = 1_000_000, 50
    want = gen_sums(n, keys)
    target = sum(len(f"{k} {c} {s}\n") for k, pairs in want.items() for c, s in pairs)
    out_dir, res_dir = tmp_path / "out", tmp_path / "res"
    out_dir.mkdir()
    res_dir.mkdir()
    gen_log = tmp_path / "generator.log"
    cluster = make_cluster("resilient_gen", APPS, 3, extra_flags=resilience_flags(res_dir),
                           env=dict(os.environ, RESILIENT_GEN_LOG=str(gen_log)),
                           # 5 us per value: about 5 s for all, so every kill finds values left.
                           app_args=lambda c, i: ["--gen-count", str(n), "--keys", str(keys), "--value-delay",
                                                  "0.000005", "--out-file", str(out_dir / "out-{worker}.txt")])
    f = Faults(cluster, seed)
    paths = out_paths(out_dir)
    progress = lambda: total_size(paths)  # noqa: E731
    log_lines = lambda: gen_log.read_text().splitlines() if gen_log.exists() else []  # noqa: E731
    stem = "Resilient_generator"
    for k, (victim, frac) in enumerate(zip([0, 1, 0, 2], [0.1, 0.25, 0.4, 0.55])):
        f.wait_progress(progress, int(frac * target), f"{frac:.0%} of the output")
        # A checkpoint taken while the generator runs, so that going on from
        # it differs from starting over.
        f.wait_commit(res_dir, f.commit_mark(res_dir))
        logged = len(log_lines())
        f.note(f"kill {k + 1} at {progress() / target:.1%} of the output")
        committed, offsets = f.kill_to_rollback(victim, res_dir, stem)
        # The values the committed output accounts for: one line each.
        values = sum(path.read_bytes()[:offsets[name]].count(b"\n") for name, path in zip(NAMES, paths))
        assert 0 < values < n, f"checkpoint {committed} holds {values} of the {n} values\n{f.describe()}"
        time.sleep(f.rng.uniform(0, 0.5))
        p = f.restart(victim)
        f.wait_recovered(victim)
        line = [l for l in p.stdout().splitlines() if RECOVERED in l][-1]
        m = re.fullmatch(re.escape(RECOVERED) + r" \(checkpoint (\d+), generation (\d+)\)", line)
        assert m and int(m.group(1)) == committed, \
            f"{p.label} recovered with {line!r}, not from checkpoint {committed}\n{f.describe()}"
        wait_until(lambda: len(log_lines()) > logged, 10, "the generator's first value after the recovery")
        resumed = log_lines()[logged:]
        f.note(f"checkpoint {committed}: {values} values in the committed output; generator resumed: {resumed}")
        assert {int(l.split()[1]) for l in resumed} == {values + 1}, \
            (f"after recovering checkpoint {committed} (whose output holds values 1..{values}) the generator went on "
             f"from {resumed} ('pid value'), not {values + 1}\n{f.describe()}")
    f.wait_final(progress, target, "all the output", quiet=1.5)
    print(f.report())
    problems = gen_sum_problems(paths, want)
    assert not problems, "\n".join(problems[:10]) + "\n" + f.describe()
    f.shutdown(res_dir, "Resilient_generator-")


def gen_sums(n, keys):
    """What apps/resilient_gen.py must write for 1..n over `keys` keys:
    per key, in generator order, (1, v1), (2, v1 + v2), ..."""
    want = collections.defaultdict(list)
    sums = collections.Counter()
    for v in range(1, n + 1):
        k = str(v % keys)
        sums[k] += v
        want[k].append((len(want[k]) + 1, sums[k]))
    return want


def gen_sum_problems(paths, want):
    """What is wrong with resilient_gen's sink files (`key count sum`
    lines) against `gen_sums(...)`: per key, exactly the wanted lines in
    order, all in one worker's file."""
    got = collections.defaultdict(list)
    where = collections.defaultdict(set)
    for name, p in zip(NAMES, paths):
        for line in p.read_text().splitlines():
            k, c, s = line.split()
            got[k].append((int(c), int(s)))
            where[k].add(name)
    problems = []
    for k in want:
        if got[k] != want[k]:
            g = got[k]
            i = next((j for j, (a, b) in enumerate(zip(g, want[k])) if a != b), min(len(g), len(want[k])))
            problems.append(f"key {k}: {len(g)} lines (want {len(want[k])}), first difference at {i}: "
                            f"{g[i:i + 3]} vs {want[k][i:i + 3]}")
    problems += [f"unexpected key {k!r}" for k in sorted(set(got) - set(want))]
    problems += [f"key {k}'s outputs on several workers: {sorted(w)}" for k, w in sorted(where.items()) if len(w) > 1]
    return problems
