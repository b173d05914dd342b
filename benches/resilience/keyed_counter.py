"""Keyed counter: one key per record in, a running count per key out.

The state app of the resilience benchmark (benches/resilience/run.py). Every
input record is one key (UTF-8 bytes behind a 4-byte big-endian length); the
record is routed by its key to the worker that owns it, where that key's
`KeyCount` is incremented; each new count goes out as `key => count\\n`.
So with N distinct keys in the input, the workers hold N keyed states, and
a record changes exactly one key's state.

    --in-file PATH    quoll's replayable file source (framed records); `{worker}`
                      in PATH becomes the worker's name
    --in NAME@H:P     a TCP source instead (framed records)
    --out-file PATH   quoll's exactly-once file sink (`{worker}` as above)
    --out H:P         a TCP sink instead
"""

import argparse

import wallaroo


def application_setup(args):
    files = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    files.add_argument("--in-file")
    files.add_argument("--out-file")
    files, _ = files.parse_known_args(args)

    if files.in_file:
        source = wallaroo.FileSourceConfig("keys", files.in_file, decode_key)
    else:
        in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
        source = wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_key)
    if files.out_file:
        sink = wallaroo.FileSinkConfig(files.out_file, encode_count)
    else:
        out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
        sink = wallaroo.TCPSinkConfig(out_host, out_port, encode_count)

    pipeline = (wallaroo.source("Keys", source)
                .key_by(extract_key)
                .to(count_key)
                .to_sink(sink))
    return wallaroo.build_application("Keyed Counter", pipeline)


class KeyCount(object):
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_key(bs):
    return bs.decode("utf-8")


@wallaroo.key_extractor
def extract_key(key):
    return key


@wallaroo.state_computation(name="count key", state=KeyCount)
def count_key(key, state):
    state.count += 1
    return (key, state.count)


@wallaroo.encoder
def encode_count(kc):
    return ("%s => %d\n" % kc).encode("utf-8")
