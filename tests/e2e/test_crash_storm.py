"""Progress under a crash storm, for every replayable source kind.

Three workers with `--run-with-resilience` and a checkpoint every 200 ms
read from a generator (on the initializer), from quoll's file source (one
file per worker) or from a source connector (`quoll send --connector`, one
sender per worker), through keyed state, into the exactly-once file sink.
Each app spends a fixed time per input record, so that the input outlasts
the storm.

For each kind the test makes two runs of the same length (the storm
length: 14 s, or 120 s with `pytest --long`):

- undisturbed: how much output the last committed checkpoint accounts for
  after the storm length;
- the storm: a random worker (the initializer too) gets SIGKILL every 2 s
  and is restarted with its command after a random pause of up to 0.3 s,
  often while the cluster is still recovering from the kill before.

What is checked: the committed position keeps advancing during the storm
(it grows in every 4 s window: 2 kills), and once the kills stop the output
is exact (per key the counts are 1, 2, ... n in order; nothing lost or
doubled). The committed output of both runs and their ratio are printed
(`pytest -s`) and kept in docs/security.md.
"""

import collections
import os
import random
import time
from pathlib import Path

import pytest

from harness import QUOLL, Proc, wait_until, word_count_problems
from test_resilience_faults import (APPS, NAMES, Faults, fault_seed, gen_sum_problems, gen_sums, out_paths,
                                    resilience_flags, total_size, write_framed)
from test_resilience_files import last_committed, sink_offsets

CHECKPOINT_NS = 200_000_000
KILL_EVERY = 2.0
# Per input record: 0.5 ms a line of words (2,000 lines/s per worker) and
# 50 us a generator value (20,000 values/s).
LINE_DELAY = 0.0005
VALUE_DELAY = 0.00005


@pytest.fixture
def storm_seconds(request):
    return 120.0 if request.config.getoption("--long") else 14.0


def committed_output(res_dir, stem):
    """Bytes of sink output that the newest committed checkpoint accounts
    for, summed over the workers (0 before the first commit). Checkpoint
    files come and go while the cluster runs, so a read that meets a file
    being replaced is retried."""
    for _ in range(20):
        try:
            committed = last_committed(res_dir, stem)
            if committed is None:
                return 0
            return sum(sum(sink_offsets(res_dir, name, committed, stem).values()) for name in NAMES)
        except (FileNotFoundError, IndexError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"could not read the committed sink positions in {res_dir}")


class Run:
    """One cluster of the app for `kind`, its input, and what it must output."""

    def __init__(self, kind, make_cluster, workdir, seconds):
        self.kind = kind
        self.dir = Path(workdir)
        self.out_dir, self.res_dir = self.dir / "out", self.dir / "res"
        for d in (self.out_dir, self.res_dir):
            d.mkdir(parents=True)
        self.paths = out_paths(self.out_dir)
        self.senders = []
        # Enough input for 1.5 times the storm length at the undisturbed rate.
        flags = resilience_flags(self.res_dir, CHECKPOINT_NS)
        if kind == "gen":
            self.stem = "Resilient_generator"
            n, keys = int(1.5 * seconds / VALUE_DELAY), 50
            self.want = gen_sums(n, keys)
            app_args = lambda c, i: ["--gen-count", str(n), "--keys", str(keys), "--value-delay",  # noqa: E731
                                     str(VALUE_DELAY), "--out-file", str(self.out_dir / "out-{worker}.txt")]
            self.cluster = make_cluster("resilient_gen", APPS, 3, extra_flags=flags, app_args=app_args, start=False)
        else:
            self.stem = "wc_app"
            rng = random.Random(5)
            vocab = [f"w{i:03d}" for i in range(300)]
            self.truth = collections.Counter()
            self.inputs = []
            for name in NAMES:
                lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6)))
                         for _ in range(int(1.5 * seconds / LINE_DELAY))]
                for line in lines:
                    self.truth.update(line.split())
                path = self.dir / f"in-{name}.bin"
                write_framed(path, lines)
                self.inputs.append(path)
            if kind == "file":
                source = lambda c, i: ["--in-file", str(self.dir / "in-{worker}.bin")]  # noqa: E731
            else:
                source = lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}"]  # noqa: E731
            app_args = lambda c, i: source(c, i) + [  # noqa: E731
                "--out-file", str(self.out_dir / "out-{worker}.txt"), "--line-delay", str(LINE_DELAY)]
            self.cluster = make_cluster("wc_app", APPS, 3, extra_flags=flags, app_args=app_args, start=False)
        self.cluster.workdir = self.dir

    def start(self):
        self.cluster.start()
        if self.kind == "connector":
            for i, path in enumerate(self.inputs):
                args = [QUOLL, "send", "--connector", "--host", f"127.0.0.1:{self.cluster.in_ports[i]}",
                        "--file", path, "--framing", "raw-framed", "--stream-id", str(i + 1)]
                self.senders.append(Proc(args, self.dir, f"send{i}").start())
        return self

    def committed(self):
        return committed_output(self.res_dir, self.stem)

    def target(self):
        """Sink bytes once all the input is out."""
        if self.kind == "gen":
            return sum(len(f"{k} {c} {s}\n") for k, pairs in self.want.items() for c, s in pairs)
        return sum(c * (len(w) + 4) + sum(len(f"{n}\n") for n in range(1, c + 1)) for w, c in self.truth.items())

    def problems(self):
        if self.kind == "gen":
            return gen_sum_problems(self.paths, self.want)
        return word_count_problems({n: p.read_text().splitlines() if p.exists() else []
                                    for n, p in zip(NAMES, self.paths)}, self.truth)

    def stop(self):
        for s in self.senders:
            s.stop()
        self.cluster.stop()

    def describe(self):
        return "\n".join(s.describe() for s in self.senders)


@pytest.mark.parametrize("kind", ["gen", "file", "connector"])
def test_progress_under_a_crash_storm(kind, make_cluster, tmp_path, storm_seconds):
    # Undisturbed, for the same time.
    calm = Run(kind, make_cluster, tmp_path / "calm", storm_seconds).start()
    time.sleep(storm_seconds)
    undisturbed = calm.committed()
    calm.stop()
    assert undisturbed > 0, f"no checkpoint committed in {storm_seconds} s without faults"

    run = Run(kind, make_cluster, tmp_path / "storm", storm_seconds).start()
    f = Faults(run.cluster, fault_seed())
    samples = []  # (seconds into the storm, committed output) at each kill
    start = time.time()
    while (at := time.time() - start) + KILL_EVERY <= storm_seconds:
        time.sleep(max(0.0, start + (len(samples) + 1) * KILL_EVERY - time.time()))
        samples.append((time.time() - start, run.committed()))
        victim = f.rng.randrange(3)
        f.note(f"committed output {samples[-1][1]} bytes; kill {len(samples)}")
        f.kill(victim)
        time.sleep(f.rng.uniform(0, 0.3))
        f.restart(victim)
    time.sleep(max(0.0, start + storm_seconds - time.time()))
    stormy = run.committed()
    samples.append((time.time() - start, stormy))
    ratio = stormy / undisturbed
    print(f"{kind}: {len(samples) - 1} kills in {storm_seconds:.0f} s; committed output {stormy} bytes against "
          f"{undisturbed} undisturbed ({ratio:.0%}); at each kill: {[b for _, b in samples]}")
    describe = lambda: f"{f.describe()}\n{run.describe()}\ncommitted output at each kill: {samples}"  # noqa: E731

    # The committed position advances in every window of 2 kill intervals.
    for (t0, b0), (t1, b1) in zip(samples, samples[2:]):
        assert b1 > b0, (f"no checkpoint committed output between {t0:.1f} s and {t1:.1f} s into the storm "
                         f"(stuck at {b0} bytes)\n{describe()}")

    # Once the kills stop, everything comes out exactly once.
    target = run.target()
    try:
        wait_until(lambda: total_size(run.paths) >= target and run.committed() >= target
                   or not all(p.alive() for p in run.cluster.workers), 3 * storm_seconds + 30, "all the output")
    except AssertionError as e:
        raise AssertionError(f"{e}: {total_size(run.paths)} of {target} bytes\n{describe()}")
    f.all_alive()
    problems = run.problems()
    assert not problems, f"{len(problems)} problems, e.g.\n  " + "\n  ".join(problems[:10]) + "\n" + describe()
    for s in run.senders:
        assert s.wait(30) == 0, f"{s.label} did not end with everything acknowledged\n{describe()}"
    run.stop()
