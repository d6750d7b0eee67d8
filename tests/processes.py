"""A linkage unit as a real child process (``python -m bloomlink serve`` or the fault
server ``python -m tests.fault_server``) that tests can stop, SIGTERM or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkage_unit.pki import CertificateSet

REPOSITORY = Path(__file__).resolve().parents[1]


class LinkageUnitProcess:
    """``python -m bloomlink serve --config`` as a child process that tests can SIGKILL."""

    def __init__(self, pki: CertificateSet, data_dir: Path, **settings: object) -> None:  # noqa: F811
        self.pki, self.data_dir, self.settings = pki, data_dir, settings
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    def _config(self) -> Path:
        values: dict[str, object] = {
            "data_dir": str(self.data_dir),
            "listen": f"127.0.0.1:{self.port}",
            "ca_certificate": str(self.pki.ca_certificate),
            "certificate": str(self.pki.linkage_unit.certificate),
            "private_key": str(self.pki.linkage_unit.private_key),
            "grace_seconds": 0.5,
            # These tests upload random CLK files with no manifest; manifests are enforced
            # and tested in tests/integration/test_audit_wiring.py.
            "require_manifest": False,
            **self.settings,
        }
        lines = [
            f"{key} = {str(value).lower()}"
            if isinstance(value, bool)
            else f"{key} = {value!r}"
            if isinstance(value, str)
            else f"{key} = {value}"
            for key, value in values.items()
        ]
        path = self.data_dir.parent / f"{self.data_dir.name}.toml"
        path.write_text("\n".join(lines).replace("'", '"') + "\n", encoding="utf-8")
        return path

    def start(self, *arguments: str, program: str = "bloomlink serve", **environment: str) -> int:
        """Start the LU (``program``: ``bloomlink serve``, or ``tests.fault_server`` with
        fault ``arguments``) on the port it had before, if any; return the port."""
        config = self._config()
        module, *command = program.split()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *command, "--config", str(config), *arguments],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY), **environment},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening on port" not in line:
            self.process.kill()
            raise RuntimeError(f"linkage unit did not start: {line!r}")
        self.port = int(line.rsplit(" ", 1)[1])  # restarts reuse the port the parties know
        return self.port

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, exactly like a crash or the OOM killer."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._close()

    def _close(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def wait_killed(self, timeout: float = 30.0) -> None:
        """Wait for a process that kills itself at an injected fault."""
        assert self.process is not None
        self.process.wait(timeout)
        assert self.process.returncode == -signal.SIGKILL, self.process.returncode
        self._close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()


@pytest.fixture
def lu_process(pki: CertificateSet, tmp_path: Path) -> Iterator[LinkageUnitProcess]:
    processes: list[LinkageUnitProcess] = []

    def make(**settings: object) -> LinkageUnitProcess:
        process = LinkageUnitProcess(pki, tmp_path / f"lu{len(processes)}", **settings)
        processes.append(process)
        return process

    yield make  # type: ignore[misc]
    for process in processes:
        process.stop()
