"""Command-line helpers for TCP sources and sinks (``--in``, ``--out``)."""

import argparse
from typing import Sequence


def tcp_parse_input_addrs(args: Sequence[str]) -> list[tuple[str, ...]]:
    """``--in N1@H1:P1,N2@H2:P2`` -> ``[(N1, H1, P1), (N2, H2, P2)]``."""
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("-i", "--in", dest="input_addrs", required=True)
    input_addrs = parser.parse_known_args(args)[0].input_addrs
    return [tuple(x.replace("@", ":").split(":"))
            for x in input_addrs.split(",")]


def tcp_parse_output_addrs(args: Sequence[str]) -> list[tuple[str, ...]]:
    """``--out H1:P1,H2:P2`` -> ``[(H1, P1), (H2, P2)]``."""
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("-o", "--out", dest="output_addrs", required=True)
    output_addrs = parser.parse_known_args(args)[0].output_addrs
    return [tuple(x.split(":")) for x in output_addrs.split(",")]
