"""The gRPC servicer: authenticates each call from its verified peer certificate, converts
messages with ``protocol.serde`` and delegates to :class:`LinkageService`.

The one error -> status table lives here (``STATUS_FOR_ERROR``); ``party/client.py`` holds
its inverse and a test checks they round-trip. Anything unexpected is logged with its
traceback (never a payload) and returned as INTERNAL with a generic message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from linkage_unit.service import Caller, LinkageService
from protocol import serde
from protocol.certificates import certificate_fingerprint
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    MatchingError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ResourceLimitError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from protocol.identity import Identity, identity_from_certificate
from protocol.messages import LinkKeyBatch
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.serde import (
    ASPECT_METADATA_KEY,
    ERROR_METADATA_KEY,
    IDENTITY_METADATA_KEY,
    PARTY_METADATA_KEY,
)

__all__ = [
    "ERROR_METADATA_KEY",
    "IDENTITY_METADATA_KEY",
    "STATUS_FOR_ERROR",
    "LinkageUnitServicer",
    "status_for_error",
]

logger = logging.getLogger("bloomlink.linkage_unit.servicer")

# Most specific first. The error class name also travels in trailing metadata so the client
# can tell a CompatibilityError from any other FAILED_PRECONDITION.
STATUS_FOR_ERROR: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (CompatibilityError, grpc.StatusCode.FAILED_PRECONDITION),
    (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (ResourceLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
)

_AUDIT_BATCH_BYTES = 1 << 20  # well under the default 4 MiB message cap
_INTERNAL_MESSAGE = "the linkage unit failed unexpectedly; the operator's log has the details"

T = TypeVar("T")


def status_for_error(error: ServiceError) -> tuple[grpc.StatusCode, tuple[tuple[str, str], ...]]:
    """The status code and trailing metadata for a service error."""
    for error_type, code in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            metadata: list[tuple[str, str]] = [(ERROR_METADATA_KEY, error_type.__name__)]
            if isinstance(error, CompatibilityError):
                metadata += [
                    (PARTY_METADATA_KEY, error.party or ""),
                    (ASPECT_METADATA_KEY, error.aspect or ""),
                ]
            return code, tuple(metadata)
    return grpc.StatusCode.INTERNAL, ()


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, metadata: tuple[tuple[str, str], ...]):
        super().__init__(message)
        self.code, self.message, self.metadata = code, message, metadata


def _translate(error: BaseException) -> _Abort:
    if isinstance(error, ServiceError):
        code, metadata = status_for_error(error)
        return _Abort(code, error.message, metadata)
    if isinstance(error, ConfigurationError | MatchingError):
        # Validation of request values (labels, settings): the caller's mistake.
        return _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            error.message,
            ((ERROR_METADATA_KEY, InvalidRequestError.__name__),),
        )
    logger.error("unexpected %s in a request handler", type(error).__name__, exc_info=error)
    return _Abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE, ())


class _StreamWatchdog:
    """Cancels a client stream that sends nothing for ``idle_seconds`` or runs past
    ``max_seconds``: grpcio has no server-side stream timeout, and a slow-loris stream would
    otherwise hold a worker thread for as long as its client likes."""

    def __init__(
        self, context: grpc.ServicerContext, *, idle_seconds: float, max_seconds: float
    ) -> None:
        self._context = context
        self._idle = idle_seconds
        self._end = time.monotonic() + max_seconds
        self._last = time.monotonic()
        self._done = threading.Event()
        self.expired = False
        threading.Thread(target=self._watch, name="stream-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self._done.wait(
            max(0.0, min(self._last + self._idle, self._end) - time.monotonic())
        ):
            now = time.monotonic()
            if now >= self._last + self._idle or now >= self._end:
                self.expired = True
                self._context.cancel()
                return

    def watched(self, messages: Iterator[T]) -> Iterator[T]:
        try:
            for message in messages:
                self._last = time.monotonic()
                yield message
        except grpc.RpcError:
            if self.expired:
                raise UnavailableError(
                    f"the upload stream was idle for {self._idle:.0f}s or exceeded its maximum "
                    "duration and was cut; resume the upload"
                ) from None
            raise

    def stop(self) -> None:
        self._done.set()


class LinkageUnitServicer(pb_grpc.LinkageUnitServicer):
    """Translates between gRPC and :class:`LinkageService`; holds no logic of its own."""

    def __init__(
        self,
        service: LinkageService,
        *,
        insecure: bool = False,
        stream_idle_seconds: float = 120.0,
        max_stream_seconds: float = 6 * 3600.0,
    ) -> None:
        self._service = service
        self._insecure = insecure
        self._stream_idle_seconds = stream_idle_seconds
        self._max_stream_seconds = max_stream_seconds

    # -- identity -----------------------------------------------------------------------

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        if self._insecure:
            metadata = {key: value for key, value in context.invocation_metadata()}
            text = metadata.get(IDENTITY_METADATA_KEY)
            if not isinstance(text, str):
                raise UnauthenticatedError(f"insecure mode: send {IDENTITY_METADATA_KEY} metadata")
            try:
                return Caller(identity=Identity.from_text(text), certificate_fingerprint="insecure")
            except ConfigurationError:
                raise UnauthenticatedError("insecure mode: unrecognised identity") from None
        # Fail closed: without a verified peer certificate there is no identity. The role
        # comes from the certificate's one bloomlink URI SAN only (protocol/identity.py),
        # never from gRPC's peer identities, which fall back to the common name.
        pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
        if not pem:
            raise UnauthenticatedError("no verified client certificate on this connection")
        identity = identity_from_certificate(pem)
        return Caller(identity=identity, certificate_fingerprint=certificate_fingerprint(pem))

    def _call(self, context: grpc.ServicerContext, action: Callable[[Caller], T]) -> T:
        try:
            return action(self._caller(context))
        except Exception as error:  # translated below, outside the handler's try
            abort = _translate(error)
        context.set_trailing_metadata(abort.metadata)
        context.abort(abort.code, abort.message)
        raise AssertionError("unreachable")  # context.abort raises

    # -- RPCs ---------------------------------------------------------------------------

    def CreateProject(
        self, request: pb.CreateProjectRequest, context: grpc.ServicerContext
    ) -> pb.CreateProjectResponse:
        def action(caller: Caller) -> pb.CreateProjectResponse:
            settings = serde.project_settings_from_proto(request)
            fingerprint = self._service.create_project(caller, settings)
            return pb.CreateProjectResponse(
                project_id=settings.project_id, settings_fingerprint=fingerprint
            )

        return self._call(context, action)

    def GetProjectStatus(
        self, request: pb.GetProjectStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetProjectStatusResponse:
        def action(caller: Caller) -> pb.GetProjectStatusResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            return serde.project_status_to_proto(self._service.project_status(caller, project_id))

        return self._call(context, action)

    def Upload(
        self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        watchdog = _StreamWatchdog(
            context, idle_seconds=self._stream_idle_seconds, max_seconds=self._max_stream_seconds
        )
        messages = watchdog.watched(request_iterator)

        def action(caller: Caller) -> pb.UploadResponse:
            first = next(messages, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidRequestError("an upload must start with its header message")
            serde.check_no_unknown_fields(first)
            session = self._service.open_upload(
                caller,
                serde.upload_header_from_proto(first.header),
                serde.manifest_from_proto(first.header),
            )
            try:
                for message in messages:
                    if message.WhichOneof("part") != "chunk":
                        raise InvalidRequestError("only chunks may follow the upload header")
                    serde.check_no_unknown_fields(message)
                    session.accept(serde.upload_chunk_from_proto(message.chunk))
                progress = session.finish()
            finally:
                session.close()
            return serde.upload_progress_to_proto(progress, pb.UploadResponse)

        try:
            return self._call(context, action)
        finally:
            watchdog.stop()

    def GetUploadOffset(
        self, request: pb.GetUploadOffsetRequest, context: grpc.ServicerContext
    ) -> pb.GetUploadOffsetResponse:
        def action(caller: Caller) -> pb.GetUploadOffsetResponse:
            serde.check_no_unknown_fields(request)
            progress = self._service.upload_offset(
                caller,
                serde.label_from_proto(request.project_id, what="project id"),
                serde.label_from_proto(request.party_id, what="party id"),
                bytes(request.payload_sha256),
            )
            return serde.upload_progress_to_proto(progress, pb.GetUploadOffsetResponse)

        return self._call(context, action)

    def StartRun(
        self, request: pb.StartRunRequest, context: grpc.ServicerContext
    ) -> pb.StartRunResponse:
        def action(caller: Caller) -> pb.StartRunResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            return serde.run_ticket_to_proto(self._service.start_run(caller, project_id))

        return self._call(context, action)

    def GetAuditPublicKey(
        self, request: pb.GetAuditPublicKeyRequest, context: grpc.ServicerContext
    ) -> pb.GetAuditPublicKeyResponse:
        def action(caller: Caller) -> pb.GetAuditPublicKeyResponse:
            serde.check_no_unknown_fields(request)
            return pb.GetAuditPublicKeyResponse(
                public_key_pem=self._service.audit_public_key(caller)
            )

        return self._call(context, action)

    def GetProjectSettings(
        self, request: pb.GetProjectSettingsRequest, context: grpc.ServicerContext
    ) -> pb.CreateProjectRequest:
        def action(caller: Caller) -> pb.CreateProjectRequest:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            settings = self._service.project_settings(caller, project_id)
            return serde.project_settings_to_proto(settings)

        return self._call(context, action)

    def FetchAuditLog(
        self, request: pb.FetchAuditLogRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchAuditLogResponse]:
        def action(caller: Caller) -> tuple[list[bytes], bytes]:
            serde.check_no_unknown_fields(request)
            project_id = (
                serde.label_from_proto(request.project_id, what="project id")
                if request.project_id
                else None
            )
            return self._service.audit_lines(caller, project_id)

        lines, head = self._call(context, action)
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > _AUDIT_BATCH_BYTES:
                yield pb.FetchAuditLogResponse(lines=batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        yield pb.FetchAuditLogResponse(lines=batch, signed_head=head)

    def FetchLinkKeys(
        self, request: pb.FetchLinkKeysRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchLinkKeysResponse]:
        def action(caller: Caller) -> tuple[LinkKeyBatch, Iterator[LinkKeyBatch]]:
            serde.check_no_unknown_fields(request)
            batches = self._service.fetch_link_keys(
                caller,
                serde.label_from_proto(request.project_id, what="project id"),
                serde.label_from_proto(request.party_id, what="party id"),
            )
            return next(batches), batches  # every check has run before anything is sent

        first, rest = self._call(context, action)
        yield serde.link_key_batch_to_proto(first)
        try:
            for batch in rest:
                yield serde.link_key_batch_to_proto(batch)
        except Exception as error:
            abort = _translate(error)
            context.set_trailing_metadata(abort.metadata)
            context.abort(abort.code, abort.message)
