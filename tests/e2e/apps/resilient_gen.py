"""A generator source counting 1..N (on the initializer only), keyed sums,
exactly-once file sink; for crash tests.

`--gen-count N` (default 100000), `--keys K` (default 50), `--out-file PATH`
(`{worker}` = worker name). Value v is keyed by `str(v % K)`; the state per
key counts and sums its values; every value gives one output line
`key count sum\\n`. The generator's current value is what a checkpoint
stores, so after a rollback it resumes where the checkpoint left it.

`--value-delay SECONDS` makes producing each value take that long on
average (sleeping once a millisecond is owed), so that kills land while the
generator runs.

With the environment variable RESILIENT_GEN_LOG set to a path, the
generator appends `PID VALUE` there for the first value it is handed in its
process and whenever it is handed a value other than the one it produced
last: that is, at the start, after a rollback and after a restart of its
process; so a test can see where the generator went on from.
"""

import argparse
import os
import time

import wallaroo


def application_setup(args):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--gen-count", type=int, default=100000)
    p.add_argument("--keys", type=int, default=50)
    p.add_argument("--out-file", required=True)
    p.add_argument("--value-delay", type=float, default=0.0)
    opts, _ = p.parse_known_args(args)
    global KEYS
    KEYS = opts.keys
    only_here = "--cluster-initializer" in wallaroo._ARGS
    gen = wallaroo.GenSourceConfig("counter", Counter(opts.gen_count, only_here, opts.value_delay))
    pipeline = (wallaroo.source("counter", gen)
                .key_by(key_of)
                .to(add)
                .to_sink(wallaroo.FileSinkConfig(opts.out_file, encode)))
    return wallaroo.build_application("Resilient generator", pipeline)


KEYS = 50


class Counter(object):
    def __init__(self, n, active, delay):
        self.n = n
        self.active = active
        self.delay = delay
        self.owed = 0.0
        self.expected = None
        self.log = os.environ.get("RESILIENT_GEN_LOG")

    def initial_value(self):
        return 1 if self.active else None

    def apply(self, v):
        if v != self.expected and self.log:
            with open(self.log, "a") as f:
                f.write("%d %d\n" % (os.getpid(), v))
        self.expected = v + 1
        if self.delay:
            self.owed += self.delay
            if self.owed >= 0.001:
                start = time.perf_counter()
                time.sleep(self.owed)
                self.owed -= time.perf_counter() - start
        return v + 1 if v < self.n else None


class Sum(object):
    def __init__(self):
        self.count = 0
        self.sum = 0


@wallaroo.key_extractor
def key_of(v):
    return str(v % KEYS)


@wallaroo.state_computation(name="sum per key", state=Sum)
def add(v, state):
    state.count += 1
    state.sum += v
    return (str(v % KEYS), state.count, state.sum)


@wallaroo.encoder
def encode(out):
    return "%s %d %d\n" % out
