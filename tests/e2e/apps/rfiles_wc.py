"""Word count over quoll's replayable file source and exactly-once file sink,
for the resilience file tests.

    machida3 --application-module rfiles_wc --in-file IN --out-file OUT \
        [--app-name NAME] [--line-delay SECONDS] [resilience flags]

`{worker}` in IN and OUT is the worker's name. Each input record (4-byte
big-endian length + a line) is split into words; each word is counted by
its own key and `word => count` goes out. `--app-name` sets the application
name (and so the names of the resilience files); `--line-delay` sleeps that
long per line so that a test can kill workers mid-stream.
"""

import time

import wallaroo


def _arg(args, flag, default):
    return args[args.index(flag) + 1] if flag in args else default


DELAY = 0.0


def application_setup(args):
    global DELAY
    DELAY = float(_arg(args, "--line-delay", "0"))
    source = wallaroo.FileSourceConfig("lines", _arg(args, "--in-file", None), decode_line)
    sink = wallaroo.FileSinkConfig(_arg(args, "--out-file", None), encode_count)
    pipeline = (wallaroo.source("Split and Count", source)
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(sink))
    return wallaroo.build_application(_arg(args, "--app-name", "rfiles wc"), pipeline)


class Total(object):
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(bs):
    return bs.decode("utf-8")


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
