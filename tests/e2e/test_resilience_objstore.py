"""Checkpoints in S3-compatible object storage (docs/object-storage.md),
with real worker processes and a real store: SeaweedFS on 127.0.0.1,
started once for this module and stopped by its PID.

The word count of test_resilience_files (replayable file source,
exactly-once file sink) runs on 3 workers with
`--resilience-dir s3://quoll-test/runN` (one bucket, a prefix per test:
each SeaweedFS bucket takes volumes of its own). What is checked:

- a worker killed with SIGKILL whose local working copy is deleted, then
  restarted with the same command from another directory (an empty disk),
  recovers from the store alone, and the output is exactly the counts of
  the input; the store keeps one commit marker and only the part objects
  the chains need, and a clean shutdown empties it;
- the store killed (SIGKILL) for 10 s mid-run: processing goes on, the
  failed checkpoints are reported naming the worker, the checkpoint and the
  object, checkpoints commit again once the store is back, and a worker
  killed afterwards recovers from it with exact output;
- workers restarted on empty disks while the store is down wait for it,
  saying why, and recover exactly once it is back;
- a corrupt part object is named when a restarted worker refuses it;
- a cluster on the store grows and shrinks (test_grow's word count): the
  initializer's membership record and a leaver's left marker are in the
  store, so an initializer restarted on an empty disk after a join waits
  for the joined worker, and a leaver restarted on an empty disk stops,
  done.
"""

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import READY_LINE, Proc, wait_until
from seaweed import SeaweedFS, weed_bin
from test_grow import Growing, shrink
from test_resilience_files import SLOW_INTERVAL_NS, STEM, Run, out_lines

BUCKET = "quoll-test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = weed_bin()
    if path is None:
        pytest.skip("no SeaweedFS binary: set QUOLL_WEED or run scripts/seaweedfs.sh")
    s = SeaweedFS(path, tmp_path_factory.mktemp("seaweedfs")).start()
    s.create_bucket(BUCKET)
    yield s
    s.kill()


_prefixes = iter(range(1, 1000))


class StoreRun(Run):
    """A `Run` whose checkpoints go to a fresh prefix of the store's
    bucket; the committed checkpoint is read from the store's commit
    marker."""

    def __init__(self, store, make_cluster, tmp_path, lines, line_delay):
        self.store = store
        self.bucket = BUCKET
        self.prefix = f"run{next(_prefixes)}"
        self.commit = re.compile(rf"^{self.prefix}/{STEM}-initializer\.commit-(\d{{20}})$")
        self.url = f"s3://{self.bucket}/{self.prefix}"
        flags = ["--run-with-resilience", "--resilience-dir", self.url,
                 "--time-between-checkpoints", str(SLOW_INTERVAL_NS)]

        def with_env(*args, **kwargs):
            return make_cluster(*args, env=store.env(), **kwargs)

        super().__init__(with_env, tmp_path, 3, lines=lines, flags=flags,
                         app_args=["--line-delay", str(line_delay)])
        self.last_seen = None

    def objects(self):
        return [k for k in self.store.objects(self.bucket) if k.startswith(self.prefix + "/")]

    def committed(self):
        try:
            ids = [int(m.group(1)) for k in self.objects() if (m := self.commit.match(k))]
        except OSError:
            return self.last_seen  # the store is down
        if ids:
            self.last_seen = max(ids)
        return self.last_seen

    def cache(self, workdir, name):
        return Path(workdir) / ".quoll-cache" / self.bucket / self.prefix / name

    def describe(self):
        return self.cluster.describe() + f"\nobjects: {self.objects_or_error()}"

    def objects_or_error(self):
        try:
            return self.objects()
        except OSError as e:
            return f"(store unreachable: {e})"

    def restart_elsewhere(self, i, workdir):
        """Worker i again, same command, from `workdir` (a new disk)."""
        Path(workdir).mkdir(exist_ok=True)
        self.starts[i] += 1
        self.workers[i].stop()
        proc = Proc(self.cluster.command(i), workdir, f"worker{i}~{self.starts[i]}", env=self.cluster.env)
        self.workers[i] = proc.start()
        return proc

    def kill_and_recover_from_the_store(self, i, at_least):
        """SIGKILLs worker i once checkpoint `at_least` committed and with
        input left, deletes its working copy, restarts it elsewhere and
        waits for it to recover from checkpoint >= `at_least`."""
        name = self.names[i]
        self.wait_committed(at_least, timeout=30)
        assert len(self.output_now()) < self.total(), "all the output was out before the kill"
        self.kill(i)
        shutil.rmtree(self.cache(self.tmp, name))
        elsewhere = self.tmp / f"elsewhere-{self.starts[i]}"
        w = self.restart_elsewhere(i, elsewhere)
        self.wait_ready([i], timeout=30)
        wait_until(lambda: "Recovery COMPLETE" in w.stdout(), 30, f"{name} to recover")
        m = re.search(r"Recovery COMPLETE - ~~\| \(checkpoint (\d+),", w.stdout())
        assert m and int(m.group(1)) >= at_least, self.describe()
        # It loaded from the store into its new working copy.
        assert any(self.cache(elsewhere, name).glob(f"{STEM}-{name}.ckpt-*")), self.describe()
        return w

    def output_now(self):
        return out_lines(self.tmp)


def part_objects(run, name):
    return sorted(k for k in run.objects() if k.startswith(f"{run.prefix}/{STEM}-{name}.ckpt-"))


def test_a_worker_on_an_empty_disk_recovers_from_the_store(store, make_cluster, tmp_path):
    run = StoreRun(store, make_cluster, tmp_path, lines=30000, line_delay=0.0002).start()
    run.kill_and_recover_from_the_store(1, at_least=3)
    run.wait_output(timeout=60)
    run.assert_exact()
    # Checkpoints go on: a new commit marker is written before the old one
    # is deleted, so two can be listed for a moment; they must not pile up.
    def one_commit_marker():
        return len([k for k in run.objects() if run.commit.match(k)]) == 1

    wait_until(one_commit_marker, 10, "a single commit marker in the store", interval=0.05)
    objects = run.objects()
    for name in run.names:
        # A full part and at most the deltas on it (compaction every 8).
        assert 1 <= len(part_objects(run, name)) <= 10, objects
    assert not any(k.endswith(".tmp") for k in objects), objects
    run.shutdown()
    assert run.objects() == [], "a clean shutdown leaves the store empty"


def test_checkpoints_survive_a_store_outage(store, make_cluster, tmp_path):
    run = StoreRun(store, make_cluster, tmp_path, lines=45000, line_delay=0.001).start()
    run.wait_committed(3, timeout=30)
    store.kill()
    down_at = len(run.output_now())
    time.sleep(10)
    during = len(run.output_now())
    assert during > down_at, "processing stopped while the store was down\n" + run.describe()
    before = run.last_seen
    store.start()
    run.wait_committed(before + 1, timeout=30)
    failed = re.compile(r"checkpoint \d+ could not be written: worker '(\w+)': object "
                        rf"s3://{run.bucket}/{run.prefix}/{STEM}-\w+\.ckpt-\d{{20}}: can't upload checkpoint \d+'s part")
    named = {m.group(1) for w in run.workers for m in failed.finditer(w.stderr())}
    assert named, "no error named the object of a failed checkpoint\n" + run.describe()
    run.kill_and_recover_from_the_store(2, at_least=before + 1)
    run.wait_output(timeout=60)
    run.assert_exact()
    run.shutdown()


def test_a_restart_waits_for_the_store(store, make_cluster, tmp_path):
    run = StoreRun(store, make_cluster, tmp_path, lines=10000, line_delay=0.0005).start()
    run.wait_committed(2, timeout=30)
    run.kill_all()
    store.kill()
    for i in range(3):
        run.restart_elsewhere(i, tmp_path / f"new-disk-{i}")
    waiting = "can't load the checkpoints from the object store s3://"
    for w in run.workers:
        wait_until(lambda: waiting in w.stderr() or not w.alive(), 20, f"{w.label} to say it waits")
        assert w.alive() and "waiting for it, retrying every 2 s" in w.stderr(), run.describe()
    assert not any(READY_LINE in w.stdout() for w in run.workers), run.describe()
    store.start()
    run.wait_ready(timeout=40)
    run.wait_output(timeout=60)
    run.assert_exact()
    run.shutdown()


def test_a_corrupt_object_is_named(store, make_cluster, tmp_path):
    run = StoreRun(store, make_cluster, tmp_path, lines=20000, line_delay=0.0002).start()
    run.wait_committed(2, timeout=30)
    run.kill_all()
    k = run.committed()
    key = f"{run.prefix}/{STEM}-worker1.ckpt-{k:020d}"
    # The part worker1 needs for checkpoint k: its last byte flipped.
    body = bytearray(store.get(run.bucket, key))
    body[-1] ^= 0x01
    store.put(run.bucket, key, bytes(body))
    for i in range(3):
        run.restart_elsewhere(i, tmp_path / f"again-{i}")
    w = run.workers[1]
    wait_until(lambda: not w.alive(), 30, "worker1 to refuse the corrupt object")
    assert w.popen.returncode != 0
    assert f"object s3://{run.bucket}/{key}" in w.stderr(), run.describe()
    assert "fails its checksum" in w.stderr() or "corrupt" in w.stderr(), run.describe()
    run.kill_all()


class StoreGrowing(Growing):
    """test_grow's growing word count with its checkpoints in the store."""

    def __init__(self, store, tmp_path, names, **kwargs):
        super().__init__(tmp_path, names, **kwargs)
        self.store = store
        self.prefix = f"run{next(_prefixes)}"
        self.flags[self.flags.index("--resilience-dir") + 1] = f"s3://{BUCKET}/{self.prefix}"
        self.env = store.env(self.env)
        # The initializer's working copy, where `placed_owner` reads the
        # membership record.
        self.res = self.cache("initializer")

    def cache(self, name):
        return self.workdir / ".quoll-cache" / BUCKET / self.prefix / name

    def objects(self):
        return [k[len(self.prefix) + 1:] for k in self.store.objects(BUCKET) if k.startswith(self.prefix + "/")]

    def lose_disk_and_restart(self, i):
        """SIGKILLs worker i, deletes its working copy, starts it again."""
        self.procs[i].signal(signal.SIGKILL)
        self.procs[i].wait(10)
        shutil.rmtree(self.cache(self.names[i]), ignore_errors=True)
        return self.launch(i)

    def describe(self):
        return super().describe() + f"\nobjects: {self.objects()}"


def test_a_cluster_on_the_store_grows_and_shrinks_across_lost_disks(store, tmp_path):
    c = StoreGrowing(store, tmp_path, ["initializer", "worker1"], lines=6000, line_delay=0.0005,
                     fed=["initializer"])
    try:
        c.start_alone()
        c.launch(1)
        c.wait_members(2)
        assert f"{STEM}-initializer.cluster" in c.objects(), c.describe()
        # The initializer's disk is lost after the join: its command line
        # says one worker, the membership record in the store says two.
        c.lose_disk_and_restart(0)
        c.wait_members(2)
        c.wait_exact()
        c.assert_state_placed(2)
        done = shrink(c, "--names", "worker1")
        assert done.returncode == 0, done
        try:
            assert c.procs[1].wait(60) == 0, c.describe()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker1 did not leave\n{c.describe()}")
        c.settle(1)
        objects = c.objects()
        assert f"{STEM}-worker1.left" in objects, objects
        assert not any(o.startswith(f"{STEM}-worker1.ckpt-") for o in objects), objects
        # Restarted on an empty disk, the leaver finds its marker in the
        # store and stops, done; the cluster stays as it is.
        again = c.lose_disk_and_restart(1)
        assert again.wait(30) == 0, c.describe()
        out = again.stdout()
        assert "left its cluster (a shrink), so it does not run again" in out \
            and f"s3://{BUCKET}/{c.prefix}/{STEM}-worker1.left" in out, c.describe()
        assert c.status() == {"worker_count": 1, "worker_names": ["initializer"], "processing_messages": True}
    finally:
        c.stop()
