"""Status details -> typed exceptions, without a server."""

from __future__ import annotations

import pickle

import grpc
import pytest

from kitrading.client import errors
from kitrading.client.errors import (
    ERRORS_BY_CODE,
    FieldViolation,
    InvalidArgumentError,
    KitradingError,
    ResourceExhaustedError,
    error_from_status,
    parse_status,
)
from services.runtime.errors import FieldViolation as ServerViolation
from services.runtime.status import build_status, trailing_metadata


def test_every_error_code_has_a_class() -> None:
    codes = set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert set(ERRORS_BY_CODE) == codes
    for code, cls in ERRORS_BY_CODE.items():
        assert issubclass(cls, KitradingError)
        assert cls.grpc_code is code


def test_details_are_parsed() -> None:
    status = build_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid argument: page_size: must be at most 1000",
        reason="PAGE_SIZE_TOO_LARGE",
        domain="kitrading.data",
        metadata={"max": "1000"},
        violations=[
            ServerViolation("page_size", "must be at most 1000"),
            ServerViolation("prefix", "too long"),
        ],
    )
    error = error_from_status(
        grpc.StatusCode.INVALID_ARGUMENT, "ignored", parse_status(trailing_metadata(status))
    )
    assert isinstance(error, InvalidArgumentError)
    assert error.message == "invalid argument: page_size: must be at most 1000"
    assert error.reason == "PAGE_SIZE_TOO_LARGE"
    assert error.metadata == {"max": "1000"}
    assert error.field_violations == [
        FieldViolation("page_size", "must be at most 1000"),
        FieldViolation("prefix", "too long"),
    ]
    # violations already in the message are not repeated
    assert (
        str(error) == "INVALID_ARGUMENT: invalid argument: page_size: must be at most 1000 (prefix: too long)"
    )


def test_without_details() -> None:
    error = error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", parse_status(()))
    assert isinstance(error, ResourceExhaustedError)
    assert (error.reason, error.domain, error.field_violations, error.log_id) == ("", "", [], None)


@pytest.mark.parametrize("value", [b"\xff\xfe not a status", "text"])
def test_bad_trailer_is_ignored(value: bytes | str) -> None:
    assert parse_status([(errors.STATUS_DETAILS_KEY, value)]) is None


def test_errors_pickle() -> None:
    error = error_from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        build_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad",
            reason="R",
            domain="d",
            violations=[ServerViolation("f", "x")],
        ),
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidArgumentError
    assert (copy.reason, copy.domain, copy.field_violations, copy.code) == (
        "R",
        "d",
        [FieldViolation("f", "x")],
        grpc.StatusCode.INVALID_ARGUMENT,
    )
