"""Run under upstream LMCache 0.5.6: its native ``LMCacheFSClient`` writes or reads a directory.

Usage: ``python drive_upstream_fs_native.py write|read BASE_PATH COUNT SIZE [odirect]``

Keys and payloads are derived from the index (see :func:`key_of` and
``compat_objects.payload_of``; the test computes the same), so each side checks the
other's bytes. Prints one JSON line: per key, whether the call succeeded and, for
``read``, whether the bytes are the expected ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import sys

from compat_objects import payload_of

MODEL = "compat/model"


def key_of(index: int) -> str:
    """The native key string of object ``index``."""
    return f"{MODEL}@00000000@0@{hashlib.sha256(b'%d' % index).hexdigest()}"


def wait(client: object, task_id: int) -> tuple[bool, list[bool] | None]:
    poller = select.poll()
    poller.register(client.event_fd(), select.POLLIN)  # type: ignore[attr-defined]
    while True:
        poller.poll(30_000)
        for done_id, ok, _error, results in client.drain_completions():  # type: ignore[attr-defined]
            if done_id == task_id:
                return bool(ok), None if results is None else [bool(r) for r in results]


def main() -> None:
    mode, base_path, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    odirect = len(sys.argv) > 5 and sys.argv[5] == "odirect"
    from lmcache.lmcache_fs import LMCacheFSClient

    client = LMCacheFSClient(base_path, 2, "", odirect, 0)
    keys = [key_of(i) for i in range(count)]
    if mode == "write":
        views = [memoryview(payload_of(i, size)) for i in range(count)]
        ok, results = wait(client, client.submit_batch_set(keys, views))
        report = {"ok": ok, "results": results}
    else:
        buffers = [bytearray(size) for _ in range(count)]
        ok, results = wait(client, client.submit_batch_get(keys, [memoryview(b) for b in buffers]))
        match = [bytes(buffers[i]) == payload_of(i, size) for i in range(count)]
        report = {
            "ok": ok,
            "results": results,
            "match": match,
            "files": sorted(os.listdir(base_path)),
        }
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
