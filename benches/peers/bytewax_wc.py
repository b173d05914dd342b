"""The word count of examples/word_count as a Bytewax 0.21 dataflow.

It calls the same user functions quoll calls: the raw functions behind the
app's decorated objects (`split`, `extract_word`, `count_word` with a
`WordTotal` state per word, `encode_word_count`), found the way the word
count benchmark's floor finds them (benches/word_count/floor.py). Lines
come from Bytewax's `DirSource` (every `*.txt` file of a directory, one
partition per file, each read by one worker) and the counts go to its
`DirSink` (one file per process, chosen by key), so with and without
recovery the output is `word => count` lines, as quoll's file sink writes
them.

    python -m bytewax.run "bytewax_wc:get_flow('IN_DIR', 'OUT_DIR', FILES)" \
        [-i I -a "host:port;host:port"] [-r RECOVERY_DIR -s 1 -b 0]

with PYTHONPATH holding this directory, benches/word_count,
examples/word_count and the repository's `python/` (for `wallaroo`, which
the app imports; it needs no engine).
"""

from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import bytewax.operators as op
from bytewax.connectors.files import DirSink, DirSource
from bytewax.dataflow import Dataflow

import word_count
from floor import raw

split: Callable[[str], list] = raw(word_count.split)
extract_word: Callable[[str], str] = raw(word_count.extract_word)
count_word: Callable[[str, Any], Any] = raw(word_count.count_word)
encode_word_count: Callable[[Any], bytes] = raw(word_count.encode_word_count)
# The state class the engine would make for `count_word` (floor.py does the same).
STATE = getattr(type(word_count.count_word), "_quoll_state_class", None) or word_count.WordTotal


def count(state: Optional[Any], word: str) -> Tuple[Any, Any]:
    """`count_word` on the word's state, made on its first occurrence."""
    if state is None:
        state = STATE()
    return state, count_word(word, state)


def encode(key_and_count: Tuple[str, Any]) -> Tuple[str, str]:
    """The app's encoder; Bytewax's file sinks write `str`, so its UTF-8
    bytes are decoded back (the sink adds nothing: `end=""`)."""
    key, wc = key_and_count
    return key, encode_word_count(wc).decode("utf-8")


def get_flow(in_dir: str, out_dir: str, files: int) -> Dataflow:
    flow = Dataflow("word_count")
    lines = op.input("lines", flow, DirSource(Path(in_dir), glob_pat="*.txt"))
    words = op.flat_map("split", lines, split)
    keyed = op.key_on("key", words, extract_word)
    counted = op.stateful_map("count", keyed, count)
    out = op.map("encode", counted, encode)
    op.output("out", out, DirSink(Path(out_dir), file_count=files, end=""))
    return flow
