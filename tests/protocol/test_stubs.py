"""The checked-in stubs are exactly what proto/generate.py makes, and the runtime floors in
pyproject.toml match the versions the generated code checks for."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "protocol" / "pb"


def _floor(requirement_prefix: str) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        match = re.fullmatch(rf"{re.escape(requirement_prefix)}>=([0-9.]+)", requirement)
        if match:
            return match.group(1)
    raise AssertionError(f"no floor for {requirement_prefix} in pyproject.toml")


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {
        p.name: p.read_bytes() for p in (tmp_path / "protocol" / "pb").iterdir() if p.is_file()
    }
    checked_in = {
        p.name: p.read_bytes()
        for p in STUBS.iterdir()
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }
    assert fresh.keys() == checked_in.keys()
    stale = sorted(name for name in fresh if fresh[name] != checked_in[name])
    assert not stale, f"stubs are stale, run proto/generate.py: {stale}"


def test_grpcio_floor_matches_the_generated_version_check() -> None:
    text = (STUBS / "linkage_pb2_grpc.py").read_text(encoding="utf-8")
    generated = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", text)
    assert generated
    assert _floor("grpcio") == generated.group(1)
    assert _floor("grpcio-health-checking") == generated.group(1)


def test_protobuf_floor_matches_the_generated_runtime_check() -> None:
    text = (STUBS / "linkage_pb2.py").read_text(encoding="utf-8")
    check = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        text,
    )
    assert check
    assert _floor("protobuf") == ".".join(check.groups())
