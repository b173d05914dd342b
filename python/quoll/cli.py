"""The `quoll` and `machida3` commands.

    quoll run APP.py [--workers N] [app args]   run an app on local workers
    quoll worker ...                            one worker (same as machida3)
    quoll send | receive | status | shutdown    tools, implemented in Rust
"""

import os
import sys
from typing import NoReturn

TOOLS = ("send", "receive", "status", "shutdown")

USAGE = """usage: quoll COMMAND [args]

commands:
  run APP.py [--workers N] [app args]
                             run a Wallaroo app on N local workers (default 1)
  worker [machida3 flags]    run one worker (the same as machida3)
  send                       send a file to a TCP source (framed or lines)
  receive                    listen for a TCP sink's output, store or count it
  status HOST:PORT           cluster status through a worker's external channel
  shutdown HOST:PORT         clean shutdown through a worker's external channel

`quoll COMMAND --help` tells more.
"""


def machida3_main() -> NoReturn:
    from quoll import worker
    sys.exit(worker.main(sys.argv))


RUN_USAGE = """usage: quoll run APP.py [--workers N] [worker flags] [app args]

Imports APP.py as a module (its directory is put on PYTHONPATH) and runs it
on N local worker processes (default 1), stopping them together.

With N > 1, worker i listens on each --in port plus i (and --external port
plus i), so `--in lines@127.0.0.1:7010 --workers 3` gives the workers
7010, 7011 and 7012; --out is shared. Control and data ports are chosen
free on 127.0.0.1. Other worker flags (--on-user-error, ...) and app args
are passed to every worker.
"""


def _offset_addrs(value: str, i: int) -> str:
    """`name@host:port[,..]` or `host:port` with every port moved up by i."""
    items = []
    for item in value.split(","):
        head, _, port = item.rpartition(":")
        items.append(f"{head}:{int(port) + i}" if port.isdigit() else item)
    return ",".join(items)


def _per_worker_args(args: list[str], i: int) -> list[str]:
    out = []
    it = iter(range(len(args)))
    for k in it:
        a = args[k]
        for flag in ("--in", "-i", "--external", "-e"):
            if a == flag and k + 1 < len(args):
                out += [a, _offset_addrs(args[k + 1], i)]
                next(it, None)
                break
            if a.startswith(flag + "=") and flag.startswith("--"):
                out.append(flag + "=" + _offset_addrs(a[len(flag) + 1:], i))
                break
        else:
            out.append(a)
    return out


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_main(argv: list[str]) -> int:
    """`quoll run path/to/app.py [--workers N] [args]`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(RUN_USAGE)
        return 0
    path, rest = argv[0], list(argv[1:])
    if not os.path.exists(path):
        print(f"quoll run: error: {path}: no such file", file=sys.stderr)
        return 2
    directory, filename = os.path.split(os.path.abspath(path))
    module, ext = os.path.splitext(filename)
    if ext != ".py":
        print(f"quoll run: error: {path}: expected a Python file (APP.py)", file=sys.stderr)
        return 2
    workers = 1
    for k, a in enumerate(rest):
        if a == "--workers" or a.startswith("--workers="):
            value = a.split("=", 1)[1] if "=" in a else (rest[k + 1] if k + 1 < len(rest) else "")
            del rest[k:k + (1 if "=" in a else 2)]
            if not value.isdigit() or int(value) < 1:
                print(f"quoll run: error: --workers needs a number >= 1, got {value!r}", file=sys.stderr)
                return 2
            workers = int(value)
            break
    if workers == 1:
        sys.path.insert(0, directory)
        from quoll import worker
        return worker.main([path, "--application-module", module, "--cluster-initializer"] + rest)
    return _run_cluster(path, directory, module, workers, rest)


def _run_cluster(path: str, directory: str, module: str, workers: int, rest: list[str]) -> int:
    import signal
    import subprocess
    import time

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([directory] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    control, data = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "quoll.worker", "--application-module", module]
        if i == 0:
            cmd += ["--cluster-initializer", "--name", "initializer", "--worker-count", str(workers),
                    "--control", control, "--data", data]
        else:
            cmd += ["--name", f"worker{i}", "--control", control]
        cmd += _per_worker_args(rest, i)
        print(f"quoll run: starting {'initializer' if i == 0 else f'worker{i}'}: {' '.join(cmd[3:])}", flush=True)
        procs.append(subprocess.Popen(cmd, env=env))
    code = 0
    try:
        while True:
            done = [p for p in procs if p.poll() is not None]
            if len(done) == len(procs):
                code = max((p.returncode for p in procs), key=abs)
                break
            if any(p.returncode not in (0, None) for p in done):
                failed = next(p for p in done if p.returncode not in (0, None))
                print(f"quoll run: a worker exited with {failed.returncode}; stopping the others", file=sys.stderr)
                code = failed.returncode
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("quoll run: interrupted; stopping the workers", file=sys.stderr)
        code = 130
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return code if code >= 0 else 1


def main() -> int:
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
