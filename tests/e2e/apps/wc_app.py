"""Word count for the resilience tests, fed by quoll's replayable file
source or by a source connector, written through the exactly-once file sink.

    machida3 --application-module wc_app (--out-file OUT | --sink-connector HOST:PORT)
        (--in-file IN | --in lines@HOST:PORT [--cookie COOKIE] [--decoder stream|plain])
        [--app-name NAME] [--line-delay SECONDS] [worker flags]

`{worker}` in IN and OUT is the worker's name. With `--in-file`, each input
record (4-byte big-endian length + a line) is one line of words; with `--in`
every worker listens for connector clients (`quoll send --connector`) on its
own address and each MESSAGE payload is one line, decoded by a
`wallaroo.experimental.stream_message_decoder` (`--decoder stream`, the
default) or a plain `@wallaroo.decoder` (`--decoder plain`): the worker calls
only `decode(payload)` either way. Each word is counted by its own key and
`word => count` goes out, to the file sink, or with `--sink-connector` to
a connector sink named "counts" (`SinkConnectorConfig`, cookie from
`--cookie`) whose sink connector process listens there; with
`--sink-framed` each output is framed (4-byte big-endian length + line), the
framing a `SinkConnector` script's `read()` cuts with the sink's decoder.
`--app-name` sets the application name (and so the
names of the resilience files; default "wc app"); `--line-delay` makes each
line take that long on average, so that a test can kill workers mid-stream
(it sleeps once a millisecond is owed: shorter sleeps overshoot a lot).

examples/word_count is the word count users see; this one has the test
knobs above and no text clean-up (the tests' words are plain).
"""

import struct
import time

import wallaroo
import wallaroo.experimental


def _arg(args, flag, default):
    return args[args.index(flag) + 1] if flag in args else default


DELAY = 0.0
OWED = 0.0


def application_setup(args):
    global DELAY
    DELAY = float(_arg(args, "--line-delay", "0"))
    in_file = _arg(args, "--in-file", None)
    if in_file is not None:
        source = wallaroo.FileSourceConfig("lines", in_file, plain_decoder)
    else:
        name, host, port = wallaroo.tcp_parse_input_addrs(args)[0]
        decoder = plain_decoder if _arg(args, "--decoder", "stream") == "plain" else stream_decoder
        source = wallaroo.experimental.SourceConnectorConfig(
            name, encoder=encode_line, decoder=decoder, port=port, cookie=_arg(args, "--cookie", "cookie"),
            max_credits=67, refill_credits=10, host=host)
    connector = _arg(args, "--sink-connector", None)
    if connector is not None:
        host, port = connector.rsplit(":", 1)
        framed = "--sink-framed" in args
        sink = wallaroo.experimental.SinkConnectorConfig(
            "counts", encoder=encode_framed_count if framed else encode_count,
            decoder=plain_decoder, port=port,
            cookie=_arg(args, "--cookie", "cookie"), host=host)
    else:
        sink = wallaroo.FileSinkConfig(_arg(args, "--out-file", None), encode_count)
    pipeline = (wallaroo.source("Split and Count", source)
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(sink))
    return wallaroo.build_application(_arg(args, "--app-name", "wc app"), pipeline)


class Total(object):
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def plain_decoder(bs):
    return bs.decode("utf-8")


@wallaroo.experimental.stream_message_decoder
def stream_decoder(payload):
    return payload.decode("utf-8")


@wallaroo.experimental.stream_message_encoder
def encode_line(line):
    return line.encode("utf-8")


@wallaroo.computation_multi(name="split")
def split(line):
    global OWED
    if DELAY:
        OWED += DELAY
        if OWED >= 0.001:
            start = time.perf_counter()
            time.sleep(OWED)
            OWED -= time.perf_counter() - start
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


@wallaroo.encoder
def encode_framed_count(pair):
    line = ("%s => %d\n" % pair).encode("utf-8")
    return struct.pack(">I", len(line)) + line
