"""msgspec structs of the wire, encoded exactly as upstream 0.5.6 encodes them."""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from lmcache_core.storage.keys import validate_cache_salt

_tokens_decoder = msgspec.msgpack.Decoder(list[int])

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
DEVICE_HANDLE_EXT = 1
"""msgpack Ext type of a device handle (its data is the msgpack of a tagged struct)."""


class CacheKey(msgspec.Struct):
    """``IPCCacheServerKey``: which tokens of which request, for which KV rank.

    Encoded as a map with all ten fields. ``worker_id`` is None in lookups (the key
    then fans out to every rank of ``world_size``). ``token_ids`` may be given
    pre-encoded (:func:`pack_token_ids`): every message carries the whole token
    list, and a client that sends several for one request encodes it once.
    """

    model_name: str
    world_size: int
    worker_id: int | None
    token_ids: list[int] | msgspec.Raw
    start: int
    end: int
    request_id: str
    cache_salt: str = ""
    request_configs: dict[str, Any] | None = None
    num_kv_readers: int = 0


def pack_token_ids(tokens: list[int]) -> msgspec.Raw:
    """Encode a token list once, to reuse in several keys of the same request."""
    return msgspec.Raw(msgspec.msgpack.encode(tokens))


def pack_token_blob(tokens: Sequence[int]) -> msgspec.Raw:
    """Encode a token list as one msgpack ``bin`` of uint32 little-endian values.

    The second form a key's ``token_ids`` may take (besides a msgpack array,
    upstream's form): a server decodes it without building a Python int per
    token. Only for servers that accept it (the blend engine does; a client
    falls back to :func:`pack_token_ids` on a ``bad_request``). Tokens must fit
    in uint32 (``OverflowError`` otherwise).
    """
    packed = array.array("I", tokens)
    if sys.byteorder != "little":
        packed.byteswap()
    return msgspec.Raw(msgspec.msgpack.encode(packed.tobytes()))


def token_blob(raw: msgspec.Raw | bytes | memoryview) -> memoryview | None:
    """The uint32 little-endian payload of a ``bin`` token list; None if ``raw`` is not one.

    Raises:
        ValueError: ``raw`` is a ``bin`` whose length is not a whole number of
            uint32 values, or that does not fill ``raw`` exactly.
    """
    data = memoryview(raw)
    if not data or data[0] not in _BIN_HEADERS:
        return None
    width = _BIN_HEADERS[data[0]]
    if len(data) < 1 + width:
        raise ValueError("token_ids: a truncated bin header")
    size = int.from_bytes(data[1 : 1 + width], "big")
    if size % 4 or len(data) != 1 + width + size:
        raise ValueError("token_ids: a bin must hold exactly a whole number of uint32 values")
    return data[1 + width :]


def blob_tokens(payload: memoryview) -> array.array[int]:
    """A :func:`token_blob` payload as a uint32 array (in this machine's byte order)."""
    tokens = array.array("I")
    tokens.frombytes(payload)
    if sys.byteorder != "little":
        tokens.byteswap()
    return tokens


def decode_token_ids(raw_tokens: bytes) -> Sequence[int]:
    """A key's raw tokens decoded: a msgpack array, or a uint32 blob (:func:`pack_token_blob`).

    Raises:
        ValueError: Neither form, or values outside uint32 (the blob's are inside by form).
    """
    blob = token_blob(raw_tokens)
    if blob is not None:
        return blob_tokens(blob)
    try:
        return _tokens_decoder.decode(raw_tokens)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"token_ids: {exc}") from None


_BIN_HEADERS = {0xC4: 1, 0xC5: 2, 0xC6: 4}
"""msgpack ``bin 8/16/32`` header bytes and the width of their length field."""


class KeyFields(msgspec.Struct):
    """The fields of a key besides its tokens (validated apart from them)."""

    model_name: str
    world_size: int
    worker_id: int | None
    start: int
    end: int
    request_id: str
    cache_salt: str = ""
    request_configs: dict[str, Any] | None = None
    num_kv_readers: int = 0


class WireCacheKey(msgspec.Struct, kw_only=True):
    """The server's view of :class:`CacheKey`: tokens stay raw msgpack.

    Decoding thousands of token ids into Python ints costs more than the whole
    lookup; the server hashes from the raw bytes and decodes them only on a miss
    of its token-hash cache (see :mod:`lmcache_core.engine.token_cache`).
    """

    model_name: str
    world_size: int
    worker_id: int | None
    token_ids: msgspec.Raw
    start: int
    end: int
    request_id: str
    cache_salt: str = ""
    request_configs: dict[str, Any] | None = None
    num_kv_readers: int = 0

    def __post_init__(self) -> None:
        if "@" in self.model_name or not self.model_name:
            raise ValueError("model_name must be non-empty and may not contain '@'")
        if not 1 <= self.world_size <= 0xFF:
            raise ValueError("world_size must be in [1, 255]")
        if self.worker_id is not None and not 0 <= self.worker_id < self.world_size:
            raise ValueError(f"worker_id {self.worker_id} is not in range(world_size)")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad token window [{self.start}, {self.end})")
        if self.num_kv_readers < 0:
            raise ValueError("num_kv_readers must be >= 0")
        validate_cache_salt(self.cache_salt)
        if self.end > raw_array_length(self.token_ids):
            raise ValueError(
                f"end {self.end} is past the {raw_array_length(self.token_ids)} tokens"
            )


class HashLookupKey(msgspec.Struct, kw_only=True):
    """A lookup key carrying the request's chunk hashes instead of its tokens.

    Sent by this project's client with ``lookup_hashes`` (not an upstream op):
    64 chunks are 64 x 32 bytes instead of 64 KB of token ids. The hashes are
    the chain the server would compute from the tokens, so the object keys are
    the same; ``hash_algorithm`` and ``hash_seed`` name how they were made
    (see :func:`lmcache_core.hashing.seed_identity`) and the server refuses a
    key made another way. docs/protocol.md, "Hash-carrying lookups".

    Attributes:
        chunk_hashes: One hash per complete chunk of ``[0, end)``, in order.
        hash_algorithm: The ``--hash-algorithm`` the client hashed with.
        hash_seed: What the hashes depend on besides the tokens (the
            sha256_cbor seed, or PYTHONHASHSEED for ``builtin``; None: nothing
            or unknown).
    """

    model_name: str
    world_size: int
    worker_id: int | None
    chunk_hashes: list[bytes]
    start: int
    end: int
    request_id: str
    hash_algorithm: str
    hash_seed: str | None = None
    cache_salt: str = ""
    request_configs: dict[str, Any] | None = None
    num_kv_readers: int = 0


def raw_array_length(raw: msgspec.Raw | bytes) -> int:
    """The element count of a raw msgpack array (or :func:`token_blob`), read from its header.

    Raises:
        ValueError: ``raw`` is not a msgpack array (nor a well-formed token blob).
    """
    data = memoryview(raw)
    if not data:
        raise ValueError("empty token_ids")
    blob = token_blob(data)
    if blob is not None:
        return len(blob) // 4
    head = data[0]
    if 0x90 <= head <= 0x9F:
        return int(head & 0x0F)
    if head == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big")
    if head == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big")
    raise ValueError("token_ids must be an array of integers")


class TensorMetadata(msgspec.Struct, forbid_unknown_fields=True):
    """Shape and placement of one tensor behind a device handle."""

    dtype: str
    shape: tuple[NonNegative, ...]
    stride: tuple[NonNegative, ...]
    storage_offset: NonNegative
    device_uuid: str


class DeviceHandle(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    """Base of the tagged device-handle structs (tag first, then fields, then these)."""

    version: Literal[1]
    metadata: TensorMetadata


class CudaHandle(DeviceHandle, tag="cuda"):
    """A torch CUDA storage IPC handle (8-tuple)."""

    handle: tuple[Any, ...]


class CudaRawHandle(DeviceHandle, tag="cuda_raw"):
    """A raw ``cudaIpcMemHandle`` (``--isolated-ipc``)."""

    ipc_handle: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
    alloc_offset: NonNegative
    nbytes: NonNegative


class CudaVmmHandle(DeviceHandle, tag="cuda_vmm"):
    """A CUDA VMM export."""

    export_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    kind: Literal["posix_fd", "fabric"]
    fabric_blob: bytes | None
    alloc_size: NonNegative
    alloc_offset: NonNegative
    nbytes: NonNegative


class CpuShmHandle(DeviceHandle, tag="cpu_shm"):
    """A CPU tensor in POSIX shared memory ``/dev/shm/<shm_name>``."""

    shm_name: str
    nbytes: NonNegative


class MusaHandle(DeviceHandle, tag="musa"):
    """A MUSA device handle."""

    handle: Any


class NpuPlane(msgspec.Struct, forbid_unknown_fields=True):
    """One plane of an NPU handle."""

    handle: tuple[Any, ...]
    metadata: TensorMetadata


class NpuHandle(msgspec.Struct, tag="npu", tag_field="type", forbid_unknown_fields=True):
    """An NPU device handle."""

    version: Literal[1]
    bare: bool
    planes: tuple[NpuPlane, ...]


AnyDeviceHandle = CudaHandle | CudaRawHandle | CudaVmmHandle | CpuShmHandle | MusaHandle | NpuHandle


class EngineGroupInfo(msgspec.Struct, frozen=True):
    """One engine KV group (layers sharing a copy kernel)."""

    engine_group_id: int
    layer_indices: tuple[int, ...] = ()
    tokens_per_block: int = 0
    sw_size_tokens: int = -1
    extra_object_group_tag: int = 0
    recurrent_state: bool = False


class BlockAllocationRecord(msgspec.Struct):
    """One request's new blocks in a scheduler step (observability only)."""

    req_id: str
    new_block_ids: list[int]
    new_token_ids: list[int]


class EngineDrivenRegistration(msgspec.Struct):
    """``RegisterEngineDrivenContextPayload``: layout metadata of an engine-driven worker."""

    instance_id: int
    model_name: str
    world_size: int
    block_size: int
    num_layers: int
    hidden_dim_size: int
    dtype_str: str
    use_mla: bool
    num_physical_slots: int | None = None


class EngineDrivenRegistrationReply(msgspec.Struct):
    """Where the worker finds the L1 pool (``shm_name`` "" means inline bytes)."""

    shm_name: str = ""
    pool_size: int = 0


class PrepareStoreReply(msgspec.Struct):
    """Slots to write for an engine-driven store (empty context: inline bytes)."""

    context: dict[str, Any] = msgspec.field(default_factory=dict)


class PrepareRetrieveReply(msgspec.Struct):
    """Slots to read for an engine-driven retrieve, or the bytes themselves."""

    success: bool
    data: bytes = b""
    context: dict[str, Any] = msgspec.field(default_factory=dict)


class CBMatchResult(msgspec.Struct):
    """One CacheBlend segment: stored tokens ``[old_st, old_ed)`` reused at ``[cur_st, cur_ed)``.

    Encoded as upstream 0.5.6's dataclass: a map of these five keys in this order;
    ``hash`` is the stored chunk's chain hash (the ``ObjectKey`` hash). Unknown
    keys are ignored on decode, a missing one or a string hash is refused.
    """

    old_st: int
    old_ed: int
    cur_st: int
    cur_ed: int
    hash: bytes


class CBUnifiedLookupResult(msgspec.Struct):
    """The result of ``cb_unified_lookup`` (upstream's map of three keys).

    Attributes:
        prefix_coverage_tokens: Tokens of the exact prefix found (whole chunks).
        non_prefix_segments: Chunks found by content fingerprint, in ``cur_st`` order.
        segmented_prefix_segments: Post-gap prefix chunks kept at their own position
            (``--enable-segmented-prefix``); absent in older servers' replies.
    """

    prefix_coverage_tokens: int
    non_prefix_segments: list[CBMatchResult]
    segmented_prefix_segments: list[CBMatchResult] = msgspec.field(default_factory=list)
