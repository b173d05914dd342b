"""examples/custom_codec without its serialize/deserialize pair: the
default codec (pickle) must refuse its Readings, which hold a lock."""

from custom_codec import application_setup  # noqa: F401  (no serialize/deserialize here)
