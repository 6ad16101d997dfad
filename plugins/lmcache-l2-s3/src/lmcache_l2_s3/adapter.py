"""``S3L2Adapter``: one object per key in an S3 bucket (the L2 adapter ``s3``).

Object names are upstream LMCache's native key strings
(:mod:`lmcache_core.storage.l2.key_names`), so a store written with ``"format": "raw"``
is byte-compatible with upstream's ``s3`` adapter::

    <model>@<kv_rank, 8 hex>@<group, hex>@<chunk hash, hex>[@<salt>]

A store is one PUT of the whole object, so a reader sees the old complete object or
the new one, never a partial one. A lookup is a HEAD (nothing is cached: the bucket
is the truth), a load a GET whose length must be the expected one (any other length
is a miss, never partial data) and a delete a HEAD then a DELETE. At start the
bucket is listed (ListObjectsV2) to rebuild the index (key -> object size), so usage
holds across restarts.

A load of the L2 tier (scratch buffers) reads the body straight into the caller's
buffer, a window at a time, instead of into one new object that is then copied. In
the ``framed`` format the frame's checksum already covers every byte end to end, so
botocore's own CRC32 of each PUT body and GET body (its "flexible checksums") is
not computed a second time; in the ``raw`` format it is kept.

Failures are per call: a timeout, a refused connection or a server error fails the
call that met it (False or a miss, counted in ``errors``), and the next call tries
the server again. Unlike upstream, there is no breaker that disables the adapter
for good after a few errors.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from lmcache_core.storage.keys import ObjectKey
from lmcache_core.storage.l2.adapter import L2AdapterV1, ObjectFormat
from lmcache_core.storage.l2.context import DEFAULT_L2_ADAPTER_CONTEXT, L2AdapterContext
from lmcache_core.storage.l2.key_names import native_key_name, parse_native_key_name
from lmcache_l2_s3.config import S3AdapterConfig

logger = logging.getLogger("lmcache.l2.s3")

MAX_KEY_BYTES = 1024
"""S3's limit on an object name (UTF-8 bytes)."""
GIB = 1 << 30
EXPRESS_SUFFIX = "--x-s3"
"""How S3 Express One Zone (directory) bucket names end."""

AddressingStyle = Literal["virtual", "path", "auto"]
V = TypeVar("V")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
READ_WINDOW = 1 << 20
"""Bytes asked of the response body per ``readinto`` (small, reused temporaries)."""


# -- the endpoint ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where the bucket is: its name, the server and how requests address it.

    Attributes:
        bucket: The bucket name.
        host: The server, ``host[:port]`` (an IPv6 address in brackets).
        scheme: ``https``, or ``http`` with ``disable_tls``.
        addressing_style: ``virtual`` or ``path`` (``auto`` resolved).
    """

    bucket: str
    host: str
    scheme: str
    addressing_style: Literal["virtual", "path"]

    @property
    def url(self) -> str:
        """The endpoint URL given to the client (without the bucket)."""
        return f"{self.scheme}://{self.host}"


def host_name(host: str) -> str:
    """``host[:port]`` without the port (and without the brackets of an IPv6 address)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_local_host(host: str) -> bool:
    """Whether ``host[:port]`` is an IP address or ``localhost``: no virtual-hosted names."""
    name = host_name(host).lower()
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_endpoint(
    endpoint: str, *, disable_tls: bool = False, addressing_style: AddressingStyle = "auto"
) -> S3Endpoint:
    """Split ``s3://<bucket>.<host>[:port]`` (or without ``s3://``) into bucket and server.

    The bucket is the part before the first dot, so its name cannot hold a dot.

    Raises:
        ValueError: The endpoint has no bucket or no host, or a scheme other than s3.
    """
    text = endpoint.strip().removeprefix("s3://").rstrip("/")
    bucket, _, host = text.partition(".")
    if "://" in text or "/" in text or not bucket or not host:
        raise ValueError(
            f"s3_endpoint {endpoint!r} must be 's3://<bucket>.<host>' or '<bucket>.<host>'"
        )
    if addressing_style == "auto":
        style: Literal["virtual", "path"] = "path" if is_local_host(host) else "virtual"
    else:
        style = addressing_style
    return S3Endpoint(bucket, host, "http" if disable_tls else "https", style)


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "")


def _is_missing(exc: ClientError) -> bool:
    """The object is not there (a GET's ``NoSuchKey``, a HEAD's bare 404).

    A missing bucket (``NoSuchBucket``) is a failure, not a miss; a HEAD cannot
    tell the two apart (its 404 has no body), so there it reads as a miss.
    """
    return _error_code(exc) in _MISSING


# -- the adapter -------------------------------------------------------------------------


class S3L2Adapter(L2AdapterV1):
    """One object per key in an S3 bucket, through boto3.

    Args:
        endpoint: ``s3://<bucket>.<host>[:port]`` or ``<bucket>.<host>[:port]``.
        region: The bucket's region (signing).
        num_io_threads: Requests in flight at most: the I/O threads and the client's
            connection pool. A batch's keys are spread over them.
        addressing_style: ``virtual``, ``path`` or ``auto`` (path for an IP or
            localhost host, virtual otherwise).
        disable_tls: Talk plain HTTP.
        enable_s3express: The bucket is an S3 Express One Zone directory bucket
            (its name must end with ``--x-s3``; boto3 signs its sessions).
        access_key_id: Static access key id; None uses boto3's default chain.
        secret_access_key: Static secret key (with ``access_key_id``).
        capacity_bytes: Capacity to report and enforce (0: unlimited).
        object_format: ``framed`` or ``raw`` (upstream-compatible bytes).
        num_workers: Threads running batches (each spreads its keys over the I/O threads).
        connect_timeout_s: Bound on opening a connection.
        read_timeout_s: Bound on waiting for the server's bytes.
        max_attempts: Attempts per request, the first included (botocore's standard
            retry mode: throttling, 5xx and connection errors are retried with backoff).
        persist: Keep the objects at close; False deletes the objects this adapter indexes.
        client: A ready boto3 S3 client to use instead of building one (tests).

    Raises:
        ValueError: A bad endpoint, or ``enable_s3express`` with a bucket that is not
            a directory bucket.
    """

    list_page_size: int = 1000
    """Objects per ListObjectsV2 page when the index is rebuilt (S3's maximum)."""

    def __init__(
        self,
        endpoint: str,
        *,
        region: str,
        num_io_threads: int = 64,
        addressing_style: AddressingStyle = "auto",
        disable_tls: bool = False,
        enable_s3express: bool = False,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        capacity_bytes: int = 0,
        object_format: ObjectFormat = "framed",
        num_workers: int = 4,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_attempts: int = 3,
        persist: bool = True,
        client: Any = None,
    ) -> None:
        if num_io_threads < 1 or max_attempts < 1:
            raise ValueError("num_io_threads and max_attempts must be >= 1")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither")
        self.endpoint = parse_endpoint(
            endpoint, disable_tls=disable_tls, addressing_style=addressing_style
        )
        if enable_s3express and not self.endpoint.bucket.endswith(EXPRESS_SUFFIX):
            raise ValueError(
                f"s3_enable_s3express needs a directory bucket (a name ending with "
                f"{EXPRESS_SUFFIX!r}); got {self.endpoint.bucket!r}"
            )
        super().__init__(
            "s3",
            capacity_bytes=capacity_bytes,
            object_format=object_format,
            num_workers=num_workers,
        )
        self.bucket = self.endpoint.bucket
        self.region = region
        self.persist = persist
        self.num_io_threads = num_io_threads
        self._io = ThreadPoolExecutor(num_io_threads, thread_name_prefix="lmcache-l2-s3-io")
        self._health_lock = threading.Lock()
        self.consecutive_failures = 0
        self.last_error = ""
        if client is None:
            # The frame's checksum covers framed objects end to end: no second CRC32 pass.
            checksums = "when_required" if object_format == "framed" else "when_supported"
            session = boto3.session.Session(
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                region_name=region,
            )
            client = session.client(
                "s3",
                endpoint_url=self.endpoint.url,
                region_name=region,
                config=Config(
                    max_pool_connections=num_io_threads,
                    connect_timeout=connect_timeout_s,
                    read_timeout=read_timeout_s,
                    retries={"total_max_attempts": max_attempts, "mode": "standard"},
                    s3={"addressing_style": self.endpoint.addressing_style},
                    tcp_keepalive=True,
                    request_checksum_calculation=checksums,
                    response_checksum_validation=checksums,
                ),
            )
        self._client = client

    # -- requests ------------------------------------------------------------------------

    def name_of(self, key: ObjectKey) -> str:
        """The object name of ``key`` in the bucket."""
        return native_key_name(key)

    def _call(self, operation: str, **params: Any) -> Any:
        """Run one client request, tracking consecutive failures for ``status()``.

        A missing object (404) is an answer, not a failure. Nothing here disables
        the adapter: the next call tries the server again.
        """
        try:
            response = getattr(self._client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            if _is_missing(exc):
                self._succeeded()
            else:
                self._failed(f"{operation}: {_error_code(exc)}")
            raise
        except Exception as exc:
            self._failed(f"{operation}: {type(exc).__name__}: {exc}")
            raise
        self._succeeded()
        return response

    def _succeeded(self) -> None:
        with self._health_lock:
            self.consecutive_failures = 0

    def _failed(self, error: str) -> None:
        with self._health_lock:
            self.consecutive_failures += 1
            self.last_error = error

    def _put(self, key: ObjectKey, parts: Sequence[bytes | memoryview]) -> None:
        name = self.name_of(key)
        if len(name.encode()) > MAX_KEY_BYTES:
            raise ValueError(f"object name of {len(name.encode())} bytes exceeds S3's limit")
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._call(
            "put_object",
            Key=name,
            Body=bytes(body) if isinstance(body, memoryview) else body,
            ContentType="application/octet-stream",
        )

    def _exists(self, key: ObjectKey) -> bool:
        try:
            self._call("head_object", Key=self.name_of(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _open_body(self, key: ObjectKey, size: int) -> Any | None:
        """The GET's unread body when the object is there with ``size`` bytes, else None.

        An object of another size is a miss, and its body is closed undownloaded.
        """
        try:
            response = self._call("get_object", Key=self.name_of(key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        body = response["Body"]
        if response.get("ContentLength") != size:
            body.close()
            return None
        return body

    def _get(self, key: ObjectKey, size: int) -> bytes | None:
        body = self._open_body(key, size)
        if body is None:
            return None
        try:
            data: bytes = body.read()
        finally:
            body.close()
        # A short body (a connection cut mid-stream) is a miss, never partial data.
        return data if len(data) == size else None

    def _get_into(self, key: ObjectKey, parts: Sequence[memoryview]) -> bool:
        body = self._open_body(key, sum(part.nbytes for part in parts))
        if body is None:
            return False
        try:
            for part in parts:
                done = 0
                while done < part.nbytes:
                    got = body.readinto(part[done : done + READ_WINDOW])
                    if not got:
                        return False  # cut mid-stream: a miss
                    done += got
            # At the end of the stream botocore checks the length (and any checksum).
            return bool(body.readinto(memoryview(bytearray(1))) == 0)
        finally:
            body.close()

    def _remove(self, key: ObjectKey) -> bool:
        # DELETE answers 204 whether or not the object was there: HEAD first to know.
        if not self._exists(key):
            return False
        self._call("delete_object", Key=self.name_of(key))
        return True

    def _known_objects(self) -> dict[ObjectKey, int]:
        known: dict[ObjectKey, int] = {}
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    key = parse_native_key_name(item["Key"])
                    if key is not None:
                        known[key] = int(item["Size"])
        except Exception as exc:  # an unreachable server must not stop the server starting
            self.errors += 1
            self._failed(f"list_objects_v2: {type(exc).__name__}: {exc}")
            logger.warning(
                "s3: could not list bucket %s; usage starts from what was listed",
                self.bucket,
                exc_info=True,
            )
        else:
            self._succeeded()
        return known

    def _close(self) -> None:
        try:
            if not self.persist:
                for key in self.keys():
                    try:
                        self._call("delete_object", Key=self.name_of(key))
                    except Exception:  # best effort at close
                        logger.warning("s3: could not delete %s at close", key, exc_info=True)
        finally:
            self._io.shutdown(wait=True)
            self._client.close()

    # -- batches spread over the I/O threads ----------------------------------------------

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[bytes | memoryview]
    ) -> Future[list[bool]]:
        """Store each payload under its key, the keys' PUTs in parallel."""
        self._check(keys, payloads)
        views = [_flat(payload) for payload in payloads]
        return self._submit(lambda: self._store_batch(keys, views))

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys are stored (HEADs in parallel); each found key is pinned."""
        self._check(keys)
        return self._submit(lambda: self._spread(lambda key, _: self._lookup_one(key), keys, keys))

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        """Read each key's payload into its buffer, the GETs in parallel."""
        self._check(keys, buffers)
        views = [_flat(buffer) for buffer in buffers]
        return self._submit(lambda: self._spread(self._load_one, keys, views))

    def _store_batch(self, keys: Sequence[ObjectKey], views: Sequence[memoryview]) -> list[bool]:
        """Admit the keys against the capacity in order, then PUT the admitted ones in parallel.

        Admission in order keeps the base class's semantics (the first keys that fit
        are stored, the rest refused) although the PUTs themselves run concurrently.
        """
        sizes = [self._stored_size(view.nbytes) for view in views]
        admitted = self._admit(keys, sizes)
        futures = [
            self._io.submit(self._put_reserved, key, view, size) if ok else None
            for key, view, size, ok in zip(keys, views, sizes, admitted, strict=True)
        ]
        return [future.result() if future is not None else False for future in futures]

    def _spread(
        self, work: Callable[[ObjectKey, V], bool], keys: Sequence[ObjectKey], values: Sequence[V]
    ) -> list[bool]:
        futures = [
            self._io.submit(work, key, value) for key, value in zip(keys, values, strict=True)
        ]
        return [future.result() for future in futures]

    def status(self) -> dict[str, Any]:
        """The base status plus the bucket, the server and the failure streak."""
        status = super().status()
        with self._health_lock:
            status.update(
                bucket=self.bucket,
                endpoint=self.endpoint.url,
                addressing_style=self.endpoint.addressing_style,
                consecutive_failures=self.consecutive_failures,
                last_error=self.last_error,
            )
        return status


def _flat(buffer: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of a contiguous buffer (ValueError otherwise), checked up front."""
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise ValueError("L2 payloads and buffers must be contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def build_s3(
    config: S3AdapterConfig, context: L2AdapterContext = DEFAULT_L2_ADAPTER_CONTEXT
) -> S3L2Adapter:
    """Build the ``s3`` adapter from its validated ``--l2-adapter`` JSON.

    Args:
        config: The adapter's configuration.
        context: The adapter context (unused: this adapter needs no server setting).
    """
    del context
    if config.s3_prefer_http2:
        logger.debug("s3: boto3 speaks HTTP/1.1; s3_prefer_http2 has no effect")
    secret = config.aws_secret_access_key
    return S3L2Adapter(
        config.s3_endpoint,
        region=config.s3_region,
        num_io_threads=config.s3_num_io_threads,
        addressing_style=config.s3_addressing_style,
        disable_tls=config.disable_tls,
        enable_s3express=config.s3_enable_s3express,
        access_key_id=config.aws_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        capacity_bytes=int(config.max_capacity_gb * GIB),
        object_format=config.format,
        persist=config.persist_enabled,
    )
