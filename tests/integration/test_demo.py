"""`bloomlink demo`, the README's main job, runs end to end, reports real link quality, and
leaves an audit log that `bloomlink audit verify` passes - and fails once tampered with."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bloomlink.cli import main
from bloomlink.exit_codes import ExitCode
from linkage_unit.audit_log import AuditLog
from protocol.audit_events import ChecksPassed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(
            ["demo", "--dir", str(out), "--records", "600", "--difficulty", "low", "--seed", "2"]
        )
    assert code == 0, buffer.getvalue()
    return next(out.glob("run-*")), buffer.getvalue()


def test_demo_links_two_departments_over_mutual_tls(demo_run: tuple[Path, str]) -> None:
    run_dir, output = demo_run
    found = re.search(r"precision (\S+)\s+recall (\S+)\s+F1 (\S+)", output)
    assert found, output
    precision, recall, f1 = (float(value) for value in found.groups())
    assert precision > 0.95 and recall > 0.85 and f1 > 0.9
    for party in ("moj", "dfe"):
        keys = (run_dir / party / f"{party}.link-keys.csv").read_text().splitlines()
        assert keys[0] == "own_record_id,link_key" and len(keys) == 601
    assert "audit: PASSED" in output
    # retention: the run's CLK payloads are really gone from the LU's disk
    assert not list((run_dir / "linkage-unit" / "payloads").glob("**/*.clk*"))


def verify(run_dir: Path, log: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    manifests = [str(run_dir / p / f"{p}.clk.manifest.json") for p in ("moj", "dfe")]
    args = ["audit", "verify", "--log", str(log)]
    args += ["--public-key", str(run_dir / "auditor" / "lu-audit-key.pem")]
    for manifest in manifests:
        args += ["--manifest", manifest]
    for party in ("moj", "dfe"):
        args += ["--party-key", f"{party}={run_dir / party / 'signing-key.pem.pub'}"]
    code = main(args)
    return code, capsys.readouterr().out


def test_the_demo_log_verifies_on_the_command_line(
    demo_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = demo_run
    code, output = verify(run_dir, run_dir / "auditor" / "audit.jsonl", capsys)
    assert code == ExitCode.OK, output
    for name in ("chain", "rules", "retention", "manifest", "wire"):
        assert re.search(rf"^PASS\s+{name}", output, re.MULTILINE), (name, output)
    assert "result: PASSED" in output


def _edit(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[3])
    key, value = sorted(record["details"].items())[0]
    if isinstance(value, int):
        record["details"][key] = value + 1
    else:
        record["details"][key] = value[:-1] + ("0" if value[-1] != "0" else "1")
    lines[3] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return lines


def _forge(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[3])
    record["signature"] = "00" * 64
    lines[3] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    return lines


TAMPERINGS: dict[str, tuple[Callable[[list[bytes]], list[bytes]], int]] = {
    "edit": (_edit, 3),
    "delete": (lambda lines: lines[:3] + lines[4:], 3),
    "reorder": (lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]], 3),
    "truncate": (lambda lines: lines[:-2], -1),  # index set below: the head's entry
    "forge": (_forge, 3),
}


@pytest.mark.parametrize("kind", [*TAMPERINGS, "foreign"])
def test_tampering_with_the_demo_log_fails_naming_the_entry(
    kind: str, demo_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = demo_run
    original = (run_dir / "auditor" / "audit.jsonl").read_bytes().splitlines(keepends=True)
    log = tmp_path / "audit.jsonl"
    shutil.copy(run_dir / "auditor" / "audit.jsonl.head", tmp_path / "audit.jsonl.head")
    if kind == "foreign":
        # an entry of another log (another LU, another project), at the same position
        with AuditLog.open(tmp_path / "other.jsonl", signing_key_path=tmp_path / "o.pem") as other:
            for _ in range(4):
                other.append(ChecksPassed(project_id="elsewhere", parties=("aa", "bb")))
        lines = list(original)
        lines[3] = (tmp_path / "other.jsonl").read_bytes().splitlines(keepends=True)[3]
        expected = 3
    else:
        change, expected = TAMPERINGS[kind]
        lines = change(list(original))
        if kind == "truncate":
            expected = len(original) - 2  # the first entry the head vouches for that is gone
    log.write_bytes(b"".join(lines))
    code, output = verify(run_dir, log, capsys)
    assert code == ExitCode.AUDIT_FAILED, output
    failed = [line for line in output.splitlines() if line.startswith("FAIL")]
    assert failed and f"entry {expected}]" in failed[0], (kind, output)
