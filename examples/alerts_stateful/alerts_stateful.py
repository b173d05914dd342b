"""Stateful alerts: a running balance per account, with an alert over a limit.

Input lines are transactions `account,amount` (integer amounts, negative for
withdrawals), each framed with a 4-byte big-endian length. Transactions are
keyed by account, so each account's balance lives on the one worker that owns
it. A `state_computation_multi` adds the amount to the balance and returns a
list of messages:

- a zero amount changes nothing and returns None (no message);
- otherwise `[balance]`, plus an alert when the new balance is above the
  limit: `[balance, alert]`.

The sink writes `account balance N\n` and `account ALERT N > LIMIT\n` lines;
for one account they arrive in processing order, the balance line first.

Arguments: `--limit N` (default 10000).

Run on one worker:

    quoll run examples/alerts_stateful/alerts_stateful.py --in transactions@127.0.0.1:7010 --out 127.0.0.1:7002 --limit 10000
    quoll receive --listen 127.0.0.1:7002 --output balances.txt
    quoll send --host 127.0.0.1:7010 --file transactions.txt --framing framed
"""

import argparse

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    parser = argparse.ArgumentParser(prog="alerts_stateful")
    parser.add_argument("--limit", type=int, default=10000)
    limit = parser.parse_known_args(args)[0].limit

    @wallaroo.state_computation_multi(name="update balance", state=Balance)
    def update_balance(tx, balance):
        if tx.amount == 0:
            return None
        balance.amount += tx.amount
        over = balance.amount > limit
        # None elements of the list are skipped by the engine.
        return [BalanceReport(tx.account, balance.amount),
                Alert(tx.account, balance.amount, limit) if over else None]

    transactions = wallaroo.source(
        "balances", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_transaction))
    pipeline = (transactions
                .key_by(extract_account)
                .to(update_balance)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_report)))
    return wallaroo.build_application("Stateful Alerts", pipeline)


class Transaction(object):
    def __init__(self, account, amount):
        self.account = account
        self.amount = amount


class Balance(object):
    def __init__(self):
        self.amount = 0


class BalanceReport(object):
    def __init__(self, account, amount):
        self.account = account
        self.amount = amount

    def line(self):
        return "%s balance %d\n" % (self.account, self.amount)


class Alert(object):
    def __init__(self, account, amount, limit):
        self.account = account
        self.amount = amount
        self.limit = limit

    def line(self):
        return "%s ALERT %d > %d\n" % (self.account, self.amount, self.limit)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_transaction(bs):
    account, amount = bs.decode("utf-8").strip().split(",")
    return Transaction(account, int(amount))


@wallaroo.key_extractor
def extract_account(tx):
    return tx.account


@wallaroo.encoder
def encode_report(report):
    return report.line()
