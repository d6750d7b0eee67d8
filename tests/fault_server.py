"""A real linkage unit for crash tests: what ``bloomlink serve --config`` runs, plus faults
injected through the server's own parameters (never by patching it).

    python -m tests.fault_server --config lu.toml [--kill-before EVENT] [--kill-after EVENT]
                                 [--kill-at STEP] [--hold-run]

``--kill-before`` / ``--kill-after``: SIGKILL this process just before / after the audit log
appends an ``EVENT`` entry (the real signed log, wrapped). ``--kill-at``: SIGKILL at a named
checkpoint (linkage_unit/checkpoints.py). ``--hold-run``: a run waits in its first stage
while ``<data dir>/hold`` exists, so a test can stop or kill the LU mid-run. Prints
``linkage unit listening on port N`` like ``bloomlink serve``; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from linkage_unit import matching
from linkage_unit.audit_log import AuditLog
from linkage_unit.checkpoints import Step
from linkage_unit.server import create_server, load_config
from protocol.audit_events import AuditEvent


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingAuditLog(AuditLog):
    """The real audit log, which kills the process around one event's append."""

    before: str | None = None
    after: str | None = None

    def append(self, record: AuditEvent) -> None:
        if record.NAME == self.before:
            _die()
        super().append(record)
        if record.NAME == self.after:
            _die()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--kill-before")
    parser.add_argument("--kill-after")
    parser.add_argument("--kill-at", choices=[str(step) for step in Step])
    parser.add_argument("--hold-run", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    audit = _KillingAuditLog.open(
        config.audit_log or config.data_dir / "audit.jsonl",
        signing_key_path=config.audit_signing_key or config.data_dir / "audit-signing-key.pem",
    )
    audit.before, audit.after = args.kill_before, args.kill_after

    def checkpoint(step: Step) -> None:
        if step == args.kill_at:
            _die()

    def held_link(clks: Any, settings: matching.MatchSettings, **options: Any) -> Any:
        progress = options["progress"]
        while (config.data_dir / "hold").exists():
            progress("held", 0, 1)  # where a stopping LU interrupts the run
            time.sleep(0.02)
        return matching.link(clks, settings, **options)

    server = create_server(
        config,
        audit=audit,
        link_function=held_link if args.hold_run else None,
        checkpoint=checkpoint,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda number, frame: stopping.set())
    try:
        port = server.start()
        print(f"linkage unit listening on port {port}", flush=True)
        stopping.wait()
    finally:
        server.stop()
        audit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
