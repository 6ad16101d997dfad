"""What every admin command shares: its options, the HTTP call, and plain-text tables.

The HTTP client is the standard library's (``urllib``): the admin commands add
no dependency to the core. Every failure is one :class:`AdminError` line.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from lmcache_core.errors import LMCacheError
from lmcache_core.security.key_sources import KeySourceError, client_api_key

DEFAULT_URL = "http://127.0.0.1:8080"

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="LMCACHE_URL", help="The server's HTTP address (--http-host/--http-port)."
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LMCACHE_HTTP_ADMIN_TOKEN",
        help=(
            "Bearer token, when the server has --http-admin-token or API keys (an API key "
            "works here too). Not given: LMCACHE_API_KEY or LMCACHE_API_KEY_FILE, if set."
        ),
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the server's JSON answer.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the server.")
]


class AdminError(LMCacheError):
    """An admin command failed; the message is the one line to print."""


def _environment_key() -> str | None:
    """The API key of the environment (as our ZeroMQ clients read it), or ``None``."""
    try:
        return client_api_key()
    except KeySourceError as exc:
        raise AdminError(str(exc)) from None


@dataclass(frozen=True)
class Answer:
    """A server's answer: the HTTP status and the decoded JSON body (or text)."""

    status: int
    body: Any


@dataclass(frozen=True)
class AdminClient:
    """Calls one server's admin API."""

    url: str
    token: str | None
    timeout: float

    def call(
        self, method: str, path: str, body: Any = None, *, accept: Sequence[int] = ()
    ) -> Answer:
        """Send one request; 2xx (and ``accept`` statuses) are answers.

        Raises:
            AdminError: The server cannot be reached, did not answer in time, or
                refused the request (its ``detail`` is the message).
        """
        base = self.url.rstrip("/")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{base}{path}", data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        token = self.token or _environment_key()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(response.status, _decode(response.read()))
        except urllib.error.HTTPError as exc:
            answer = Answer(exc.code, _decode(exc.read()))
            if exc.code in accept:
                return answer
            raise AdminError(f"{_detail(answer.body) or exc.reason} (HTTP {exc.code})") from None
        except TimeoutError:
            raise AdminError(
                f"the server at {base} did not answer within {self.timeout:g} s"
            ) from None
        except urllib.error.URLError as exc:
            raise AdminError(f"cannot reach the server at {base}: {exc.reason}") from None
        except (ValueError, OSError) as exc:
            raise AdminError(f"cannot reach the server at {base}: {exc}") from None


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _detail(body: Any) -> str:
    """The server's message in an error body (FastAPI's ``detail``)."""
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # request validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"
                for item in detail
                if isinstance(item, dict)
            )
    return body.strip() if isinstance(body, str) else ""


def print_json(body: Any) -> None:
    """The answer as indented JSON."""
    typer.echo(json.dumps(body, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, headers first."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def gib(nbytes: int | float | None) -> str:
    """Bytes as GiB with three decimals."""
    return "-" if nbytes is None else f"{nbytes / (1 << 30):.3f}"
