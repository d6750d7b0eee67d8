"""Operations the operator meets: a second linkage unit on the same data directory, and a
project that waits for the operator to start its run (issue 16, point 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloomlink import cli
from bloomlink.exit_codes import ExitCode
from protocol.errors import UnavailableError
from protocol.messages import RunState, UploadState
from tests.adversarial.conftest import create_project
from tests.service_helpers import planted_party_clks, write_clk_file

pytestmark = pytest.mark.integration


def test_a_second_linkage_unit_on_the_same_data_directory_says_so(
    start_server, pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bloomlink serve`` on a data directory another LU holds exits with its own code
    (IN_USE, not the audit-verification code 9) and says the directory is in use."""
    start_server(data_dir=tmp_path / "lu")
    argv = ["serve", "--data-dir", str(tmp_path / "lu"), "--listen", "127.0.0.1:0"]
    argv += ["--ca-certificate", str(pki.ca_certificate)]
    argv += ["--certificate", str(pki.linkage_unit.certificate)]
    argv += ["--private-key", str(pki.linkage_unit.private_key)]
    assert cli.main(argv) == ExitCode.IN_USE
    err = capsys.readouterr().err
    assert "InUseError" in err and "in use by another linkage unit" in err


def test_a_project_without_auto_run_is_ready_once_every_upload_is_complete(
    start_server, connect, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Created with auto-run off, the project waits for uploads, then reads READY (not
    waiting_for_uploads) until the operator starts the run; members see READY too."""
    server = start_server()
    operator = connect(server, "operator")
    create_project(operator, auto_run=False)
    clks = planted_party_clks(["moj", "dfe"], seed=101, records=12, shared=4)
    for party in ("moj", "dfe"):
        assert operator.project_status("p1").run_state is RunState.WAITING_FOR_UPLOADS
        path = write_clk_file(tmp_path / f"{party}.clk", clks[party], project_id="p1")
        assert connect(server, party).upload_file(path, party_id=party).state is (
            UploadState.COMPLETE
        )
    assert operator.project_status("p1").run_state is RunState.READY
    assert connect(server, "moj").project_status("p1").run_state is RunState.READY
    operator.start_run("p1")
    assert operator.wait_for_run("p1", timeout=20).run_state is RunState.FINISHED


def test_waiting_for_a_run_that_never_starts_ends_on_the_clients_clock(
    start_server, connect
) -> None:
    """No upload arrives, so the run never finishes: wait_for_run gives up at its timeout on
    the clock the client was given, polling every ``poll`` seconds, with no real waiting."""
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    server = start_server()
    operator = connect(server, "operator", monotonic=lambda: now[0], sleep=sleep)
    create_project(operator)
    with pytest.raises(UnavailableError, match="did not finish within 3s"):
        operator.wait_for_run("p1", timeout=3, poll=0.5)
    assert sleeps == [0.5] * 6
