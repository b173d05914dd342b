"""Word count, Kafka in and Kafka out.

Each record of the input topic is a line of text; the app keeps a running
count per word and writes `word => count` to the output topic, keyed by the
word, so every count of a word lands in the same partition in order.

The source and sink are Wallaroo's `Default*` Kafka parsers named `lines`
and `counts`, so the worker reads their options from `--lines_*` and
`--counts_*` flags:

    quoll run examples/kafka/word_count_kafka.py \\
        --lines_topic lines --lines_brokers 127.0.0.1:9092 \\
        --counts_topic counts --counts_brokers 127.0.0.1:9092

With several workers each reads its share of the input partitions, and
with resilience the counts are written exactly once (docs/kafka.md).
"""

import string

import wallaroo


def application_setup(args):
    source = wallaroo.DefaultKafkaSourceCLIParser(decode_line, name="lines")
    sink = wallaroo.DefaultKafkaSinkCLIParser(encode_count, name="counts")
    pipeline = (wallaroo.source("Split and Count", source)
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(sink))
    return wallaroo.build_application("Word Count with Kafka", pipeline)


class WordTotal(object):
    def __init__(self):
        self.count = 0


PUNCTUATION = string.punctuation + " "


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(value):
    return value.decode("utf-8", "replace")


@wallaroo.computation_multi(name="split into words")
def split(line):
    return [w for w in (word.strip(PUNCTUATION) for word in line.lower().split()) if w]


@wallaroo.key_extractor
def extract_word(word):
    return word


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return (word, total.count)


@wallaroo.encoder
def encode_count(word_count):
    word, count = word_count
    # (payload, key): the word picks the partition.
    return ("{} => {}".format(word, count), word)
