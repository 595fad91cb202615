"""Opaque page tokens for keyset pagination.

A token is URL-safe base64 of a small JSON object: the kind of list, a fingerprint of the filters it
was issued for, and the sort key of the last item returned. A token used with other filters, or one
that was tampered with, is rejected with `InvalidArgument("page_token", ...)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.runtime.errors import InvalidArgument


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
        raise InvalidArgument("page_token", "not a token issued by this list") from exc
    if not valid or not isinstance(key, list):
        raise InvalidArgument("page_token", "issued for a different list or different filters")
    return key


def resolve_page_size(requested: int, default: int, maximum: int) -> int:
    """The page size to use: `default` for 0, else `requested` (1..maximum)."""
    if requested < 0:
        raise InvalidArgument("page_size", "must be >= 0")
    if requested > maximum:
        raise InvalidArgument("page_size", f"must be <= {maximum}")
    return requested or default
