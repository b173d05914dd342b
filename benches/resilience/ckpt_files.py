"""Read quoll's resilience files from Python (for the benchmark only).

Mirrors the on-disk format documented in crates/quoll-core/src/checkpoint_store.rs
(format version 1): every file is a sequence of records
`u32 LE length | u32 LE crc32 | postcard payload`; a checkpoint file is
`Header, (Entry | Remove | Source | Sink)*, Trailer`; the commit log is
`Header, (Committed | Generation)*`. Postcard: enum tags and integers are
LEB128 varints, byte strings and strings a varint length then the bytes.

Only what the benchmark needs: the header, record counts, entry keys and the
byte split of entries (framing / key / value), the commit log's last
committed checkpoint. If the engine's format changes, this breaks loudly
(a header that does not parse), never silently.
"""

import os
import re
import threading
import time
import zlib
from pathlib import Path

CKPT_RE = re.compile(r"^(?P<stem>.+)\.ckpt-(?P<id>\d{20})(?P<tmp>\.tmp)?$")
TAGS = {0: "header", 1: "entry", 2: "remove", 3: "source", 4: "sink", 5: "trailer"}


def sanitize(name):
    return "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in name)


def _varint(b, i):
    out = shift = 0
    while True:
        x = b[i]
        i += 1
        out |= (x & 0x7F) << shift
        if x < 0x80:
            return out, i
        shift += 7


def _blob(b, i):
    n, i = _varint(b, i)
    return b[i:i + n], i + n


def records(data, check_crc=False):
    """The payloads of the complete records in `data` (a torn tail is ignored)."""
    i, n = 0, len(data)
    while i + 8 <= n:
        ln = int.from_bytes(data[i:i + 4], "little")
        if ln == 0 or i + 8 + ln > n:
            break
        payload = data[i + 8:i + 8 + ln]
        if check_crc and zlib.crc32(payload) != int.from_bytes(data[i + 4:i + 8], "little"):
            raise ValueError(f"record at byte {i} fails its checksum")
        yield i, ln, payload
        i += 8 + ln


def parse_checkpoint(path, want_keys=False):
    """Header fields, record counts and byte split of one checkpoint file."""
    data = Path(path).read_bytes()
    it = records(data)
    _, _, head = next(it)
    tag, i = _varint(head, 0)
    if tag != 0:
        raise ValueError(f"{path}: first record is not a header")
    version, i = _varint(head, i)
    app, i = _blob(head, i)
    worker, i = _blob(head, i)
    checkpoint, i = _varint(head, i)
    kind, i = _varint(head, i)
    parent = None
    if kind == 1:
        parent, i = _varint(head, i)
    counts = {v: 0 for v in TAGS.values()}
    counts["header"] = 1
    key_bytes = value_bytes = entry_record_bytes = 0
    keys = set() if want_keys else None
    removed = set() if want_keys else None
    for _, ln, p in it:
        tag, j = _varint(p, 0)
        name = TAGS.get(tag, f"tag{tag}")
        counts[name] = counts.get(name, 0) + 1
        if tag == 1:
            stage, j = _varint(p, j)
            key, j = _blob(p, j)
            value, j = _blob(p, j)
            key_bytes += len(key)
            value_bytes += len(value)
            entry_record_bytes += 8 + ln
            if want_keys:
                keys.add((stage, bytes(key)))
        elif tag == 2 and want_keys:
            stage, j = _varint(p, j)
            key, j = _blob(p, j)
            removed.add((stage, bytes(key)))
    out = dict(path=str(path), bytes=len(data), version=version, app=app.decode(), worker=worker.decode(),
               checkpoint=checkpoint, kind="full" if kind == 0 else "delta", parent=parent,
               entries=counts["entry"], removes=counts["remove"], sources=counts["source"], sinks=counts["sink"],
               trailer=counts["trailer"] == 1, key_bytes=key_bytes, value_bytes=value_bytes,
               entry_record_bytes=entry_record_bytes)
    if want_keys:
        out["keys"] = keys
        out["removed"] = removed
    return out


def ckpt_path(res_dir, app, worker, checkpoint):
    return Path(res_dir) / f"{sanitize(app)}-{sanitize(worker)}.ckpt-{checkpoint:020d}"


def image_keys(res_dir, app, worker, checkpoint, retries=20):
    """The set of (stage, key) in `worker`'s image of `checkpoint` (its chain
    of delta files down to a full one) and the files read. Files may be
    compacted or deleted while this reads them: it retries from the top."""
    for attempt in range(retries):
        try:
            chain = []
            cur = checkpoint
            while True:
                info = parse_checkpoint(ckpt_path(res_dir, app, worker, cur), want_keys=True)
                chain.append(info)
                if info["kind"] == "full":
                    break
                cur = info["parent"]
            keys = set()
            for info in reversed(chain):
                keys |= info["keys"]
                keys -= info["removed"]
            return keys, [c["checkpoint"] for c in reversed(chain)]
        except (FileNotFoundError, StopIteration):
            time.sleep(0.05)
    raise RuntimeError(f"could not read a stable chain for {worker} checkpoint {checkpoint}")


def commit_log_state(res_dir):
    """(last committed checkpoint or None, generation) from the initializer's commit log."""
    logs = list(Path(res_dir).glob("*-initializer.commits"))
    if not logs:
        return None, 0
    data = logs[0].read_bytes()
    last, generation = None, 0
    for n, (_, _, p) in enumerate(records(data)):
        if n == 0:
            continue
        tag, i = _varint(p, 0)
        if tag == 1:
            last, i = _varint(p, i)
            generation, i = _varint(p, i)
        elif tag == 2:
            generation, i = _varint(p, i)
    return last, generation


class DirWatcher(threading.Thread):
    """Polls a resilience directory and records every checkpoint file as it
    appears (size at first sight), every later size change (compaction
    rewrites a delta as a full file under the same name) and deletions.
    Times are time.perf_counter()."""

    def __init__(self, res_dir, interval=0.01):
        super().__init__(daemon=True)
        self.dir = Path(res_dir)
        self.interval = interval
        self.lock = threading.Lock()
        self.files = {}     # name -> dict(id, stem, first_seen, size, changes=[(t, size)], deleted=None)
        self.tmp_seen = {}  # name of a *.tmp -> first seen
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(self.interval)

    def poll(self):
        now = time.perf_counter()
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        seen = set()
        with self.lock:
            for e in entries:
                m = CKPT_RE.match(e.name)
                if not m:
                    continue
                if m.group("tmp"):
                    self.tmp_seen.setdefault(e.name, now)
                    continue
                try:
                    size = e.stat().st_size
                except FileNotFoundError:
                    continue
                seen.add(e.name)
                f = self.files.get(e.name)
                if f is None:
                    self.files[e.name] = dict(name=e.name, stem=m.group("stem"), id=int(m.group("id")),
                                              first_seen=now, size=size, changes=[], deleted=None)
                elif f["deleted"] is not None:
                    # The same name again (an id reused after a rollback removed the uncommitted file).
                    f["deleted"] = None
                    f["changes"].append((now, size))
                elif size != (f["changes"][-1][1] if f["changes"] else f["size"]):
                    f["changes"].append((now, size))
            for name, f in self.files.items():
                if name not in seen and f["deleted"] is None:
                    f["deleted"] = now

    def snapshot(self):
        with self.lock:
            return {k: dict(v, changes=list(v["changes"])) for k, v in self.files.items()}

    def ids(self, stem=None, include_tmp=True):
        with self.lock:
            ids = [f["id"] for f in self.files.values() if stem is None or f["stem"] == stem]
            if include_tmp:
                for name in self.tmp_seen:
                    m = CKPT_RE.match(name)
                    if stem is None or m.group("stem") == stem:
                        ids.append(int(m.group("id")))
            return ids

    def stop(self):
        self._halt.set()
        self.join(timeout=2)
