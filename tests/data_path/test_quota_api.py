"""The /quota HTTP API of a real server: shapes, `_default`, every 400, honest reporting.

It runs against the shared ``main`` server, whose eviction policy is LRU: the
API stores limits there but must say that no tier enforces them.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from lmcache_core.client.cpu_worker import CpuKVWorker
from tests.data_path.conftest import Server, WorkerFactory
from tests.data_path.kv import CHUNK, fresh_tokens, make_layout, pick_blocks, request_id

GIB = 1024**3
LAYOUT = make_layout(block_size=CHUNK)


@pytest.fixture
def api(main_server: Server) -> Iterator[str]:
    """The main server's URL; every quota set by the test is removed afterwards."""
    url = main_server.http_url
    yield url
    for salt in httpx.get(f"{url}/quota").json()["users"]:
        httpx.delete(f"{url}/quota/{salt}")


def test_put_get_delete_and_list(api: str) -> None:
    put = httpx.put(f"{api}/quota/tenant-a", json={"limit_gb": 1.5})
    assert put.status_code == 200
    assert put.json() == {
        "cache_salt": "tenant-a",
        "limit_gb": 1.5,
        "status": "ok",
        "enforced": False,
        "enforced_by": [],
    }
    assert httpx.put(f"{api}/quota/tenant-b", json={"limit_gb": 0}).status_code == 200
    assert httpx.put(f"{api}/quota/tenant-b", content=b'{"limit_gb": 2}').json()["limit_gb"] == 2

    got = httpx.get(f"{api}/quota/tenant-a").json()
    assert got == {
        "cache_salt": "tenant-a",
        "limit_gb": 1.5,
        "current_usage_gb": 0.0,
        "exists": True,
        "usage_by_tier_gb": {"l1": 0.0},
        "enforced": False,
        "enforced_by": [],
    }

    listing = httpx.get(f"{api}/quota").json()
    assert listing["users"] == {
        "tenant-a": {"limit_gb": 1.5, "current_usage_gb": 0.0},
        "tenant-b": {"limit_gb": 2.0, "current_usage_gb": 0.0},
    }
    assert listing["enforced"] is False
    assert listing["enforced_by"] == []
    assert "no tier enforces quotas" in listing["note"]

    deleted = httpx.delete(f"{api}/quota/tenant-a")
    assert deleted.status_code == 200
    assert deleted.json() == {"cache_salt": "tenant-a", "status": "removed"}
    assert httpx.delete(f"{api}/quota/tenant-a").json() == {
        "cache_salt": "tenant-a",
        "status": "not_found",
    }
    gone = httpx.get(f"{api}/quota/tenant-a").json()
    assert (gone["exists"], gone["limit_gb"]) == (False, 0.0)
    assert set(httpx.get(f"{api}/quota").json()["users"]) == {"tenant-b"}


def test_default_names_the_empty_salt_and_usage_is_reported(
    api: str, main_server: Server, make_worker: WorkerFactory
) -> None:
    worker: CpuKVWorker = make_worker(main_server.client(), LAYOUT)
    tokens = fresh_tokens(3 * CHUNK)
    salt = f"usage-{request_id()}"
    assert worker.store(
        worker.key(tokens, 0, len(tokens), request_id(), cache_salt=salt), pick_blocks(3)
    )
    plain = fresh_tokens(2 * CHUNK)
    assert worker.store(worker.key(plain, 0, len(plain), request_id()), pick_blocks(2))

    # LRU does not enforce: the salt without a quota keeps its data, and its usage shows.
    info = httpx.get(f"{api}/quota/{salt}").json()
    assert info["exists"] is False
    assert round(info["current_usage_gb"] * GIB) == 3 * 4096
    assert round(info["usage_by_tier_gb"]["l1"] * GIB) == 3 * 4096

    put = httpx.put(f"{api}/quota/_default", json={"limit_gb": 0.25}).json()
    assert put["cache_salt"] == "_default"
    default = httpx.get(f"{api}/quota/_default").json()
    assert default["cache_salt"] == "_default"
    assert default["exists"] is True
    assert default["current_usage_gb"] >= 2 * 4096 / GIB  # other tests may store unsalted too
    assert httpx.get(f"{api}/quota").json()["users"]["_default"]["limit_gb"] == 0.25
    assert httpx.delete(f"{api}/quota/_default").json()["status"] == "removed"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"1.5", "JSON object"),
        (b"{}", 'missing field "limit_gb"'),
        (b'{"limit": 1}', 'missing field "limit_gb"'),
        (b'{"limit_gb": 1, "extra": 2}', "unknown fields"),
        (b'{"limit_gb": "1"}', "must be a number"),
        (b'{"limit_gb": null}', "must be a number"),
        (b'{"limit_gb": true}', "must be a number"),
        (b'{"limit_gb": [1]}', "must be a number"),
        (b'{"limit_gb": NaN}', "finite"),
        (b'{"limit_gb": Infinity}', "finite"),
        (b'{"limit_gb": -Infinity}', "finite"),
        (b'{"limit_gb": 1e999}', "finite"),
        (b'{"limit_gb": -0.5}', ">= 0"),
        (b'{"limit_gb": -1}', ">= 0"),
        (b'{"limit_gb": 1e12}', "<="),
    ],
)
def test_bad_bodies_are_400_and_change_nothing(api: str, body: bytes, fragment: str) -> None:
    response = httpx.put(
        f"{api}/quota/bad-body", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["detail"]
    assert httpx.get(f"{api}/quota/bad-body").json()["exists"] is False


def test_an_oversized_body_is_refused(api: str) -> None:
    body = b'{"limit_gb": 1' + b" " * 5000 + b"}"
    response = httpx.put(f"{api}/quota/big-body", content=body)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert httpx.get(f"{api}/quota/big-body").json()["exists"] is False


@pytest.mark.parametrize("path_salt", ["a@b", "a%5Cb", "a%00b", "a%2Fb", "a/b", "", "s" * 129])
def test_invalid_salts_are_400_on_every_method(api: str, path_salt: str) -> None:
    url = f"{api}/quota/{path_salt}"
    for response in (
        httpx.put(url, json={"limit_gb": 1}),
        httpx.get(url),
        httpx.delete(url),
    ):
        assert response.status_code == 400, (response.request.method, response.text)
        assert "invalid cache_salt" in response.json()["detail"]
    assert httpx.get(f"{api}/quota").json()["users"] == {}


def test_the_openapi_page_documents_the_quota_api(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    path = spec["paths"]["/quota/{cache_salt}"]
    assert set(path) >= {"put", "get", "delete"}
    body = path["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["limit_gb"]["minimum"] == 0.0
    assert body["required"] == ["limit_gb"]
    assert "400" in path["put"]["responses"]
    schemas = spec["components"]["schemas"]
    for model in ("QuotaInfo", "QuotaSetResponse", "QuotaDeleteResponse", "QuotaList"):
        assert model in schemas, model
    assert set(schemas["QuotaInfo"]["properties"]) >= {
        "cache_salt",
        "limit_gb",
        "current_usage_gb",
        "exists",
    }
    assert "/quota" in spec["paths"]
