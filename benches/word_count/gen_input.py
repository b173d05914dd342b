#!/usr/bin/env python3
"""Deterministic input for the word count benchmark.

Writes a text file of `--lines` lines, each of 3-12 words drawn from a
vocabulary of `--vocab` made-up lowercase words with a Zipf distribution
(weight of the word of rank r is 1 / r**s). Everything comes from one seeded
`random.Random`, so the same parameters always give the same bytes.

The file is cached: when it already exists next to a metadata file recording
the same parameters, nothing is regenerated. The metadata also records the
total number of words (= the number of outputs word count produces, since the
made-up words have no punctuation to strip).

    python benches/word_count/gen_input.py [--lines 1000000] [--out-dir DIR]
"""

import argparse
import bisect
import itertools
import json
import os
import random
import string
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / ".cache"
FORMAT_VERSION = 1

DEFAULTS = dict(lines=1_000_000, vocab=10_000, zipf_s=1.1, min_words=3, max_words=12, seed=20240601)


def make_vocab(rng, n):
    """n distinct made-up lowercase words, 2-10 letters, from consonant/vowel syllables."""
    consonants = "bcdfghjklmnprstvwz"
    vowels = "aeiouy"
    seen = set()
    words = []
    while len(words) < n:
        syllables = rng.randint(1, 4)
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
        if rng.random() < 0.3:
            w += rng.choice(consonants)
        if w not in seen:
            seen.add(w)
            words.append(w)
    assert all(c in string.ascii_lowercase for w in words for c in w)
    return words


def params_of(args):
    return dict(version=FORMAT_VERSION, lines=args.lines, vocab=args.vocab, zipf_s=args.zipf_s,
                min_words=args.min_words, max_words=args.max_words, seed=args.seed)


def paths_for(params, out_dir):
    stem = "input-{lines}-v{vocab}-s{zipf_s}-w{min_words}_{max_words}-seed{seed}".format(**params)
    out_dir = Path(out_dir)
    return out_dir / (stem + ".txt"), out_dir / (stem + ".json")


def generate(params, path):
    rng = random.Random(params["seed"])
    vocab = make_vocab(rng, params["vocab"])
    s = params["zipf_s"]
    cum = list(itertools.accumulate(1.0 / (r ** s) for r in range(1, params["vocab"] + 1)))
    total_w = cum[-1]
    lo, hi = params["min_words"], params["max_words"]
    rand, randint = rng.random, rng.randint
    n_vocab = len(vocab)
    total_words = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        buf = []
        for i in range(params["lines"]):
            k = randint(lo, hi)
            total_words += k
            # Inverse-CDF sampling (what random.choices does, inlined for speed).
            buf.append(" ".join([vocab[min(bisect.bisect(cum, rand() * total_w), n_vocab - 1)]
                                 for _ in range(k)]))
            if len(buf) >= 10_000:
                f.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            f.write("\n".join(buf) + "\n")
    os.replace(tmp, path)
    return total_words


def ensure_input(lines=DEFAULTS["lines"], out_dir=DEFAULT_DIR, vocab=DEFAULTS["vocab"], zipf_s=DEFAULTS["zipf_s"],
                 min_words=DEFAULTS["min_words"], max_words=DEFAULTS["max_words"], seed=DEFAULTS["seed"],
                 quiet=False):
    """Returns (path, metadata dict), generating the file only if needed."""
    args = argparse.Namespace(lines=lines, vocab=vocab, zipf_s=zipf_s, min_words=min_words,
                              max_words=max_words, seed=seed)
    params = params_of(args)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path, meta_path = paths_for(params, out_dir)
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("params") == params and meta.get("bytes") == path.stat().st_size:
            if not quiet:
                print(f"input: cached {path} ({meta['total_words']:,} words)", file=sys.stderr)
            return path, meta
    t0 = time.time()
    if not quiet:
        print(f"input: generating {params['lines']:,} lines -> {path} ...", file=sys.stderr)
    total_words = generate(params, path)
    meta = dict(params=params, total_words=total_words, bytes=path.stat().st_size)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    if not quiet:
        print(f"input: {total_words:,} words, {meta['bytes']:,} bytes in {time.time() - t0:.1f} s", file=sys.stderr)
    return path, meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=DEFAULTS["lines"])
    p.add_argument("--vocab", type=int, default=DEFAULTS["vocab"])
    p.add_argument("--zipf-s", type=float, default=DEFAULTS["zipf_s"])
    p.add_argument("--min-words", type=int, default=DEFAULTS["min_words"])
    p.add_argument("--max-words", type=int, default=DEFAULTS["max_words"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--out-dir", default=str(DEFAULT_DIR))
    a = p.parse_args(argv)
    path, meta = ensure_input(a.lines, a.out_dir, a.vocab, a.zipf_s, a.min_words, a.max_words, a.seed)
    print(path)


if __name__ == "__main__":
    main()
