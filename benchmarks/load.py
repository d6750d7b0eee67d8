"""Load benchmark for the linkage unit: many parties upload while pollers call project
status, against a real ``python -m bloomlink serve`` subprocess on loopback with mutual TLS.

Bounded by count and time (loopback only). Prints a table and ends with one JSON line.
There is no peer service to run side by side here, so ``peer`` and ``ratio`` are null.

    python benchmarks/load.py [--projects 16] [--pollers 16] [--seconds 15] [--records 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import this_machine  # noqa: E402

from linkage_unit.pki import init_certificates  # noqa: E402
from tests.adversarial.conftest import LinkageUnitProcess  # noqa: E402
from tests.adversarial.load import run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--projects", type=int, default=16, help="projects (2 uploading parties each)"
    )
    parser.add_argument("--pollers", type=int, default=16, help="threads calling project status")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long the pollers run")
    parser.add_argument("--records", type=int, default=20_000, help="CLKs (1024 bits) per upload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bloomlink-load-") as scratch:
        directory = Path(scratch)
        pki = init_certificates(directory / "certs", parties=("moj", "dfe"), auditor=False)
        process = LinkageUnitProcess(pki, directory / "lu", max_concurrent_rpcs=256, max_workers=64)
        result = run_load(
            process,
            pki,
            directory,
            projects=args.projects,
            pollers=args.pollers,
            seconds=args.seconds,
            records=args.records,
        )
    uploaded_mib_s = result["upload_mib"] / result["seconds"]
    rows = [
        ("uploading parties", result["parties"]),
        (
            "uploads completed / errors",
            f"{result['uploads_completed']} / {result['upload_errors']}",
        ),
        ("payload uploaded (MiB)", result["upload_mib"]),
        ("status calls / errors", f"{result['status_calls']} / {result['status_errors']}"),
        ("status calls per second", result["status_per_s"]),
        ("status p50 / p99 (ms)", f"{result['status_p50_ms']} / {result['status_p99_ms']}"),
        (
            "server RSS start / max (MiB)",
            f"{result['server_rss_start_mib']} / {result['server_rss_mib']}",
        ),
    ]
    for name, value in rows:
        print(f"{name:<32} {value}")
    print(
        json.dumps(
            {
                "bench": "load",
                **this_machine().fields(),
                **result,
                "upload_mib_s_lower_bound": round(uploaded_mib_s, 2),
                "peer": None,
                "ratio": None,
            }
        )
    )


if __name__ == "__main__":
    main()
