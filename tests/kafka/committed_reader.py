"""A Kafka reader that applies the read_committed rule itself, for tests.

The tansu broker the tests run hands the records of *aborted* transactions
to read_committed consumers (and makes transaction markers take offsets),
so a test that checks exactly-once output can't trust a client's
``isolation.level=read_committed``. This module speaks the Kafka protocol
directly (standard library only): it fetches every record batch of a
partition uncommitted, control batches included, and keeps what a correct
read_committed consumer would return:

- records of non-transactional batches;
- records of a transactional batch whose producer's next control batch of
  the same producer epoch is a COMMIT marker; those followed by an ABORT
  marker are dropped;
- nothing of a producer epoch that a later epoch of the same producer
  replaced before it was settled: a new epoch (``InitProducerId``) aborts
  the open transaction, and Kafka refuses writes from a fenced epoch, so a
  batch that tansu accepted from one is dropped too (``fenced_batches``
  lists them);
- nothing at or after the last stable offset: the first offset of a
  transaction that has no marker yet.

Usable as a module (``read_committed``, ``read_all``) and as a command:
``python3 committed_reader.py --broker 127.0.0.1:9092 --topic out`` prints
one JSON object per kept record, ``{"partition", "offset", "key", "value"}``
(key and value as UTF-8 text, invalid bytes replaced; ``null`` for none).
Only uncompressed batches are read (quoll's sink sends them so); others
are reported as errors.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

API_FETCH = 1
API_METADATA = 3
FETCH_VERSION = 4
# v4: the first that can say "don't create the topic" (tansu creates
# topics named in older metadata requests).
METADATA_VERSION = 4
ATTR_COMPRESSION = 0x07
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
CONTROL_ABORT = 0
CONTROL_COMMIT = 1


class ProtocolError(Exception):
    """The broker's answer can't be read, or it reports an error."""


@dataclass
class Record:
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]


@dataclass
class Batch:
    """One record batch as stored, control batches included."""

    partition: int
    base_offset: int
    last_offset: int
    producer_id: int
    producer_epoch: int
    transactional: bool
    control: Optional[int]  # CONTROL_ABORT / CONTROL_COMMIT for a marker
    records: list[Record] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"answer cut short at byte {self.pos} (wanted {n} more)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt)))

    def i8(self) -> int:
        return self.unpack("b")[0]

    def i16(self) -> int:
        return self.unpack("h")[0]

    def i32(self) -> int:
        return self.unpack("i")[0]

    def i64(self) -> int:
        return self.unpack("q")[0]

    def string(self) -> Optional[str]:
        n = self.i16()
        return None if n < 0 else self.take(n).decode("utf-8")

    def varint(self) -> int:
        shift = 0
        raw = 0
        while True:
            b = self.take(1)[0]
            raw |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ProtocolError("varint too long")
        return (raw >> 1) ^ -(raw & 1)

    def varbytes(self) -> Optional[bytes]:
        n = self.varint()
        return None if n < 0 else self.take(n)

    def left(self) -> int:
        return len(self.data) - self.pos


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">h", len(b)) + b


class Connection:
    """One blocking connection to a broker."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ProtocolError("the broker closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def request(self, api_key: int, version: int, body: bytes) -> _Reader:
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _string("quoll-tests")
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self._recv_exact(4))[0]
        r = _Reader(self._recv_exact(size))
        if r.i32() != self.correlation:
            raise ProtocolError("answer to another request")
        return r

    def partitions(self, topic: str) -> list[int]:
        """The topic's partition ids (Metadata v4, no auto-creation)."""
        r = self.request(API_METADATA, METADATA_VERSION,
                         struct.pack(">i", 1) + _string(topic) + b"\x00")
        r.i32()  # throttle
        for _ in range(r.i32()):  # brokers
            r.i32()
            r.string()
            r.i32()
            r.string()
        r.string()  # cluster id
        r.i32()  # controller
        for _ in range(r.i32()):
            error = r.i16()
            name = r.string()
            r.i8()
            parts = []
            for _ in range(r.i32()):
                r.i16()
                parts.append(r.i32())
                r.i32()
                for _ in range(r.i32()):
                    r.i32()
                for _ in range(r.i32()):
                    r.i32()
            if name == topic:
                if error:
                    raise ProtocolError(f"topic '{topic}': metadata error code {error}")
                return sorted(parts)
        raise ProtocolError(f"topic '{topic}' is not in the metadata")

    def fetch(self, topic: str, partition: int, offset: int,
              max_bytes: int = 4 << 20) -> tuple[int, bytes]:
        """Records from `offset`, uncommitted (Fetch v4): (high watermark,
        raw record batches)."""
        body = struct.pack(">iiiib", -1, 500, 1, max_bytes, 0)
        body += struct.pack(">i", 1) + _string(topic)
        body += struct.pack(">iiqi", 1, partition, offset, max_bytes)
        r = self.request(API_FETCH, FETCH_VERSION, body)
        r.i32()  # throttle
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                p = r.i32()
                error = r.i16()
                high = r.i64()
                r.i64()  # last stable offset
                n = r.i32()
                for _ in range(max(n, 0)):
                    r.i64()
                    r.i64()
                size = r.i32()
                records = r.take(size) if size > 0 else b""
                if p == partition:
                    if error:
                        raise ProtocolError(
                            f"{topic}/{partition}: fetch error code {error}")
                    return high, records
        raise ProtocolError(f"{topic}/{partition}: not in the fetch answer")


def parse_batches(partition: int, raw: bytes) -> list[Batch]:
    """The whole record batches in `raw` (a fetch may end inside one)."""
    out = []
    r = _Reader(raw)
    while r.left() >= 12:
        base_offset = r.i64()
        length = r.i32()
        if r.left() < length:
            break
        b = _Reader(r.take(length))
        b.i32()  # partition leader epoch
        magic = b.i8()
        if magic != 2:
            raise ProtocolError(f"record batch at {base_offset}: magic {magic}, expected 2")
        b.take(4)  # crc
        attributes = b.i16()
        last_delta = b.i32()
        b.i64()
        b.i64()
        producer_id = b.i64()
        producer_epoch = b.i16()
        b.i32()
        count = b.i32()
        if attributes & ATTR_COMPRESSION:
            raise ProtocolError(
                f"record batch at {base_offset} is compressed (codec "
                f"{attributes & ATTR_COMPRESSION}); only uncompressed batches are read")
        batch = Batch(partition, base_offset, base_offset + last_delta, producer_id,
                      producer_epoch, bool(attributes & ATTR_TRANSACTIONAL), None)
        for _ in range(count):
            rec = _Reader(b.take(b.varint()))
            rec.i8()
            rec.varint()
            offset = base_offset + rec.varint()
            key = rec.varbytes()
            value = rec.varbytes()
            if attributes & ATTR_CONTROL:
                if key is None or len(key) < 4:
                    raise ProtocolError(f"control record at {offset} has no type")
                batch.control = struct.unpack(">hh", key[:4])[1]
            else:
                batch.records.append(Record(partition, offset, key, value))
        out.append(batch)
    return out


# How many times a fetch that returns nothing below the high watermark is
# asked again (see _batches_from).
EMPTY_RETRIES = 20
# How many answers that start after the offset asked for make a lasting gap.
GAP_RETRIES = 5


def read_all(host: str, port: int, topic: str, partition: int) -> list[Batch]:
    """Every batch of one partition, up to its high watermark."""
    batches: list[Batch] = []
    offset = 0
    with Connection(host, port) as conn:
        while True:
            got, high = _batches_from(conn, topic, partition, offset)
            if not got:
                return batches
            batches.extend(got)
            offset = got[-1].last_offset + 1
            if offset >= high:
                return batches


def _batches_from(conn: Connection, topic: str, partition: int,
                  want: int) -> tuple[list[Batch], int]:
    """The batches from the one holding offset `want` on (or, if none
    does, from the first after it), and the high watermark (no batches at
    the high watermark). tansu with S3 storage answers a fetch with nothing
    when reading its store takes longer than the fetch's wait, and
    sometimes with batches after `want` while the one holding it is not
    yet visible; both are asked again. A gap that lasts (GAP_RETRIES
    answers) is taken as Kafka takes one, a fetch skipping offsets that
    hold no batch: tansu on moto kept a one-offset gap after a broker
    restart (Dec 8). Nothing is silently lost by that: the
    tests check the records' contents (every count once, in order), so a
    data record missing from the log still fails them."""
    gaps = 0
    for _ in range(EMPTY_RETRIES):
        high, raw = conn.fetch(topic, partition, want)
        if want >= high:
            return [], high
        got = parse_batches(partition, raw)
        if raw and not got:
            raise ProtocolError(f"{topic}/{partition}: a batch at {want} is larger than a fetch")
        for i, b in enumerate(got):
            if b.base_offset <= want <= b.last_offset:
                return got[i:], high
        if got:
            gaps += 1
            if gaps == GAP_RETRIES:
                return [b for b in got if b.base_offset > want], high
            time.sleep(0.05)
    raise ProtocolError(f"{topic}/{partition}: {EMPTY_RETRIES} fetches at {want} answered nothing "
                        f"(high watermark {high})")


def _settle(batches: list[Batch]) -> tuple[dict[int, int], Optional[int], list[int]]:
    """The fate of each settled transactional batch (by index), the last
    stable offset (None: everything is settled) and the indexes of batches
    from a fenced producer epoch."""
    fate: dict[int, int] = {}
    open_by_producer: dict[int, list[int]] = {}
    epoch: dict[int, int] = {}  # producer -> newest epoch seen
    fenced = []

    def abort_older(pid: int, e: int) -> None:
        still = []
        for j in open_by_producer.pop(pid, []):
            if batches[j].producer_epoch < e:
                fate[j] = CONTROL_ABORT
            else:
                still.append(j)
        if still:
            open_by_producer[pid] = still

    for i, b in enumerate(batches):
        if not b.transactional and b.control is None:
            continue
        pid, e = b.producer_id, b.producer_epoch
        if e < epoch.get(pid, e):
            if b.control is None:
                fate[i] = CONTROL_ABORT
                fenced.append(i)
            continue
        epoch[pid] = e
        abort_older(pid, e)
        if b.control is not None:
            for j in open_by_producer.pop(pid, []):
                fate[j] = b.control
        else:
            open_by_producer.setdefault(pid, []).append(i)
    still_open = [batches[j].base_offset for js in open_by_producer.values() for j in js]
    return fate, (min(still_open) if still_open else None), fenced


def committed(batches: list[Batch]) -> list[Record]:
    """The read_committed view of one partition's batches (module docs)."""
    fate, stable, _ = _settle(batches)
    out = []
    for i, b in enumerate(batches):
        if b.control is not None:
            continue
        if stable is not None and b.base_offset >= stable:
            break
        if b.transactional and fate.get(i) != CONTROL_COMMIT:
            continue
        out.extend(b.records)
    return out


def fenced_batches(broker: str, topic: str) -> list[Batch]:
    """Data batches written with a producer epoch older than one the same
    producer had already used: Kafka refuses them (the epoch is fenced);
    tansu may store them. The committed view drops them."""
    host, port_s = broker.rsplit(":", 1)
    port = int(port_s)
    with Connection(host, port) as conn:
        partitions = conn.partitions(topic)
    out = []
    for p in partitions:
        batches = read_all(host, port, topic, p)
        out.extend(batches[i] for i in _settle(batches)[2])
    return out


def read_committed(broker: str, topic: str) -> list[Record]:
    """The committed records of every partition of `topic`, partition by
    partition in offset order. `broker` is `host:port` (a single-broker
    cluster, as in the tests)."""
    host, port_s = broker.rsplit(":", 1)
    port = int(port_s)
    with Connection(host, port) as conn:
        partitions = conn.partitions(topic)
    out: list[Record] = []
    for p in partitions:
        out.extend(committed(read_all(host, port, topic, p)))
    return out


def read_uncommitted(broker: str, topic: str) -> list[Record]:
    """Every data record, aborted or open transactions included."""
    host, port_s = broker.rsplit(":", 1)
    port = int(port_s)
    with Connection(host, port) as conn:
        partitions = conn.partitions(topic)
    return [r for p in partitions for b in read_all(host, port, topic, p)
            for r in b.records]


def history(broker: str, topic: str, value_prefix: bytes) -> list[str]:
    """Every data record whose value starts with `value_prefix`, with its
    batch's producer, epoch and fate, one line each: what a failing
    exactly-once test prints."""
    host, port_s = broker.rsplit(":", 1)
    port = int(port_s)
    with Connection(host, port) as conn:
        partitions = conn.partitions(topic)
    names = {CONTROL_COMMIT: "committed", CONTROL_ABORT: "aborted"}
    out = []
    for p in partitions:
        batches = read_all(host, port, topic, p)
        fate, stable, fenced = _settle(batches)
        for i, b in enumerate(batches):
            if not b.transactional:
                what = "plain"
            elif i in fenced:
                what = "fenced epoch"
            else:
                what = names.get(fate.get(i), "open")
            out.extend(f"{p}/{r.offset} pid {b.producer_id} epoch {b.producer_epoch} {what}: "
                       f"{_text(r.value)}" for r in b.records
                       if r.value is not None and r.value.startswith(value_prefix))
    return out


def _text(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("utf-8", "replace")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True, help="host:port")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--uncommitted", action="store_true",
                        help="every record, aborted transactions included")
    args = parser.parse_args(argv)
    read = read_uncommitted if args.uncommitted else read_committed
    try:
        records = read(args.broker, args.topic)
    except (OSError, ProtocolError) as e:
        print(f"committed_reader: {args.topic} at {args.broker}: {e}", file=sys.stderr)
        return 1
    for r in records:
        print(json.dumps({"partition": r.partition, "offset": r.offset,
                          "key": _text(r.key), "value": _text(r.value)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
