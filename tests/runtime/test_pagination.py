"""The one page-token scheme: opaque, bound to its list and filters, keyset (stable under inserts)."""

from __future__ import annotations

import pytest

from services.runtime.errors import InvalidArgument
from services.runtime.pagination import BAD_TOKEN, paginate


def test_paginate_walks_every_item_once_even_when_items_arrive_between_pages() -> None:
    items = list(range(10, 0, -1))  # newest first
    page, token = paginate(items, kind="t", key=lambda i: [i], page_size=4, page_token="", descending=True)
    assert page == [10, 9, 8, 7] and token
    newer = [12, 11, *items]  # two new items at the front do not shift the next page
    page2, token2 = paginate(
        newer, kind="t", key=lambda i: [i], page_size=4, page_token=token, descending=True
    )
    assert page2 == [6, 5, 4, 3]
    last, end = paginate(newer, kind="t", key=lambda i: [i], page_size=4, page_token=token2, descending=True)
    assert last == [2, 1] and end == ""


def test_sizes_tokens_and_filters_are_checked() -> None:
    items = list(range(5))
    assert paginate(items, kind="t", key=lambda i: [i], page_size=0, page_token="", default=2)[0] == [0, 1]
    assert (
        len(paginate(items, kind="t", key=lambda i: [i], page_size=10**6, page_token="", maximum=3)[0]) == 3
    )
    with pytest.raises(InvalidArgument):
        paginate(items, kind="t", key=lambda i: [i], page_size=-1, page_token="")
    _, token = paginate(items, kind="t", key=lambda i: [i], page_size=2, page_token="", filters=["a"])
    for kind, filters, bad in (("other", ["a"], token), ("t", ["b"], token), ("t", ["a"], "!!not-base64")):
        with pytest.raises(InvalidArgument) as error:
            paginate(items, kind=kind, key=lambda i: [i], page_size=2, page_token=bad, filters=filters)
        assert error.value.reason == BAD_TOKEN and error.value.violations[0].field == "page_token"
