"""A connector source whose MESSAGE keys are the message keys: a state
computation right after the source (no key_by) counts per key."""

import argparse

import wallaroo
import wallaroo.experimental


class Count(object):
    def __init__(self):
        self.n = 0


@wallaroo.experimental.stream_message_decoder
def decode(bs):
    return bs.decode("utf-8")


@wallaroo.experimental.stream_message_encoder
def encode_unused(data):
    return data.encode("utf-8")


@wallaroo.state_computation(name="count per key", state=Count)
def count(data, state):
    state.n += 1
    return "%s %d" % (data, state.n)


@wallaroo.encoder
def encode(line):
    return line + "\n"


def application_setup(args):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--connector-port", required=True)
    opts, _ = p.parse_known_args(args)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    cfg = wallaroo.experimental.SourceConnectorConfig("keyed", encode_unused, decode, opts.connector_port,
                                                     "cookie", 20, 5, host="127.0.0.1")
    pipeline = (wallaroo.source("keyed", cfg)
                .to(count)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("connector keys", pipeline)
