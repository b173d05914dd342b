"""examples/custom_codec with a `serialize` that returns a str, which the
engine must refuse with an error naming the type returned."""

from custom_codec import application_setup, deserialize  # noqa: F401


def serialize(obj):
    return "reading %s=%d" % (obj.sensor, obj.value)
