#!/usr/bin/env python3
"""What the metrics cost word count: the same run (run.py's `run_quoll`, 1
worker by default, output checked) on three set-ups, interleaved:

  baseline - the engine of another install (--baseline-venv: a venv whose
             quoll was built without the metrics, e.g. from the commit
             before them),
  counting - this install, without --metrics-listen (the executor counts
             and samples, nothing is served),
  served   - this install with --metrics-listen, scraped every second
             (--scrape-every) while it runs, as Prometheus would.

Prints words/s and CPU s per million words (the fastest and the lowest of
--repeats runs each, the order of the set-ups turning every round) and their ratios to the baseline, with the load
average: the machine is shared, so read the ratios within one run, never
absolute figures across runs. Asserts nothing but the outputs' exactness.

    .venv/bin/python benches/word_count/metrics.py --baseline-venv /path/to/venv [--lines N] [--repeats K]
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_input  # noqa: E402
import run  # noqa: E402  (run_quoll: one copy of the measured run)


def scraper(port, every, stop, counts):
    while not stop.wait(every):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                r.read()
            counts["ok"] = counts.get("ok", 0) + 1
        except OSError:
            counts["failed"] = counts.get("failed", 0) + 1


def one(setup, machida3, workers, input_path, total, workdir, scrape_every):
    run.MACHIDA3 = machida3
    flags, stop, counts = [], threading.Event(), {}
    if setup == "served":
        port = run.free_port()
        flags = ["--metrics-listen", f"127.0.0.1:{port}"]
        threading.Thread(target=scraper, args=(port, scrape_every, stop, counts), daemon=True).start()
    try:
        r = run.run_quoll(workers, input_path, total, workdir, 900, flags)
    finally:
        stop.set()
    assert r["output_check"]["exact"], f"{setup}: wrong output"
    return dict(words_per_s=r["words_per_s"], cpu_s_per_million_words=r["cpu_s_per_million_words"],
                scrapes=counts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-venv", required=True, help="venv with the engine to compare with")
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scrape-every", type=float, default=1.0)
    p.add_argument("--out", default=None, help="also write the figures as JSON here")
    a = p.parse_args()
    baseline = str(Path(a.baseline_venv) / "bin" / "machida3")
    current = run.MACHIDA3
    input_path, meta = gen_input.ensure_input(lines=a.lines)
    total = meta["total_words"]
    setups = [("baseline", baseline), ("counting", current), ("served", current)]
    runs = {s: [] for s, _ in setups}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="quoll-bench-metrics-") as tmp:
        for rep in range(a.repeats):
            # The order turns each round, so no set-up always runs first.
            for setup, machida3 in setups[rep % 3:] + setups[:rep % 3]:
                r = one(setup, machida3, a.workers, input_path, total, Path(tmp) / f"{setup}{rep}", a.scrape_every)
                runs[setup].append(r)
                print(f"{setup} #{rep + 1}: {r['words_per_s']:,.0f} words/s, "
                      f"{r['cpu_s_per_million_words']:.2f} CPU s/Mw {r['scrapes'] or ''}", file=sys.stderr)
    load.append(os.getloadavg())
    best = {s: dict(words_per_s=max(x["words_per_s"] for x in rs),
                    cpu_s_per_million_words=min(x["cpu_s_per_million_words"] for x in rs))
            for s, rs in runs.items()}
    b = best["baseline"]
    print(f"word count, {a.workers} worker(s), {total:,} words, best of {a.repeats}; "
          f"load average {load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end")
    print(f"{'set-up':<10}{'words/s':>12}{'ratio':>8}{'CPU s/Mw':>10}{'ratio':>8}")
    for s, x in best.items():
        print(f"{s:<10}{x['words_per_s']:>12,.0f}{x['words_per_s'] / b['words_per_s']:>8.3f}"
              f"{x['cpu_s_per_million_words']:>10.2f}{x['cpu_s_per_million_words'] / b['cpu_s_per_million_words']:>8.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(lines=a.lines, words=total, workers=a.workers, load=load,
                                               baseline=a.baseline_venv, best=best, runs=runs), indent=1))


if __name__ == "__main__":
    main()
