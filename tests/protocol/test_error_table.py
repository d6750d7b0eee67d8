"""The servicer's error -> status table and the client's inverse round-trip."""

from __future__ import annotations

import grpc
import pytest

from linkage_unit.servicer import STATUS_FOR_ERROR, abort_for, status_for_error
from party.client import ERROR_FOR_STATUS, error_from_rpc
from protocol.errors import (
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    InvariantError,
    MatchingError,
    ServiceError,
)


class _FakeRpcError(grpc.RpcError):
    """A gRPC status as the client sees one (a value, not a mock of our code)."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str], ...]):
        self._code, self._details, self._metadata = code, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def _instance(error_type: type[ServiceError]) -> ServiceError:
    if error_type is CompatibilityError:
        return CompatibilityError("kcv differs", party="dfe", aspect="kcv")
    return error_type("message")


@pytest.mark.parametrize(
    "error_type", [row[0] for row in STATUS_FOR_ERROR], ids=lambda t: t.__name__
)
def test_every_service_error_survives_the_wire(error_type: type[ServiceError]) -> None:
    error = _instance(error_type)
    code, metadata = status_for_error(error)
    rebuilt = error_from_rpc(_FakeRpcError(code, error.message, metadata))
    assert type(rebuilt) is error_type
    if isinstance(error, CompatibilityError):
        assert isinstance(rebuilt, CompatibilityError)
        assert (rebuilt.party, rebuilt.aspect) == ("dfe", "kcv")


def test_the_inverse_covers_every_status_the_table_uses() -> None:
    for error_type, code in STATUS_FOR_ERROR:
        assert issubclass(error_type, ERROR_FOR_STATUS[code])


def test_unknown_statuses_become_a_generic_service_error() -> None:
    rebuilt = error_from_rpc(_FakeRpcError(grpc.StatusCode.INTERNAL, "boom", ()))
    assert type(rebuilt) is ServiceError


@pytest.mark.parametrize(
    "error",
    [
        ConfigurationError("the linkage unit's own settings are wrong"),
        MatchingError("the engine cannot honour this"),
        InvariantError("a bug"),
        ValueError("anything else"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_anything_but_a_service_error_is_the_linkage_units_fault(error: Exception) -> None:
    """Only the table maps errors: a configuration or matching error raised while serving
    is the LU's fault, INTERNAL with a fixed message that never repeats the error's text
    (before, these two reached the caller as INVALID_ARGUMENT, as if the caller erred)."""
    abort = abort_for(error)
    assert abort.code is grpc.StatusCode.INTERNAL and abort.metadata == ()
    assert str(error) not in abort.message


def test_a_callers_bad_request_is_invalid_argument() -> None:
    abort = abort_for(InvalidRequestError("the chunk digest does not match"))
    assert abort.code is grpc.StatusCode.INVALID_ARGUMENT
    assert abort.message == "the chunk digest does not match"
