"""Merge sources: Celsius and Fahrenheit sensors merged into one max per sensor.

Two TCP sources, given as two `--in` entries: the first receives Celsius
readings, the second Fahrenheit readings, both as lines `sensor,value` framed
with a 4-byte big-endian length. Each source has its own stateless stage that
turns its readings into a common form (a `Reading` in degrees Celsius; a
Fahrenheit value becomes `(f - 32) * 5 / 9`). The two streams are merged,
keyed by sensor, and a state computation keeps per sensor the number of
readings and the highest temperature seen. After every reading it sends
`sensor readings=N max=T\n` (T is Python's repr of the float) to every sink
listed in `--out`, through `to_sinks`: each receiver gets every line.

Run on one worker:

    quoll run examples/merge_sources/merge_sources.py --in celsius@127.0.0.1:7010,fahrenheit@127.0.0.1:7011 --out 127.0.0.1:7002,127.0.0.1:7003
    quoll receive --listen 127.0.0.1:7002 --output max-a.txt
    quoll receive --listen 127.0.0.1:7003 --output max-b.txt
    quoll send --host 127.0.0.1:7010 --file celsius.txt --framing framed
    quoll send --host 127.0.0.1:7011 --file fahrenheit.txt --framing framed
"""

import wallaroo


def application_setup(args):
    inputs = wallaroo.tcp_parse_input_addrs(args)
    if len(inputs) != 2:
        raise wallaroo.WallarooParameterError(
            "merge_sources needs two --in entries: CELSIUS_NAME@HOST:PORT,FAHRENHEIT_NAME@HOST:PORT")
    (c_name, c_host, c_port), (f_name, f_host, f_port) = inputs
    sinks = [wallaroo.TCPSinkConfig(host, port, encode_max)
             for host, port in wallaroo.tcp_parse_output_addrs(args)]

    celsius = (wallaroo.source("celsius readings",
                               wallaroo.TCPSourceConfig(c_name, c_host, c_port, decode_reading))
               .to(from_celsius))
    fahrenheit = (wallaroo.source("fahrenheit readings",
                                  wallaroo.TCPSourceConfig(f_name, f_host, f_port, decode_reading))
                  .to(from_fahrenheit))
    pipeline = (celsius
                .merge(fahrenheit)
                .key_by(extract_sensor)
                .to(track_max)
                .to_sinks(sinks))
    return wallaroo.build_application("Merged Sensor Max", pipeline)


class RawReading(object):
    def __init__(self, sensor, value):
        self.sensor = sensor
        self.value = value


class Reading(object):
    """The common form: degrees Celsius."""

    def __init__(self, sensor, celsius):
        self.sensor = sensor
        self.celsius = celsius


class SensorMax(object):
    def __init__(self):
        self.readings = 0
        self.max = None


class MaxReport(object):
    def __init__(self, sensor, readings, max_celsius):
        self.sensor = sensor
        self.readings = readings
        self.max = max_celsius


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_reading(bs):
    sensor, value = bs.decode("utf-8").strip().split(",")
    return RawReading(sensor, float(value))


@wallaroo.computation(name="from celsius")
def from_celsius(raw):
    return Reading(raw.sensor, raw.value)


@wallaroo.computation(name="from fahrenheit")
def from_fahrenheit(raw):
    return Reading(raw.sensor, (raw.value - 32) * 5 / 9)


@wallaroo.key_extractor
def extract_sensor(reading):
    return reading.sensor


@wallaroo.state_computation(name="track max", state=SensorMax)
def track_max(reading, state):
    state.readings += 1
    if state.max is None or reading.celsius > state.max:
        state.max = reading.celsius
    return MaxReport(reading.sensor, state.readings, state.max)


@wallaroo.encoder
def encode_max(report):
    return "%s readings=%d max=%r\n" % (report.sensor, report.readings, report.max)
