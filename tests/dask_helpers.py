"""Dask helpers for tests: a LocalCluster of worker processes on loopback with no fixed port
(``dashboard_address=None`` would still bind the scheduler's HTTP server to :8787), and fault
injection inside its workers."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from distributed import LocalCluster, WorkerPlugin


def local_cluster(workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )


class CompareTaskFaults(WorkerPlugin):
    """Fault injection inside the Dask workers, not in the linkage unit: the compare task
    functions, which a worker looks up by name for each task, are wrapped so that the first
    one to run anywhere kills its own worker process (``kill_marker``), or every one raises
    (``fail``), or each waits for a file to exist (``gate``) so a test can watch a run in
    flight. ``teardown`` puts the real functions back."""

    names = ("_band_task", "_tile_task")

    def __init__(
        self, *, kill_marker: str | None = None, fail: bool = False, gate: str | None = None
    ) -> None:
        self.kill_marker = kill_marker
        self.fail = fail
        self.gate = gate

    def setup(self, worker: object) -> None:
        module = importlib.import_module("linkage_unit.distributed")
        self.originals = {name: getattr(module, name) for name in self.names}
        for name, original in self.originals.items():
            setattr(module, name, self._wrap(original))

    def teardown(self, worker: object) -> None:
        module = importlib.import_module("linkage_unit.distributed")
        for name, original in self.originals.items():
            setattr(module, name, original)

    def _wrap(self, original):  # type: ignore[no-untyped-def]
        def faulty(*arguments):  # type: ignore[no-untyped-def]
            if self.kill_marker is not None:
                try:
                    os.close(os.open(self.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)  # a worker lost mid-task, as on an out-of-memory kill
            if self.fail:
                raise RuntimeError("injected task failure")
            if self.gate is not None:
                deadline = time.monotonic() + 120
                while not Path(self.gate).exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            return original(*arguments)

        return faulty
