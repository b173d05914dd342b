"""Word count: lines in, a running count per word out.

Each input line is split into words; every word is routed by its key to the
worker that owns it, where a per-word counter is incremented; each new count
is sent out as `word => count\n`.

Run on one worker (TCP in, TCP out):

    quoll run examples/word_count/word_count.py --in lines@127.0.0.1:7010 --out 127.0.0.1:7002

With `--in-file PATH` the lines come from a file of 4-byte-length-framed
records instead (quoll's replayable file source), and with `--out-file PATH`
the counts go to quoll's exactly-once file sink; `{worker}` in a path is
replaced by the worker's name, so each worker of a cluster has its own.
"""

import argparse
import string

import wallaroo


def application_setup(args):
    files = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    files.add_argument("--in-file")
    files.add_argument("--out-file")
    files, _ = files.parse_known_args(args)

    if files.in_file:
        source = wallaroo.FileSourceConfig("lines", files.in_file, decode_line)
    else:
        in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
        source = wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_line)
    if files.out_file:
        sink = wallaroo.FileSinkConfig(files.out_file, encode_word_count)
    else:
        out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
        sink = wallaroo.TCPSinkConfig(out_host, out_port, encode_word_count)

    pipeline = (wallaroo.source("Split and Count", source)
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(sink))
    return wallaroo.build_application("Word Count Application", pipeline)


class WordTotal(object):
    def __init__(self):
        self.count = 0


class WordCount(object):
    def __init__(self, word, count):
        self.word = word
        self.count = count


PUNCTUATION = string.punctuation + " "


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(bs):
    return bs.decode("utf-8")


@wallaroo.computation_multi(name="split into words")
def split(line):
    words = []
    for word in line.lower().split():
        word = word.strip(PUNCTUATION)
        if word:
            words.append(word)
    return words


@wallaroo.key_extractor
def extract_word(word):
    return word


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return WordCount(word, total.count)


@wallaroo.encoder
def encode_word_count(wc):
    return ("%s => %d\n" % (wc.word, wc.count)).encode("utf-8")
