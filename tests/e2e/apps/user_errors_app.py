"""A test app whose stages misbehave on a poison input line.

    machida3 --application-module user_errors_app --in lines@HOST:PORT --out HOST:PORT --mode MODE

Every good line goes: decode -> 'pass through' (computation) -> 'fan out'
(computation_multi) -> key_by extract_group -> 'number' (state
computation, per-key counter) -> encoder, and comes out as "LINE N\n", N
being the count of messages the 'number' state has seen for that key (the
key is "all", so N counts every message that reached the state).

`--mode` says which single place misbehaves on the line "boom":

- decoder, compute, compute_multi, key, state, encoder: raises
  ValueError("poison 'boom' in PLACE");
- multi_tuple: the computation_multi returns a tuple;
- key_float: the key extractor returns a float;
- encoder_int: the encoder returns an int;
- decoder_none: the decoder returns None for the line "skip" (nothing raises).

In 'state' mode the state is incremented before the raise (a user error
does not roll state back).
"""

import wallaroo

POISON = "boom"
MODE = "none"


def _mode(args):
    if "--mode" in args:
        return args[args.index("--mode") + 1]
    return "none"


def application_setup(args):
    global MODE
    MODE = _mode(args)
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    lines = wallaroo.source("User errors", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_line))
    pipeline = (lines
                .to(pass_through)
                .to(fan_out)
                .key_by(extract_group)
                .to(number)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_line)))
    return wallaroo.build_application("User errors", pipeline)


def _poison(where):
    raise ValueError("poison %r in %s" % (POISON, where))


class Counter(object):
    def __init__(self):
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(bs):
    line = bs.decode("utf-8")
    if MODE == "decoder" and line == POISON:
        _poison("decoder")
    if MODE == "decoder_none" and line == "skip":
        return None
    return line


@wallaroo.computation(name="pass through")
def pass_through(line):
    if MODE == "compute" and line == POISON:
        _poison("compute")
    return line


@wallaroo.computation_multi(name="fan out")
def fan_out(line):
    if line == POISON:
        if MODE == "compute_multi":
            _poison("compute_multi")
        if MODE == "multi_tuple":
            return (line,)
    return [line, None]


@wallaroo.key_extractor
def extract_group(line):
    if line == POISON:
        if MODE == "key":
            _poison("key extractor")
        if MODE == "key_float":
            return 1.5
    return "all"


@wallaroo.state_computation(name="number", state=Counter)
def number(line, counter):
    counter.n += 1
    if MODE == "state" and line == POISON:
        _poison("state computation")
    return (line, counter.n)


@wallaroo.encoder
def encode_line(item):
    line, n = item
    if line == POISON:
        if MODE == "encoder":
            _poison("encoder")
        if MODE == "encoder_int":
            return 42
    return ("%s %d\n" % (line, n)).encode("utf-8")
