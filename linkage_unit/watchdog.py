"""The stream watchdog: cancels a stream that stops making progress, in either direction.

Stage: the service's front door. grpcio has no server-side stream timeout, and a stream
holds a worker thread for as long as it lasts: an upload whose client sends nothing (or
only empty chunks), or a download whose client stops reading (the server's sends then wait
on flow control), would otherwise keep a thread for as long as its client likes. One
monitor thread watches every open stream; a stream with no progress for ``idle_seconds``,
or open longer than ``max_seconds``, has its cancel callback called.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["StreamWatchdog", "WatchedStream"]


class WatchedStream:
    """One stream under watch: call :meth:`progress` whenever it moves, :meth:`close` when
    it ends. ``expired`` says whether the watchdog cut it."""

    def __init__(self, watchdog: StreamWatchdog, cancel: Callable[[], None], now: float) -> None:
        self._watchdog = watchdog
        self._cancel = cancel
        self.last_progress = now
        self.deadline = now + watchdog.max_seconds
        self.expired = False

    def progress(self) -> None:
        self.last_progress = self._watchdog.now()

    def due(self) -> float:
        return min(self.last_progress + self._watchdog.idle_seconds, self.deadline)

    def expire(self) -> None:
        self.expired = True
        self._cancel()

    def close(self) -> None:
        self._watchdog.forget(self)


class StreamWatchdog:
    """Watches streams from one daemon thread, started with the first stream."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < idle_seconds <= max_seconds:
            raise ValueError("0 < idle_seconds <= max_seconds")
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.now = monotonic
        self._condition = threading.Condition()
        self._streams: set[WatchedStream] = set()
        self._thread: threading.Thread | None = None

    def watch(self, cancel: Callable[[], None]) -> WatchedStream:
        stream = WatchedStream(self, cancel, self.now())
        with self._condition:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="bloomlink-stream-watchdog", daemon=True
                )
                self._thread.start()
            self._condition.notify()
        return stream

    def forget(self, stream: WatchedStream) -> None:
        with self._condition:
            self._streams.discard(stream)

    def _run(self) -> None:
        while True:
            with self._condition:
                now = self.now()
                expired = [stream for stream in self._streams if stream.due() <= now]
                for stream in expired:
                    self._streams.discard(stream)
                if not expired:
                    wait = min((stream.due() for stream in self._streams), default=now + 60.0)
                    # Progress moves deadlines later, never earlier: waking at the earliest
                    # one recorded now is enough, and a new stream notifies.
                    self._condition.wait(max(0.01, wait - now))
                    continue
            for stream in expired:  # outside the lock: cancelling may call back into gRPC
                stream.expire()
