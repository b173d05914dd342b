"""Windowed alerts: per-account transaction count and total over windows.

Input lines are transactions `account,amount` (integer amounts), each framed
with a 4-byte big-endian length. Transactions are keyed by account and fed
to a window stage whose aggregation counts the messages and sums the amounts.
Every window that holds data is sent out as a line
`account count total\n`; empty windows also fire, but `output` returns None
for them, so they send nothing.

Two window kinds, chosen by the arguments:

- sliding range windows (the default): `--window-ms R --slide-ms S`
  (defaults 1000 and 500; S must divide R). Each transaction lands in R/S
  overlapping windows. Windows use ingest time, so which window holds which
  transaction depends on timing; after the input goes quiet the engine
  flushes every open window.
- tumbling count windows: `--count-windows N` puts every N transactions of an
  account in one window; a partial window is flushed by the engine's 5 s
  timer, so an output may cover fewer than N transactions.

Run on one worker:

    quoll run examples/alerts_windowed/alerts_windowed.py --in transactions@127.0.0.1:7010 --out 127.0.0.1:7002 --window-ms 1000 --slide-ms 500
    quoll run examples/alerts_windowed/alerts_windowed.py --in transactions@127.0.0.1:7010 --out 127.0.0.1:7002 --count-windows 10
    quoll receive --listen 127.0.0.1:7002 --output windows.txt
    quoll send --host 127.0.0.1:7010 --file transactions.txt --framing framed
"""

import argparse

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    parser = argparse.ArgumentParser(prog="alerts_windowed")
    parser.add_argument("--window-ms", type=int, default=1000)
    parser.add_argument("--slide-ms", type=int, default=500)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--count-windows", type=int, default=0)
    opts = parser.parse_known_args(args)[0]

    if opts.count_windows > 0:
        windows = wallaroo.count_windows(opts.count_windows).over(CountAndTotal)
    else:
        windows = (wallaroo.range_windows(wallaroo.milliseconds(opts.window_ms))
                   .with_slide(wallaroo.milliseconds(opts.slide_ms))
                   .with_delay(wallaroo.milliseconds(opts.delay_ms))
                   .over(CountAndTotal))

    transactions = wallaroo.source(
        "windowed alerts", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_transaction))
    pipeline = (transactions
                .key_by(extract_account)
                .to(windows)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_window)))
    return wallaroo.build_application("Windowed Alerts", pipeline)


class Transaction(object):
    def __init__(self, account, amount):
        self.account = account
        self.amount = amount


class Totals(object):
    """The accumulator: mutated in place by `update`."""

    def __init__(self, count=0, total=0):
        self.count = count
        self.total = total


class WindowReport(object):
    def __init__(self, account, count, total):
        self.account = account
        self.count = count
        self.total = total


class CountAndTotal(wallaroo.Aggregation):
    def name(self):
        return "count and total"

    def initial_accumulator(self):
        return Totals()

    def update(self, tx, acc):
        acc.count += 1
        acc.total += tx.amount

    def combine(self, acc1, acc2):
        # A new accumulator; the arguments must not change.
        return Totals(acc1.count + acc2.count, acc1.total + acc2.total)

    def output(self, key, acc):
        if acc.count == 0:
            return None
        return WindowReport(key, acc.count, acc.total)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_transaction(bs):
    account, amount = bs.decode("utf-8").strip().split(",")
    return Transaction(account, int(amount))


@wallaroo.key_extractor
def extract_account(tx):
    return tx.account


@wallaroo.encoder
def encode_window(report):
    return "%s %d %d\n" % (report.account, report.count, report.total)
