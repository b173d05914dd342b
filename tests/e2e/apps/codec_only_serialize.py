"""examples/custom_codec with only `serialize` at the top level: one of
the pair alone counts for nothing (docs/wallaroo-compat.md,
"Serialization"), so the default codec is used and this serialize is never
called."""

from custom_codec import application_setup, serialize  # noqa: F401
