"""Word count fed by a source connector (spec 7.5-7.7), for the connector
resilience tests.

    machida3 --application-module rconn_wc --in lines@HOST:PORT --out-file OUT \
        [--cookie COOKIE] [--decoder stream|plain] [--line-delay SECONDS] [worker flags]

Every worker listens for connector clients (`quoll send --connector`) on
its own `--in` address; each MESSAGE payload is one line of words, each
word is counted by its own key and `word => count` goes to quoll's file sink
(`{worker}` in OUT is the worker's name). `--decoder` picks a
`wallaroo.experimental.stream_message_decoder` (default) or a plain
`@wallaroo.decoder`; the worker calls only `decode(payload)` either way.
`--line-delay` sleeps that long per line so a test can kill mid-stream.
"""

import time

import wallaroo
import wallaroo.experimental


def _arg(args, flag, default):
    return args[args.index(flag) + 1] if flag in args else default


DELAY = 0.0


def application_setup(args):
    global DELAY
    DELAY = float(_arg(args, "--line-delay", "0"))
    name, host, port = wallaroo.tcp_parse_input_addrs(args)[0]
    decoder = plain_decoder if _arg(args, "--decoder", "stream") == "plain" else stream_decoder
    source = wallaroo.experimental.SourceConnectorConfig(
        name, encoder=encode_line, decoder=decoder, port=port, cookie=_arg(args, "--cookie", "cookie"),
        max_credits=67, refill_credits=10, host=host)
    sink = wallaroo.FileSinkConfig(_arg(args, "--out-file", None), encode_count)
    pipeline = (wallaroo.source("Connector Count", source)
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(sink))
    return wallaroo.build_application("rconn wc", pipeline)


class Total(object):
    def __init__(self):
        self.count = 0


@wallaroo.experimental.stream_message_decoder
def stream_decoder(payload):
    return payload.decode("utf-8")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def plain_decoder(payload):
    return payload.decode("utf-8")


@wallaroo.experimental.stream_message_encoder
def encode_line(line):
    return line.encode("utf-8")


@wallaroo.computation_multi(name="split")
def split(line):
    if DELAY:
        time.sleep(DELAY)
    return line.split()


@wallaroo.key_extractor
def extract_word(word):
    return word


@wallaroo.state_computation(name="count", state=Total)
def count_word(word, total):
    total.count += 1
    return (word, total.count)


@wallaroo.encoder
def encode_count(pair):
    return "%s => %d\n" % pair
