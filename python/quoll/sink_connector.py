"""quoll's file sink connector: ``python -m quoll.sink_connector --listen
HOST:PORT --cookie COOKIE --dir DIR``.

Workers with a ``SinkConnectorConfig`` sink connect to it; each worker's
stream is written to ``DIR/<stream>.out`` exactly once when the workers run
with resilience (two-phase commit tied to their checkpoints: the bytes of a
checkpoint are made durable at PHASE1 in ``DIR/<stream>.prepared`` and
appended to the ``.out`` file at PHASE2 commit), and at least as far as the
connection goes without it. It may be SIGKILLed and restarted at any
moment with the same command: what it committed is in the ``.out`` files,
what it prepared is resolved by the workers when they reconnect. The
protocol and its rules are in docs/connectors.md.
"""

import argparse
import signal
import sys
from typing import Optional, Sequence

from wallaroo.experimental._sink import DirectoryStore, SinkServer


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quoll.sink_connector",
        description="Write each worker's connector-sink stream to a file, "
                    "exactly once with resilience.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="the SinkConnectorConfig's host and port")
    parser.add_argument("--cookie", required=True,
                        help="the SinkConnectorConfig's cookie")
    parser.add_argument("--dir", required=True,
                        help="directory of the <stream>.out files")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error("--listen must be HOST:PORT, got {!r}".format(args.listen))

    def log(line: str) -> None:
        print("sink_connector: " + line, file=sys.stderr, flush=True)

    try:
        server = SinkServer(host, int(port), args.cookie, DirectoryStore(args.dir),
                            on_commit=lambda stream, data: None, log=log)
    except OSError as e:
        log("can't listen on {}: {}".format(args.listen, e))
        return 1
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print("sink_connector: listening on {}".format(args.listen), flush=True)
    try:
        while not stop:
            server.poll(0.2)
    except KeyboardInterrupt:
        pass
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
