"""A Dask LocalCluster for tests: worker processes on this machine, loopback only, no fixed
port (``dashboard_address=None`` would still bind the scheduler's HTTP server to :8787)."""

from __future__ import annotations

from distributed import LocalCluster


def local_cluster(workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
