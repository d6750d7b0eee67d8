"""Certificate issuance (linkage_unit/pki.py): validity windows follow the injected clock."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from linkage_unit.pki import (
    create_authority,
    init_certificates,
    issue_client_certificate,
    issue_server_certificate,
)
from protocol.identity import Identity, Role

_MOMENT = datetime.datetime(2031, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)


def _fixed() -> datetime.datetime:
    return _MOMENT


def _window(pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    certificate = x509.load_pem_x509_certificate(pem)
    return certificate.not_valid_before_utc, certificate.not_valid_after_utc


def test_every_issuing_call_reads_the_clock_it_is_given() -> None:
    authority = create_authority(days=100, clock=_fixed)
    server = issue_server_certificate(authority, days=10, clock=_fixed)
    client = issue_client_certificate(
        authority, Identity(role=Role.PARTY, party="moj"), days=20, clock=_fixed
    )
    start = _MOMENT - datetime.timedelta(minutes=5)
    assert _window(authority.certificate_pem) == (
        start,
        _MOMENT + datetime.timedelta(days=100),
    )
    assert _window(server.certificate_pem) == (start, _MOMENT + datetime.timedelta(days=10))
    assert _window(client.certificate_pem) == (start, _MOMENT + datetime.timedelta(days=20))


def test_init_certificates_passes_its_clock_to_every_certificate(tmp_path: Path) -> None:
    written = init_certificates(tmp_path / "pki", parties=("moj",), days=40, clock=_fixed)
    pairs = [written.linkage_unit, written.operator, written.parties["moj"]]
    assert written.auditor is not None
    pairs.append(written.auditor)
    for pair in pairs:
        start, end = _window(pair.certificate.read_bytes())
        assert (start, end) == (
            _MOMENT - datetime.timedelta(minutes=5),
            _MOMENT + datetime.timedelta(days=40),
        )
    ca_start, _ = _window(written.ca_certificate.read_bytes())
    assert ca_start == _MOMENT - datetime.timedelta(minutes=5)
