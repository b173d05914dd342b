"""examples/kafka/word_count_kafka.py as a Bytewax 0.21 dataflow, Kafka in
and Kafka out through Bytewax's own connectors (bytewax.connectors.kafka).

It calls the app's own user functions, the raw functions behind its
decorated objects (`decode_line`, `split`, `extract_word`, `count_word`
with a `WordTotal` per word, `encode_count`), so both engines do the same
Python work per record. `KafkaSource` reads every partition of the input
topic from its beginning (each partition by one worker) and, with
`tail=False`, ends at the partitions' end, so the processes exit once the
input is done; `KafkaSink` writes `word => count` keyed by the word, as
quoll's sink does. Bytewax's sink is at-least-once: it has no
transactions.

    python -m bytewax.run "bytewax_kafka_wc:get_flow('HOST:PORT', 'IN', 'OUT')" \
        [-i I -a "host:port;host:port"] [-r RECOVERY_DIR -s 1 -b 0]

with PYTHONPATH holding this directory, examples/kafka,
benches/word_count (for `floor.raw`) and the repository's `python/` (for
`wallaroo`, which the app imports; it needs no engine).
"""

from typing import Any, Callable, List, Optional, Tuple

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow

import word_count_kafka as app
from floor import raw

decode_line: Callable[[bytes], str] = raw(app.decode_line)
split: Callable[[str], List[str]] = raw(app.split)
extract_word: Callable[[str], str] = raw(app.extract_word)
count_word: Callable[[str, Any], Any] = raw(app.count_word)
encode_count: Callable[[Any], Tuple[str, str]] = raw(app.encode_count)
# The state class the engine would make for `count_word`.
STATE = getattr(type(app.count_word), "_quoll_state_class", None) or app.WordTotal


def words(msg: KafkaSourceMessage) -> List[str]:
    return split(decode_line(msg.value))


def count(state: Optional[Any], word: str) -> Tuple[Any, Any]:
    """`count_word` on the word's state, made on its first occurrence."""
    if state is None:
        state = STATE()
    return state, count_word(word, state)


def encode(key_and_count: Tuple[str, Any]) -> KafkaSinkMessage:
    """The app's encoder: its `(payload, key)` as a Kafka message."""
    payload, key = encode_count(key_and_count[1])
    return KafkaSinkMessage(key=key.encode(), value=payload.encode())


def get_flow(brokers: str, in_topic: str, out_topic: str) -> Dataflow:
    flow = Dataflow("word_count_kafka")
    lines = op.input("lines", flow, KafkaSource([brokers], [in_topic], tail=False))
    keyed = op.key_on("key", op.flat_map("split", lines, words), extract_word)
    counted = op.stateful_map("count", keyed, count)
    op.output("counts", op.map("encode", counted, encode), KafkaSink([brokers], out_topic))
    return flow
