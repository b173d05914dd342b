"""Two workers on two separate network stacks: each in its own network
namespace, joined only by a veth pair with addresses in a private /30. The
initializer (and the receiver) live in namespace A, worker1 in namespace B;
worker1 finds the initializer through A's address and gets its data
listener bound on the address it reaches A from, so every control, data and
sink connection crosses the veth. Word count with exact counts.

Needs root and iproute2's `ip` (CI runs as root). Where either is missing,
or namespaces can't be made, the test fails saying what is missing; it is
skipped only when QUOLL_SKIP_NETNS=1 is set, and then says so. The
namespaces (and with them the veth pair) are always deleted at the end.
"""

import json
import os
import random
import secrets
import shutil
import subprocess
import sys

import pytest

from harness import EXAMPLES, MACHIDA3, QUOLL, READY_LINE, Proc, wait_until
from test_word_count import make_lines, reference_counts
from harness import word_count_problems

APP_DIR = EXAMPLES / "word_count"


def ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NetnsPair:
    def __init__(self):
        tag = secrets.token_hex(3)
        self.ns = (f"quoll-test-{tag}-a", f"quoll-test-{tag}-b")
        self.veth = (f"qva{tag}", f"qvb{tag}")
        third, base = random.randrange(256), 4 * random.randrange(64)
        self.addr = (f"10.231.{third}.{base + 1}", f"10.231.{third}.{base + 2}")

    def create(self):
        a, b = self.ns
        va, vb = self.veth
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        ip("link", "set", va, "netns", a)
        ip("link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, self.addr[0]), (b, vb, self.addr[1])):
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def delete(self):
        problems = []
        for ns in self.ns:
            if ns in ip("netns", "list", check=False).stdout:
                r = ip("netns", "del", ns, check=False)
                if r.returncode != 0:
                    problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
        for dev in self.veth:  # left in the root namespace if set-up failed half way
            if ip("link", "show", dev, check=False).returncode == 0:
                ip("link", "del", dev, check=False)
        left = [ns for ns in self.ns if ns in ip("netns", "list", check=False).stdout]
        assert not left and not problems, f"namespaces left behind: {left} {problems}"

    def exec(self, i, *cmd):
        return ["ip", "netns", "exec", self.ns[i], *[str(c) for c in cmd]]


SKIP_HINT = "set QUOLL_SKIP_NETNS=1 to skip this test on purpose"


@pytest.fixture
def netns_pair():
    if os.environ.get("QUOLL_SKIP_NETNS") == "1":
        pytest.skip("QUOLL_SKIP_NETNS=1: the network namespace test is skipped on request")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.fail(f"the network namespace test needs root (CI runs as root); {SKIP_HINT}")
    if shutil.which("ip") is None:
        pytest.fail("the network namespace test needs iproute2's `ip` command: install it "
                    f"(Debian/Ubuntu: apt-get install iproute2); {SKIP_HINT}")
    pair = NetnsPair()
    try:
        try:
            pair.create()
        except RuntimeError as e:
            pytest.fail(f"can't create network namespaces here: {e}; {SKIP_HINT}")
        yield pair
    finally:
        pair.delete()


REPORT = r"""
import json, socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(struct.pack(">IH", 2, 16))
data = b""
while len(data) < 6 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data[6:].decode())
"""


def test_word_count_across_two_network_namespaces(netns_pair, tmp_path):
    pair = netns_pair
    a, b = pair.addr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")])))
    out_file = tmp_path / "received.data"
    procs = []

    def start(i, label, cmd):
        p = Proc(pair.exec(i, *cmd), tmp_path, label, env=env).start()
        procs.append(p)
        return p

    try:
        receiver = start(0, "receiver", [QUOLL, "receive", "--listen", f"{a}:7002", "--output", out_file,
                                         "--report-interval", "0"])
        wait_until(lambda: "listening on" in receiver.stderr() or not receiver.alive(), 10, "the receiver")
        assert receiver.alive(), receiver.describe()
        common = ["--application-module", "word_count", "--ponythreads", "1", "--out", f"{a}:7002"]
        w0 = start(0, "worker0", [MACHIDA3, *common, "--cluster-initializer", "--name", "initializer",
                                  "--worker-count", "2", "--control", f"{a}:6000", "--data", f"{a}:6001",
                                  "--external", f"{a}:5050", "--in", f"lines@{a}:7010"])
        w1 = start(1, "worker1", [MACHIDA3, *common, "--name", "worker1", "--control", f"{a}:6000",
                                  "--external", f"{b}:5051", "--in", f"lines@{b}:7011"])
        for w in (w0, w1):
            wait_until(lambda: READY_LINE in w.stdout() or not w.alive(), 20, f"{w.label} to be ready")
            assert w.alive(), "\n".join(p.describe() for p in procs)

        # Each worker is only reachable on its own namespace's address.
        status = subprocess.run(pair.exec(1, QUOLL, "status", f"{b}:5051"), capture_output=True, text=True,
                                timeout=20)
        assert status.returncode == 0 and "worker1" in status.stdout and "initializer" in status.stdout, status

        inputs = [make_lines(300, seed=10 + i) for i in range(2)]
        for i, (addr, port) in enumerate(((a, 7010), (b, 7011))):
            path = tmp_path / f"input{i}.txt"
            path.write_text("".join(l + "\n" for l in inputs[i]))
            r = subprocess.run(pair.exec(i, QUOLL, "send", "--host", f"{addr}:{port}", "--file", path),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r
        expected = reference_counts([l for lines in inputs for l in lines])
        total = sum(expected.values())

        def lines():
            return out_file.read_text().splitlines() if out_file.exists() else []

        wait_until(lambda: len(lines()) >= total, 20, f"{total} output lines")
        # One receiver connection per worker, so a word's counts (all from
        # the worker owning it) arrive in order.
        problems = word_count_problems({"receiver": lines()}, expected)
        assert not problems, problems[:10]

        # Words crossed the veth in both directions.
        shipped = []
        for i, (addr, port) in enumerate(((a, 5050), (b, 5051))):
            def report():
                r = subprocess.run(pair.exec(i, sys.executable, "-c", REPORT, addr, port),
                                   capture_output=True, text=True, timeout=20)
                return json.loads(r.stdout or "{}")
            wait_until(lambda: report().get("messages_in", 0) > 0, 5, f"worker {i}'s report")
            shipped.append(report().get("shipped", 0))
        assert all(n > 0 for n in shipped), shipped

        r = subprocess.run(pair.exec(0, QUOLL, "shutdown", f"{a}:5050"), capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r
        for w in (w0, w1):
            assert w.wait(20) == 0, w.describe()
        assert len(lines()) == total
    finally:
        for p in procs:
            p.stop()
