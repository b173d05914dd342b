"""A test app: Kafka in, Kafka out, with failing user code on purpose.

Input values are `KEY:N`, sent with the Kafka key `KEY`. A state stage
without `key_by` counts the values it sees per key (its key is the
implicit one: the record's Kafka key) and outputs `KEY:N #count`, keyed by
`KEY`. The decoder raises on `bad-in`, the encoder on `KEY:N #count` when
N is `bad`. Topics and brokers come from `--in_*` and `--out_*`."""

import wallaroo


def application_setup(args):
    source = wallaroo.DefaultKafkaSourceCLIParser(decode, name="in")
    sink = wallaroo.DefaultKafkaSinkCLIParser(encode, name="out")
    pipeline = wallaroo.source("Pass", source).to(tag).to_sink(sink)
    return wallaroo.build_application("Kafka pass-through", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(value):
    text = value.decode("utf-8")
    if text == "bad-in":
        raise ValueError("a bad input record")
    return text


@wallaroo.state_computation(name="tag", state=dict)
def tag(text, state):
    # A state stage runs per key: the key it sees is the Kafka key.
    state["n"] = state.get("n", 0) + 1
    return "{} #{}".format(text, state["n"])


@wallaroo.encoder
def encode(text):
    key, _, rest = text.partition(":")
    if rest.startswith("bad "):
        raise ValueError("a bad output record")
    return (text, key)
