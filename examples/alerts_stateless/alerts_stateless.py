"""Stateless alerts: flag large transactions, one message at a time.

Input lines are transactions `account,amount` (amount an integer or a decimal,
for example `acct-7,1250.50`), each framed with a 4-byte big-endian length.
Blank lines and lines starting with `#` are dropped by the decoder (it returns
None). A stateless computation looks at each transaction on its own: an amount
above the threshold becomes an alert line
`ALERT account amount > threshold\n`; anything else returns None, which means
no message, so only alerts reach the sink. There is no `key_by`: the stage
keeps no state and may run anywhere.

Arguments: `--threshold N` (default 1000).

Run on one worker:

    quoll run examples/alerts_stateless/alerts_stateless.py --in transactions@127.0.0.1:7010 --out 127.0.0.1:7002 --threshold 1000
    quoll receive --listen 127.0.0.1:7002 --output alerts.txt
    quoll send --host 127.0.0.1:7010 --file transactions.txt --framing framed
"""

import argparse
from decimal import Decimal

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    parser = argparse.ArgumentParser(prog="alerts_stateless")
    parser.add_argument("--threshold", type=Decimal, default=Decimal(1000))
    threshold = parser.parse_known_args(args)[0].threshold

    @wallaroo.computation(name="check amount")
    def check_amount(tx):
        if tx.amount > threshold:
            return "ALERT %s %s > %s" % (tx.account, tx.amount, threshold)
        return None

    transactions = wallaroo.source(
        "alerts", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_transaction))
    pipeline = (transactions
                .to(check_amount)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))
    return wallaroo.build_application("Stateless Alerts", pipeline)


class Transaction(object):
    def __init__(self, account, amount):
        self.account = account
        self.amount = amount


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_transaction(bs):
    line = bs.decode("utf-8").strip()
    if not line or line.startswith("#"):
        return None
    account, amount = line.split(",")
    return Transaction(account.strip(), Decimal(amount.strip()))


@wallaroo.encoder
def encode_alert(alert):
    return alert + "\n"
