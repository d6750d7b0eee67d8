"""Uploads: one stream's chunks, appended durably, and the registry of streams in progress.

Stage: upload. :class:`UploadSession` checks each chunk (digest, offset, the stream's byte
cap) and appends it to storage; at the end of the stream it asks its owner (the service,
through the :class:`UploadOwner` protocol) to commit the upload or to discard it. The
:class:`UploadRegistry` lets one stream at a time hold a (project, party) upload. Neither
reaches into the service: what they need is passed in.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Protocol

from linkage_unit.storage import Storage
from protocol.errors import InvalidRequestError, PreconditionError, ResourceLimitError
from protocol.manifest import SignedManifest
from protocol.messages import UploadChunk, UploadHeader, UploadProgress, UploadState
from protocol.vocabulary import DeletionReason

__all__ = ["UploadClaim", "UploadLimits", "UploadOwner", "UploadRegistry", "UploadSession"]

_MIN_CHARGE = 1024  # bytes every chunk counts for, so a flood of empty chunks is capped too


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadLimits:
    """``max_upload_bytes`` caps both a payload's declared size and the bytes one upload
    stream may carry (resent chunks included): a per-message cap does not bound a stream."""

    max_upload_bytes: int = 1 << 32
    chunk_batch_size: int = 10_000

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be positive")


class UploadOwner(Protocol):
    """What a session needs from the service at the end of a stream."""

    def commit_upload(self, header: UploadHeader, manifest: SignedManifest | None) -> None:
        """Every byte is here: verify, audit and publish the upload."""
        ...

    def discard_upload(self, header: UploadHeader, *, reason: DeletionReason) -> None:
        """Delete the upload's uncommitted bytes, audited."""
        ...


class UploadClaim:
    """A stream's hold on one (project, party) upload; :meth:`release` it once (idempotent)."""

    def __init__(self, registry: UploadRegistry, key: tuple[str, str]) -> None:
        self._registry = registry
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry.forget(self._key)


class UploadRegistry:
    """Which (project, party) uploads a stream holds now (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[tuple[str, str]] = set()

    def claim(self, header: UploadHeader) -> UploadClaim:
        key = (header.project_id, header.party_id)
        with self._lock:
            if key in self._active:
                raise PreconditionError("an upload for this party is already in progress")
            self._active.add(key)
        return UploadClaim(self, key)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._active.discard(key)


class UploadSession:
    """One upload stream: accepts chunks, appends them durably, completes the upload."""

    def __init__(
        self,
        *,
        owner: UploadOwner,
        storage: Storage,
        limits: UploadLimits,
        claim: UploadClaim,
        header: UploadHeader,
        committed: int,
        manifest: SignedManifest | None = None,
    ) -> None:
        self._owner = owner
        self._storage = storage
        self._limits = limits
        self._claim = claim
        self.header = header
        self.manifest = manifest
        self.committed = committed
        self._received = 0

    @property
    def progress(self) -> UploadProgress:
        record = self._storage.upload(self.header.project_id, self.header.party_id)
        state = record.state if record else UploadState.NOT_STARTED
        return UploadProgress(
            committed_bytes=self.committed, payload_bytes=self.header.payload_bytes, state=state
        )

    def accept(self, chunk: UploadChunk) -> None:
        """Append a chunk at the committed offset; an already-committed chunk is ignored."""
        cap = self._limits.max_upload_bytes
        self._received += max(len(chunk.data), _MIN_CHARGE)
        if self._received > cap:
            if self.progress.state is UploadState.PARTIAL:
                self._owner.discard_upload(self.header, reason=DeletionReason.STREAM_CAP)
            raise ResourceLimitError(
                "this upload stream carried more bytes than the linkage unit's upload cap "
                f"({cap}); its partial data was deleted"
            )
        if hashlib.sha256(chunk.data).digest() != chunk.chunk_sha256:
            raise InvalidRequestError(
                f"the chunk at offset {chunk.offset} does not match its SHA-256 (corrupted in "
                f"transit); resend from offset {self.committed}"
            )
        end = chunk.offset + len(chunk.data)
        if end > self.header.payload_bytes:
            raise InvalidRequestError(
                f"the chunk at offset {chunk.offset} runs past the {self.header.payload_bytes} "
                "payload bytes the header promises"
            )
        if chunk.offset > self.committed:
            raise InvalidRequestError(
                f"chunk offset {chunk.offset} leaves a gap; the next expected offset is "
                f"{self.committed}"
            )
        if end <= self.committed:
            return  # a resend of committed bytes: harmless
        tail = chunk.data[self.committed - chunk.offset :]
        self.committed = self._storage.append(
            self.header.project_id, self.header.party_id, committed=self.committed, data=tail
        )

    def finish(self) -> UploadProgress:
        """End of stream: complete the upload if every byte is here, else report progress."""
        header = self.header
        record = self._storage.upload(header.project_id, header.party_id)
        if record is None:
            raise PreconditionError("this upload was deleted while it was sent; start it again")
        if record.state is UploadState.COMPLETE or self.committed < header.payload_bytes:
            return self.progress
        self._owner.commit_upload(header, self.manifest)
        return self.progress

    def close(self) -> None:
        self._claim.release()
