"""The party's (and operator's) client for the linkage unit: mutual TLS, deadlines, retries.

Uploads resume from the offset the linkage unit has committed, so an interrupted transfer
never starts over. ``ERROR_FOR_STATUS`` is the inverse of the servicer's error -> status
table: a refusal arrives as the same ``protocol.errors`` class the service raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from protocol import serde
from protocol.clk_file import HEADER_LENGTH, read_header
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ResourceLimitError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from protocol.identity import Identity
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
from protocol.tls import TlsFiles

__all__ = ["ERROR_FOR_STATUS", "FetchedLinkKeys", "LinkageClient", "error_from_rpc"]

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
"""Inverse of ``linkage_unit.servicer.STATUS_FOR_ERROR`` (tests/test_error_table.py)."""

# Subclasses told apart by the error-name trailing metadata, only under their own status.
_SPECIFIC = {CompatibilityError.__name__: CompatibilityError}

T = TypeVar("T")
ProgressCallback = Callable[[int, int], None]
"""``progress(bytes_committed, bytes_total)`` during an upload."""


def error_from_rpc(error: grpc.RpcError) -> ServiceError:
    """The ``protocol.errors`` class the linkage unit raised, rebuilt from a gRPC status."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    metadata = dict(error.trailing_metadata() or ())
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
    (tests and development against ``bloomlink serve --insecure``).
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
    ) -> None:
        if (tls is None) == (insecure_identity is None):
            raise ValueError("give exactly one of tls or insecure_identity")
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.retries = retries
        self.backoff = backoff
        self.chunk_bytes = min(chunk_bytes, max_message_bytes - 1024)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", keepalive_seconds * 1000),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._metadata: tuple[tuple[str, str], ...] = ()
        if tls is not None:
            ca, chain, key = tls.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=chain
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            assert insecure_identity is not None
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

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Call ``attempt``, retrying UNAVAILABLE with exponential backoff."""
        for number in range(self.retries + 1):
            try:
                return attempt()
            except grpc.RpcError as rpc_error:
                error = error_from_rpc(rpc_error)
                if not isinstance(error, UnavailableError) or number == self.retries:
                    raise error from None
                delay = self.backoff * (2**number)
                logger.info("linkage unit unavailable; retry %d in %.1fs", number + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _unary(self, method: Callable[..., T], request: object) -> T:
        return self._retrying(
            lambda: method(request, timeout=self.timeout, metadata=self._metadata)
        )

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
        response: pb.GetProjectStatusResponse = self._unary(
            self._stub.GetProjectStatus, pb.GetProjectStatusRequest(project_id=project_id)
        )
        return serde.project_status_from_proto(response)

    def wait_for_run(self, project_id: str, *, timeout: float, poll: float = 0.2) -> ProjectStatus:
        """Poll status until the run finishes, is refused or fails (or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.project_status(project_id)
            if status.run_state in (RunState.FINISHED, RunState.REFUSED, RunState.FAILED):
                return status
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"the run did not finish within {timeout:.0f}s (state {status.run_state})"
                )
            time.sleep(poll)

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

    def _requests(
        self, path: Path, header: UploadHeader, offset: int, manifest: SignedManifest | None
    ) -> Iterator[pb.UploadRequest]:
        yield serde.upload_header_to_proto(header, manifest)
        with path.open("rb") as handle:
            handle.seek(HEADER_LENGTH + offset)
            while data := handle.read(self.chunk_bytes):
                yield serde.upload_chunk_to_proto(UploadChunk.of(offset, data))
                offset += len(data)

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

        Uploading a byte-identical file again is a no-op that reports COMPLETE.
        """
        file_path = Path(path)
        header = UploadHeader.from_clk_file_header(read_header(file_path), party_id=party_id)

        def attempt() -> UploadProgress:
            held = self.upload_offset(header)
            if held.state is UploadState.COMPLETE:
                return held
            start = held.committed_bytes if held.state is UploadState.PARTIAL else 0
            response: pb.UploadResponse = self._stub.Upload(
                self._requests(file_path, header, start, manifest),
                timeout=self.upload_timeout,
                metadata=self._metadata,
            )
            return serde.upload_progress_from_proto(response)

        result = self._retrying(attempt)
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

        return self._retrying(attempt)

    def fetch_link_keys(self, project_id: str, party_id: str) -> FetchedLinkKeys:
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
            if len(keys) != total or digest.hexdigest() != claimed:
                raise UnavailableError("the link-key download was incomplete or corrupted; retry")
            return FetchedLinkKeys(
                positions=tuple(positions), link_keys=tuple(keys), keys_sha256=claimed
            )

        return self._retrying(attempt)
