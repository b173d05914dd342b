#!/usr/bin/env python3
"""What TLS on the links between workers costs: 2-worker word count, plain
and with --tls-cert/--tls-key/--tls-ca, on the same input in one run.

The runs are run.py's `run_quoll` (same input, same measurement, same
output check: a wrong output stops the run), interleaved plain, TLS, TLS,
plain, plain, TLS, ... (`--repeats`, default 3); the fastest of each is
reported, all are listed in run order, with the ratios of each repeat's
pair. The certificates are made with the openssl commands of docs/tls.md
(a CA, one worker certificate for 127.0.0.1), in a temporary directory.

Prints words/s and CPU seconds per million words (summed over the workers)
for each, and the ratios; writes JSON (default tls_results.json next to
this file).

    python benches/word_count/tls.py [--lines N] [--repeats K] [--out FILE]
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (run_quoll, the input, the build description: one copy of each)

# The commands of docs/tls.md, for a CA and one worker reached at 127.0.0.1.
OPENSSL = [
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650"
    " -subj /CN=quoll-ca -keyout ca.key -out ca.pem"
    " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    " -subj /CN=worker -keyout worker.key -out worker.csr",
    "openssl x509 -req -in worker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out worker.pem"
    " -extfile worker.ext",
]
WORKER_EXT = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"


def make_certs(directory):
    """The certificates, made as docs/tls.md says; returns the worker flags."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "worker.ext").write_text(WORKER_EXT)
    for cmd in OPENSSL:
        subprocess.run(cmd.split(), cwd=directory, check=True, capture_output=True)
    return ["--tls-cert", str(directory / "worker.pem"), "--tls-key", str(directory / "worker.key"),
            "--tls-ca", str(directory / "ca.pem")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="input lines (default 1,000,000)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved; the fastest counts (default 3)")
    p.add_argument("--timeout", type=int, default=900, help="seconds a run may take before it is a failure")
    p.add_argument("--out", default=str(HERE / "tls_results.json"), help="JSON results file")
    a = p.parse_args(argv)

    input_path, meta = run.gen_input.ensure_input(lines=a.lines)
    total_words = meta["total_words"]
    workdir = Path(tempfile.mkdtemp(prefix="quoll-bench-tls-"))
    modes = {"plain": [], "tls": make_certs(workdir / "certs")}
    runs = {mode: [] for mode in modes}
    try:
        for rep in range(max(1, a.repeats)):
            # Plain first in even repeats, TLS first in odd ones, so neither
            # always runs on what the other left (page cache, CPU state).
            order = list(modes.items())
            for mode, flags in (order if rep % 2 == 0 else order[::-1]):
                print(f"{mode}: 2 workers ...", file=sys.stderr)
                r = run.run_quoll(2, input_path, total_words, workdir / f"{mode}-{rep}", a.timeout, flags)
                r.pop("logs", None)
                runs[mode].append(r)
                print(f"{mode}: {r['words_per_s']:,.0f} words/s, {r['cpu_s_per_million_words']:.3f} CPU s/Mw",
                      file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    best = {mode: max(rs, key=lambda r: r["words_per_s"]) for mode, rs in runs.items()}
    res = dict(
        meta=dict(lines=a.lines, total_words=total_words, repeats=a.repeats, cpus=os.cpu_count(),
                  machine=platform.machine(), kernel=platform.release(), python=run.PYTHON, git=run.git_rev(),
                  engine=run.engine_build(), when=datetime.datetime.now().isoformat(timespec="seconds"),
                  loadavg_end=os.getloadavg()),
        **{mode: dict(words_per_s=b["words_per_s"], cpu_s_per_million_words=b["cpu_s_per_million_words"],
                      elapsed_s=b["elapsed_s"], max_peak_rss_mb=b["max_peak_rss_mb"],
                      output_exact=b["output_check"]["exact"],
                      all_runs=[dict(words_per_s=r["words_per_s"],
                                     cpu_s_per_million_words=r["cpu_s_per_million_words"]) for r in runs[mode]])
           for mode, b in best.items()},
    )
    res["paired_tls_over_plain"] = [
        dict(words_per_s=t["words_per_s"] / p["words_per_s"],
             cpu_s_per_million_words=t["cpu_s_per_million_words"] / p["cpu_s_per_million_words"])
        for p, t in zip(runs["plain"], runs["tls"])]
    res["tls_over_plain"] = dict(
        words_per_s=best["tls"]["words_per_s"] / best["plain"]["words_per_s"],
        cpu_s_per_million_words=best["tls"]["cpu_s_per_million_words"] / best["plain"]["cpu_s_per_million_words"],
    )
    print(f"2-worker word count, {total_words:,} words, best of {a.repeats}:")
    print(f"{'':8}{'words/s':>14}{'CPU s / M words':>18}")
    for mode in modes:
        print(f"{mode:8}{res[mode]['words_per_s']:>14,.0f}{res[mode]['cpu_s_per_million_words']:>18.3f}")
    ratio = res["tls_over_plain"]
    print(f"{'tls/plain':8}{ratio['words_per_s']:>14.3f}{ratio['cpu_s_per_million_words']:>18.3f}")
    pairs = res["paired_tls_over_plain"]
    print("tls/plain per repeat: words/s " + ", ".join(f"{q['words_per_s']:.3f}" for q in pairs)
          + "; CPU s/Mw " + ", ".join(f"{q['cpu_s_per_million_words']:.3f}" for q in pairs))
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"results written to {a.out}")


if __name__ == "__main__":
    main()
