"""An at-least-once feed written the way Wallaroo's connector examples
write theirs: a `MultiSourceConnector` sending u32-framed files, one stream
each, to a worker's source connector.

    python multi_source_feed.py HOST:PORT COOKIE FILE [FILE ...]

Prints `feed: done` once every file has been sent and the worker has
acknowledged its end; exits 1 with the error if the client fails.
"""

import logging
import sys

from wallaroo.experimental import connectors


def main(argv):
    logging.basicConfig(level=logging.WARNING, format="feed: %(levelname)s %(message)s")
    host, port = argv[1].rsplit(":", 1)
    client = connectors.MultiSourceConnector("0.0.1", argv[2], "multi source feed", "instance", host, port)
    client.connect()
    for path in argv[3:]:
        client.add_source(connectors.FramedFileReader(filename=path))
    try:
        client.join()
    except Exception as e:
        print(f"feed: failed: {e}", flush=True)
        return 1
    print("feed: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
