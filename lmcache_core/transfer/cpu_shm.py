"""KV tensors in POSIX shared memory: the CPU-only transfer path.

On a CPU-only host the worker puts each layer's KV tensor in a POSIX shared-memory segment
(``/dev/shm/<name>``) and registers it with a ``cpu_shm`` handle: the segment name, its size and
the tensor's dtype, shape, stride and storage offset (in elements). The server maps the segment
and builds a tensor over it without copying, so its gathers and scatters read and write the
worker's KV cache in place.

Upstream kept these mappings after the worker unregistered (server memory grew with every
client run); :meth:`MappedShmTensor.close` releases them.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_core.transfer.layout import dtype_from_name, dtype_name

__all__ = [
    "SHM_DIR",
    "MappedShmTensor",
    "ShmTensorSpec",
    "create_shm_tensor",
    "mappings_pending_release",
    "validate_shm_name",
]

logger = logging.getLogger(__name__)

#: Where Linux exposes POSIX shared memory (``shm_open(name)`` is ``/dev/shm/name``).
SHM_DIR = "/dev/shm"

# NAME_MAX: a longer name cannot exist in /dev/shm, say so instead of ENAMETOOLONG.
_NAME_MAX = 255


def validate_shm_name(name: object) -> str:
    """Check a segment name received from a client and return it.

    The name is joined to :data:`SHM_DIR`, so anything that could leave that directory (a
    ``/``, ``.`` or ``..``) or that the kernel cannot take (NUL, too long, empty) is refused.

    Raises:
        ValueError: The name is unusable; the message says why.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"shared-memory name must be a non-empty string, got {name!r}")
    if "/" in name:
        raise ValueError(f"shared-memory name {name!r} must not contain '/'")
    if "\0" in name or name in (".", ".."):
        raise ValueError(f"shared-memory name {name!r} is not a valid file name")
    if len(name.encode()) > _NAME_MAX:
        raise ValueError(f"shared-memory name is longer than {_NAME_MAX} bytes: {name[:40]!r}...")
    return name


def _check_int(value: object, what: str, minimum: int) -> int:
    # bool is an int subclass; a True in a shape is a client bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ShmTensorSpec:
    """Where and how a tensor lies in a shared-memory segment (a ``cpu_shm`` handle).

    Attributes:
        shm_name: The segment's name, without ``/dev/shm/`` or a leading ``/``.
        nbytes: Bytes to map from the start of the segment.
        dtype: The torch dtype name without ``torch.`` (``"bfloat16"``).
        shape: The tensor's shape.
        stride: The tensor's strides, in elements.
        storage_offset: Elements from the start of the segment to the tensor's first element.
    """

    shm_name: str
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int

    @classmethod
    def from_metadata(
        cls, shm_name: str, nbytes: int, metadata: Mapping[str, Any]
    ) -> ShmTensorSpec:
        """Build a spec from a ``cpu_shm`` handle's fields.

        Args:
            shm_name: The handle's ``shm_name``.
            nbytes: The handle's ``nbytes``.
            metadata: The handle's ``metadata`` map (``dtype``, ``shape``, ``stride``,
                ``storage_offset``; ``device_uuid`` is ignored on CPU).

        Raises:
            ValueError: A field is missing or has the wrong type.
        """
        try:
            dtype = metadata["dtype"]
            shape = tuple(metadata["shape"])
            stride = tuple(metadata["stride"])
            storage_offset = metadata["storage_offset"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"incomplete cpu_shm tensor metadata: {exc!r}") from None
        if not isinstance(dtype, str):
            raise ValueError(f"cpu_shm metadata dtype must be a string, got {dtype!r}")
        return cls(
            shm_name=shm_name,
            nbytes=nbytes,
            dtype=dtype,
            shape=shape,
            stride=stride,
            storage_offset=storage_offset,
        )

    def to_metadata(self, device_uuid: str = "") -> dict[str, Any]:
        """The handle's ``metadata`` map for this spec."""
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "stride": list(self.stride),
            "storage_offset": self.storage_offset,
            "device_uuid": device_uuid,
        }

    def validate(self) -> torch.dtype:
        """Check the spec on its own (no file system access) and return its dtype.

        Raises:
            ValueError: A bad name or dtype, negative or mismatched shape and strides, or a
                strided extent that does not fit in ``nbytes``.
        """
        validate_shm_name(self.shm_name)
        _check_int(self.nbytes, "nbytes", 1)
        dtype = dtype_from_name(self.dtype)
        if len(self.shape) != len(self.stride):
            raise ValueError(
                f"shape {list(self.shape)} and stride {list(self.stride)} differ in length"
            )
        for size in self.shape:
            _check_int(size, "a shape dimension", 0)
        for step in self.stride:
            _check_int(step, "a stride", 0)
        _check_int(self.storage_offset, "storage_offset", 0)
        if 0 in self.shape:
            end = self.storage_offset
        else:
            last = sum(
                (size - 1) * step for size, step in zip(self.shape, self.stride, strict=True)
            )
            end = self.storage_offset + last + 1
        if end * dtype.itemsize > self.nbytes:
            raise ValueError(
                f"tensor {list(self.shape)} with stride {list(self.stride)} and storage offset "
                f"{self.storage_offset} ({self.dtype}) spans {end * dtype.itemsize} bytes, more "
                f"than the {self.nbytes} bytes of segment {self.shm_name!r}"
            )
        return dtype


# Mappings closed while tensors still viewed them: id(mmap) -> (segment name, weak ref).
_pending: dict[int, tuple[str, weakref.ref[mmap.mmap]]] = {}
_pending_lock = threading.Lock()


def mappings_pending_release() -> list[str]:
    """Segments whose :meth:`MappedShmTensor.close` was deferred by live views, still mapped.

    A segment stays listed only while some tensor still views it; an entry that never goes
    away means a view is being kept alive (a leak worth a look, for example in ``/status``).
    """
    with _pending_lock:
        _prune_pending()
        return sorted(name for name, _ in _pending.values())


def _prune_pending() -> None:
    """Forget released mappings (call with ``_pending_lock`` held)."""
    for key, (_, ref) in list(_pending.items()):
        if ref() is None:
            del _pending[key]


class MappedShmTensor:
    """A tensor over a mapped POSIX shared-memory segment (zero copy, read-write).

    Use :attr:`tensor` for copies; call :meth:`close` (or leave a ``with`` block) when the
    owner unregisters.

    Args:
        spec: Where the tensor lies; validated before anything is opened.

    Raises:
        ValueError: An invalid spec, a segment that is not a regular file or is smaller than
            ``spec.nbytes``.
        FileNotFoundError: No segment of that name.
    """

    def __init__(self, spec: ShmTensorSpec) -> None:
        dtype = spec.validate()
        self.spec = spec
        path = os.path.join(SHM_DIR, spec.shm_name)
        try:
            # O_NOFOLLOW: a symlink planted in /dev/shm must not redirect us to another file.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"shared-memory segment {spec.shm_name!r} does not exist ({path})"
            ) from None
        except OSError as exc:
            raise ValueError(
                f"cannot open shared-memory segment {spec.shm_name!r}: {exc}"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"shared-memory segment {spec.shm_name!r} is not a regular file")
            if info.st_size < spec.nbytes:
                raise ValueError(
                    f"shared-memory segment {spec.shm_name!r} has {info.st_size} bytes, the "
                    f"handle claims {spec.nbytes}"
                )
            mapping = mmap.mmap(
                fd, spec.nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        finally:
            # The mapping keeps the segment alive; the descriptor is not needed any more.
            os.close(fd)
        # frombuffer keeps a reference to the mmap object for as long as any tensor shares the
        # storage, so the mapping can never be unmapped under a live view (see close()).
        raw = torch.frombuffer(mapping, dtype=torch.uint8)
        typed = raw[: spec.nbytes - spec.nbytes % dtype.itemsize].view(dtype)
        self._tensor: torch.Tensor | None = typed.as_strided(
            spec.shape, spec.stride, spec.storage_offset
        )
        self._mmap: mmap.mmap | None = mapping

    @property
    def tensor(self) -> torch.Tensor:
        """The tensor over the segment.

        Raises:
            ValueError: After :meth:`close`.
        """
        if self._tensor is None:
            raise ValueError(f"shared-memory tensor {self.spec.shm_name!r} is closed")
        return self._tensor

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._mmap is None

    def close(self) -> None:
        """Release the mapping. Idempotent.

        The mapping is unmapped at once unless some other tensor still views it (a copy in
        flight, or a :class:`~lmcache_core.transfer.paged.PagedKVCache` not closed yet):
        unmapping then would leave those tensors pointing at freed memory, so the mapping goes
        when the last of them is dropped instead (torch holds the mmap object through the
        storage). :func:`mappings_pending_release` lists such segments.
        """
        mapping = self._mmap
        if mapping is None:
            return
        self._tensor = None
        self._mmap = None
        # Our references are gone. Left: `mapping`, getrefcount's argument, and one from the
        # torch storage if any tensor still views it.
        if sys.getrefcount(mapping) <= 2:
            mapping.close()
        else:
            logger.debug(
                "shared-memory segment %r is still viewed by live tensors; it is unmapped when "
                "they are dropped",
                self.spec.shm_name,
            )
            with _pending_lock:
                _prune_pending()  # keeps the table as small as the set of live leftovers
                _pending[id(mapping)] = (self.spec.shm_name, weakref.ref(mapping))

    def __enter__(self) -> MappedShmTensor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"MappedShmTensor({self.spec.shm_name!r}, {state})"


def create_shm_tensor(
    name: str, shape: Sequence[int], dtype: torch.dtype
) -> tuple[torch.Tensor, ShmTensorSpec, Callable[[], None]]:
    """Create a zero-filled contiguous tensor in a new shared-memory segment (worker side).

    Args:
        name: The segment name (``/dev/shm/<name>``); it must not exist yet.
        shape: The tensor's shape (non-empty).
        dtype: The tensor's dtype.

    Returns:
        The tensor, the spec to send in a ``cpu_shm`` handle, and a cleanup that unlinks the
        segment and drops this side's mapping: it is unmapped once the returned tensor and its
        views are dropped too (never under a live view). The cleanup is idempotent.

    Raises:
        ValueError: A bad name or an empty shape.
        FileExistsError: The segment already exists.
    """
    validate_shm_name(name)
    shape = tuple(int(size) for size in shape)
    numel = 1
    for size in shape:
        numel *= size
    if numel <= 0:
        raise ValueError(f"cannot create an empty shared-memory tensor of shape {list(shape)}")
    nbytes = numel * dtype.itemsize
    stride: list[int] = []
    step = 1
    for size in reversed(shape):
        stride.append(step)
        step *= size
    spec = ShmTensorSpec(
        shm_name=name,
        nbytes=nbytes,
        dtype=dtype_name(dtype),
        shape=shape,
        stride=tuple(reversed(stride)),
        storage_offset=0,
    )
    path = os.path.join(SHM_DIR, name)
    # O_EXCL: never adopt (and later unlink) a segment somebody else made. 0600: the KV cache
    # is the user's data; the server runs as the same user.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    try:
        mapped = MappedShmTensor(spec)
    except BaseException:
        os.unlink(path)
        raise

    def cleanup() -> None:
        mapped.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    return mapped.tensor, spec, cleanup
