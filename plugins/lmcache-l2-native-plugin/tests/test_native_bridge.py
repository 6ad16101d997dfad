"""The ``native_plugin`` loader and the native-client bridge, with small clients made to misbehave.

The conformance suite runs on a real threaded client in
``examples/lmcache-example-l2``; here the clients are tiny and synchronous, so each
test can force one situation: a completion reported before ``submit`` returns its
id, a failed task, a wrong result count, a submit that raises, a missing method,
no delete, no event fd, an event fd that goes bad.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from lmcache_l2_native_plugin.adapter import build_native_plugin
from lmcache_l2_native_plugin.config import NativePluginAdapterConfig
from lmcache_l2_native_plugin.native_bridge import NativeClientAdapter

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.context import (
    DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS,
    L2AdapterContext,
)
from lmcache_core.storage.l2.key_names import native_key_name, parse_native_key_name
from lmcache_core.storage.l2.loading import AdapterLoadError
from lmcache_core.storage.l2.object_format import HEADER_SIZE
from lmcache_core.testing.l2_conformance import make_keys, make_payloads

TIMEOUT = 10.0


class SyncClient:
    """A dict store that finishes every task inside ``submit_*``, before returning its id."""

    def __init__(self, with_fd: bool = True) -> None:
        self.values: dict[str, bytes] = {}
        self.done: list[tuple[int, bool, str, list[bool] | None]] = []
        self.next_id = 0
        self.closed = False
        self.drains = 0
        self.fd = os.eventfd(0, os.EFD_NONBLOCK) if with_fd else None
        self.lock = threading.Lock()

    def event_fd(self) -> int | None:
        return self.fd

    def _complete(self, results: list[bool] | None, ok: bool = True, error: str = "") -> int:
        with self.lock:
            self.next_id += 1
            self.done.append((self.next_id, ok, error, results))
        if self.fd is not None:
            os.eventfd_write(self.fd, 1)
        return self.next_id

    def submit_batch_set(self, keys: Sequence[str], buffers: Sequence[memoryview]) -> int:
        for key, buffer in zip(keys, buffers, strict=True):
            self.values[key] = bytes(buffer)
        return self._complete(None)

    def submit_batch_get(self, keys: Sequence[str], buffers: Sequence[memoryview]) -> int:
        results = []
        for key, buffer in zip(keys, buffers, strict=True):
            value = self.values.get(key)
            hit = value is not None and len(value) == buffer.nbytes
            if hit:
                buffer[:] = value
            results.append(hit)
        return self._complete(results)

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        return self._complete([key in self.values for key in keys])

    def submit_batch_delete(self, keys: Sequence[str]) -> int:
        return self._complete([self.values.pop(key, None) is not None for key in keys])

    def drain_completions(self) -> list[tuple[int, bool, str, list[bool] | None]]:
        self.drains += 1
        if self.fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.fd)
        with self.lock:
            done, self.done = self.done, []
        return done

    def close(self) -> None:
        self.closed = True
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class NoDeleteClient(SyncClient):
    submit_batch_delete = None  # type: ignore[assignment]


class FailingClient(SyncClient):
    """Every task fails as a whole."""

    def _complete(self, results: list[bool] | None, ok: bool = True, error: str = "") -> int:
        return super()._complete(None, ok=False, error="disk on fire")


class ShortResultsClient(SyncClient):
    """Answers one result too few."""

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        return self._complete([True] * (len(keys) - 1))


class RaisingClient(SyncClient):
    def submit_batch_set(self, keys: Sequence[str], buffers: Sequence[memoryview]) -> int:
        raise RuntimeError("queue full")


class LaterClient(SyncClient):
    """Completes a task only when the test calls :meth:`release` (no event fd)."""

    def __init__(self) -> None:
        super().__init__(with_fd=False)
        self.held: list[tuple[int, bool, str, list[bool] | None]] = []

    def submit_batch_exists(self, keys: Sequence[str]) -> int:
        self.next_id += 1
        self.held.append((self.next_id, True, "", [key in self.values for key in keys]))
        return self.next_id

    def release(self) -> None:
        with self.lock:
            self.done += self.held
            self.held = []


@pytest.fixture
def adapters() -> Iterator[list[NativeClientAdapter]]:
    made: list[NativeClientAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def bridge(made: list[NativeClientAdapter], client: Any, **options: Any) -> NativeClientAdapter:
    adapter = NativeClientAdapter(client, label=type(client).__name__, **options)
    adapter.start()
    made.append(adapter)
    return adapter


def test_keys_reach_the_client_as_upstream_key_strings(
    adapters: list[NativeClientAdapter],
) -> None:
    client = SyncClient()
    adapter = bridge(adapters, client, object_format="raw")
    salted = ObjectKey(bytes.fromhex("ab" * 32), "org/model", 0x02010201, 3, "tenant")
    plain = salted._replace(cache_salt="")
    assert adapter.submit_store([salted, plain], [b"x", b"y"]).result(TIMEOUT) == [True, True]
    assert sorted(client.values) == [
        "org/model@02010201@3@" + "ab" * 32,
        "org/model@02010201@3@" + "ab" * 32 + "@tenant",
    ]
    assert native_key_name(salted).endswith("@tenant")
    assert parse_native_key_name(native_key_name(salted)) == salted
    assert parse_native_key_name(native_key_name(plain)) == plain
    for bad in ("m@1@0@ab", "m@0000000G@0@ab", "m@00000001@0@ABAB", "m@00000001@0@ab@", "x"):
        assert parse_native_key_name(bad) is None, bad


def test_completions_before_the_id_is_returned_still_resolve(
    adapters: list[NativeClientAdapter],
) -> None:
    # SyncClient completes inside submit: the bridge sees the completion first.
    for with_fd in (True, False):
        adapter = bridge(adapters, SyncClient(with_fd=with_fd), poll_interval_s=0.001)
        keys = make_keys(3, seed=int(with_fd))
        payloads = make_payloads([10, 20, 30])
        assert adapter.submit_store(keys, payloads).result(TIMEOUT) == [True] * 3
        buffers = [memoryview(bytearray(n)) for n in (10, 20, 30)]
        assert adapter.submit_load(keys, buffers).result(TIMEOUT) == [True] * 3
        assert [bytes(b) for b in buffers] == payloads


def test_framed_objects_carry_the_header_raw_ones_do_not(
    adapters: list[NativeClientAdapter],
) -> None:
    keys = make_keys(1)
    for object_format, extra in (("framed", HEADER_SIZE), ("raw", 0)):
        client = SyncClient()
        adapter = bridge(adapters, client, object_format=object_format)
        assert adapter.submit_store(keys, [b"p" * 100]).result(TIMEOUT) == [True]
        [stored] = client.values.values()
        assert len(stored) == 100 + extra
        assert stored.endswith(b"p" * 100)
        assert adapter.usage().used_bytes == 100 + extra


def test_a_missing_required_method_fails_naming_it_and_closes_the_client() -> None:
    class NoDrain:
        closed = False

        def submit_batch_set(self, keys: Any, buffers: Any) -> int:
            return 1

        def submit_batch_get(self, keys: Any, buffers: Any) -> int:
            return 1

        def close(self) -> None:
            self.closed = True

    client = NoDrain()
    with pytest.raises(AdapterLoadError) as raised:
        NativeClientAdapter(client, label="vendor.NoDrain")
    message = str(raised.value)
    assert "vendor.NoDrain" in message
    assert "lacks submit_batch_exists, drain_completions" in message
    assert client.closed


def test_without_delete_deletes_are_no_ops_said_in_status_and_logged(
    adapters: list[NativeClientAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    client = NoDeleteClient()
    with caplog.at_level(logging.WARNING, logger="lmcache.l2"):
        adapter = bridge(adapters, client)
    assert "has no submit_batch_delete: deletes and eviction are no-ops" in caplog.text
    keys = make_keys(2)
    assert adapter.submit_store(keys, make_payloads([8, 8])).result(TIMEOUT) == [True, True]
    assert adapter.delete(keys, force=True) == 0
    assert len(client.values) == 2
    assert adapter.status()["deletes"].startswith("no-op")
    assert adapter.status()["is_healthy"] is True
    assert bridge(adapters, SyncClient()).status()["deletes"] == "supported"


def test_a_failed_task_is_a_miss_and_counted(adapters: list[NativeClientAdapter]) -> None:
    adapter = bridge(adapters, FailingClient())
    keys = make_keys(2)
    assert adapter.submit_store(keys, make_payloads([8, 8])).result(TIMEOUT) == [False, False]
    assert adapter.submit_lookup_and_lock(keys).result(TIMEOUT) == [False, False]
    status = adapter.status()
    assert status["errors"] == 2 and status["used_bytes"] == 0 and status["objects"] == 0


def test_a_wrong_result_count_is_a_miss(adapters: list[NativeClientAdapter]) -> None:
    adapter = bridge(adapters, ShortResultsClient())
    keys = make_keys(3)
    assert adapter.submit_store(keys, make_payloads([8] * 3)).result(TIMEOUT) == [True] * 3
    assert adapter.submit_lookup_and_lock(keys).result(TIMEOUT) == [False] * 3
    assert adapter.status()["errors"] == 1
    assert adapter.delete(keys) == 3  # no pin was taken by the rejected lookup


def test_a_submit_that_raises_fails_the_batch_and_releases_its_reservation(
    adapters: list[NativeClientAdapter],
) -> None:
    adapter = bridge(adapters, RaisingClient(), capacity_bytes=1000)
    keys = make_keys(2)
    assert adapter.submit_store(keys, make_payloads([100, 100])).result(TIMEOUT) == [False, False]
    assert adapter.status()["errors"] == 1
    assert adapter._reserved == 0  # a later store that fits is not refused for phantom bytes


def test_without_an_event_fd_it_polls_only_while_tasks_are_in_flight(
    adapters: list[NativeClientAdapter],
) -> None:
    client = LaterClient()
    adapter = bridge(adapters, client, poll_interval_s=0.01)
    assert adapter.status()["completion"] == "periodic_poll"
    time.sleep(0.3)
    assert client.drains <= 1, "an idle bridge must not poll"
    future = adapter.submit_lookup_and_lock(make_keys(1))
    time.sleep(0.3)
    assert not future.done()
    assert client.drains >= 3, "a task in flight must be re-polled at the interval"
    client.release()
    assert future.result(TIMEOUT) == [False]
    polls = client.drains
    time.sleep(0.3)
    assert client.drains - polls <= 1, "polling must stop once nothing is in flight"


def test_with_an_event_fd_an_idle_bridge_sleeps(adapters: list[NativeClientAdapter]) -> None:
    client = SyncClient()
    adapter = bridge(adapters, client)
    assert adapter.status()["completion"] == "event_fd"
    assert adapter.submit_lookup_and_lock(make_keys(1)).result(TIMEOUT) == [False]
    drains = client.drains
    time.sleep(0.3)
    assert client.drains - drains <= 1


def test_an_event_fd_that_goes_bad_breaks_the_adapter_loudly(
    adapters: list[NativeClientAdapter],
) -> None:
    client = LaterClient()
    read_end, write_end = os.pipe()
    client.fd = read_end  # a pipe-style event fd
    adapter = bridge(adapters, client)
    future = adapter.submit_lookup_and_lock(make_keys(1))
    os.close(write_end)  # nothing can signal it any more: poll() reports POLLHUP
    assert future.result(TIMEOUT) == [False]
    deadline = time.monotonic() + TIMEOUT
    while adapter.status()["is_healthy"] and time.monotonic() < deadline:
        time.sleep(0.01)
    status = adapter.status()
    assert status["is_healthy"] is False
    assert "event fd" in status["error"]
    with pytest.raises(RuntimeError, match="broken"):
        adapter.submit_lookup_and_lock(make_keys(1))


def test_close_waits_for_in_flight_tasks_then_closes_the_client(
    adapters: list[NativeClientAdapter],
) -> None:
    client = LaterClient()
    adapter = bridge(adapters, client, poll_interval_s=0.005)
    future = adapter.submit_lookup_and_lock(make_keys(1))
    threading.Timer(0.2, client.release).start()
    adapter.close()
    assert future.done() and future.result(0) == [False]
    assert client.closed


def test_a_blocking_delete_from_a_completion_callback_fails_instead_of_hanging(
    adapters: list[NativeClientAdapter],
) -> None:
    client = LaterClient()
    adapter = bridge(adapters, client, poll_interval_s=0.005)
    keys = make_keys(1)
    assert adapter.submit_store(keys, make_payloads([8])).result(TIMEOUT) == [True]
    client.submit_batch_delete = client.submit_batch_exists  # type: ignore[method-assign]
    deleted: list[int] = []
    future = adapter.submit_lookup_and_lock(keys)
    future.add_done_callback(lambda _: deleted.append(adapter.delete(keys, force=True)))
    client.release()  # resolved on the completion thread, which runs the callback
    deadline = time.monotonic() + TIMEOUT
    while not deleted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert deleted == [0]
    assert adapter.status()["errors"] == 1
    client.release()  # the delete task itself, so close() need not wait for it


def test_close_gives_up_on_a_task_after_the_bound(adapters: list[NativeClientAdapter]) -> None:
    client = LaterClient()
    adapter = bridge(adapters, client, op_timeout_s=0.2)
    future = adapter.submit_lookup_and_lock(make_keys(1))
    adapter.close()  # never released: failed after 0.2 s instead of hanging
    assert future.result(0) == [False]
    assert client.closed


def test_persist_false_deletes_what_it_stored_at_close(
    adapters: list[NativeClientAdapter],
) -> None:
    client = SyncClient()
    adapter = bridge(adapters, client, persist=False)
    assert adapter.submit_store(make_keys(3), make_payloads([4] * 3)).result(TIMEOUT) == [True] * 3
    client.values["foreign@00000000@0@ab"] = b"not ours"
    adapter.close()
    assert client.values == {"foreign@00000000@0@ab": b"not ours"}


def test_list_keys_rebuilds_usage_at_start(adapters: list[NativeClientAdapter]) -> None:
    class Listing(SyncClient):
        def list_keys(self) -> list[tuple[str, int]]:
            return [(key, len(value)) for key, value in self.values.items()]

    client = Listing()
    keys = make_keys(2, salt="tenant-a")
    first = bridge(adapters, client)
    assert first.submit_store(keys, make_payloads([10, 20])).result(TIMEOUT) == [True, True]
    client.values["not a key string"] = b"ignored"
    second = bridge(adapters, client)
    assert sorted(second.keys()) == sorted(keys)
    assert second.usage().by_salt == {"tenant-a": 30 + 2 * HEADER_SIZE}


# -- the loader -------------------------------------------------------------------------

VENDOR = """
import os


class Client:
    def __init__(self, greeting="hi"):
        self.greeting = greeting
        self.done = []
        self.fd = os.eventfd(0, os.EFD_NONBLOCK)

    def event_fd(self):
        return self.fd

    def submit_batch_set(self, keys, buffers):
        return self._finish([True] * len(keys))

    def submit_batch_get(self, keys, buffers):
        return self._finish([False] * len(keys))

    def submit_batch_exists(self, keys):
        return self._finish([False] * len(keys))

    def _finish(self, results):
        self.done.append((len(self.done) + 1000, True, "", results))
        os.eventfd_write(self.fd, 1)
        return self.done[-1][0]

    def drain_completions(self):
        done, self.done = self.done, []
        return done

    def close(self):
        os.close(self.fd)


class Incomplete:
    closed = False

    def submit_batch_set(self, keys, buffers):
        return 1

    def close(self):
        Incomplete.closed = True


class BadFd(Client):
    def event_fd(self):
        return "3"


not_a_class = 42
"""


@pytest.fixture
def vendor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"vendor_native_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(VENDOR))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def native_config(module: str, class_name: str, **extra: Any) -> NativePluginAdapterConfig:
    return NativePluginAdapterConfig.model_validate(
        {"type": "native_plugin", "module_path": module, "class_name": class_name, **extra}
    )


def test_the_poll_interval_comes_from_the_adapter_context(vendor: str) -> None:
    config = native_config(vendor, "Client")
    adapter = build_native_plugin(config, L2AdapterContext(periodic_notifier_interval_ms=7))
    try:
        assert adapter._interval_s == 0.007
    finally:
        adapter.close()
    default = build_native_plugin(config)
    try:
        assert default._interval_s == DEFAULT_PERIODIC_NOTIFIER_INTERVAL_MS / 1000
    finally:
        default.close()


def test_builds_the_client_with_adapter_params_as_keywords(vendor: str) -> None:
    config = native_config(
        vendor, "Client", adapter_params={"greeting": "hello"}, max_capacity_gb=0.5
    )
    adapter = build_native_plugin(config)
    try:
        assert adapter._client.greeting == "hello"
        assert adapter.capacity_bytes == 1 << 29
        assert adapter.status()["client"] == f"{vendor}.Client"
        assert adapter.deletes_supported is False
    finally:
        adapter.close()


@pytest.mark.parametrize(
    ("module", "class_name", "extra", "message"),
    [
        ("no_such_vendor_xyz", "Client", {}, "cannot import 'no_such_vendor_xyz'"),
        (None, "Missing", {}, "has no attribute 'Missing'"),
        (None, "not_a_class", {}, "an attribute that is not a class 'not_a_class'"),
        (None, "Client", {"adapter_params": {"colour": 1}}, r"Client\(\*\*adapter_params\) failed"),
        (None, "Incomplete", {}, "lacks submit_batch_get, submit_batch_exists, drain_completions"),
        (None, "BadFd", {}, r"event_fd\(\) returned '3', not an int or None"),
    ],
)
def test_loader_errors_say_what_is_wrong(
    vendor: str, module: str | None, class_name: str, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(AdapterLoadError, match=message):
        build_native_plugin(native_config(module or vendor, class_name, **extra))
    if class_name == "Incomplete":
        assert sys.modules[vendor].Incomplete.closed, "a rejected client must be closed"
