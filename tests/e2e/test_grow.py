"""Growing a running cluster with `--join`, and shrinking it with
`quoll shrink` (the external channel's shrink request), with real
processes.

The app (apps/wc_app.py) counts words read by each worker's replayable
file source and writes `word => count` lines through the exactly-once file
sink, slowly (`--line-delay`), so that workers join mid-stream. The
initializer starts alone with `--control` and `--data`; the others are
started later with `--join <its control address>`.

What is checked after each run: every word's counts are exactly 1..n
across all outputs (a word's counts move to the worker that owns it after
a join, so they may be split over several files, but none is lost or
doubled, and each file has them in order), the cluster reports the new
`worker_count` and `worker_names`, and each key's state is held by exactly
one worker, the one that owns its key group (state-entity query).
"""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

from harness import (EXAMPLES, MACHIDA3, QUOLL, Cluster, Proc, assert_word_counts, external, key_owner,
                     moved_word_count_problems, placed_owner, state_entities, wait_until)
from test_resilience_files import make_input, out_files

APPS = Path(__file__).resolve().parent / "apps"
INTERVAL_NS = 100_000_000
READY = "|~~ INIT PHASE III: Application is ready to work! ~~|"


class Growing(Cluster):
    """Word count on an initializer that others join: worker i > 0 is
    started with `--join` instead of `--control`."""

    def __init__(self, tmp_path, names, lines, line_delay, module="wc_app", paths=(APPS,), fed=None,
                 founding=1):
        super().__init__(tmp_path, module, list(paths), workers=len(names))
        self.names = names
        # The first `founding` workers form the cluster (`--control`).
        self.founding = founding
        # Per worker: flags of its own, and (joiners) the address to
        # --join instead of the initializer's --control.
        self.own_flags = {}
        self.join_via = {}
        self.res = Path(tmp_path) / "res"
        self.res.mkdir()
        # `fed`: the workers with input (all by default); the others get
        # an empty input file.
        fed = names if fed is None else fed
        self.truth = make_input(tmp_path, fed, lines)
        for name in set(names) - set(fed):
            (Path(tmp_path) / f"in-{name}.bin").write_bytes(b"")
        self.flags = ["--run-with-resilience", "--resilience-dir", str(self.res),
                      "--time-between-checkpoints", str(INTERVAL_NS)]
        self.app = ["--in-file", str(Path(tmp_path) / "in-{worker}.bin"),
                    "--out-file", str(Path(tmp_path) / "out-{worker}.txt"),
                    "--line-delay", str(line_delay)]
        self.procs = {}
        self.starts = {}

    def command(self, i):
        base = [MACHIDA3, "--application-module", self.module, "--external",
                f"127.0.0.1:{self.external_ports[i]}", "--ponythreads", "1"]
        if i == 0:
            base += ["--cluster-initializer", "--name", "initializer", "--control", f"127.0.0.1:{self.control}",
                     "--data", f"127.0.0.1:{self.data}", "--worker-count", str(self.founding)]
        elif i < self.founding:
            base += ["--name", self.names[i], "--control", f"127.0.0.1:{self.control}"]
        else:
            base += ["--name", self.names[i], "--join", self.join_via.get(i, f"127.0.0.1:{self.control}")]
        app = self.app(i) if callable(self.app) else self.app
        return base + self.flags + self.own_flags.get(i, []) + app

    def launch(self, i):
        """Starts (or restarts, with the same command) worker i."""
        self.starts[i] = self.starts.get(i, 0) + 1
        p = Proc(self.command(i), self.workdir, f"{self.names[i]}-{self.starts[i]}", env=self.env).start()
        self.procs[i] = p
        self.workers.append(p)
        return p

    def kill_and_restart(self, i):
        """SIGKILLs worker i and starts it again with its command."""
        self.procs[i].signal(signal.SIGKILL)
        self.procs[i].wait(10)
        self.launch(i)

    def settle(self, count, timeout=30):
        """Waits for `count` members and exact output, then checks where
        each word's state is."""
        self.wait_members(count, timeout)
        self.wait_exact()
        self.assert_state_placed(count)

    def start_alone(self):
        """Starts the initializer and waits until it has counted a while."""
        self.launch(0)
        self.wait_members(1)
        wait_until(lambda: len(self.outputs().get("out-initializer.txt", [])) > 200, 20, "output")

    def status(self, i=0):
        r = external(self.external_ports[i], "status", "--json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait_members(self, count, timeout=30):
        """Waits until workers 0..count-1 are ready and every one of them
        answers cluster-status with those `count` members."""
        names = ["initializer"] + sorted(n for n in self.names[:count] if n != "initializer")
        want = {"worker_count": count, "worker_names": names, "processing_messages": True}
        try:
            wait_until(lambda: all(READY in self.procs[i].stdout() and self.status(i) == want
                                   for i in range(count)), timeout, f"{count} members")
        except AssertionError:
            seen = [self.status(i) for i in range(count)]
            raise AssertionError(f"statuses {seen}, want {want} from each\n{self.describe()}")

    def outputs(self):
        return {p.name: p.read_text().splitlines() for p in out_files(self.workdir)}

    def problems(self):
        return moved_word_count_problems(self.outputs(), self.truth)

    def wait_exact(self, timeout=60):
        total = sum(self.truth.values())
        try:
            wait_until(lambda: sum(len(v) for v in self.outputs().values()) >= total and not self.problems(),
                       timeout, "exact output")
        except AssertionError:
            raise AssertionError(f"{self.problems()[:10]}\n{self.describe()}")

    def members(self, count):
        return ["initializer"] + sorted(self.names[1:count])

    def owner(self, count):
        """key (bytes) -> index in `members(count)` of its owner, by the
        placement the initializer recorded."""
        return placed_owner(self.res, self.members(count))

    def assert_state_placed(self, count):
        """Each word's state on exactly one worker: the owner of its key
        group among the `count` members."""
        members = self.members(count)
        owner = self.owner(count)
        where = {}
        for i in range(count):
            index = members.index(self.names[i])
            for keys in state_entities(self.external_ports[i]).values():
                for key in keys:
                    assert key not in where, f"{key} held by {where[key]} and {self.names[i]}"
                    where[key] = self.names[i]
                    assert owner(key.encode()) == index, \
                        f"{key} held by {self.names[i]}, owned by {members[owner(key.encode())]}"
        assert set(where) == set(self.truth), set(self.truth) ^ set(where)

    def describe(self):
        return super().describe() + f"\nstatus: {self.status()}"


def test_one_worker_grows_to_three_under_load(tmp_path):
    c = Growing(tmp_path, ["initializer", "worker1", "worker2"], lines=6000, line_delay=0.0005)
    try:
        c.start_alone()
        c.launch(1)
        c.wait_members(2)
        joined = c.procs[0].stdout()
        assert "worker 'worker1' joins the cluster" in joined, c.describe()
        c.launch(2)
        c.settle(3)
        # State moved: the joiners hold counts of words the initializer
        # began counting before they joined.
        first = {l.rpartition(" => ")[0] for l in c.outputs()["out-initializer.txt"][:200]}
        owner = c.owner(3)
        moved = [w for w in first if owner(w.encode()) != 0]
        later = {l.rpartition(" => ")[0]: int(l.rpartition(" => ")[2])
                 for f in ("out-worker1.txt", "out-worker2.txt") for l in c.outputs().get(f, [])}
        assert moved and all(later.get(w, 0) > 1 for w in moved if c.truth[w] > 1), c.describe()
    finally:
        c.stop()


def test_a_joiner_killed_mid_join_restarts_and_the_cluster_ends_exact(tmp_path):
    c = Growing(tmp_path, ["initializer", "worker1"], lines=2500, line_delay=0.0005)
    try:
        c.start_alone()
        joiner = c.launch(1)
        wait_until(lambda: "joins the cluster" in c.procs[0].stdout(), 20, "the join")
        joiner.signal(signal.SIGKILL)
        joiner.wait(10)
        c.launch(1)
        c.settle(2)
    finally:
        c.stop()


def test_the_initializer_restarted_after_a_join_waits_for_the_joined_worker(tmp_path):
    c = Growing(tmp_path, ["initializer", "worker1"], lines=2500, line_delay=0.0005)
    try:
        c.launch(0)
        c.wait_members(1)
        c.launch(1)
        c.wait_members(2)
        wait_until(lambda: sum(len(v) for v in c.outputs().values()) > 500, 20, "output")
        c.kill_and_restart(0)
        # Its command line says one worker; its membership record says two.
        c.settle(2)
    finally:
        c.stop()


def test_joining_a_cluster_without_resilience_is_refused(tmp_path):
    c = Growing(tmp_path, ["initializer", "worker1"], lines=50, line_delay=0)
    c.flags = []
    try:
        c.launch(0)
        wait_until(lambda: READY in c.procs[0].stdout(), 20, "the initializer")
        joiner = c.launch(1)
        try:
            rc = joiner.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(c.describe())
        assert rc != 0
        assert "worker 'worker1' can't join: growing a running cluster needs --run-with-resilience" \
            in joiner.stderr(), c.describe()
        assert c.status() == {"worker_count": 1, "worker_names": ["initializer"], "processing_messages": True}
    finally:
        c.stop()


def test_migrated_state_goes_through_the_apps_codec(tmp_path):
    log = tmp_path / "deserialized.txt"
    c = Growing(tmp_path, ["initializer", "worker1"], lines=4000, line_delay=0.0005, module="wc_codec_app")
    c.env["QUOLL_TEST_CODEC_LOG"] = str(log)
    try:
        c.start_alone()
        c.launch(1)
        c.settle(2)
        # The joiner rebuilt, with the app's deserialize, word states that
        # the initializer had counted (and serialized) before it joined.
        joiner = str(c.procs[1].popen.pid)
        rebuilt = [int(l.split()[1]) for l in log.read_text().splitlines() if l.split()[0] == joiner]
        assert rebuilt and max(rebuilt) > 0, c.describe()
    finally:
        c.stop()


def test_a_join_loses_and_doubles_nothing_from_a_plain_tcp_source(tmp_path, make_receiver):
    """TCP sources can't replay and TCP sinks resend on a rollback; a join
    pauses input and re-forms at a checkpoint taken then, so neither
    matters: the receiver gets every count exactly once."""
    from test_word_count import make_lines, reference_counts
    out = make_receiver()
    c = Growing(tmp_path, ["initializer", "worker1"], lines=1, line_delay=0, module="word_count",
                paths=(EXAMPLES / "word_count",))
    c.app = lambda i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr]
    lines = make_lines(6000, seed=3)
    (tmp_path / "lines.txt").write_text("".join(l + "\n" for l in lines))
    expected = reference_counts(lines)
    try:
        c.launch(0)
        c.wait_members(1)
        sender = Proc([QUOLL, "send", "--host", f"127.0.0.1:{c.in_ports[0]}", "--file", tmp_path / "lines.txt",
                       "--rate", "2000"], tmp_path, "send").start()
        wait_until(lambda: len(out.lines()) > 2000, 20, "output")
        c.launch(1)
        c.wait_members(2)
        assert sender.alive(), "the input ended before the join: nothing was tested"
        assert sender.wait(60) == 0, sender.describe()
        out.wait_for_lines(sum(expected.values()), timeout=60)
        time.sleep(0.5)
        assert_word_counts({"receiver": out.lines()}, expected, c.describe)
    finally:
        c.stop()


def shrink(c, *args):
    """`quoll shrink` against worker 0's (the initializer's) external channel."""
    return subprocess.run([QUOLL, "shrink", f"127.0.0.1:{c.external_ports[0]}", *args], capture_output=True,
                          text=True, timeout=30)


def three_fed_by_the_initializer(tmp_path, lines):
    """Three workers formed by joins, input on the initializer only (so a
    leaver abandons no input of its own)."""
    c = Growing(tmp_path, ["initializer", "worker1", "worker2"], lines=lines, line_delay=0.0005,
                fed=["initializer"])
    c.start_alone()
    c.launch(1)
    c.launch(2)
    try:
        c.wait_members(3)
    except AssertionError:
        c.stop()
        raise
    return c


def test_three_workers_shrink_to_one_under_load(tmp_path):
    """The leavers hand their state over and exit 0; the initializer ends
    with every count (only it has input, so the leavers abandon none)."""
    c = three_fed_by_the_initializer(tmp_path, lines=6000)
    try:
        wait_until(lambda: sum(len(v) for v in c.outputs().values()) > 3000, 30, "output on three workers")
        query = shrink(c, "--query")
        assert query.returncode == 0 and "2 worker(s) may leave: worker1, worker2" in query.stdout, query
        refused = shrink(c, "--names", "initializer")
        assert refused.returncode == 1 and "'initializer' is the initializer" in refused.stderr, refused
        refused = shrink(c, "--names", "nobody")
        assert refused.returncode == 1 and "no worker named 'nobody'" in refused.stderr, refused
        elsewhere = subprocess.run([QUOLL, "shrink", f"127.0.0.1:{c.external_ports[1]}", "--count", "1"],
                                   capture_output=True, text=True, timeout=30)
        assert elsewhere.returncode == 1 and "initializer's external channel" in elsewhere.stderr, elsewhere
        done = shrink(c, "--count", "2")
        assert done.returncode == 0 and "2 worker(s) are leaving: worker1, worker2" in done.stdout, done
        for i in (1, 2):
            try:
                assert c.procs[i].wait(30) == 0, c.describe()
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{c.names[i]} did not leave\n{c.describe()}")
            assert "left the cluster (shrink)" in c.procs[i].stdout(), c.describe()
        c.settle(1)
        # Restarted with its command, a worker that left stops at once,
        # done: its left marker says so, and the cluster stays as it is.
        markers = sorted(p.name for p in c.res.glob("*.left"))
        assert len(markers) == 2 and all(m.endswith(("-worker1.left", "-worker2.left")) for m in markers), markers
        again = c.launch(1)
        assert again.wait(30) == 0, c.describe()
        assert "left its cluster (a shrink), so it does not run again" in again.stdout(), c.describe()
        assert c.status() == {"worker_count": 1, "worker_names": ["initializer"], "processing_messages": True}
    finally:
        c.stop()


def test_a_leaver_killed_mid_shrink_restarts_and_still_leaves(tmp_path):
    """Killed at a random moment of its leave (before the leave's
    checkpoint commits, after it, or once it has marked itself left),
    restarted with its command, worker1 leaves, exit 0."""
    c = three_fed_by_the_initializer(tmp_path, lines=5000)
    try:
        done = shrink(c, "--names", "worker1")
        assert done.returncode == 0, done
        delay = random.choice([0, random.uniform(0, 0.03), random.uniform(0.03, 0.3)])
        time.sleep(delay)
        first = c.procs[1]
        c.kill_and_restart(1)
        try:
            assert c.procs[1].wait(60) == 0, c.describe()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker1 did not leave\n{c.describe()}")
        if "left the cluster (shrink)" in first.stdout():
            how = "it had left"
        elif "told to leave again" in c.procs[0].stdout():
            how = "its leave had committed; told again"
        else:
            how = "its leave had not committed; it left after the restart"
        print(f"worker1 killed {delay:.3f} s after the shrink began: {how}")
        names = ["initializer", "worker2"]
        wait_until(lambda: c.status() == {"worker_count": 2, "worker_names": names, "processing_messages": True},
                   30, "two workers")
        c.wait_exact()
        owner = placed_owner(c.res, names)
        for i, name in enumerate(names):
            for keys in state_entities(c.external_ports[c.names.index(name)]).values():
                assert all(owner(k.encode()) == i for k in keys), c.describe()
    finally:
        c.stop()


def test_the_initializer_killed_mid_shrink_finishes_it_after_a_restart(tmp_path):
    c = Growing(tmp_path, ["initializer", "worker1"], lines=5000, line_delay=0.0005, fed=["initializer"])
    try:
        c.start_alone()
        c.launch(1)
        c.wait_members(2)
        done = shrink(c, "--count", "1")
        assert done.returncode == 0, done
        c.kill_and_restart(0)
        try:
            assert c.procs[1].wait(60) == 0, c.describe()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker1 did not leave\n{c.describe()}")
        c.settle(1)
    finally:
        c.stop()


def test_a_founding_worker_shrunk_away_rejoins_and_the_initializer_restarts_with_both(tmp_path):
    """The cluster's size is recorded, not recomputed: a founding worker
    that left and joined again counts once when the initializer restarts
    (it used to wait for three workers of two)."""
    c = Growing(tmp_path, ["initializer", "worker1"], lines=6000, line_delay=0.0005, fed=["initializer"],
                founding=2)
    try:
        c.launch(0)
        c.launch(1)
        c.wait_members(2)
        assert shrink(c, "--names", "worker1").returncode == 0
        assert c.procs[1].wait(60) == 0, c.describe()
        c.wait_members(1)
        # It joins afresh: no files, and its old sink file kept aside (a
        # new worker's exactly-once sink starts its file empty).
        for f in c.res.glob("*-worker1*"):
            f.unlink()
        (tmp_path / "out-worker1.txt").rename(tmp_path / "out-worker1-before.txt")
        c.founding = 1
        c.launch(1)
        c.wait_members(2)
        c.kill_and_restart(0)
        c.settle(2)
    finally:
        c.stop()


def skewed_cluster(tmp_path):
    """Two founding workers, four words in five owned by the initializer
    under the even split, rebalancing every 2 s; returns the cluster, once
    the initializer began a rebalance, and the hot words."""
    names = ["initializer", "worker1"]
    hot = [w for w in (f"hot{i}" for i in range(200)) if key_owner(w.encode(), 2) == 0][:40]
    c = Growing(tmp_path, names, lines=1, line_delay=0.0005, founding=2)
    c.truth = make_input(tmp_path, names, 10_000, seed=5, hot=hot)
    c.flags += ["--rebalance-interval", "2"]
    c.launch(0)
    c.launch(1)
    try:
        c.wait_members(2)
        wait_until(lambda: "rebalancing:" in c.procs[0].stdout(), 40, "a rebalance")
    except AssertionError:
        c.stop()
        raise
    return c, hot


def test_a_skewed_load_is_rebalanced_and_counts_stay_exact(tmp_path):
    """Two founding workers split the key groups evenly, and four words in
    five are owned by the initializer. After the rebalance interval the
    initializer moves key groups to worker1 (logged, and recorded with the
    membership); every count stays exact, each word's state ends on the
    worker the new placement names, and some of the hot words are now
    worker1's."""
    c, hot = skewed_cluster(tmp_path)
    try:
        c.settle(2)
        owner = c.owner(2)
        assert 0 < sum(owner(w.encode()) for w in hot) < len(hot), c.describe()
        line = next(l for l in c.procs[0].stdout().splitlines() if "rebalancing:" in l)
        assert "key groups move to even the load" in line, line
    finally:
        c.stop()


def test_a_worker_killed_mid_rebalance_restarts_and_counts_stay_exact(tmp_path):
    """SIGKILL of the worker receiving key groups as soon as the rebalance
    begins: the cluster recovers (to the old placement or the new one, as
    the recorded membership says) and every count is exact."""
    c, _ = skewed_cluster(tmp_path)
    try:
        c.kill_and_restart(1)
        c.settle(2)
    finally:
        c.stop()


def test_window_state_moves_with_its_key_groups_on_a_join(tmp_path):
    """Count windows of 7 per account (tests/e2e/apps/resilient_windows.py),
    input on the initializer; worker1 joins mid-stream. The accounts it now
    owns bring their open windows along: every message ends in exactly one
    window output, each output holds one account's messages, at most 7, and
    an account has at most one short output (the flush at the end of input).
    Some account has outputs in both sinks: its window state moved."""
    from test_resilience_faults import window_outputs, write_framed
    import random
    rng = random.Random(9)
    accounts = [f"acct{i:02d}" for i in range(40)]
    owner = {i: rng.choice(accounts) for i in range(1, 20_001)}
    c = Growing(tmp_path, ["initializer", "worker1"], lines=1, line_delay=0, module="resilient_windows",
                fed=["initializer"])
    write_framed(tmp_path / "in-initializer.bin", [f"{a},{i}" for i, a in owner.items()])
    c.app = ["--in-file", str(tmp_path / "in-{worker}.bin"), "--out-file", str(tmp_path / "out-{worker}.txt"),
             "--count-windows", "7", "--message-delay", "0.0002"]
    try:
        c.start_alone()
        c.launch(1)
        c.wait_members(2)
        paths = [tmp_path / "out-initializer.txt", tmp_path / "out-worker1.txt"]

        def out_ids():
            return sum(len(ids) for rows in window_outputs(paths).values() for _, _, ids, _ in rows)
        wait_until(lambda: out_ids() >= len(owner), 60, "every message in a window output")
        time.sleep(1.0)
        outputs = window_outputs(paths)
        seen, short, files_of = {}, {}, {}
        for name, rows in outputs.items():
            for acct, n, ids, _ in rows:
                assert n == len(ids) <= 7, (name, acct, n, ids)
                for i in ids:
                    assert owner[i] == acct, f"message {i} of {owner[i]} in a window of {acct}"
                    assert i not in seen, f"message {i} in two windows ({seen[i]}, {name})"
                    seen[i] = name
                short[acct] = short.get(acct, 0) + (n < 7)
                files_of.setdefault(acct, set()).add(name)
        assert set(seen) == set(owner), f"{len(set(owner) - set(seen))} messages in no window"
        assert all(n <= 1 for n in short.values()), short
        assert any(len(f) == 2 for f in files_of.values()), files_of
    finally:
        c.stop()


def test_a_worker_joins_through_a_member_that_is_not_the_initializer(tmp_path):
    """worker2 is started with `--join` and worker1's `--my-control`:
    worker1 answers with the initializer's address (Control::Redirect), and
    worker2 joins there; the cluster grows to three with exact counts."""
    from harness import free_port
    c = Growing(tmp_path, ["initializer", "worker1", "worker2"], lines=4000, line_delay=0.0005, founding=2)
    via = f"127.0.0.1:{free_port()}"
    c.own_flags[1] = ["--my-control", via]
    c.join_via[2] = via
    try:
        c.launch(0)
        c.launch(1)
        c.wait_members(2)
        c.launch(2)
        c.wait_members(3)
        assert "worker 'worker2' asked to join through this worker; sent to the initializer at " \
            f"127.0.0.1:{c.control}" in c.procs[1].stdout(), c.describe()
        assert f"the cluster's initializer is at 127.0.0.1:{c.control}: joining there" in c.procs[2].stdout(), \
            c.describe()
        c.wait_exact()
        c.assert_state_placed(3)
    finally:
        c.stop()


def test_a_shrink_moves_state_through_the_apps_codec(tmp_path):
    """worker1 leaves a two-worker cluster of the app with its own codec
    (apps/wc_codec_app.py: `deserialize` refuses a blob its `serialize`
    did not make): the state handed to the initializer must go through
    both, so every count stays exact and no blob is refused."""
    # Input on the initializer only: a leaver's own unread input stays unread.
    c = Growing(tmp_path, ["initializer", "worker1"], lines=5000, line_delay=0.0005, module="wc_codec_app",
                fed=["initializer"])
    c.env["QUOLL_TEST_CODEC_LOG"] = str(tmp_path / "deserialized.txt")
    try:
        c.start_alone()
        c.launch(1)
        c.wait_members(2)
        wait_until(lambda: len(c.outputs().get("out-worker1.txt", [])) > 300, 20, "worker1's output")
        assert shrink(c, "--names", "worker1").returncode == 0
        assert c.procs[1].wait(60) == 0, c.describe()
        c.settle(1)
        logs = c.procs[0].stdout() + c.procs[0].stderr()
        assert "serialize did not make" not in logs, c.describe()
    finally:
        c.stop()


def test_a_batch_of_joiners_joins_in_one_change(tmp_path):
    """Two joiners started with `--worker-count 2`: the first waits, the
    cluster running without it, until the second arrives; then both are
    taken in by one pause and re-formation."""
    c = Growing(tmp_path, ["initializer", "worker1", "worker2"], lines=4000, line_delay=0.0005,
                fed=["initializer"])
    c.own_flags = {1: ["--worker-count", "2"], 2: ["--worker-count", "2"]}
    try:
        c.start_alone()
        c.launch(1)
        wait_until(lambda: "waiting for 1 more joiner(s) of the batch" in c.procs[0].stdout(), 20, "the wait")
        before = len(c.outputs()["out-initializer.txt"])
        wait_until(lambda: len(c.outputs()["out-initializer.txt"]) > before + 100, 20, "output while waiting")
        assert c.status()["worker_count"] == 1, c.describe()
        c.launch(2)
        c.wait_members(3)
        changes = [l for l in c.procs[0].stdout().splitlines()
                   if "rolling back to the last complete checkpoint" in l and "joins" in l]
        assert len(changes) == 1, c.describe()
        c.wait_exact()
        c.assert_state_placed(3)
    finally:
        c.stop()


def test_joiners_with_another_app_or_another_secret_are_refused_and_change_nothing(tmp_path):
    """Against a running initializer: a `--join` of another application
    (a different topology) and one with a cluster secret of its own are
    refused, say why and exit; the cluster stays one worker, counting."""
    c = Growing(tmp_path, ["initializer", "worker1", "worker2"], lines=4000, line_delay=0.0005,
                fed=["initializer"])
    try:
        c.start_alone()
        other_app = c.command(1)
        other_app[other_app.index("--application-module") + 1] = "resilient_windows"
        stranger = Proc(other_app, tmp_path, "other-app", env=c.env).start()
        assert stranger.wait(20) != 0, stranger.describe()
        assert "runs a different application" in stranger.stderr(), stranger.describe()
        other_home = tmp_path / "other-home"
        other_home.mkdir()
        env = dict(c.env, HOME=str(other_home))
        env.pop("QUOLL_COOKIE", None)
        impostor = Proc(c.command(2), tmp_path, "other-secret", env=env).start()
        assert impostor.wait(20) != 0, impostor.describe()
        assert "can't authenticate each other" in impostor.stderr(), impostor.describe()
        before = len(c.outputs()["out-initializer.txt"])
        wait_until(lambda: len(c.outputs()["out-initializer.txt"]) > before + 100, 20, "output after the refusals")
        assert c.status() == {"worker_count": 1, "worker_names": ["initializer"], "processing_messages": True}
        assert "joins the cluster" not in c.procs[0].stdout(), c.describe()
    finally:
        c.stop()


def test_the_initializer_killed_mid_join_ends_with_the_joiner_in(tmp_path):
    """SIGKILL of the initializer as soon as it logs the join: restarted
    with its command, it ends in the new membership (the joiner, which
    keeps trying its --join, is a member) with exact counts."""
    c = Growing(tmp_path, ["initializer", "worker1"], lines=4000, line_delay=0.0005, fed=["initializer"])
    try:
        c.start_alone()
        c.launch(1)
        wait_until(lambda: "joins the cluster" in c.procs[0].stdout(), 20, "the join")
        c.kill_and_restart(0)
        c.settle(2, timeout=60)
    finally:
        c.stop()
