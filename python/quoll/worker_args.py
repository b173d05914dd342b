"""Worker command-line parsing (machida3-compatible).

``parse_worker_argv(argv)`` takes the full process argv (``argv[0]``
included) and returns a :class:`WorkerArgs` with

* the worker options (Wallaroo's flags and quoll's own),
* ``app_args``: what ``application_setup(args)`` receives -- argv minus the
  Pony runtime flags, minus every worker flag with its value (long, short,
  ``--flag=value`` and ``-fvalue`` forms, short flags clustered as in
  ``-tw2``), minus ``--application-module`` and ``-h/--help``; everything
  else in its original order, ``argv[0]`` included,
* ``wallaroo_args``: the value for ``wallaroo._ARGS`` -- argv with only the
  Pony runtime flags removed.

Wallaroo's short flags (``-m -c -d -x -y -e -f -w -t -n -r -l -j -u -h``)
are stripped even when the application meant them for itself, exactly as
Wallaroo does.  quoll's own flags (``--on-user-error``, ``--max-frame-size``,
``--batch-size``, ``--log-level``, ``--cookie-file``, ``--tls-cert``,
``--tls-key``, ``--tls-ca``, ``--metrics-listen``, ...) are long-only and stripped as well.

Errors raise :class:`WorkerArgsError` with a message naming the flag and
what to do.  This module is pure: it touches no files or sockets.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

__all__ = ["WorkerArgs", "WorkerArgsError", "parse_worker_argv",
           "split_addr", "PONY_VALUE_FLAGS"]


class WorkerArgsError(Exception):
    """An invalid worker command line."""


# Pony runtime flags that take a value (``--ponythreads 4`` or ``=4``); every
# other ``--pony*`` flag is a switch.  All of them are removed.
PONY_VALUE_FLAGS = frozenset([
    "--ponythreads", "--ponymaxthreads", "--ponyminthreads",
    "--ponycdinterval", "--ponygcinitial", "--ponygcfactor",
    "--ponysuspendthreshold", "--ponyprintstatsinterval",
    "--ponymsgsbetweenyields",
])

_STR, _INT, _FLOAT, _SWITCH = "str", "int", "float", "switch"

# long name -> (short letter or None, value kind, WorkerArgs attribute)
_WALLAROO_FLAGS = {
    "metrics": ("m", _STR, "metrics"),
    "control": ("c", _STR, "control"),
    "data": ("d", _STR, "data"),
    "my-control": ("x", _STR, "my_control"),
    "my-data": ("y", _STR, "my_data"),
    "external": ("e", _STR, "external"),
    "file": ("f", _STR, "file"),
    "worker-count": ("w", _INT, "worker_count"),
    "cluster-initializer": ("t", _SWITCH, "cluster_initializer"),
    "name": ("n", _STR, "name"),
    "resilience-dir": ("r", _STR, "resilience_dir"),
    "resilience-dos-server": (None, _STR, "resilience_dos_server"),
    "resilience-no-local-file-io": (None, _SWITCH,
                                    "resilience_no_local_file_io"),
    "resilience-enable-io-journal": (None, _SWITCH,
                                     "resilience_enable_io_journal"),
    "run-with-resilience": (None, _SWITCH, "run_with_resilience"),
    "log-rotation": (None, _SWITCH, "log_rotation"),
    "event-log-file-size": ("l", _INT, "event_log_file_size"),
    "join": ("j", _STR, "join"),
    "stop-pause": ("u", _INT, "stop_pause"),
    "spike-seed": (None, _INT, "spike_seed"),
    "spike-drop": (None, _SWITCH, "spike_drop"),
    "spike-prob": (None, _FLOAT, "spike_prob"),
    "spike-margin": (None, _INT, "spike_margin"),
    "time-between-checkpoints": (None, _INT, "time_between_checkpoints"),
    # machida's own options
    "application-module": (None, _STR, "application_module"),
    "help": ("h", _SWITCH, "help"),
    # quoll's own options (long only)
    "on-user-error": (None, _STR, "on_user_error"),
    "max-frame-size": (None, _INT, "max_frame_size"),
    "batch-size": (None, _INT, "batch_size"),
    "log-level": (None, _STR, "log_level"),
    "cookie-file": (None, _STR, "cookie_file"),
    "tls-cert": (None, _STR, "tls_cert"),
    "tls-key": (None, _STR, "tls_key"),
    "tls-ca": (None, _STR, "tls_ca"),
    "in-idle-timeout": (None, _INT, "in_idle_timeout"),
    "metrics-listen": (None, _STR, "metrics_listen"),
    "rebalance-interval": (None, _INT, "rebalance_interval"),
}

_SHORT_FLAGS = {spec[0]: long for long, spec in _WALLAROO_FLAGS.items()
                if spec[0] is not None}

_ADDRESS_FLAGS = ("metrics", "control", "data", "my-control", "my-data",
                  "external", "join", "metrics-listen")

ON_USER_ERROR_CHOICES = ("skip", "fail")
LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
# Wallaroo's syslog level names and numbers, as quoll's levels.
_SYSLOG_LEVELS = {"emerg": "error", "alert": "error", "crit": "error", "err": "error",
                  "warning": "warn", "notice": "info",
                  "0": "error", "1": "error", "2": "error", "3": "error",
                  "4": "warn", "5": "info", "6": "info", "7": "debug"}

MISSING_MODULE = (
    "You must provide Machida with --application-module\n"
    "  hint: name the application's Python module (importable through "
    "PYTHONPATH), e.g. `machida3 --application-module word_count --in "
    "Source@127.0.0.1:7000 --out 127.0.0.1:7002 ...`")


@dataclass
class WorkerArgs:
    """A parsed worker command line."""

    application_module: Optional[str] = None
    app_args: List[str] = field(default_factory=list)
    wallaroo_args: Tuple[str, ...] = ()
    help: bool = False

    metrics: Optional[str] = None
    metrics_listen: Optional[str] = None
    control: Optional[str] = None
    data: Optional[str] = None
    my_control: Optional[str] = None
    my_data: Optional[str] = None
    external: Optional[str] = None
    worker_count: int = 1
    worker_count_given: bool = False
    cluster_initializer: bool = False
    name: Optional[str] = None
    join: Optional[str] = None
    resilience_dir: str = "/tmp"
    run_with_resilience: bool = False
    time_between_checkpoints: int = 1_000_000_000
    log_rotation: bool = False
    event_log_file_size: Optional[int] = None
    resilience_enable_io_journal: bool = False
    resilience_no_local_file_io: bool = False
    resilience_dos_server: Optional[str] = None
    dos_servers: List[Tuple[str, str]] = field(default_factory=list)
    stop_pause: int = 2_000_000_000
    spike_seed: Optional[int] = None
    spike_drop: bool = False
    spike_prob: Optional[float] = None
    spike_margin: Optional[int] = None
    file: Optional[str] = None

    # quoll's own
    on_user_error: str = "skip"
    max_frame_size: int = 16_777_216
    batch_size: int = 512
    log_level: Optional[str] = None
    cookie_file: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    in_idle_timeout: int = 300
    rebalance_interval: int = 60

    @property
    def role(self) -> str:
        """``"initializer"`` (-t), ``"joiner"`` (--join), ``"member"``
        (--control without -t) or ``"standalone"`` (none of these: a
        one-worker cluster)."""
        if self.cluster_initializer:
            return "initializer"
        if self.join is not None:
            return "joiner"
        if self.control is not None:
            return "member"
        return "standalone"


def split_addr(addr: str) -> Tuple[str, str]:
    """``"host:port"`` -> ``("host", "port")`` (split at the last colon)."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT, got {!r}".format(addr))
    return host, port


def _is_pony(arg: str) -> bool:
    return arg.startswith("--pony")


def _strip_pony(argv: List[str]) -> List[str]:
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if i > 0 and _is_pony(arg):
            name = arg.split("=", 1)[0]
            if "=" not in arg and name in PONY_VALUE_FLAGS:
                i += 1  # skip its value too
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


def _flag_label(long: str) -> str:
    short = _WALLAROO_FLAGS[long][0]
    return "--{}{}".format(long, "/-" + short if short else "")


def _convert(long: str, raw: str) -> Union[int, float, str]:
    kind = _WALLAROO_FLAGS[long][1]
    if kind == _INT:
        try:
            return int(raw, 10)
        except ValueError:
            raise WorkerArgsError(
                "{} expects an integer, got {!r}".format(_flag_label(long),
                                                         raw))
    if kind == _FLOAT:
        try:
            return float(raw)
        except ValueError:
            raise WorkerArgsError(
                "{} expects a number, got {!r}".format(_flag_label(long), raw))
    return raw


def _take_value(long: str, argv: List[str], i: int) -> str:
    """The value of ``long`` given as the next argument ``argv[i]``."""
    if i >= len(argv):
        raise WorkerArgsError(
            "{} requires a value, but it is the last argument"
            .format(_flag_label(long)))
    value = argv[i]
    if value == "" or value.startswith("-"):
        raise WorkerArgsError(
            "{} requires a value, got {!r}; write --{}=VALUE if the value "
            "really starts with '-'".format(_flag_label(long), value, long))
    return value


def parse_worker_argv(argv: List[str]) -> WorkerArgs:
    """Parse a worker's full argv (``argv[0]`` included); see the module
    docstring."""
    argv = [str(a) for a in argv]
    no_pony = _strip_pony(argv)
    result = WorkerArgs()
    result.wallaroo_args = tuple(no_pony)

    seen: Dict[str, Union[bool, int, float, str]] = {}  # long name -> parsed value (last one wins)
    app_args = no_pony[:1]
    i = 1
    n = len(no_pony)
    while i < n:
        arg = no_pony[i]
        i += 1
        if arg.startswith("--") and len(arg) > 2:
            name, eq, inline = arg[2:].partition("=")
            spec = _WALLAROO_FLAGS.get(name)
            if spec is None:
                app_args.append(arg)
                continue
            if spec[1] == _SWITCH:
                if eq:
                    raise WorkerArgsError(
                        "{} takes no value (got {!r})"
                        .format(_flag_label(name), arg))
                seen[name] = True
                continue
            if eq:
                if inline == "":
                    raise WorkerArgsError(
                        "{} requires a value (got {!r})"
                        .format(_flag_label(name), arg))
                value = inline
            else:
                value = _take_value(name, no_pony, i)
                i += 1
            seen[name] = _convert(name, value)
            continue
        if arg.startswith("-") and len(arg) > 1 and not arg.startswith("--"):
            # A cluster of short flags: switches, then at most one flag with
            # a value (attached, after '=', or in the next argument).  An
            # unknown letter ends the cluster; the rest stays an app arg.
            rest = arg[1:]
            while rest:
                letter = rest[0]
                long = _SHORT_FLAGS.get(letter)
                if long is None:
                    app_args.append("-" + rest)
                    break
                rest = rest[1:]
                if _WALLAROO_FLAGS[long][1] == _SWITCH:
                    seen[long] = True
                    if rest.startswith("="):
                        raise WorkerArgsError(
                            "{} takes no value (got {!r})"
                            .format(_flag_label(long), arg))
                    continue
                if rest.startswith("="):
                    rest = rest[1:]
                    if not rest:
                        raise WorkerArgsError(
                            "{} requires a value (got {!r})"
                            .format(_flag_label(long), arg))
                if rest:
                    value = rest
                else:
                    value = _take_value(long, no_pony, i)
                    i += 1
                seen[long] = _convert(long, value)
                break
            continue
        app_args.append(arg)

    result.app_args = app_args
    for long, parsed in seen.items():
        setattr(result, _WALLAROO_FLAGS[long][2], parsed)
    result.worker_count_given = "worker-count" in seen

    if result.help:
        return result
    _validate(result)
    return result


def _validate(a: WorkerArgs) -> None:
    if not a.application_module:
        raise WorkerArgsError(MISSING_MODULE)

    for long in _ADDRESS_FLAGS:
        value = getattr(a, _WALLAROO_FLAGS[long][2])
        if value is None:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not port:
            raise WorkerArgsError(
                "{} expects HOST:PORT, got {!r}".format(_flag_label(long),
                                                        value))

    if a.worker_count < 1:
        raise WorkerArgsError(
            "--worker-count/-w must be at least 1 (got {})"
            .format(a.worker_count))

    if a.join is not None and a.cluster_initializer:
        raise WorkerArgsError(
            "--cluster-initializer/-t is an invalid command line argument "
            "when joining: a joining worker cannot be the initializer; drop "
            "-t or --join")

    if a.cluster_initializer:
        a.name = "initializer"
        if a.data is None and a.worker_count > 1:
            raise WorkerArgsError(
                "the cluster initializer needs its data channel address: "
                "pass --data/-d HOST:PORT")
    else:
        if a.data is not None:
            raise WorkerArgsError(
                "--data/-d is only for the cluster initializer (-t); other "
                "workers give their own data address with --my-data/-y")
        if a.worker_count_given and a.join is None and (
                a.control is not None or a.worker_count > 1):
            raise WorkerArgsError(
                "only supply --worker-count/-w to the cluster initializer "
                "(-t) or to a joining worker (--join)")

    if a.resilience_dir.endswith("/") and a.resilience_dir != "/":
        raise WorkerArgsError(
            "--resilience-dir/-r must not end in '/' (got {!r}); write {!r}"
            .format(a.resilience_dir, a.resilience_dir.rstrip("/")))
    if a.resilience_dir.startswith("s3://") and not a.resilience_dir[5:].split("/")[0]:
        raise WorkerArgsError(
            "--resilience-dir/-r s3://BUCKET[/PREFIX] needs a bucket name "
            "(got {!r})".format(a.resilience_dir))
    if a.resilience_dir == "" or a.resilience_dir == "/":
        raise WorkerArgsError(
            "--resilience-dir/-r must name a directory other than '/' "
            "without a trailing '/' (got {!r})".format(a.resilience_dir))

    if a.resilience_dos_server is not None:
        servers = []
        for item in a.resilience_dos_server.split(","):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port:
                raise WorkerArgsError(
                    "--resilience-dos-server expects HOST:PORT[,HOST:PORT...]"
                    ", got {!r}".format(a.resilience_dos_server))
            servers.append((host, port))
        a.dos_servers = servers
        if not a.cluster_initializer and (a.my_control is None or
                                          a.my_data is None):
            raise WorkerArgsError(
                "with --resilience-dos-server, non-initializer workers must "
                "specify --my-control/-x and --my-data/-y")

    if a.time_between_checkpoints <= 0:
        raise WorkerArgsError(
            "--time-between-checkpoints must be a positive number of "
            "nanoseconds (got {})".format(a.time_between_checkpoints))
    if a.event_log_file_size is not None and a.event_log_file_size <= 0:
        raise WorkerArgsError(
            "--event-log-file-size/-l must be a positive number of bytes "
            "(got {})".format(a.event_log_file_size))
    if a.stop_pause < 0:
        raise WorkerArgsError(
            "--stop-pause/-u must be >= 0 nanoseconds (got {})"
            .format(a.stop_pause))

    if a.on_user_error not in ON_USER_ERROR_CHOICES:
        raise WorkerArgsError(
            "--on-user-error must be 'skip' or 'fail' (got {!r})"
            .format(a.on_user_error))
    if a.max_frame_size < 1:
        raise WorkerArgsError(
            "--max-frame-size must be a positive number of bytes (got {})"
            .format(a.max_frame_size))
    if a.batch_size < 1:
        raise WorkerArgsError(
            "--batch-size must be at least 1 (got {})".format(a.batch_size))
    if a.in_idle_timeout < 0:
        raise WorkerArgsError(
            "--in-idle-timeout must be 0 (never) or a number of seconds (got {})"
            .format(a.in_idle_timeout))
    if a.rebalance_interval < 0:
        raise WorkerArgsError(
            "--rebalance-interval must be 0 (never) or a number of seconds (got {})"
            .format(a.rebalance_interval))
    tls = {"--tls-cert": a.tls_cert, "--tls-key": a.tls_key, "--tls-ca": a.tls_ca}
    missing = [flag for flag, path in tls.items() if path is None]
    if 0 < len(missing) < 3:
        raise WorkerArgsError(
            "{} is missing: give all three of --tls-cert, --tls-key and "
            "--tls-ca (PEM files), or none".format(missing[0]))
    if a.log_level is not None:
        level = a.log_level.lower()
        level = _SYSLOG_LEVELS.get(level, level)
        if level not in LOG_LEVELS:
            raise WorkerArgsError(
                "--log-level must be one of {}, a syslog name (emerg ... debug) "
                "or 0-7 (got {!r})".format(", ".join(LOG_LEVELS), a.log_level))
        a.log_level = level
