"""Alphabet: a running vote total per letter.

Each input frame is a 4-byte big-endian length header followed by a 5-byte
payload: one ASCII letter and a big-endian u32 vote count
(`struct.pack(">cI", b"a", 3)`). Votes are keyed by letter, so every letter is
owned by one worker, which keeps that letter's total in a state object and
sends the new total after each vote as a line `letter => total\n`.

Run on one worker (the input file must already hold framed messages, so send
it with `--framing raw-framed`):

    quoll run examples/alphabet/alphabet.py --in votes@127.0.0.1:7010 --out 127.0.0.1:7002
    quoll receive --listen 127.0.0.1:7002 --output totals.txt
    quoll send --host 127.0.0.1:7010 --file votes.bin --framing raw-framed

A votes file can be written with:

    python -c "import struct,sys; sys.stdout.buffer.write(b''.join(
        struct.pack('>I', 5) + struct.pack('>cI', c.encode(), n)
        for c, n in [('a', 1), ('b', 2), ('a', 3)]))" > votes.bin
"""

import struct

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    votes = wallaroo.source("alphabet",
                            wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_votes))
    pipeline = (votes
                .key_by(extract_letter)
                .to(add_votes)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_total)))
    return wallaroo.build_application("Alphabet", pipeline)


class Votes(object):
    def __init__(self, letter, count):
        self.letter = letter
        self.count = count


class LetterTotal(object):
    def __init__(self):
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_votes(bs):
    letter, count = struct.unpack(">cI", bs)
    return Votes(letter.decode("ascii"), count)


@wallaroo.key_extractor
def extract_letter(votes):
    return votes.letter


@wallaroo.state_computation(name="add votes", state=LetterTotal)
def add_votes(votes, state):
    state.total += votes.count
    # A new object, never the state itself (messages pass by reference).
    return Votes(votes.letter, state.total)


@wallaroo.encoder
def encode_total(votes):
    return "%s => %d\n" % (votes.letter, votes.count)
