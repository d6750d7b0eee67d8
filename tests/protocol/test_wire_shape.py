"""The wire protocol's shape: one Request/Response pair per RPC (house style), so no RPC
reuses another's message and a field added for one never leaks into another."""

from __future__ import annotations

from protocol.pb import linkage_pb2 as pb


def test_every_rpc_has_its_own_request_and_response() -> None:
    service = pb.DESCRIPTOR.services_by_name["LinkageUnit"]
    pairs = {
        method.name: (method.input_type.name, method.output_type.name) for method in service.methods
    }
    assert pairs == {name: (f"{name}Request", f"{name}Response") for name in pairs}, (
        "an RPC takes or returns another RPC's message"
    )
