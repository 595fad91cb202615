"""Opaque page tokens for keyset pagination: the one page-token scheme of every List RPC.

A token is URL-safe base64 of a small JSON object: the kind of list, a fingerprint of the filters it
was issued for, and the sort key of the last item returned. A token used with other filters, or one
that was tampered with, is rejected with `InvalidArgument("page_token", ...)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from services.runtime.errors import InvalidArgument

T = TypeVar("T")
#: The ErrorInfo reason of every bad page token.
BAD_TOKEN = "INVALID_PAGE_TOKEN"


def _fingerprint(kind: str, filters: Any) -> str:
    raw = json.dumps([kind, filters], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def encode_token(kind: str, filters: Any, key: list[Any]) -> str:
    """Token for the page after the item whose sort key is `key` (JSON-serialisable values)."""
    body = {"k": kind, "f": _fingerprint(kind, filters), "after": key}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, kind: str, filters: Any) -> list[Any] | None:
    """The sort key stored in `token`, or None for an empty token (first page)."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode()))
        valid = body["k"] == kind and body["f"] == _fingerprint(kind, filters)
        key = body["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token", "not a token issued by this list", reason=BAD_TOKEN) from exc
    if not valid or not isinstance(key, list):
        raise InvalidArgument(
            "page_token", "issued for a different list or different filters", reason=BAD_TOKEN
        )
    return key


def resolve_page_size(requested: int, default: int, maximum: int) -> int:
    """The page size to use: `default` for 0, else `requested` (1..maximum)."""
    if requested < 0:
        raise InvalidArgument("page_size", "must be >= 0")
    if requested > maximum:
        raise InvalidArgument("page_size", f"must be <= {maximum}")
    return requested or default


def paginate(
    items: Sequence[T],
    *,
    kind: str,
    key: Callable[[T], list[Any]],
    page_size: int,
    page_token: str,
    filters: Any = None,
    descending: bool = False,
    default: int = 50,
    maximum: int = 1000,
) -> tuple[list[T], str]:
    """One page of an in-memory list sorted by `key` (ascending, or `descending`), and the next
    token ("" on the last page). Keyset, not offsets: items added or removed between two calls
    neither repeat nor vanish from the pages still to come. A `page_size` above `maximum` is
    coerced to it (AIP-158)."""
    if page_size < 0:
        raise InvalidArgument("page_size", "must be >= 0")
    size = min(page_size or default, maximum)
    after = decode_token(page_token, kind, filters)
    if after is not None:
        items = [i for i in items if (key(i) < after if descending else key(i) > after)]
    chunk = list(items[:size])
    more = len(items) > size
    return chunk, encode_token(kind, filters, key(chunk[-1])) if more and chunk else ""
