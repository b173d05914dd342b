"""examples/custom_codec whose `deserialize` raises for readings of
sensors named "poison...": the receiving worker must report it and drop
that message only."""

import custom_codec
from custom_codec import application_setup, serialize  # noqa: F401


def deserialize(data):
    reading = custom_codec.deserialize(data)
    if reading.sensor.startswith("poison"):
        refuse(reading)
    return reading


def refuse(reading):
    raise ValueError("refusing a reading of %s" % reading.sensor)
