"""A bounded load driver (count- and time-limited, loopback only): many parties upload while
pollers call project status against a linkage unit subprocess. Used by the short test in
test_d_resource_limits.py and by benchmarks/load.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from party.client import LinkageClient
from protocol.messages import ProjectSettings, UploadState
from tests.service_helpers import SCHEMA_FINGERPRINT, write_clk_file
from tests.strategies import random_clks


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_load(
    process,
    pki,
    directory: Path,
    *,
    projects: int,
    pollers: int,
    seconds: float,
    records: int,
    clk_bits: int = 1024,
) -> dict[str, float | int]:
    port = process.start()
    target = f"127.0.0.1:{port}"
    parties = ("moj", "dfe")

    def client(who: str) -> LinkageClient:
        pair = pki.operator if who == "operator" else pki.parties[who]
        return LinkageClient(
            target, tls=pki.tls_files(pair), timeout=10, retries=2, chunk_bytes=64 * 1024
        )

    generator = np.random.default_rng(7)
    with client("operator") as operator:
        for number in range(projects):
            operator.create_project(
                ProjectSettings(
                    project_id=f"load-{number}",
                    members=parties,
                    schema_fingerprint=SCHEMA_FINGERPRINT,
                    auto_run=False,
                )
            )
    files = {
        (number, party): write_clk_file(
            directory / f"load-{number}-{party}.clk",
            random_clks(generator, records, words=clk_bits // 64, density=0.5),
            project_id=f"load-{number}",
            clk_bits=clk_bits,
        )
        for number in range(projects)
        for party in parties
    }
    completed: list[int] = []
    upload_errors: list[str] = []
    latencies: list[float] = []
    status_errors: list[str] = []
    rss = [_rss_mib(process.process.pid)]
    stop = threading.Event()

    def upload(number: int, party: str) -> None:
        try:
            with client(party) as uploader:
                if (
                    uploader.upload_file(files[number, party], party_id=party).state
                    is UploadState.COMPLETE
                ):
                    completed.append(1)
        except Exception as error:  # counted, reported in the result
            upload_errors.append(type(error).__name__)

    def poll(index: int) -> None:
        with client(parties[index % 2]) as poller:
            call = 0
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    poller.project_status(f"load-{call % projects}")
                    latencies.append(time.perf_counter() - started)
                except Exception as error:
                    status_errors.append(type(error).__name__)
                call += 1

    threads = [threading.Thread(target=upload, args=key) for key in files]
    threads += [threading.Thread(target=poll, args=(index,)) for index in range(pollers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    while time.perf_counter() - started < seconds:
        rss.append(_rss_mib(process.process.pid))
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(60)
    elapsed = time.perf_counter() - started
    rss.append(_rss_mib(process.process.pid))
    process.stop()
    ordered = np.sort(np.asarray(latencies)) * 1000 if latencies else np.zeros(1)
    payload_mib = len(files) * records * clk_bits / 8 / (1 << 20)
    return {
        "projects": projects,
        "parties": len(files),
        "pollers": pollers,
        "seconds": round(elapsed, 2),
        "uploads_completed": len(completed),
        "upload_errors": len(upload_errors),
        "upload_mib": round(payload_mib, 2),
        "status_calls": len(latencies),
        "status_errors": len(status_errors),
        "status_per_s": round(len(latencies) / elapsed, 1),
        "status_p50_ms": round(float(np.percentile(ordered, 50)), 2),
        "status_p99_ms": round(float(np.percentile(ordered, 99)), 2),
        "server_rss_start_mib": round(rss[0], 1),
        "server_rss_mib": round(max(rss), 1),
    }
