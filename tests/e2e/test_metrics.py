"""Metrics end to end: a 3-worker word count with --metrics-listen on every
worker, scraped directly and by a real Prometheus server; `promtool check
metrics` validates each worker's text. The counters must equal what was
sent and written, the histograms must have filled, and the checkpoint
counters must show the checkpoints that ran (docs/metrics.md)."""

import collections
import json
import shutil
import subprocess
import urllib.parse
import urllib.request

from harness import EXAMPLES, Proc, free_port, metric, scrape, send_lines, wait_until

APP_DIR = EXAMPLES / "word_count"
VOCAB = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "kiwi", "lemon", "mango",
         "nut", "olive", "pear", "quince", "rhubarb", "sloe"]


def _tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed: scripts/setup.sh installs Debian's prometheus package"
    return path


def _lines(n, seed):
    import random
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def _prometheus(tmp_path, ports):
    """A Prometheus server scraping every worker each 0.5 s."""
    port = free_port()
    targets = json.dumps([f"127.0.0.1:{p}" for p in ports])
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
                      "scrape_configs:\n  - job_name: quoll\n"
                      f"    static_configs:\n      - targets: {targets}\n")
    proc = Proc([_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], tmp_path, "prometheus").start()
    return proc, port


def _query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
    except OSError:
        return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def test_counters_match_what_was_sent_and_prometheus_scrapes_them(make_cluster, make_receiver, tmp_path):
    out = make_receiver()
    mports = [free_port() for _ in range(3)]
    cluster = make_cluster(
        "word_count", APP_DIR, 3,
        app_args=lambda c, i: ["--in", f"lines@127.0.0.1:{c.in_ports[i]}", "--out", out.addr,
                               "--metrics-listen", f"127.0.0.1:{mports[i]}"],
        extra_flags=["--run-with-resilience", "--resilience-dir", str(tmp_path),
                     "--time-between-checkpoints", "200000000"],
    )
    prom, prom_port = _prometheus(tmp_path, mports)
    try:
        inputs = [_lines(400 + 100 * i, seed=i) for i in range(3)]
        for i, lines in enumerate(inputs):
            send_lines(cluster.in_ports[i], lines, tmp_path)
        words = collections.Counter(w for lines in inputs for l in lines for w in l.split())
        total = sum(words.values())
        out.wait_for_lines(total, timeout=60)

        # The executor publishes every 100 ms: wait until every write is counted.
        def counted():
            return sum(metric(scrape(p)[1], "quoll_sink_messages_total") for p in mports) == total
        wait_until(counted, 10, f"the sinks' counters to reach {total}")
        # Two checkpoints after the last input, so every one is settled.
        first = [metric(scrape(p)[1], "quoll_checkpoint_last_committed_id") for p in mports]
        wait_until(lambda: all(metric(scrape(p)[1], "quoll_checkpoint_last_committed_id") >= f + 2
                               for p, f in zip(mports, first)), 10, "two more checkpoints")

        promtool = _tool("promtool")
        scraped = []
        for i, p in enumerate(mports):
            text, s = scrape(p)
            scraped.append(s)
            check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
            assert check.returncode == 0, f"promtool on worker {i}: {check.stdout}{check.stderr}\n{text[:3000]}"
            name = "initializer" if i == 0 else f"worker{i}"
            assert all(dict(ls).get("worker") == name for (_, ls) in s), f"worker {i}: a series without worker={name}"
            lines = inputs[i]
            assert metric(s, "quoll_source_messages_total", source="lines") == len(lines)
            assert metric(s, "quoll_source_bytes_total", source="lines") == sum(len(l.encode()) for l in lines)
            assert metric(s, "quoll_stage_messages_in_total", stage="split into words") == len(lines)
            assert metric(s, "quoll_stage_messages_out_total", stage="split into words") == sum(len(l.split()) for l in lines)
            assert metric(s, "quoll_worker_state", state="up") == 1
            assert metric(s, "quoll_worker_state", state="recovering") == 0
            assert metric(s, "quoll_stage_processing_seconds_count", stage="split into words") > 0
            assert metric(s, "quoll_end_to_end_latency_seconds_count") > 0
            # The latency histogram's counts are the sampled writes: 1 in 64 of
            # each sink buffer's writes, the first included.
            assert metric(s, "quoll_end_to_end_latency_seconds_sum") >= 0
            assert metric(s, "quoll_checkpoints_begun_total") >= 2
            assert metric(s, "quoll_checkpoints_committed_total") >= 2
            assert metric(s, "quoll_checkpoint_duration_seconds_count") >= 2
            assert metric(s, "quoll_checkpoint_written_bytes_total") > 0
            assert metric(s, "quoll_recoveries_total") == 0
            assert metric(s, "quoll_user_errors_total") == 0
            assert metric(s, "process_resident_memory_bytes") > 1 << 20
        # Cluster-wide sums.
        assert sum(metric(s, "quoll_stage_messages_in_total", stage="count word") for s in scraped) == total
        assert sum(metric(s, "quoll_sink_bytes_total") for s in scraped) == len(out.data())
        assert sum(metric(s, "quoll_key_groups") for s in scraped) == 1024
        assert sum(metric(s, "quoll_keys") for s in scraped) == len(words)
        # What one worker sent another, the other received.
        names = ["initializer", "worker1", "worker2"]
        for a in range(3):
            for b in range(3):
                if a != b:
                    for sent_name, got_name in (("quoll_peer_frames_sent_total", "quoll_peer_frames_received_total"),
                                                ("quoll_peer_sent_bytes_total", "quoll_peer_received_bytes_total")):
                        sent = metric(scraped[a], sent_name, peer=names[b])
                        got = metric(scraped[b], got_name, peer=names[a])
                        assert sent == got > 0, (a, b, sent_name, sent, got)

        # Prometheus scraped all three and sees the same totals.
        wait_until(lambda: _query(prom_port, "sum(quoll_sink_messages_total)") == total, 30,
                   f"Prometheus to see {total} sink messages\n{prom.stderr()[-2000:]}", interval=0.5)
        assert _query(prom_port, 'count(up{job="quoll"} == 1)') == 3
        assert _query(prom_port, 'sum(quoll_source_messages_total)') == sum(len(l) for l in inputs)
        p99 = _query(prom_port, "histogram_quantile(0.99, sum by (le) (quoll_end_to_end_latency_seconds_bucket))")
        assert p99 is not None and 0 < p99 < 60, p99
    finally:
        prom.stop()
