"""Resilience under repeated faults (DESIGN 7-10, spec 8.3).

Every test runs 3 workers with `--run-with-resilience` and checkpoints
every 150 ms, reads its input through quoll's replayable file source and
writes through the exactly-once file sink (`{worker}` in both paths is the
worker's name), injects faults while the input is being processed, and ends
with a clean shutdown after which every worker exits 0 and the resilience
directory is empty. A restarted worker runs its original command and must
print the recovery lines of spec 8.3.

- `test_repeated_kills_word_count`: examples/word_count, 12+ SIGKILLs of
  random workers (the initializer at least twice), some while the cluster
  is still recovering from the previous one. Every word's last count is
  exact, every (word, n) for n in 1..count is in the sinks exactly once, and
  each worker's sink holds what it holds after an uninterrupted run.
- `test_custom_codec_state_under_kills`: per-key state that pickle refuses
  (it holds a lock) is checkpointed through the app's own top-level
  serialize/deserialize: the checkpoint files hold the app's magic, and a
  restarted worker deserializes exactly the entries it says it replayed.
- `test_windows_under_kills` (count and range windows): every message is in
  as many window outputs of its key as the window spec allows, none lost
  and no window output written twice (see `check_windows`).
- `test_sigstop`: a stopped worker is declared lost by the heartbeat
  timeout and rejoins by itself on SIGCONT; a 1.5 s stop of the initializer
  (under the 3 s timeout) changes nothing.
- `test_gen_source_under_kills`: the generator's value is checkpointed: per
  key, the running sums are exactly those of 1..N in order.

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

from harness import EXAMPLES, Proc, wait_until

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
    return ["--run-with-resilience", "--resilience-dir", str(res_dir), "--time-between-checkpoints", str(interval_ns)]


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
        recovery lines (spec 8.3)."""
        p = self.cluster.workers[i]
        try:
            wait_until(lambda: RECOVERED in p.stdout() or not p.alive(), timeout, f"{p.label} to recover")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.describe()}")
        assert p.alive(), f"{p.label} exited during recovery\n{self.describe()}"
        assert REPLAYED.search(p.stdout()), f"{p.label} did not print the replay line\n{self.describe()}"
        line = [l for l in p.stdout().splitlines() if RECOVERED in l][-1]
        self.note(f"{p.label} recovered: {line.split(RECOVERED)[1].strip()}")

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

    def shutdown(self, res_dir, app_prefix):
        """Clean shutdown: every worker exits 0 and the resilience files of
        the app are gone (spec 8.3, 8.4)."""
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


def check_word_counts(lines, truth, describe):
    pairs = collections.Counter()
    last = {}
    for line in lines:
        word, n = line.rsplit(" => ", 1)
        pairs[(word, int(n))] += 1
        last[word] = max(last.get(word, 0), int(n))
    doubled = sorted(p for p, k in pairs.items() if k > 1)
    wrong = {w: (last.get(w), n) for w, n in truth.items() if last.get(w) != n}
    unknown = sorted(set(last) - set(truth))
    missing = [(w, n) for w, c in truth.items() for n in range(1, c + 1) if (w, n) not in pairs]
    assert not doubled and not wrong and not unknown and not missing and len(lines) == sum(truth.values()), (
        f"{len(lines)} lines for {sum(truth.values())} words; {len(doubled)} (word, n) doubled, e.g. {doubled[:5]}; "
        f"{len(missing)} missing, e.g. {missing[:5]}; {len(wrong)} wrong final counts (got, true), e.g. "
        f"{dict(list(wrong.items())[:5])}; unknown words {unknown[:5]}\n{describe()}")


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


def test_repeated_kills_word_count(make_cluster, tmp_path):
    seed = fault_seed()
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    truth = make_word_input(in_dir, 50_000)
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
    check_word_counts([l for n in NAMES for l in expected[n]], truth, ref_faults.describe)

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
    lines = read_lines(paths)
    check_word_counts(lines, truth, f.describe)
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
        # The restarted process restored each state entry it replayed through deserialize.
        after = log.read_text().splitlines() if log.exists() else []
        restored = collections.Counter(l.split()[1] for l in after[len(before):])
        replayed = int(re.search(r"Replayed (\d+) entries", p.stdout()).group(1))
        f.note(f"{p.label} replayed {replayed} entries; state deserializations by pid since the kill: {dict(restored)}")
        assert restored[str(p.popen.pid)] == replayed, \
            f"the restarted {p.label} replayed {replayed} entries but deserialized {restored[str(p.popen.pid)]} states\n" \
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


# ---------------------------------------------------------------- windows

def window_outputs(paths):
    """Every window output line, per sink file, as (account, count, [ids])."""
    out = {}
    for p in paths:
        rows = []
        if p.exists():
            data = p.read_text()
            for line in data[:data.rfind("\n") + 1].splitlines():
                acct, n, ids = line.split()
                rows.append((acct, int(n), [int(i) for i in ids.split(";")]))
        out[p.name] = rows
    return out


def check_windows(kind, outputs, owner, describe):
    """Count windows (7 messages): every message in exactly one output of
    its key, at most 7 per output, per key the counts add up to its
    messages. Sliding range windows (range = 2 x slide, late data placed in
    the oldest open window): every message in one output of its key, or in
    two that are consecutive outputs of that key (neighbouring windows share
    a pane). Not every message is in two windows: those in the first pane of
    a key's grid, and those that reach their key's worker after a window
    holding their time fired (the watermark only counts upstreams already
    heard from, spec 6), are in one. A window output lost, or written twice
    (e.g. not truncated away on rollback, then fired again), breaks this."""
    problems = []
    where = collections.defaultdict(list)  # id -> [(file, key, index among the key's outputs)]
    per_key = collections.Counter()
    files_of_key = collections.defaultdict(set)
    for fname, rows in outputs.items():
        index = collections.Counter()
        for acct, n, ids in rows:
            files_of_key[acct].add(fname)
            if n != len(ids) or len(set(ids)) != n or (kind == "count" and n > 7):
                problems.append(f"malformed output {acct} {n} {ids[:10]}")
            for i in ids:
                if owner.get(i) != acct:
                    problems.append(f"id {i} of {owner.get(i)} in an output of {acct}")
                where[i].append((fname, acct, index[acct]))
            per_key[acct] += n
            index[acct] += 1
    split = {k: v for k, v in files_of_key.items() if len(v) > 1}
    if split:
        problems.append(f"keys with outputs on several workers: {split}")
    counts = collections.Counter(len(where[i]) for i in owner)
    for i in owner:
        w = where[i]
        if kind == "count" or len(w) != 2:
            ok = len(w) == 1
        else:
            ok = w[0][:2] == w[1][:2] and w[1][2] == w[0][2] + 1
        if not ok:
            problems.append(f"id {i} ({owner[i]}) in outputs {w}")
    messages = collections.Counter(owner.values())
    if kind == "count":
        wrong = {a: (per_key[a], m) for a, m in messages.items() if per_key[a] != m}
        if wrong:
            problems.append(f"per-key sums of window counts (got, messages): {wrong}")
    assert not problems, (f"{len(problems)} problems, e.g.\n  " + "\n  ".join(problems[:12]) +
                          f"\nids by number of outputs: {dict(counts)}\n{describe()}")
    return counts


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
        for _ in range(60_000):
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
        extra, quiet = ["--window-ms", "400", "--slide-ms", "200", "--late-policy", "place-in-oldest-window"], 3.0
    cluster = make_cluster("resilient_windows", APPS, 3, extra_flags=resilience_flags(res_dir),
                           app_args=file_args(in_dir / "in-{worker}.bin", out_dir / "out-{worker}.txt", *extra))
    f = Faults(cluster, seed)
    paths = out_paths(out_dir)

    def progress():
        """How many distinct messages are in some window output."""
        return len({i for rows in window_outputs(paths).values() for _, _, ids in rows for i in ids})

    for k, (victim, frac) in enumerate(zip([1, 0, 2], [0.2, 0.45, 0.7])):
        f.wait_progress(progress, int(frac * len(owner)), f"{frac:.0%} of the messages in window outputs",
                        interval=0.1)
        f.note(f"kill {k + 1} with {progress()} of {len(owner)} messages out")
        f.kill_and_restart(victim)
        f.wait_recovered(victim)
    # Partial count windows wait for the 5 s flush.
    f.wait_progress(progress, len(owner), "every message in a window output", timeout=30, interval=0.2)
    f.wait_final(lambda: total_size(paths), total_size(paths), "the window outputs to settle", quiet=quiet)
    print(f.report())
    counts = check_windows(kind, window_outputs(paths), owner, f.describe)
    print(f"messages by number of window outputs holding them: {dict(counts)}")
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
    check_word_counts(read_lines(paths), truth, f.describe)
    f.shutdown(res_dir, "Word_Count_Application-")


# ---------------------------------------------------------------- generator

def test_gen_source_under_kills(make_cluster, tmp_path):
    seed = fault_seed()
    n, keys = 1_000_000, 50
    # Per key, in generator order: (1, v1), (2, v1+v2), ...
    want = collections.defaultdict(list)
    sums = collections.Counter()
    for v in range(1, n + 1):
        k = str(v % keys)
        sums[k] += v
        want[k].append((len(want[k]) + 1, sums[k]))
    target = sum(len(f"{k} {c} {s}\n") for k, pairs in want.items() for c, s in pairs)
    out_dir, res_dir = tmp_path / "out", tmp_path / "res"
    out_dir.mkdir()
    res_dir.mkdir()
    cluster = make_cluster("resilient_gen", APPS, 3, extra_flags=resilience_flags(res_dir),
                           app_args=lambda c, i: ["--gen-count", str(n), "--keys", str(keys),
                                                  "--out-file", str(out_dir / "out-{worker}.txt")])
    f = Faults(cluster, seed)
    paths = out_paths(out_dir)
    progress = lambda: total_size(paths)  # noqa: E731
    restored = []
    for k, (victim, frac) in enumerate(zip([0, 1, 0, 2], [0.15, 0.35, 0.55, 0.75])):
        f.wait_progress(progress, int(frac * target), f"{frac:.0%} of the output")
        f.note(f"kill {k + 1} at {progress() / target:.1%} of the output")
        p = f.kill_and_restart(victim)
        f.wait_recovered(victim)
        m = re.search(r"Recovery COMPLETE - ~~\| \(checkpoint (\d+)", p.stdout())
        restored.append(int(m.group(1)) if m else None)
    f.note(f"checkpoints restored: {restored}")
    f.wait_final(progress, target, "all the output", quiet=1.5)
    print(f.report())
    # The kills came mid-stream: a recovery went back to a checkpoint taken while the generator ran.
    assert any(c is None or c > 1 for c in restored), f.report()

    got = collections.defaultdict(list)
    where = collections.defaultdict(set)
    for name, p in zip(NAMES, paths):
        for line in p.read_text().splitlines():
            k, c, s = line.split()
            got[k].append((int(c), int(s)))
            where[k].add(name)
    wrong = []
    for k in want:
        if got[k] != want[k]:
            g = got[k]
            i = next((j for j, (a, b) in enumerate(zip(g, want[k])) if a != b), min(len(g), len(want[k])))
            wrong.append(f"key {k}: {len(g)} lines (want {len(want[k])}), first difference at {i}: "
                         f"{g[i:i + 3]} vs {want[k][i:i + 3]}")
    assert not wrong and set(got) == set(want), "\n".join(wrong[:10]) + "\n" + f.describe()
    assert all(len(w) == 1 for w in where.values()), f"a key's outputs on several workers: {dict(where)}"
    f.shutdown(res_dir, "Resilient_generator-")
