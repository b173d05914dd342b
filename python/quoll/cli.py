"""The `quoll` and `machida3` commands.

    quoll run APP.py [--workers N] [app args]   run an app on local workers
    quoll worker ...                            one worker (same as machida3)
    quoll send | receive | status | shutdown    tools, implemented in Rust
"""

import os
import sys

TOOLS = ("send", "receive", "status", "shutdown")

USAGE = """usage: quoll COMMAND [args]

commands:
  run APP.py [app args]      run a Wallaroo app on one local worker
  worker [machida3 flags]    run one worker (the same as machida3)
  send                       send a file to a TCP source (framed or lines)
  receive                    listen for a TCP sink's output, store or count it
  status HOST:PORT           cluster status through a worker's external channel
  shutdown HOST:PORT         clean shutdown through a worker's external channel

`quoll COMMAND --help` tells more.
"""


def machida3_main():
    from quoll import worker
    sys.exit(worker.main(sys.argv))


def run_main(argv):
    """`quoll run path/to/app.py [app args]`: one local worker, no cluster flags."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: quoll run APP.py [--on-user-error skip|fail] [app args]\n\n"
              "Imports APP.py as a module (its directory is put on the path) and runs it\n"
              "on one local worker. App args such as --in NAME@HOST:PORT and --out HOST:PORT\n"
              "are passed to application_setup(args).")
        return 0
    path = argv[0]
    if not os.path.exists(path):
        print(f"quoll run: error: {path}: no such file", file=sys.stderr)
        return 2
    directory, filename = os.path.split(os.path.abspath(path))
    module, ext = os.path.splitext(filename)
    if ext != ".py":
        print(f"quoll run: error: {path}: expected a Python file (APP.py)", file=sys.stderr)
        return 2
    sys.path.insert(0, directory)
    from quoll import worker
    return worker.main([path, "--application-module", module, "--cluster-initializer"] + argv[1:])


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        from quoll import _engine
        sys.exit(_engine.tool_main([command] + rest))
    if command == "run":
        sys.exit(run_main(rest))
    if command == "worker":
        from quoll import worker
        sys.exit(worker.main([sys.argv[0]] + rest))
    print(f"quoll: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)
