"""The initializer's dashboard in a real headless Chromium (Debian's
`chromium`, driven by Playwright; no browser is downloaded): a 3-worker
word count under load, the plots draw live non-zero data, a SIGKILLed
worker is shown lost, and once restarted, recovered. A screenshot is kept
as an artifact (printed path: /tmp/quoll-dashboard.png)."""

import shutil
import signal
from pathlib import Path

from harness import Proc, free_port, wait_until
from test_resilience_files import APPS, make_input

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path("/tmp/quoll-dashboard.png")


def test_dashboard_shows_load_a_lost_worker_and_its_recovery(make_cluster, tmp_path, capsys):
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "chromium is not installed: scripts/setup.sh installs Debian's chromium"
    names = ["initializer", "worker1", "worker2"]
    # ~2,000 lines a second per worker for well over a minute: under load
    # from the first plot to the last.
    make_input(tmp_path, names, 150_000)
    mports = [free_port() for _ in names]
    res = tmp_path / "res"
    res.mkdir()
    cluster = make_cluster(
        "wc_app", APPS, 3,
        app_args=lambda c, i: ["--in-file", str(tmp_path / "in-{worker}.bin"),
                               "--out-file", str(tmp_path / "out-{worker}.txt"), "--line-delay", "0.0005",
                               "--metrics-listen", f"127.0.0.1:{mports[i]}"],
        extra_flags=["--run-with-resilience", "--resilience-dir", str(res),
                     "--time-between-checkpoints", "500000000"],
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{mports[0]}/")

            def state(name):
                row = page.query_selector(f'#workers tr[data-worker="{name}"]')
                return row.get_attribute("data-state") if row else None

            def chart(id, attr="max"):
                v = page.get_attribute(f"#{id}", f"data-{attr}")
                return float(v) if v else 0.0

            def wait(pred, what, timeout=30):
                wait_until(pred, timeout, f"{what}\n{cluster.describe()[-3000:]}", interval=0.25)

            wait(lambda: all(state(n) == "up" for n in names), "every worker shown up")
            wait(lambda: chart("stages") > 0 and chart("sinks") > 0, "non-zero throughput plotted")
            wait(lambda: chart("latency", "points") > 0 and chart("latency") > 0, "latency percentiles plotted")
            wait(lambda: page.eval_on_selector_all("#stages path.series", "ps => ps.length") >= 4,
                 "a line per stage")
            wait(lambda: page.eval_on_selector_all('#keygroups rect[data-worker]', "rs => rs.length") == 3,
                 "key-group ownership of 3 workers")
            wait(lambda: page.eval_on_selector_all("#timeline rect.event.commit", "rs => rs.length") > 0,
                 "checkpoints on the timeline")

            victim = cluster.workers[2]
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            wait(lambda: state("worker2") == "lost", "worker2 shown lost")
            wait(lambda: page.eval_on_selector_all("#timeline rect.event.lost", "rs => rs.length") > 0,
                 "the loss on the timeline")
            page.screenshot(path=str(tmp_path / "dashboard-lost.png"), full_page=True)

            restarted = Proc(cluster.command(2), tmp_path, "worker2~2", env=cluster.env).start()
            cluster.workers.append(restarted)  # stopped with the cluster
            wait(lambda: all(state(n) == "up" for n in names), "every worker shown up again", timeout=60)
            wait(lambda: page.eval_on_selector_all("#timeline rect.event.recovery", "rs => rs.length") > 0,
                 "the recovery on the timeline")
            # Live again: the restarted worker's throughput shows in the sink plot.
            before = chart("sinks", "points")
            wait(lambda: chart("sinks", "points") > before and chart("sinks") > 0, "new throughput points")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copy(shot, SCREENSHOT)
            with capsys.disabled():  # shown in the run's output even when the test passes
                print(f"\ndashboard screenshot: {SCREENSHOT} (and {shot})")
        finally:
            browser.close()
