#!/usr/bin/env python3
"""The "floor" of the word count benchmark: the app's own functions in a bare loop.

Runs in its own process (run.py starts it with the venv's Python and
PYTHONPATH=examples/word_count). It calls exactly the raw user functions the
engine calls (`type(obj)._quoll_func` of each decorated object), in the
engine's order, with a plain dict as the per-word state store:

    for each line's bytes:  line = decode_line(bs)
      for word in split(line):
        key = extract_word(word)
        state = states.get(key) or states.setdefault(key, WordTotal())
        encode_word_count(count_word(word, state))

The input lines are read into memory (as bytes, without the newline, as
`quoll send --framing framed` sends them) before the clock starts, so the
figure is pure user-code cost: no I/O, no framing, no routing, no codec.

Prints one JSON object on stdout.
"""

import argparse
import json
import resource
import sys
import time


def raw(obj):
    func = getattr(type(obj), "_quoll_func", None)
    if func is None:
        raise SystemExit(f"{obj!r} is not a wallaroo-decorated object (no _quoll_func)")
    return func


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("--module", default="word_count")
    a = p.parse_args()

    app = __import__(a.module)
    decode = raw(app.decode_line)
    split = raw(app.split)
    extract = raw(app.extract_word)
    count = raw(app.count_word)
    encode = raw(app.encode_word_count)
    state_class = getattr(type(app.count_word), "_quoll_state_class", None) or app.WordTotal

    with open(a.input, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    del data

    states = {}
    words = 0
    get = states.get
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    for bs in lines:
        ws = split(decode(bs))
        words += len(ws)
        for word in ws:
            key = extract(word)
            state = get(key)
            if state is None:
                state = states[key] = state_class()
            encode(count(word, state))
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0

    json.dump(dict(
        lines=len(lines), words=words, distinct_words=len(states), wall_s=wall, cpu_s=cpu, words_per_s=words / wall if wall else None,
        cpu_s_per_million_words=cpu / words * 1e6 if words else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        python=sys.version.split()[0],
    ), sys.stdout)
    print()


if __name__ == "__main__":
    main()
