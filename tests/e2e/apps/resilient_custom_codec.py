"""Keyed state that pickle can't copy, checkpointed through the app's own
top-level `serialize` / `deserialize`, under worker crashes.

Input: quoll's replayable file source (`--in-file PATH`, `{worker}` is the
worker's name), records framed with a 4-byte big-endian length, each
`sensor,value` (value an integer). Readings are keyed by sensor; the state
per sensor (`SensorTotal`) holds a `threading.Lock`, so pickle refuses it
(and the `Reading` messages too), and only this module's codec can move or
checkpoint them. Output: quoll's exactly-once file sink (`--out-file PATH`),
one line `sensor count total\\n` per reading.

Every blob `serialize` makes starts with `MAGIC` (the test looks for it in
the checkpoint files). If the environment variable `RESILIENT_CODEC_LOG`
names a file, every `deserialize` of a `SensorTotal` (that is: state being
restored from a checkpoint; state never crosses workers otherwise) appends
`D <pid>\\n` to it with one unbuffered write. If `RESILIENT_CODEC_REFUSE_STATE`
is set, `deserialize` refuses every `SensorTotal` (state that can't be
restored).
"""

import argparse
import os
import pickle
import struct
import threading

import wallaroo

MAGIC = b"\xfeRESILIENT-CODEC\x01"
TAG_READING = b"R"
TAG_TOTAL = b"T"
TAG_PICKLE = b"P"


def application_setup(args):
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--in-file", required=True)
    p.add_argument("--out-file", required=True)
    opts, _ = p.parse_known_args(args)
    source = wallaroo.FileSourceConfig("readings", opts.in_file, decode_reading)
    pipeline = (wallaroo.source("Readings", source)
                .key_by(sensor_of)
                .to(total_per_sensor)
                .to_sink(wallaroo.FileSinkConfig(opts.out_file, encode_total)))
    return wallaroo.build_application("Resilient custom codec", pipeline)


class Reading(object):
    def __init__(self, sensor, value):
        self.sensor = sensor
        self.value = value
        self.lock = threading.Lock()


class SensorTotal(object):
    """Per-sensor state; the lock makes it unpicklable."""

    def __init__(self):
        self.count = 0
        self.total = 0
        self.lock = threading.Lock()


class Report(object):
    def __init__(self, sensor, count, total):
        self.sensor = sensor
        self.count = count
        self.total = total


_log_fd = None


def _log_restore():
    global _log_fd
    path = os.environ.get("RESILIENT_CODEC_LOG")
    if not path:
        return
    if _log_fd is None:
        _log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, ("D %d\n" % os.getpid()).encode())


def serialize(obj):
    if isinstance(obj, Reading):
        body = TAG_READING + struct.pack(">q", obj.value) + obj.sensor.encode("utf-8")
    elif isinstance(obj, SensorTotal):
        with obj.lock:
            body = TAG_TOTAL + struct.pack(">qq", obj.count, obj.total)
    else:
        body = TAG_PICKLE + pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return MAGIC + body


def deserialize(data):
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("not a resilient_custom_codec blob: %r" % bytes(data[:24]))
    body = data[len(MAGIC):]
    tag, fields = body[:1], body[1:]
    if tag == TAG_READING:
        (value,) = struct.unpack(">q", fields[:8])
        return Reading(fields[8:].decode("utf-8"), value)
    if tag == TAG_TOTAL:
        if os.environ.get("RESILIENT_CODEC_REFUSE_STATE"):
            raise ValueError("refusing to restore a SensorTotal (RESILIENT_CODEC_REFUSE_STATE is set)")
        t = SensorTotal()
        t.count, t.total = struct.unpack(">qq", fields)
        _log_restore()
        return t
    if tag == TAG_PICKLE:
        return pickle.loads(fields)
    raise ValueError("unknown tag %r" % tag)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_reading(bs):
    sensor, value = bs.decode("utf-8").split(",")
    return Reading(sensor, int(value))


@wallaroo.key_extractor
def sensor_of(reading):
    return reading.sensor


@wallaroo.state_computation(name="total per sensor", state=SensorTotal)
def total_per_sensor(reading, state):
    with state.lock:
        state.count += 1
        state.total += reading.value
        return Report(reading.sensor, state.count, state.total)


@wallaroo.encoder
def encode_total(r):
    return "%s %d %d\n" % (r.sensor, r.count, r.total)
