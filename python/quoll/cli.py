"""The `quoll` and `machida3` commands, and Wallaroo's tool names.

    quoll run APP.py [--workers N] [app args]   run an app on local workers
    quoll worker ...                            one worker (same as machida3)
    quoll send | receive | status | shutdown    tools, implemented in Rust

`data_receiver`, `sender` and `cluster_shutdown` take the command lines
Wallaroo's READMEs give its tools of those names (Giles sender's and Pony's
flags included) and run quoll's `receive`, `send` and `shutdown` with the
same meaning, so such a README can be followed as it is. Pony runtime flags
(`--ponythreads=1`, `--ponynoblock`, ...) and flags these tools don't know
are accepted and ignored. docs/tools.md maps every flag.
"""

import os
import sys
import tempfile
from typing import Callable, NoReturn, Optional, Union

from quoll.ports import free_port

TOOLS = ("send", "receive", "status", "shutdown", "shrink")

USAGE = """usage: quoll COMMAND [args]

commands:
  run APP.py [--workers N] [app args]
                             run a Wallaroo app on N local workers (default 1)
  worker [machida3 flags]    run one worker (the same as machida3)
  send                       send a file to a TCP source (framed or lines)
  receive                    listen for a TCP sink's output, store or count it
  status HOST:PORT           cluster status through a worker's external channel
  shutdown HOST:PORT         clean shutdown through a worker's external channel
  shrink HOST:PORT           remove workers from a running cluster (the initializer's external channel)

`quoll COMMAND --help` tells more.
"""


def machida3_main() -> NoReturn:
    from quoll import worker
    sys.exit(worker.main(sys.argv))


RUN_USAGE = """usage: quoll run APP.py [--workers N] [worker flags] [app args]

Imports APP.py as a module (its directory is put on PYTHONPATH) and runs it
on N local worker processes (default 1), stopping them together.

With N > 1, worker i listens on each --in port plus i (and --external and
--metrics-listen port plus i), so `--in lines@127.0.0.1:7010 --workers 3` gives the workers
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
        for flag in ("--in", "-i", "--external", "-e", "--metrics-listen"):
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
    control, data = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
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


def _tool(args: list[str]) -> int:
    """Runs one of the Rust tools (`args[0]` is its name); its exit code."""
    from quoll import _engine
    return int(_engine.tool_main(args))


# ---------------------------------------------------------------- Wallaroo's tool names

class _PonyOptions:
    """Command-line options read the way Wallaroo's Pony tools read them:
    `--long VALUE`, `--long=VALUE`, `-s VALUE` and `-sVALUE`; switches take
    no value. Pony runtime flags are removed first; unknown options and
    stray words are kept aside (`unknown`, `positional`) for the caller to
    ignore or use."""

    def __init__(self, tool: str, argv: list[str], spec: dict[str, tuple[Optional[str], bool]]) -> None:
        from quoll.worker_args import _strip_pony
        self.tool = tool
        self.values: dict[str, str] = {}
        self.switches: set[str] = set()
        self.unknown: list[str] = []
        self.positional: list[str] = []
        short = {s: long for long, (s, _) in spec.items() if s}
        args = _strip_pony([tool] + argv)[1:]
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            name, value = arg, None
            if arg.startswith("--"):
                name, eq, rest = arg[2:].partition("=")
                value = rest if eq else None
            elif arg.startswith("-") and len(arg) > 1 and arg[1] in short:
                name, value = short[arg[1]], (arg[2:] or None)
            else:
                self.positional.append(arg)
                continue
            if name not in spec:
                self.unknown.append(arg)
                continue
            if not spec[name][1]:
                self.switches.add(name)
                continue
            if value is None:
                if i >= len(args):
                    raise _UsageError(f"{tool}: --{name} needs a value")
                value = args[i]
                i += 1
            self.values[name] = value

    def number(self, name: str, default: Optional[int] = None) -> Optional[int]:
        """An integer option; Pony's `100_000_000` form is accepted."""
        raw = self.values.get(name)
        if raw is None:
            return default
        try:
            return int(raw, 10)
        except ValueError:
            raise _UsageError(f"{self.tool}: --{name} expects an integer, got {raw!r}") from None


class _UsageError(Exception):
    """A command line the compatibility command can't run; exit 2."""


# Turns a compatibility command's argv into quoll tool arguments, or into an
# exit code when there is nothing to run (--help).
_Build = Callable[[list[str]], Union[list[str], int]]


def _compat(build: _Build) -> NoReturn:
    """Runs `build(argv)` (quoll tool arguments, or an exit code) and exits
    with the tool's code; usage problems exit 2 with the message on stderr."""
    try:
        args = build(sys.argv[1:])
    except _UsageError as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(2)
    if isinstance(args, int):
        sys.exit(args)
    sys.exit(_tool(args))


DATA_RECEIVER_USAGE = """usage: data_receiver --listen HOST:PORT [--framed] [--no-write] [--buffer-size N]

Wallaroo's data_receiver, run by `quoll receive`: listens for the workers'
TCP sinks and prints what arrives on stdout until killed.

  --listen, -l HOST:PORT   address to listen on (required)
  --framed, -f             read 4-byte length-framed messages and print each
                           payload followed by a newline
  --no-write, -n           count, don't print
  --buffer-size, -b N      accepted and ignored

Pony runtime flags (--ponythreads=1, --ponynoblock, ...) are ignored. For a
file of whole frames (headers included), as Wallaroo's validators read, use
`quoll receive --framing framed --keep-headers --output FILE`.
"""


def data_receiver_args(argv: list[str]) -> Union[list[str], int]:
    """The `quoll receive` arguments for a `data_receiver` command line."""
    opts = _PonyOptions("data_receiver", argv, {
        "listen": ("l", True), "framed": ("f", False), "no-write": ("n", False),
        "buffer-size": ("b", True), "help": ("h", False),
    })
    if "help" in opts.switches:
        print(DATA_RECEIVER_USAGE)
        return 0
    listen = opts.values.get("listen")
    if not listen:
        raise _UsageError("data_receiver: Must supply required '--listen' argument (e.g. --listen 127.0.0.1:7002)")
    opts.number("buffer-size")  # checked, then ignored: quoll sizes its reads itself
    args = ["receive", "--listen", listen, "--report-interval", "0"]
    if "framed" in opts.switches:
        args += ["--framing", "framed"]
    if "no-write" in opts.switches:
        return args + ["--count-only"]
    if "framed" in opts.switches:
        args.append("--framed-newline")
    return args + ["--output", "-"]


def data_receiver_main() -> NoReturn:
    """`data_receiver`: Wallaroo's data receiver over `quoll receive`."""
    _compat(data_receiver_args)


def cluster_shutdown_args(argv: list[str]) -> Union[list[str], int]:
    """The `quoll shutdown` arguments for a `cluster_shutdown` command line."""
    opts = _PonyOptions("cluster_shutdown", argv, {"help": ("h", False)})
    if "help" in opts.switches or not opts.positional:
        print("Usage: cluster_shutdown HOST:PORT\n\nSends a clean shutdown to the cluster through "
              "the external channel of the worker at HOST:PORT (its --external).",
              file=sys.stdout if "help" in opts.switches else sys.stderr)
        return 0 if "help" in opts.switches else 1
    return ["shutdown", opts.positional[0]]


def cluster_shutdown_main() -> NoReturn:
    """`cluster_shutdown HOST:PORT`: Wallaroo's tool over `quoll shutdown`."""
    _compat(cluster_shutdown_args)


SENDER_USAGE = """usage: sender --host HOST:PORT --file PATH[,PATH..] --messages N [options]

Wallaroo's Giles sender, run by `quoll send`: sends the lines of text files
(each as a 4-byte length + the line; blank lines are skipped), or with
--binary fixed-size (--msg-size) or length-framed (--variable-size) records,
in batches of --batch-size every --interval nanoseconds.

  --host, -h HOST:PORT     the worker's TCP source (one address)
  --file, -f PATH[,PATH]   files to send, one after the other (required)
  --messages, -m N         send at most N messages (required)
  --repeat, -r             go round the files until N messages are sent
  --batch-size, -s N       messages per batch (default 500)
  --interval, -i NS        nanoseconds between batches (default 5_000_000)
  --binary, -y             binary records instead of text lines
  --msg-size, -g N         with --binary: records of N bytes, sent as they are
  --variable-size, -z      with --binary: 4-byte length-framed records
  --no-write, -w           don't write sent.txt

Without --no-write, every message sent is logged in ./sent.txt as
`NANOSECONDS, PAYLOAD`. Pony runtime flags and --u64, --start-from,
--vary-by and --partition are accepted and ignored.
"""


def _joined_file(paths: list[str], text: bool) -> str:
    """One file holding `paths` one after the other (a text file that
    doesn't end in a newline gets one, so lines don't merge); deleted when
    the process exits."""
    import atexit
    fd, joined = tempfile.mkstemp(prefix="quoll-sender-")

    def remove() -> None:
        if os.path.exists(joined):
            os.unlink(joined)

    atexit.register(remove)
    with os.fdopen(fd, "wb") as out:
        for p in paths:
            with open(p, "rb") as f:
                data = f.read()
            out.write(data)
            if text and data and not data.endswith(b"\n"):
                out.write(b"\n")
    return joined


def sender_args(argv: list[str]) -> Union[list[str], int]:
    """The `quoll send` arguments for a Giles `sender` command line."""
    opts = _PonyOptions("sender", argv, {
        "host": ("h", True), "messages": ("m", True), "file": ("f", True),
        "batch-size": ("s", True), "interval": ("i", True), "repeat": ("r", False),
        "binary": ("y", False), "u64": ("u", False), "start-from": ("v", True),
        "variable-size": ("z", False), "msg-size": ("g", True), "no-write": ("w", False),
        "vary-by": ("j", True), "partition": ("p", True), "help": (None, False),
    })
    if "help" in opts.switches:
        print(SENDER_USAGE)
        return 0
    host = opts.values.get("host")
    if not host:
        raise _UsageError("sender: Must supply required '--host' argument (e.g. --host 127.0.0.1:7010)")
    if "," in host:
        raise _UsageError(f"sender: --host {host}: quoll's sender sends to one address; "
                          "run one sender per address")
    messages = opts.number("messages")
    if messages is None:
        raise _UsageError("sender: Must supply required '--messages' argument")
    files = opts.values.get("file")
    if not files:
        raise _UsageError("sender: --file is required: quoll's sender sends files "
                          "(Giles' counting source without --file is not supported)")
    binary = "binary" in opts.switches
    variable = "variable-size" in opts.switches
    msg_size = opts.number("msg-size")
    if msg_size is not None and variable:
        raise _UsageError("sender: --msg-size and --variable-size can't be used together")
    if binary and not variable and msg_size is None:
        raise _UsageError("sender: --binary requires either --msg-size or --variable-size")
    paths = files.split(",")
    for p in paths:
        if not os.path.exists(p):
            raise _UsageError(f"sender: Error opening file '{p}'.")
    path = paths[0] if len(paths) == 1 else _joined_file(paths, text=not binary)
    interval_ns = opts.number("interval", 5_000_000)
    batch = opts.number("batch-size", 500)
    assert interval_ns is not None and batch is not None
    args = ["send", "--host", host, "--file", path, "--max-messages", str(messages),
            "--batch-size", str(max(batch, 1))]
    if interval_ns > 0:
        args += ["--batch-interval", repr(interval_ns / 1e9)]
    if not binary:
        args += ["--framing", "framed", "--skip-empty"]
    elif variable:
        args += ["--framing", "raw-framed"]
    else:
        args += ["--framing", "fixed", "--msg-size", str(msg_size)]
    if "repeat" in opts.switches:
        args.append("--repeat")
    if "no-write" not in opts.switches:
        args += ["--sent-log", "sent.txt"]
    return args


def sender_main() -> NoReturn:
    """`sender`: Wallaroo's Giles sender over `quoll send`."""
    _compat(sender_args)


def main() -> int:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        sys.exit(_tool([command] + rest))
    if command == "run":
        sys.exit(run_main(rest))
    if command == "worker":
        from quoll import worker
        sys.exit(worker.main([sys.argv[0]] + rest))
    print(f"quoll: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    sys.exit(2)
