"""Windows keyed by account, fed from a replayable file and written to an
exactly-once file sink, for crash tests.

Input (`--in-file PATH`, `{worker}` = worker name): records framed with a
4-byte big-endian length, each `account,id` where `id` is unique over the
whole input. Windows: `--count-windows N` (tumbling count windows), else
range windows `--window-ms R --slide-ms S` (a message lands in up to R/S
windows) with late data handled as `--late-policy` says (default "drop").
The accumulator collects the ids it saw, so every window output line,
`account count id;id;...\n` (ids in arrival order), tells exactly which
messages the window covered. Output goes to `--out-file PATH`.
`--message-delay SECONDS` makes decoding each message take that long on
average (sleeping once a millisecond is owed), so that kills land while
input is still being read.
"""

import argparse
import time

import wallaroo


def application_setup(args):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--in-file", required=True)
    p.add_argument("--out-file", required=True)
    p.add_argument("--count-windows", type=int, default=0)
    p.add_argument("--window-ms", type=int, default=400)
    p.add_argument("--slide-ms", type=int, default=200)
    p.add_argument("--late-policy", default="drop")
    p.add_argument("--message-delay", type=float, default=0.0)
    opts, _ = p.parse_known_args(args)
    global DELAY
    DELAY = opts.message_delay
    if opts.count_windows > 0:
        windows = wallaroo.count_windows(opts.count_windows).over(CollectIds)
    else:
        windows = (wallaroo.range_windows(wallaroo.milliseconds(opts.window_ms))
                   .with_slide(wallaroo.milliseconds(opts.slide_ms))
                   .with_late_data_policy(opts.late_policy)
                   .over(CollectIds))
    pipeline = (wallaroo.source("transactions", wallaroo.FileSourceConfig("transactions", opts.in_file, decode))
                .key_by(account_of)
                .to(windows)
                .to_sink(wallaroo.FileSinkConfig(opts.out_file, encode)))
    return wallaroo.build_application("Resilient windows", pipeline)


class Tx(object):
    def __init__(self, account, ident):
        self.account = account
        self.ident = ident


class Ids(object):
    def __init__(self, ids=None):
        self.ids = list(ids or [])


class Report(object):
    def __init__(self, account, ids):
        self.account = account
        self.ids = ids


class CollectIds(wallaroo.Aggregation):
    def name(self):
        return "collect ids"

    def initial_accumulator(self):
        return Ids()

    def update(self, tx, acc):
        acc.ids.append(tx.ident)

    def combine(self, acc1, acc2):
        return Ids(acc1.ids + acc2.ids)

    def output(self, key, acc):
        if not acc.ids:
            return None
        return Report(key, list(acc.ids))


DELAY = 0.0
OWED = 0.0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    global OWED
    if DELAY:
        OWED += DELAY
        if OWED >= 0.001:
            start = time.perf_counter()
            time.sleep(OWED)
            OWED -= time.perf_counter() - start
    account, ident = bs.decode("utf-8").split(",")
    return Tx(account, int(ident))


@wallaroo.key_extractor
def account_of(tx):
    return tx.account


@wallaroo.encoder
def encode(r):
    return "%s %d %s\n" % (r.account, len(r.ids), ";".join(str(i) for i in r.ids))
