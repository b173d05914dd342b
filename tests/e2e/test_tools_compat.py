"""Wallaroo's tool command lines (`data_receiver`, `sender`,
`cluster_shutdown`), framed output from several workers, and the progress
display, all with real processes against real workers.

The command lines are the ones Wallaroo's example READMEs give, Pony flags
included; only ports, file names and message counts differ (a README's
`--messages 1000000` would run for minutes).
"""

import collections
import os
import pty
import select
import struct
import subprocess
import time

import pytest

from harness import (EXAMPLES, QUOLL, Proc, _bin, assert_word_counts, free_port,
                     wait_until)

DATA_RECEIVER = _bin("data_receiver")
SENDER = _bin("sender")
CLUSTER_SHUTDOWN = _bin("cluster_shutdown")
PONY = ["--ponythreads=1", "--ponynoblock"]


def start_data_receiver(tmp_path, port, *flags, label="data_receiver"):
    r = Proc([DATA_RECEIVER, *PONY, "--listen", f"127.0.0.1:{port}", *flags], tmp_path, label).start()
    wait_until(lambda: "listening on" in r.stderr(), 10, "data_receiver to listen")
    return r


def run(args, cwd, timeout=120):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def shutdown(cluster, tmp_path):
    """`cluster_shutdown HOST:PORT` as the READMEs run it; every worker exits 0."""
    r = run([CLUSTER_SHUTDOWN, f"127.0.0.1:{cluster.external_ports[0]}"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for w in cluster.workers:
        assert w.wait(20) == 0, cluster.describe()


def settle(path, quiet=0.8, timeout=30):
    """The contents of `path` once it has not grown for `quiet` seconds."""
    deadline = time.time() + timeout
    last, since = -1, time.time()
    while time.time() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.time()
        elif time.time() - since >= quiet:
            return path.read_bytes()
        time.sleep(0.05)
    raise AssertionError(f"{path}: never settled")


def test_word_count_readme(make_cluster, tmp_path):
    """examples/python/word_count/README.md, shell by shell; the text has
    blank lines, which Giles' sender skips."""
    out_port = free_port()
    receiver = start_data_receiver(tmp_path, out_port)
    cluster = make_cluster(
        "word_count", EXAMPLES / "word_count", 1, extra_flags=["--ponynoblock", "--metrics", "127.0.0.1:5001"],
        app_args=lambda c, i: ["--in", f"Split and Count@127.0.0.1:{c.in_ports[i]}", "--out", f"127.0.0.1:{out_port}"])
    text = ["The quick brown fox", "", "jumps over the lazy dog.", "", "", "The dog sleeps!"]
    (tmp_path / "count_this.txt").write_text("\n".join(text) + "\n")
    messages = 40
    t0 = time.time()
    r = run([SENDER, "--host", f"127.0.0.1:{cluster.in_ports[0]}", "--file", "count_this.txt",
             "--batch-size", "5", "--interval", "100_000_000", "--messages", str(messages),
             *PONY, "--repeat", "--no-write"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sent {messages} messages" in r.stdout, r.stdout
    # 8 batches of 5, one every 100 ms.
    assert time.time() - t0 >= 0.65
    assert not (tmp_path / "sent.txt").exists(), "--no-write must not write sent.txt"

    non_blank = [l for l in text if l]
    sent = [non_blank[k % len(non_blank)] for k in range(messages)]
    truth = collections.Counter(w.strip(".!").lower() for line in sent for w in line.split())
    wait_until(lambda: len(receiver.stdout().splitlines()) >= sum(truth.values()), 30,
               "every count", interval=0.1)
    shutdown(cluster, tmp_path)
    receiver.stop()
    assert_word_counts({"data_receiver": receiver.stdout().splitlines()}, truth, cluster.describe)


@pytest.mark.parametrize("binary", [["--msg-size", "9"], ["--variable-size"]], ids=["msg-size", "variable-size"])
def test_alphabet_readme_binary_sender(binary, make_cluster, tmp_path):
    """examples/python/alphabet/README.md: binary votes, 9-byte frames."""
    out_port = free_port()
    receiver = start_data_receiver(tmp_path, out_port)
    cluster = make_cluster(
        "alphabet", EXAMPLES / "alphabet", 1, extra_flags=["--ponynoblock"],
        app_args=lambda c, i: ["--in", f"alphabet@127.0.0.1:{c.in_ports[i]}", "--out", f"127.0.0.1:{out_port}"])
    votes = [(chr(ord("a") + k % 5), k + 1) for k in range(30)]
    (tmp_path / "votes.msg").write_bytes(b"".join(struct.pack(">I", 5) + struct.pack(">cI", l.encode(), n)
                                                  for l, n in votes))
    messages = 200
    r = run([SENDER, "--host", f"127.0.0.1:{cluster.in_ports[0]}", "--file", "votes.msg",
             "--batch-size", "50", "--interval", "10_000_000", "--messages", str(messages), "--binary",
             *binary, "--repeat", *PONY, "--no-write"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sent {messages} messages ({messages * 9} bytes)" in r.stdout, r.stdout

    totals = collections.Counter()
    for k in range(messages):
        letter, n = votes[k % len(votes)]
        totals[letter] += n
    wait_until(lambda: len(receiver.stdout().splitlines()) >= messages, 30, "a total per vote")
    shutdown(cluster, tmp_path)
    receiver.stop()
    last = {}
    for line in receiver.stdout().splitlines():
        letter, total = line.split(" => ")
        last[letter] = int(total)
    assert last == dict(totals)


def test_sender_skips_blank_lines_and_logs_what_it_sent(make_cluster, make_receiver, tmp_path):
    """Giles' text mode against an app that echoes every message as a line:
    blank lines never reach the app, and sent.txt lists what was sent.
    `quoll send` sends them as empty messages unless --skip-empty."""
    out = make_receiver()
    cluster = make_cluster("frames_app", EXAMPLES.parent / "tests" / "e2e" / "apps", 1,
                           app_args=lambda c, i: ["--in", f"frames@127.0.0.1:{c.in_ports[i]}", "--out", out.addr])
    (tmp_path / "in.txt").write_text("alpha\n\nbeta\r\n\r\ngamma\n\n")
    r = run([SENDER, "--host", f"127.0.0.1:{cluster.in_ports[0]}", "--file", "in.txt", "--messages", "100",
             *PONY], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sent 3 messages" in r.stdout, r.stdout
    out.wait_for_lines(3)
    sent = [line.split(", ", 1) for line in (tmp_path / "sent.txt").read_text().splitlines()]
    assert [payload for _, payload in sent] == ["alpha", "beta", "gamma"]
    assert all(ns.isdigit() and abs(int(ns) / 1e9 - time.time()) < 60 for ns, _ in sent), sent

    r = run([QUOLL, "send", "--host", f"127.0.0.1:{cluster.in_ports[0]}", "--file", "in.txt"], tmp_path)
    assert r.returncode == 0 and "sent 6 messages" in r.stdout, r.stdout + r.stderr
    lines = out.wait_for_lines(9)
    assert lines == ["alpha", "beta", "gamma", "alpha", "", "beta", "", "gamma", ""]

    # Giles' comma-separated files, one after the other (the first lacks
    # its last newline; its last line is still a line of its own).
    (tmp_path / "one.txt").write_text("delta")
    (tmp_path / "two.txt").write_text("\nepsilon\n")
    r = run([SENDER, "--host", f"127.0.0.1:{cluster.in_ports[0]}", "--file", "one.txt,two.txt",
             "--messages", "3", "--repeat", "--no-write"], tmp_path)
    assert r.returncode == 0 and "sent 3 messages" in r.stdout, r.stdout + r.stderr
    lines = out.wait_for_lines(12)
    shutdown(cluster, tmp_path)
    assert lines[9:] == ["delta", "epsilon", "delta"]


FRAMED_APP = '''
import struct
import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    sinks = [wallaroo.TCPSinkConfig(h, p, encode) for h, p in wallaroo.tcp_parse_output_addrs(args)]
    pipeline = (wallaroo.source("Events", wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode))
                .key_by(first_field)
                .to(count)
                .to_sinks(sinks))
    return wallaroo.build_application("Framed Output", pipeline)


class Total(object):
    def __init__(self):
        self.n = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode("ascii").split(",")


@wallaroo.key_extractor
def first_field(fields):
    return fields[0]


@wallaroo.state_computation(name="count", state=Total)
def count(fields, total):
    total.n += 1
    return (fields[0], total.n, fields[1])


@wallaroo.encoder
def encode(item):
    # A framed record with a newline inside, like market spread's; some
    # lengths are 10, so the header itself holds a newline byte.
    key, n, pad = item
    payload = ("%s\\n%d%s" % (key, n, pad)).encode("ascii")
    return struct.pack(">I", len(payload)) + payload
'''


def parse_frames(data):
    """Wallaroo's validators' loop: a 4-byte header, then the payload."""
    frames, pos = [], 0
    while pos < len(data):
        assert pos + 4 <= len(data), f"torn header at {pos}"
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        assert pos + 4 + n <= len(data), f"torn frame at {pos}"
        frames.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return frames


def test_framed_output_of_three_workers(make_cluster, tmp_path):
    """Three workers' framed sinks into `quoll receive --keep-headers` (a
    file Wallaroo's validators read) and into `data_receiver --framed`
    (payload and newline per frame): every frame whole, none lost."""
    (tmp_path / "framed_app.py").write_text(FRAMED_APP)
    file_port, dr_port = free_port(), free_port()
    frames_file = tmp_path / "received.bin"
    keeper = Proc([QUOLL, "receive", "--listen", f"127.0.0.1:{file_port}", "--framing", "framed",
                   "--keep-headers", "--output", frames_file, "--report-interval", "0"], tmp_path, "keeper").start()
    wait_until(lambda: "listening on" in keeper.stderr(), 10, "the receiver to listen")
    printer = start_data_receiver(tmp_path, dr_port, "--framed")
    try:
        cluster = make_cluster(
            "framed_app", tmp_path, 3,
            app_args=lambda c, i: ["--in", f"events@127.0.0.1:{c.in_ports[i]}",
                                   "--out", f"127.0.0.1:{file_port},127.0.0.1:{dr_port}"])
        keys = ["key-%d" % k for k in range(40)]
        per_key = collections.Counter()
        for i in range(3):
            lines = []
            for j in range(1500):
                key = keys[(7 * j + i) % len(keys)]
                pad = "x" * ((j + i) % 9)
                per_key[key] += 1
                lines.append(f"{key},{pad}")
            (tmp_path / f"events-{i}.txt").write_text("\n".join(lines) + "\n")
        for i in range(3):
            r = run([SENDER, "--host", f"127.0.0.1:{cluster.in_ports[i]}", "--file", f"events-{i}.txt",
                     "--messages", "1500", "--interval", "0", *PONY, "--no-write"], tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
        total = sum(per_key.values())
        wait_until(lambda: frames_file.exists() and len(parse_frames(frames_file.read_bytes())) >= total, 30,
                   "every frame")
        data = settle(frames_file)
        printed = settle(printer.out_path)
        shutdown(cluster, tmp_path)
    finally:
        keeper.stop()
        printer.stop()

    frames = parse_frames(data)
    assert len(frames) == total
    # Per key, the counts 1..n each once (the pads depend on the arrival
    # order across connections, so they are not compared).
    got = collections.Counter()
    for f in frames:
        key, rest = f.decode("ascii").split("\n")
        got[(key, int(rest.rstrip("x")))] += 1
    expected = collections.Counter((k, n) for k, c in per_key.items() for n in range(1, c + 1))
    assert got == expected
    assert any(len(f) == 10 for f in frames), "no header held a newline byte"
    # data_receiver --framed prints each payload and a newline: two lines a frame.
    lines = printed.decode("ascii").split("\n")
    assert lines[-1] == ""
    pairs = collections.Counter((lines[k], int(lines[k + 1].rstrip("x"))) for k in range(0, len(lines) - 1, 2))
    assert pairs == expected


def read_pty(fd, proc, timeout):
    """Everything written to the pty until `proc` exits."""
    out = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the other end closed
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    return out.decode("utf-8", "replace")


def test_progress_on_a_terminal_only(tmp_path):
    """`quoll send` and `quoll receive` draw their progress on a terminal
    stderr, and print nothing of it when stderr is a pipe."""
    (tmp_path / "in.txt").write_text("".join(f"line {k}\n" for k in range(300)))

    def round_trip(terminal):
        port = free_port()
        master, slave = pty.openpty() if terminal else (None, None)
        err = slave if terminal else subprocess.PIPE
        recv = subprocess.Popen([QUOLL, "receive", "--listen", f"127.0.0.1:{port}", "--count-only",
                                 "--expect", "300", "--timeout", "30"], stdout=subprocess.PIPE, stderr=err,
                                cwd=tmp_path)
        time.sleep(0.5)
        send_master, send_slave = pty.openpty() if terminal else (None, None)
        send = subprocess.Popen([QUOLL, "send", "--host", f"127.0.0.1:{port}", "--file", "in.txt",
                                 "--rate", "250", "--batch-size", "1", "--framing", "lines"],
                                stdout=subprocess.PIPE, stderr=send_slave if terminal else subprocess.PIPE,
                                cwd=tmp_path)
        if terminal:
            os.close(slave)
            os.close(send_slave)
            send_err = read_pty(send_master, send, 30)
            recv_err = read_pty(master, recv, 30)
            os.close(master)
            os.close(send_master)
            send_out = send.stdout.read().decode()
        else:
            send_out, send_err = (b.decode() for b in send.communicate(timeout=30))
            recv_err = recv.communicate(timeout=30)[1].decode()
        assert send.returncode == 0 and recv.returncode == 0, (send_err, recv_err)
        assert "sent 300 messages" in send_out
        return send_err, recv_err

    send_err, recv_err = round_trip(terminal=True)
    assert "quoll send [" in send_err and "/300 msgs" in send_err, send_err
    assert "quoll receive [" in recv_err and "/300 msgs" in recv_err, recv_err
    assert "received 300 messages" in recv_err
    send_err, recv_err = round_trip(terminal=False)
    assert send_err == "", send_err
    assert "msgs," not in recv_err and "\r" not in recv_err, recv_err
    assert "received 300 messages" in recv_err


def test_usage_errors(tmp_path):
    r = run([CLUSTER_SHUTDOWN], tmp_path)
    assert r.returncode == 1 and "Usage: cluster_shutdown HOST:PORT" in r.stderr
    r = run([CLUSTER_SHUTDOWN, f"127.0.0.1:{free_port()}", *PONY], tmp_path)
    assert r.returncode == 1 and "could not connect" in r.stderr, r.stderr
    (tmp_path / "in.txt").write_text("x\n")
    r = run([SENDER, "--host", "127.0.0.1:1", "--file", "in.txt", *PONY], tmp_path)
    assert r.returncode == 2 and "--messages" in r.stderr, r.stderr
    r = run([SENDER, "--host", "127.0.0.1:1", "--file", "in.txt", "--messages", "1", "--binary"], tmp_path)
    assert r.returncode == 2 and "--msg-size or --variable-size" in r.stderr, r.stderr
    r = run([DATA_RECEIVER, *PONY], tmp_path)
    assert r.returncode == 2 and "--listen" in r.stderr, r.stderr
    r = run([DATA_RECEIVER, "--help"], tmp_path)
    assert r.returncode == 0 and "--framed" in r.stdout
