"""Error replies: how the server answers a request it cannot serve.

Upstream sends nothing back in these cases, so its clients wait for their
timeout. An error reply is ``[uid, "__error__", ErrorInfo]``: an upstream client
sees an operation mismatch and fails the call at once instead of hanging; our
client raises the typed exception named by ``code``.
"""

from __future__ import annotations

import enum

import msgspec

from lmcache_core.errors import LMCacheError

ERROR_OP = "__error__"


class ErrorCode(enum.StrEnum):
    """Why a request failed."""

    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"
    NOT_SUPPORTED = "not_supported"
    NOT_REGISTERED = "not_registered"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"
    OVERLOADED = "overloaded"
    UNAUTHORIZED = "unauthorized"


class ErrorInfo(msgspec.Struct):
    """The payload of an error reply."""

    code: str
    message: str
    op: str = ""


class RemoteError(LMCacheError):
    """The server answered a call with an error reply.

    Attributes:
        code: The :class:`ErrorCode` value.
        op: The operation that failed.
    """

    code = ErrorCode.INTERNAL

    def __init__(self, message: str, op: str = "") -> None:
        self.op = op
        self.message = message
        super().__init__(f"{op}: {message}" if op else message)


class UnknownOperationError(RemoteError):
    """The server does not know the operation."""

    code = ErrorCode.UNKNOWN_OP


class BadRequestError(RemoteError):
    """Wrong frame count, a frame of the wrong type, or an invalid value."""

    code = ErrorCode.BAD_REQUEST


class NotSupportedError(RemoteError):
    """A known operation whose module is not loaded in this configuration."""

    code = ErrorCode.NOT_SUPPORTED


class NotRegisteredError(RemoteError):
    """The worker instance is not registered (never was, or was reaped): re-register."""

    code = ErrorCode.NOT_REGISTERED


class OutOfMemoryError(RemoteError):
    """L1 had no room even after eviction; nothing was stored."""

    code = ErrorCode.OUT_OF_MEMORY


class ServerInternalError(RemoteError):
    """The handler failed; the server logged the details and keeps serving."""

    code = ErrorCode.INTERNAL


class OverloadedError(RemoteError):
    """The server's queue for this work is full; retry later."""

    code = ErrorCode.OVERLOADED


class UnauthorizedError(RemoteError):
    """The request carried no API key, or one the server does not accept."""

    code = ErrorCode.UNAUTHORIZED


ERROR_TYPES: dict[str, type[RemoteError]] = {
    cls.code.value: cls
    for cls in (
        UnknownOperationError,
        BadRequestError,
        NotSupportedError,
        NotRegisteredError,
        OutOfMemoryError,
        ServerInternalError,
        OverloadedError,
        UnauthorizedError,
    )
}


def exception_for(info: ErrorInfo) -> RemoteError:
    """The typed exception a client raises for an error reply."""
    return ERROR_TYPES.get(info.code, ServerInternalError)(info.message, info.op)
