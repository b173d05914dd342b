"""What the benchmarks that run quoll beside Bytewax share: the Bytewax
venv (made on first use, beside this file) and the word count benchmark's
helpers (benches/word_count/run.py: input, output check, process CPU).

Bytewax is installed into its own venv, never into quoll's .venv: its
Python version and dependencies are its own, and nothing of quoll is
imported there except the app's plain Python functions.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BYTEWAX_VERSION = "0.21.1"
BYTEWAX_VENV = HERE / ".venv-bytewax"


def _installed(py: Path, dist: str) -> str:
    r = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                       capture_output=True, text=True)
    return r.stdout.strip()


def ensure_bytewax(base_python: str, extras: Sequence[str] = ()) -> str:
    """The Bytewax venv's python; the venv is created with `base_python`
    and given bytewax==BYTEWAX_VERSION (with Bytewax's optional `extras`,
    e.g. "kafka", which brings confluent-kafka) when it lacks them."""
    py = BYTEWAX_VENV / "bin" / "python"
    if not py.exists():
        print(f"bytewax: creating {BYTEWAX_VENV} with {base_python} ...", file=sys.stderr)
        subprocess.run([base_python, "-m", "venv", str(BYTEWAX_VENV)], check=True)
    # Each extra is checked by the distribution it brings.
    needs = {"kafka": "confluent-kafka"}
    if _installed(py, "bytewax") != BYTEWAX_VERSION or not all(_installed(py, needs.get(e, e)) for e in extras):
        spec = f"bytewax[{','.join(extras)}]=={BYTEWAX_VERSION}" if extras else f"bytewax=={BYTEWAX_VERSION}"
        print(f"bytewax: installing {spec} into {BYTEWAX_VENV} ...", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", spec], check=True)
    return str(py)


def bytewax_version(python: str) -> str:
    """The Bytewax version installed for `python`."""
    return _installed(Path(python), "bytewax")


def load_word_count_bench() -> ModuleType:
    """benches/word_count/run.py as a module: its input, output check and
    process helpers (loading it puts benches/word_count and tests/e2e on
    sys.path, so `gen_input` and `harness` import after it)."""
    spec = importlib.util.spec_from_file_location("wc_run", REPO / "benches" / "word_count" / "run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
