"""The HTTP admin API of a really started server: config, tiers, objects, the bearer token.

One server for the module: a shared L1 pool that a CPU worker stores objects
through, a ``mock`` L2 adapter the store controller copies every object to, and
a token.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from lmcache_core.client import MPClient
from lmcache_core.client.cpu_worker import CpuKVWorker
from lmcache_core.plugin.registry import PluginRegistry
from lmcache_core.protocol.types import CacheKey
from tests.data_path.kv import make_layout
from tests.helpers import app_without_data_path
from tests.server_process import clean_env, server_on_free_ports

# Starts real servers (seconds each): outside the quick loop, `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

TOKEN = "admin-token-" + uuid.uuid4().hex
CHUNK = 16
MOCK_L2 = {"type": "mock", "max_size_gb": 0.05, "mock_bandwidth_gb": 10}
SECRET_ENV = "sentinel-secret-" + uuid.uuid4().hex


@dataclass
class AdminServer:
    """A started server: its HTTP and ZeroMQ endpoints and the token it wants."""

    url: str
    zmq_url: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header (none without a token)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET with the token."""
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=10, **kwargs)

    def send(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        """POST/DELETE/PUT a JSON body with the token."""
        return httpx.request(
            method, f"{self.url}{path}", json=body, headers=self.headers, timeout=30, **kwargs
        )

    def list_all(self, tier: str, **params: Any) -> list[dict[str, Any]]:
        """Every object of a listing, following the page tokens."""
        objects: list[dict[str, Any]] = []
        token = None
        for _ in range(1000):
            query = {"tier": tier, **params, **({"page_token": token} if token else {})}
            page = self.get("/cache/objects", params=query)
            assert page.status_code == 200, page.text
            objects.extend(page.json()["objects"])
            token = page.json()["next_page_token"]
            if token is None:
                return objects
        raise AssertionError("the listing never ended")


@contextmanager
def admin_server(*args: str, token: str | None = None, **env: str) -> Iterator[AdminServer]:
    """A healthy server on free ports, its output drained; stopped at exit."""
    extra = {"LMCACHE_HTTP_ADMIN_TOKEN": token} if token else {}
    with server_on_free_ports(
        *("--l1-size-gb", "0.05", "--eviction-policy", "LRU", "--chunk-size", str(CHUNK)),
        *args,
        env=clean_env(**extra, **env),
    ) as server:
        yield AdminServer(server.http_url, server.zmq_url, token)


LAYOUT = make_layout(num_layers=1, head_dim=8)  # NHD fp16, 64 blocks of 4 tokens
BLOCKS_PER_CHUNK = CHUNK // LAYOUT.block_size


def store_chunks(server: AdminServer, model: str, chunks: int, salt: str = "") -> list[int]:
    """Store ``chunks`` fresh chunks of one request through a CPU worker; its tokens."""
    tokens = [random.getrandbits(31) for _ in range(chunks * CHUNK)]
    with (
        MPClient(server.zmq_url, timeout=10) as client,
        CpuKVWorker(client, LAYOUT, model_name=model) as worker,
    ):
        worker.register()
        key = worker.key(tokens, 0, len(tokens), uuid.uuid4().hex, cache_salt=salt)
        assert worker.store(key, list(range(1, 1 + chunks * BLOCKS_PER_CHUNK)))
        worker.unregister()
    return tokens


def lock_chunks(client: MPClient, model: str, tokens: list[int], salt: str = "") -> str:
    """Look the chunks up with one reader, leaving them read-locked; the request id."""
    rid = uuid.uuid4().hex
    key = CacheKey(model, 1, None, tokens, 0, len(tokens), rid, cache_salt=salt, num_kv_readers=1)
    client.lookup(key)
    hits = client.wait_prefetch_status(rid, 10.0)
    assert hits == len(tokens) // CHUNK, hits
    return rid


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[AdminServer]:
    with admin_server(
        "--l2-adapter",
        json.dumps(MOCK_L2),
        token=TOKEN,
        AWS_SECRET_ACCESS_KEY=SECRET_ENV,
    ) as started:
        yield started


def models(objects: list[dict[str, Any]]) -> list[str]:
    return [o["model_name"] for o in objects]


# --- configuration ---------------------------------------------------------------------------


def test_config_is_resolved_with_the_token_masked(server: AdminServer) -> None:
    response = server.get("/config")
    assert response.status_code == 200
    config = response.json()
    assert config["mp"]["chunk_size"] == CHUNK
    assert config["http"]["http_admin_token"] == "**********"
    assert config["http"]["run_script_api_enabled"] is False
    assert config["l2_adapters"]["l2_adapter"][0]["type"] == "mock"
    assert TOKEN not in response.text


def test_config_adapters_lists_the_live_tiers(server: AdminServer) -> None:
    body = server.get("/config/adapters").json()
    assert body["l1"]["tier"] == "l1"
    assert body["l1"]["kind"] == "shm"
    assert body["l1"]["capacity_bytes"] > 0
    assert body["l1"]["is_healthy"] is True
    [l2] = body["l2"]
    assert l2["index"] == 1
    assert l2["type"] == "mock"
    assert l2["config"]["max_size_gb"] == 0.05
    assert l2["status"]["is_healthy"] is True
    assert l2["status"]["capacity_bytes"] > 0


def test_no_endpoint_dumps_the_environment_or_the_token(server: AdminServer) -> None:
    paths = [r["path"] for r in read_only_routes(server) if "{" not in r["path"]]
    assert "/config" in paths and "/status" in paths
    for path in paths:
        text = server.get(path).text
        assert SECRET_ENV not in text, path
        assert TOKEN not in text, path
    assert server.get("/env").status_code == 404


def read_only_routes(server: AdminServer) -> list[dict[str, str]]:
    spec = server.get("/openapi.json").json()
    return [
        {"path": path, "method": method}
        for path, operations in spec["paths"].items()
        for method in operations
        if method == "get"
    ]


# --- the bearer token ------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(server: AdminServer) -> None:
    for method, path in [
        ("GET", "/status"),
        ("GET", "/config"),
        ("GET", "/cache/objects"),
        ("POST", "/cache/clear"),
        ("GET", "/quota"),  # another router: the middleware covers it too
        ("GET", "/plugins"),
    ]:
        response = httpx.request(method, f"{server.url}{path}", timeout=10)
        assert response.status_code == 401, (method, path)
        assert "authentication required" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    bad = [
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
    ]
    for headers in bad:
        response = httpx.get(f"{server.url}/status", headers=headers, timeout=10)
        assert response.status_code == 401, headers
    assert (
        "invalid bearer token"
        in httpx.get(f"{server.url}/status", headers=bad[0], timeout=10).json()["detail"]
    )
    assert server.get("/status").status_code == 200
    assert (
        httpx.get(
            f"{server.url}/status", headers={"authorization": f"bearer {TOKEN}"}, timeout=10
        ).status_code
        == 200
    )


def test_probes_and_api_description_stay_open(server: AdminServer) -> None:
    for path in ("/healthcheck", "/openapi.json", "/docs"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    # /metrics is open: whatever it answers, it is not an authentication failure.
    assert httpx.get(f"{server.url}/metrics", timeout=10).status_code != 401


def test_a_refused_clear_removes_nothing(server: AdminServer) -> None:
    model = "refused-" + uuid.uuid4().hex[:6]
    store_chunks(server, model, 2)
    response = httpx.post(f"{server.url}/cache/clear", json={"tier": "all"}, timeout=10)
    assert response.status_code == 401
    assert len(server.list_all("l1", model_name=model)) == 2


# --- listing -----------------------------------------------------------------------------------


def test_objects_are_listed_in_stable_pages_with_filters(server: AdminServer) -> None:
    tag = uuid.uuid4().hex[:6]
    first, second = f"list-a-{tag}", f"list-b-{tag}"
    store_chunks(server, first, 5)
    store_chunks(server, second, 3, salt=f"tenant-{tag}")

    pages: list[list[dict[str, Any]]] = []
    token = None
    while True:
        query = {"tier": "l1", "page_size": 2, **({"page_token": token} if token else {})}
        body = server.get("/cache/objects", params=query).json()
        pages.append(body["objects"])
        token = body["next_page_token"]
        if token is None:
            break
    assert all(len(page) <= 2 for page in pages)
    listed = [o for page in pages for o in page]
    ours = [o for o in listed if o["model_name"] in (first, second)]
    assert len(ours) == 8
    keys = [json.dumps(o, sort_keys=True) for o in listed]
    assert len(keys) == len(set(keys)), "an object was listed twice"
    order = [(o["model_name"], o["cache_salt"], o["kv_rank"], o["chunk_hash_hex"]) for o in listed]
    assert order == sorted(order)
    assert ours[0]["kv_rank"] == 0x01000100  # world size 1, rank 0, packed as upstream does
    assert ours[0]["object_group_id"] == 0

    assert models(server.list_all("l1", model_name=first)) == [first] * 5
    salted = server.list_all("l1", cache_salt=f"tenant-{tag}")
    assert models(salted) == [second] * 3
    assert all(o["cache_salt"] == f"tenant-{tag}" for o in salted)
    unsalted = server.list_all("l1", cache_salt="", model_name=second)
    assert unsalted == []
    page = server.get("/cache/objects", params={"tier": "l1", "model_name": first}).json()
    assert page["matched"] == 5

    # The store controller copies every object to the mock adapter.
    wait_for(lambda: len(server.list_all("l2", model_name=first)) == 5)
    for adapter in ("1", "mock"):
        listed_l2 = server.list_all("l2", model_name=first, adapter=adapter)
        assert [(o["adapter"], o["adapter_type"]) for o in listed_l2] == [(1, "mock")] * 5
    assert {o["chunk_hash_hex"] for o in listed_l2} == {
        o["chunk_hash_hex"] for o in server.list_all("l1", model_name=first)
    }


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"tier": "l3"}, "tier must be"),
        ({"tier": "all"}, "tier must be"),
        ({"page_size": 0}, "page_size must be between 1 and 5000"),
        ({"page_size": 5001}, "page_size must be between 1 and 5000"),
        ({"page_token": "not-a-token"}, "invalid page_token"),
        ({"tier": "l1", "adapter": "1"}, "adapter applies to tier l2 only"),
        ({"tier": "l2", "adapter": "2"}, "no L2 adapter #2"),
        ({"tier": "l2", "adapter": "0"}, "no L2 adapter #0"),
        ({"tier": "l2", "adapter": "fs"}, "no L2 adapter of type 'fs'"),
    ],
)
def test_bad_listing_requests_are_400(
    server: AdminServer, params: dict[str, Any], needle: str
) -> None:
    response = server.get("/cache/objects", params=params)
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]


def test_a_page_token_belongs_to_its_tier(server: AdminServer) -> None:
    store_chunks(server, "token-tier-" + uuid.uuid4().hex[:6], 2)
    token = server.get("/cache/objects", params={"tier": "l1", "page_size": 1}).json()[
        "next_page_token"
    ]
    assert token is not None
    response = server.get("/cache/objects", params={"tier": "l2", "page_token": token})
    assert response.status_code == 400
    assert "belongs to a listing of tier 'l1'" in response.json()["detail"]


# --- deleting ----------------------------------------------------------------------------------


def test_delete_objects_by_key_from_both_tiers(server: AdminServer) -> None:
    model = "delete-" + uuid.uuid4().hex[:6]
    store_chunks(server, model, 4)
    wait_for(lambda: len(server.list_all("l2", model_name=model)) == 4)
    objects = server.list_all("l1", model_name=model)
    doomed = objects[:2]
    response = server.send("DELETE", "/cache/objects", {"keys": doomed, "tier": "all"})
    assert response.status_code == 200, response.text
    l1, l2 = response.json()["results"]
    assert (l1["tier"], l1["removed"], l1["kept_locked"], l1["absent"]) == ("l1", 2, [], 0)
    assert (l2["tier"], l2["adapter"], l2["removed"], l2["absent"]) == ("l2", 1, 2, 0)
    survivors = {o["chunk_hash_hex"] for o in objects[2:]}
    assert {o["chunk_hash_hex"] for o in server.list_all("l1", model_name=model)} == survivors
    assert {o["chunk_hash_hex"] for o in server.list_all("l2", model_name=model)} == survivors

    again = server.send("DELETE", "/cache/objects", {"keys": doomed, "tier": "l1"}).json()
    assert again["results"] == [{"tier": "l1", "removed": 0, "kept_locked": [], "absent": 2}]
    # The default tier is L2, as upstream's.
    default = server.send("DELETE", "/cache/objects", {"keys": objects[2:3]}).json()
    assert [(r["tier"], r["removed"]) for r in default["results"]] == [("l2", 1)]
    assert len(server.list_all("l1", model_name=model)) == 2


def test_delete_keeps_read_locked_objects_unless_forced(server: AdminServer) -> None:
    model = "locked-del-" + uuid.uuid4().hex[:6]
    tokens = store_chunks(server, model, 2)
    keys = server.list_all("l1", model_name=model)
    with MPClient(server.zmq_url, timeout=10) as client:
        rid = lock_chunks(client, model, tokens)
        body = server.send("DELETE", "/cache/objects", {"keys": keys, "tier": "l1"}).json()
        [result] = body["results"]
        assert result["removed"] == 0
        assert sorted(k["chunk_hash_hex"] for k in result["kept_locked"]) == sorted(
            k["chunk_hash_hex"] for k in keys
        )
        forced = server.send(
            "DELETE", "/cache/objects", {"keys": keys, "tier": "l1", "force": True}
        ).json()
        assert forced["results"][0]["removed"] == 2
        client.end_session(rid)
    assert server.list_all("l1", model_name=model) == []


GOOD_KEY = {"chunk_hash_hex": "ab" * 32, "model_name": "m", "kv_rank": 0}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"keys": []}, "keys: List should have at least 1 item"),
        ({"keys": [{**GOOD_KEY, "chunk_hash_hex": "xyz"}]}, "keys.0.chunk_hash_hex"),
        ({"keys": [{**GOOD_KEY, "chunk_hash_hex": "abc"}]}, "keys.0.chunk_hash_hex"),
        ({"keys": [{**GOOD_KEY, "chunk_hash_hex": "ab" * 65}]}, "keys.0.chunk_hash_hex"),
        ({"keys": [{**GOOD_KEY, "model_name": "a@b"}]}, "may not contain '@'"),
        ({"keys": [{**GOOD_KEY, "model_name": ""}]}, "keys.0.model_name"),
        ({"keys": [{**GOOD_KEY, "kv_rank": -1}]}, "keys.0.kv_rank"),
        ({"keys": [{**GOOD_KEY, "kv_rank": "0"}]}, "keys.0.kv_rank"),
        ({"keys": [{**GOOD_KEY, "object_group_id": -2}]}, "keys.0.object_group_id"),
        ({"keys": [{**GOOD_KEY, "cache_salt": "a/b"}]}, "cache_salt may not contain"),
        ({"keys": [{**GOOD_KEY, "extra": 1}]}, "keys.0.extra: Extra inputs are not permitted"),
        ({"keys": [{"model_name": "m", "kv_rank": 0}]}, "keys.0.chunk_hash_hex: Field required"),
        ({"keys": [GOOD_KEY], "tier": "l3"}, "tier: Input should be 'l1', 'l2' or 'all'"),
        ({"keys": [GOOD_KEY], "force": "yes"}, "force: Input should be a valid boolean"),
        ({"keys": [GOOD_KEY], "tier": "l1", "adapter": 1}, "adapter applies to tier l2"),
        ({"keys": [GOOD_KEY], "adapter": 3}, "no L2 adapter #3"),
        ({"keys": [GOOD_KEY] * 10_001}, "keys: List should have at most 10000 items"),
        ([GOOD_KEY], "must be a JSON object"),
        (None, "a JSON request body is required"),
    ],
    ids=lambda v: None if isinstance(v, str) else "",
)
def test_bad_delete_requests_are_400(server: AdminServer, body: Any, needle: str) -> None:
    response = server.send("DELETE", "/cache/objects", body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]


def test_a_delete_body_that_is_not_json_is_400(server: AdminServer) -> None:
    response = httpx.request(
        "DELETE", f"{server.url}/cache/objects", content=b"{nope", headers=server.headers
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]


# --- clearing ----------------------------------------------------------------------------------


def test_clear_keeps_locked_objects_until_forced(server: AdminServer) -> None:
    model = "clear-" + uuid.uuid4().hex[:6]
    tokens = store_chunks(server, model, 3)
    wait_for(lambda: len(server.list_all("l2", model_name=model)) == 3)
    with MPClient(server.zmq_url, timeout=10) as client:
        rid = lock_chunks(client, model, tokens)
        cleared = server.send("POST", "/cache/clear", {"tier": "l1"}).json()
        assert cleared["tier"] == "l1" and cleared["force"] is False
        [l1] = cleared["results"]
        assert l1["tier"] == "l1" and l1["kept_locked"] >= 3
        assert len(server.list_all("l1", model_name=model)) == 3
        assert len(server.list_all("l2", model_name=model)) == 3

        forced = server.send("POST", "/cache/clear", {"tier": "l1", "force": True}).json()
        assert forced["results"][0]["removed"] >= 3
        assert forced["results"][0]["kept_locked"] == 0
        assert server.list_all("l1") == []
        client.end_session(rid)

    l2 = server.send("POST", "/cache/clear", {"tier": "l2"}).json()["results"]
    assert [(r["tier"], r["adapter"], r["adapter_type"]) for r in l2] == [("l2", 1, "mock")]
    assert l2[0]["removed"] >= 3
    assert server.list_all("l2") == []
    # An empty body clears L1, as upstream's default.
    store_chunks(server, model, 1)
    response = httpx.post(f"{server.url}/cache/clear", headers=server.headers, timeout=10)
    assert [r["tier"] for r in response.json()["results"]] == ["l1"]
    assert server.list_all("l1") == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"tier": "l3"}, "tier: Input should be 'l1', 'l2' or 'all'"),
        ({"tier": "l1", "force": "yes"}, "force: Input should be a valid boolean"),
        ({"tier": "l1", "keys": []}, "keys: Extra inputs are not permitted"),
        ("l1", "must be a JSON object"),
    ],
)
def test_bad_clear_requests_are_400(server: AdminServer, body: Any, needle: str) -> None:
    response = server.send("POST", "/cache/clear", body)
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]


def test_run_script_is_404_unless_enabled(server: AdminServer) -> None:
    response = httpx.post(
        f"{server.url}/run_script",
        files={"script": ("s.py", b"result = 1")},
        headers=server.headers,
        timeout=10,
    )
    assert response.status_code == 404
    assert "--run-script-api-enabled" in response.json()["detail"]


# --- no GET mutates ------------------------------------------------------------------------------

READ_ONLY_GET_ROUTES = frozenset(
    {
        "/healthcheck",
        "/status",
        "/plugins",
        "/config",
        "/config/adapters",
        "/cache/objects",
        "/quota",
        "/quota/{cache_salt}",
        "/lookups",
        "/lookups/{request_id}",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)
"""Every GET route, each reviewed to change nothing. A new GET route fails the test
below until it is reviewed and added here: anything that changes state is POST,
PUT or DELETE."""


def test_no_get_route_mutates(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LMCACHE_HTTP_ADMIN_TOKEN", "LMCACHE_L2_ADAPTER"):
        monkeypatch.delenv(name, raising=False)
    app = app_without_data_path({"l1_size_gb": 0.01, "eviction_policy": "LRU"}, PluginRegistry())
    # Routes of included routers are only reachable through the OpenAPI description in
    # this FastAPI; the app's own routes (the docs pages) are listed directly.
    methods: dict[str, set[str]] = {}
    for path, operations in app.openapi()["paths"].items():
        methods.setdefault(path, set()).update(m.upper() for m in operations)
    for route in app.routes:
        path, verbs = getattr(route, "path", None), getattr(route, "methods", None)
        if isinstance(path, str) and verbs:
            methods.setdefault(path, set()).update(verbs)
    get_routes = {path for path, verbs in methods.items() if "GET" in verbs}
    assert {"/config", "/cache/objects", "/status"} <= get_routes
    assert get_routes - READ_ONLY_GET_ROUTES == set()
    assert "POST" in methods["/cache/clear"] and "GET" not in methods["/cache/clear"]
    assert methods["/run_script"] == {"POST"}
    assert methods["/cache/objects"] == {"GET", "DELETE"}
