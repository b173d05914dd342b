"""A hostile program for the security tests: it holds, floods, records and
replays connections to a worker's ports. Each mode runs until killed (but
`replay`, which ends by itself).

    python attacker.py silent HOST:PORT COUNT
        holds COUNT connections that send nothing, reopening any that close
    python attacker.py garbage HOST:PORT
        keeps opening connections that send random bytes, then close
    python attacker.py proxy LISTEN_PORT HOST:PORT RECORD
        forwards connections to HOST:PORT both ways; RECORD always holds
        what the first forwarded connection's client has sent so far
    python attacker.py replay HOST:PORT RECORD
        sends the recorded bytes on a new connection and prints how many
        bytes came back before the other side closed
"""

import os
import random
import socket
import sys
import threading
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def silent(target, count):
    held = []
    while True:
        while len(held) < count:
            try:
                held.append(socket.create_connection(target, timeout=2))
            except OSError:
                time.sleep(0.05)
                break
        time.sleep(0.2)
        alive = []
        for s in held:
            s.setblocking(False)
            try:
                closed = s.recv(1 << 16) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                s.close()
            else:
                alive.append(s)
        held = alive


def garbage(target):
    rng = random.Random(os.getpid())
    while True:
        try:
            with socket.create_connection(target, timeout=2) as s:
                for _ in range(rng.randint(1, 20)):
                    s.sendall(rng.randbytes(rng.randint(1, 4096)))
        except OSError:
            pass
        time.sleep(0.02)


def pump(src, dst, record_path=None):
    """Copies src to dst until src closes; with `record_path`, the file
    always holds everything copied so far."""
    seen = bytearray()
    while True:
        try:
            data = src.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        if record_path is not None:
            seen.extend(data)
            with open(record_path + ".tmp", "wb") as f:
                f.write(seen)
            os.replace(record_path + ".tmp", record_path)
        try:
            dst.sendall(data)
        except OSError:
            return


def proxy(listen_port, target, record_path):
    """Forwards every connection; records what the first forwarded one's
    client sent. A client that comes before the target listens waits (up
    to 2 s) until it does, as over a slow network."""
    server = socket.create_server(("127.0.0.1", listen_port))
    first = True
    while True:
        client, _ = server.accept()
        upstream = None
        deadline = time.monotonic() + 2
        while upstream is None:
            try:
                upstream = socket.create_connection(target)
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        if upstream is None:
            client.close()
            continue
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        threading.Thread(target=pump, args=(client, upstream, record_path if first else None), daemon=True).start()
        first = False


def replay(target, record_path):
    with open(record_path, "rb") as f:
        data = f.read()
    s = socket.create_connection(target, timeout=10)
    s.sendall(data)
    got = 0
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += len(chunk)
    except OSError:
        pass
    print(f"replayed {len(data)} bytes; {got} bytes came back before the close", flush=True)


def main(argv):
    mode = argv[1]
    if mode == "silent":
        silent(addr(argv[2]), int(argv[3]))
    elif mode == "garbage":
        garbage(addr(argv[2]))
    elif mode == "proxy":
        proxy(int(argv[2]), addr(argv[3]), argv[4])
    elif mode == "replay":
        replay(addr(argv[2]), argv[3])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
