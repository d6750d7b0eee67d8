"""The party's (and operator's) client for the linkage unit: mutual TLS, deadlines, retries.

Calls that fail UNAVAILABLE are retried by gRPC itself (its retry policy, set in the channel's
service config: exponential backoff, at most five attempts). Uploads also resume from the
offset the linkage unit has committed, so an interrupted transfer never starts over.
``ERROR_FOR_STATUS`` is the inverse of the servicer's error -> status table: a refusal
arrives as the same ``protocol.errors`` class the service raised. A connection that fails
because of the caller's own TLS setup (the target's host name is not in the linkage unit's
certificate, or --ca did not sign it) is a ConfigurationError naming the flag to fix, not
"unavailable, retry later".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol import serde
from protocol.clk_file import read_header
from protocol.errors import (
    AlreadyExistsError,
    BloomlinkError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    InvariantError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ResourceLimitError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from protocol.identity import Identity, identity_from_certificate
from protocol.manifest import SignedManifest
from protocol.messages import (
    LinkKeysDigest,
    ProjectSettings,
    ProjectStatus,
    RunState,
    RunTicket,
    UploadChunk,
    UploadHeader,
    UploadProgress,
    UploadState,
)
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.serde import ASPECT_METADATA_KEY, ERROR_METADATA_KEY, PARTY_METADATA_KEY
from protocol.tls import TlsFiles, issued_by_ca

__all__ = [
    "ERROR_FOR_STATUS",
    "SERVICE_NAME",
    "FetchedLinkKeys",
    "LinkageClient",
    "certificate_identity",
    "retry_service_config",
    "error_from_rpc",
]

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LinkageUnit"].full_name
"""The gRPC service name, as the health service reports it (``bloomlink.v1.LinkageUnit``)."""

logger = logging.getLogger("bloomlink.party.client")

ERROR_FOR_STATUS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceLimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}
"""Inverse of ``linkage_unit.servicer.STATUS_FOR_ERROR`` (tests/protocol/test_error_table.py)."""

# Subclasses told apart by the error-name trailing metadata, only under their own status.
_SPECIFIC = {CompatibilityError.__name__: CompatibilityError}

T = TypeVar("T")
ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: bytes sent during an upload, link keys during a fetch."""

# What gRPC's TLS layer says when the caller's own setup is wrong (grpcio 1.85).
_HOSTNAME_MISMATCH = ("Hostname Verification Check failed", "No match found for server name")
_UNTRUSTED_SERVER = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


def retry_service_config(retries: int, backoff: float) -> str:
    """gRPC's retry policy for every method of the service: UNAVAILABLE is retried with
    exponential backoff (gRPC caps attempts at five)."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": min(retries + 1, 5),
                        "initialBackoff": f"{backoff:.3f}s",
                        "maxBackoff": f"{max(backoff * 16, backoff):.3f}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def certificate_identity(certificate_pem: bytes) -> Identity | None:
    """The identity the linkage unit will read from this client certificate (one exact
    bloomlink URI SAN, protocol/identity.py), or None if it would refuse the certificate."""
    try:
        return identity_from_certificate(certificate_pem)
    except UnauthenticatedError:
        return None


def error_from_rpc(
    error: grpc.RpcError, *, target: str | None = None, server_name: str | None = None
) -> BloomlinkError:
    """The ``protocol.errors`` class the linkage unit raised, rebuilt from a gRPC status; or
    a ConfigurationError when the connection failed because of the caller's TLS setup."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    metadata = dict(error.trailing_metadata() or ())
    if code is grpc.StatusCode.UNAVAILABLE:
        where = f" {target}" if target else ""
        host = server_name or (target.rsplit(":", 1)[0] if target else "the target host")
        if any(sign in message for sign in _HOSTNAME_MISMATCH):
            return ConfigurationError(
                f"the linkage unit at{where} has a certificate that does not name {host!r}: "
                "give --target with a host name or address its certificate was issued for "
                "(bloomlink certs init --host/--address), or --server-name NAME with one of "
                "its names; retrying will not help"
            )
        if any(sign in message for sign in _UNTRUSTED_SERVER):
            return ConfigurationError(
                f"the linkage unit at{where} has a certificate the CA in --ca did not sign: "
                "give --ca the deployment's CA certificate (ca.pem from bloomlink certs init)"
            )
    base = ERROR_FOR_STATUS.get(code)
    if base is None:
        return ServiceError(f"the linkage unit answered {code.name}: {message}")
    specific = _SPECIFIC.get(str(metadata.get(ERROR_METADATA_KEY, "")))
    if specific is CompatibilityError and issubclass(specific, base):
        return CompatibilityError(
            message,
            party=str(metadata.get(PARTY_METADATA_KEY) or "") or None,
            aspect=str(metadata.get(ASPECT_METADATA_KEY) or "") or None,
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        message = f"the linkage unit could not be reached ({message}); retry later"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message = "the linkage unit did not answer in time; retry later"
    return base(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchedLinkKeys:
    """A party's link keys as released: ``positions[i]`` has ``link_keys[i]``."""

    positions: tuple[int, ...]
    link_keys: tuple[str, ...]
    keys_sha256: str


class LinkageClient:
    """One channel to the linkage unit. Use as a context manager or call :meth:`close`.

    ``tls`` gives mutual TLS (the default and the only mode for real data); with
    ``insecure_identity`` the channel is plaintext and the identity is merely claimed
    (tests and development against ``bloomlink serve --insecure``). ``retries`` and
    ``backoff`` set gRPC's retry policy (and the upload's resume attempts). ``monotonic`` and
    ``sleep`` are the clock the client waits on (tests pass their own).
    """

    def __init__(
        self,
        target: str,
        *,
        tls: TlsFiles | None = None,
        insecure_identity: Identity | None = None,
        timeout: float = 30.0,
        upload_timeout: float = 3600.0,
        retries: int = 5,
        backoff: float = 0.2,
        chunk_bytes: int = 1 << 20,
        max_message_bytes: int = 4 << 20,
        server_name: str | None = None,
        keepalive_seconds: int = 60,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if (tls is None) == (insecure_identity is None):
            raise ValueError("give exactly one of tls or insecure_identity")
        self.target = target
        self.server_name = server_name
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.retries = retries
        self.backoff = backoff
        self._monotonic = monotonic
        self._sleep = sleep
        self.chunk_bytes = min(chunk_bytes, max_message_bytes - 1024)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", keepalive_seconds * 1000),
            ("grpc.enable_retries", 1 if retries > 0 else 0),
        ]
        if retries > 0:
            options.append(("grpc.service_config", retry_service_config(retries, backoff)))
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._foreign_certificate: TlsFiles | None = None
        self.identity: Identity | None = insecure_identity
        """Who this client is: from its certificate's URI SAN (or the claimed identity)."""
        if tls is not None:
            ca, chain, key = tls.read()
            self.identity = certificate_identity(chain)
            if not issued_by_ca(chain, ca):
                self._foreign_certificate = tls
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=chain
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            if insecure_identity is None:
                raise InvariantError("a plaintext channel needs the identity it claims")
            self._metadata = ((serde.IDENTITY_METADATA_KEY, insecure_identity.text),)
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.LinkageUnitStub(self._channel)

    def __enter__(self) -> LinkageClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, attempt: Callable[[], T]) -> T:
        """Call ``attempt``; a gRPC failure becomes its ``protocol.errors`` class."""
        try:
            return attempt()
        except grpc.RpcError as rpc_error:
            error = error_from_rpc(rpc_error, target=self.target, server_name=self.server_name)
            foreign = self._foreign_certificate
            if isinstance(error, UnavailableError) and foreign is not None:
                # The LU cut the handshake: it trusts only the deployment's CA. Retrying
                # cannot help, so this is not "unavailable".
                raise UnauthenticatedError(
                    f"the linkage unit at {self.target} refused your certificate: "
                    f"{foreign.certificate} was not issued by the CA in {foreign.ca_certificate} "
                    "(the deployment's CA, which the linkage unit trusts); use the certificate "
                    "and key the deployment's CA issued to you"
                ) from None
            raise error from None

    def _unary(self, method: Callable[..., T], request: object) -> T:
        # Retries of UNAVAILABLE happen inside gRPC (the channel's retry policy).
        return self._call(lambda: method(request, timeout=self.timeout, metadata=self._metadata))

    def check_party(self, party_id: str) -> None:
        """Refuse, before any call, a ``--party`` that is not the party in our certificate
        (the linkage unit would only say "not found")."""
        identity = self.identity
        if identity is None:
            return
        if identity.party is None:
            raise ConfigurationError(
                f"--party {party_id}: your certificate is the {identity.role}'s, not a party's; "
                f"use party {party_id}'s certificate (party-{party_id}.pem from certs init)"
            )
        if identity.party != party_id:
            raise ConfigurationError(
                f"--party {party_id} does not match your certificate, which is party "
                f"{identity.party}'s: give --party {identity.party}, or --cert/--key for "
                f"party {party_id}"
            )

    def health(self, service: str = SERVICE_NAME) -> str:
        """The gRPC health service's answer for ``service`` (``SERVING``, ``NOT_SERVING``...)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._call(
            lambda: stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    # -- operator -------------------------------------------------------------------------

    def create_project(self, settings: ProjectSettings) -> str:
        """Register a project (operator); return its settings fingerprint."""
        response: pb.CreateProjectResponse = self._unary(
            self._stub.CreateProject, serde.project_settings_to_proto(settings)
        )
        return response.settings_fingerprint

    def start_run(self, project_id: str) -> RunTicket:
        response: pb.StartRunResponse = self._unary(
            self._stub.StartRun, pb.StartRunRequest(project_id=project_id)
        )
        return serde.run_ticket_from_proto(response)

    def project_status(self, project_id: str) -> ProjectStatus:
        """Who has uploaded, the checks, the run's state and progress."""
        response: pb.GetProjectStatusResponse = self._unary(
            self._stub.GetProjectStatus, pb.GetProjectStatusRequest(project_id=project_id)
        )
        return serde.project_status_from_proto(response)

    def wait_for_run(self, project_id: str, *, timeout: float, poll: float = 0.2) -> ProjectStatus:
        """Poll status until the run finishes, is refused or fails (or ``timeout`` passes)."""
        deadline = self._monotonic() + timeout
        while True:
            status = self.project_status(project_id)
            if status.run_state in (RunState.FINISHED, RunState.REFUSED, RunState.FAILED):
                return status
            if self._monotonic() >= deadline:
                raise UnavailableError(
                    f"the run did not finish within {timeout:.0f}s (state {status.run_state})"
                )
            self._sleep(poll)

    # -- party ----------------------------------------------------------------------------

    def upload_offset(self, header: UploadHeader) -> UploadProgress:
        response: pb.GetUploadOffsetResponse = self._unary(
            self._stub.GetUploadOffset,
            pb.GetUploadOffsetRequest(
                project_id=header.project_id,
                party_id=header.party_id,
                payload_sha256=header.payload_sha256,
            ),
        )
        return serde.upload_progress_from_proto(response)

    def submission_state(
        self, project_id: str, party_id: str, payload_sha256: bytes
    ) -> UploadState:
        """What the linkage unit holds of this party's upload with this payload digest
        (NOT_STARTED if it holds none, or a different payload)."""
        response: pb.GetUploadOffsetResponse = self._unary(
            self._stub.GetUploadOffset,
            pb.GetUploadOffsetRequest(
                project_id=project_id, party_id=party_id, payload_sha256=payload_sha256
            ),
        )
        return serde.upload_progress_from_proto(response).state

    def _requests(
        self,
        path: Path,
        header: UploadHeader,
        offset: int,
        manifest: SignedManifest | None,
        progress: ProgressCallback | None,
    ) -> Iterator[pb.UploadRequest]:
        yield serde.upload_header_to_proto(header, manifest)
        with path.open("rb") as handle:
            handle.seek(header.clk_file_header.header_length + offset)
            while data := handle.read(self.chunk_bytes):
                yield serde.upload_chunk_to_proto(UploadChunk.of(offset, data))
                offset += len(data)
                if progress:
                    progress(offset, header.payload_bytes)

    def upload_file(
        self,
        path: Path | str,
        *,
        party_id: str,
        manifest: SignedManifest | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadProgress:
        """Send an encoded file as ``party_id`` with its signed manifest, resuming from
        whatever is already committed.

        Uploading a byte-identical file again is a no-op that reports COMPLETE. A stream
        cut off part-way (UNAVAILABLE) resumes from the offset the linkage unit committed,
        up to ``retries`` times.
        """
        file_path = Path(path)
        header = UploadHeader.from_clk_file_header(read_header(file_path), party_id=party_id)

        def attempt() -> UploadProgress:
            held = self.upload_offset(header)
            if held.state is UploadState.COMPLETE:
                return held
            start = held.committed_bytes if held.state is UploadState.PARTIAL else 0
            if progress:
                progress(start, header.payload_bytes)
            response: pb.UploadResponse = self._call(
                lambda: self._stub.Upload(
                    self._requests(file_path, header, start, manifest, progress),
                    timeout=self.upload_timeout,
                    metadata=self._metadata,
                )
            )
            return serde.upload_progress_from_proto(response)

        for number in range(self.retries + 1):
            try:
                result = attempt()
                break
            except UnavailableError:
                if number == self.retries:
                    raise
                delay = self.backoff * (2**number)
                logger.info("upload interrupted; resuming (%d) in %.1fs", number + 1, delay)
                self._sleep(delay)
        if progress:
            progress(result.committed_bytes, header.payload_bytes)
        return result

    # -- audit --------------------------------------------------------------------------

    def audit_public_key(self) -> bytes:
        """The linkage unit's audit public key (PEM)."""
        response: pb.GetAuditPublicKeyResponse = self._unary(
            self._stub.GetAuditPublicKey, pb.GetAuditPublicKeyRequest()
        )
        return bytes(response.public_key_pem)

    def project_settings(self, project_id: str) -> ProjectSettings:
        response: pb.GetProjectSettingsResponse = self._unary(
            self._stub.GetProjectSettings, pb.GetProjectSettingsRequest(project_id=project_id)
        )
        settings = serde.project_settings_from_proto(response.settings)
        if settings.fingerprint != response.settings_fingerprint:
            raise UnavailableError("the project settings were garbled in transit; retry")
        return settings

    def project_report(self, project_id: str) -> tuple[str, dict[str, Any]]:
        """Operator only: the run id and match-quality report (aggregates only) of the
        project's newest finished run."""
        response: pb.GetProjectReportResponse = self._unary(
            self._stub.GetProjectReport, pb.GetProjectReportRequest(project_id=project_id)
        )
        try:
            report = json.loads(response.report_json)
        except ValueError:
            raise UnavailableError("the report was garbled in transit; retry") from None
        if not isinstance(report, dict):
            raise UnavailableError("the report was garbled in transit; retry")
        return str(response.run_id), report

    def fetch_audit_log(self, project_id: str | None = None) -> tuple[bytes, bytes]:
        """The audit log (whole, or one project's view) as JSON-lines bytes, and its signed
        head (JSON bytes; empty if the log is empty)."""

        def attempt() -> tuple[bytes, bytes]:
            lines: list[bytes] = []
            head = b""
            for message in self._stub.FetchAuditLog(
                pb.FetchAuditLogRequest(project_id=project_id or ""),
                timeout=self.upload_timeout,
                metadata=self._metadata,
            ):
                lines.extend(bytes(line) for line in message.lines)
                head = bytes(message.signed_head) or head
            return b"".join(lines), head

        return self._call(attempt)

    def fetch_link_keys(
        self, project_id: str, party_id: str, *, progress: ProgressCallback | None = None
    ) -> FetchedLinkKeys:
        """Download this party's link keys; checks their count and digest."""

        def attempt() -> FetchedLinkKeys:
            positions: list[int] = []
            keys: list[str] = []
            digest, total, claimed = LinkKeysDigest(), -1, ""
            for message in self._stub.FetchLinkKeys(
                pb.FetchLinkKeysRequest(project_id=project_id, party_id=party_id),
                timeout=self.upload_timeout,
                metadata=self._metadata,
            ):
                batch = serde.link_key_batch_from_proto(message)
                positions.extend(batch.positions)
                keys.extend(batch.link_keys)
                digest.update(batch.positions, batch.link_keys)
                total, claimed = batch.total_count, batch.keys_sha256 or claimed
                if progress:
                    progress(len(keys), total)
            if len(keys) != total or digest.hexdigest() != claimed:
                raise UnavailableError("the link-key download was incomplete or corrupted; retry")
            return FetchedLinkKeys(
                positions=tuple(positions), link_keys=tuple(keys), keys_sha256=claimed
            )

        return self._call(attempt)
