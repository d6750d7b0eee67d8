"""The gRPC servicer: authenticates each call from its verified peer certificate, converts
messages with ``protocol.serde`` and delegates to :class:`LinkageService`.

The one error -> status table lives here (``STATUS_FOR_ERROR``); ``party/client.py`` holds
its inverse and a test checks they round-trip. Anything unexpected is logged with its
traceback (never a payload) and returned as INTERNAL with a generic message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc

from linkage_unit.admission import Operation
from linkage_unit.service import Caller, LinkageService
from linkage_unit.watchdog import StreamWatchdog, WatchedStream
from protocol import serde
from protocol.errors import (
    AlreadyExistsError,
    CompatibilityError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    ResourceLimitError,
    ServiceError,
    UnauthenticatedError,
    UnavailableError,
)
from protocol.identity import Identity, identity_from_certificate
from protocol.pb import linkage_pb2 as pb
from protocol.pb import linkage_pb2_grpc as pb_grpc
from protocol.serde import (
    ASPECT_METADATA_KEY,
    ERROR_METADATA_KEY,
    IDENTITY_METADATA_KEY,
    PARTY_METADATA_KEY,
)
from protocol.tls import certificate_fingerprint

__all__ = [
    "Abort",
    "ERROR_METADATA_KEY",
    "IDENTITY_METADATA_KEY",
    "STATUS_FOR_ERROR",
    "LinkageUnitServicer",
    "abort_for",
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
R = TypeVar("R")


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """How a call that raised ends: its status code, message and trailing metadata."""

    code: grpc.StatusCode
    message: str
    metadata: tuple[tuple[str, str], ...] = ()


def abort_for(error: BaseException) -> Abort:
    """The one translation of an exception into a status: a ServiceError through the table
    (the caller's mistake or state, in its own words); anything else is the linkage unit's
    fault, logged with its traceback (never a payload) and returned as INTERNAL with a fixed
    message, whatever it says."""
    if isinstance(error, ServiceError):
        code, metadata = status_for_error(error)
        return Abort(code=code, message=error.message, metadata=metadata)
    logger.error("unexpected %s in a request handler", type(error).__name__, exc_info=error)
    return Abort(code=grpc.StatusCode.INTERNAL, message=_INTERNAL_MESSAGE)


class LinkageUnitServicer(pb_grpc.LinkageUnitServicer):
    """Translates between gRPC and :class:`LinkageService`; holds no logic of its own.

    Every call is authenticated and admitted (role, stream slot, audit budget:
    ``linkage_unit/admission.py``) before any request message is read, and every stream is
    under the watchdog (``linkage_unit/watchdog.py``) for as long as it is open.
    """

    def __init__(
        self,
        service: LinkageService,
        *,
        insecure: bool = False,
        watchdog: StreamWatchdog | None = None,
    ) -> None:
        self._service = service
        self._insecure = insecure
        self._watchdog = watchdog or StreamWatchdog(idle_seconds=120.0, max_seconds=6 * 3600.0)

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

    @staticmethod
    def _abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
        abort = abort_for(error)
        context.set_trailing_metadata(abort.metadata)
        context.abort(abort.code, abort.message)
        raise AssertionError("unreachable")  # context.abort raises

    def _call(
        self, context: grpc.ServicerContext, operation: Operation, action: Callable[[Caller], T]
    ) -> T:
        """A unary call (or a client stream): authenticate, admit, act, translate errors."""
        try:
            caller = self._caller(context)
            with self._service.admit(caller, operation, stream=operation is Operation.UPLOAD):
                return action(caller)
        except Exception as error:  # translated below, outside the handler's try
            failure = error
        self._abort(context, failure)

    def _stream(
        self,
        context: grpc.ServicerContext,
        operation: Operation,
        produce: Callable[[Caller], Iterator[R]],
    ) -> Iterator[R]:
        """A server stream: admitted and watched for its whole life. The first item is made
        before anything is sent, so every check has run by then; each item the client takes
        (the generator resumes once gRPC has sent the previous one) counts as progress."""
        with contextlib.ExitStack() as held:
            try:
                caller = self._caller(context)
                held.enter_context(self._service.admit(caller, operation, stream=True))
                watched = self._watchdog.watch(context.cancel)
                held.callback(watched.close)
                items = produce(caller)
                first = next(items)
            except Exception as error:
                self._abort(context, error)
            yield first
            watched.progress()
            while True:
                try:
                    item = next(items)
                except StopIteration:
                    return
                except Exception as error:
                    self._abort(context, error)
                yield item
                watched.progress()

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

        return self._call(context, Operation.CREATE_PROJECT, action)

    def GetProjectStatus(
        self, request: pb.GetProjectStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetProjectStatusResponse:
        def action(caller: Caller) -> pb.GetProjectStatusResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            return serde.project_status_to_proto(self._service.project_status(caller, project_id))

        return self._call(context, Operation.GET_PROJECT_STATUS, action)

    def Upload(
        self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext
    ) -> pb.UploadResponse:
        def action(caller: Caller) -> pb.UploadResponse:
            # Admitted (role and stream slot) before the first message is read.
            watched = self._watchdog.watch(context.cancel)
            try:
                return upload(caller, _progressing(request_iterator, watched))
            finally:
                watched.close()

        def upload(caller: Caller, messages: Iterator[pb.UploadRequest]) -> pb.UploadResponse:
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

        return self._call(context, Operation.UPLOAD, action)

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

        return self._call(context, Operation.GET_UPLOAD_OFFSET, action)

    def StartRun(
        self, request: pb.StartRunRequest, context: grpc.ServicerContext
    ) -> pb.StartRunResponse:
        def action(caller: Caller) -> pb.StartRunResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            return serde.run_ticket_to_proto(self._service.start_run(caller, project_id))

        return self._call(context, Operation.START_RUN, action)

    def GetAuditPublicKey(
        self, request: pb.GetAuditPublicKeyRequest, context: grpc.ServicerContext
    ) -> pb.GetAuditPublicKeyResponse:
        def action(caller: Caller) -> pb.GetAuditPublicKeyResponse:
            serde.check_no_unknown_fields(request)
            return pb.GetAuditPublicKeyResponse(
                public_key_pem=self._service.audit_public_key(caller)
            )

        return self._call(context, Operation.GET_AUDIT_PUBLIC_KEY, action)

    def GetProjectSettings(
        self, request: pb.GetProjectSettingsRequest, context: grpc.ServicerContext
    ) -> pb.GetProjectSettingsResponse:
        def action(caller: Caller) -> pb.GetProjectSettingsResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            settings = self._service.project_settings(caller, project_id)
            return pb.GetProjectSettingsResponse(
                settings=serde.project_settings_to_proto(settings),
                settings_fingerprint=settings.fingerprint,
            )

        return self._call(context, Operation.GET_PROJECT_SETTINGS, action)

    def GetProjectReport(
        self, request: pb.GetProjectReportRequest, context: grpc.ServicerContext
    ) -> pb.GetProjectReportResponse:
        def action(caller: Caller) -> pb.GetProjectReportResponse:
            serde.check_no_unknown_fields(request)
            project_id = serde.label_from_proto(request.project_id, what="project id")
            run_id, report_json = self._service.project_report(caller, project_id)
            return pb.GetProjectReportResponse(run_id=run_id, report_json=report_json)

        return self._call(context, Operation.GET_PROJECT_REPORT, action)

    def FetchAuditLog(
        self, request: pb.FetchAuditLogRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchAuditLogResponse]:
        def produce(caller: Caller) -> Iterator[pb.FetchAuditLogResponse]:
            serde.check_no_unknown_fields(request)
            project_id = (
                serde.label_from_proto(request.project_id, what="project id")
                if request.project_id
                else None
            )
            export = self._service.audit_lines(caller, project_id)
            return _audit_batches(export.lines, export.head)

        return self._stream(context, Operation.FETCH_AUDIT_LOG, produce)

    def FetchLinkKeys(
        self, request: pb.FetchLinkKeysRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchLinkKeysResponse]:
        def produce(caller: Caller) -> Iterator[pb.FetchLinkKeysResponse]:
            serde.check_no_unknown_fields(request)
            batches = self._service.fetch_link_keys(
                caller,
                serde.label_from_proto(request.project_id, what="project id"),
                serde.label_from_proto(request.party_id, what="party id"),
            )
            return (serde.link_key_batch_to_proto(batch) for batch in batches)

        return self._stream(context, Operation.FETCH_LINK_KEYS, produce)


def _progressing(
    messages: Iterator[pb.UploadRequest], watched: WatchedStream
) -> Iterator[pb.UploadRequest]:
    """The upload's messages, telling the watchdog about progress: the header and chunks
    that carry bytes. An empty chunk is not progress, so a trickle of them is cut as idle."""
    try:
        for message in messages:
            if message.WhichOneof("part") != "chunk" or message.chunk.data:
                watched.progress()
            yield message
    except grpc.RpcError:
        if watched.expired:
            raise UnavailableError(
                "the upload stream made no progress for too long or exceeded its maximum "
                "duration and was cut; resume the upload"
            ) from None
        raise


def _audit_batches(lines: Iterable[bytes], head: bytes) -> Iterator[pb.FetchAuditLogResponse]:
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > _AUDIT_BATCH_BYTES:
            yield pb.FetchAuditLogResponse(lines=batch)
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    yield pb.FetchAuditLogResponse(lines=batch, signed_head=head)
