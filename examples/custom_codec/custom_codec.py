"""Custom codec: messages that pickle refuses, shipped between workers by
the app's own `serialize` / `deserialize`.

Each input line "sensor,value" (value an integer) becomes a `Reading`.
A `Reading` holds a `threading.Lock` (standing in for any handle pickle
can't copy: a lock, a socket, a C-level object), so
`pickle.dumps(reading)` raises `TypeError: cannot pickle '_thread.lock'
object`. Readings are keyed by sensor, so on several workers most of them
cross to the worker that owns their sensor; that is where the two top-level
functions below come in: the engine calls `serialize(obj)` for every object
it ships or checkpoints and `deserialize(data)` on the other side, and
never uses pickle for this app (both names are defined at the top level
of the application module; docs/wallaroo-compat.md, "Serialization").

The blob is `MAGIC + crc32(body) + body`, and `deserialize` verifies both,
so a blob that was cut or altered on the way is refused rather than
misread. Per-sensor state (`SensorTotal`) has its own tag, for checkpoints;
anything else falls back to pickle.

Output: one line per reading, `sensor count total\\n`, the running count
and sum of that sensor's values.

Set `CUSTOM_CODEC_TRACE=DIR` to have every serialize/deserialize call
logged in `DIR/<pid>.log` as `S <sha256 of blob>` / `D <sha256 of blob>`
(the tests use it to check that each shipped blob arrives unchanged).

Run on one worker:

    quoll run examples/custom_codec/custom_codec.py --in readings@127.0.0.1:7010 --out 127.0.0.1:7002

Run on three workers (readings then cross workers, through the codec):

    cd examples/custom_codec
    machida3 --application-module custom_codec --cluster-initializer --name initializer \\
        --worker-count 3 --control 127.0.0.1:6000 --data 127.0.0.1:6001 \\
        --external 127.0.0.1:5050 --in readings@127.0.0.1:7010 --out 127.0.0.1:7002 &
    machida3 --application-module custom_codec --name worker1 --control 127.0.0.1:6000 \\
        --in readings@127.0.0.1:7011 --out 127.0.0.1:7002 &
    machida3 --application-module custom_codec --name worker2 --control 127.0.0.1:6000 \\
        --in readings@127.0.0.1:7012 --out 127.0.0.1:7002 &

and feed it with `quoll receive --listen 127.0.0.1:7002 --output -` and
`quoll send --host 127.0.0.1:7010 --file readings.txt` (lines like `s1,42`).
"""

import hashlib
import os
import pickle
import struct
import threading
import zlib

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    readings = wallaroo.source("Readings", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode_reading))
    pipeline = (readings
                .key_by(sensor_of)
                .to(total_per_sensor)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_total)))
    return wallaroo.build_application("Custom codec", pipeline)


class Reading(object):
    """One sensor reading. The lock makes it unpicklable."""

    def __init__(self, sensor, value):
        self.sensor = sensor
        self.value = value
        self.lock = threading.Lock()


class SensorTotal(object):
    def __init__(self):
        self.count = 0
        self.total = 0


MAGIC = b"QCC1"
TAG_READING = b"R"
TAG_TOTAL = b"T"
TAG_PICKLE = b"P"


def serialize(obj):
    """Encodes a Reading or a SensorTotal (anything else: pickle) as
    MAGIC + crc32(body) + body, body = tag + fields."""
    if isinstance(obj, Reading):
        body = TAG_READING + struct.pack(">q", obj.value) + obj.sensor.encode("utf-8")
    elif isinstance(obj, SensorTotal):
        body = TAG_TOTAL + struct.pack(">qq", obj.count, obj.total)
    else:
        body = TAG_PICKLE + pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    blob = MAGIC + struct.pack(">I", zlib.crc32(body)) + body
    _trace(b"S", blob)
    return blob


def deserialize(data):
    """The inverse of serialize; refuses a blob whose magic or checksum is wrong."""
    if not isinstance(data, bytes):
        raise TypeError("deserialize expects bytes, got %s" % type(data).__name__)
    if data[:4] != MAGIC:
        raise ValueError("not a custom_codec blob (magic %r)" % data[:4])
    (crc,) = struct.unpack(">I", data[4:8])
    body = data[8:]
    if zlib.crc32(body) != crc:
        raise ValueError("custom_codec blob checksum mismatch (%d bytes)" % len(data))
    _trace(b"D", data)
    tag, fields = body[:1], body[1:]
    if tag == TAG_READING:
        (value,) = struct.unpack(">q", fields[:8])
        return Reading(fields[8:].decode("utf-8"), value)
    if tag == TAG_TOTAL:
        t = SensorTotal()
        t.count, t.total = struct.unpack(">qq", fields)
        return t
    if tag == TAG_PICKLE:
        return pickle.loads(fields)
    raise ValueError("unknown custom_codec tag %r" % tag)


_trace_file = None


def _trace(kind, blob):
    global _trace_file
    directory = os.environ.get("CUSTOM_CODEC_TRACE")
    if not directory:
        return
    if _trace_file is None:
        _trace_file = open(os.path.join(directory, "%d.log" % os.getpid()), "ab", buffering=0)
    _trace_file.write(kind + b" " + hashlib.sha256(blob).hexdigest().encode("ascii") + b"\n")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_reading(bs):
    line = bs.decode("utf-8").strip()
    if not line:
        return None
    sensor, value = line.split(",")
    return Reading(sensor, int(value))


@wallaroo.key_extractor
def sensor_of(reading):
    return reading.sensor


@wallaroo.state_computation(name="total per sensor", state=SensorTotal)
def total_per_sensor(reading, total):
    with reading.lock:
        total.count += 1
        total.total += reading.value
        return (reading.sensor, total.count, total.total)


@wallaroo.encoder
def encode_total(item):
    return "%s %d %d\n" % item
