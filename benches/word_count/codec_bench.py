#!/usr/bin/env python3
"""Codec micro-benchmark: quoll's codec vs pickle on a small tuple.

Times `codec_decode(codec_encode(obj))` against
`pickle.loads(pickle.dumps(obj, HIGHEST_PROTOCOL))`, in ns per round trip
(best and median of several repeats).

Caveat, reported with the figures: these are Python-level calls, so each
quoll round trip also pays two Python->Rust calls (PyO3's trampoline and
argument parsing; the default codec itself is made once per process) that
the engine, calling the codec from Rust, does not. The same round trip on
`None` (almost no encoding work) is timed too, as an estimate of that fixed
per-call cost; pickle has its own fixed cost (a Pickler/Unpickler per
call), timed the same way.

The headline figure is `ratio_paired`: in every repeat the quoll and the
pickle round trips are timed back to back (round-robin with the other
cases), each repeat gives one ratio (loop overhead subtracted from both),
and the median of those ratios is reported with their min and max, so
that the spread of one run is visible. `ratio` (best quoll time over best
pickle time) is kept for the word count benchmark's report.

Prints one JSON object on stdout.
"""

import argparse
import json
import pickle
import statistics
import sys
import time

from quoll._engine import codec_decode, codec_encode

OBJ = ("word", 12345, 3.5)


def time_all(cases, iters, repeats):
    """Times every case `repeats` times, round-robin (so a burst of load on a
    shared machine hits all cases alike); ns per iteration of every repeat."""
    per = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, obj) in cases.items():
            t0 = time.perf_counter_ns()
            fn(obj, iters)
            per[name].append((time.perf_counter_ns() - t0) / iters)
    return per


def summary(per):
    return {name: dict(best_ns=min(v), median_ns=statistics.median(v)) for name, v in per.items()}


def paired_ratios(per, num, den, loop="empty_loop"):
    """Per repeat, (num - loop) / (den - loop): the two timed in the same
    round, so they share the machine's load at that moment."""
    return [(n - l) / (d - l) for n, d, l in zip(per[num], per[den], per[loop])]


def quoll_rt(obj, n, enc=codec_encode, dec=codec_decode):
    for _ in range(n):
        dec(enc(obj))


def pickle_rt(obj, n, dumps=pickle.dumps, loads=pickle.loads, proto=pickle.HIGHEST_PROTOCOL):
    for _ in range(n):
        loads(dumps(obj, proto))


def quoll_enc(obj, n, enc=codec_encode):
    for _ in range(n):
        enc(obj)


def pickle_enc(obj, n, dumps=pickle.dumps, proto=pickle.HIGHEST_PROTOCOL):
    for _ in range(n):
        dumps(obj, proto)


def empty_loop(obj, n):
    for _ in range(n):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()

    blob = codec_encode(OBJ)
    assert codec_decode(blob) == OBJ and type(codec_decode(blob)) is tuple
    assert blob[:1] == b"Q", "the tuple should take the fast (non-pickle) path"
    pblob = pickle.dumps(OBJ, pickle.HIGHEST_PROTOCOL)

    # Warm up.
    quoll_rt(OBJ, 10_000)
    pickle_rt(OBJ, 10_000)

    per = time_all({
        "empty_loop": (empty_loop, OBJ),
        "quoll_roundtrip": (quoll_rt, OBJ),
        "pickle_roundtrip": (pickle_rt, OBJ),
        "quoll_encode": (quoll_enc, OBJ),
        "pickle_encode": (pickle_enc, OBJ),
        "quoll_roundtrip_none": (quoll_rt, None),
        "pickle_roundtrip_none": (pickle_rt, None),
    }, a.iters, a.repeats)
    r = summary(per)
    paired = paired_ratios(per, "quoll_roundtrip", "pickle_roundtrip")
    paired_enc = paired_ratios(per, "quoll_encode", "pickle_encode")

    loop = r["empty_loop"]["best_ns"]
    q = r["quoll_roundtrip"]["best_ns"] - loop
    pk = r["pickle_roundtrip"]["best_ns"] - loop
    qn = r["quoll_roundtrip_none"]["best_ns"] - loop
    pn = r["pickle_roundtrip_none"]["best_ns"] - loop
    json.dump(dict(
        object=repr(OBJ), iters=a.iters, repeats=a.repeats,
        quoll_blob_bytes=len(blob), pickle_blob_bytes=len(pblob),
        timings=r,
        # Loop overhead subtracted; best of repeats.
        quoll_rt_ns=q, pickle_rt_ns=pk, ratio=q / pk,
        # The headline: median of the per-repeat ratios, with their spread.
        ratio_paired=statistics.median(paired), ratio_paired_min=min(paired), ratio_paired_max=max(paired),
        ratio_paired_all=paired,
        encode_ratio_paired=statistics.median(paired_enc),
        encode_ratio_paired_min=min(paired_enc), encode_ratio_paired_max=max(paired_enc),
        quoll_fixed_ns=qn, pickle_fixed_ns=pn,
        # What the tuple costs beyond a round trip of None (≈ call + setup overhead).
        quoll_rt_minus_fixed_ns=q - qn, pickle_rt_minus_fixed_ns=pk - pn,
        ratio_minus_fixed=(q - qn) / (pk - pn) if pk > pn else None,
        # Rough engine-side estimate: the engine pays neither the Python->Rust calls
        # nor the per-call codec set-up, so (tuple - None) approximates its cost; a
        # pickle-based engine would pay about the whole pickle round trip.
        engine_side_estimate_ratio=(q - qn) / pk,
        python=sys.version.split()[0],
    ), sys.stdout)
    print()


if __name__ == "__main__":
    main()
