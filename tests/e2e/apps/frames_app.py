"""A test app that echoes each frame's payload as a line.

    machida3 --application-module frames_app --in frames@HOST:PORT --out HOST:PORT \
        [--header-length N --length-fmt FMT]

The decoder's framing comes from the app arguments (default 4 and ">I"),
so one app serves every header format. Each payload (ASCII) comes out as
"PAYLOAD\n".
"""

import wallaroo


def _arg(args, flag, default):
    return args[args.index(flag) + 1] if flag in args else default


def application_setup(args):
    header_length = int(_arg(args, "--header-length", "4"))
    length_fmt = _arg(args, "--length-fmt", ">I")
    decode = wallaroo.decoder(header_length=header_length, length_fmt=length_fmt)(decode_payload)
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    frames = wallaroo.source("Frames", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode))
    pipeline = frames.to(echo).to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_line))
    return wallaroo.build_application("Frames", pipeline)


def decode_payload(bs):
    return bs.decode("ascii")


@wallaroo.computation(name="echo")
def echo(text):
    return text


@wallaroo.encoder
def encode_line(text):
    return text + "\n"
