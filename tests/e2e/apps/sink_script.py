"""A Wallaroo-style sink connector script, as users write them: run with
`--application-module APP --connector NAME` and the app's own arguments;
prints every message `SinkConnector.read()` returns."""

import sys

import wallaroo.experimental

connector = wallaroo.experimental.SinkConnector(required_params=[], optional_params=[])
connector.listen()
print("listening", flush=True)
while True:
    sys.stdout.write(connector.read())
    sys.stdout.flush()
