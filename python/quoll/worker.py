"""The worker process: `machida3 --application-module APP ...`.

Start-up follows the same sequence on every worker: hide the flags
from `sys.argv`, import the app by module name, pick the codec, set
`wallaroo._ARGS`, call `application_setup(args)` exactly once, flatten the
result, then hand over to the engine (`quoll._engine.run_worker`), whose
event loop runs on this thread until a clean shutdown.
"""

import importlib
import os
import sys
import traceback
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

from quoll.worker_args import WorkerArgs, WorkerArgsError, parse_worker_argv

HELP = """usage: machida3 --application-module MODULE [worker flags] [app args]

Runs one quoll worker for a Wallaroo Python application (drop-in for
Wallaroo's machida3). The module is imported by name through PYTHONPATH
(the current directory is searched last).

Worker flags (Wallaroo's): --application-module, -c/--control, -d/--data,
-x/--my-control, -y/--my-data, -e/--external, -m/--metrics, -n/--name,
-w/--worker-count, -t/--cluster-initializer, -j/--join, -r/--resilience-dir,
--run-with-resilience, --time-between-checkpoints NS, and the Pony runtime
flags (--ponythreads ...), which are accepted and ignored.

quoll's own: --on-user-error {skip,fail} (default skip: a message whose
user code raises is dropped, reported and counted), --max-frame-size BYTES
(default 16 MiB), --batch-size N (default 512), --log-level LEVEL (error,
warn, info, debug, trace or Wallaroo's syslog names; QUOLL_LOG overrides),
--cookie-file PATH (the cluster secret links are authenticated with; else
QUOLL_COOKIE, else ~/.quoll/cookie, created on first use),
--tls-cert PATH --tls-key PATH --tls-ca PATH (all three or none: TLS 1.3
with mutual certificate checks on every link between workers; see
docs/tls.md),
-r/--resilience-dir also takes s3://BUCKET[/PREFIX]: checkpoints go to
S3-compatible object storage (endpoint and credentials from AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP), with a
local working copy under $QUOLL_CACHE_DIR or ./.quoll-cache (see
docs/object-storage.md),
--in-idle-timeout SECONDS (a TCP source connection silent this long is
closed; default 300, 0 for never),
--metrics-listen HOST:PORT (serves GET /metrics in the Prometheus text
format, and on the initializer the live dashboard at GET /; see
docs/metrics.md; Wallaroo's -m/--metrics is accepted and ignored),
--rebalance-interval SECONDS (initializer, with resilience: how often at
most key groups move to even an uneven load; default 60, 0 for never; see
docs/architecture.md, "Placement").

Everything else (--in, --out, app flags) is passed to application_setup(args).
"""


def _fail(message: str, code: int = 2) -> int:
    print(f"machida3: error: {message}", file=sys.stderr)
    return code


def import_app(module_name: str) -> ModuleType:
    """Imports the app by module name, as Wallaroo does (never as __main__)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(module_name)


def select_codec(
    module: ModuleType,
) -> Optional[tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """The app's own (serialize, deserialize) if its module has both, else
    None for the default (a hasattr test: one alone counts for nothing)."""
    if hasattr(module, "serialize") and hasattr(module, "deserialize"):
        return (module.serialize, module.deserialize)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(HELP)
        return 0
    try:
        args = parse_worker_argv(argv)
    except WorkerArgsError as e:
        return _fail(str(e))
    # s3://bucket/prefix: object storage; the engine checks it (docs/object-storage.md).
    if (args.run_with_resilience and not args.resilience_dir.startswith("s3://")
            and not os.path.isdir(args.resilience_dir)):
        return _fail(f"--resilience-dir {args.resilience_dir}: no such directory; create it first")

    import wallaroo  # the module apps import (sys.modules["wallaroo"]), even if the app doesn't
    from quoll import topology
    from quoll import _engine

    # parse_worker_argv refuses a command line without the module.
    assert args.application_module is not None
    sys.argv = [argv[0]]
    try:
        module = import_app(args.application_module)
        codec = select_codec(module)
        wallaroo._ARGS = tuple(args.wallaroo_args)
        app = module.application_setup(list(args.app_args))
        topo = topology.flatten(app)
    except SystemExit as e:
        traceback.print_exc()
        return _fail(f"application_setup of {args.application_module!r} exited ({e.code})", 1)
    except topology.TopologyError as e:
        return _fail(f"application {args.application_module!r}: {e}", 1)
    except BaseException:
        traceback.print_exc()
        return _fail(f"could not set up application {args.application_module!r} (traceback above)", 1)

    name = "initializer" if args.cluster_initializer or not args.name else args.name
    config = {
        "name": name,
        "external": args.external,
        "on_user_error": args.on_user_error,
        "max_frame_size": args.max_frame_size,
        "batch_size": args.batch_size,
        "cluster_initializer": bool(args.cluster_initializer) or not (args.control or args.join),
        "worker_count": int(args.worker_count or 1),
        # A joiner reaches the cluster through the initializer's control
        # address, given as --join.
        "join": bool(args.join),
        "control": args.join or args.control,
        "data": args.data,
        "my_data": args.my_data,
        "my_control": args.my_control,
        "resilience": bool(args.run_with_resilience),
        "resilience_dir": args.resilience_dir,
        "checkpoint_interval_ns": int(args.time_between_checkpoints),
        "log_level": args.log_level,
        "cookie_file": args.cookie_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_ca": args.tls_ca,
        "in_idle_timeout_s": int(args.in_idle_timeout),
        "metrics_listen": args.metrics_listen,
        "rebalance_interval_s": int(args.rebalance_interval),
    }
    try:
        _engine.run_worker(config, topo, codec)
    except RuntimeError as e:
        return _fail(str(e), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
